"""Training: teacher forcing with label-smoothed cross-entropy (Szegedy et al. 2016), Adam, gradient
clipping, length-bucketed batches sized in target tokens, validation loss and greedy BLEU after every
epoch (or N steps), learning-rate decay on a BLEU plateau, early stopping, and checkpoints that
resume a killed run exactly where it was: same batches, same optimizer moments, same dropout masks.

Under `torchrun` the run is data-parallel (DDP): every rank builds the same batches, trains on its
share of each, and the gradients are averaged over ranks so that each update is the one a single
process makes on the whole batch; rank 0 validates, logs and writes the checkpoints.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sacrebleu
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mt.checkpoint import (
    ModelDirError,
    commit_checkpoint,
    load_model_dir,
    load_training_state,
    model_weights,
    point_link,
    prune_checkpoints,
    save_model_dir,
    save_training_state,
    tensors_digest,
)
from mt.config import Config, TrainConfig
from mt.data import ParallelCorpus, clean, load_split
from mt.distributed import World
from mt.loss import label_smoothed_cross_entropy
from mt.model import Seq2Seq, pad_batch
from mt.tokenizer import BOS, EOS, PAD, Tokenizer, TokenizerError, seed_sampling
from mt.translator import Translator, resolve_device

log = logging.getLogger(__name__)

LOG_EVERY = 50  # steps between lines of the training log
KEEP_CHECKPOINTS = 5  # newest checkpoints kept besides the best (for weight averaging)
PROBE_BYTES = 1 << 20  # written and fsynced into the output folder at start, to fail early on a full disk


class RunDirError(ValueError):
    """An output folder that cannot hold this run."""


@dataclass
class Batch:
    src: torch.Tensor  # (batch, src_len) ending in </s>
    lengths: torch.Tensor  # (batch,)
    tgt_in: torch.Tensor  # (batch, tgt_len): <s> y_1 ... y_n
    tgt_out: torch.Tensor  # (batch, tgt_len): y_1 ... y_n </s>
    tgt_tokens: int  # real (non-pad) target tokens


@dataclass
class Progress:
    """Everything besides weights and optimizer that a resumed run needs, stored as JSON."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    elapsed: float = 0.0  # seconds of training so far, across resumes
    best_bleu: float = -1.0
    best_step: int = 0
    evals_without_improvement: int = 0
    evaluated_step: int = 0  # the step of the last validation (0 in checkpoints written before it was kept)
    scheduler: dict[str, Any] = field(default_factory=dict)
    # with subword sampling, the batches of `epoch` (sentence ids): a new process samples other pieces
    # from the same seed, and batches cut by those lengths would not be the ones batch_in_epoch counts
    epoch_batches: list[list[int]] = field(default_factory=list)
    # the training pairs after cleaning (`_digest`): a resumed run refuses others, whose sentence ids would
    # not be the ones its batches hold ("" in checkpoints written before it was kept)
    corpus: str = ""


def make_batches(
    src: list[list[int]], tgt: list[list[int]], *, batch_tokens: int, rng: random.Random
) -> list[list[int]]:
    """Shuffle, then group sentences of similar length so that (sentences x longest target) stays
    within `batch_tokens`; returns lists of sentence indices in a shuffled order."""
    indices = list(range(len(src)))
    rng.shuffle(indices)
    batches: list[list[int]] = []
    pool = 100 * max(1, batch_tokens // 20)  # sort within large pools: similar lengths, still random
    for start in range(0, len(indices), pool):
        chunk = sorted(indices[start : start + pool], key=lambda i: (len(tgt[i]), len(src[i])))
        current: list[int] = []
        longest = 0
        for i in chunk:
            longest_if_added = max(longest, len(tgt[i]) + 1)
            if current and longest_if_added * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current, longest_if_added = [], len(tgt[i]) + 1
            current.append(i)
            longest = longest_if_added
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(indices: list[int], src: list[list[int]], tgt: list[list[int]], device: torch.device) -> Batch:
    src_batch, lengths = pad_batch([src[i] + [EOS] for i in indices], device=device)
    tgt_in, _ = pad_batch([[BOS] + tgt[i] for i in indices], device=device)
    tgt_out, _ = pad_batch([tgt[i] + [EOS] for i in indices], device=device)
    return Batch(src_batch, lengths, tgt_in, tgt_out, int((tgt_out != PAD).sum()))


def rank_share(indices: list[int], tgt: list[list[int]], world: World) -> tuple[list[int], float]:
    """This rank's sentences of a batch, and the weight of their summed loss.

    A rank takes every size-th sentence: batches are sorted by length, so the shares are balanced. The
    weight is size / (target tokens of the whole batch), because DDP averages the gradients over ranks:
    the update is then the one a single process makes on the whole batch (the mean loss per target
    token), up to the order of float additions. A rank left without a sentence (a batch of fewer
    sentences than ranks) trains on the first one with weight 0: every rank's backward must take part.
    """
    tokens = sum(len(tgt[i]) + 1 for i in indices)  # + </s>
    share = world.shard(indices)
    if not share:
        return indices[:1], 0.0
    return share, world.size / tokens


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam, fused: one kernel updates every parameter, where the default runs a loop of small ops per
    parameter. On the default de->en config (AMD EPYC, 2 threads) a step took 3.6 ms against 12.8."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    config: TrainConfig,
    *,
    weight: float | None = None,
) -> float:
    """One teacher-forced update; returns the batch's mean label-smoothed loss per target token.

    weight: what the batch's summed loss is multiplied by before backward; 1 / its target tokens when
    None (see `rank_share` for a rank's share of a batch under DDP).
    """
    with torch.autocast(batch.src.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        logits = model(batch.src, batch.lengths, batch.tgt_in)
    summed = label_smoothed_cross_entropy(
        logits.float().view(-1, logits.size(-1)),  # the softmax over the vocabulary in fp32
        batch.tgt_out.view(-1),
        smoothing=config.label_smoothing,
        ignore_index=PAD,
    )
    optimizer.zero_grad(set_to_none=True)
    (summed * weight if weight is not None else summed / batch.tgt_tokens).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)  # DDP has averaged the gradients
    optimizer.step()
    return summed.item() / batch.tgt_tokens


def train_tokenizers(corpus: ParallelCorpus, config: Config) -> tuple[Tokenizer, Tokenizer]:
    vocab = config.vocab

    def train(sentences: list[str], key: str) -> Tokenizer:
        try:
            return Tokenizer.train(
                sentences,
                vocab_size=getattr(vocab, key),
                model_type=vocab.model_type,
                character_coverage=vocab.character_coverage,
                seed=config.train.seed,
            )
        except TokenizerError as error:
            raise TokenizerError(f"vocab.{key}: {error}") from None

    if vocab.joint:
        joint = train(corpus.src + corpus.tgt, "src_size")
        return joint, joint
    return train(corpus.src, "src_size"), train(corpus.tgt, "tgt_size")


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def keep_freed_memory() -> None:
    """Stop glibc from returning large freed blocks to the OS between training steps.

    The (tokens x vocabulary) logits and their gradients are tens of MB; glibc serves blocks that size
    with fresh mmaps and unmaps them on free, so every step page-faults and zeroes hundreds of MB
    again. Serving them from the heap and never trimming it: `python bench/train_speed.py --steps 80`
    gave 2,243 target tokens/s with this call and 2,107 without (one run each, 2-core Xeon; a gain
    about as large as the spread between windows). No effect where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, ctypes.c_int(1 << 30))
    libc.mallopt(m_trim_threshold, ctypes.c_int(1 << 30))


def check_run_dir(run_dir: Path, resume: bool, config: Config | None = None) -> None:
    """Fail at start, not after an hour, when the output folder cannot take this run: a run already
    there (or none to resume), a folder that cannot be written, or, given the run's config, a disk
    without room for its checkpoints."""
    last = run_dir / "last"
    for link in (last, run_dir / "best"):
        if link.exists() and not link.is_symlink():  # copied with links followed: a checkpoint can't replace it
            raise RunDirError(
                f"{link} is a copy of a checkpoint, not a link to one (was the run copied with links followed?): "
                f"replace it with a link, e.g. rm -r {link} && ln -s checkpoints/step-NNNNNNN {link}"
            )
    if resume and last.is_symlink() and not last.exists():
        raise RunDirError(f"cannot resume: {last} points to a checkpoint that no longer exists ({os.readlink(last)})")
    if resume and not last.exists():
        raise RunDirError(f"cannot resume: {run_dir} has no checkpoint ({last} is missing)")
    if not resume and last.is_symlink():
        raise RunDirError(
            f"{run_dir} already holds a training run; pass --resume to continue it, or choose another --out"
        )
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as handle:  # a full disk fails here, not at the first checkpoint
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())  # some filesystems report a full disk only when data reaches it
    except OSError as error:
        raise RunDirError(f"cannot write to the output folder {run_dir}: {error.strerror or error}") from error
    finally:
        if probe.is_file():
            probe.unlink()
    if config is not None:
        _check_free_space(run_dir, config, resume)


def _check_free_space(run_dir: Path, config: Config, resume: bool) -> None:
    existing = len(list((run_dir / "checkpoints").glob("step-*")))
    count = max(1, KEEP_CHECKPOINTS + 2 - existing)  # the kept ones, `best`, and one being written before pruning
    size = checkpoint_bytes(config) if not resume else sum(f.stat().st_size for f in (run_dir / "last").iterdir())
    free = shutil.disk_usage(run_dir).free
    if free < count * size:
        raise RunDirError(
            f"not enough free space for the run in {run_dir}: {free / 1e6:,.0f} MB free, its checkpoints need about "
            f"{count * size / 1e6:,.0f} MB ({count} of {size / 1e6:,.1f} MB: weights, optimizer moments, vocabularies)"
        )


def checkpoint_bytes(config: Config) -> int:
    """An estimate of one checkpoint's size from the config alone (before tokenizers are trained)."""
    vocab = config.vocab
    tgt_size = vocab.src_size if vocab.joint else vocab.tgt_size
    with torch.device("meta"):  # parameter shapes without allocating them
        model = Seq2Seq.from_config(config.model, src_vocab=vocab.src_size, tgt_vocab=tgt_size)
    # fp32 weights and Adam's two moments: 12 bytes a parameter; a SentencePiece model: ~60 bytes a piece
    return 12 * model.num_parameters() + 60 * (vocab.src_size + tgt_size) + PROBE_BYTES


class Trainer:
    def __init__(self, config: Config, run_dir: Path, *, resume: bool = False, max_steps: int = 0) -> None:
        config.validate()
        self.world = World.from_env()
        if self.world.is_main:  # rank 0 alone writes to the run folder (the others would race for its probe)
            check_run_dir(run_dir, resume, config)
        self.config = config
        self.run_dir = run_dir
        self.max_steps = max_steps  # stop after this many steps in total (0 = no limit); for tests
        train_cfg = config.train
        keep_freed_memory()
        if train_cfg.threads > 0:
            torch.set_num_threads(train_cfg.threads)
        self.device = self.world.join(resolve_device(train_cfg.device))
        random.seed(train_cfg.seed)
        torch.manual_seed(train_cfg.seed)

        train_raw = load_split(config.data.path, "train", config.data.src, config.data.tgt)
        self.train_corpus, report = clean(train_raw, config.data.max_len, config.data.max_ratio)
        self.valid_corpus = load_split(config.data.path, "validation", config.data.src, config.data.tgt)
        log.info("training data: %s; validation: %d pairs", report, len(self.valid_corpus))

        if resume:
            loaded = load_model_dir(run_dir / "last", device=self.device)
            self.model, self.src_tok, self.tgt_tok = loaded.model.train(), loaded.src_tokenizer, loaded.tgt_tokenizer
        else:
            self.src_tok, self.tgt_tok = self._tokenizers()
            self.model = Seq2Seq.from_config(config.model, src_vocab=len(self.src_tok), tgt_vocab=len(self.tgt_tok))
            self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, train_cfg)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=train_cfg.lr_decay, patience=train_cfg.lr_patience
        )
        corpus = _digest(self.train_corpus.src, self.train_corpus.tgt)
        self.progress = Progress(corpus=corpus)
        if resume:
            saved = load_training_state(run_dir / "last", self.optimizer)
            try:
                self.progress = Progress(**saved)
            except TypeError as error:
                raise ModelDirError(
                    f"{run_dir / 'last'}/trainer.json does not hold a training position: {error}"
                ) from None
            self._check_same_corpus(self.progress, corpus=corpus)
            self.scheduler.load_state_dict(self.progress.scheduler)
            # The schedule's settings may be changed on resume (train.* overrides); its counters carry on.
            self.scheduler.factor, self.scheduler.patience = train_cfg.lr_decay, train_cfg.lr_patience
            log.info(
                "resumed %s at step %d (epoch %d, batch %d)",
                run_dir / "last",
                self.progress.step,
                self.progress.epoch,
                self.progress.batch_in_epoch,
            )
        if self.world.rank > 0:  # rank 0 draws the dropout masks a single process would, the others their own
            torch.manual_seed(train_cfg.seed + 1_000_003 * self.world.rank + self.progress.step)
        self.step_model = self.world.parallel(self.model)  # DDP under torchrun, else the model itself
        ranks = f", data-parallel over {self.world.size} ranks" if self.world.size > 1 else ""
        log.info("model: %s parameters on %s%s", f"{self.model.num_parameters():,}", self.device, ranks)
        self.valid_src = self.src_tok.encode(self.valid_corpus.src)
        self.valid_tgt = self.tgt_tok.encode(self.valid_corpus.tgt)
        self._last_save = time.monotonic()

    def _check_same_corpus(self, saved: Progress, *, corpus: str) -> None:
        """Resume only on the training pairs the run started with (the same data, cleaned by the same rules)."""
        pairs = len(self.train_corpus)
        changed = bool(saved.corpus) and saved.corpus != corpus
        if changed or any(i >= pairs for batch in saved.epoch_batches for i in batch):
            raise ValueError(
                f"cannot resume {self.run_dir}: its training pairs have changed since it started ({pairs:,} in "
                f"{self.config.data.path} after cleaning now); resume on the same data, or start a new run"
            )
        saved.corpus = corpus

    # --- the loop ----------------------------------------------------------------------------------

    def fit(self) -> Progress:
        """Train until early stopping, the epoch limit, the time limit or the step limit."""
        train_cfg = self.config.train
        self._started = time.monotonic() - self.progress.elapsed
        if self._limit_reached():  # resumed after its last checkpoint was written: a kill at the very end
            log.info("the run in %s already reached its step or time limit", self.run_dir)
            return self.progress
        if self.progress.step > 0 and (reason := self._stop_reason()):  # it had stopped (or would have)
            log.info("the run in %s is over: %s", self.run_dir, reason)
            return self.progress
        log_path = self.run_dir / "log.jsonl" if self.world.is_main else Path(os.devnull)
        with log_path.open("a", encoding="utf-8") as self._log_file:
            while self.progress.epoch <= train_cfg.max_epochs:
                if self._train_epoch():
                    break
                self._next_epoch()
                if train_cfg.eval_every == 0 and self._validate_and_save():
                    break
            else:  # steps since the last validation (a timed save of the last step validates nothing)
                if self.progress.evaluated_step != self.progress.step:
                    self._validate_and_save()
        return self.progress

    def _next_epoch(self) -> None:
        """At an epoch's end: a checkpoint taken now resumes at the start of the next one."""
        self.progress.epoch += 1
        self.progress.batch_in_epoch = 0
        self.progress.epoch_batches = []

    def _tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        """Trained by rank 0 and sent to the others, so that all ranks hold the very same vocabularies."""
        if self.world.size == 1:
            return train_tokenizers(self.train_corpus, self.config)
        trained = train_tokenizers(self.train_corpus, self.config) if self.world.is_main else None
        src_proto, tgt_proto = self.world.broadcast(
            (trained[0].model_proto, trained[1].model_proto) if trained else (b"", b"")
        )
        if trained:
            return trained
        src_tok = Tokenizer(model_proto=src_proto)
        return src_tok, src_tok if self.config.vocab.joint else Tokenizer(model_proto=tgt_proto)

    def _epoch_data(self) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        """The epoch's pieces and batches, a pure function of (seed, epoch): a resumed run sees the same
        batches, and so does every rank. With subword sampling a new process draws other pieces from the
        same seed; the batches, kept in `Progress`, stay the same, so that every sentence is still trained
        on once per epoch (the resumed rest of it in other segmentations)."""
        seed = (self.config.train.seed * 1000 + self.progress.epoch) % 2**32  # SentencePiece takes 32 bits
        alpha = self.config.vocab.sampling_alpha
        if alpha > 0 and self.world.size > 1:
            # SentencePiece draws other samples in each process from the same seed: all ranks take rank 0's
            pieces = self._encode(seed, alpha) if self.world.is_main else ([], [])
            src, tgt = self.world.broadcast(pieces)
        else:
            src, tgt = self._encode(seed, alpha)
        batches = self.progress.epoch_batches or make_batches(
            src, tgt, batch_tokens=self.config.train.batch_tokens, rng=random.Random(seed)
        )
        if alpha > 0:
            self.progress.epoch_batches = batches
        if self.world.size > 1:  # ranks that read different corpora would wait for each other forever
            self.world.check_same(_digest(batches, src, tgt), f"epoch {self.progress.epoch}'s sentences")
        return src, tgt, batches

    def _encode(self, seed: int, alpha: float) -> tuple[list[list[int]], list[list[int]]]:
        seed_sampling(seed)
        src = self.src_tok.encode(self.train_corpus.src, sampling_alpha=alpha)
        return src, self.tgt_tok.encode(self.train_corpus.tgt, sampling_alpha=alpha)

    def _train_epoch(self) -> bool:
        """The rest of the current epoch from the saved position; True when training should stop early."""
        train_cfg = self.config.train
        src, tgt, batches = self._epoch_data()
        self.model.train()
        bar = tqdm(
            total=len(batches),
            initial=self.progress.batch_in_epoch,
            desc=f"epoch {self.progress.epoch}",
            unit="batch",
            mininterval=1.0,
            dynamic_ncols=True,
            disable=not self.world.is_main,
        )
        window_tokens, window_loss, window_start = 0, 0.0, time.monotonic()
        for indices in batches[self.progress.batch_in_epoch :]:
            share, weight = rank_share(indices, tgt, self.world)
            batch = collate(share, src, tgt, self.device)
            loss = train_step(self.step_model, self.optimizer, batch, train_cfg, weight=weight)
            self.progress.step += 1
            self.progress.batch_in_epoch += 1
            tokens = batch.tgt_tokens if weight > 0 else 0
            window_tokens += tokens
            window_loss += loss * tokens
            bar.update(1)
            if self.progress.step % LOG_EVERY == 0:
                seconds = time.monotonic() - window_start
                all_tokens, all_loss = self.world.sum([window_tokens, window_loss])  # every rank, same step
                figures = {"loss": all_loss / all_tokens, "lr": self._lr(), "tgt_tok_per_s": all_tokens / seconds}
                bar.set_postfix(
                    loss=f"{figures['loss']:.3f}", lr=f"{figures['lr']:.2g}", tok_s=f"{figures['tgt_tok_per_s']:.0f}"
                )
                self._write_log("train", **figures)
                window_tokens, window_loss, window_start = 0, 0.0, time.monotonic()
            if self._limit_reached():
                bar.close()
                if self.progress.batch_in_epoch == len(batches):  # its epoch's end too, evaluated here once
                    self._next_epoch()
                self._validate_and_save()
                return True
            paused = time.monotonic()  # validating and saving are not training: not in the tokens/s window
            if train_cfg.eval_every > 0 and self.progress.step % train_cfg.eval_every == 0:
                if self._validate_and_save():
                    bar.close()
                    return True
                self.model.train()
            elif self.world.is_main and time.monotonic() - self._last_save >= 60 * train_cfg.save_every_minutes:
                self._save(best=False)
            window_start += time.monotonic() - paused
        bar.close()
        return False

    # --- validation and checkpoints ------------------------------------------------------------------

    def _validate_and_save(self) -> bool:
        """Validate, step the LR schedule and early stopping, checkpoint; True when training should stop.

        Under DDP rank 0 validates and checkpoints; every rank steps the schedule and early stopping from
        rank 0's BLEU, so they all change the learning rate and stop at the same step.
        """
        if self.world.size > 1:  # DDP keeps ranks identical only while all they draw on is: stop if it was not
            self.world.check_same(tensors_digest(model_weights(self.model)), f"weights at step {self.progress.step}")
        val_loss, bleu = (self.validation_loss(), self.validation_bleu()) if self.world.is_main else (0.0, 0.0)
        bleu = self.world.broadcast(bleu)
        progress = self.progress
        improved = bleu > progress.best_bleu
        if improved:
            progress.best_bleu, progress.best_step, progress.evals_without_improvement = bleu, progress.step, 0
        else:
            progress.evals_without_improvement += 1
        progress.evaluated_step = progress.step
        self.scheduler.step(bleu)
        if self.world.is_main:
            self._write_log(
                "eval",
                val_loss=val_loss,
                val_ppl=math.exp(min(val_loss, 50)),
                val_bleu=bleu,
                lr=self._lr(),
                best_bleu=progress.best_bleu,
            )
            tqdm.write(
                f"step {progress.step}: validation loss {val_loss:.3f}, greedy BLEU {bleu:.2f} "
                f"(best {progress.best_bleu:.2f} at step {progress.best_step}), lr {self._lr():.2g}, "
                f"{self._elapsed() / 60:.1f} min"
            )
        self._save(best=improved)
        reason = self._stop_reason()
        if reason and self.world.is_main:
            tqdm.write(reason)
        return bool(reason)

    def _stop_reason(self) -> str:
        """Why training should stop after this evaluation; empty when it should go on."""
        train_cfg = self.config.train
        if self.progress.evals_without_improvement >= train_cfg.patience:
            return f"early stopping: no better validation BLEU in {train_cfg.patience} evaluations"
        if self._lr() < train_cfg.min_lr:
            return f"stopping: learning rate fell below {train_cfg.min_lr}"
        return ""

    @torch.inference_mode()
    def validation_loss(self) -> float:
        """Per-token cross-entropy (no smoothing) of the validation references under teacher forcing."""
        self.model.eval()
        total, tokens = 0.0, 0
        order = sorted(range(len(self.valid_src)), key=lambda i: len(self.valid_tgt[i]))
        for start in range(0, len(order), 100):
            batch = collate(order[start : start + 100], self.valid_src, self.valid_tgt, self.device)
            logits = self.model(batch.src, batch.lengths, batch.tgt_in)
            total += float(
                F.cross_entropy(
                    logits.view(-1, logits.size(-1)), batch.tgt_out.view(-1), ignore_index=PAD, reduction="sum"
                )
            )
            tokens += batch.tgt_tokens
        self.model.train()
        return total / tokens

    def validation_bleu(self) -> float:
        """Corpus BLEU of greedy translations of the validation set (or its first `eval_max_sentences`)."""
        limit = self.config.train.eval_max_sentences or len(self.valid_corpus)
        translator = Translator(model=self.model, src_tokenizer=self.src_tok, tgt_tokenizer=self.tgt_tok)
        decode = dataclasses.replace(self.config.decode, beam_size=1, n_best=1, batch_size=200)
        outputs = translator.translate(self.valid_corpus.src[:limit], decode)
        return float(sacrebleu.corpus_bleu([o.text for o in outputs], [self.valid_corpus.tgt[:limit]]).score)

    def _save(self, *, best: bool) -> None:
        """Checkpoint on rank 0, which holds the same weights and state as every other rank."""
        if self.world.is_main:
            self._write_checkpoint(best=best)
        self._last_save = time.monotonic()

    def _write_checkpoint(self, *, best: bool) -> None:
        self.progress.elapsed = self._elapsed()
        self.progress.scheduler = self.scheduler.state_dict()
        trainer_state = {k: v for k, v in vars(self.progress).items()}

        def write(path: Path) -> None:
            save_model_dir(path, self.model, self.config, self.src_tok, self.tgt_tok)
            save_training_state(path, self.optimizer, trainer_state)

        checkpoint = commit_checkpoint(self.run_dir, self.progress.step, write)
        if best:
            point_link(self.run_dir, "best", checkpoint)
        point_link(self.run_dir, "last", checkpoint)
        prune_checkpoints(self.run_dir, KEEP_CHECKPOINTS)

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _limit_reached(self) -> bool:
        minutes = self.config.train.max_minutes
        out_of_time = minutes > 0 and self._elapsed() >= 60 * minutes
        if minutes > 0:  # by rank 0's clock: all ranks must stop after the same step
            out_of_time = self.world.broadcast(out_of_time)
        return out_of_time or (self.max_steps > 0 and self.progress.step >= self.max_steps)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _write_log(self, event: str, **figures: float) -> None:
        record = {
            "event": event,
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "minutes": round(self._elapsed() / 60, 3),
            **{k: round(v, 5) for k, v in figures.items()},
        }
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import mt.train
from mt.config import ModelConfig
from mt.distributed import World
from mt.loss import label_smoothed_cross_entropy
from mt.model import Seq2Seq
from mt.tokenizer import PAD
from mt.train import RunDirError, Trainer, collate, make_batches, rank_share
from mt.translator import Translator

from .conftest import tiny_config


def test_batches_cover_every_sentence_once_within_the_token_budget() -> None:
    rng = random.Random(0)
    src = [[5] * rng.randint(1, 30) for _ in range(500)]
    tgt = [[6] * rng.randint(1, 30) for _ in range(500)]
    batches = make_batches(src, tgt, batch_tokens=120, rng=random.Random(1))
    assert sorted(i for batch in batches for i in batch) == list(range(500))
    for batch in batches:
        assert len(batch) * max(len(tgt[i]) + 1 for i in batch) <= 120 or len(batch) == 1


def test_batches_are_a_function_of_the_seed() -> None:
    src = tgt = [[5] * (i % 17 + 1) for i in range(300)]
    first = make_batches(src, tgt, batch_tokens=100, rng=random.Random(3))
    assert first == make_batches(src, tgt, batch_tokens=100, rng=random.Random(3))
    assert first != make_batches(src, tgt, batch_tokens=100, rng=random.Random(4))


def test_the_ranks_shares_of_a_batch_average_to_the_gradient_of_the_whole_batch() -> None:
    """What DDP computes (the mean over ranks of each share's weighted gradient) is the gradient of the
    batch's mean loss per target token, also when a rank gets no sentence of its own."""
    rng = random.Random(0)
    src = [[rng.randrange(4, 30) for _ in range(rng.randint(2, 9))] for _ in range(7)]
    tgt = [[rng.randrange(4, 30) for _ in range(rng.randint(2, 9))] for _ in range(7)]
    torch.manual_seed(0)
    config = ModelConfig(emb_size=8, enc_hidden=8, dec_hidden=8, attn_size=8, dropout=0.0, emb_dropout=0.0)
    model = Seq2Seq.from_config(config, src_vocab=30, tgt_vocab=30)

    def gradient(indices: list[int], weight: float) -> torch.Tensor:
        """Of the summed loss of the sentences `indices` times `weight`: all parameters', as one vector."""
        model.zero_grad()
        batch = collate(indices, src, tgt, torch.device("cpu"))
        logits = model(batch.src, batch.lengths, batch.tgt_in)
        loss = label_smoothed_cross_entropy(
            logits.flatten(0, 1), batch.tgt_out.flatten(), smoothing=0.1, ignore_index=PAD
        )
        (loss * weight).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    for batch, size in (([0, 1, 2, 3, 4, 5, 6], 2), ([0, 1, 2, 3, 4, 5, 6], 3), ([6], 2)):
        shares = [rank_share(batch, tgt, World(rank=rank, size=size)) for rank in range(size)]
        assert sorted(i for share, weight in shares if weight > 0 for i in share) == batch
        mean_over_ranks = torch.stack([gradient(share, weight) for share, weight in shares]).mean(dim=0)
        whole = gradient(batch, 1 / sum(len(tgt[i]) + 1 for i in batch))
        torch.testing.assert_close(mean_over_ranks, whole, rtol=1e-5, atol=1e-7)


def test_training_learns_to_reverse_sequences(reverse_corpus: Path, tmp_path: Path) -> None:
    """A model that learned nothing, or whose attention is broken, stays far below this BLEU."""
    config = tiny_config(reverse_corpus, max_epochs=6)
    untrained_bleu = Trainer(config, tmp_path / "untrained", max_steps=1).validation_bleu()
    progress = Trainer(config, tmp_path / "run").fit()
    assert untrained_bleu < 5
    assert progress.best_bleu > 60
    translator = Translator.from_dir(tmp_path / "run" / "best", device="cpu")
    assert translator.translate(["alpha bravo charlie"])[0].text == "CHARLIE BRAVO ALPHA"


def test_bf16_training_multiplies_in_bfloat16_and_keeps_fp32_weights(reverse_corpus: Path, tmp_path: Path) -> None:
    config = tiny_config(reverse_corpus, max_epochs=6, precision="bf16")
    trainer = Trainer(config, tmp_path / "run")
    output_dtypes: list[torch.dtype] = []
    trainer.model.decoder.output.register_forward_hook(lambda _m, _i, out: output_dtypes.append(out.dtype))
    progress = trainer.fit()
    assert progress.best_bleu > 60
    assert torch.bfloat16 in output_dtypes  # the training steps' logits (validation translates in fp32)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(v.dtype == torch.float32 for s in state.values() for v in s.values() if v.is_floating_point())
    weights = load_file(tmp_path / "run" / "best" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_a_resumed_run_ends_in_the_same_state_as_an_uninterrupted_one(reverse_corpus: Path, tmp_path: Path) -> None:
    # evaluations every 5 steps, the learning rate halved after 1 without a better BLEU: the schedule's
    # counters must carry over the resume too
    config = tiny_config(reverse_corpus, max_epochs=2, eval_every=5, lr_patience=1)
    config.model.dropout = 0.2  # dropout masks must continue from the saved RNG state
    config.vocab.sampling_alpha = 0.1  # so must the subword samples
    Trainer(config, tmp_path / "straight", max_steps=40).fit()
    # stops mid-epoch, at an evaluation: a run stopped between evaluations evaluates where it stops, and
    # that evaluation counts for the schedule, so the resumed run is not the uninterrupted one (a kill
    # between evaluations, in tests/test_faults.py, resumes exactly)
    Trainer(config, tmp_path / "interrupted", max_steps=20).fit()
    Trainer(config, tmp_path / "interrupted", resume=True, max_steps=40).fit()

    straight = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "interrupted" / "last" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    straight_state = json.loads((tmp_path / "straight" / "last" / "trainer.json").read_text())
    resumed_state = json.loads((tmp_path / "interrupted" / "last" / "trainer.json").read_text())
    for key in ("step", "epoch", "batch_in_epoch", "best_bleu", "best_step", "scheduler"):
        assert straight_state[key] == resumed_state[key], key
    evaluations = [
        [(r["step"], r["lr"]) for r in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())]
        for run in ("straight", "interrupted")
    ]
    assert evaluations[0] == evaluations[1]
    assert [lr for step, lr in evaluations[0] if step > 20][-1] < [lr for step, lr in evaluations[0] if step <= 20][-1]


def test_a_run_stopped_at_an_epochs_end_resumes_without_evaluating_it_twice(
    reverse_corpus: Path, tmp_path: Path
) -> None:
    """Evaluations once per epoch: stopped by --max-steps at an epoch's last batch, the run evaluates there
    once, as its epoch's end, and the resumed run goes on from the next epoch like an uninterrupted one."""
    config = tiny_config(reverse_corpus, max_epochs=3, lr_patience=1)
    Trainer(config, tmp_path / "straight").fit()
    evaluations = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    first_epoch_end = next(r["step"] for r in evaluations if r["event"] == "eval")
    Trainer(config, tmp_path / "interrupted", max_steps=first_epoch_end).fit()
    Trainer(config, tmp_path / "interrupted", resume=True).fit()

    runs = [
        [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("straight", "interrupted")
    ]
    straight, resumed = ([(r["step"], r["epoch"], r["lr"]) for r in run if r["event"] == "eval"] for run in runs)
    assert resumed == straight
    states = [json.loads((tmp_path / run / "last" / "trainer.json").read_text()) for run in ("straight", "interrupted")]
    for key in ("step", "epoch", "batch_in_epoch", "evals_without_improvement", "scheduler"):
        assert states[0][key] == states[1][key], key


def test_the_logged_speed_counts_training_time_only(
    reverse_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a clock where a step takes 1 s and a validation 1,000 s, 50 steps log the same tokens/s with
    validations every 10 steps as without any (validating had halved it with eval_every 30)."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(mt.train, "time", SimpleNamespace(monotonic=lambda: clock.now))
    real_step, real_bleu = mt.train.train_step, Trainer.validation_bleu

    def step(*args: Any, **kwargs: Any) -> float:
        clock.now += 1.0
        return real_step(*args, **kwargs)

    def validation_bleu(self: Trainer) -> float:
        clock.now += 1000.0
        return real_bleu(self)

    monkeypatch.setattr(mt.train, "train_step", step)
    monkeypatch.setattr(Trainer, "validation_bleu", validation_bleu)
    speeds = []
    for eval_every in (0, 10):
        run = tmp_path / f"every-{eval_every}"
        config = tiny_config(reverse_corpus, eval_every=eval_every, batch_tokens=150)  # 50 steps in one epoch
        Trainer(config, run, max_steps=50).fit()
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        speeds.append([r["tgt_tok_per_s"] for r in records if r["event"] == "train"])
    assert len(speeds[0]) == 1
    assert speeds[1] == speeds[0]


def test_a_folder_holding_a_run_is_not_overwritten(reverse_corpus: Path, tmp_path: Path) -> None:
    config = tiny_config(reverse_corpus)
    Trainer(config, tmp_path / "run", max_steps=2).fit()
    with pytest.raises(RunDirError, match="already holds a training run; pass --resume"):
        Trainer(config, tmp_path / "run")


def test_a_run_resumes_only_on_the_training_pairs_it_started_with(reverse_corpus: Path, tmp_path: Path) -> None:
    """Its batches are sentence ids into the cleaned pairs: other pairs would make them other sentences, or
    ids past the end (an IndexError, when a new cleaning rule dropped a pair of a run begun before it)."""
    data = tmp_path / "data"
    shutil.copytree(reverse_corpus, data)
    config = tiny_config(data)
    config.vocab.sampling_alpha = 0.1  # the epoch's batches are kept in the checkpoint
    Trainer(config, tmp_path / "run", max_steps=3).fit()
    lines = (data / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(lines[1:]) + "\n")  # one pair fewer
    with pytest.raises(ValueError, match=r"its training pairs have changed since it started \(2,999 in"):
        Trainer(config, tmp_path / "run", resume=True, max_steps=6)
    # a checkpoint from before the pairs' digest was kept: its batches still give the change away
    state = tmp_path / "run" / "last" / "trainer.json"
    saved = json.loads(state.read_text())
    del saved["corpus"]
    state.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="its training pairs have changed"):
        Trainer(config, tmp_path / "run", resume=True, max_steps=6)


def test_resume_without_a_checkpoint_is_a_clear_error(reverse_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=r"cannot resume: .* has no checkpoint"):
        Trainer(tiny_config(reverse_corpus), tmp_path / "empty", resume=True)


def test_unwritable_output_folder_fails_at_start(reverse_corpus: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirError, match="cannot write to the output folder"):
        Trainer(tiny_config(reverse_corpus), blocker / "run")


def test_training_log_records_loss_and_validation(reverse_corpus: Path, tmp_path: Path) -> None:
    Trainer(tiny_config(reverse_corpus, eval_every=10), tmp_path / "run", max_steps=20).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20]
    assert all({"val_loss", "val_bleu", "lr", "minutes"} <= r.keys() for r in evals)


def test_steps_after_the_last_evaluation_are_saved_at_the_end(reverse_corpus: Path, tmp_path: Path) -> None:
    config = tiny_config(reverse_corpus, max_epochs=1, eval_every=30)
    progress = Trainer(config, tmp_path / "run").fit()
    assert progress.step % 30 != 0  # the epoch does not end on an evaluation
    saved = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert saved["step"] == progress.step


def test_the_last_steps_are_evaluated_at_the_end_though_a_timed_save_took_them(
    reverse_corpus: Path, tmp_path: Path
) -> None:
    config = tiny_config(reverse_corpus, max_epochs=1, eval_every=30, save_every_minutes=1e-9)  # a save every step
    progress = Trainer(config, tmp_path / "run").fit()
    assert progress.step % 30 != 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "eval"][-1] == progress.step
    saved = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert (saved["step"], saved["evaluated_step"]) == (progress.step, progress.step)


@pytest.mark.parametrize("resume", [True, False])
def test_a_run_copied_with_its_links_followed_is_refused_at_start(
    reverse_corpus: Path, tmp_path: Path, resume: bool
) -> None:
    """`cp -rL`, `scp -r`: `last` and `best` become folders, which a new checkpoint's link cannot replace."""
    Trainer(tiny_config(reverse_corpus), tmp_path / "run", max_steps=2).fit()
    shutil.copytree(tmp_path / "run", tmp_path / "copy", symlinks=False)
    with pytest.raises(RunDirError, match=r"last is a copy of a checkpoint, not a link to one"):
        Trainer(tiny_config(reverse_corpus), tmp_path / "copy", resume=resume)


def test_a_dangling_last_link_is_named(reverse_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last").symlink_to("checkpoints/step-0000009")
    with pytest.raises(RunDirError, match="points to a checkpoint that no longer exists"):
        Trainer(tiny_config(reverse_corpus), tmp_path / "run", resume=True)

"""SentencePiece subword tokenizers (Kudo & Richardson 2018), with optional subword regularization (Kudo 2018).

Piece ids are fixed across every model: 0 = <pad>, 1 = <unk>, 2 = <s>, 3 = </s>.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class TokenizerError(ValueError):
    """A file that is not a SentencePiece model with this project's special piece ids; the message names it."""


def seed_sampling(seed: int) -> None:
    """Seed SentencePiece's (process-wide) generator for subword sampling."""
    spm.set_random_generator_seed(seed)


class Tokenizer:
    """One SentencePiece model: text <-> piece ids."""

    def __init__(self, *, model_proto: bytes) -> None:
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        *,
        vocab_size: int,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        seed: int = 0,
    ) -> Tokenizer:
        seed_sampling(seed)
        proto = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=proto,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                pad_id=PAD,
                unk_id=UNK,
                bos_id=BOS,
                eos_id=EOS,
                hard_vocab_limit=False,  # a tiny corpus may not support the requested size: use what it supports
                num_threads=1,  # the same pieces on every machine
                minloglevel=2,
            )
        except RuntimeError as error:  # e.g. fewer pieces than the corpus has characters
            reason = " ".join(str(error).split("] ")[-1].split())  # without SentencePiece's source location
            raise TokenizerError(f"cannot train a SentencePiece model of {vocab_size} pieces: {reason}") from None
        return cls(model_proto=proto.getvalue())

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Read a model file, refusing one that does not parse or numbers its special pieces otherwise."""
        proto = path.read_bytes()
        if not proto:  # SentencePiece would accept it as a model with no pieces
            raise TokenizerError(f"{path} is empty, not a SentencePiece model")
        try:
            tokenizer = cls(model_proto=proto)
        except RuntimeError as error:
            raise TokenizerError(f"{path} is not a SentencePiece model ({' '.join(str(error).split())})") from error
        sp = tokenizer.sp
        special = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        if special != (PAD, UNK, BOS, EOS):
            raise TokenizerError(
                f"{path} numbers <pad>, <unk>, <s>, </s> as {list(special)}; models here need {[PAD, UNK, BOS, EOS]}"
            )
        return tokenizer

    def save(self, path: Path) -> None:
        path.write_bytes(self.model_proto)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str], *, sampling_alpha: float = 0.0) -> list[list[int]]:
        """Piece ids of each text (no <s> or </s>); `sampling_alpha` > 0 samples a segmentation.

        Samples are reproducible after `seed_sampling(seed)` within one process: they are drawn on one
        thread, because SentencePiece gives each worker thread its own copy of the seeded generator. A new
        process draws other samples from the same seed (sentencepiece 0.2.3), so a run resumed after a
        kill sees other samples than one never interrupted.

        Always on the calling thread: SentencePiece starts a thread pool for every call, which made one
        sentence take 152 us instead of 61 us (and py-spy found a busy server's event loop in it 17% of
        the time), while all 29,000 Multi30k training sentences take 0.13 s on one thread, 0.10 s on a pool.
        """
        ids: list[list[int]] = self.sp.encode(
            texts, enable_sampling=sampling_alpha > 0, alpha=sampling_alpha, nbest_size=-1, num_threads=1
        )
        return ids

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        text: str = self.sp.decode(ids)
        return text

from __future__ import annotations

from pathlib import Path

import pytest

from mt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, TokenizerError, seed_sampling

from .conftest import reverse_task


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([row["src"] for row in reverse_task(500, seed=0)], vocab_size=40)


def test_too_few_pieces_for_the_corpus_is_a_clear_error() -> None:
    with pytest.raises(
        TokenizerError, match="cannot train a SentencePiece model of 8 pieces: Vocabulary size is smaller"
    ):
        Tokenizer.train([row["src"] for row in reverse_task(50, seed=0)], vocab_size=8)


def test_special_pieces_have_fixed_ids(tokenizer: Tokenizer) -> None:
    assert [tokenizer.sp.id_to_piece(i) for i in (PAD, UNK, BOS, EOS)] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_encode_then_decode_gives_the_text_back(tokenizer: Tokenizer) -> None:
    text = "delta alpha kilo"
    [ids] = tokenizer.encode([text])
    assert tokenizer.decode(ids) == text
    assert PAD not in ids and EOS not in ids


def test_subword_sampling_varies_the_segmentation_not_the_text() -> None:
    sentences = [" ".join(reverse_task(1, seed=i)[0]["src"].split()) for i in range(300)]
    tokenizer = Tokenizer.train(sentences, vocab_size=30)  # too small for whole words: many segmentations
    samples = tokenizer.encode([sentences[0]] * 30, sampling_alpha=0.1)
    assert len({tuple(s) for s in samples}) > 1
    assert {tokenizer.decode(s) for s in samples} == {sentences[0]}


def test_subword_samples_are_reproducible_from_the_seed(tokenizer: Tokenizer) -> None:
    texts = [row["src"] for row in reverse_task(50, seed=4)]
    draws = []
    for seed in (7, 7, 8):
        seed_sampling(seed)
        draws.append(tokenizer.encode(texts, sampling_alpha=0.1))
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def test_saved_model_loads_with_identical_pieces(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path / "src.spm")
    loaded = Tokenizer.load(tmp_path / "src.spm")
    assert len(loaded) == len(tokenizer)
    assert loaded.encode(["golf lima echo"]) == tokenizer.encode(["golf lima echo"])

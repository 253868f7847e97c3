from __future__ import annotations

from pathlib import Path

import pytest
import sacrebleu

from mt.data import CorpusError
from mt.evaluate import read_test_set, score


def test_perfect_hypotheses_score_100_and_signature_is_cased_13a() -> None:
    refs = ["A dog runs on the beach.", "Two children play."]
    result = score(refs, refs)
    assert result.bleu == pytest.approx(100.0)
    assert result.chrf == pytest.approx(100.0)
    assert "case:mixed" in result.bleu_signature and "tok:13a" in result.bleu_signature


def test_bleu_and_chrf_are_sacrebleus_own_scores() -> None:
    refs = ["A dog runs on the beach in the sun.", "Two children play with a red ball."]
    hyps = ["A dog is running on the beach.", "Two kids play with a ball."]
    result = score(hyps, refs)
    assert result.bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert result.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert result.bleu != pytest.approx(result.chrf)


def test_case_errors_cost_bleu() -> None:
    refs = ["A dog runs on the beach in the sun."]
    assert score(["a dog runs on the beach in the sun."], refs).bleu < 100


def test_source_and_reference_files_must_have_equal_lengths(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "r").write_text("a\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"has 2 lines but .* has 1"):
        read_test_set(
            data=None, split="test", src=str(tmp_path / "s"), ref=str(tmp_path / "r"), src_lang="de", tgt_lang="en"
        )


def test_a_source_file_needs_its_reference(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="--src and --ref go together"):
        read_test_set(data=None, split="test", src="x", ref=None, src_lang="de", tgt_lang="en")

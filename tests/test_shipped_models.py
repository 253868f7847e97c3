"""The models the project ships load and translate real validation sentences sensibly."""

from __future__ import annotations

from pathlib import Path

import pytest
import sacrebleu

from mt.data import load_split
from mt.translator import Translator

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "models"
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"
SHIPPED = sorted(path.name for path in MODELS.glob("*") if (path / "config.json").is_file())
FLOOR = 25.0  # BLEU on the first 50 validation sentences; a broken model or loader scores near 0


def test_the_default_model_is_shipped() -> None:
    assert "de-en" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_stays_under_50_mb(name: str) -> None:
    size = sum(file.stat().st_size for file in (MODELS / name).iterdir())
    assert size < 50e6


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_translates_validation_sentences(name: str) -> None:
    if not MULTI30K.is_dir():
        pytest.skip(f"{MULTI30K} is not beside the project")
    translator = Translator.from_dir(MODELS / name, device="cpu")
    corpus = load_split(str(MULTI30K), "validation", translator.source_lang, translator.target_lang)
    hypotheses = [t.text for t in translator.translate(corpus.src[:50])]
    assert sacrebleu.corpus_bleu(hypotheses, [corpus.tgt[:50]]).score > FLOOR

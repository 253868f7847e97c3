"""Pathological input: repeated tokens and very long texts get a bounded output in bounded time, or a
clear error; none holds the decoding worker past the time budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from mt.config import DecodeConfig
from mt.translator import Translator

from .conftest import client_for

LONG = " ".join(["alpha bravo charlie delta echo"] * 120)  # 600 words


@pytest.mark.parametrize("beam_size", [1, 5])
def test_output_length_is_bounded_by_the_input_length(models_dir: Path, beam_size: int) -> None:
    translator = Translator.from_dir(models_dir / "src-tgt", device="cpu")
    decode = DecodeConfig(beam_size=beam_size, max_len_a=1.5, max_len_b=10)
    for text in ("alpha " * 500, "golf" * 300, LONG):
        pieces = len(translator.src_tokenizer.encode([text.strip()])[0]) + 1  # with </s>
        [translation] = translator.translate([text], decode)
        assert len(translation.candidates[0].pieces) <= 1.5 * pieces + 10


def test_a_long_text_is_refused_with_its_piece_count(models_dir: Path) -> None:
    with client_for(models_dir, max_chars=10_000) as client:  # the default piece limit applies
        response = client.post("/translate", json={"q": LONG, "source": "src", "target": "tgt"})
    assert response.status_code == 400
    assert "subword pieces long; at most 400 per text" in response.json()["error"]


def test_a_decode_past_the_time_budget_is_stopped_with_a_clear_error(models_dir: Path) -> None:
    settings = {"max_chars": 10_000, "max_pieces": 10_000, "request_timeout_s": 0.01}
    with client_for(models_dir, **settings) as client:  # type: ignore[arg-type]
        # about 1,500 decoder steps for 10 beams: far more than 10 ms on any machine
        response = client.post("/translate", json={"q": LONG, "source": "src", "target": "tgt", "beam_size": 10})
        assert response.status_code == 503
        assert "time budget of 0.01 s" in response.json()["error"]
        assert response.headers["Retry-After"] == "1"
    with client_for(models_dir, max_chars=10_000, max_pieces=10_000) as client:  # the same text, in time
        response = client.post("/translate", json={"q": LONG, "source": "src", "target": "tgt", "beam_size": 2})
        assert response.status_code == 200
        assert response.json()["translatedText"]

"""Pathological input: repeated tokens and very long texts get a bounded output in bounded time, or a
clear error; none holds the decoding worker past the time budget."""

from __future__ import annotations

import time
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


@pytest.mark.parametrize("beam_size", [1, 5])
def test_the_output_bound_cuts_a_translation_that_would_be_longer(models_dir: Path, beam_size: int) -> None:
    """The test model stops by itself long before 1.5 x input + 10: a tight bound shows that it acts."""
    translator = Translator.from_dir(models_dir / "src-tgt", device="cpu")
    text = "alpha bravo golf kilo lima echo"
    [free] = translator.translate([text], DecodeConfig(beam_size=beam_size))
    pieces = len(translator.src_tokenizer.encode([text])[0]) + 1  # with </s>
    bound = int(0.25 * pieces + 1)
    assert len(free.candidates[0].pieces) > bound
    [cut] = translator.translate([text], DecodeConfig(beam_size=beam_size, max_len_a=0.25, max_len_b=1))
    assert len(cut.candidates[0].pieces) == bound


def test_a_long_text_is_refused_with_its_piece_count(models_dir: Path) -> None:
    with client_for(models_dir, max_chars=10_000) as client:  # the default piece limit applies
        response = client.post("/translate", json={"q": LONG, "source": "src", "target": "tgt"})
    assert response.status_code == 400
    assert "subword pieces; at most 400 per sentence" in response.json()["error"]


def test_a_decode_past_the_time_budget_is_stopped_with_a_clear_error(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with client_for(models_dir, request_timeout_s=0.05) as client:
        decoder = client.app.state.service.models[("src", "tgt")].translator.model.decoder  # type: ignore[attr-defined]
        real_step, steps = decoder.step, []

        def slow_step(*args: object) -> object:  # 20 ms a step: the budget runs out by the third
            steps.append(1)
            time.sleep(0.02)
            return real_step(*args)

        monkeypatch.setattr(decoder, "step", slow_step)
        response = client.post("/translate", json={"q": "alpha bravo golf kilo lima", "source": "src", "target": "tgt"})
        assert response.status_code == 503
        assert "time budget of 0.05 s" in response.json()["error"]
        assert response.headers["Retry-After"] == "1"
        assert len(steps) <= 3  # stopped at the step the budget ran out, not at the end of the search
    with client_for(models_dir, max_chars=10_000, max_pieces=10_000) as client:  # the same text, in time
        response = client.post("/translate", json={"q": LONG, "source": "src", "target": "tgt", "beam_size": 2})
        assert response.status_code == 200
        assert response.json()["translatedText"]

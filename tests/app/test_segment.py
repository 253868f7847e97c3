"""A text of several sentences or lines is translated sentence by sentence and joined again."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from app.segment import alignment_size, join, split
from mt.translator import Candidate, Translation

SERVED = {"source": "src", "target": "tgt"}


@pytest.mark.parametrize(
    ("text", "sentences", "separators"),
    [
        ("Ein Hund. Zwei Katzen! Drei Vögel?", ["Ein Hund.", "Zwei Katzen!", "Drei Vögel?"], [" ", " "]),
        ("Ein Hund.\nZwei Katzen\n\n Drei Vögel. ", ["Ein Hund.", "Zwei Katzen", "Drei Vögel."], ["\n", "\n\n"]),
        ('Er sagt: "Hallo." Dann geht er.', ['Er sagt: "Hallo."', "Dann geht er."], [" "]),
        ("z. B. ein Hund", ["z.", "B. ein Hund"], [" "]),  # no new sentence before a lower-case word
        ("ohne Punkt", ["ohne Punkt"], []),
        ("Er kam.\n\nund ging.", ["Er kam.", "und ging."], ["\n\n"]),  # a line break always ends one
        (
            "Ein Hund\rEin Mann\r\nEine Frau\u2028Ein Kind",
            ["Ein Hund", "Ein Mann", "Eine Frau", "Ein Kind"],
            ["\n"] * 3,
        ),
        ("Ein Hund läuft\u2026 Ein Mann.", ["Ein Hund läuft\u2026", "Ein Mann."], [" "]),
        ("Er kam (spät.) Dann ging er.", ["Er kam (spät.)", "Dann ging er."], [" "]),
        ("Er kam. 3 Hunde bellen.", ["Er kam.", "3 Hunde bellen."], [" "]),  # not lower case: a new sentence
        ("Er ruft \u201aHallo.\u2018 Ein Mann.", ["Er ruft \u201aHallo.\u2018", "Ein Mann."], [" "]),
        (" \n \n", [], []),
    ],
)
def test_a_text_splits_into_sentences_and_what_separates_them(
    text: str, sentences: list[str], separators: list[str]
) -> None:
    segmented = split(text)
    assert (segmented.sentences, segmented.separators) == (sentences, separators)


@pytest.mark.parametrize(
    "line_break", ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
)
def test_every_line_break_python_knows_ends_a_sentence(line_break: str) -> None:
    segmented = split(f"ein Hund{line_break}ein Mann")
    assert (segmented.sentences, segmented.separators) == (["ein Hund", "ein Mann"], ["\n"])


def test_long_runs_of_white_space_split_without_backtracking() -> None:
    # a pattern that tried every start of a run (white space, then a line break) took the event loop
    # quadratic time: 20 ms for 5,000 spaces, hours for these
    text = "Ein Hund." + " " * 1_000_000 + "Ein Mann" + "\t " * 500_000 + "\nEine Frau."
    segmented = split(text)
    assert (segmented.sentences, segmented.separators) == (["Ein Hund.", "Ein Mann", "Eine Frau."], [" ", "\n"])


def test_each_sentence_of_a_text_is_translated_and_the_lines_are_kept(client: TestClient) -> None:
    alone = client.post("/translate", json={"q": ["alpha bravo.", "Kilo lima echo!", "Golf."], **SERVED})
    first, second, third = alone.json()["translatedText"]
    response = client.post("/translate", json={"q": "alpha bravo. Kilo lima echo!\n\nGolf.", **SERVED})
    assert response.json() == {"translatedText": f"{first} {second}\n\n{third}"}


def test_a_texts_alignments_are_its_sentences_side_by_side(client: TestClient) -> None:
    alone = client.post("/translate", json={"q": ["alpha bravo.", "Kilo lima."], "alignments": True, **SERVED})
    parts = alone.json()["alignments"]
    joined = client.post("/translate", json={"q": "alpha bravo. Kilo lima.", "alignments": True, **SERVED})
    alignment = joined.json()["alignments"]
    assert alignment["source_pieces"] == parts[0]["source_pieces"] + parts[1]["source_pieces"]
    assert alignment["target_pieces"] == parts[0]["target_pieces"] + parts[1]["target_pieces"]
    rows, columns = len(parts[0]["target_pieces"]), len(parts[0]["source_pieces"])
    attention = alignment["attention"]
    assert [row[:columns] for row in attention[:rows]] == parts[0]["attention"]
    assert [row[columns:] for row in attention[rows:]] == parts[1]["attention"]
    assert all(value == 0 for row in attention[:rows] for value in row[columns:])


def test_alternatives_of_a_text_combine_its_sentences_alternatives(client: TestClient) -> None:
    alone = client.post("/translate", json={"q": ["alpha bravo.", "Kilo lima."], "alternatives": 2, **SERVED}).json()
    assert [len(alternatives) for alternatives in alone["alternatives"]] == [2, 2]
    body = client.post("/translate", json={"q": "alpha bravo. Kilo lima.", "alternatives": 2, **SERVED}).json()
    first, second = alone["alternatives"]
    assert body["alternatives"] == [f"{first[0]} {second[0]}", f"{first[1]} {second[1]}"]


def test_only_the_best_candidate_of_a_text_asked_with_alignments_carries_an_attention_matrix() -> None:
    """A text of n sentences has an attention matrix of all its target by all its source pieces, mostly
    zeros: built for every alternative, a long text's took the server 500 MB past its usual size."""

    def sentence(pieces: int) -> Translation:
        candidates = [Candidate(f"t{k}", -1.0, ["p"] * pieces, torch.rand(pieces, 3)) for k in range(3)]
        return Translation(["a", "b", "</s>"], candidates)

    segmented = split("Eins. Zwei. Drei.")
    sentences = [sentence(2), sentence(4), sentence(1)]
    shown = join(segmented, sentences, alignment=True)
    assert shown is not None
    assert shown.candidates[0].attention.shape == (7, 9)
    assert [c.attention.numel() for c in shown.candidates[1:]] == [0, 0]
    assert shown.candidates[1].text == "t1 t1 t1"
    hidden = join(segmented, sentences, alignment=False)
    assert hidden is not None and [c.attention.numel() for c in hidden.candidates] == [0, 0, 0]
    assert alignment_size(sentences) == 7 * 9  # every target piece by every source piece, as sent


def test_a_sentence_with_fewer_candidates_lends_its_last_to_the_texts_later_ones() -> None:
    def sentence(texts: list[str]) -> Translation:
        return Translation(["a", "</s>"], [Candidate(text, -1.0, ["p"], torch.rand(1, 2)) for text in texts])

    joined = join(split("Eins. Zwei."), [sentence(["a0", "a1", "a2"]), sentence(["b0", "b1"])], alignment=False)
    assert joined is not None
    assert [c.text for c in joined.candidates] == ["a0 b0", "a1 b1", "a2 b1"]

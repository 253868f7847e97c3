"""A text of several sentences or lines is translated sentence by sentence and joined again."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.segment import split

SERVED = {"source": "src", "target": "tgt"}


@pytest.mark.parametrize(
    ("text", "sentences", "separators"),
    [
        ("Ein Hund. Zwei Katzen! Drei Vögel?", ["Ein Hund.", "Zwei Katzen!", "Drei Vögel?"], [" ", " "]),
        ("Ein Hund.\nZwei Katzen\n\n Drei Vögel. ", ["Ein Hund.", "Zwei Katzen", "Drei Vögel."], ["\n", "\n\n"]),
        ('Er sagt: "Hallo." Dann geht er.', ['Er sagt: "Hallo."', "Dann geht er."], [" "]),
        ("z. B. ein Hund", ["z.", "B. ein Hund"], [" "]),  # no new sentence before a lower-case word
        ("ohne Punkt", ["ohne Punkt"], []),
        (" \n \n", [], []),
    ],
)
def test_a_text_splits_into_sentences_and_what_separates_them(
    text: str, sentences: list[str], separators: list[str]
) -> None:
    segmented = split(text)
    assert (segmented.sentences, segmented.separators) == (sentences, separators)


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

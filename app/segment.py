"""Texts as sentences: the models translate one sentence (an image caption) at a time, and a paragraph
given whole came back short, its later sentences dropped ("Ein Mann fährt Fahrrad. Eine Frau liest ein
Buch. ..." -> "A man is riding a bicycle while reading a book ..."). LibreTranslate's clients send
paragraphs, so the service splits each text into sentences and lines, translates those, and joins the
translations with the text's own line breaks.

The split is a rule, not a model: a sentence ends at ., ! or ? (and any closing quotes or brackets)
before white space and a word that does not start in lower case, and at every line break. An
abbreviation before a capitalized word ("Dr. Müller") is split too; its halves are still translated,
which loses less than a sentence that is never translated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mt.translator import Candidate, Translation

# after . ! ? and any closing quotes or brackets, the white space before the next sentence; or a line break
_BOUNDARY = re.compile(r"(?<=[.!?])[\"'\u00bb\u00ab\u201c\u201d\u2019)\]]*(\s+)|(\s*\n\s*)")


@dataclass
class Segmented:
    sentences: list[str]  # the text's sentences, none of them empty
    separators: list[str]  # between sentence i and i + 1: "\n" (as many as the text had) or " "


def split(text: str) -> Segmented:
    """The sentences of `text` and what separates them; a text without content has no sentences."""
    sentences: list[str] = []
    separators: list[str] = []
    start = 0
    for boundary in _BOUNDARY.finditer(text):
        after_stop = boundary.group(1) is not None
        if after_stop and text[boundary.end() : boundary.end() + 1].islower():  # "z. B. ein", "ca. drei"
            continue
        end = boundary.start(1) if after_stop else boundary.start()
        _add(text[start:end], boundary.group(), sentences, separators)
        start = boundary.end()
    _add(text[start:], "", sentences, separators)
    return Segmented(sentences, separators[: max(0, len(sentences) - 1)])


def _add(sentence: str, boundary: str, sentences: list[str], separators: list[str]) -> None:
    if not sentence.strip():  # a blank line between paragraphs: its line break goes to the last separator
        if separators and "\n" in boundary:
            separators[-1] += "\n" * boundary.count("\n")
        return
    sentences.append(sentence.strip())
    separators.append("\n" * boundary.count("\n") or " ")


def join(segmented: Segmented, translations: list[Translation]) -> Translation | None:
    """One text's translation from its sentences' (in order), None for a text without any: texts joined by
    the text's separators, the k-th candidate of each sentence in the k-th candidate (or its last, for a
    sentence with fewer), and the attention as blocks, each sentence's target pieces over its own source
    pieces."""
    if len(translations) <= 1:
        return translations[0] if translations else None
    n_best = max(len(t.candidates) for t in translations)
    candidates = []
    for k in range(n_best):
        parts = [t.candidates[min(k, len(t.candidates) - 1)] for t in translations]
        text = "".join(p.text + sep for p, sep in zip(parts, [*segmented.separators, ""], strict=True))
        attention = torch.block_diag(*(p.attention for p in parts))
        candidates.append(
            Candidate(
                text=text,
                score=sum(p.score for p in parts) / len(parts),
                pieces=[piece for p in parts for piece in p.pieces],
                attention=attention,
            )
        )
    return Translation([piece for t in translations for piece in t.source_pieces], candidates)

"""Texts as sentences: the models translate one sentence (an image caption) at a time, and a paragraph
given whole came back short, its later sentences dropped ("Ein Mann fährt Fahrrad. Eine Frau liest ein
Buch. ..." -> "A man is riding a bicycle while reading a book ..."). LibreTranslate's clients send
paragraphs, so the service splits each text into sentences and lines, translates those, and joins the
translations with the text's own line breaks.

The split is a rule, not a model: a sentence ends at ., !, ? or … (and any closing quotes or brackets)
before white space and a word that does not start in lower case, and at every line break (\n, \r\n,
a lone \r, or a Unicode line or paragraph separator). An abbreviation before a capitalized word
("Dr. Müller") is split too; its halves are still translated, which loses less than a sentence that
is never translated. Each run of white space is matched once, so splitting takes time linear in the
text (it runs on the event loop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mt.translator import Candidate, Translation

# a run of white space, with the sentence stop and closing quotes or brackets before it if there are any
_SPACE = re.compile(r"([.!?\u2026][\"'\u00bb\u00ab\u201c\u201d\u2018\u2019)\]]*)?(\s+)")
_LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")  # what str.splitlines() splits at


@dataclass
class Segmented:
    sentences: list[str]  # the text's sentences, none of them empty
    separators: list[str]  # between sentence i and i + 1: "\n" (as many as the text had) or " "


def split(text: str) -> Segmented:
    """The sentences of `text` and what separates them; a text without content has no sentences."""
    sentences: list[str] = []
    separators: list[str] = []
    start = 0
    for space in _SPACE.finditer(text):
        line_breaks = len(_LINE_BREAK.findall(space.group(2)))
        after_stop = space.group(1) is not None
        if not line_breaks and (not after_stop or text[space.end() : space.end() + 1].islower()):
            continue  # inside a sentence: "z. B. ein", "ca. drei"
        _add(text[start : space.start(2)], line_breaks, sentences, separators)
        start = space.end()
    _add(text[start:], 0, sentences, separators)
    return Segmented(sentences, separators[: max(0, len(sentences) - 1)])


def _add(sentence: str, line_breaks: int, sentences: list[str], separators: list[str]) -> None:
    if not sentence.strip():  # a blank line between paragraphs: its line breaks go to the last separator
        if separators and line_breaks:
            separators[-1] += "\n" * line_breaks
        return
    sentences.append(sentence.strip())
    separators.append("\n" * line_breaks or " ")


def alignment_size(translations: list[Translation]) -> int:
    """The attention weights in the alignment of a text of these sentences' translations (their best
    candidates): all its target pieces by all its source pieces."""
    target = sum(len(t.candidates[0].pieces) for t in translations)
    return target * sum(len(t.source_pieces) for t in translations)


def join(segmented: Segmented, translations: list[Translation], *, alignment: bool) -> Translation | None:
    """One text's translation from its sentences' (in order), None for a text without any: texts joined by
    the text's separators, the k-th candidate of each sentence in the k-th candidate (or its last, for a
    sentence with fewer). With `alignment`, the best candidate's attention is its sentences' blocks on the
    diagonal, each sentence's target pieces over its own source pieces (`alignment_size` weights, mostly
    zeros); no other candidate's attention is shown, and theirs, like the best one's without
    `alignment`, is left empty (0 x 0)."""
    if len(translations) <= 1:
        return translations[0] if translations else None
    n_best = max(len(t.candidates) for t in translations)
    candidates = []
    for k in range(n_best):
        parts = [t.candidates[min(k, len(t.candidates) - 1)] for t in translations]
        text = "".join(p.text + sep for p, sep in zip(parts, [*segmented.separators, ""], strict=True))
        attention = torch.block_diag(*(p.attention for p in parts)) if alignment and k == 0 else torch.empty(0, 0)
        candidates.append(
            Candidate(
                text=text,
                score=sum(p.score for p in parts) / len(parts),
                pieces=[piece for p in parts for piece in p.pieces],
                attention=attention,
            )
        )
    return Translation([piece for t in translations for piece in t.source_pieces], candidates)

"""Offline evaluation: corpus BLEU (sacreBLEU: cased, 13a tokenization, detokenized input; Post 2018)
and chrF (Popović 2015) of a model's translations against references."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import sacrebleu

from mt.config import DecodeConfig
from mt.data import CorpusError, load_split, read_text_lines
from mt.translator import Translator


@dataclass
class EvalResult:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_detail: str  # n-gram precisions, brevity penalty, lengths
    hypotheses: list[str]

    def report(self, *, name: str, decode: DecodeConfig, hypotheses_path: Path) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in asdict(decode).items())
        return (
            f"{name}: BLEU {self.bleu:.2f}  chrF {self.chrf:.2f}\n"
            f"  {self.bleu_detail}\n"
            f"  decoding: {settings}\n"
            f"  sacreBLEU signatures: {self.bleu_signature} | {self.chrf_signature}\n"
            f"  hypotheses: {hypotheses_path}"
        )


def score(hypotheses: list[str], references: list[str]) -> EvalResult:
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return EvalResult(
        bleu=bleu_score.score,
        chrf=chrf_score.score,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_detail=str(bleu_score),
        hypotheses=hypotheses,
    )


def evaluate(translator: Translator, sources: list[str], references: list[str], decode: DecodeConfig) -> EvalResult:
    return score([t.text for t in translator.translate(sources, decode)], references)


def read_test_set(
    *, data: str | None, split: str, src: str | None, ref: str | None, src_lang: str, tgt_lang: str
) -> tuple[list[str], list[str], str]:
    """Sources, references and a name for them: from a corpus split, or from two line-aligned files."""
    if src or ref:
        if not (src and ref):
            raise CorpusError("--src and --ref go together: give both files")
        paths = [Path(src), Path(ref)]
        for path in paths:
            if not path.is_file():
                raise CorpusError(f"{path} does not exist")
        sources, references = (read_text_lines(p.read_bytes(), str(p)) for p in paths)
        if not sources:
            raise CorpusError(f"{src} is empty: no sentences to translate and score")
        if len(sources) != len(references):
            raise CorpusError(f"{src} has {len(sources)} lines but {ref} has {len(references)}")
        return sources, references, Path(src).stem
    if not data:
        raise CorpusError("give --data (with --split) or --src and --ref")
    corpus = load_split(data, split, src_lang, tgt_lang)
    return corpus.src, corpus.tgt, split

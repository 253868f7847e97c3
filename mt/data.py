"""Parallel corpora: loading through Hugging Face `datasets`, and the cleaning real corpora need.

Three sources are read, one split at a time:
  * a hub dataset id whose rows are keyed by language code (`bentrevett/multi30k`);
  * a local folder of `{train,validation,test}.jsonl`, one `{"de": ..., "en": ...}` object per line;
  * a local folder of line-aligned plain-text files, `train.de` + `train.en`, read as `mt translate`
    reads files (`read_lines`): `datasets`' text loader also ends a line at a lone carriage return,
    which silently paired every later line with the wrong translation, and keeps a byte-order mark.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# a side longer than this many characters per allowed word is too long, so that a line without spaces
# cannot pass as one word (one of 20,000 characters took a training run past 24 GB); Multi30k's longest
# line has 254 characters
MAX_CHARS_PER_WORD = 20


class CorpusError(ValueError):
    """A corpus that cannot be used as given; the message names the file (and line) at fault."""


@dataclass(frozen=True)
class ParallelCorpus:
    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


@dataclass(frozen=True)
class CleaningReport:
    kept: int
    empty: int
    too_long: int
    bad_ratio: int

    @property
    def dropped(self) -> int:
        return self.empty + self.too_long + self.bad_ratio

    def __str__(self) -> str:
        return (
            f"kept {self.kept} pairs, dropped {self.dropped} "
            f"({self.empty} empty, {self.too_long} too long, {self.bad_ratio} with a length ratio out of bounds)"
        )


def load_split(path: str, split: str, src: str, tgt: str) -> ParallelCorpus:
    """Read one split of a corpus, stripped of surrounding whitespace but otherwise as it is."""
    local = Path(path)
    if local.is_dir():
        if (local / f"{split}.jsonl").is_file():
            return _load_jsonl(local / f"{split}.jsonl", src, tgt)
        if (local / f"{split}.{src}").is_file() or (local / f"{split}.{tgt}").is_file():
            return _load_text_pair(local / f"{split}.{src}", local / f"{split}.{tgt}")
        raise CorpusError(f"{local} has neither {split}.jsonl nor {split}.{src} + {split}.{tgt}")
    if local.exists():
        raise CorpusError(f"corpus path {path} is a file; give the folder that holds {split}.jsonl (or {split}.{src})")
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise CorpusError(f"corpus path {path} does not exist (give a folder or a hub dataset id 'owner/name')")
    return _load_hub(path, split, src, tgt)


def _load_jsonl(file: Path, src: str, tgt: str) -> ParallelCorpus:
    _require_content(file)
    try:
        table = datasets.load_dataset("json", data_files=str(file), split="train")
    except Exception as error:  # datasets wraps pyarrow's parse errors in several types; or its cache failed
        reason = _bad_json_line(file) or _innermost(error)
        raise CorpusError(f"{file} could not be read as JSON lines: {reason}") from error
    records = [number for number, line in enumerate(_read_text(file), start=1) if line.strip()]  # blanks skipped
    return _columns(table, src, tgt, where=str(file), line_of=lambda row: records[row])


def _bad_json_line(file: Path) -> str:
    """Where and why a JSON-lines file is not one ("" if each line parses)."""
    for number, line in enumerate(_read_text(file), start=1):
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError as error:
            return f"line {number} is not valid JSON ({error.msg} at column {error.colno})"
    return ""


def _innermost(error: BaseException) -> BaseException:
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


def _load_hub(dataset_id: str, split: str, src: str, tgt: str) -> ParallelCorpus:
    try:
        table = datasets.load_dataset(dataset_id, split=split)
    except Exception as error:  # offline, unknown id or unknown split: all are the user's to fix
        raise CorpusError(f"could not load split '{split}' of hub dataset {dataset_id}: {error}") from error
    return _columns(table, src, tgt, where=f"{dataset_id} [{split}]", line_of=lambda row: row + 1)


def _columns(
    table: datasets.Dataset, src: str, tgt: str, *, where: str, line_of: Callable[[int], int]
) -> ParallelCorpus:
    """`line_of`: the line (or row) number users know of the table's row i."""
    if len(table) == 0:
        raise CorpusError(f"{where} is empty")
    for lang in (src, tgt):
        if lang not in table.column_names:
            raise CorpusError(f"{where}: no rows have the language key '{lang}' (keys: {table.column_names})")
    src_lines, tgt_lines = table[src], table[tgt]
    for lang, lines in ((src, src_lines), (tgt, tgt_lines)):
        for index, line in enumerate(lines):
            if not isinstance(line, str):
                raise CorpusError(f"{where}, line {line_of(index)}: missing or non-string language key '{lang}'")
    return ParallelCorpus([s.strip() for s in src_lines], [t.strip() for t in tgt_lines])


def _load_text_pair(src_file: Path, tgt_file: Path) -> ParallelCorpus:
    for file in (src_file, tgt_file):
        if not file.is_file():
            raise CorpusError(f"{file} does not exist (plain-text corpora need one file per language)")
        _require_content(file)
    src_lines, tgt_lines = _read_text(src_file), _read_text(tgt_file)
    if len(src_lines) != len(tgt_lines):
        first_unpaired = min(len(src_lines), len(tgt_lines)) + 1
        raise CorpusError(
            f"{src_file} has {len(src_lines)} lines but {tgt_file} has {len(tgt_lines)}; parallel files must be "
            f"line-aligned (first line past the shorter file: {first_unpaired})"
        )
    return ParallelCorpus([s.strip() for s in src_lines], [t.strip() for t in tgt_lines])


def _read_text(file: Path) -> list[str]:
    return read_text_lines(file.read_bytes(), str(file))


def read_text_lines(data: bytes, name: str) -> list[str]:
    """`read_lines`, with text that is not UTF-8 refused naming `name` (a file, or stdin) and the line."""
    try:
        return read_lines(data)
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1  # the bytes decoded, after any BOM
        raise CorpusError(f"{name}, line {line}: not UTF-8 text") from None


def _require_content(file: Path) -> None:
    """`datasets` fails obscurely on empty files: say plainly which one is empty."""
    with file.open("rb") as handle:
        if not handle.read(1 << 16).strip():
            raise CorpusError(f"{file} is empty")


def clean(corpus: ParallelCorpus, max_len: int, max_ratio: float) -> tuple[ParallelCorpus, CleaningReport]:
    """Drop empty pairs, pairs over `max_len` words (or `max_len` x MAX_CHARS_PER_WORD characters) on either
    side and pairs with an absurd length ratio."""
    src_kept: list[str] = []
    tgt_kept: list[str] = []
    empty = too_long = bad_ratio = 0
    for src, tgt in zip(corpus.src, corpus.tgt, strict=True):
        src_len, tgt_len = len(src.split()), len(tgt.split())
        if src_len == 0 or tgt_len == 0:
            empty += 1
        elif max(src_len, tgt_len) > max_len or max(len(src), len(tgt)) > max_len * MAX_CHARS_PER_WORD:
            too_long += 1
        elif max(src_len, tgt_len) > max_ratio * min(src_len, tgt_len) and max(src_len, tgt_len) > 3:
            # very short pairs ("Ein Hund." / "A dog .") legitimately have large ratios
            bad_ratio += 1
        else:
            src_kept.append(src)
            tgt_kept.append(tgt)
    if not src_kept:
        raise CorpusError("no training pairs survive cleaning; check the languages and the length limits")
    return ParallelCorpus(src_kept, tgt_kept), CleaningReport(len(src_kept), empty, too_long, bad_ratio)


def read_lines(data: bytes) -> list[str]:
    """UTF-8 text (a BOM is dropped) split on newlines only: form feeds or U+2028 inside a sentence
    must not split it, or every later output line would be misaligned."""
    text = data.decode("utf-8-sig")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines

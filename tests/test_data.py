from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from mt.data import CorpusError, ParallelCorpus, clean, load_split, read_lines


def test_jsonl_folder_loads_the_requested_languages(tmp_path: Path) -> None:
    rows = [
        {"de": " Ein Hund. ", "en": "A dog.", "fr": "Un chien."},
        {"de": "Zwei Katzen.", "en": "Two cats.", "fr": "x"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpus = load_split(str(tmp_path), "train", "de", "en")
    assert corpus.src == ["Ein Hund.", "Zwei Katzen."]
    assert corpus.tgt == ["A dog.", "Two cats."]


def test_plain_text_pair_loads_line_by_line(tmp_path: Path) -> None:
    (tmp_path / "train.de").write_text("Ein Hund.\nZwei Katzen.\n", encoding="utf-8")
    (tmp_path / "train.en").write_text("A dog.\nTwo cats.\n", encoding="utf-8")
    corpus = load_split(str(tmp_path), "train", "de", "en")
    assert (corpus.src, corpus.tgt) == (["Ein Hund.", "Zwei Katzen."], ["A dog.", "Two cats."])


def test_plain_text_lines_end_only_at_newlines(tmp_path: Path) -> None:
    """A lone carriage return inside a line, a byte-order mark and CRLF endings leave the pairs aligned."""
    (tmp_path / "train.de").write_bytes("\ufeffEin Hund.\r\nZwei\rKatzen.\r\nDrei Vögel.\r\n".encode())
    (tmp_path / "train.en").write_bytes(b"A dog.\nTwo cats.\nThree birds.\n")
    corpus = load_split(str(tmp_path), "train", "de", "en")
    assert corpus.src == ["Ein Hund.", "Zwei\rKatzen.", "Drei Vögel."]
    assert corpus.tgt == ["A dog.", "Two cats.", "Three birds."]


def test_a_plain_text_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "train.de").write_bytes("\ufeffEin Hund.\n".encode() + b"Zwei K\xe4tzchen.\n")
    (tmp_path / "train.en").write_text("A dog.\nTwo kittens.\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"train\.de, line 2: not UTF-8 text"):
        load_split(str(tmp_path), "train", "de", "en")


def test_shared_multi30k_folder_loads_when_present() -> None:
    folder = Path(__file__).parents[1] / ".." / "shared" / "data" / "multi30k"
    if not folder.is_dir():
        pytest.skip("../shared/data/multi30k is not beside the project")
    corpus = load_split(str(folder), "validation", "de", "en")
    assert len(corpus) == 1014
    assert corpus.src[0] and corpus.tgt[0]


def test_missing_language_key_names_file_and_line(tmp_path: Path) -> None:
    lines = [{"de": "a", "en": "b"}, {"de": "c", "en": "d"}, {"de": "e"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"train\.jsonl, line 3: missing .* 'en'"):
        load_split(str(tmp_path), "train", "de", "en")


def test_the_line_named_counts_the_blank_lines_the_reader_skips(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"de": "a", "en": "b"}\n\n   \n{"de": "e"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"train\.jsonl, line 4: missing .* 'en'"):
        load_split(str(tmp_path), "train", "de", "en")


def test_a_line_that_is_not_json_is_named_with_why(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"de": "a", "en": "b"}\n\n{"de": "x" "en": "y"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"train\.jsonl could not be read as JSON lines: line 3 is not valid JSON \("):
        load_split(str(tmp_path), "train", "de", "en")


def test_language_absent_from_every_row_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps({"de": "a", "en": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="language key 'cs'"):
        load_split(str(tmp_path), "train", "de", "cs")


def test_parallel_files_with_different_line_counts_are_refused(tmp_path: Path) -> None:
    (tmp_path / "train.de").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "train.en").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"train\.de has 3 lines but .*train\.en has 2.*shorter file: 3"):
        load_split(str(tmp_path), "train", "de", "en")


def test_missing_side_of_a_plain_text_pair_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.de").write_text("a\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"train\.en does not exist"):
        load_split(str(tmp_path), "train", "de", "en")


def test_empty_split_is_refused(tmp_path: Path) -> None:
    (tmp_path / "validation.de").write_text("", encoding="utf-8")
    (tmp_path / "validation.en").write_text("", encoding="utf-8")
    with pytest.raises(CorpusError, match="empty"):
        load_split(str(tmp_path), "validation", "de", "en")


def test_empty_jsonl_split_is_refused(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"test\.jsonl is empty"):
        load_split(str(tmp_path), "test", "de", "en")


def test_path_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_split(str(tmp_path / "nowhere"), "train", "de", "en")


def test_a_file_given_for_the_corpus_folder_is_named_as_a_file(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"de": "a", "en": "b"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"train\.jsonl is a file; give the folder that holds train\.jsonl"):
        load_split(str(tmp_path / "train.jsonl"), "train", "de", "en")


def test_folder_without_the_split_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"neither test\.jsonl nor test\.de \+ test\.en"):
        load_split(str(tmp_path), "test", "de", "en")


def test_cleaning_drops_and_counts_empty_long_and_unbalanced_pairs() -> None:
    corpus = ParallelCorpus(
        src=["ein hund", "", "a b c d e f g h i j", "eins zwei drei vier fünf", "ja"],
        tgt=["a dog", "nothing", "a b", "one", "yes yes"],
    )
    kept, report = clean(corpus, max_len=8, max_ratio=3.0)
    assert kept.src == ["ein hund", "ja"]
    assert (report.kept, report.empty, report.too_long, report.bad_ratio) == (2, 1, 1, 1)
    assert report.dropped == 3
    assert "dropped 3" in str(report)


def test_cleaning_keeps_pairs_at_its_bounds_and_short_pairs_whatever_their_ratio() -> None:
    corpus = ParallelCorpus(
        src=["a b c d e f g h", "a b c", "Hund", "eins zwei drei vier"],
        tgt=["one two", "one two three four five six seven eight nine", "a big dog", "one two three four five six"],
    )
    kept, report = clean(corpus, max_len=8, max_ratio=1.5)
    # 8 against 2 words: a ratio of 4; 9 words: over max_len; 1 against 3 words: short, so kept whatever the
    # ratio; 4 against 6 words: a ratio of 1.5, at the bound, kept
    assert kept.src == ["Hund", "eins zwei drei vier"]
    assert (report.too_long, report.bad_ratio) == (1, 1)
    kept, _ = clean(corpus, max_len=9, max_ratio=4.0)  # 9 words at max_len, a ratio of 4 at max_ratio: kept
    assert kept.src == corpus.src


def test_a_line_without_spaces_is_too_long_by_its_characters() -> None:
    """One "word" of 20,000 characters took a training run past 24 GB."""
    corpus = ParallelCorpus(src=["ein hund", "alphabravo" * 2000], tgt=["a dog", "ALPHABRAVO" * 2000])
    kept, report = clean(corpus, max_len=100, max_ratio=3.0)
    assert kept.src == ["ein hund"]
    assert report.too_long == 1


def test_hub_dataset_rows_are_read_by_language_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline stand-in for the hub: `bentrevett/multi30k` rows are keyed by language code."""
    calls = []

    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_dict({"en": ["A dog. ", "Two cats."], "de": ["Ein Hund.", "Zwei Katzen."]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = load_split("bentrevett/multi30k", "validation", "de", "en")
    assert calls == [("bentrevett/multi30k", "validation")]
    assert (corpus.src, corpus.tgt) == (["Ein Hund.", "Zwei Katzen."], ["A dog.", "Two cats."])


def test_unreachable_hub_dataset_is_a_corpus_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, split: str) -> datasets.Dataset:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError, match=r"could not load split 'train' of hub dataset someone/corpus: no network"):
        load_split("someone/corpus", "train", "de", "en")


def test_lines_split_on_newlines_only_without_bom_or_carriage_returns() -> None:
    data = "\ufeffEin\x0cHund\r\nzwei\u2028Katzen\n\ndrei\n".encode()
    assert read_lines(data) == ["Ein\x0cHund", "zwei\u2028Katzen", "", "drei"]
    assert read_lines(b"no final newline") == ["no final newline"]
    assert read_lines(b"") == []

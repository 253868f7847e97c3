"""A model directory is untrusted input: every way it can be broken or tampered with is refused with a
one-line message naming the file and what is wrong, and nothing in it is ever executed."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mt.checkpoint import CHECKSUM, ModelDirError, load_model_dir, save_model_dir, save_tensors
from mt.cli import main
from mt.model import Seq2Seq
from mt.tokenizer import Tokenizer

from .conftest import ONE_THREAD, reverse_task, tiny_config

ROOT = Path(__file__).parents[1]
SENTENCES = [row["src"] for row in reverse_task(300, seed=5)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model directory, as `save_model_dir` writes it."""
    config = tiny_config(Path("unused"))
    tokenizer = Tokenizer.train(SENTENCES, vocab_size=40)
    torch.manual_seed(0)
    model = Seq2Seq.from_config(config.model, src_vocab=len(tokenizer), tgt_vocab=len(tokenizer))
    path = tmp_path_factory.mktemp("untrusted") / "model"
    save_model_dir(path, model, config, tokenizer, tokenizer)
    return path


@pytest.fixture
def broken(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model directory for a test to break."""
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


def refusal(path: Path) -> str:
    """The message `load_model_dir` refuses `path` with; it must be one line."""
    with pytest.raises(ModelDirError) as raised:
        load_model_dir(path)
    message = str(raised.value)
    assert "\n" not in message
    return message


def header_length(data: bytes | bytearray) -> int:
    return int(struct.unpack("<Q", data[:8])[0])


def edit_config(path: Path, edit: Callable[[dict[str, dict[str, object]]], object]) -> None:
    raw = json.loads((path / "config.json").read_text())
    edit(raw)
    (path / "config.json").write_text(json.dumps(raw))


def test_an_intact_directory_loads_and_its_weights_carry_a_checksum(model_dir: Path) -> None:
    loaded = load_model_dir(model_dir)
    assert loaded.model.num_parameters() > 0
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as file:
        assert re.fullmatch(r"[0-9a-f]{64}", file.metadata()[CHECKSUM])


# --- the weights file -------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", ["4 bytes", "half the header", "half the data", "all but the last byte"])
def test_truncated_weights_are_refused(broken: Path, keep: str) -> None:
    data = (broken / "model.safetensors").read_bytes()
    cut = {
        "4 bytes": 4,
        "half the header": 8 + header_length(data) // 2,
        "half the data": (8 + header_length(data) + len(data)) // 2,
        "all but the last byte": len(data) - 1,
    }[keep]
    (broken / "model.safetensors").write_bytes(data[:cut])
    assert re.search(r"model\.safetensors is not a readable safetensors file: \S", refusal(broken))


def test_flipped_bits_in_the_header_are_refused_or_harmless(broken: Path) -> None:
    """A flip in the header's JSON breaks its syntax, a name, a dtype, a shape, an offset or the checksum:
    each is refused. A flip that changes no tensor (in the padding, or in the metadata's key) may load,
    and then loads the very same weights."""
    original = (broken / "model.safetensors").read_bytes()
    before = load_file(str(broken / "model.safetensors"))
    rng = random.Random(7)
    refused = 0
    for position in rng.sample(range(8, 8 + header_length(original)), 40):
        damaged = bytearray(original)
        damaged[position] ^= 1 << rng.randrange(8)
        (broken / "model.safetensors").write_bytes(bytes(damaged))
        try:
            loaded = load_model_dir(broken)
        except ModelDirError as error:
            assert "model.safetensors" in str(error) and "\n" not in str(error)
            refused += 1
            continue
        after = dict(loaded.model.state_dict())
        assert all(torch.equal(after[name], tensor) for name, tensor in before.items()), f"flip at {position}"
    assert refused >= 30


def test_a_same_width_dtype_swapped_in_the_header_fails_the_checksum(broken: Path) -> None:
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data.replace(b'"F32"', b'"I32"', 1))
    assert "model.safetensors fails its checksum" in refusal(broken)


def test_tensors_swapped_in_the_header_fail_the_checksum(broken: Path) -> None:
    """Exchanging the offsets of two tensors of one shape keeps the file valid for safetensors."""
    data = (broken / "model.safetensors").read_bytes()
    length = header_length(data)
    header = json.loads(data[8 : 8 + length])
    first, second = "encoder.rnn.weight_hh_l0", "encoder.rnn.weight_hh_l0_reverse"
    assert header[first]["shape"] == header[second]["shape"]
    header[first]["data_offsets"], header[second]["data_offsets"] = (
        header[second]["data_offsets"],
        header[first]["data_offsets"],
    )
    encoded = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    (broken / "model.safetensors").write_bytes(data[:8] + encoded + data[8 + length :])
    assert "model.safetensors fails its checksum" in refusal(broken)


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_a_flipped_bit_in_the_tensor_data_fails_the_checksum(broken: Path, where: float) -> None:
    data = bytearray((broken / "model.safetensors").read_bytes())
    start = 8 + header_length(bytes(data))
    position = min(len(data) - 1, start + int(where * (len(data) - start)))
    data[position] ^= 0x04
    (broken / "model.safetensors").write_bytes(bytes(data))
    assert re.search(r"model\.safetensors fails its checksum: .*corrupted or changed", refusal(broken))


def test_weights_written_before_checksums_load_with_a_warning(broken: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_file(load_file(str(broken / "model.safetensors")), str(broken / "model.safetensors"))  # no metadata
    with caplog.at_level(logging.WARNING, logger="mt.checkpoint"):
        load_model_dir(broken)
    assert "model.safetensors carries no checksum" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (lambda t: t.long(), r"decoder\.embedded_proj\.bias is torch\.int64; weights are float32, float16 or bfloat16"),
        (lambda t: t.to(torch.uint8), r"decoder\.embedded_proj\.bias is torch\.uint8"),
        (lambda t: torch.full_like(t, float("nan")), r"decoder\.embedded_proj\.bias holds NaN or infinite values"),
        (lambda t: torch.full_like(t, float("inf")), r"decoder\.embedded_proj\.bias holds NaN or infinite values"),
    ],
    ids=["int64", "uint8", "nan", "inf"],
)
def test_wrong_dtypes_and_non_finite_values_are_refused_even_with_a_valid_checksum(
    broken: Path, value: Callable[[torch.Tensor], torch.Tensor], expected: str
) -> None:
    weights = {name: tensor.clone() for name, tensor in load_file(str(broken / "model.safetensors")).items()}
    weights["decoder.embedded_proj.bias"] = value(weights["decoder.embedded_proj.bias"])
    save_tensors(weights, broken / "model.safetensors")
    message = refusal(broken)
    assert "model.safetensors" in message
    assert re.search(expected, message)


# --- the config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["model"].update(emb_size=24), r"does not match .*config\.json.*has shape"),
        (lambda c: c["model"].update(cell="lstm"), r"does not match .*config\.json.*has shape"),
        (lambda c: c["model"].update(enc_layers=2), r"does not match .*config\.json: missing \['encoder"),
        (lambda c: c["model"].update(tie_embeddings=False), r"does not match .*config\.json: missing \['decoder"),
        (lambda c: c["model"].update(emb_size=65_536), r"does not match .*config\.json.*has shape"),
    ],
    ids=["emb_size", "cell", "layers", "untied", "huge"],
)
def test_a_config_that_does_not_match_the_weights_is_refused(
    broken: Path, edit: Callable[[dict[str, dict[str, object]]], object], expected: str
) -> None:
    """A huge size is caught by comparing shapes before the model is built: nothing is allocated."""
    edit_config(broken, edit)
    message = refusal(broken)
    assert "model.safetensors" in message
    assert re.search(expected, message)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", r"config\.json is not a valid model config: Expecting"),
        (b"\xff\xfe{}", r"config\.json is not a valid model config: 'utf-8' codec"),
        (b"[1, 2]", r"config\.json is not a valid model config: it holds a JSON array, not an object of"),
        (b"null", r"config\.json is not a valid model config: it holds a JSON null, not an object of"),
        (b'{"model": {"emb_size": 16}, "plugins": {}}', r"unknown config section\(s\) \['plugins'\]"),
        (b'{"model": {"emb_size": 16, "activation": "exec"}}', r"unknown config key 'model.activation'"),
        (b'{"model": {"emb_size": "sixteen"}}', r"model\.emb_size must be an integer, got 'sixteen'"),
        (b'{"model": {"emb_size": 16.5}}', r"model\.emb_size must be an integer"),
        (b'{"model": {"tie_embeddings": "maybe"}}', r"model\.tie_embeddings must be true or false"),
        (b'{"model": {"emb_size": -4}}', r"model\.emb_size must be at least 1"),
        (b'{"model": {"dropout": NaN}}', r"model\.dropout must be in \[0, 1\)"),
        (b'{"model": []}', r"config section 'model' must be a mapping"),
        (b'{"decode": {"beam_size": 0}}', r"decode\.beam_size must be between 1 and 100"),
        (b"[" * 100_000 + b"]" * 100_000, r"config\.json is not a valid model config"),
        (b" " * (2 << 20) + b"{}", r"config\.json is not a valid model config: it is 2,097,154 bytes"),
        (b'{"model": {"emb_size": 10000000000000000}}', r"model\.emb_size must be at most 65,536"),  # overflowed
        (b'{"model": {"enc_layers": 20000}}', r"model\.enc_layers must be at most 64"),  # took 107 s to build
        (b'{"data": {"tgt": "en/../../outside"}}', r"data\.tgt must be a language code of letters, digits"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "list",
        "null",
        "unknown-section",
        "unknown-key",
        "string-for-int",
        "float-for-int",
        "string-for-bool",
        "negative",
        "nan",
        "section-not-mapping",
        "invalid-decode",
        "deeply-nested",
        "huge",
        "too-wide",
        "too-deep",
        "language-path",
    ],
)
def test_an_invalid_config_is_refused(broken: Path, content: bytes, expected: str) -> None:
    (broken / "config.json").write_bytes(content)
    message = refusal(broken)
    assert "config.json" in message
    assert re.search(expected, message)


# --- the SentencePiece models -------------------------------------------------------------------------


def default_ids_model() -> bytes:
    """A valid SentencePiece model numbered SentencePiece's way (<unk>=0, <s>=1, </s>=2, no <pad>)."""
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_writer=proto, vocab_size=40, hard_vocab_limit=False, minloglevel=2
    )
    return proto.getvalue()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing", r"model directory .* has no src\.spm"),
        ("empty", r"src\.spm is empty, not a SentencePiece model"),
        ("garbage", r"src\.spm is not a SentencePiece model \(.*\)"),
        ("truncated", r"src\.spm is not a SentencePiece model"),
        ("other ids", r"src\.spm numbers <pad>, <unk>, <s>, </s> as \[-1, 0, 1, 2\]; models here need \[0, 1, 2, 3\]"),
        ("a folder", r"src\.spm is not a regular file"),
    ],
)
def test_a_broken_sentencepiece_model_is_refused(broken: Path, breakage: str, expected: str) -> None:
    spm_file = broken / "src.spm"
    data = spm_file.read_bytes()
    spm_file.unlink()
    if breakage == "empty":
        spm_file.write_bytes(b"")
    elif breakage == "garbage":
        spm_file.write_bytes(bytes(random.Random(3).randrange(256) for _ in range(500)))
    elif breakage == "truncated":
        spm_file.write_bytes(data[: len(data) // 3])
    elif breakage == "other ids":
        spm_file.write_bytes(default_ids_model())
    elif breakage == "a folder":
        spm_file.mkdir()
    assert re.search(expected, refusal(broken))


def test_a_vocabulary_that_does_not_match_the_weights_is_refused(broken: Path) -> None:
    other = Tokenizer.train(SENTENCES, vocab_size=30)
    other.save(broken / "tgt.spm")
    message = refusal(broken)
    assert re.search(
        r"model\.safetensors does not match .*config\.json and the vocabularies in src\.spm, tgt\.spm", message
    )


# --- what else a directory may hold ------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: the proof that a loader ran code from the model directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("name", ["model.pt", "model.bin", "pytorch_model.bin", "weights.pkl", "extra.pth", "notes"])
def test_a_pickle_in_the_directory_is_refused_and_never_opened(broken: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "ran"
    (broken / name).write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    message = refusal(broken)
    assert f"holds {name}, a pickle file" in message
    assert not marker.exists()


@pytest.mark.parametrize("name", ["notes", "archive.zip"])
def test_torch_saves_zip_format_is_refused_by_its_content(broken: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "ran"
    torch.save({"weights": _Payload(marker)}, broken / name)
    assert f"holds {name}, a pickle file" in refusal(broken)
    assert not marker.exists()


def test_a_part_that_links_to_itself_is_a_one_line_refusal(broken: Path) -> None:
    (broken / "config.json").unlink()
    (broken / "config.json").symlink_to("config.json")
    assert "config.json is a link that never reaches a file (a loop)" in refusal(broken)


def test_older_layout_weights_of_the_wrong_rank_are_refused(broken: Path) -> None:
    weights = {name: tensor.clone() for name, tensor in load_file(str(broken / "model.safetensors")).items()}
    for name in ("decoder.cells.0.weight_ih", "decoder.cells.0.weight_hh", "decoder.readout.weight"):
        weights[name] = torch.zeros(4)
    weights["decoder.readout.bias"] = torch.zeros(4)
    save_tensors(weights, broken / "model.safetensors")
    assert "holds weights in the older layout that do not fit together" in refusal(broken)


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(broken: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"weights": _Payload(marker)}, broken / "model.safetensors")  # the zip format torch.load reads
    assert "model.safetensors is not a readable safetensors file" in refusal(broken)
    (broken / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    assert "model.safetensors is not a readable safetensors file" in refusal(broken)
    assert not marker.exists()


def test_a_part_linked_from_outside_the_directory_is_refused(broken: Path, tmp_path: Path) -> None:
    """A model directory is what gets reviewed, copied and served: a link out of it could be repointed to
    any file (or a FIFO, or /dev/zero) after the review, so its parts must be its own."""
    outside = tmp_path / "elsewhere.spm"
    shutil.move(broken / "src.spm", outside)
    (broken / "src.spm").symlink_to(outside)
    assert re.search(r"src\.spm is a link to .*elsewhere\.spm, outside the directory", refusal(broken))


def test_links_inside_the_directory_and_a_linked_directory_load(broken: Path, tmp_path: Path) -> None:
    """A run's `best` and `last` are links to checkpoint directories, and a part may link to a sibling."""
    (broken / "vocab").mkdir()
    shutil.move(broken / "tgt.spm", broken / "vocab" / "tgt.spm")
    (broken / "tgt.spm").symlink_to(Path("vocab") / "tgt.spm")
    (tmp_path / "best").symlink_to(broken)
    assert load_model_dir(tmp_path / "best").model.num_parameters() > 0


def test_a_fifo_in_the_directory_is_never_read(broken: Path) -> None:
    """Reading a FIFO would hang the loader (a server at start-up) forever."""
    os.mkfifo(broken / "notes")
    load_model_dir(broken)
    (broken / "config.json").unlink()
    os.mkfifo(broken / "config.json")
    assert "config.json is not a regular file" in refusal(broken)


def test_no_module_can_unpickle() -> None:
    """The loaders parse JSON, safetensors and protobufs only; nothing in mt/ or app/ calls a pickle loader."""
    loaders = re.compile(
        r"torch\.load\(|^\s*(import|from) (pickle|cloudpickle|dill|joblib)\b|pickle\.loads?\(|allow_pickle\s*=\s*True",
        re.MULTILINE,
    )
    for source in [*(ROOT / "mt").rglob("*.py"), *(ROOT / "app").rglob("*.py")]:
        assert not loaders.search(source.read_text(encoding="utf-8")), source


# --- on the command line ------------------------------------------------------------------------------


def break_weights(path: Path) -> None:
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-3] ^= 0x10
    (path / "model.safetensors").write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 10), "is not a readable safetensors file"),
        (break_weights, "fails its checksum"),
        (lambda p: edit_config(p, lambda c: c["model"].update(emb_size=24)), "does not match"),
        (lambda p: (p / "config.json").write_text("{"), "is not a valid model config"),
        (lambda p: (p / "tgt.spm").write_bytes(b"\x01\x02\x03"), "tgt.spm is not a SentencePiece model"),
        (lambda p: (p / "model.pt").write_bytes(pickle.dumps({})), "holds model.pt, a pickle file"),
    ],
    ids=["weights", "checksum", "mismatch", "config", "spm", "pickle"],
)
def test_translate_with_a_bad_model_exits_2_with_one_line(
    broken: Path, capsys: pytest.CaptureFixture[str], breakage: Callable[[Path], object], expected: str
) -> None:
    breakage(broken)
    assert main(["translate", "--model", str(broken), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("mt translate: error: ")
    assert expected in captured.err


def test_translate_with_a_bad_model_exits_2_in_a_real_process(broken: Path) -> None:
    break_weights(broken)
    result = subprocess.run(
        [sys.executable, "-m", "mt", "translate", "--model", str(broken), "--device", "cpu"],
        input="alpha bravo\n",
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"mt translate: error: {broken / 'model.safetensors'} fails its checksum: "
        "its tensors were corrupted or changed after it was written"
    ]

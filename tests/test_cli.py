from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sacrebleu

import mt.evaluate
from mt.cli import main
from mt.translator import Translator

TINY_FLAGS = [
    "--vocab.src_size", "40", "--vocab.tgt_size", "40", "--model.emb_size", "16", "--model.enc_hidden", "16",
    "--model.dec_hidden", "32", "--model.attn_size", "16", "--train.batch_tokens", "400", "--train.lr", "0.01",
    "--train.threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(reverse_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            "--data",
            str(reverse_corpus),
            "--src",
            "src",
            "--tgt",
            "tgt",
            "--out",
            str(out),
            "--max-steps",
            "40",
            *TINY_FLAGS,
        ]
    )
    assert code == 0
    return out


def test_train_writes_best_and_last_model_directories(trained: Path) -> None:
    for name in ("best", "last"):
        assert {"model.safetensors", "config.json", "src.spm", "tgt.spm"} <= {
            p.name for p in (trained / name).iterdir()
        }


def test_translate_reads_and_writes_files(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("alpha bravo\nkilo\n\n", encoding="utf-8")
    code = main(
        [
            "translate",
            "--model",
            str(trained / "best"),
            "--input",
            str(tmp_path / "in.txt"),
            "--output",
            str(tmp_path / "out.txt"),
            "--decode.beam_size",
            "3",
        ]
    )
    assert code == 0
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[2] == "" and lines[3] == ""  # three lines in, three out; empty stays empty
    translator = Translator.from_dir(trained / "best", device="cpu")
    decode = dataclasses.replace(translator.decode, beam_size=3)
    assert lines[:2] == [t.text for t in translator.translate(["alpha bravo", "kilo"], decode)]


def test_translate_prints_n_best_lists(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"alpha bravo\n")))
    assert main(["translate", "--model", str(trained / "best"), "--decode.beam_size", "3", "--decode.n_best", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 3 and all(row.startswith("0 ||| ") for row in rows)


def test_evaluate_prints_bleu_chrf_signature_and_settings(
    trained: Path, reverse_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hyp = tmp_path / "hyp.txt"
    code = main(
        [
            "evaluate",
            "--model",
            str(trained / "best"),
            "--data",
            str(reverse_corpus),
            "--split",
            "test",
            "--hyp",
            str(hyp),
            "--decode.beam_size",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "BLEU" in out and "chrF" in out and "tok:13a" in out and "case:mixed" in out and "beam_size=2" in out
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == 100


def test_evaluate_on_source_and_reference_files(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "src.txt").write_text("alpha bravo\nkilo lima\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("BRAVO ALPHA\nLIMA KILO\n", encoding="utf-8")
    code = main(
        [
            "evaluate",
            "--model",
            str(trained / "best"),
            "--src",
            str(tmp_path / "src.txt"),
            "--ref",
            str(tmp_path / "ref.txt"),
            "--hyp",
            str(tmp_path / "hyp.txt"),
        ]
    )
    assert code == 0
    translator = Translator.from_dir(trained / "best", device="cpu")
    hypotheses = [t.text for t in translator.translate(["alpha bravo", "kilo lima"])]  # of the sources
    assert (tmp_path / "hyp.txt").read_text(encoding="utf-8") == "".join(h + "\n" for h in hypotheses)
    bleu = sacrebleu.corpus_bleu(hypotheses, [["BRAVO ALPHA", "LIMA KILO"]]).score
    assert f"src: BLEU {bleu:.2f}" in capsys.readouterr().out


def test_evaluate_names_int8_hypotheses_apart_from_fp32_ones(trained: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained / "best", model)
    (tmp_path / "test.src").write_text("alpha bravo\n", encoding="utf-8")
    (tmp_path / "test.ref").write_text("BRAVO ALPHA\n", encoding="utf-8")
    flags = ["--src", str(tmp_path / "test.src"), "--ref", str(tmp_path / "test.ref")]
    assert main(["evaluate", "--model", str(model), *flags]) == 0
    assert main(["evaluate", "--model", str(model), *flags, "--int8"]) == 0
    hypotheses = sorted(path.name for path in model.glob("*.hyp"))
    assert len(hypotheses) == 2 and sum(name.endswith(".int8.hyp") for name in hypotheses) == 1


def test_evaluate_on_empty_files_is_a_clear_error(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("empty.src", "empty.ref"):
        (tmp_path / name).write_text("", encoding="utf-8")
    flags = ["--src", str(tmp_path / "empty.src"), "--ref", str(tmp_path / "empty.ref"), "--hyp", str(tmp_path / "h")]
    assert main(["evaluate", "--model", str(trained / "best"), *flags]) == 2
    assert "empty.src is empty: no sentences to translate and score" in capsys.readouterr().err


def test_translate_output_leaves_no_temporary_file(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("alpha bravo\n", encoding="utf-8")
    (tmp_path / "out.txt").write_text("the previous output\n", encoding="utf-8")
    flags = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt")]
    assert main(["translate", "--model", str(trained / "best"), *flags]) == 0
    assert len((tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()) == 1
    assert "previous" not in (tmp_path / "out.txt").read_text(encoding="utf-8")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.txt", "out.txt"]


def _translated(trained: Path, tmp_path: Path) -> str:
    """What `mt translate` writes to a plain file for in.txt."""
    flags = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "plain.txt")]
    assert main(["translate", "--model", str(trained / "best"), *flags]) == 0
    return (tmp_path / "plain.txt").read_text(encoding="utf-8")


def test_translate_output_through_a_link_writes_the_file_it_points_to(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("alpha bravo\n", encoding="utf-8")
    (tmp_path / "real.txt").write_text("old\n", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    flags = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "link.txt")]
    assert main(["translate", "--model", str(trained / "best"), *flags]) == 0
    assert (tmp_path / "link.txt").is_symlink()
    assert (tmp_path / "real.txt").read_text(encoding="utf-8") == _translated(trained, tmp_path)


def test_translate_output_to_a_pipe_writes_into_it(trained: Path, tmp_path: Path) -> None:
    """`--output /dev/stdout` or `>(cmd)`: no temporary file can be made beside a pipe."""
    (tmp_path / "in.txt").write_text("alpha bravo\n", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe")
    received: queue.Queue[str] = queue.Queue()
    # a daemon: were the pipe replaced by a file, its reader would wait forever without holding up pytest
    threading.Thread(target=lambda: received.put((tmp_path / "pipe").read_text(encoding="utf-8")), daemon=True).start()
    flags = ["--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "pipe")]
    assert main(["translate", "--model", str(trained / "best"), *flags]) == 0
    assert received.get(timeout=30) == _translated(trained, tmp_path)


def test_translate_output_to_dev_stdout_appends_to_what_stdout_is(trained: Path, tmp_path: Path) -> None:
    """`--output /dev/stdout >> log`: the log keeps what it held (/dev/stdout resolves to the log file,
    which must not be replaced as a file would be)."""
    (tmp_path / "in.txt").write_text("alpha bravo\n", encoding="utf-8")
    log = tmp_path / "log"
    log.write_text("EARLIER LINE\n", encoding="utf-8")
    flags = ["--input", str(tmp_path / "in.txt"), "--output", "/dev/stdout"]
    with log.open("a", encoding="utf-8") as stdout:
        command = [sys.executable, "-m", "mt", "translate", "--model", str(trained / "best"), *flags]
        subprocess.run(command, stdout=stdout, check=True)
    assert log.read_text(encoding="utf-8") == "EARLIER LINE\n" + _translated(trained, tmp_path)


def test_an_output_in_a_missing_folder_is_refused_before_the_work(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("translated before checking where the output goes")

    monkeypatch.setattr(mt.evaluate, "evaluate", no_work)
    (tmp_path / "test.src").write_text("alpha\n", encoding="utf-8")
    (tmp_path / "test.ref").write_text("ALPHA\n", encoding="utf-8")
    flags = ["--src", str(tmp_path / "test.src"), "--ref", str(tmp_path / "test.ref")]
    hyp = str(tmp_path / "nodir" / "out.hyp")
    assert main(["evaluate", "--model", str(trained / "best"), *flags, "--hyp", hyp]) == 2
    assert f"cannot write {hyp}: folder {tmp_path / 'nodir'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["translate", "--model", "/nonexistent"], "model directory /nonexistent does not exist"),
        (["train", "--data", "/nonexistent", "--out", "OUT"], "corpus path /nonexistent does not exist"),
        (["train", "--out", "OUT", "--train.lr", "fast"], "train.lr must be a number"),
        (["train", "--out", "OUT", "--resume"], "cannot resume"),
        (["serve", "--models", "/nonexistent"], "models folder /nonexistent does not exist"),
        (["translate", "--model", "/nonexistent", "--device", "gpu"], "device 'gpu': use auto, cpu, cuda or cuda:N"),
        (["serve", "--models", "MODELS", "--device", "gpu"], "device 'gpu': use auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_input_is_a_one_line_error_and_exit_code_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = Path(__file__).parents[1] / "models"  # the shipped ones: the device is checked before any loads
    args = [str(tmp_path / "out") if a == "OUT" else str(models) if a == "MODELS" else a for a in args]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_a_negative_max_steps_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:  # argparse's own error: usage, then one line
        main(["train", "--out", str(tmp_path / "out"), "--max-steps", "-1"])
    assert exit.value.code == 2
    assert "argument --max-steps: must be at least 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MT_MAX_TEXTS": "0"}, "mt serve: error: MT_MAX_TEXTS: Input should be greater than or equal to 1 (got '0')"),
        ({"MT_MAX_ALTERNATIVES": "12"}, "MT_MAX_ALTERNATIVES + 1 (13) is over MT_MAX_BEAM_SIZE (10)"),
        # uvicorn would bind 70000 % 65536 = 4464 and say 70000; or die on 'verbose' after loading the models
        ({"MT_PORT": "70000"}, "MT_PORT: Input should be less than or equal to 65535 (got '70000')"),
        ({"MT_LOG_LEVEL": "verbose"}, "MT_LOG_LEVEL: Input should be 'critical', 'error', 'warning', 'info',"),
        # uvicorn's trace level logs each request's headers and URL
        ({"MT_LOG_LEVEL": "trace", "MT_API_KEYS": "k"}, "MT_LOG_LEVEL trace logs the API keys of every request"),
    ],
)
def test_bad_server_settings_are_one_line_naming_the_variable(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--models", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_log_levels_are_taken_in_any_case() -> None:
    from app.settings import Settings

    assert Settings(log_level="WARNING").log_level == "warning"  # type: ignore[arg-type]


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run([sys.executable, "-m", "mt", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "train" in result.stdout and "translate" in result.stdout and "evaluate" in result.stdout


def test_resume_refuses_to_change_the_architecture(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", "--out", str(trained), "--model.emb_size", "8"]) == 2
    assert "cannot change when resuming (model.emb_size 16 -> 8)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "changed"),
    [
        (["--src", "tgt", "--tgt", "src"], "data.src 'src' -> 'tgt', data.tgt 'tgt' -> 'src'"),  # the other tokenizers
        (["--train.lr", "0.5"], "train.lr 0.01 -> 0.5"),  # the optimizer's saved learning rate would win
        (["--data.max_len", "3"], "data.max_len 100 -> 3"),  # other batches than the saved position's
    ],
)
def test_resume_refuses_what_would_not_be_the_same_run(
    trained: Path, flags: list[str], changed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", "--out", str(trained), *flags]) == 2
    assert f"cannot change when resuming ({changed})" in capsys.readouterr().err


def test_resume_takes_the_first_command_line_again(trained: Path, reverse_corpus: Path) -> None:
    """A killed job is resumed by its own command line plus --resume; the run is done, so it trains no further."""
    first = ["--data", str(reverse_corpus), "--src", "src", "--tgt", "tgt", "--max-steps", "40", *TINY_FLAGS]
    assert main(["train", "--out", str(trained), "--resume", *first]) == 0
    assert json.loads((trained / "last" / "trainer.json").read_text())["step"] == 40


@pytest.mark.parametrize("given", ["file", "stdin"])
def test_input_that_is_not_utf8_is_named_with_its_line(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    data = "alpha bravo\nkilo m\u00e4dchen\n".encode("latin-1")
    (tmp_path / "in.txt").write_bytes(data)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    flags = ["--input", str(tmp_path / "in.txt")] if given == "file" else []
    assert main(["translate", "--model", str(trained / "best"), *flags]) == 2
    name = "in.txt" if given == "file" else "stdin"
    assert f"{name}, line 2: not UTF-8 text" in capsys.readouterr().err


def test_printed_translations_are_utf8_whatever_the_locale(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mt", "translate", "--model", "models/en-de", "--decode.beam_size", "1"]
    result = subprocess.run(
        command,
        input=b"A man rides a bike over a bridge in Zurich.\n",
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "latin-1"},
        cwd=Path(__file__).parents[1],
        check=True,
    )
    text = result.stdout.decode("utf-8")  # Latin-1 bytes (0xe4 for \u00e4) would not decode
    assert any(ord(character) > 127 for character in text), text

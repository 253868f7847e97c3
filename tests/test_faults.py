"""Training under faults: `kill -9` at random moments, checkpoint writes included, never leaves a
checkpoint that does not load, always resumes, and ends in the same weights as a run never killed;
a full disk or an unwritable output folder is one clear line at start."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mt.checkpoint import load_model_dir, load_training_state
from mt.cli import main
from mt.config import Config
from mt.train import Trainer

from .conftest import ONE_THREAD, ROOT, tiny_config

Record = Callable[[str, object], None]  # pytest's record_property
# how far a checkpoint write has got when it is killed: the folder is new, or holds this file
WRITE_PHASES = ("", "model.safetensors", "src.spm", "optimizer.safetensors", "trainer.json")
COMPARED = ("step", "epoch", "batch_in_epoch", "best_bleu", "best_step", "evals_without_improvement", "scheduler")


def fault_config(data: Path) -> Config:
    # A checkpoint after almost every step, so that many kills land while one is being written.
    config = tiny_config(data, eval_every=5, save_every_minutes=1e-5)
    # the runs end at --max-steps, not by early stopping, so that every kill drawn comes during training
    config.train.patience, config.train.min_lr = 10_000, 0.0
    config.train.lr_patience = 1  # the learning rate halves along the way: the schedule must carry over kills
    config.model.dropout = 0.2  # dropout masks must continue from the saved RNG state
    # vocab.sampling_alpha stays 0: SentencePiece's seeded samples repeat within a process but not across
    # processes (sentencepiece 0.2), so a run with subword sampling differs from itself when restarted.
    return config


def write_config(config: Config, path: Path) -> Path:
    path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
    return path


# --- kill -9 and resume ----------------------------------------------------------------------------


@dataclass
class Kill:
    moment: str  # "startup", "timer" (a random delay into training), "write" (during the n-th checkpoint write)
    last_step: int  # the step `last` points to after the kill (0: no checkpoint yet)
    mid_write: bool  # the kill left a half-written checkpoint or link behind


def pending_writes(run: Path) -> list[Path]:
    """What a kill during a checkpoint write, link swap or pruning leaves behind (hidden, never loaded)."""
    return [*(run / "checkpoints").glob(".tmp-*"), *run.glob(".*.tmp-*")]


def last_step(run: Path) -> int:
    if not (run / "last").exists():
        return 0
    return int(json.loads((run / "last" / "trainer.json").read_text())["step"])


def step_now(run: Path) -> int:
    """`last_step` of a run in progress, which may swap `last` and prune while it is read."""
    try:
        return last_step(run)
    except (OSError, ValueError):
        return -1


def wait_for_moment(process: subprocess.Popen[bytes], run: Path, moment: str, rng: random.Random) -> bool:
    """Wait for the chosen moment of this process's life; False when it finished before it came."""
    checkpoints = run / "checkpoints"
    if moment == "startup":
        time.sleep(rng.uniform(0.2, 1.0))  # importing torch alone takes longer
    elif moment == "timer":
        started_at = step_now(run)  # training is under way once this process has saved a checkpoint
        while step_now(run) == started_at:
            if process.poll() is not None:
                return False
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        # the n-th checkpoint write of this process, once it has got as far as writing `phase`
        writes, phase = rng.randint(1, 4), rng.choice(WRITE_PHASES)
        seen: set[str] = set()
        while True:
            if process.poll() is not None:
                return False
            pending = list(checkpoints.glob(f".tmp-step-*-{process.pid}")) if checkpoints.is_dir() else []
            seen |= {p.name for p in pending}
            if len(seen) >= writes and any(not phase or (p / phase).exists() for p in pending):
                break
            time.sleep(0.0002)
    return process.poll() is None


def assert_every_checkpoint_loads(run: Path) -> None:
    with torch.random.fork_rng(devices=[]):  # load_training_state sets the RNG state of this process
        for checkpoint in sorted((run / "checkpoints").glob("step-*")):
            loaded = load_model_dir(checkpoint)
            trainer = load_training_state(checkpoint, torch.optim.Adam(loaded.model.parameters()))
            assert checkpoint.name.startswith(f"step-{trainer['step']:07d}")
    for link in ("last", "best"):
        if (run / link).is_symlink():
            target = (run / link).resolve()
            assert target.parent == (run / "checkpoints").resolve() and target.name.startswith("step-"), link
            assert target.is_dir(), f"{link} points to a checkpoint that is gone"
    log = run / "log.jsonl"  # absent when killed at start-up
    for line in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
        json.loads(line)  # no half-written record


def train_with_kills(config_file: Path, run: Path, *, max_steps: int, moments: list[str], seed: int) -> list[Kill]:
    """`mt train` in a subprocess, killed with SIGKILL at each of `moments` (which write and how far into
    it, or how long into training, drawn from `seed`), checked after every kill, and resumed (started
    afresh while there is no checkpoint) until it finishes."""
    rng = random.Random(seed)
    kills: list[Kill] = []
    for attempt in range(len(moments) + 1):
        resume = ["--resume"] if (run / "last").exists() else ["--config", str(config_file)]
        command = [sys.executable, "-m", "mt", "train", "--out", str(run), "--max-steps", str(max_steps), *resume]
        log = run.parent / f"{run.name}-attempt-{attempt}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=ONE_THREAD, cwd=ROOT)
            try:
                if attempt < len(moments) and wait_for_moment(process, run, moments[attempt], rng):
                    process.send_signal(signal.SIGKILL)
                returncode = process.wait(timeout=300)
            finally:
                if process.poll() is None:
                    process.kill()
        if returncode == 0:
            return kills
        assert returncode == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
        kills.append(Kill(moments[attempt], last_step(run), bool(pending_writes(run))))
        assert_every_checkpoint_loads(run)
    raise AssertionError(f"the run did not finish after {len(kills)} kills")


def assert_same_final_state(straight: Path, resumed: Path) -> None:
    for link in ("last", "best"):
        expected = load_file(str(straight / link / "model.safetensors"))
        actual = load_file(str(resumed / link / "model.safetensors"))
        assert expected.keys() == actual.keys()
        for name in expected:
            assert torch.equal(expected[name], actual[name]), f"{link}: {name}"
        expected_state = json.loads((straight / link / "trainer.json").read_text())
        actual_state = json.loads((resumed / link / "trainer.json").read_text())
        assert {k: expected_state[k] for k in COMPARED} == {k: actual_state[k] for k in COMPARED}, link


def run_kill_test(
    small_corpus: Path, tmp_path: Path, *, max_steps: int, moments: list[str], seed: int, record: Record
) -> list[Kill]:
    config = fault_config(small_corpus)
    Trainer(config, tmp_path / "straight", max_steps=max_steps).fit()
    kills = train_with_kills(
        write_config(config, tmp_path / "config.json"),
        tmp_path / "run",
        max_steps=max_steps,
        moments=moments,
        seed=seed,
    )
    summary = ", ".join(f"{k.moment}->step {k.last_step}{' mid-write' if k.mid_write else ''}" for k in kills)
    print(f"\n{len(kills)} kills: {summary}")
    record("kills", len(kills))
    record("kills_mid_write", sum(k.mid_write for k in kills))
    assert_every_checkpoint_loads(tmp_path / "run")
    assert not pending_writes(tmp_path / "run")  # what killed writes left was cleaned up by later saves
    assert_same_final_state(tmp_path / "straight", tmp_path / "run")
    return kills


def test_kill_9_three_times_then_resume_ends_like_an_uninterrupted_run(
    small_corpus: Path, tmp_path: Path, record_property: Record
) -> None:
    """3 kills: two while a checkpoint is being written, one at a random moment of training."""
    moments = ["write", "timer", "write"]
    kills = run_kill_test(small_corpus, tmp_path, max_steps=40, moments=moments, seed=1, record=record_property)
    assert [k.moment for k in kills] == moments  # every kill hit a live process
    assert any(k.mid_write for k in kills)  # and one at least interrupted a checkpoint write


@pytest.mark.slow
def test_kill_9_twelve_times_at_random_moments_then_resume(
    small_corpus: Path, tmp_path: Path, record_property: Record
) -> None:
    """12 kills at seeded random moments, the first during start-up (before any checkpoint)."""
    rng = random.Random(12)
    moments = ["startup"] + [rng.choice(["write", "timer"]) for _ in range(11)]
    kills = run_kill_test(small_corpus, tmp_path, max_steps=120, moments=moments, seed=12, record=record_property)
    # every kill hit a live process; a kill that came after the final checkpoint leaves the rest nothing to hit
    assert len(kills) == 12 or kills[-1].last_step == 120
    assert kills[0].last_step == 0  # killed before its first checkpoint, and started afresh
    assert sum(k.mid_write for k in kills) >= 3


def test_resuming_a_finished_run_trains_no_further(small_corpus: Path, tmp_path: Path) -> None:
    """A kill after the final checkpoint but before exit: the resumed run must not train past --max-steps."""
    config = fault_config(small_corpus)
    Trainer(config, tmp_path / "run", max_steps=6).fit()
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    Trainer(config, tmp_path / "run", resume=True, max_steps=6).fit()
    assert last_step(tmp_path / "run") == 6
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == checkpoints


def test_resuming_a_run_that_stopped_early_trains_no_further(small_corpus: Path, tmp_path: Path) -> None:
    """Stopped by early stopping (no better BLEU at a learning rate too small to learn): resumed, it stays
    stopped, rather than training another evaluation period and perhaps moving `best`."""
    config = tiny_config(small_corpus, eval_every=2, patience=1, lr=1e-9, min_lr=0.0)
    Trainer(config, tmp_path / "run", max_steps=50).fit()
    stopped_at = last_step(tmp_path / "run")
    assert stopped_at < 50
    Trainer(config, tmp_path / "run", resume=True, max_steps=50).fit()
    assert last_step(tmp_path / "run") == stopped_at


def test_a_run_with_subword_sampling_resumes_on_the_batches_it_left(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new process samples other pieces from the same seed (sentencepiece 0.2), and batches cut by their
    lengths would put other sentences after the saved position: half the rest of the epoch trained twice,
    half never. The resumed run must go on with the batches it saved, whatever its samples."""
    config = tiny_config(small_corpus, eval_every=5)
    config.vocab.sampling_alpha = 0.5
    Trainer(config, tmp_path / "run", max_steps=5).fit()
    saved = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())
    assert saved["batch_in_epoch"] == 5
    assert sorted(i for batch in saved["epoch_batches"] for i in batch) == list(range(600))  # each once

    resumed = Trainer(config, tmp_path / "run", resume=True, max_steps=10)
    encode = resumed._encode
    monkeypatch.setattr(resumed, "_encode", lambda seed, alpha: encode(seed + 1, alpha))  # another process's samples
    _, _, batches = resumed._epoch_data()
    assert batches == saved["epoch_batches"]


# --- the output folder at start --------------------------------------------------------------------


def train_cli(config_file: Path, out: Path, *extra: str) -> int:
    return main(["train", "--config", str(config_file), "--out", str(out), "--max-steps", "2", *extra])


def one_error_line(captured: pytest.CaptureFixture[str]) -> str:
    err = captured.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mt train: error: ")
    return err


def test_a_disk_without_room_for_the_checkpoints_is_refused_at_start(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_config(fault_config(small_corpus), tmp_path / "config.json")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=3_000_000))
    assert train_cli(config_file, tmp_path / "run") == 2
    err = one_error_line(capsys)
    assert "not enough free space for the run in" in err
    assert "3 MB free, its checkpoints need about" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_on_a_disk_without_room_is_refused_at_start(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On resume the need is measured on the last checkpoint, less the checkpoints already on disk."""
    config = fault_config(small_corpus)
    config.train.save_every_minutes = 1000.0  # one checkpoint, at the end
    Trainer(config, tmp_path / "run", max_steps=2).fit()
    capsys.readouterr()  # the progress bar
    size = sum(f.stat().st_size for f in (tmp_path / "run" / "last").iterdir())
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=5 * size))
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--max-steps", "4"]) == 2
    assert "(6 of " in one_error_line(capsys)  # 5 kept + best + 1 being written, less the 1 there
    assert last_step(tmp_path / "run") == 2


def test_a_disk_that_fills_during_the_probe_write_is_refused_at_start(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_config(fault_config(small_corpus), tmp_path / "config.json")

    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert train_cli(config_file, tmp_path / "run") == 2
    assert "cannot write to the output folder" in (err := one_error_line(capsys))
    assert "No space left on device" in err
    assert not (tmp_path / "run" / ".write-test").exists()


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder nothing can be written into, root included (root ignores permission bits, not chattr +i)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root, which writes through permission bits, and chattr +i is not available")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("out", ["run inside it", "the folder itself"])
def test_an_unwritable_output_folder_is_refused_at_start(
    small_corpus: Path, tmp_path: Path, read_only: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    config_file = write_config(fault_config(small_corpus), tmp_path / "config.json")
    run = read_only / "run" if out == "run inside it" else read_only
    assert train_cli(config_file, run) == 2
    err = one_error_line(capsys)
    assert f"cannot write to the output folder {run}: " in err
    assert "Permission denied" in err or "Operation not permitted" in err

"""Data parallelism under torchrun, on CPU processes with gloo: two ranks train the weights that one
process trains on the same batches, and translate a file into the same output as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.multiprocessing.spawn import spawn

from mt.cli import main
from mt.config import Config
from mt.distributed import RanksDivergedError, World, leave
from mt.train import Trainer

from .conftest import ONE_THREAD, ROOT, reverse_task, tiny_config

# Two ranks add up each gradient in another order than one process: after 20 Adam steps (lr 0.01) the
# weights differ by 1.3e-5 at most. Averaging the ranks' mean losses instead of dividing by the whole
# batch's tokens moves them by 0.07, and leaving out the factor 2 that undoes DDP's averaging by 0.01.
ATOL = 1e-4


def torchrun(*args: str, cwd: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mt"]
    result = subprocess.run([*command, *args], cwd=cwd, env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def evaluations(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["lr"]) for r in records if r["event"] == "eval"]


def test_two_ranks_train_the_weights_one_process_trains_on_the_same_batches(
    small_corpus: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    # dropout 0: with dropout each rank draws its own masks, and the runs agree only in distribution.
    # Evaluations every 5 steps, the learning rate halved after 2 without a better BLEU: rank 0 validates,
    # and the other rank must change its learning rate at the same step.
    config = tiny_config(small_corpus, eval_every=5, lr_patience=1)
    config_file = tmp_path / "config.json"
    config.save(config_file)
    ranks_run = tmp_path / "ranks"
    torchrun("train", "--config", str(config_file), "--out", str(ranks_run), "--max-steps", "5", cwd=ROOT)
    torchrun("train", "--resume", "--out", str(ranks_run), "--max-steps", "20", cwd=ROOT)  # mid-epoch
    Trainer(Config.load(config_file), tmp_path / "single", max_steps=20).fit()

    assert evaluations(ranks_run) == evaluations(tmp_path / "single")
    assert evaluations(tmp_path / "single")[-1][1] < config.train.lr  # the schedule did act
    ranks = load_file(str(ranks_run / "last" / "model.safetensors"))
    single = load_file(str(tmp_path / "single" / "last" / "model.safetensors"))
    assert ranks.keys() == single.keys()
    difference = max(float((ranks[name] - single[name]).abs().max()) for name in single)
    print(f"\nlargest weight difference between 2 ranks and 1 process after 20 steps: {difference:.2e}")
    record_property("max_weight_difference", difference)
    assert difference < ATOL
    # The ranks hold the very same weights: the run checks it at every evaluation (World.check_same).


@pytest.fixture(scope="module")
def model(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained long enough to translate every line differently."""
    run = tmp_path_factory.mktemp("model") / "run"
    Trainer(tiny_config(small_corpus, eval_every=80), run, max_steps=80).fit()
    return run / "last"


def test_two_ranks_translate_a_file_into_the_output_of_one_process(model: Path, tmp_path: Path) -> None:
    lines = [row["src"] for row in reverse_task(31, seed=7)]  # odd: rank 0 translates one line more
    (tmp_path / "input.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    flags = ["--model", str(model), "--input", str(tmp_path / "input.txt"), "--device", "cpu"]
    flags += ["--decode.beam_size", "3", "--decode.n_best", "2"]  # n-best lines carry the input's line number
    torchrun("translate", *flags, "--output", str(tmp_path / "ranks.txt"), cwd=ROOT)
    assert main(["translate", *flags, "--output", str(tmp_path / "single.txt")]) == 0

    ranks = (tmp_path / "ranks.txt").read_text(encoding="utf-8")
    assert ranks == (tmp_path / "single.txt").read_text(encoding="utf-8")
    numbers = [int(line.split(" ||| ")[0]) for line in ranks.splitlines()]
    assert numbers == [i // 2 for i in range(2 * len(lines))]
    assert len({line.split(" ||| ")[1] for line in ranks.splitlines()[::2]}) > 25  # the order shows


def _collectives(rank: int, port: int, results: Path) -> None:
    """One of two gloo processes, placed as torchrun would place it."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    world = World.from_env()
    world.join(torch.device("cpu"))
    gathered = world.gather_shards(world.shard(["only line"]))  # rank 1's shard is empty
    world.check_same("same digest", "weights")
    try:
        world.check_same(f"digest of rank {rank}", "weights")
        diverged = ""
    except RanksDivergedError as error:
        diverged = str(error)
    (results / f"rank-{rank}.json").write_text(json.dumps({"gathered": gathered, "diverged": diverged}))
    leave(completed=True)


def _train_on_own_corpus(rank: int, port: int, folders: list[Path], results: Path) -> None:
    """One of two gloo processes whose corpus is not the other's (a node with its own, older copy)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    try:
        Trainer(tiny_config(folders[rank]), results / f"run-{rank}", max_steps=5).fit()
        error = ""
    except RanksDivergedError as diverged:
        error = str(diverged)
    (results / f"rank-{rank}.txt").write_text(error)
    leave(completed=True)


def test_ranks_that_read_different_corpora_stop_with_an_error_not_a_hang(small_corpus: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "validation"):
        lines = (small_corpus / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        (other / f"{split}.jsonl").write_text("\n".join(lines[: len(lines) * 9 // 10]) + "\n", encoding="utf-8")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spawn(_train_on_own_corpus, args=(port, [small_corpus, other], tmp_path), nprocs=2)
    for rank in (0, 1):
        assert (tmp_path / f"rank-{rank}.txt").read_text() == (
            "the epoch 1's sentences differ between ranks: ranks [1] do not match rank 0"
        )


def test_a_rank_without_lines_adds_nothing_and_diverged_ranks_stop_every_rank(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spawn(_collectives, args=(port, tmp_path), nprocs=2)
    results = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["gathered"] for r in results] == [["only line"], []]  # rank 0 writes, the others nothing
    for result in results:
        assert result["diverged"] == "the weights differ between ranks: ranks [1] do not match rank 0"

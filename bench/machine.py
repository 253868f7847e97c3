"""The machine a benchmark ran on, printed beside its figures: CPU model, cores, torch and threads, and
(`speed`, in the translation and load benchmarks; training prints its own dtype's peak) how fast it
multiplies now: this project's machines have run 30% slower in one hour than in the one before, for
old and new code alike, so a run's figures compare with another's only at a similar peak."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.machine()}{gpu}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def matmul_peak(
    size: int = 4096, repeats: int = 5, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> float:
    """FLOP/s of a large matrix product in `dtype` on `device`: what the cores (or the GPU) can do at best."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    wait = sync(device)
    torch.mm(a, b)  # warm-up
    wait()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        wait()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def sync(device: str | torch.device) -> Callable[[], None]:
    """What waits for `device` to finish its queued work before a clock is read: nothing on the CPU."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None


def speed(device: str | torch.device = "cpu") -> str:
    """The fp32 matmul peak of `device` at this moment, to print at the start and end of a run."""
    peak = matmul_peak(device=device)
    return f"fp32 matmul peak now: {peak / 1e9:.1f} GFLOP/s on {device} (median torch.mm of 4096x4096 matrices)"


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far (Linux), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low`, else a usage error naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse

"""The benchmarks' shared helpers (bench/machine.py): what they read of a process must be right, or every
figure they print is wrong."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest


def _machine() -> Any:
    spec = importlib.util.spec_from_file_location("machine", Path(__file__).parents[1] / "bench" / "machine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


machine = _machine()


def test_cpu_seconds_read_the_processes_user_and_system_time() -> None:
    sum(i * i for i in range(2_000_000))  # some CPU time to read
    times = os.times()
    assert machine.cpu_seconds(os.getpid()) == pytest.approx(times.user + times.system, abs=0.05)


def test_rss_mib_reads_the_resident_memory() -> None:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    expected = resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert machine.rss_mib(os.getpid()) == pytest.approx(expected, rel=0.05)


def test_counts_below_the_least_a_benchmark_runs_with_are_usage_errors() -> None:
    parse = machine.at_least(2)
    assert parse("2") == 2
    for text, message in (("1", "must be at least 2, got 1"), ("two", "'two' is not an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)

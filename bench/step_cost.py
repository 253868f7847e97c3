"""Where a server's random batches lose against sorted batch translation: the search's fixed cost per
decoder step, which random batches pay for more steps.

    python bench/step_cost.py                  # models/de-en, Multi30k test, beam 5, fp32

Beam 5 over the test set, sorted into the model's batches (what `mt translate` does) and shuffled into
batches of 32 (what a server decodes at 32 clients), timing the encoder, the decoder's steps and the
search's bookkeeping between them (medians of --repeats). Both make the same translations, so the same
hypothesis-steps; random batches make them in more steps of fewer rows. Each step costs a fixed part,
whatever its rows, plus a part per row: the decoder's fixed part is fitted to steps of 1-64 sentences
(a + b x rows), the bookkeeping's is the difference of the two runs per extra step. The last line is the
random/sorted rate with every fixed part taken out: an upper bound on what cutting per-step overhead
could give a server's share of the offline rate.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch
from machine import at_least, describe, speed

from mt.decoder import DecoderState
from mt.translator import Translator

P = ParamSpec("P")
R = TypeVar("R")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/de-en")
    parser.add_argument("--data", default="../shared/data/multi30k/test.jsonl")
    parser.add_argument("--source", default="de")
    parser.add_argument("--random-batch", type=at_least(1), default=32)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    args = parser.parse_args()

    translator = Translator.from_dir(args.model, device="cpu")
    lines = Path(args.data).read_text(encoding="utf-8").splitlines()
    sources = translator.encode([json.loads(line)[args.source] for line in lines if line.strip()])
    shuffled = random.Random(0).sample(sources, len(sources))
    by_length = sorted(sources, key=len)
    size = translator.decode.batch_size
    runs = {
        f"sorted, batches of {size}": [by_length[i : i + size] for i in range(0, len(sources), size)],
        f"random, batches of {args.random_batch}": [
            shuffled[i : i + args.random_batch] for i in range(0, len(sources), args.random_batch)
        ],
    }
    timer = PhaseTimer(translator)
    results = {name: timer.median_run(batches, args.repeats) for name, batches in runs.items()}
    step_fixed, step_per_row = fit_step_cost(translator)

    print(describe())
    beam = translator.decode.beam_size
    print(f"{args.model}, {len(sources)} sentences, beam {beam}, fp32, medians of {args.repeats}")
    print(f"{'batches':>22} {'sent/s':>7} {'encoder':>8} {'steps':>7} {'search':>7} {'n steps':>8} {'rows/step':>10}")
    for name, r in results.items():
        print(
            f"{name:>22} {len(sources) / r['total']:7.1f} {r['encoder']:7.3f}s {r['step']:6.3f}s"
            f" {r['search']:6.3f}s {r['steps']:8.0f} {r['rows'] / r['steps']:10.1f}"
        )
    sorted_run, random_run = results.values()
    extra_steps = random_run["steps"] - sorted_run["steps"]
    search_fixed = (random_run["search"] - sorted_run["search"]) / extra_steps
    fixed = step_fixed + search_fixed
    print(f"decoder step: {step_fixed * 1e6:.0f} us + {step_per_row * 1e6:.1f} us a row (fitted, 1-64 sentences)")
    print(f"search bookkeeping: {search_fixed * 1e6:.0f} us a step (the runs' difference per extra step)")
    measured = sorted_run["total"] / random_run["total"]
    bound = (sorted_run["total"] - fixed * sorted_run["steps"]) / (random_run["total"] - fixed * random_run["steps"])
    print(f"random / sorted rate: {measured:.1%} measured, {bound:.1%} with no fixed cost per step")
    print(speed())


class PhaseTimer:
    """Times a translator's encoder, decoder steps and the search around them by wrapping the first two."""

    def __init__(self, translator: Translator) -> None:
        self.translator = translator
        self.times = {"encoder": 0.0, "step": 0.0, "steps": 0.0, "rows": 0.0}
        model = translator.model
        model.encode = self._timed(model.encode, "encoder")  # type: ignore[method-assign]
        step = self._timed(model.decoder.step, "step")

        def counted_step(prev: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
            self.times["steps"] += 1
            self.times["rows"] += prev.numel()
            return step(prev, state)

        model.decoder.step = counted_step  # type: ignore[method-assign]

    def _timed(self, function: Callable[P, R], phase: str) -> Callable[P, R]:
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self.times[phase] += time.perf_counter() - start
            return result

        return timed

    def run(self, batches: list[list[list[int]]]) -> dict[str, float]:
        self.times.update(dict.fromkeys(self.times, 0.0))
        start = time.perf_counter()
        for batch in batches:
            self.translator.translate_encoded(batch)
        total = time.perf_counter() - start
        return {**self.times, "total": total, "search": total - self.times["encoder"] - self.times["step"]}

    def median_run(self, batches: list[list[list[int]]], repeats: int) -> dict[str, float]:
        self.run(batches[:2])  # warm-up
        runs = [self.run(batches) for _ in range(repeats)]
        return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


@torch.inference_mode()
def fit_step_cost(translator: Translator, src_len: int = 20, beams: int = 5) -> tuple[float, float]:
    """A decoder step's median seconds at 1-64 sentences of `src_len` pieces, fitted as a + b x rows."""
    model, rows, seconds = translator.model, [], []
    for sentences in (1, 2, 4, 8, 16, 32, 64):
        src = torch.randint(10, 1000, (sentences, src_len))
        state = model.encode(src, torch.full((sentences,), src_len)).repeat(beams)
        prev = torch.randint(10, 1000, (sentences * beams,))
        times = []
        for _ in range(60):
            start = time.perf_counter()
            model.decoder.step(prev, state)
            times.append(time.perf_counter() - start)
        rows.append(sentences * beams)
        seconds.append(statistics.median(times[10:]))
    slope, intercept = statistics.linear_regression(rows, seconds)
    return intercept, slope


if __name__ == "__main__":
    main()

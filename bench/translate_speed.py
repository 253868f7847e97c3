"""Translation speed of a shipped model: batch translation of a test set, and the latency of one sentence.

    python bench/translate_speed.py                          # models/de-en on Multi30k test
    python bench/translate_speed.py --model models/en-de --source en --target de
    python bench/translate_speed.py --repeats 1 --limit 200  # a quick look
    python bench/translate_speed.py --random-batches 16 32   # also batches as a server forms them

Batch: the whole test set (1000 sentences) through `Translator.translate`, greedy and beam 5, in fp32,
int8 (CPU) and bf16 (GPU, or a CPU with AMX or AVX512-BF16); sentences/s is the median of
--repeats runs, with sacreBLEU beside each. Latency: one typical
sentence (the test sentence closest to 12 words), translated alone --latency-runs times; p50 and p95.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

import sacrebleu
import torch
from machine import at_least, describe, speed

from mt.cpu import bf16_supported
from mt.translator import Translator


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/de-en")
    parser.add_argument("--data", default="../shared/data/multi30k/test.jsonl")
    parser.add_argument("--source", default="de")
    parser.add_argument("--target", default="en")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="batch runs per setting (median)")
    parser.add_argument("--latency-runs", type=at_least(2), default=100, help="for p50/p95 (at least 2)")
    parser.add_argument("--limit", type=at_least(0), default=0, help="only the first N sentences (0 = all)")
    parser.add_argument("--batch-size", type=at_least(0), default=0, help="sentences per batch (0 = model default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--random-batches",
        type=at_least(1),
        nargs="*",
        default=[],
        metavar="N",
        help="also beam 5 (fp32, bf16) in batches of N sentences in random order, the batches a server forms",
    )
    args = parser.parse_args()

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    sources, references = [row[args.source] for row in rows], [row[args.target] for row in rows]
    typical = min(sources, key=lambda s: (abs(len(s.split()) - 12), s))

    print(describe())
    print(speed(args.device))
    print(f"model: {args.model}; {len(sources)} sentences of {args.data}; device {args.device}")
    print(f"typical sentence ({len(typical.split())} words): {typical}")
    precisions = ["fp32"]
    if args.device == "cpu":
        precisions.append("int8")
    if args.device != "cpu" or bf16_supported():
        precisions.append("bf16")
    for precision in precisions:
        int8, bf16 = precision == "int8", precision == "bf16"
        translator = Translator.from_dir(args.model, device=args.device, int8=int8, bf16=bf16)
        if precision == "fp32":
            print(f"{translator.num_parameters:,} parameters")
        print(f"\n{precision}")
        print(f"{'search':8} {'sentences/s':>12} {'BLEU':>6} {'p50 ms':>7} {'p95 ms':>7}")
        for beam_size in (1, 5):
            decode = dataclasses.replace(translator.decode, beam_size=beam_size, n_best=1)
            if args.batch_size:
                decode.batch_size = args.batch_size
            translator.translate(sources[:64], decode)  # warm-up
            rates, hypotheses = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                hypotheses = [t.text for t in translator.translate(sources, decode)]
                rates.append(len(sources) / (time.perf_counter() - start))
            bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
            latencies = []
            for _ in range(args.latency_runs):
                start = time.perf_counter()
                translator.translate([typical], decode)
                if args.device != "cpu":
                    torch.cuda.synchronize()
                latencies.append((time.perf_counter() - start) * 1000)
            search = "greedy" if beam_size == 1 else f"beam {beam_size}"
            print(
                f"{search:8} {statistics.median(rates):12.1f} {bleu:6.2f} "
                f"{percentile(latencies, 50):7.1f} {percentile(latencies, 95):7.1f}"
            )
        if args.random_batches and not int8:
            random_batches(translator, sources, args.random_batches, args.repeats, precision)
    print(f"\n{speed(args.device)}")


def random_batches(translator: Translator, sources: list[str], sizes: list[int], repeats: int, precision: str) -> None:
    """Sentences/s of beam 5 over `sources` shuffled and cut into batches of each size: what batch
    translation gives a server whose batches hold that many sentences of random lengths."""
    decode = dataclasses.replace(translator.decode, beam_size=5, n_best=1)
    order = sources[:]
    random.Random(0).shuffle(order)
    print(f"\n{precision} beam 5, batches of random sentences (as a server forms them)")
    print(f"{'batch':>8} {'sentences/s':>12}")
    for size in sizes:
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for first in range(0, len(order), size):
                translator.translate(order[first : first + size], decode)
            rates.append(len(order) / (time.perf_counter() - start))
        print(f"{size:8} {statistics.median(rates):12.1f}")


if __name__ == "__main__":
    main()

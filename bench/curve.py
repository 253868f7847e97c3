"""Validation BLEU against training time, from a run's log.jsonl, as a Markdown table.

    python bench/curve.py runs/de-en/log.jsonl

A resumed run logs some steps twice (those after its last checkpoint); the later record wins.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="a training run's log.jsonl")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.log.read_text(encoding="utf-8").splitlines() if line]
    evals = {r["step"]: r for r in records if r["event"] == "eval"}
    speeds = [r["tgt_tok_per_s"] for r in records if r["event"] == "train"]
    print("| minutes | epochs | step | validation loss | validation BLEU (greedy) | lr |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for step in sorted(evals):
        r = evals[step]
        cells = [
            f"{r['minutes']:.1f}",
            r["epoch"] - 1,
            step,
            f"{r['val_loss']:.3f}",
            f"{r['val_bleu']:.2f}",
            f"{r['lr']:.2g}",
        ]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    if speeds:
        speeds.sort()
        median = speeds[len(speeds) // 2]
        print(f"\nmedian training speed over the run: {median:.0f} target tokens/s ({len(speeds)} windows)")


if __name__ == "__main__":
    main()

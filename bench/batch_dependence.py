"""How many sentences translate differently alone than in a batch, per precision: fp32 should be none;
int8 scales each batch's activations by their largest, and oneDNN's bf16 kernels round differently with
the number of rows, so a server in those precisions can answer a request differently under load.

    python bench/batch_dependence.py                     # models/de-en, Multi30k test, beam 5
    python bench/batch_dependence.py --limit 200 --precisions int8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from machine import at_least, describe

from mt.cpu import bf16_supported
from mt.translator import Translator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/de-en")
    parser.add_argument("--data", default="../shared/data/multi30k/test.jsonl")
    parser.add_argument("--source", default="de")
    parser.add_argument("--limit", type=at_least(0), default=0, help="only the first N sentences (0 = all)")
    parser.add_argument("--batch-size", type=at_least(2), default=64)
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "int8", "bf16"], default=["fp32", "int8", "bf16"])
    args = parser.parse_args()

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    sources = [row[args.source] for row in rows][: args.limit or None]
    print(describe())
    for precision in args.precisions:
        if precision == "bf16" and not bf16_supported():
            print(f"{precision}: skipped, this CPU has neither AMX nor AVX512-BF16")
            continue
        translator = Translator.from_dir(args.model, device="cpu", int8=precision == "int8", bf16=precision == "bf16")
        batched = translator.translate(sources, dataclasses.replace(translator.decode, batch_size=args.batch_size))
        alone = [translator.translate([source])[0] for source in sources]
        differ = sum(a.text != b.text for a, b in zip(alone, batched, strict=True))
        print(
            f"{precision}: {differ} of {len(sources)} sentences translate differently alone than in sorted batches"
            f" of {args.batch_size} (beam {translator.decode.beam_size})"
        )


if __name__ == "__main__":
    main()

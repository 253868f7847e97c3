"""Pathological inputs on a shipped model: how long the output gets and how long one request takes.

    python bench/pathological.py                    # models/de-en, greedy and beam 5
    python bench/pathological.py --model models/en-de --source-text "the the the"

Each input is translated alone (as one request would be), 3 times; the median time is printed with
the pieces in and out, and the process's peak resident memory so far. The service refuses texts over
`MT_MAX_PIECES` (400 by default) and stops any decode past `MT_REQUEST_TIMEOUT_S`; this shows how far
below that budget the worst admitted input is.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

from machine import at_least, describe

from mt.config import DecodeConfig
from mt.translator import Translator

CASES = {
    # MT_MAX_CHARS, 5,000 characters, which `mt translate` takes whole (the service refuses over 400 pieces):
    # beam 5 peaked at 2,027 MiB when each step's attention rows were a tensor of their own (mt/search.py)
    "one caption x92": " ".join(["Ein Mann in einem blauen Hemd steht auf einer Leiter."] * 92),
    "repeated word x200": "der " * 200,
    "repeated word x400": "der " * 400,  # the most pieces the service admits
    "repeated piece, no spaces x300": "ja" * 300,
    "one caption x12": " ".join(["Ein Mann in einem blauen Hemd steht auf einer Leiter."] * 12),
    "punctuation only": "!?.,;:-" * 40,
    "emoji and CJK": "🙂🚲 自転車に乗る男 " * 20,
    "digits": " ".join(str(n) for n in range(150)),
}


WARM_UP = [
    "Zwei junge Männer spielen Fußball auf einem Feld.",
    "Eine Frau mit einem roten Hut liest ein Buch.",
    "Ein Hund rennt durch den Schnee.",
    "Kinder spielen am Strand mit einem Ball.",
    "Ein älterer Mann sitzt auf einer Bank im Park.",
    "Zwei Radfahrer fahren eine steile Straße hinauf.",
    "Eine Gruppe von Menschen steht vor einem Gebäude.",
    "Ein kleines Mädchen isst ein Eis.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/de-en")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--source-text", action="append", default=[], help="more inputs to try")
    args = parser.parse_args()

    translator = Translator.from_dir(args.model, device="cpu")
    translator.translate(WARM_UP)  # a batch first, as a server has decoded many: the heap is no longer fresh
    cases = {**CASES, **{f"given #{i + 1}": text for i, text in enumerate(args.source_text)}}
    print(describe())
    print(f"model: {args.model}; each input alone, median of {args.repeats}")
    print(f"{'input':34} {'pieces in':>9} {'search':>7} {'pieces out':>10} {'seconds':>8} {'peak MiB':>9}")
    for name, text in cases.items():
        pieces_in = len(translator.src_tokenizer.encode([text.strip()])[0])
        for beam_size in (5, 1):
            decode = DecodeConfig(beam_size=beam_size)
            times, pieces_out = [], 0
            for _ in range(args.repeats):
                start = time.perf_counter()
                [translation] = translator.translate([text], decode)
                times.append(time.perf_counter() - start)
                pieces_out = len(translation.candidates[0].pieces)
            search = "greedy" if beam_size == 1 else f"beam {beam_size}"
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            print(f"{name:34} {pieces_in:9d} {search:>7} {pieces_out:10d} {statistics.median(times):8.2f} {peak:9.0f}")


if __name__ == "__main__":
    main()

"""Training throughput of a config on real data: target tokens per second, median over repeated windows.

    python bench/train_speed.py                       # the default de->en config on Multi30k
    python bench/train_speed.py --config configs/de-en.yaml --steps 120
    python bench/train_speed.py --precision bf16      # matrix products in bfloat16 (autocast)
    python bench/train_speed.py --device cuda         # on a GPU (bench/gpu.sh runs the GPU checks)

Prints the machine (CPU model, cores, torch version and threads) beside the figures. Runs the same
training step as `mt train` (same batches, loss and optimizer), without validation or checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import statistics
import time

import torch
from machine import at_least, describe, matmul_peak, sync
from torch.utils.flop_counter import FlopCounterMode

from mt.config import Config
from mt.data import clean, load_split
from mt.model import Seq2Seq
from mt.train import collate, keep_freed_memory, make_batches, make_optimizer, train_step, train_tokenizers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: the built-in defaults)")
    parser.add_argument("--data", default="../shared/data/multi30k")
    parser.add_argument("--steps", type=at_least(1), default=100, help="timed steps (after 10 warm-up steps)")
    parser.add_argument("--window", type=at_least(1), default=10, help="steps per measured window")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="train.precision (default: the config's)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a machine with a GPU (default: cpu)")
    args = parser.parse_args()

    config = Config.load(args.config) if args.config else Config()
    config.data.path = args.data
    if args.precision:
        config.train.precision = args.precision
    keep_freed_memory()
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.train.seed)
    corpus, _ = clean(
        load_split(args.data, "train", config.data.src, config.data.tgt), config.data.max_len, config.data.max_ratio
    )
    src_tok, tgt_tok = train_tokenizers(corpus, config)
    src, tgt = src_tok.encode(corpus.src), tgt_tok.encode(corpus.tgt)
    batches = make_batches(src, tgt, batch_tokens=config.train.batch_tokens, rng=random.Random(0))
    device = torch.device(args.device)
    model = Seq2Seq.from_config(config.model, src_vocab=len(src_tok), tgt_vocab=len(tgt_tok)).to(device)
    optimizer = make_optimizer(model, config.train)
    wait = sync(device)

    rates: list[float] = []
    tokens, start = 0, 0.0
    for i, indices in enumerate(batches[: 10 + args.steps]):
        if i == 10 or (i > 10 and (i - 10) % args.window == 0):
            wait()
            if i > 10:
                rates.append(tokens / (time.perf_counter() - start))
            tokens, start = 0, time.perf_counter()
        batch = collate(indices, src, tgt, device)
        train_step(model, optimizer, batch, config.train)
        tokens += batch.tgt_tokens
    wait()
    if tokens and len(batches) >= 10 + args.steps:
        rates.append(tokens / (time.perf_counter() - start))  # the last window
    timed = batches[10 : 10 + args.steps]
    flops_per_token = training_flops_per_token(model, timed[:: max(1, len(timed) // 20)], src, tgt, config)
    dtype = torch.bfloat16 if config.train.precision == "bf16" else torch.float32
    peak = matmul_peak(dtype=dtype, device=device)
    achieved = statistics.median(rates) * flops_per_token
    print(describe())
    print(
        f"model: {model.num_parameters():,} parameters ({config.model.cell}, emb {config.model.emb_size}, "
        f"encoder {config.model.enc_hidden}x2, decoder {config.model.dec_hidden}), batches of "
        f"{config.train.batch_tokens} target tokens, precision {config.train.precision}"
    )
    print(
        f"training: {statistics.median(rates):.0f} target tokens/s (median of {len(rates)} windows of "
        f"{args.window} steps; min {min(rates):.0f}, max {max(rates):.0f})"
    )
    print(
        f"compute: {flops_per_token / 1e6:.1f} MFLOP per target token (forward + backward matrix products), so "
        f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.0%} of this machine's {config.train.precision} matmul "
        f"peak ({peak / 1e9:.1f} GFLOP/s, median torch.mm of 4096x4096 matrices)"
    )


def training_flops_per_token(
    model: Seq2Seq, batches: list[list[int]], src: list[list[int]], tgt: list[list[int]], config: Config
) -> float:
    """Floating-point operations of the matrix products of training steps on `batches` (a spread sample of
    the timed ones: padding varies between batches), per target token. Counted on a CPU copy in fp32, where
    the encoder's recurrence is unrolled into products the counter knows: on CUDA it runs as cuDNN's GRU,
    which FlopCounterMode counts as nothing (about 30% of the total)."""
    model = copy.deepcopy(model).cpu()
    train = dataclasses.replace(config.train, precision="fp32")  # the same products, whatever their dtype
    optimizer = make_optimizer(model, train)
    flops, tokens = 0, 0
    for indices in batches:
        batch = collate(indices, src, tgt, torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            train_step(model, optimizer, batch, train)
        flops += counter.get_total_flops()
        tokens += batch.tgt_tokens
    return flops / tokens


if __name__ == "__main__":
    main()

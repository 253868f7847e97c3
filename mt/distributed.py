"""Data parallelism under `torchrun`: which rank this process is, the process group, and the few
collectives that training and sharded translation need (PyTorch DDP: Li et al. 2020, "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training").

`torchrun` starts one process per GPU (or per CPU worker) and tells each its place in the environment
(RANK, WORLD_SIZE, LOCAL_RANK). A process started any other way is rank 0 of a world of 1, and every
method here is then a no-op: the single-process path runs no distributed code at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


class RanksDivergedError(RuntimeError):
    """Ranks that must hold the same state do not: a bug, or a source of randomness not shared."""


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process among all of the job's; rank 0 writes checkpoints, logs and outputs
    size: int = 1  # processes in the job; 1 is a plain single-process run
    local_rank: int = 0  # this process among those on its machine: the GPU it uses

    @classmethod
    def from_env(cls) -> World:
        """This process's place as `torchrun` sets it; rank 0 of 1 without it."""
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def join(self, device: torch.device) -> torch.device:
        """Join the job's process group (NCCL between GPUs, gloo between CPU processes); returns this
        rank's device: for CUDA, the GPU of its local rank."""
        if self.size == 1:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """What training steps call: in a job of several ranks, `model` wrapped in DDP, which starts every
        rank from rank 0's weights and averages the gradients over ranks during backward."""
        if self.size == 1:
            return model
        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every rank (any picklable value)."""
        if self.size == 1:
            return value
        objects = [value]
        dist.broadcast_object_list(objects, src=0)
        return objects[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of `values` over the ranks, on every rank."""
        if self.size == 1:
            return values
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        total = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return [float(x) for x in total.tolist()]

    def check_same(self, digest: str, what: str) -> None:
        """Raise RanksDivergedError on every rank unless all ranks pass the same `digest` of `what`."""
        if self.size == 1:
            return
        digests: list[str] = [""] * self.size
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
            raise RanksDivergedError(f"the {what} differ between ranks: ranks {differing} do not match rank 0")

    def shard(self, items: list[T]) -> list[T]:
        """This rank's share of `items`: every size-th item, from the rank-th."""
        return items[self.rank :: self.size]

    def gather_shards(self, shard: list[T]) -> list[T]:
        """On rank 0, every rank's `shard` (as `shard()` cut them) put back in the original order; [] on
        the other ranks."""
        if self.size == 1:
            return shard
        shards: list[list[T]] | None = [[] for _ in range(self.size)] if self.is_main else None
        dist.gather_object(shard, shards, dst=0)
        if shards is None:
            return []
        merged: list[T] = []
        for position in range(max(len(s) for s in shards)):  # shard r holds items r, r + size, r + 2 size...
            merged.extend(s[position] for s in shards if position < len(s))
        return merged


def leave(*, completed: bool) -> None:
    """Leave the process group, if this process joined one.

    After a command that `completed` on this rank, wait at a barrier first: rank 0 may still be writing
    a checkpoint or an output while the others are done, and a rank that tears the group down under a
    peer aborts the whole job. After an error, leave the group to die with the process: the peers may
    never reach a barrier, and torchrun stops them once one rank has failed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if completed:
        dist.barrier()
        dist.destroy_process_group()

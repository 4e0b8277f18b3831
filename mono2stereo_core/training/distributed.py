"""DDP plumbing for ``torchrun``: process-group setup from the environment and a resumable sampler.

``torchrun --nproc_per_node=N training/pretrain.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and ``MASTER_ADDR/PORT``; without them the trainer runs as a single process. The backend is NCCL on
CUDA and gloo on CPU (NCCL has no CPU transport).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(*, prefer_cuda: bool = True) -> DistributedContext:
    """Joins the process group ``torchrun`` describes in the environment (or none when run directly)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(flag: bool, context: DistributedContext) -> bool:
    """True on every rank if any rank raised ``flag`` (a stop signal reaches one process first)."""
    if not context.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def average_scalar(value: float, context: DistributedContext) -> float:
    if not context.enabled:
        return value
    tensor = torch.tensor([float(value)], device=context.device, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item() / context.world_size)


class ResumableDistributedSampler(Sampler[int]):
    """Per-epoch seeded permutation, sharded across ranks, that can start mid-epoch.

    Like ``torch.utils.data.DistributedSampler`` (same ``set_epoch`` contract, index ``rank::world_size``
    of a padded permutation) plus ``start_at(k)``: skip the first ``k`` indices of this rank's shard
    without loading them, which is what an exact resume needs. The permutation depends only on
    ``(seed, epoch)`` through numpy's PCG64, never on global RNG state.
    """

    def __init__(self, length: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if length <= 0:
            raise ValueError(f"sampler needs a non-empty dataset, instead got length {length}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), instead got {rank}")
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0
        self.per_rank = -(-length // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, position: int) -> None:
        self.start = max(0, int(position))

    def indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        padded = np.resize(order, self.per_rank * self.world_size)  # repeat head so all ranks get equal work
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :].tolist())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def broadcast_buffers(module: torch.nn.Module, context: DistributedContext) -> None:
    """Copies rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP averages gradients, so parameters stay identical, but each rank updates its BatchNorm running
    statistics from its own shard in the last forward pass; after this call all ranks hold rank 0's
    model exactly (the one the checkpoints contain).
    """
    if not context.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)

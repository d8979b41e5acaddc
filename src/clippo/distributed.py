"""Data-parallel training on ``torch.distributed``, decentralized as in DD-PPO (Wijmans et al., 2020).

Every process (rank) runs its own envs and its own copy of the model; after each minibatch
backward pass the flat gradient is averaged across ranks with one all-reduce, so every rank takes
the same Adam step and holds the same parameters. Whatever drives a decision (advantage
normalization, the KL early stop, normalization statistics) is reduced across ranks first.

Launch with torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous:

    torchrun --nproc-per-node 2 -m clippo train CartPole-v1
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the job; ``World()`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main rank writes logs, metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: str) -> World:
    """Join the torchrun job described by the environment (a single process if there is none).

    The backend is NCCL when training on CUDA GPUs, gloo on CPUs.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10)
        )
    return World(rank=rank, size=size, local_rank=local_rank)


def all_reduce_mean_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Average ``tensor`` over the ranks, in place."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world.size)
    return tensor


def all_reduce_sum_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Overwrite ``tensor`` with rank 0's copy, in place."""
    if world.distributed:
        dist.broadcast(tensor, src=0)
    return tensor


def pooled_moments(groups: list[torch.Tensor], world: World) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean and (unbiased) std of each group of values, pooled with every rank's group of the
    same index, in one exchange."""
    sums = torch.stack([torch.stack([g.new_tensor(float(g.numel())), g.sum(), (g * g).sum()]) for g in groups])
    all_reduce_sum_(sums, world)
    count, total, squares = sums.unbind(dim=1)
    mean = total / count
    std = ((squares - count * mean * mean) / (count - 1).clamp(min=1.0)).clamp(min=0.0).sqrt()
    return list(zip(mean, std))


def pool_statistics(stats: list, flags: list[bool], world: World) -> list[bool]:
    """In one exchange: give every rank the pooled running statistics (``RunningMeanStd``s, each
    rank's weighted equally, the count growing as in a single process), and tell whether each
    flag is set on any rank."""
    parts = [np.asarray(flags, dtype=np.float64)]
    for s in stats:
        parts.append(np.concatenate([[s.count], s.count * s.mean.ravel(), s.count * (s.var.ravel() + s.mean.ravel() ** 2)]))
    flat = torch.from_numpy(np.concatenate(parts))
    all_reduce_sum_(flat, world)
    values = flat.numpy()
    offset = len(flags)
    for s in stats:
        n = s.mean.size
        total = values[offset]
        mean = values[offset + 1 : offset + 1 + n] / total
        var = values[offset + 1 + n : offset + 1 + 2 * n] / total - mean**2
        s.mean, s.var, s.count = mean.reshape(s.mean.shape), np.maximum(var, 0.0).reshape(s.var.shape), total / world.size
        offset += 1 + 2 * n
    return [bool(v > 0) for v in values[: len(flags)]]


def gather_lists(lists: tuple[list[float], ...], world: World) -> tuple[list[float], ...]:
    """Every rank's lists (e.g. finished episodes' returns and lengths), each concatenated in
    rank order, in one exchange."""
    if not world.distributed:
        return lists
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, lists)
    return tuple([v for part in gathered for v in part[i]] for i in range(len(lists)))


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()

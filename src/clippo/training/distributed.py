"""Data-parallel training on ``torch.distributed``, decentralized as in DD-PPO (Wijmans et al., 2020).

Every process (rank) runs its own envs and its own copy of the model; after each minibatch
backward pass the flat gradient is averaged across ranks with one all-reduce, so every rank takes
the same Adam step and holds the same parameters. Whatever drives a decision (advantage
normalization, the KL early stop, normalization statistics) is reduced across ranks first.

On one machine ``clippo train ... --nproc N`` starts the ranks itself (``launch_local``: a
private file store, nothing listening on the network); across machines, launch with torchrun,
which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous (its store accepts connections from
any host that reaches it: docs/trust.md):

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m clippo train Hopper-v5
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from clippo.core.errors import RankFailedError


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
    # torch deprecates all_gather_into_tensor (average_) in favour of a call older torch lacks: the
    # warning would be printed once per process, and --nproc's output should read as one process's
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    if not dist.is_initialized():
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
        # `clippo train --nproc N` (launch_local) meets in a file store in a private folder:
        # nothing listens on the network; under torchrun, its env:// rendezvous
        store_file = os.environ.get(STORE_FILE_VARIABLE)
        where: dict[str, Any] = (
            {"init_method": f"file://{store_file}", "rank": rank, "world_size": size} if store_file else {}
        )
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10), **where)
    return World(rank=rank, size=size, local_rank=local_rank)


#: the file store of a single-machine job started by ``launch_local``
STORE_FILE_VARIABLE = "CLIPPO_STORE_FILE"


def launch_local(nproc: int, argv: list[str]) -> int:
    """``clippo train ... --nproc N`` on one machine: N processes of ``python -m clippo ARGV`` with
    torchrun's RANK/LOCAL_RANK/WORLD_SIZE variables, meeting in a ``FileStore`` inside a private
    temporary folder (mode 0700) instead of torchrun's TCP store, which listens on every network
    interface without authentication (whatever host it is given). The ranks' own connections are
    kept on the loopback interface (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, unless set). As
    torchrun, the first rank to fail ends the others; SIGINT/SIGTERM are passed on to every rank,
    which then stop at an update boundary (rank 0 checkpoints) and are waited for. Returns rank 0's
    exit status, else the first non-zero one. Multi-machine jobs use torchrun itself."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="clippo-rendezvous-")  # (mkdtemp: mode 0700, this user only)
    loopback = "lo0" if sys.platform == "darwin" else "lo"
    env = {
        **os.environ,
        STORE_FILE_VARIABLE: os.path.join(folder, "store"),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
    }
    env.setdefault("GLOO_SOCKET_IFNAME", loopback)
    env.setdefault("NCCL_SOCKET_IFNAME", loopback)
    env.setdefault("OMP_NUM_THREADS", "1")
    processes: list[subprocess.Popen] = []
    interrupted = []

    def forward(signum, frame) -> None:
        interrupted.append(signum)  # the ranks stop at an update boundary: wait for them all
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for rank in range(nproc):
            # each rank in a process group of its own: a Ctrl-C reaches this process alone, which
            # passes it on once (two would end the ranks at once instead of at an update boundary)
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "clippo", *argv],
                    env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                    start_new_session=True,
                )
            )
        first_failed: int | None = None
        ended: set[int] = set()
        while True:
            codes = [process.poll() for process in processes]
            if all(code is not None for code in codes):
                break
            failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed and not interrupted:
                # a rank failed: the others find out in their next exchange (rank 0 then checkpoints
                # the last good update) or wait for it; those still running after a while are ended
                first_failed = failed[0]
                ended = _end_survivors(processes)
                break
            time.sleep(0.1)
        if first_failed is not None:
            for rank, process in enumerate(processes):  # one line per process, not their tracebacks
                print(_ending(rank, process, first_failed, rank in ended), file=sys.stderr, flush=True)
        # rank 0's status (it writes the checkpoints and says what happened), else the first failure;
        # a rank ended by a signal counts as 128 + its number, as a shell reports it
        ended_codes = (
            process.returncode if process.returncode is not None else process.wait() for process in processes
        )
        codes = [128 - code if code < 0 else code for code in ended_codes]
        return codes[0] or next((code for code in codes if code), 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def exchange(world: World, what: str) -> Iterator[None]:
    """A collective exchange: a rank that ended or failed (its connection closed, the backend's
    error) is one ``RankFailedError`` naming this rank, not the backend's traceback."""
    try:
        yield
    except RuntimeError as exc:  # (gloo and NCCL raise RuntimeError subclasses: DistBackendError, ...)
        raise RankFailedError(
            f"rank {world.rank}: the {what} exchange failed: another process of the {world.size}-process job ended "
            "or failed"
        ) from exc


#: seconds the other ranks of a local job get to end by themselves after one fails, then to stop after SIGTERM
SURVIVOR_WAIT = (15.0, 30.0)


def _end_survivors(processes: list[subprocess.Popen]) -> set[int]:
    """After a rank failed: wait for the others to end by themselves (a closed connection fails
    their next exchange at once), then SIGTERM them (they stop within their grace period), then
    SIGKILL. Returns the ranks this ended."""
    ended: set[int] = set()
    for signal_them, wait in ((False, SURVIVOR_WAIT[0]), (True, SURVIVOR_WAIT[1]), (None, 10.0)):
        deadline = time.monotonic() + wait
        for rank, process in enumerate(processes):
            if process.poll() is None and signal_them is not False:
                ended.add(rank)
                process.terminate() if signal_them else process.kill()
        for process in processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        if all(process.poll() is not None for process in processes):
            break
    return ended


def _ending(rank: int, process: subprocess.Popen, first_failed: int, ended: bool) -> str:
    """How one rank of a failed local job ended, in one line."""
    code = process.returncode
    if code is None:
        how = "did not end"
    elif code < 0:
        how = f"was ended by {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"signal {-code}"
    else:
        how = "exited normally" if code == 0 else f"exited with status {code}"
    why = " (the first to fail)" if rank == first_failed else f" (ended by clippo after rank {first_failed} failed)"
    return f"clippo: rank {rank} (pid {process.pid}) {how}{why if rank == first_failed or ended else ''}"


#: up to this many ranks, gloo averages by all-gather plus a local sum (see ``all_reduce_mean_``)
GATHER_MAX_RANKS = 8


def all_reduce_mean_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Average a contiguous ``tensor`` over the ranks, in place.

    On gloo (CPUs) with a few ranks, as an all-gather of every rank's copy and a sum in rank
    order: one exchange instead of the ring all-reduce's two, about half the latency for
    PPO-sized gradients (docs/fast-path.md), and every
    rank adds the same rows in the same order, so all hold identical results. The gathered copy
    grows with the number of ranks, so beyond ``GATHER_MAX_RANKS`` (and on NCCL) it is the
    all-reduce.
    """
    if not world.distributed:
        return tensor
    with exchange(world, "gradient"):
        if world.size <= GATHER_MAX_RANKS and dist.get_backend() == "gloo":
            flat = tensor.view(-1)
            gathered = torch.empty(world.size * flat.numel(), dtype=flat.dtype, device=flat.device)
            dist.all_gather_into_tensor(gathered, flat)
            torch.sum(gathered.view(world.size, -1), 0, out=flat)
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.div_(world.size)


def broadcast_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Overwrite ``tensor`` with rank 0's copy, in place."""
    if world.distributed:
        with exchange(world, "broadcast"):
            dist.broadcast(tensor, src=0)
    return tensor


def all_gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj`` (any picklable value), in rank order, in one exchange."""
    if not world.distributed:
        return [obj]
    gathered: list = [None] * world.size
    with exchange(world, "after-rollout"):
        dist.all_gather_object(gathered, obj)
    return gathered


def statistics_sums(stats: list) -> list[np.ndarray]:
    """A rank's share of pooled ``RunningMeanStd`` statistics: count, count * mean and
    count * E[x^2] of each, flat, in float64."""
    return [
        np.concatenate([[s.count], s.count * s.mean.ravel(), s.count * (s.var.ravel() + s.mean.ravel() ** 2)])
        for s in stats
    ]


def pool_statistics(stats: list, shares: list[list[np.ndarray]], world_size: int) -> None:
    """Set each ``RunningMeanStd`` in ``stats`` to the pool of every rank's ``statistics_sums``
    (``shares``, in rank order, so every rank adds them up identically). Each rank is weighted
    equally; the count grows as it would in a single process."""
    for i, s in enumerate(stats):
        total = sum(share[i] for share in shares)
        assert isinstance(total, np.ndarray)  # (a share per rank, at least one)
        n = s.mean.size
        mean = total[1 : 1 + n] / total[0]
        var = total[1 + n :] / total[0] - mean**2
        s.mean, s.var, s.count = (
            mean.reshape(s.mean.shape),
            np.maximum(var, 0.0).reshape(s.var.shape),
            total[0] / world_size,
        )


def moment_sums(groups: list[np.ndarray]) -> np.ndarray:
    """Count, sum and sum of squares of each array: shape (G, 3), float64."""
    groups = [g.astype(np.float64) for g in groups]
    return np.array([[len(g), g.sum(), np.square(g).sum()] for g in groups]).reshape(-1, 3)


def pooled_moments(shares: list[np.ndarray]) -> list[tuple[float, float]]:
    """Mean and (unbiased) std of each group, pooled over every rank's ``group_sums`` (rank order)."""
    summed = sum(shares)
    assert isinstance(summed, np.ndarray)  # (a share per rank, at least one)
    count, total, squares = summed.T
    mean = total / count
    std = np.sqrt(np.maximum((squares - count * mean * mean) / np.maximum(count - 1, 1), 0.0))
    return list(zip(mean.tolist(), std.tolist(), strict=False))


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # (a job whose other ranks already ended)
            dist.destroy_process_group()

"""Checkpoints: tensors and plain data only, written atomically, loaded with ``weights_only=True``.

``weights_only`` loading cannot run code hidden in a pickle, so a checkpoint from anyone is safe
to open. Spaces are stored as plain descriptions for the same reason.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from clippo.core.errors import CheckpointError, RunDirInUseError, first_line

FORMAT = "clippo-checkpoint"
FORMAT_VERSION = 2
#: Versions this clippo reads: 1 is the MLP-only layout, whose parameter names it renames on load.
READABLE_VERSIONS = (1, 2)
FINAL_NAME = "agent.pt"
CHECKPOINT_DIR = "checkpoints"


def describe_space(space: spaces.Space) -> str:
    """A one-line description of a space (``str(space)`` spans lines for wide Box bounds)."""
    if isinstance(space, spaces.Box):
        return f"Box(shape={space.shape}, dtype={space.dtype})"
    return " ".join(str(space).split())


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": torch.as_tensor(space.nvec), "start": torch.as_tensor(space.start)}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": torch.from_numpy(np.array(space.low)),
            "high": torch.from_numpy(np.array(space.high)),
            "dtype": str(space.dtype),
        }
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": torch.as_tensor(np.array(space.n)).reshape(-1).tolist()}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "keys": list(space.spaces), "spaces": [space_to_dict(s) for s in space.spaces.values()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_dict(s) for s in space.spaces]}
    raise CheckpointError(f"space {space} cannot be stored in a checkpoint")


def space_from_dict(data: dict[str, Any]) -> spaces.Space:
    kind = data.get("type")
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data["start"])
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(data["nvec"].numpy(), start=data["start"].numpy())
    if kind == "Box":
        return spaces.Box(data["low"].numpy(), data["high"].numpy(), dtype=np.dtype(data["dtype"]))
    if kind == "MultiBinary":
        n = data["n"]
        return spaces.MultiBinary(n[0] if len(n) == 1 else n)
    if kind == "Dict":
        return spaces.Dict({key: space_from_dict(sub) for key, sub in zip(data["keys"], data["spaces"], strict=False)})
    if kind == "Tuple":
        return spaces.Tuple([space_from_dict(sub) for sub in data["spaces"]])
    raise CheckpointError(f"unknown space type {kind!r} in checkpoint")


def write_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any instant leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's final checkpoint (else its newest periodic one)."""
    path = Path(path)
    if path.is_dir():
        if (path / FINAL_NAME).is_file():
            return path / FINAL_NAME
        periodic = sorted((path / CHECKPOINT_DIR).glob("step_*.pt"))
        if periodic:
            return periodic[-1]
        raise CheckpointError(
            f"no checkpoint in run directory {str(path)!r} (expected {FINAL_NAME} or {CHECKPOINT_DIR}/)"
        )
    if not path.exists():
        raise CheckpointError(f"no such checkpoint file or run directory: {str(path)!r}")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a clippo checkpoint; one-line CheckpointError for anything else."""
    path = resolve_checkpoint_path(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write: a foreign file, reported below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next(
            (line for line in reason if "Unsupported" in line or "global" in line.lower()), reason[0] if reason else ""
        )
        raise CheckpointError(
            f"refusing to load {str(path)!r}: it holds objects other than tensors and plain data, "
            f"and unpickling them could run code ({detail.strip()[:160]})"
        ) from None
    except Exception as exc:  # torch.load fails in many ways on a damaged or foreign file
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc.strerror}") from None
        first = first_line(exc)
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (truncated or corrupted?): {first[:160]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a clippo checkpoint")
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {payload.get('format_version')!r}; "
            f"this clippo reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return payload


def periodic_checkpoint_path(run_dir: Path, global_step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step_{global_step:012d}.pt"


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints, and temporary files that a killed
    process left behind (only rank 0 writes checkpoints, so no other write is under way)."""
    folder = run_dir / CHECKPOINT_DIR
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    for stale in folder.glob(".step_*.tmp"):
        stale.unlink(missing_ok=True)


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint of a run directory with the most steps, and its payload.

    Unreadable candidates are passed over (the atomic writes make that rare); only if none is
    readable is it an error.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no such run directory: {str(run_dir)!r}")
    candidates = sorted((run_dir / CHECKPOINT_DIR).glob("step_*.pt"))
    if (run_dir / FINAL_NAME).is_file():
        candidates.append(run_dir / FINAL_NAME)
    best: tuple[Path, dict[str, Any]] | None = None
    errors = []
    for path in candidates:
        try:
            payload = read_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if best is None or payload["global_step"] > best[1]["global_step"]:
            best = (path, payload)
    if best is None:
        reason = f": {errors[-1]}" if errors else f" (expected {FINAL_NAME} or {CHECKPOINT_DIR}/step_*.pt)"
        raise CheckpointError(f"no readable checkpoint in run directory {str(run_dir)!r}{reason}")
    return best


#: the file in a run directory that the training process holds locked (its pid inside)
LOCK_NAME = ".lock"
_HELD_LOCKS: dict[Path, list[int]] = {}  # run dir -> [file descriptor, nesting depth], this process's


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path, create: bool = False):
    """Hold ``run_dir`` for this process while it trains or resumes there: a second process on the
    same directory (a ``clippo resume`` of a run still training, say) gets a one-line
    ``RunDirInUseError`` instead of truncating and interleaving the first one's metrics and
    checkpoints. An advisory ``flock``, so the operating system releases it however the process
    ends (no stale locks after a kill -9); re-entrant within a process. Where ``fcntl`` does not
    exist (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    key = Path(run_dir).resolve()
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key][1] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key][1] -= 1
        return
    if create:
        key.mkdir(parents=True, exist_ok=True)
    elif not key.is_dir():  # (nothing to protect; the caller reports the missing run)
        yield
        return
    fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirInUseError(
            f"run directory {str(run_dir)!r} is in use by another clippo process (pid {holder}): "
            "wait for it to end, or choose another run directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_LOCKS[key] = [fd, 1]
    try:
        yield
    finally:
        _HELD_LOCKS[key][1] -= 1
        if not _HELD_LOCKS[key][1]:
            del _HELD_LOCKS[key]
            os.close(fd)  # (releases the lock)

"""Checkpoints: tensors and plain data only, written atomically, loaded with ``weights_only=True``.

``weights_only`` loading cannot run code hidden in a pickle, so a checkpoint from anyone is safe
to open. Spaces are stored as plain descriptions for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from clippo.core import safety
from clippo.core.errors import CheckpointError, CheckpointWriteError, RunDirInUseError, first_line

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


#: limits on a space read from a checkpoint (it is data from a file: clippo.core.safety)
MAX_SPACE_DEPTH = 4
MAX_SPACE_FIELDS = 256
MAX_CATEGORIES = 1 << 24
#: the dtypes a Box may have: numbers and booleans, nothing that holds objects
BOX_DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)


def space_from_dict(data: dict[str, Any], _depth: int = 0) -> spaces.Space:
    """The space a checkpoint describes, each part checked as data first: its type, integer sizes
    (at most ``MAX_CATEGORIES`` categories), Box bounds as real tensors of one shape and a numeric
    dtype, Dict keys as plain identifiers; nesting at most ``MAX_SPACE_DEPTH`` deep."""
    if not isinstance(data, dict):
        raise CheckpointError(f"a space in the checkpoint is a {type(data).__name__}, not a description")
    if _depth > MAX_SPACE_DEPTH:
        raise CheckpointError(f"the checkpoint's spaces nest deeper than {MAX_SPACE_DEPTH}")
    kind = data.get("type")
    reader = _SPACE_READERS.get(kind) if isinstance(kind, str) else None
    if reader is None:
        raise CheckpointError(f"unknown space type {safety.clean(kind)!r} in checkpoint")
    return reader(data, _depth)


def _discrete_space(data: dict[str, Any], depth: int) -> spaces.Space:
    return spaces.Discrete(_count(data["n"]), start=_integer(data["start"]))


def _multi_discrete_space(data: dict[str, Any], depth: int) -> spaces.Space:
    nvec, start = _int_tensor(data["nvec"], "nvec"), _int_tensor(data["start"], "start")
    if nvec.shape != start.shape or (nvec < 1).any() or (nvec > MAX_CATEGORIES).any():
        raise CheckpointError(
            f"MultiDiscrete nvec/start in the checkpoint are invalid (sizes 1..{MAX_CATEGORIES}, one shape)"
        )
    return spaces.MultiDiscrete(nvec.numpy(), start=start.numpy())


def _box_space(data: dict[str, Any], depth: int) -> spaces.Space:
    low, high, dtype = data["low"], data["high"], data["dtype"]
    if not (isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor)) or low.shape != high.shape:
        raise CheckpointError("a Box space in the checkpoint needs low and high tensors of one shape")
    if dtype not in BOX_DTYPES:
        raise CheckpointError(
            f"a Box space in the checkpoint has dtype {safety.clean(dtype)!r}: allowed {', '.join(BOX_DTYPES)}"
        )
    return spaces.Box(low.numpy(), high.numpy(), dtype=np.dtype(dtype))


def _multi_binary_space(data: dict[str, Any], depth: int) -> spaces.Space:
    n = data["n"]
    if not isinstance(n, list) or not 1 <= len(n) <= 8:
        raise CheckpointError("a MultiBinary space in the checkpoint needs a list of 1 to 8 sizes")
    n = [_count(v) for v in n]
    if int(np.prod(n)) > MAX_CATEGORIES:
        raise CheckpointError(f"a MultiBinary space in the checkpoint has more than {MAX_CATEGORIES} entries")
    return spaces.MultiBinary(n[0] if len(n) == 1 else n)


def _dict_space(data: dict[str, Any], depth: int) -> spaces.Space:
    keys, subs = data["keys"], data["spaces"]
    if (
        not isinstance(keys, list)
        or not isinstance(subs, list)
        or len(keys) != len(subs)
        or len(keys) > MAX_SPACE_FIELDS
        or len(set(map(str, keys))) != len(keys)
    ):
        raise CheckpointError(
            f"a Dict space in the checkpoint needs up to {MAX_SPACE_FIELDS} distinct keys, one per space"
        )
    try:
        keys = [safety.check_key(key, "Dict space key") for key in keys]
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint's observation or action space: {exc}") from None
    return spaces.Dict({key: space_from_dict(sub, depth + 1) for key, sub in zip(keys, subs, strict=True)})


def _tuple_space(data: dict[str, Any], depth: int) -> spaces.Space:
    subs = data["spaces"]
    if not isinstance(subs, list) or len(subs) > MAX_SPACE_FIELDS:
        raise CheckpointError(f"a Tuple space in the checkpoint needs a list of up to {MAX_SPACE_FIELDS} spaces")
    return spaces.Tuple([space_from_dict(sub, depth + 1) for sub in subs])


#: how each space type written by ``space_to_dict`` is read back
_SPACE_READERS: dict[str, Callable[[dict[str, Any], int], spaces.Space]] = {
    "Discrete": _discrete_space,
    "MultiDiscrete": _multi_discrete_space,
    "Box": _box_space,
    "MultiBinary": _multi_binary_space,
    "Dict": _dict_space,
    "Tuple": _tuple_space,
}


def _integer(value: Any) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**62:
        raise CheckpointError(f"a space size in the checkpoint is {safety.clean(value)}, not an integer")
    return value


def _count(value: Any) -> int:
    value = _integer(value)
    if not 1 <= value <= MAX_CATEGORIES:
        raise CheckpointError(f"a space size in the checkpoint is {value}: allowed 1..{MAX_CATEGORIES}")
    return value


def _int_tensor(value: Any, name: str) -> torch.Tensor:
    if (
        not isinstance(value, torch.Tensor)
        or value.is_floating_point()
        or value.is_complex()
        or value.dim() > 2
        or value.numel() > MAX_SPACE_FIELDS
    ):
        raise CheckpointError(f"a space's {name} in the checkpoint must be a small integer tensor")
    return value


_writes = [0]  # checkpoint writes under way in this process (a forced exit waits for them)
_writes_lock = threading.Lock()


def writes_in_progress() -> int:
    """How many checkpoint writes are under way in this process (``write_atomic``)."""
    return _writes[0]


def write_failure(path: Path, exc: BaseException, what: str = "checkpoint") -> CheckpointWriteError:
    """A one-line error for a checkpoint (or another run file: ``what``) that could not be
    written: torch reports a full disk as a RuntimeError ("file write failed"), the operating
    system as ENOSPC."""
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    with contextlib.suppress(OSError):  # (torch's own writer names no errno: ask the file system)
        full = full or shutil.disk_usage(path.parent).free < FULL_DISK_BYTES
    reason = "no space left on device" if full else safety.clean(first_line(exc), 160)
    error = CheckpointWriteError(
        f"cannot write {what} {path}: {reason}; the checkpoints written before it are intact"
        + (" (free some space, then resume)" if full else "")
    )
    error.errno = errno.ENOSPC if full else getattr(exc, "errno", None) or errno.EIO
    return error


#: below this much free space a failed write is reported as a full disk
FULL_DISK_BYTES = 1 << 20


def write_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any instant leaves either the old file or the new one, never a partial file; a
    failed write (a full disk) is one ``CheckpointWriteError`` and leaves the old files alone.
    """
    with _writes_lock:
        _writes[0] += 1
    try:
        return _write_atomic(payload, Path(path))
    finally:
        with _writes_lock:
            _writes[0] -= 1


def _write_atomic(payload: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates exclusively and os.replace swaps a directory entry: neither follows a link;
    # a link where the checkpoint goes (or a linked checkpoints folder) is refused outright
    safety.refuse_symlink(path)
    if path.parent.name == CHECKPOINT_DIR:
        safety.refuse_symlink(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise write_failure(path, exc) from exc
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
    check_foreign(path)
    check_archive(path)
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


#: what clippo checkpoints are, for the message about a file that is not one
_WHAT_CHECKPOINTS_ARE = "a clippo checkpoint is a run directory's agent.pt, best.pt or checkpoints/*.pt"


def check_foreign(path: Path) -> None:
    """A one-line CheckpointError for a file that is plainly not a checkpoint (an ONNX graph, a
    YAML config, an empty file): ``torch.save`` writes a zip archive (a pickle in old versions),
    and anything else would otherwise be reported as a pickle that could run code."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return  # (torch.load reports it)
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return
    kinds = {
        ".onnx": "an ONNX graph (clippo export writes it; onnxruntime runs it)",
        ".yaml": "a YAML file (a config?)",
        ".yml": "a YAML file (a config?)",
        ".json": "a JSON file",
        ".csv": "a CSV file (metrics?)",
        ".zip": "a zip archive (a Stable-Baselines3 model?)",
    }
    kind = "an empty file" if not head else kinds.get(path.suffix.lower(), "another kind of file")
    raise CheckpointError(f"{str(path)!r} is not a clippo checkpoint: it is {kind}; {_WHAT_CHECKPOINTS_ARE}")


#: the entries torch.save writes into its zip archive (under one top folder)
_ARCHIVE_ENTRY = re.compile(
    r"[^/]{1,100}/(data\.pkl|version|byteorder|\.format_version|\.storage_alignment|data/\d{1,9}|"
    r"\.data/version|\.data/serialization_id)"
)


def check_archive(path: Path) -> None:
    """Refuse a zip checkpoint with compressed entries or entries torch.save never writes, before
    torch reads it: torch stores tensors uncompressed, so every tensor is as large in the file as
    in memory, and a file a few hundred KB long cannot unfold into gigabytes (a deflated zero
    tensor would). Files that are not zip archives go on to torch.load, which refuses them."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint (truncated or corrupted?): {first_line(exc)[:160]}"
        ) from None
    size = path.stat().st_size
    total = 0
    prefixes = set()
    for entry in entries:
        name = safety.clean(entry.filename, 60)
        if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
            raise CheckpointError(
                f"refusing to load {str(path)!r}: its entry {name!r} is compressed (clippo and torch.save store "
                "tensors uncompressed)"
            )
        if not _ARCHIVE_ENTRY.fullmatch(entry.filename):
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it holds an entry torch.save does not write ({name!r})"
            )
        prefixes.add(entry.filename.split("/", 1)[0])
        total += entry.file_size
    if len(prefixes) > 1 or total > size:
        raise CheckpointError(
            f"refusing to load {str(path)!r}: its zip entries do not fit the file (several archives, or sizes larger "
            "than the file)"
        )


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


def newest_checkpoint_path(run_dir: str | Path) -> Path | None:
    """The newest checkpoint file of a run directory by name (its final one, else the periodic
    one of the most steps), or None; not read (for messages)."""
    run_dir = Path(run_dir)
    if (run_dir / FINAL_NAME).is_file():
        return run_dir / FINAL_NAME
    periodic = sorted((run_dir / CHECKPOINT_DIR).glob("step_*.pt"))
    return periodic[-1] if periodic else None


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
    # Never through a link, never another file's hard link, never truncated: the pid is written
    # in place, space-padded to a fixed width (clippo.core.safety.open_lock).
    fd = safety.open_lock(key / LOCK_NAME)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = safety.clean(os.pread(fd, safety.LOCK_SIZE, 0).decode(errors="replace").strip(), 20) or "unknown"
        os.close(fd)
        raise RunDirInUseError(
            f"run directory {str(run_dir)!r} is in use by another clippo process (pid {holder}): "
            "wait for it to end, or choose another run directory"
        ) from None
    os.pwrite(fd, str(os.getpid()).ljust(safety.LOCK_SIZE).encode(), 0)
    _HELD_LOCKS[key] = [fd, 1]
    try:
        yield
    finally:
        _HELD_LOCKS[key][1] -= 1
        if not _HELD_LOCKS[key][1]:
            del _HELD_LOCKS[key]
            os.close(fd)  # (releases the lock)

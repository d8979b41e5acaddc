"""Exact resume of a multi-agent run: the env copies and what the runner carries between
rollouts, saved in a checkpoint as tensors and plain data, put back on resume.

What a checkpoint holds here is *data*, never pickled objects (``clippo.core.safety``): numbers,
strings, arrays (as tensors), numpy RNG states, and the lists, dicts and sets of those. An env's
state is read from the plain attributes of the env, its wrappers and the objects they hold (a
board, an agent selector, MPE's world and entities), and only for envs whose classes come from
``RESTORABLE_MODULES``, whose whole state lives there (pure Python and numpy; a physics engine or a
process keeps state out of reach). Restoring walks the objects of freshly made env copies and
sets attributes they already have, with values of the same kind and shape; nothing is looked up
by name or constructed from the file, and nothing is set unless all of it fits. Otherwise the
run resumes with freshly reset env copies, and ``restore_runner`` says why in one line.

What the runner carries: its per-copy bookkeeping (episode returns and lengths, games, seats,
opponents due to act), each adapter's open transitions and last observations, every group's
slot buffer (the row each agent carries into the next rollout, with its recurrent state), and
which pool snapshot each game in progress is played against (by its index in the pool; "random"
for the random player).
"""

from __future__ import annotations

import importlib.metadata
from collections import defaultdict
from typing import Any

import numpy as np

from clippo.core import safety
from clippo.envs import snapshots
from clippo.multiagent.selfplay import RANDOM

#: the modules of the env classes (and the objects they hold) whose state can be saved exactly
RESTORABLE_MODULES = (
    "clippo.multiagent.toy_envs",
    "pettingzoo.utils",  # the AEC wrappers (order enforcing, bounds, illegal moves) and the agent selector
    "pettingzoo.classic.tictactoe",
    "pettingzoo.classic.connect_four",
    "mpe2",
)
#: objects nested deeper than this inside an env are not walked (and the env is not restorable)
MAX_DEPTH = 8
#: what a runner state holds (bumped when its layout changes: an older one is not restored)
RUNNER_FORMAT = 1
#: a game in progress against the random player, in the saved opponents
RANDOM_NAME = "random"
#: runner attributes that are rebuilt, not restored: the parts it was made from, and the lookups
#: derived from them (the adapters, buffers and controllers are saved by their own rules)
_NOT_SAVED = frozenset({"adapters", "learners", "central", "selfplay", "makers", "group_of", "slots", "buffers",
                        "controllers", "finished"})  # fmt: skip
_BUFFER_NOT_SAVED = frozenset({"device", "distribution"})


class _Skip:
    """An attribute that is not state (configuration, an object clippo does not walk)."""


SKIP = _Skip()


class NotRestorable(ValueError):
    """State that cannot be saved exactly (an env of another kind, an object clippo does not walk)."""


def _walkable(value: Any) -> bool:
    return (
        hasattr(value, "__dict__")
        and not isinstance(value, type)
        and type(value).__module__.startswith(RESTORABLE_MODULES)
    )


def encode(value: Any, depth: int = 0) -> Any:
    """``value`` as plain data and tensors, or ``SKIP`` where it holds something else."""
    leaf = snapshots.encode_leaf(value)
    if leaf is not snapshots.NOT_LEAF:
        return leaf
    if depth >= MAX_DEPTH:
        return SKIP
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            return SKIP
        entries = {key: encode(item, depth + 1) for key, item in value.items()}
        return SKIP if any(item is SKIP for item in entries.values()) else {"dict": entries}
    if isinstance(value, (set, frozenset)):
        return {"set": sorted(value)} if all(isinstance(item, str) for item in value) else SKIP
    if isinstance(value, (list, tuple)):
        items = [encode(item, depth + 1) for item in value]
        if any(item is SKIP for item in items):
            return SKIP
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if _walkable(value):
        return {"object": encode_attributes(value, depth + 1)}
    return SKIP


def encode_attributes(obj: Any, depth: int = 0, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The attributes of ``obj`` that are state, encoded (the others, e.g. spaces, are left out)."""
    out: dict[str, Any] = {}
    skipped = []
    for name, value in vars(obj).items():
        if name in leave_out:
            continue
        encoded = encode(value, depth)
        if encoded is SKIP:
            skipped.append(name)
        else:
            out[name] = encoded
    out[SKIPPED_KEY] = skipped  # (kept as they are on restore, not removed)
    return out


def decode(value: Any, current: Any, updates: list) -> Any:
    """A saved value as the object it was, checked against ``current`` (what the fresh object
    holds there): raises ValueError where it does not fit. A saved object's attributes are not set
    here but added to ``updates`` (set by the caller once everything fits)."""
    if not isinstance(value, dict):
        return snapshots.decode_plain(value, current)
    kinds = [key for key in ("scalar", "ndarray", "rng", "dict", "set", "list", "tuple", "object") if key in value]
    if len(kinds) != 1 or len(value) != 1:
        raise ValueError("an unknown kind of value")
    kind = kinds[0]
    if kind in ("scalar", "ndarray"):
        return snapshots.decode_array(value[kind], kind, current)
    if kind == "rng":
        state = value["rng"]
        if not isinstance(state, dict):
            raise ValueError("an RNG state that is not a mapping")
        bit_generator = safety.bit_generator(state.get("bit_generator"))  # numpy's own only, never by name
        rng = np.random.Generator(bit_generator())
        rng.bit_generator.state = state
        return rng
    if kind == "object":  # only into the object the fresh env holds there, attribute by attribute
        if not _walkable(current):
            raise ValueError(f"saved object state where the env holds a {type(current).__name__}")
        decode_attributes(value["object"], current, updates)
        return current
    return _decode_container(value[kind], kind, current, updates)


def _decode_container(items: Any, kind: str, current: Any, updates: list) -> Any:
    """A saved set, dict, list or tuple (a dict keeps the fresh one's kind: a defaultdict stays one)."""
    if kind == "set":
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError("a set that is not of strings")
        if current is not None and not isinstance(current, (set, frozenset)):
            raise ValueError(f"a set where the env holds a {type(current).__name__}")
        return set(items)
    if kind == "dict":
        if not isinstance(items, dict) or not all(isinstance(key, str) for key in items):
            raise ValueError("a mapping that is not keyed by strings")
        if current is not None and not isinstance(current, dict):
            raise ValueError(f"a mapping where the env holds a {type(current).__name__}")
        out: dict = defaultdict(current.default_factory) if isinstance(current, defaultdict) else {}
        old = current if isinstance(current, dict) else {}
        for key, item in items.items():
            out[key] = decode(item, old.get(key), updates)
        return out
    if not isinstance(items, list):
        raise ValueError("a sequence that is not a list")
    if current is not None and not isinstance(current, (list, tuple)):
        raise ValueError(f"a sequence where the env holds a {type(current).__name__}")
    olds = list(current) if isinstance(current, (list, tuple)) and len(current) == len(items) else [None] * len(items)
    decoded = [decode(item, old, updates) for item, old in zip(items, olds, strict=True)]
    return tuple(decoded) if kind == "tuple" else decoded


#: an attribute the fresh object has and the saved one did not: removed
DELETE = object()
#: the names of an object's attributes that were not saved (not state, or not plain data)
SKIPPED_KEY = "__skipped__"


def decode_attributes(saved: Any, obj: Any, updates: list, leave_out: frozenset[str] = frozenset()) -> None:
    """Add ``(obj, name, value)`` to ``updates`` for each saved attribute, and ``(obj, name,
    DELETE)`` for state ``obj`` holds that the saved object did not. An attribute the fresh object
    lacks (an AEC env makes some on its first dead step) is taken only as plain data, under a
    plain name that shadows nothing of its class (no method, property or dunder)."""
    if not isinstance(saved, dict):
        raise ValueError("object state that is not a mapping")
    saved = dict(saved)
    skipped = saved.pop(SKIPPED_KEY, None)
    if not isinstance(skipped, list) or not all(isinstance(name, str) for name in skipped):
        raise ValueError("object state without the names it left out")
    attributes = vars(obj)
    for name, value in saved.items():
        if not isinstance(name, str) or name in leave_out:
            raise ValueError(f"the saved state names {safety.clean(name, 40)}, which is not state")
        if name not in attributes and (
            not name.isidentifier() or name.startswith("__") or hasattr(type(obj), name)
            or (isinstance(value, dict) and "object" in value)
        ):  # fmt: skip
            raise ValueError(
                f"the saved state names {safety.clean(name, 40)}, which {type(obj).__name__} does not have"
            )
        try:
            updates.append((obj, name, decode(value, attributes.get(name), updates)))
        except ValueError as exc:
            raise ValueError(f"{type(obj).__name__}.{safety.clean(name, 40)}: {exc}") from None
    for name, value in attributes.items():
        if name not in saved and name not in leave_out and name not in skipped and encode(value) is not SKIP:
            updates.append((obj, name, DELETE))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "unknown"


def _identity(runner: Any) -> dict[str, Any]:
    """What the env copies are: their classes, and the versions of the packages they come from."""
    envs = [adapter.env for adapter in runner.adapters]
    packages = sorted({"pettingzoo", *(type(env).__module__.split(".")[0] for env in envs)})
    return {
        "classes": [f"{type(env).__module__}.{type(env).__qualname__}" for env in envs],
        "versions": {package: _version(package) for package in packages},
    }


def runner_state(runner: Any) -> dict[str, Any] | None:
    """The runner's state between rollouts and its env copies', as plain data; None where it
    cannot be captured exactly (an env clippo does not walk, a game against a snapshot that has
    left the pool)."""
    try:
        adapters = []
        for adapter in runner.adapters:
            if not _walkable(adapter.env):
                return None
            adapters.append(encode_attributes(adapter))
            if "env" not in adapters[-1]:
                return None
        controllers = None
        if runner.selfplay is not None:
            pool = {id(snapshot): index for index, snapshot in enumerate(runner.selfplay.pool)}
            controllers = []
            for copy in runner.controllers:
                row: dict[str, int | str | None] = {}
                for agent, snapshot in copy.items():
                    if snapshot is RANDOM:
                        row[agent] = RANDOM_NAME
                        continue
                    if snapshot is not None and id(snapshot) not in pool:
                        return None
                    row[agent] = None if snapshot is None else pool[id(snapshot)]
                controllers.append(row)
        if runner.finished:
            return None
        return {
            "format": RUNNER_FORMAT,
            "identity": _identity(runner),
            "runner": encode_attributes(runner, leave_out=_NOT_SAVED),
            "adapters": adapters,
            "buffers": [encode_attributes(buffer, leave_out=_BUFFER_NOT_SAVED) for buffer in runner.buffers],
            "controllers": controllers,
        }
    except RecursionError:  # (an object graph with a cycle deeper than MAX_DEPTH cannot happen; kept safe)
        return None


def restore_runner(runner: Any, state: Any) -> str | None:
    """Put a runner just made (its env copies reset, nothing collected) back into a saved state.
    Returns None when done, else why not in words (then nothing changed)."""
    if not isinstance(state, dict) or state.get("format") != RUNNER_FORMAT:
        return (
            "the checkpoint holds no env state (only envs of clippo.multiagent.resume.RESTORABLE_MODULES, plain "
            "data, are saved)"
        )
    saved, now = state.get("identity"), _identity(runner)
    if not isinstance(saved, dict) or saved.get("classes") != now["classes"]:
        return "the env copies are of other classes than when the checkpoint was written"
    for package, version in now["versions"].items():
        old = saved.get("versions", {}).get(package) if isinstance(saved.get("versions"), dict) else None
        if old != version:
            return f"{package} is {version} now, {safety.clean(old, 40)} when the checkpoint was written"
    if not all(_walkable(adapter.env) for adapter in runner.adapters):
        return "these env copies' state cannot be captured"
    adapters, buffers = state.get("adapters"), state.get("buffers")
    if not isinstance(adapters, list) or len(adapters) != len(runner.adapters):
        return "the checkpoint's env state does not fit these env copies"
    if not isinstance(buffers, list) or len(buffers) != len(runner.buffers):
        return "the checkpoint's buffers do not fit these policy groups"
    updates: list = []
    try:
        decode_attributes(state.get("runner"), runner, updates, _NOT_SAVED)
        for saved_adapter, adapter in zip(adapters, runner.adapters, strict=True):
            decode_attributes(saved_adapter, adapter, updates)
        for saved_buffer, buffer in zip(buffers, runner.buffers, strict=True):
            decode_attributes(saved_buffer, buffer, updates, _BUFFER_NOT_SAVED)
        controllers = _controllers(runner, state.get("controllers"))
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        return f"the checkpoint's env state does not fit these env copies ({safety.clean(str(exc), 120)})"
    for obj, name, value in updates:
        if value is DELETE:
            delattr(obj, name)
        elif value is not getattr(obj, name, None):
            setattr(obj, name, value)
    if controllers is not None:
        runner.controllers = controllers
    return None


def _controllers(runner: Any, saved: Any) -> list[dict[str, Any]] | None:
    """The saved opponents of the games in progress, as the pool's snapshots."""
    if runner.selfplay is None:
        if saved is not None:
            raise ValueError("opponents saved for a run without self-play")
        return None
    pool = runner.selfplay.pool
    if not isinstance(saved, list) or len(saved) != len(runner.adapters):
        raise ValueError("the games in progress do not fit these env copies")
    out = []
    for row in saved:
        if not isinstance(row, dict) or not set(row) <= set(runner.selfplay.agents):
            raise ValueError("a game in progress with other players")
        copy: dict[str, Any] = {}
        for agent, index in row.items():
            if index == RANDOM_NAME:
                copy[agent] = RANDOM
                continue
            in_pool = isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(pool)
            if index is not None and not in_pool:
                raise ValueError(f"an opponent {safety.clean(index, 20)} that is not in the pool")
            copy[agent] = None if index is None else pool[index]
        out.append(copy)
    return out

"""Env snapshots: the dynamic state of a run's envs, saved in a checkpoint and restored on resume.

A snapshot holds dynamic state only. What the envs were built with (their ids and constructor
kwargs, every wrapper's settings such as a time limit, the physical constants, the package
versions) is their *identity*, recorded as the envs are made, before their first reset
(``env_identity``). The snapshot keeps the attributes that differ from it, and is restored only
into envs of the same identity: envs built differently (``PPO.from_run(d, env=harder)`` with another
gravity or time limit, an upgraded env package) restart fresh, and ``restore_env_state`` says why
in one line, instead of silently taking the old settings back.

Only envs whose state is plain Python and numpy data (Gymnasium's classic-control and toy-text
envs, clippo's toy envs) are captured; their attributes are encoded as tensors and plain values,
so a checkpoint stays loadable with ``torch.load(weights_only=True)``. A snapshot read back is data
from a file: it is restored only into attributes that already exist, with values of the same kind,
and RNG states only for numpy's own bit generators (``clippo.core.safety``).
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv

from clippo.core import safety

# An env's state can be saved safely (as tensors and plain data, no pickled objects) only when
# all of it lives in plain attributes: numbers, numpy arrays and numpy RNGs. That holds for
# Gymnasium's classic-control and toy-text envs (and CartPole's native vector env) and clippo's
# own toy tasks in a synchronous vector env; physics engines (MuJoCo, Box2D) and worker
# processes keep state out of reach, so those runs resume with freshly reset envs instead.
_SNAPSHOT_MODULES = ("gymnasium.envs.classic_control", "gymnasium.envs.toy_text", "clippo.envs.toy")


def restorable(env: gym.Env) -> bool:
    """Whether a checkpoint can hold the state of ``env`` (its class is one of ``_SNAPSHOT_MODULES``')."""
    return type(env.unwrapped).__module__.startswith(_SNAPSHOT_MODULES)


def _snapshot_objects(envs: VectorEnv) -> list[object] | None:
    """The objects whose plain attributes make up the whole state of ``envs``, or None."""
    if type(envs).__module__.startswith(_SNAPSHOT_MODULES):
        return [envs]
    if not isinstance(envs, gym.vector.SyncVectorEnv):
        return None
    objects: list[object] = [envs]
    for env in envs.envs:
        if not type(env.unwrapped).__module__.startswith(_SNAPSHOT_MODULES):
            return None
        while isinstance(env, gym.Wrapper):
            objects.append(env)
            env = env.env
        objects.append(env)
    return objects


#: what ``encode_leaf`` returns for a value that is not a number, string, array or RNG
NOT_LEAF = object()


def encode_leaf(value: Any) -> Any:
    """A number, string, None, numeric numpy array or scalar, or numpy RNG as checkpoint data
    (arrays as tensors, an RNG as its state), or ``NOT_LEAF`` for anything else."""
    # numpy scalars first: np.float64 is a subclass of float, but pickled as numpy's own type a
    # checkpoint no longer loads with weights_only=True (MountainCar keeps its state as a tuple
    # of them)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"scalar": torch.from_numpy(np.asarray(value).copy())}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return {"ndarray": torch.from_numpy(value.copy())}
    if isinstance(value, np.random.Generator):
        return {"rng": value.bit_generator.state}
    return NOT_LEAF


def decode_plain(value: Any, current: Any) -> Any:
    """A saved number, string or None, checked against ``current`` (what the object holds now)."""
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"a {type(value).__name__} is not plain data")
    if value is not None and current is not None:
        if isinstance(value, str) != isinstance(current, str) or not isinstance(
            current, (bool, int, float, str, np.generic)
        ):
            raise ValueError(f"a {type(value).__name__} where the env holds a {type(current).__name__}")
    return value


def decode_array(tensor: Any, kind: str, current: Any) -> Any:
    """A saved array (``kind`` "ndarray") or numpy scalar ("scalar"), checked against ``current``."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError("an array that is not a tensor")
    array = tensor.numpy().copy() if kind == "ndarray" else tensor.numpy()[()]
    if current is not None and not isinstance(current, (np.ndarray, np.generic, bool, int, float)):
        raise ValueError(f"an array where the env holds a {type(current).__name__}")
    if isinstance(current, np.ndarray) and (array.shape != current.shape or array.dtype != current.dtype):
        raise ValueError(f"an array of shape {array.shape} where the env holds {current.shape}")
    return array


def _encode(value):
    """Plain data for a checkpoint, or _SKIP for attributes that are configuration or objects."""
    leaf = encode_leaf(value)
    if leaf is not NOT_LEAF:
        return leaf
    if isinstance(value, (tuple, list)):
        items = [_encode(v) for v in value]
        if any(item is _SKIP for item in items):
            return _SKIP
        return {"tuple" if isinstance(value, tuple) else "list": items}
    return _SKIP


_SKIP = object()


def _decode(value, current):
    """A snapshot value as the object it was, checked against ``current`` (the attribute's value
    now): a checkpoint is data, so nothing it holds is looked up by name or made of another type.
    Raises ValueError when it does not fit."""
    if not isinstance(value, dict):
        return decode_plain(value, current)
    if "ndarray" in value or "scalar" in value:
        array_kind = "ndarray" if "ndarray" in value else "scalar"
        return decode_array(value[array_kind], array_kind, current)
    if "rng" in value:
        state = value["rng"]
        if not isinstance(state, dict):
            raise ValueError("an RNG state that is not a mapping")
        # numpy's own bit generators only: never getattr(np.random, name) on a name from a file
        kind = safety.bit_generator(state.get("bit_generator"))
        if not isinstance(current, np.random.Generator) or type(current.bit_generator) is not kind:
            current = np.random.Generator(kind())
        current.bit_generator.state = state
        return current
    container = "tuple" if "tuple" in value else "list"
    if container not in value or not isinstance(value[container], list):
        raise ValueError("an unknown kind of value")
    if current is not None and not isinstance(current, (tuple, list)):
        raise ValueError(f"a sequence where the env holds a {type(current).__name__}")
    olds = (
        list(current)
        if isinstance(current, (tuple, list)) and len(current) == len(value[container])
        else [None] * len(value[container])
    )
    items = [_decode(v, old) for v, old in zip(value[container], olds, strict=False)]
    return tuple(items) if container == "tuple" else items


#: what a snapshot holds (1: the format before env identities, never restored: it held constants)
SNAPSHOT_FORMAT = 2


def env_identity(envs: VectorEnv) -> dict[str, Any] | None:
    """What ``envs`` are built with, as plain data: each object's class, its plain attributes as
    constructed (physical constants, a wrapper's settings, initial values), each env's spec (id,
    kwargs, time limit) and the versions of the packages they come from. Taken before the first
    reset; None where the envs' state cannot be captured (nothing is restored into them)."""
    objects = _snapshot_objects(envs)
    if objects is None:
        return None
    constants = []
    for obj in objects:
        encoded = {name: _encode(value) for name, value in vars(obj).items()}
        # (an RNG made at construction is state, not a setting: seeded from entropy, it differs each time)
        constants.append({name: value for name, value in encoded.items() if value is not _SKIP and not _is_rng(value)})
    specs = []
    for obj in objects:
        spec = getattr(obj, "spec", None) if not isinstance(obj, gym.Wrapper) else None
        if isinstance(spec, gym.envs.registration.EnvSpec):
            kwargs = {str(k): _encode(v) for k, v in spec.kwargs.items()}
            specs.append(
                {
                    "id": spec.id,
                    "max_episode_steps": spec.max_episode_steps,
                    "kwargs": {
                        k: (safety.clean(repr(spec.kwargs[k]), 200) if v is _SKIP else v) for k, v in kwargs.items()
                    },
                }
            )
    packages = sorted({"gymnasium", *(type(obj).__module__.split(".")[0] for obj in objects)})
    return {
        "classes": [f"{type(obj).__module__}.{type(obj).__qualname__}" for obj in objects],
        "constants": constants,
        "specs": specs,
        "versions": {name: _version(name) for name in packages},
    }


def _is_rng(value: Any) -> bool:
    return isinstance(value, dict) and "rng" in value


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        module = sys.modules.get(package)
        return str(getattr(module, "__version__", "unknown"))


def identity_difference(saved: Any, now: dict[str, Any] | None) -> str | None:
    """How the envs now differ from those a snapshot was taken of, in words; None if they do not."""
    if now is None:
        return "these envs' state cannot be captured"
    if not isinstance(saved, dict):
        return "the checkpoint does not record how its envs were built"
    for name, version in now["versions"].items():
        old = saved.get("versions", {}).get(name) if isinstance(saved.get("versions"), dict) else None
        if old != version:
            return f"{name} is {version} now, {safety.clean(old, 40)} when the checkpoint was written"
    if saved.get("classes") != now["classes"]:
        return "the envs or their wrappers are of other classes than when the checkpoint was written"
    if not _same(saved.get("specs"), now["specs"]):
        return "the envs were made from another id or with other arguments than when the checkpoint was written"
    old_constants = saved.get("constants")
    if not isinstance(old_constants, list) or len(old_constants) != len(now["constants"]):
        return "the checkpoint's env record does not fit these envs"
    for cls, old, new in zip(now["classes"], old_constants, now["constants"], strict=True):
        if not isinstance(old, dict):
            return "the checkpoint's env record does not fit these envs"
        for name in sorted(set(old) | set(new)):
            if not _same(old.get(name), new.get(name)):
                return (
                    f"{cls.rsplit('.', 1)[-1]}.{safety.clean(name, 40)} is {_shown(new.get(name))} now, "
                    f"{_shown(old.get(name))} when the checkpoint was written"
                )
    return None


def _same(a: Any, b: Any) -> bool:
    """Whether two encoded values are equal (tensors by dtype, shape and contents; NaN equals NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(
                torch.equal(a, b)
                or (
                    a.is_floating_point()
                    and torch.equal(a.isnan(), b.isnan())
                    and torch.equal(a.nan_to_num(), b.nan_to_num())
                )
            )
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _shown(value: Any) -> str:
    if isinstance(value, dict) and ("scalar" in value or "ndarray" in value):
        tensor = value.get("scalar", value.get("ndarray"))
        if isinstance(tensor, torch.Tensor):
            return safety.clean(tensor.tolist(), 40)
    return safety.clean(value, 40)


def snapshot_env_state(envs: VectorEnv, identity: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The dynamic state of ``envs`` as plain data, with ``identity`` (``env_identity`` of these
    envs as built): the attributes whose values differ from those they were built with. None where
    it cannot be captured."""
    objects = _snapshot_objects(envs)
    if objects is None or identity is None:
        return None
    state = []
    for obj, built in zip(objects, identity["constants"], strict=True):
        encoded = {name: _encode(value) for name, value in vars(obj).items()}
        state.append(
            {name: value for name, value in encoded.items() if value is not _SKIP and not _same(value, built.get(name))}
        )
    return {"format": SNAPSHOT_FORMAT, "identity": identity, "state": state}


def restore_env_state(envs: VectorEnv, snapshot: Any, identity: dict[str, Any] | None = None) -> str | None:
    """Put ``envs`` (built as ``identity`` says, and not stepped since) back into a snapshotted
    state. Returns None when done, else why not in words (then nothing changed)."""
    objects = _snapshot_objects(envs)
    if objects is None or identity is None:
        return "these envs' state cannot be captured (only plain-data envs in a sync vector env are restored)"
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
        return "the checkpoint's env snapshot is of an older format, which held the envs' settings too"
    difference = identity_difference(snapshot.get("identity"), identity)
    if difference is not None:
        return difference
    states = snapshot.get("state")
    if not isinstance(states, list) or len(objects) != len(states):
        return "the checkpoint's env snapshot does not fit these envs"
    # Decode everything first, into attributes the objects already have, of the same type; set
    # nothing unless all of it fits (a snapshot is data from a file: clippo.core.safety). What the
    # snapshot leaves out had its built value when saved: it gets that value back.
    updates = []
    for obj, state, built in zip(objects, states, identity["constants"], strict=True):
        if not isinstance(state, dict):
            return "the checkpoint's env snapshot does not fit these envs"
        attributes = vars(obj)
        for name, value in {**{k: v for k, v in built.items() if k not in state}, **state}.items():
            if not isinstance(name, str) or name not in attributes:
                return f"the checkpoint's env snapshot names {safety.clean(name, 40)}, which these envs do not have"
            try:
                updates.append((obj, name, _decode(value, attributes[name])))
            except (ValueError, TypeError, KeyError, RuntimeError) as exc:
                return f"the checkpoint's env snapshot does not fit these envs ({safety.clean(name, 40)}: {exc})"
    for obj, name, value in updates:
        setattr(obj, name, value)
    return None

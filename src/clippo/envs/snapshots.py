"""Env snapshots: the dynamic state of a run's envs, saved in a checkpoint and restored on resume.

Only envs whose state is plain Python and numpy data (Gymnasium's classic-control and toy-text
envs, clippo's toy envs) are captured; their attributes are encoded as tensors and plain values,
so a checkpoint stays loadable with ``torch.load(weights_only=True)``. A snapshot read back is data
from a file: it is restored only into attributes that already exist, with values of the same kind,
and RNG states only for numpy's own bit generators (``clippo.core.safety``).
"""

from __future__ import annotations

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


def _encode(value):
    """Plain data for a checkpoint, or _SKIP for attributes that are configuration or objects."""
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
        if value is None:
            return None
        if not isinstance(value, (bool, int, float, str)):
            raise ValueError(f"a {type(value).__name__} is not plain data")
        if current is not None and isinstance(value, str) != isinstance(current, str):
            raise ValueError(f"a {type(value).__name__} where the env holds a {type(current).__name__}")
        if current is not None and not isinstance(current, (bool, int, float, str, np.generic)):
            raise ValueError(f"a {type(value).__name__} where the env holds a {type(current).__name__}")
        return value
    if "ndarray" in value or "scalar" in value:
        tensor = value.get("ndarray", value.get("scalar"))
        if not isinstance(tensor, torch.Tensor):
            raise ValueError("an array that is not a tensor")
        array = tensor.numpy().copy() if "ndarray" in value else tensor.numpy()[()]
        if current is not None and not isinstance(current, (np.ndarray, np.generic, bool, int, float)):
            raise ValueError(f"an array where the env holds a {type(current).__name__}")
        if isinstance(current, np.ndarray) and (array.shape != current.shape or array.dtype != current.dtype):
            raise ValueError(f"an array of shape {array.shape} where the env holds {current.shape}")
        return array
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


def snapshot_env_state(envs: VectorEnv) -> list[dict] | None:
    """The complete state of ``envs`` as plain data, or None where it cannot be captured."""
    objects = _snapshot_objects(envs)
    if objects is None:
        return None
    snapshot = []
    for obj in objects:
        encoded = {name: _encode(value) for name, value in vars(obj).items()}
        snapshot.append({name: value for name, value in encoded.items() if value is not _SKIP})
    return snapshot


def restore_env_state(envs: VectorEnv, snapshot: list[dict]) -> bool:
    """Put ``envs`` back into a snapshotted state; False (nothing changed) if it does not fit."""
    objects = _snapshot_objects(envs)
    if objects is None or not isinstance(snapshot, list) or len(objects) != len(snapshot):
        return False
    # Decode everything first, into attributes the objects already have, of the same type; set
    # nothing unless all of it fits (a snapshot is data from a file: clippo.core.safety).
    updates = []
    for obj, state in zip(objects, snapshot, strict=False):
        if not isinstance(state, dict):
            return False
        attributes = vars(obj)
        for name, value in state.items():
            if not isinstance(name, str) or name not in attributes:
                return False
            try:
                updates.append((obj, name, _decode(value, attributes[name])))
            except (ValueError, TypeError, KeyError, RuntimeError):
                return False
    for obj, name, value in updates:
        setattr(obj, name, value)
    return True

"""Observations as the env returns them: which spaces clippo takes, storage in each field's own
dtype and shape, conversion to tensors, and batch indexing.

A batch of observations is one numpy array (or tensor) for a plain space (``Box``, ``Discrete``,
``MultiDiscrete``, ``MultiBinary``) and a flat ``dict`` of them, one per field, for ``Dict`` and
``Tuple`` spaces (nested ones too: keys ``"a.b"``; a Tuple's fields are ``"0"``, ``"1"``, ...).
uint8 frames stay uint8 until an encoder divides them by 255.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces

#: One observation batch: an array/tensor, or a dict of them (one per field of a Dict/Tuple space).
Obs = np.ndarray | torch.Tensor | dict[str, Any]
#: One observation batch as an env returns it (flattened): an array, or a dict of arrays.
EnvObs = np.ndarray | dict[str, np.ndarray]

PLAIN_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def unsupported(space: spaces.Space) -> ValueError:
    return ValueError(
        f"observation space {space} ({type(space).__name__}) is not supported: clippo handles Box, "
        "Discrete, MultiDiscrete, MultiBinary, and Dict/Tuple spaces made of them"
    )


def fields(space: spaces.Space, prefix: str = "") -> dict[str, spaces.Space] | None:
    """The plain sub-spaces of a Dict/Tuple space by flat key, or None for a plain space; a
    one-line error for a space clippo cannot take."""
    if isinstance(space, PLAIN_SPACES):
        return None if not prefix else {prefix: space}
    items: Iterable[tuple[str, spaces.Space]]
    if isinstance(space, spaces.Dict):
        items = space.spaces.items()
    elif isinstance(space, spaces.Tuple):
        items = ((str(i), sub) for i, sub in enumerate(space.spaces))
    else:
        raise unsupported(space)
    out: dict[str, spaces.Space] = {}
    for key, sub in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(sub, PLAIN_SPACES):
            out[name] = sub
        else:
            nested = fields(sub, name)
            assert nested is not None  # only a plain space with no prefix gives None
            out.update(nested)
    if not out:
        raise unsupported(space)
    return out


def storage_dtype(space: spaces.Space) -> np.dtype:
    """The dtype one field is stored in: the space's own (int64 for discrete indices)."""
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return np.dtype(np.int64)
    return np.dtype(space.dtype)


def field_shape(space: spaces.Space) -> tuple[int, ...]:
    if isinstance(space, spaces.Discrete):
        return ()
    assert space.shape is not None  # every plain space has a shape
    return tuple(space.shape)


def flatten_structure(obs: Any, space: spaces.Space) -> EnvObs:
    """An env's observation batch (nested dicts/tuples for Dict/Tuple spaces) as an array or a
    flat dict of arrays, the form the rest of clippo uses."""
    parts = fields(space)
    if parts is None:
        return obs
    out: dict[str, Any] = {}

    def walk(value: Any, sub: spaces.Space, prefix: str) -> None:
        if isinstance(sub, spaces.Dict):
            for key, inner in sub.spaces.items():
                walk(value[key], inner, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(sub, spaces.Tuple):
            for i, inner in enumerate(sub.spaces):
                walk(value[i], inner, f"{prefix}.{i}" if prefix else str(i))
        else:
            out[prefix] = value

    walk(obs, space, "")
    return out


def allocate(space: spaces.Space, leading: tuple[int, ...]) -> Obs:
    """Zeroed storage for ``leading``-shaped batches of observations (e.g. ``(steps, envs)``)."""
    parts = fields(space)
    if parts is None:
        return np.zeros(leading + field_shape(space), dtype=storage_dtype(space))
    return {key: np.zeros(leading + field_shape(sub), dtype=storage_dtype(sub)) for key, sub in parts.items()}


def map_obs(function: Callable[..., Any], obs: Obs, *others: Obs) -> Obs:
    """``function`` applied to each field (to the array itself for a plain space)."""
    if isinstance(obs, dict):
        # The others have the same structure as obs: dicts with the same keys.
        dicts = cast("tuple[dict[str, Any], ...]", others)
        return {key: function(value, *(other[key] for other in dicts)) for key, value in obs.items()}
    return function(obs, *others)


def write(storage: Obs, obs: Obs) -> None:
    """Copy an observation batch into (a row of) storage, casting to the storage's dtypes."""
    map_obs(lambda target, value: target.__setitem__(Ellipsis, value), storage, obs)


def to_tensor(obs: Obs, device: torch.device | str = "cpu") -> Obs:
    """Tensors on ``device`` (no copy on the CPU for contiguous arrays), dtypes kept."""
    return map_obs(lambda value: torch.as_tensor(np.ascontiguousarray(value)).to(device), obs)


def batch_size(obs: Obs) -> int:
    return len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)


def as_batch(obs: Any, space: spaces.Space) -> tuple[EnvObs, bool]:
    """Raw observation(s) given to ``act``/``predict`` as a batch, and whether it was a single one.
    A one-line error when the shape fits neither."""
    if isinstance(obs, tuple) and len(obs) == 2 and isinstance(obs[1], dict) and not isinstance(space, spaces.Tuple):
        raise ValueError(
            "the observation is a tuple (obs, info), as env.reset() returns it: pass the observation alone, "
            "e.g. obs, info = env.reset(); agent.act(obs)"
        )
    parts = fields(space)
    obs = flatten_structure(obs, space)
    if parts is None:
        try:
            obs = np.asarray(obs)
        except ValueError:  # (a ragged sequence: numpy's own message says little)
            raise ValueError(
                f"the observation is a {type(obs).__name__} that is not an array of one shape: expected "
                f"{field_shape(space)} or (batch, *{field_shape(space)})"
            ) from None
        expected = field_shape(space)
        single = obs.shape == expected
        if not single and obs.shape[1:] != expected:
            raise ValueError(
                f"observation of shape {obs.shape} does not fit the observation space {space}: "
                f"expected {expected} or (batch, *{expected})"
            )
        return (obs[None] if single else obs), single
    if not isinstance(obs, dict) or set(obs) != set(parts):
        raise ValueError(f"observation does not fit the observation space {space}: expected the fields {sorted(parts)}")
    obs = {key: np.asarray(value) for key, value in obs.items()}
    single = all(obs[key].shape == field_shape(sub) for key, sub in parts.items())
    for key, sub in parts.items():
        if not single and obs[key].shape[1:] != field_shape(sub):
            raise ValueError(
                f"observation field {key!r} of shape {obs[key].shape} does not fit {sub}: "
                f"expected {field_shape(sub)} or (batch, *{field_shape(sub)})"
            )
    return ({key: value[None] for key, value in obs.items()} if single else obs), single

"""Construction of Gymnasium vector environments, with clear errors for what clippo cannot use."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Union

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from clippo.config.ppo_config import PPOConfig
from clippo.envs import atari
from clippo.envs.preprocessing import Preprocessing
from clippo.rollout.masking import MASK_KEY

EnvSource = Union[str, Callable[[], gym.Env]]


def check_env_id(env_id: str) -> None:
    """Raise ValueError with one line if Gymnasium does not know ``env_id``.

    Atari and MinAtar ids are registered first (from ale-py or minatar, whose absence is a
    one-line error naming the extra), and clippo's own ``clippo/...`` ids (``clippo.envs.toy``)."""
    atari.ensure_registered(env_id)
    if env_id.startswith("clippo/"):
        import clippo.envs.toy  # noqa: F401  (registers them)
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"unknown environment id {env_id!r}: {str(exc).splitlines()[0]}") from None


def _has_native_vector(env_id: str) -> bool:
    return gym.spec(env_id).vector_entry_point is not None


def _kept_info(info: dict) -> dict:
    return {MASK_KEY: info[MASK_KEY]} if MASK_KEY in info else {}


class DropInfo(gym.Wrapper):
    """An env whose step and reset return an empty info dict, but for an ``action_mask`` entry.

    clippo reads nothing else from infos (action masks may come from there: ``clippo.rollout.masking``),
    while Gymnasium's sync and async vector envs merge every env's info into per-key arrays at
    every step: for a MuJoCo env's half-dozen entries, 25-30 us or 6-9% of a one-env vector step
    (Hopper, Walker2d, HalfCheetah, Ant v5, alternating blocks in one process). Applied to envs
    made from an id (an env factory's envs are left as the factory makes them)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, _kept_info(info)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, _kept_info(info)


_GENERIC_MODES = ("auto", "sync", "async", "native")


def make_run_envs(source: EnvSource, num_envs: int, config: PPOConfig, vector_env: str | None = None) -> VectorEnv:
    """``num_envs`` envs of ``source`` as a run with ``config`` sees them: its ``vector_env`` mode
    (unless given) and its observation preprocessing (``clippo.envs.preprocessing``). Training,
    evaluation, the export check and playback all make their envs here, so that the policy is
    always given the observations it was trained on."""
    mode = config.vector_env if vector_env is None else vector_env
    env_kwargs = dict(getattr(config, "env_kwargs", None) or {})
    if env_kwargs and not isinstance(source, str):
        raise ValueError(
            f"env_kwargs={env_kwargs} is invalid for an env factory: they go to gymnasium.make for an env id; give "
            "them to your factory"
        )
    return make_vector_env(source, num_envs, mode, preprocessing=Preprocessing.from_config(config), **env_kwargs)


def _preprocessed(make_env: Callable[[], gym.Env], preprocessing: Preprocessing) -> gym.Env:
    return preprocessing(make_env())


def make_vector_env(
    source: EnvSource,
    num_envs: int,
    vector_env: str = "auto",
    preprocessing: Preprocessing | None = None,
    **make_kwargs,
) -> VectorEnv:
    """``num_envs`` copies of an env id or env factory, stepped together.

    All clippo vector envs use Gymnasium's next-step autoreset: the step after an episode ends
    returns the first observation of the next one (with reward 0) and is not a transition.
    Atari ids get the standard preprocessing and MinAtar ids their own vector env
    (:mod:`clippo.envs.atari`); ``vector_env`` "ale" and "envpool" apply only to Atari ids. Other
    envs, from an id or a factory, get ``preprocessing`` (frame skip, resize, grayscale, frame
    stack) if it is given and active.
    """
    mode = vector_env
    preprocess = preprocessing is not None and preprocessing.active
    if isinstance(source, str) and (atari.is_atari(source) or atari.is_minatar(source)) and preprocess:
        raise ValueError(
            f"{preprocessing} is invalid for {source!r}: Atari and MinAtar ids have their own preprocessing "
            "(clippo.envs.atari)"
        )
    if isinstance(source, str) and atari.is_atari(source):
        return atari.make_atari_vector_env(source, num_envs, vector_env, **make_kwargs)
    if isinstance(source, str) and atari.is_minatar(source):
        return atari.make_minatar_vector_env(source, num_envs, vector_env, **make_kwargs)
    if mode not in _GENERIC_MODES:
        what = f"{source!r}" if isinstance(source, str) else "an env factory"
        only_atari = " (ale and envpool apply to Atari ids only)" if mode in ("ale", "envpool") else ""
        raise ValueError(
            f"vector_env={mode!r} is invalid for {what}: use one of {', '.join(_GENERIC_MODES)}{only_atari}"
        )
    if isinstance(source, str):
        check_env_id(source)
        if mode == "auto":
            mode = "native" if _has_native_vector(source) and not make_kwargs and not preprocess else "sync"
        if mode == "native" and not _has_native_vector(source):
            raise ValueError(f"vector_env='native' is invalid for {source!r}: it has no vectorized implementation")
        if mode == "native" and preprocess:
            raise ValueError(
                f"vector_env='native' is invalid with {preprocessing}: its vectorized implementation takes no "
                "wrappers; use sync or async"
            )
        vectorization_mode = {"sync": "sync", "async": "async", "native": "vector_entry_point"}[mode]
        wrappers = [DropInfo, preprocessing] if preprocess else [DropInfo]
        kwargs = (
            {}
            if mode == "native"
            else {"vector_kwargs": {"autoreset_mode": AutoresetMode.NEXT_STEP}, "wrappers": wrappers}
        )
        try:
            envs = gym.make_vec(
                source, num_envs=num_envs, vectorization_mode=vectorization_mode, **kwargs, **make_kwargs
            )
        except gym.error.DependencyNotInstalled as exc:
            raise ValueError(
                f"environment {source!r} needs an extra package ({str(exc).splitlines()[0]}); "
                "try: pip install 'clippo[mujoco]' or 'clippo[box2d]'"
            ) from None
    elif callable(source):
        if mode == "native":
            raise ValueError("vector_env='native' is invalid for an env factory: use sync or async")
        vector_cls = gym.vector.AsyncVectorEnv if mode == "async" else gym.vector.SyncVectorEnv
        make_env = functools.partial(_preprocessed, source, preprocessing) if preprocess else source
        envs = vector_cls([make_env] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
    else:
        raise TypeError(f"env must be a Gymnasium env id (str) or a callable returning a gymnasium.Env, got {source!r}")
    autoreset = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:  # pragma: no cover - all Gymnasium 1.x built-ins comply
        envs.close()
        raise ValueError(f"vector env autoreset mode {autoreset} is not supported: clippo needs NEXT_STEP")
    return envs


# ---------------------------------------------------------------------------------------------
# Environment snapshots for exact resume
# ---------------------------------------------------------------------------------------------
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
    if not isinstance(value, dict):
        return value
    if "ndarray" in value:
        return value["ndarray"].numpy().copy()
    if "scalar" in value:
        return value["scalar"].numpy()[()]
    if "rng" in value:
        if not isinstance(current, np.random.Generator):
            current = np.random.Generator(getattr(np.random, value["rng"]["bit_generator"])())
        current.bit_generator.state = value["rng"]
        return current
    kind = "tuple" if "tuple" in value else "list"
    items = [_decode(v, None) for v in value[kind]]
    return tuple(items) if kind == "tuple" else items


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
    if objects is None or len(objects) != len(snapshot):
        return False
    for obj, state in zip(objects, snapshot, strict=False):
        for name, value in state.items():
            setattr(obj, name, _decode(value, getattr(obj, name, None)))
    return True

"""Construction of Gymnasium vector environments, with clear errors for what clippo cannot use."""

from __future__ import annotations

from typing import Callable, Union

import gymnasium as gym
from gymnasium.vector import AutoresetMode, VectorEnv

EnvSource = Union[str, Callable[[], gym.Env]]


def check_env_id(env_id: str) -> None:
    """Raise ValueError with one line if Gymnasium does not know ``env_id``."""
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"unknown environment id {env_id!r}: {str(exc).splitlines()[0]}") from None


def _has_native_vector(env_id: str) -> bool:
    return gym.spec(env_id).vector_entry_point is not None


def make_vector_env(source: EnvSource, num_envs: int, vector_env: str = "auto", **make_kwargs) -> VectorEnv:
    """``num_envs`` copies of an env id or env factory, stepped together.

    All clippo vector envs use Gymnasium's next-step autoreset: the step after an episode ends
    returns the first observation of the next one (with reward 0) and is not a transition.
    """
    mode = vector_env
    if isinstance(source, str):
        check_env_id(source)
        if mode == "auto":
            mode = "native" if _has_native_vector(source) and not make_kwargs else "sync"
        if mode == "native" and not _has_native_vector(source):
            raise ValueError(f"vector_env='native' is invalid for {source!r}: it has no vectorized implementation")
        vectorization_mode = {"sync": "sync", "async": "async", "native": "vector_entry_point"}[mode]
        kwargs = {} if mode == "native" else {"vector_kwargs": {"autoreset_mode": AutoresetMode.NEXT_STEP}}
        try:
            envs = gym.make_vec(source, num_envs=num_envs, vectorization_mode=vectorization_mode, **kwargs, **make_kwargs)
        except gym.error.DependencyNotInstalled as exc:
            raise ValueError(
                f"environment {source!r} needs an extra package ({str(exc).splitlines()[0]}); "
                "try: pip install 'clippo[mujoco]' or 'clippo[box2d]'"
            ) from None
    elif callable(source):
        if mode == "native":
            raise ValueError("vector_env='native' is invalid for an env factory: use sync or async")
        vector_cls = gym.vector.AsyncVectorEnv if mode == "async" else gym.vector.SyncVectorEnv
        envs = vector_cls([source] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
    else:
        raise TypeError(f"env must be a Gymnasium env id (str) or a callable returning a gymnasium.Env, got {source!r}")
    autoreset = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:  # pragma: no cover - all Gymnasium 1.x built-ins comply
        envs.close()
        raise ValueError(f"vector env autoreset mode {autoreset} is not supported: clippo needs NEXT_STEP")
    return envs

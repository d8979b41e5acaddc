"""Construction of Gymnasium vector environments, with clear errors for what clippo cannot use."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode, VectorEnv

from clippo.envs import atari
from clippo.envs.families import check_env_id, is_atari, is_minatar, split_env_id
from clippo.envs.preprocessing import Preprocessing, RunEnvSettings
from clippo.envs.wrappers import DropInfo

EnvSource = str | Callable[[], gym.Env]


class FirstEnvMade:
    """A factory whose first call returns an env already made (the one the start-up checks made
    and checked, ``clippo.envs.checks``), then calls ``source``: the factory is called as often
    as without the checks."""

    def __init__(self, env: gym.Env, source: Callable[[], gym.Env]) -> None:
        self.env: gym.Env | None = env
        self.source = source
        self.__name__ = getattr(source, "__name__", "env factory")

    def __call__(self) -> gym.Env:
        env, self.env = self.env, None
        return env if env is not None else self.source()


class InstanceSource:
    """An env instance given where clippo takes a factory (``PPO(gym.make(...))``, as in SB3): the
    first call returns the instance itself (the training env, one of it), each later call a deep
    copy (an evaluation must not step the training env mid-episode)."""

    shares_instance = True

    def __init__(self, env: gym.Env) -> None:
        self.instance = env
        self.__name__ = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        self._given = False

    def __call__(self) -> gym.Env:
        if not self._given:
            self._given = True
            return self.instance
        import copy

        try:
            return copy.deepcopy(self.instance)
        except Exception as exc:
            raise ValueError(
                f"a second env of {self.__name__!r} is needed (evaluation), and the instance cannot be copied "
                f"({type(exc).__name__}): pass a callable that makes a new env, e.g. PPO(lambda: gym.make(...))"
            ) from None


def _has_native_vector(env_id: str) -> bool:
    return gym.spec(split_env_id(env_id)[1]).vector_entry_point is not None


_GENERIC_MODES = ("auto", "sync", "async", "native")


def make_run_envs(source: EnvSource, num_envs: int, config: RunEnvSettings, vector_env: str | None = None) -> VectorEnv:
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
    return make_vector_env(
        source,
        num_envs,
        mode,
        preprocessing=Preprocessing.from_config(config),
        env_modules=getattr(config, "env_modules", ()),
        **env_kwargs,
    )


def _preprocessed(make_env: Callable[[], gym.Env], preprocessing: Preprocessing) -> gym.Env:
    return preprocessing(make_env())


def make_vector_env(
    source: EnvSource,
    num_envs: int,
    vector_env: str = "auto",
    preprocessing: Preprocessing | None = None,
    env_modules: Sequence[str] = (),
    **make_kwargs,
) -> VectorEnv:
    """``num_envs`` copies of an env id or env factory, stepped together.

    All clippo vector envs use Gymnasium's next-step autoreset: the step after an episode ends
    returns the first observation of the next one (with reward 0) and is not a transition.
    Atari ids get the standard preprocessing and MinAtar ids their own vector env
    (:mod:`clippo.envs.atari`); ``vector_env`` "ale" and "envpool" apply only to Atari ids. Other
    envs, from an id or a factory, get ``preprocessing`` (frame skip, resize, grayscale, frame
    stack) if it is given and active. ``env_modules`` are imported before an id is looked up
    (the user's own envs register there; whoever passes them has made the trust decision).
    """
    mode = vector_env
    active = preprocessing if preprocessing is not None and preprocessing.active else None  # what is applied
    preprocess = active is not None
    if isinstance(source, str) and (is_atari(source) or is_minatar(source)) and preprocess:
        raise ValueError(
            f"{preprocessing} is invalid for {source!r}: Atari and MinAtar ids have their own preprocessing "
            "(clippo.envs.atari)"
        )
    if isinstance(source, str) and is_atari(source):
        return atari.make_atari_vector_env(source, num_envs, vector_env, **make_kwargs)
    if isinstance(source, str) and is_minatar(source):
        return atari.make_minatar_vector_env(source, num_envs, vector_env, **make_kwargs)
    if mode not in _GENERIC_MODES:
        what = f"{source!r}" if isinstance(source, str) else "an env factory"
        only_atari = " (ale and envpool apply to Atari ids only)" if mode in ("ale", "envpool") else ""
        raise ValueError(
            f"vector_env={mode!r} is invalid for {what}: use one of {', '.join(_GENERIC_MODES)}{only_atari}"
        )
    if isinstance(source, str):
        check_env_id(source, env_modules)
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
        wrappers = [DropInfo, active] if active is not None else [DropInfo]
        kwargs: dict[str, Any] = (
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
        make_env = functools.partial(_preprocessed, source, active) if active is not None else source
        envs = vector_cls([make_env] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
    else:
        raise TypeError(f"env must be a Gymnasium env id (str) or a callable returning a gymnasium.Env, got {source!r}")
    autoreset = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset != AutoresetMode.NEXT_STEP:  # pragma: no cover - all Gymnasium 1.x built-ins comply
        envs.close()
        raise ValueError(f"vector env autoreset mode {autoreset} is not supported: clippo needs NEXT_STEP")
    return envs

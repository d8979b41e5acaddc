"""Atari (ALE) and MinAtar environments with the standard preprocessing.

Atari ids (``ALE/<Game>-v5`` and the older ``<Game>NoFrameskip-v4``) become vector envs of
preprocessed frames: no-op reset (up to 30), frame skip 4 with max-pooling over the last two
frames, 84x84 grayscale, 4 frames stacked first (``(4, 84, 84)`` uint8), FIRE pressed on reset
for games that have it. Rewards stay the raw game score and an episode is a whole game: clippo's
rollout clips rewards to their sign and treats a lost life as terminal itself, from
``info["lives"]``, so that the score it logs and evaluates is the game's.

MinAtar ids (``MinAtar/<Game>-v0/-v1``) become vector envs of MinAtar's own 10x10xC boolean
observations.

ale-py and minatar are optional (the ``atari`` and ``minatar`` extras) and imported only when an
id of theirs is used.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space

_ATARI_ID = re.compile(r"^(ALE/[A-Za-z0-9]+-v5|[A-Za-z0-9]+NoFrameskip-v4)$")
_MINATAR_ID = re.compile(r"^MinAtar/")

#: the ``vector_env`` values for Atari ids; ``"native"`` is accepted too, as ALE's own ("ale").
ATARI_MODES = ("auto", "ale", "envpool", "async", "sync")
#: the ``vector_env`` values for MinAtar ids.
MINATAR_MODES = ("auto", "sync", "async")
#: what ``vector_env="auto"`` means for Atari ids: the fastest on 2 cores in
#: benchmarks/results/atari_env_speed.md.
AUTO_ATARI_MODE = "ale"
#: ALE's C++ worker threads in "ale" mode unless ``num_threads`` is given.
DEFAULT_ALE_THREADS = 2

NOOP_MAX = 30
FRAME_SKIP = 4
SCREEN_SIZE = 84
STACK = 4


def is_atari(env_id: str) -> bool:
    """Whether ``env_id`` names an Atari game that gets the standard preprocessing.

    ``ALE/<Game>-v5`` and ``<Game>NoFrameskip-v4``; other ALE ids (``<Game>-v4``,
    ``<Game>Deterministic-v4``) have a frame skip of their own and are left to the generic path.
    """
    return isinstance(env_id, str) and _ATARI_ID.match(env_id) is not None


def is_minatar(env_id: str) -> bool:
    """Whether ``env_id`` names a MinAtar game (``MinAtar/...``)."""
    return isinstance(env_id, str) and _MINATAR_ID.match(env_id) is not None


def ensure_registered(env_id: str) -> None:
    """Register ale-py's or minatar's ids with Gymnasium if ``env_id`` is one of theirs.

    Raises ValueError (one line, naming the id and the extra) if the package is missing; does
    nothing for other ids.
    """
    if is_atari(env_id):
        _import_ale(env_id)
    elif is_minatar(env_id):
        try:
            import minatar.gym
        except ImportError:
            raise ValueError(f"environment {env_id!r} needs the minatar extra: pip install 'clippo[minatar]'") from None
        if "MinAtar/Breakout-v1" not in gym.registry:  # registering twice warns about overriding
            minatar.gym.register_envs()


def _import_ale(env_id: str):
    try:
        import ale_py
    except ImportError:
        raise ValueError(f"environment {env_id!r} needs the atari extra: pip install 'clippo[atari]'") from None
    gym.register_envs(ale_py)
    return ale_py


def _check_id(env_id: str) -> None:
    from clippo.envs.make import check_env_id  # clippo.envs.make imports this module

    check_env_id(env_id)  # registers first, then the one-line error for unknown ids


def _mode_error(value: str, env_id: str, allowed: tuple[str, ...]) -> ValueError:
    return ValueError(f"vector_env={value!r} is invalid for {env_id!r}: use one of {', '.join(allowed)}")


class FireOnReset(gym.Wrapper):
    """Press FIRE once after every reset, in games whose action meanings include FIRE.

    Many games (Breakout among them) wait for FIRE before anything moves; an agent that has not
    learnt to press it yet would otherwise burn the whole time limit on a still screen. If the
    FIRE step ends the episode, the env is reset again (without pressing FIRE a second time).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        self.fire_action = meanings.index("FIRE") if "FIRE" in meanings else None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.fire_action is None:
            return obs, info
        obs, _, terminated, truncated, info = self.env.step(self.fire_action)
        if terminated or truncated:
            obs, info = self.env.reset()
        return obs, info


class _KeepLives(gym.Wrapper):
    """An env whose infos hold only ``lives`` (Gymnasium's vector envs merge every info key, every step)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {"lives": info["lives"]}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {"lives": info["lives"]}


def make_preprocessed_atari_env(env_id: str, **env_kwargs) -> gym.Env:
    """One Atari env with the standard preprocessing from Gymnasium's wrappers.

    ``gym.make(env_id, frameskip=1)`` (AtariPreprocessing needs the base env to skip no frames),
    AtariPreprocessing (no-op reset up to 30, frame skip 4 with max-pooling, 84x84 grayscale),
    FIRE on reset, FrameStackObservation(4): ``(4, 84, 84)`` uint8 observations, raw rewards,
    whole games, infos with ``lives`` only. ``env_kwargs`` go to ``gym.make`` (ALE's own
    arguments, e.g. ``repeat_action_probability``, ``max_num_frames_per_episode``).
    """
    _import_ale(env_id)  # also in worker processes, which may not have imported ale-py yet
    env = gym.make(env_id, frameskip=1, **env_kwargs)
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=NOOP_MAX,
        frame_skip=FRAME_SKIP,
        screen_size=SCREEN_SIZE,
        grayscale_obs=True,
        terminal_on_life_loss=False,
        scale_obs=False,
    )
    env = FireOnReset(env)
    env = gym.wrappers.FrameStackObservation(env, STACK)
    return _KeepLives(env)


class _AtariContract(VectorWrapper):
    """The same arrays from every Atari backend: int64 actions in, float32 raw rewards and
    ``info == {"lives": int32 array}`` out (other info keys are dropped)."""

    def __init__(self, env: VectorEnv, mode: str):
        super().__init__(env)
        self.mode = mode
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)
        self.action_space = batch_space(self.single_action_space, env.num_envs)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {"lives": np.asarray(info["lives"], dtype=np.int32)}

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(np.asarray(actions, dtype=np.int64))
        return (
            obs,
            np.asarray(rewards, dtype=np.float32),
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
            {"lives": np.asarray(info["lives"], dtype=np.int32)},
        )


class _EnvPoolVectorEnv(VectorEnv):
    """EnvPool's Atari env as a Gymnasium vector env that can be reseeded.

    EnvPool fixes its seeds when it is created (``reset(seed=...)`` only warns), so a seeded
    reset builds the pool again with that seed (a second or so), unless the pool was just built
    with it. An unseeded pool uses seed 0.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, task_id: str, num_envs: int, seed: int = 0, **pool_kwargs):
        self._task_id, self._pool_kwargs = task_id, pool_kwargs
        self.num_envs = num_envs
        self._pool = self._build(seed)
        self.single_observation_space = self._pool.observation_space
        self.single_action_space = self._pool.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(self.metadata)

    def _build(self, seed: int):
        import envpool

        self._seed, self._unused = int(seed), True
        return envpool.make_gymnasium(
            self._task_id, num_envs=self.num_envs, batch_size=self.num_envs, seed=self._seed, **self._pool_kwargs
        )

    def reset(self, *, seed=None, options=None):
        if seed is not None and not (self._unused and int(seed) == self._seed):
            self._pool.close()
            self._pool = self._build(seed)
        self._unused = False
        return self._pool.reset(options=options)

    def step(self, actions):
        return self._pool.step(actions)

    def close_extras(self, **kwargs):
        self._pool.close()


def _ale_settings(env_id: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The env's own registered settings (game, sticky actions, time limit), then the caller's."""
    spec_kwargs = gym.spec(env_id).kwargs
    settings = {
        "game": spec_kwargs["game"],
        "repeat_action_probability": spec_kwargs.get("repeat_action_probability", 0.0),
        "full_action_space": spec_kwargs.get("full_action_space", False),
        "max_num_frames_per_episode": spec_kwargs.get("max_num_frames_per_episode", 108_000),
    }
    settings.update(env_kwargs)
    return settings


def make_atari_vector_env(
    env_id: str, num_envs: int, vector_env: str = "auto", *, num_threads: int | None = None, **env_kwargs
) -> VectorEnv:
    """``num_envs`` copies of an Atari game with the standard preprocessing, stepped together.

    Every mode gives the same contract: Gymnasium's NEXT_STEP autoreset (the step after an
    episode ends returns the first observation of the next one, with reward 0);
    ``single_observation_space == Box(0, 255, (4, 84, 84), uint8)`` (4 stacked 84x84 grayscale
    frames, frames first); no-op reset up to 30, frame skip 4 with max-pooling over the last two
    frames, FIRE pressed on reset for games that have it; float32 RAW game rewards (no clipping)
    and whole games (no episodic life); ``info == {"lives": int32 array (num_envs,)}`` after
    every step and reset. Sticky actions are the env's own registered default in every mode, so
    the modes are comparable: ``ALE/<Game>-v5`` repeats the previous action with probability
    0.25, ``<Game>NoFrameskip-v4`` never. The time limit is the env's own too (108,000 frames,
    i.e. 27,000 steps).

    ``vector_env``:

    - ``"ale"`` (also ``"native"``): ale-py's C++ ``AtariVectorEnv`` with its built-in
      preprocessing, on ``num_threads`` threads (default 2);
    - ``"envpool"``: EnvPool's Atari env (C++ threads, ``num_threads``; not a clippo
      dependency: ``pip install envpool``);
    - ``"async"`` / ``"sync"``: Gymnasium's AsyncVectorEnv (one process per env) or
      SyncVectorEnv of :func:`make_preprocessed_atari_env` (Gymnasium's own wrappers);
    - ``"auto"``: ``AUTO_ATARI_MODE``, the fastest measured here (2 cores, 8 envs): see
      benchmarks/results/atari_env_speed.md.

    ``env_kwargs`` override the env's settings by ALE's names (``repeat_action_probability``,
    ``max_num_frames_per_episode``, ``full_action_space``) in every mode; any other keyword goes
    to the backend as it is (``AtariVectorEnv``, ``envpool.make_gymnasium`` or ``gym.make``).
    """
    if vector_env == "native":
        vector_env = "ale"
    if vector_env not in ATARI_MODES:
        raise _mode_error(vector_env, env_id, ATARI_MODES)
    _import_ale(env_id)
    _check_id(env_id)
    mode = AUTO_ATARI_MODE if vector_env == "auto" else vector_env
    if num_threads is not None and mode not in ("ale", "envpool"):
        raise ValueError(f"num_threads applies to vector_env 'ale' and 'envpool', not {mode!r}")
    settings = _ale_settings(env_id, env_kwargs)
    if mode == "ale":
        from ale_py.vector_env import AtariVectorEnv

        envs = AtariVectorEnv(
            num_envs=num_envs,
            num_threads=DEFAULT_ALE_THREADS if num_threads is None else num_threads,
            autoreset_mode=AutoresetMode.NEXT_STEP,
            img_height=SCREEN_SIZE,
            img_width=SCREEN_SIZE,
            grayscale=True,
            stack_num=STACK,
            frameskip=FRAME_SKIP,
            maxpool=True,
            noop_max=NOOP_MAX,
            use_fire_reset=True,
            episodic_life=False,
            life_loss_info=False,
            reward_clipping=False,
            **settings,
        )
    elif mode == "envpool":
        envs = _make_envpool(env_id, num_envs, num_threads, settings)
    else:
        try:
            import cv2  # noqa: F401  (AtariPreprocessing resizes with OpenCV)
        except ImportError:
            raise ValueError(
                f"vector_env={mode!r} for {env_id!r} needs OpenCV, part of the atari extra: pip install 'clippo[atari]'"
            ) from None
        settings.pop("game")
        make_env = functools.partial(make_preprocessed_atari_env, env_id, **settings)
        vector_cls = gym.vector.AsyncVectorEnv if mode == "async" else gym.vector.SyncVectorEnv
        envs = vector_cls([make_env] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
    return _AtariContract(envs, mode)


def _make_envpool(env_id: str, num_envs: int, num_threads: int | None, settings: dict[str, Any]) -> VectorEnv:
    try:
        import envpool
    except ImportError:
        raise ValueError(
            "vector_env='envpool' needs EnvPool, which clippo does not install: pip install envpool"
        ) from None
    name = env_id.removeprefix("ALE/").removesuffix("-v5").removesuffix("NoFrameskip-v4")
    task_id = f"{name}-v5"  # EnvPool's ids for every Atari game; its settings decide the rest
    if task_id not in envpool.list_all_envs():
        raise ValueError(f"vector_env='envpool' is invalid for {env_id!r}: EnvPool has no {task_id!r}")
    settings = dict(settings)
    settings.pop("game")
    frames = settings.pop("max_num_frames_per_episode")
    return _EnvPoolVectorEnv(
        task_id,
        num_envs,
        num_threads=0 if num_threads is None else num_threads,
        max_episode_steps=math.ceil(frames / FRAME_SKIP),
        img_height=SCREEN_SIZE,
        img_width=SCREEN_SIZE,
        gray_scale=True,
        stack_num=STACK,
        frame_skip=FRAME_SKIP,
        noop_max=NOOP_MAX,
        use_fire_reset=True,
        episodic_life=False,
        reward_clip=False,
        **settings,
    )


def make_minatar_vector_env(env_id: str, num_envs: int, vector_env: str = "auto", **env_kwargs) -> VectorEnv:
    """``num_envs`` copies of a MinAtar game, stepped together ("auto" and "sync": in this
    process; "async": one worker process each).

    NEXT_STEP autoreset as every clippo vector env; observations are MinAtar's own 10x10xC
    booleans (height, width, channels), infos are empty. Sticky actions are MinAtar's default
    (the previous action is repeated with probability 0.1; pass ``sticky_action_prob=0.0`` for
    none). ``env_kwargs`` go to ``gym.make``.
    """
    if vector_env not in MINATAR_MODES:
        raise _mode_error(vector_env, env_id, MINATAR_MODES)
    _check_id(env_id)
    from clippo.envs.make import DropInfo

    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="async" if vector_env == "async" else "sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP},
        wrappers=[DropInfo],
        **env_kwargs,
    )

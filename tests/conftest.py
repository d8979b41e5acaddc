"""Shared test helpers: tiny custom Gymnasium environments with known behaviour."""

from __future__ import annotations

import inspect
import os
from typing import Any, ClassVar

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

torch.set_num_threads(1)


class FixedLengthEnv(gym.Env):
    """Every episode terminates (or truncates) after exactly ``length`` steps with ``reward`` each step.

    The observation is ``[step_in_episode, 1.0]`` (float32), so the value of an observation is known.
    """

    metadata: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        length: int = 5,
        reward: float = 1.0,
        action_space: spaces.Space | None = None,
        truncate: bool = False,
    ) -> None:
        self.length = length
        self.reward = reward
        self.truncate = truncate
        self.observation_space = spaces.Box(-100.0, 100.0, shape=(2,), dtype=np.float32)
        self.action_space = action_space if action_space is not None else spaces.Discrete(2)
        self.t = 0
        self.actions_seen: list = []

    def _obs(self) -> np.ndarray:
        return np.array([self.t, 1.0], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype)), action
        self.actions_seen.append(np.asarray(action).copy())
        self.t += 1
        done = self.t >= self.length
        terminated = done and not self.truncate
        truncated = done and self.truncate
        return self._obs(), float(self.reward), terminated, truncated, {}


class MultiDiscreteEnv(gym.Env):
    """MultiDiscrete([3, 4]) actions, Box(4,) observations, episodes of exactly 10 steps.

    The reward is 1 when the first action component equals the second modulo 3, so a policy can learn.
    """

    metadata: ClassVar[dict[str, Any]] = {}

    def __init__(self, episode_length: int = 10) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete([3, 4])
        self.episode_length = episode_length
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, size=4).astype(np.float32), {}

    def step(self, action):
        action = np.asarray(action)
        assert action.shape == (2,) and self.action_space.contains(action), action
        self.t += 1
        reward = float(action[0] == action[1] % 3)
        obs = self.np_random.uniform(-1, 1, size=4).astype(np.float32)
        return obs, reward, self.t >= self.episode_length, False, {}


def make_fixed_length_env(length: int = 5, reward: float = 1.0, action_space=None, truncate: bool = False):
    """A zero-argument env factory (what PPO and make_vector_env accept)."""

    def make_env() -> gym.Env:
        return FixedLengthEnv(length=length, reward=reward, action_space=action_space, truncate=truncate)

    return make_env


def make_multidiscrete_env() -> gym.Env:
    return MultiDiscreteEnv()


def sample_actions(dist, params: torch.Tensor, deterministic: bool, generator: torch.Generator | None):
    """Actions from an ActionDistribution, deterministic (the mode) or random.

    Supports both sampling interfaces clippo has had: ``sample(params, deterministic, generator)``
    and ``sample(params, noise)`` with ``noise(shape, generator)`` (None meaning the mode).
    """
    if "noise" in inspect.signature(dist.sample).parameters:
        noise = None if deterministic else dist.noise(tuple(params.shape[:-1]), generator)
        return dist.sample(params, noise)
    return dist.sample(params, deterministic, generator)


def policy_act(model, obs: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
    """``ActorCritic.act`` plus the critic's values: (actions, logprobs, values)."""
    noise = None if deterministic else model.distribution.noise((obs.shape[0],), generator)
    actions, logprobs = model.act(obs, noise)
    return actions, logprobs, model.value(obs)


@pytest.fixture
def draw():
    return sample_actions


@pytest.fixture
def act():
    return policy_act


@pytest.fixture
def fixed_length_env():
    """Factory of env factories: ``fixed_length_env(length=3, reward=2.0)``."""
    return make_fixed_length_env


@pytest.fixture
def multidiscrete_env():
    return make_multidiscrete_env


@pytest.fixture(autouse=True)
def _run_in_tmp_cwd(tmp_path, monkeypatch):
    """Anything a test writes with a relative path (e.g. the CLI's default runs/) lands in tmp_path."""
    monkeypatch.chdir(tmp_path)

"""Env checks at start (issue #32, point 2): a broken env stops ``PPO(...)`` with one line naming
the env, the method and what was wrong; ``act`` given ``(obs, info)`` or a wrong shape says so."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from clippo import PPO
from clippo.envs.checks import EnvContractError, check_env_source


class GoodEnv(gym.Env):
    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


class ObservationOnly(GoodEnv):
    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32)


class WrongShape(GoodEnv):
    def step(self, action):
        return np.zeros(4, np.float32), 0.0, False, False, {}


class OldGymApi(GoodEnv):
    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, {}


class InfoNotDict(GoodEnv):
    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32), None


class TextObservation(GoodEnv):
    def reset(self, *, seed=None, options=None):
        return np.array(["a", "b", "c"]), {}


class NoSeed(GoodEnv):
    def reset(self, options=None):
        return np.zeros(3, np.float32), {}


class RaisesOnReset(GoodEnv):
    def reset(self, *, seed=None, options=None):
        raise KeyError("position")


@pytest.mark.parametrize(
    ("env_class", "fragments"),
    [
        (ObservationOnly, ["reset()", "an array of shape (3,)", "(observation, info)"]),
        (WrongShape, ["step()", "shape (4,)", "observation_space has shape (3,)"]),
        (OldGymApi, ["step()", "a tuple of 4", "old Gym API"]),
        (InfoNotDict, ["reset()", "info", "must be a dict"]),
        (TextObservation, ["reset()", "dtype <U1"]),
        (NoSeed, ["reset()", "TypeError"]),
        (RaisesOnReset, ["reset() raised KeyError", "position"]),
    ],
)
def test_a_broken_env_stops_construction_with_one_line(env_class, fragments):
    with pytest.raises(EnvContractError) as info:
        PPO(env_class, num_steps=16, num_envs=1)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"env {env_class.__name__!r}: ")
    for fragment in fragments:
        assert fragment in message, message


def test_gymnasiums_checker_runs_after_clippos_own():
    class IgnoresSeed(GoodEnv):  # passes clippo's checks; Gymnasium's finds the seed unused
        def reset(self, *, seed=None, options=None):
            return np.zeros(3, np.float32), {}

    with pytest.raises(EnvContractError, match=r"^env 'IgnoresSeed': Gymnasium's env checker: .*super\(\)\.reset"):
        check_env_source(IgnoresSeed, name="IgnoresSeed")


def test_a_good_env_and_registered_ids_pass():
    check_env_source(GoodEnv)
    check_env_source("CartPole-v1")
    check_env_source("Pendulum-v1")


def test_a_factory_that_returns_no_env_is_named():
    # (PPO tells a Gymnasium factory from a PettingZoo one first: the kind check names it)
    with pytest.raises(TypeError, match=r"^env factory '<lambda>' returned 'CartPole-v1': neither a gymnasium\.Env"):
        PPO(lambda: "CartPole-v1", num_envs=1)


def test_act_names_an_obs_info_tuple_and_a_wrong_shape():
    agent = PPO("CartPole-v1", num_envs=2, num_steps=16)
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"tuple \(obs, info\).*obs, info = env.reset\(\)"):
        agent.act(env.reset(seed=0))
    with pytest.raises(ValueError, match=r"shape \(3,\) does not fit"):
        agent.act(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"tuple \(obs, info\)"):
        agent.predict(env.reset(seed=0))
    obs, _ = env.reset(seed=0)
    assert agent.action_space.contains(agent.act(obs))

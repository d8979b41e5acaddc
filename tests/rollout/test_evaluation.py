"""Evaluation: whole episodes, raw returns, the requested episode count."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from clippo import PPO
from clippo.envs.make import make_vector_env
from clippo.rollout.evaluation import run_episodes


@pytest.mark.parametrize("episodes", [1, 3, 7])
def test_evaluate_known_returns(fixed_length_env, episodes):
    agent = PPO(fixed_length_env(length=5, reward=1.0), num_envs=2, num_steps=8, num_minibatches=1)
    try:
        result = agent.evaluate(episodes=episodes, seed=0)
    finally:
        agent.close()
    assert result["episodes"] == episodes
    assert result["mean_return"] == 5.0
    assert result["std_return"] == 0.0
    assert result["mean_length"] == 5.0
    assert result["returns"] == [5.0] * episodes


def test_evaluate_with_another_env_and_more_copies(fixed_length_env):
    agent = PPO(fixed_length_env(length=5, reward=1.0), num_envs=1, num_steps=8, num_minibatches=1)
    try:
        result = agent.evaluate(episodes=5, env=fixed_length_env(length=3, reward=2.0), num_envs=3)
    finally:
        agent.close()
    assert result["episodes"] == 5
    assert result["returns"] == [6.0] * 5
    assert result["mean_length"] == 3.0


def test_evaluate_rejects_bad_episode_counts(fixed_length_env):
    agent = PPO(fixed_length_env(), num_envs=1, num_steps=8, num_minibatches=1)
    try:
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="episodes"):
                agent.evaluate(episodes=bad)
    finally:
        agent.close()


def test_evaluate_rejects_env_with_other_spaces(fixed_length_env):
    agent = PPO("CartPole-v1", num_envs=1, num_steps=8, num_minibatches=1)
    try:
        with pytest.raises(ValueError, match="observation_space"):
            agent.evaluate(episodes=1, env=fixed_length_env())
    finally:
        agent.close()


def test_run_episodes_splits_quota_evenly_without_favouring_short_episodes(fixed_length_env):
    # copy 0 has short episodes (2 steps), copy 1 long ones (6 steps): counting whichever episodes
    # finish first would over-represent the short ones; the fixed quota gives 2 + 2.
    factories = [fixed_length_env(length=2), fixed_length_env(length=6)]
    envs = gym.vector.SyncVectorEnv(factories, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    try:
        returns, lengths = run_episodes(envs, lambda obs: np.zeros(len(obs), dtype=np.int64), 4, seed=0)
    finally:
        envs.close()
    assert sorted(returns) == [2.0, 2.0, 6.0, 6.0]
    assert sorted(lengths) == [2, 2, 6, 6]


def test_run_episodes_odd_quota(fixed_length_env):
    envs = make_vector_env(fixed_length_env(length=4, reward=0.5), 3, "sync")
    try:
        returns, lengths = run_episodes(envs, lambda obs: np.ones(len(obs), dtype=np.int64), 5, seed=1)
    finally:
        envs.close()
    assert returns == [2.0] * 5 and lengths == [4] * 5


def test_evaluate_cartpole_returns_are_episode_lengths():
    agent = PPO("CartPole-v1", num_envs=2, num_steps=8, num_minibatches=1, seed=0)
    try:
        result = agent.evaluate(episodes=4, seed=3, deterministic=False)
    finally:
        agent.close()
    assert result["episodes"] == 4 and len(result["returns"]) == 4
    assert result["mean_return"] == pytest.approx(np.mean(result["returns"]))
    assert result["std_return"] == pytest.approx(np.std(result["returns"]))
    assert result["mean_return"] == result["mean_length"]  # reward 1 per step
    assert all(1 <= r <= 500 for r in result["returns"])

"""The fast path (numpy rollout, hand-written gradient) against the general torch path: where each
applies, and that both give the same training updates from the same seed."""

from __future__ import annotations

import pytest
import torch

from clippo import PPO
from clippo.fastpath.gradient import AnalyticGradient
from clippo.fastpath.rollout import FastEnvRunner, FlatRolloutBuffer
from clippo.losses import AutogradLoss
from clippo.rollout import EnvRunner, RolloutBuffer
from toy_envs import DictGoalEnv, SpotImageEnv


@pytest.mark.parametrize(
    "env, hyperparameters",
    [
        ("CartPole-v1", dict(num_envs=4, num_steps=64)),
        ("Pendulum-v1", dict(num_envs=2, num_steps=128, normalize_observations=True, normalize_rewards=True)),
        ("CartPole-v1", dict(num_envs=4, num_steps=64, network="shared", clip_value_loss=True, ent_coef=0.01)),
        ("MountainCarContinuous-v0", dict(num_envs=2, num_steps=64, activation="relu", hidden_sizes=[32])),
    ],
)
def test_fast_path_and_general_path_train_to_the_same_parameters(env, hyperparameters):
    params = []
    for fast_path in ("auto", "off"):
        agent = PPO(env, seed=3, fast_path=fast_path, num_minibatches=4, update_epochs=4, **hyperparameters)
        assert (agent.runner_class is FastEnvRunner) == (fast_path == "auto")
        agent.learn(agent.batch_size * 5, progress=False)
        params.append(agent.optimizer.flat.clone())
        agent.close()
    fast, general = params
    assert not torch.equal(fast, PPO(env, seed=3, **hyperparameters).optimizer.flat)  # they did train
    assert torch.allclose(fast, general, rtol=0, atol=1e-5)


def test_the_fast_path_is_chosen_only_where_it_applies():
    cases = [
        (PPO("CartPole-v1"), FastEnvRunner, FlatRolloutBuffer, AnalyticGradient),
        (PPO("CartPole-v1", network="shared"), FastEnvRunner, FlatRolloutBuffer, AutogradLoss),
        (PPO("CartPole-v1", fast_path="off"), EnvRunner, RolloutBuffer, AutogradLoss),
        (PPO("CartPole-v1", reward_sign=True), EnvRunner, RolloutBuffer, AutogradLoss),
        (PPO("FrozenLake-v1"), EnvRunner, RolloutBuffer, AutogradLoss),  # Discrete observations
        (PPO(SpotImageEnv), EnvRunner, RolloutBuffer, AutogradLoss),
        (PPO(DictGoalEnv), EnvRunner, RolloutBuffer, AutogradLoss),
    ]
    for agent, runner, buffer, loss in cases:
        assert agent.runner_class is runner and agent.buffer_class is buffer and type(agent._loss) is loss
        agent.close()

"""The fast path (numpy rollout, hand-written gradient) against the general torch path: where each
applies, and that both give the same training updates from the same seed."""

from __future__ import annotations

import pytest
import torch

from clippo import PPO
from clippo.core.losses import AutogradLoss
from clippo.fastpath.gradient import AnalyticGradient
from clippo.fastpath.rollout import FastEnvRunner, FlatRolloutBuffer
from clippo.rollout.buffer import RolloutBuffer
from clippo.rollout.runner import EnvRunner
from tests.toy_envs import DictGoalEnv, MaskedGridEnv, SpotImageEnv


@pytest.mark.parametrize(
    "env, hyperparameters",
    [
        ("CartPole-v1", dict(num_envs=4, num_steps=64)),
        # a plain Gaussian (the preset's gSDE runs on torch only)
        (
            "Pendulum-v1",
            dict(
                num_envs=2,
                num_steps=128,
                use_sde=False,
                normalize_observations=True,
                normalize_rewards=True,
            ),
        ),
        ("CartPole-v1", dict(num_envs=4, num_steps=64, network="shared", clip_value_loss=True, ent_coef=0.01)),
        (
            "MountainCarContinuous-v0",
            dict(preset="default", num_envs=2, num_steps=64, activation="relu", hidden_sizes=[32]),
        ),
        ("FrozenLake-v1", dict(num_envs=4, num_steps=64, ent_coef=0.01)),  # Discrete observations, one-hot
        ("CliffWalking-v1", dict(num_envs=2, num_steps=64, network="shared")),  # the same through autograd
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


@pytest.mark.parametrize("source", ["method", "observation", "info", "multidiscrete"])
def test_masked_fast_path_and_general_path_train_to_the_same_parameters(source):
    """Action masks on the fast path (numpy acting, the hand-written gradient for Discrete
    actions, autograd for MultiDiscrete ones) give the general path's updates."""
    from clippo.envs.toy import SlotsEnv, SlotsMethodEnv

    env = {"method": SlotsMethodEnv, "observation": lambda: SlotsEnv(mask_in="observation"),
           "info": lambda: SlotsEnv(mask_in="info"), "multidiscrete": MaskedGridEnv}[source]  # fmt: skip
    params = []
    for fast_path in ("auto", "off"):
        agent = PPO(env, seed=3, fast_path=fast_path, num_envs=3, num_steps=32, num_minibatches=4, update_epochs=4,
                    learning_rate=3e-3, ent_coef=0.01, hidden_sizes=[16, 16], tensorboard=False)  # fmt: skip
        agent.learn(agent.batch_size * 5, progress=False)  # the envs raise on an invalid action
        assert agent.action_masks.kind == ("info" if source == "multidiscrete" else source)
        assert (type(agent.env_runner()) is FastEnvRunner) == (fast_path == "auto")
        gradient = AnalyticGradient if fast_path == "auto" and source != "multidiscrete" else AutogradLoss
        assert type(agent.learner.loss) is gradient
        params.append(agent.optimizer.flat.clone())
        agent.close()
    fast, general = params
    assert torch.allclose(fast, general, rtol=0, atol=1e-5)


def test_the_fast_path_is_chosen_only_where_it_applies():
    cases = [
        (PPO("CartPole-v1"), FastEnvRunner, FlatRolloutBuffer, AnalyticGradient),
        (PPO("CartPole-v1", network="shared"), FastEnvRunner, FlatRolloutBuffer, AutogradLoss),
        (PPO("CartPole-v1", fast_path="off"), EnvRunner, RolloutBuffer, AutogradLoss),
        (PPO("CartPole-v1", reward_sign=True), EnvRunner, RolloutBuffer, AutogradLoss),
        (PPO("FrozenLake-v1"), FastEnvRunner, FlatRolloutBuffer, AnalyticGradient),  # Discrete observations
        (PPO("FrozenLake-v1", network="shared"), FastEnvRunner, FlatRolloutBuffer, AutogradLoss),
        (PPO("Blackjack-v1"), EnvRunner, RolloutBuffer, AutogradLoss),  # Tuple observations
        (PPO(SpotImageEnv), EnvRunner, RolloutBuffer, AutogradLoss),
        (PPO(DictGoalEnv), EnvRunner, RolloutBuffer, AutogradLoss),
        (PPO("Pendulum-v1", use_sde=True), EnvRunner, RolloutBuffer, AutogradLoss),  # gSDE: torch only
        (PPO("Pendulum-v1", use_sde=False, orthogonal_init=False), FastEnvRunner, FlatRolloutBuffer, AnalyticGradient),
        (PPO("CartPole-v1", activation="gelu"), EnvRunner, RolloutBuffer, AutogradLoss),  # numpy has tanh and relu only
        (PPO("Pendulum-v1", activation="gelu", network="shared"), EnvRunner, RolloutBuffer, AutogradLoss),
        (PPO("CartPole-v1", head_sizes=[16]), EnvRunner, RolloutBuffer, AutogradLoss),  # layers after the encoders
        (PPO("Pendulum-v1", head_sizes=[8, 8], network="shared"), EnvRunner, RolloutBuffer, AutogradLoss),
        (
            PPO("CartPole-v1", frame_stack=2),
            FastEnvRunner,
            FlatRolloutBuffer,
            AnalyticGradient,
        ),  # [2, 4] Box, flattened
    ]
    for agent, runner, buffer, loss in cases:
        assert agent.runner_class is runner and agent.buffer_class is buffer and type(agent.learner.loss) is loss
        agent.close()

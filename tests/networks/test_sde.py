"""Generalized state-dependent exploration (gSDE): the distribution against torch.distributions,
noise held over a rollout, the policy's layout, end-to-end training, checkpoints and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import distributions as D

from clippo import PPO
from clippo.config.ppo_config import PPOConfig
from clippo.core.errors import ConfigError
from clippo.networks.distributions import StateDependentGaussian, make_distribution
from clippo.networks.policy import ActorCritic
from clippo.rollout.runner import EnvRunner
import itertools

BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)
TINY = dict(num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2, hidden_sizes=[16, 16])


def policy(sample_freq=-1, init_log_std=-0.5) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(
        spaces.Box(-5.0, 5.0, (3,), np.float32), BOX, [8, 8], init_log_std=init_log_std, sde_sample_freq=sample_freq
    )


def test_layout_params_are_mean_then_detached_features():
    model = policy()
    dist = model.distribution
    assert isinstance(dist, StateDependentGaussian)
    assert dist.feature_size == 8 and dist.num_outputs == 2 and dist.param_size == 10
    assert model.log_std.shape == (16,)  # the [features, actions] log-std matrix, flat
    assert model.actor_head.out_features == 2
    obs = torch.randn(5, 3)
    params = model.actor(obs)
    assert params.shape == (5, 10)
    torch.testing.assert_close(params[:, 2:], model.actor_encoder(obs))
    params.sum().backward()  # only the mean's gradient reaches the encoder
    reference = policy()
    reference.actor(obs)[:, :2].sum().backward()
    torch.testing.assert_close(model.actor_encoder.layers[0].weight.grad, reference.actor_encoder.layers[0].weight.grad)


@pytest.mark.parametrize("seed", [0, 1])
def test_log_prob_and_entropy_match_a_normal_with_the_per_state_variance(seed):
    model = policy()
    with torch.no_grad():
        model.log_std.copy_(torch.randn(16, generator=torch.Generator().manual_seed(seed)) * 0.5)
    dist = model.distribution
    params = model.actor(torch.randn(40, 3)).detach()
    mean, features = params[:, :2], params[:, 2:]
    sigma = model.log_std.detach().exp().view(8, 2)
    reference = D.Independent(D.Normal(mean, (features.pow(2) @ sigma.pow(2) + dist.EPSILON).sqrt()), 1)
    actions = torch.randn(40, 2) * 0.3
    torch.testing.assert_close(dist.log_prob(params, actions), reference.log_prob(actions))
    torch.testing.assert_close(dist.entropy(params), reference.entropy())


def test_sampled_actions_have_the_per_state_spread_and_the_mode_is_the_mean():
    model = policy(init_log_std=-1.0)
    dist = model.distribution
    params = model.actor(torch.randn(1, 3)).detach().expand(20000, 10)
    noise = dist.noise((20000,), torch.Generator().manual_seed(1))  # one matrix per row
    actions = dist.sample(params, noise)
    mean, features = params[0, :2], params[0, 2:]
    std = (features.pow(2) @ model.log_std.detach().exp().view(8, 2).pow(2) + dist.EPSILON).sqrt()
    torch.testing.assert_close(actions.mean(0), mean, atol=4 * float(std.max()) / 100, rtol=0)
    torch.testing.assert_close(actions.std(0), std, rtol=0.05, atol=0)
    assert torch.equal(dist.sample(params, None), params[:, :2])


@pytest.mark.parametrize(
    "freq,blocks", [(-1, [(0, 10)]), (4, [(0, 4), (4, 8), (8, 10)]), (1, [(i, i + 1) for i in range(10)])]
)
def test_noise_is_held_for_sample_freq_steps_and_differs_between_envs(freq, blocks):
    dist = policy(sample_freq=freq).distribution
    noise = dist.noise((10, 3), torch.Generator().manual_seed(2))
    assert noise.shape == (10, 3, 8, 2)
    for start, end in blocks:
        assert all(torch.equal(noise[start], noise[t]) for t in range(start, end))
    for (a, _), (b, _) in itertools.pairwise(blocks):
        assert not torch.equal(noise[a], noise[b])
    assert not torch.equal(noise[0, 0], noise[0, 1])


def test_noise_makes_consecutive_actions_of_a_rollout_correlated():
    """The point of gSDE: for a fixed state, actions within a rollout repeat (white noise does not)."""
    model = policy()
    dist = model.distribution
    params = model.actor(torch.randn(1, 3)).detach()
    noise = dist.noise((6, 1), torch.Generator().manual_seed(3))
    actions = torch.stack([dist.sample(params, noise[t]) for t in range(6)])
    assert torch.allclose(actions, actions[0].expand_as(actions))
    assert not torch.allclose(actions[0], params[:, :2])


def test_training_takes_the_torch_path_saves_and_loads(tmp_path):
    """(Exact resume of a gSDE run: tests/training/test_reliability.py, case pendulum-sde.)"""
    agent = PPO("Pendulum-v1", **TINY, use_sde=True, sde_sample_freq=4, init_log_std=-1.0, seed=3, run_dir=tmp_path)
    assert agent.runner_class is EnvRunner  # not the numpy fast path
    before = agent.model.log_std.detach().clone()
    agent.learn(total_steps=agent.batch_size * 3)
    assert not torch.equal(agent.model.log_std.detach(), before)  # the noise scale is learned
    obs = np.zeros((4, 3), np.float32)
    mode = agent.act(obs, deterministic=True)
    assert mode.shape == (4, 1) and np.all(np.abs(mode) <= 2.0)
    path = agent.save(tmp_path / "agent.pt")
    agent.close()
    loaded = PPO.load(path)
    assert loaded.config.use_sde and isinstance(loaded.model.distribution, StateDependentGaussian)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), mode)
    loaded.close()


@pytest.mark.parametrize(
    "space", [spaces.Discrete(3), spaces.MultiDiscrete([2, 3]), spaces.Tuple((spaces.Discrete(2), BOX))]
)
def test_use_sde_on_a_non_box_action_space_is_one_line(space):
    with pytest.raises(ValueError, match=r"use_sde needs a floating Box action space") as info:
        make_distribution(space, sde_sample_freq=-1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [0, -2])
def test_bad_sample_freq_is_rejected_by_name(bad):
    with pytest.raises(ConfigError, match=rf"sde_sample_freq={bad} is invalid"):
        PPOConfig(env_id="Pendulum-v1", use_sde=True, sde_sample_freq=bad).validate()

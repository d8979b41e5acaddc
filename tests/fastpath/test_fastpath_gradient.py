"""The hand-derived PPO loss gradient (clippo.fastpath.gradient) against autograd on the same minibatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo import PPO
from clippo.core.losses import AutogradLoss
from clippo.fastpath import gradient as fast_gradient
from clippo.fastpath.gradient import TANH_AS_SIGMOID_MIN, AnalyticGradient
from clippo.networks.encoders import flat_size
from clippo.rollout.buffer import Batch
from clippo.training.optim import FlatAdam
from tests.conftest import make_fixed_length_env

ACTION_SPACES = {
    "discrete": spaces.Discrete(3),
    "box": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
}


def random_minibatch(agent: PPO, size: int, seed: int) -> tuple[Batch, torch.Tensor]:
    """Observations, stored actions and targets; old log-probabilities and values perturbed so that
    some ratios and value predictions fall outside the clip range and some inside."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(size, flat_size(agent.observation_space), generator=g)
    with torch.no_grad():
        params, values = agent.model(obs)
        if isinstance(agent.action_space, spaces.Discrete):
            actions = torch.randint(0, agent.action_space.n, (size,), generator=g)
        else:
            actions = params + torch.randn(params.shape, generator=g)
        logprobs = agent.model.distribution.log_prob(params, actions)
    old_logprobs = logprobs + 0.3 * torch.randn(size, generator=g)
    old_values = values + 0.3 * torch.randn(size, generator=g)
    batch = Batch(
        obs=obs,
        actions=actions,
        logprobs=old_logprobs,
        values=old_values,
        advantages=torch.randn(size, generator=g),
        returns=torch.randn(size, generator=g) * 2,
    )
    return batch, batch.advantages


@pytest.mark.parametrize("action", sorted(ACTION_SPACES))
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("clip_value_loss", [False, True])
@pytest.mark.parametrize("ent_coef", [0.0, 0.05])
@pytest.mark.parametrize("tanh_in_numpy", [False, True])
def test_analytic_gradient_equals_autograd(action, activation, clip_value_loss, ent_coef, tanh_in_numpy, monkeypatch):
    monkeypatch.setattr(fast_gradient, "TANH_IN_NUMPY", tanh_in_numpy)
    check_against_autograd(action, activation, clip_value_loss, ent_coef, minibatch_size=64)


@pytest.mark.parametrize("action", sorted(ACTION_SPACES))
@pytest.mark.parametrize("tanh_in_numpy", [False, True])
def test_analytic_gradient_equals_autograd_on_large_tanh_layers(action, tanh_in_numpy, monkeypatch):
    # whichever form this machine's numpy makes clippo pick: np.tanh in place, or torch's
    monkeypatch.setattr(fast_gradient, "TANH_IN_NUMPY", tanh_in_numpy)
    # 600 x 16 hidden units: with torch's, the first layer takes the sigmoid form of tanh
    assert 600 * 16 >= TANH_AS_SIGMOID_MIN > 600 * 8
    # (a different formula of the same tanh: rounding differences up to a few 1e-6 in log-probabilities)
    check_against_autograd(action, "tanh", clip_value_loss=True, ent_coef=0.05, minibatch_size=600, atol=1e-5)


def check_against_autograd(action, activation, clip_value_loss, ent_coef, minibatch_size, atol=1e-6):
    agent = PPO(
        make_fixed_length_env(action_space=ACTION_SPACES[action]),
        seed=3,
        num_envs=1,
        hidden_sizes=[16, 8],
        activation=activation,
        clip_value_loss=clip_value_loss,
        ent_coef=ent_coef,
        init_log_std=-0.3,
    )
    assert isinstance(agent.learner.loss, AnalyticGradient)
    with torch.no_grad():  # move the weights off their init so that every layer carries a gradient
        agent.optimizer.flat.add_(
            0.1 * torch.randn(agent.optimizer.flat.shape, generator=torch.Generator().manual_seed(1))
        )
    minibatch, advantages = random_minibatch(agent, minibatch_size, seed=2)

    agent.optimizer.grad.fill_(123.0)  # every entry must be overwritten
    analytic = agent.loss_and_gradient(minibatch, advantages)
    analytic_grad = agent.optimizer.grad.clone()

    cfg = agent.config
    agent.learner.loss = AutogradLoss(
        agent.model, cfg.clip_epsilon, cfg.vf_coef, cfg.ent_coef, agent.optimizer.zero_grad
    )
    reference = agent.loss_and_gradient(minibatch, advantages)
    reference_grad = agent.optimizer.grad.clone()

    # the batch exercises both branches of the clipped surrogate
    assert 0.0 < reference.clip_fraction < 1.0
    torch.testing.assert_close(analytic_grad, reference_grad, rtol=1e-5, atol=atol)
    for name in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl"):
        assert getattr(analytic, name) == pytest.approx(getattr(reference, name), rel=1e-5, abs=atol), name
    # a ratio within rounding of the clip boundary may land on either side: one sample's worth
    assert analytic.clip_fraction == pytest.approx(reference.clip_fraction, abs=1.0 / minibatch_size + 1e-9)
    agent.close()


def test_unsupported_models_use_autograd():
    shared = PPO("CartPole-v1", network="shared")
    assert type(shared.learner.loss) is AutogradLoss
    with pytest.raises(ValueError, match="separate"):
        AnalyticGradient(shared.model, 0.2, 0.5, 0.0)
    shared.close()


def test_analytic_gradient_needs_the_paired_layout():
    agent = PPO("CartPole-v1", num_envs=1)
    model = agent.model
    FlatAdam(model.parameters(), lr=1e-3)  # actor first, then critic: layers not side by side
    with pytest.raises(ValueError, match="paired_parameters"):
        AnalyticGradient(model, 0.2, 0.5, 0.0)
    agent.close()


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_analytic_gradient_keeps_right_across_minibatch_sizes(activation):
    # The layers write into buffers kept per minibatch size (and dropped past a few sizes): switching
    # sizes back and forth, and past the number kept, must give autograd's gradient every time.
    agent = PPO(make_fixed_length_env(action_space=ACTION_SPACES["discrete"]), seed=3, num_envs=1,
                hidden_sizes=[16, 8], activation=activation, clip_value_loss=True, ent_coef=0.05)  # fmt: skip
    analytic_loss = agent.learner.loss
    assert isinstance(analytic_loss, AnalyticGradient)
    cfg = agent.config
    reference_loss = AutogradLoss(agent.model, cfg.clip_epsilon, cfg.vf_coef, cfg.ent_coef, agent.optimizer.zero_grad)
    for step, size in enumerate([64, 31, 64, 5, 6, 7, 8, 31, 64]):
        minibatch, advantages = random_minibatch(agent, size, seed=10 + step)
        agent.learner.loss = analytic_loss
        agent.optimizer.grad.fill_(123.0)
        analytic = agent.loss_and_gradient(minibatch, advantages)
        analytic_grad = agent.optimizer.grad.clone()
        agent.learner.loss = reference_loss
        reference = agent.loss_and_gradient(minibatch, advantages)
        torch.testing.assert_close(analytic_grad, agent.optimizer.grad, rtol=1e-5, atol=1e-6)
        assert analytic.loss == pytest.approx(reference.loss, rel=1e-5, abs=1e-6), size
        agent.optimizer.step()  # the buffers must follow weights that change in place
    assert len(analytic_loss.hidden) <= 4
    agent.close()

"""PPO loss terms: the clipped surrogate's gradients, value clipping, KL estimate, diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from clippo.core.losses import (
    approx_kl,
    clip_fraction,
    clipped_surrogate_loss,
    entropy_bonus,
    explained_variance,
    normalize_advantages,
    ppo_loss,
    value_loss,
)

EPS = 0.2


def surrogate_grad(ratios, advantages, eps=EPS):
    logratio = torch.tensor(ratios, dtype=torch.float64).log().requires_grad_(True)
    adv = torch.tensor(advantages, dtype=torch.float64)
    loss, ratio = clipped_surrogate_loss(logratio, adv, eps)
    loss.backward()
    return loss, ratio, logratio.grad


def test_surrogate_gradient_is_zero_exactly_where_the_clip_is_active():
    ratios = [1.5, 0.5, 1.5, 0.5, 1.0, 1.0, 1.1, 0.9, 1.3, 0.7]
    advantages = [2.0, -2.0, -2.0, 2.0, 1.0, -1.0, 0.5, -0.5, 3.0, -3.0]
    # active: ratio > 1+eps with A > 0, ratio < 1-eps with A < 0
    active = [True, True, False, False, False, False, False, False, True, True]
    _, ratio, grad = surrogate_grad(ratios, advantages)
    n = len(ratios)
    for i in range(n):
        if active[i]:
            assert grad[i] == 0.0, (i, ratios[i], advantages[i])
        else:
            # d/dlogratio of -(ratio * A) / n = -ratio * A / n
            assert grad[i] != 0.0
            assert math.isclose(grad[i].item(), -ratios[i] * advantages[i] / n, rel_tol=1e-9)
    torch.testing.assert_close(ratio.detach(), torch.tensor(ratios, dtype=torch.float64))


def test_surrogate_value_is_the_pessimistic_minimum():
    ratios = [1.5, 0.5, 1.5, 0.5, 1.0]
    advantages = [2.0, -2.0, -2.0, 2.0, 1.0]
    loss, _, _ = surrogate_grad(ratios, advantages)
    # min(r*A, clip(r)*A): 1.2*2=2.4, 0.8*-2=-1.6, 1.5*-2=-3.0, 0.5*2=1.0, 1.0
    expected = -(2.4 - 1.6 - 3.0 + 1.0 + 1.0) / 5
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)


def test_surrogate_with_unit_ratio_is_minus_mean_advantage():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(64, generator=g)
    loss, ratio = clipped_surrogate_loss(torch.zeros(64), adv, 0.1)
    assert torch.equal(ratio, torch.ones(64))
    torch.testing.assert_close(loss, -adv.mean())


def test_value_loss_without_clipping_is_mse():
    values = torch.tensor([1.0, 2.0, 3.0])
    returns = torch.tensor([0.0, 2.0, 5.0])
    torch.testing.assert_close(value_loss(values, returns), torch.tensor((1.0 + 0.0 + 4.0) / 3))
    # clip epsilon without old values (or old values without epsilon) means no clipping
    torch.testing.assert_close(value_loss(values, returns, None, 0.2), torch.tensor(5.0 / 3))
    torch.testing.assert_close(value_loss(values, returns, torch.zeros(3), None), torch.tensor(5.0 / 3))


def test_value_loss_clipping_takes_pessimistic_max():
    old = torch.zeros(4, dtype=torch.float64)
    returns = torch.ones(4, dtype=torch.float64)
    # 0: moved past the return beyond the clip: unclipped (2-1)^2=1 > clipped (0.2-1)^2=0.64
    # 1: moved towards the return beyond the clip: unclipped 0.25 < clipped 0.64 -> 0.64, no gradient
    # 2: inside the clip range: both terms (0.1-1)^2 = 0.81
    # 3: moved away from the return: -0.5 -> unclipped 2.25 > clipped (-0.2-1)^2=1.44
    values = torch.tensor([2.0, 0.5, 0.1, -0.5], dtype=torch.float64, requires_grad=True)
    loss = value_loss(values, returns, old, 0.2)
    expected = (1.0 + 0.64 + 0.81 + 2.25) / 4
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    loss.backward()
    grad = values.grad
    assert grad[1] == 0.0
    assert math.isclose(grad[0].item(), 2 * (2.0 - 1.0) / 4, rel_tol=1e-12)
    assert math.isclose(grad[2].item(), 2 * (0.1 - 1.0) / 4, rel_tol=1e-12)
    assert math.isclose(grad[3].item(), 2 * (-0.5 - 1.0) / 4, rel_tol=1e-12)
    # the clipped loss is never smaller than the unclipped one
    assert loss.item() >= value_loss(values.detach(), returns).item()


def test_approx_kl_zero_at_unit_ratio_and_nonnegative():
    assert approx_kl(torch.zeros(10)).item() == 0.0
    g = torch.Generator().manual_seed(1)
    for scale in (1e-3, 0.1, 1.0, 3.0):
        logratio = torch.randn(1000, generator=g, dtype=torch.float64) * scale
        kl = approx_kl(logratio)
        assert kl.item() >= 0.0
        expected = ((logratio.exp() - 1) - logratio).mean()
        torch.testing.assert_close(kl, expected)
    # single value: (2 - 1) - log 2
    assert math.isclose(approx_kl(torch.tensor([math.log(2.0)], dtype=torch.float64)).item(), 1 - math.log(2.0))


def test_approx_kl_does_not_track_gradients():
    logratio = torch.randn(5, requires_grad=True)
    assert not approx_kl(logratio).requires_grad


def test_clip_fraction():
    ratio = torch.tensor([1.0, 1.3, 0.7, 1.19, 0.81, 2.0])
    assert math.isclose(clip_fraction(ratio, 0.2).item(), 3 / 6, rel_tol=1e-6)
    assert clip_fraction(torch.ones(7), 0.2).item() == 0.0


def test_explained_variance():
    g = torch.Generator().manual_seed(2)
    targets = torch.randn(500, generator=g, dtype=torch.float64)
    assert explained_variance(targets.clone(), targets) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(targets, 3.0), targets) == pytest.approx(0.0, abs=1e-12)
    noisy = targets + 0.5 * torch.randn(500, generator=g, dtype=torch.float64)
    ev = explained_variance(noisy, targets)
    expected = 1 - (targets - noisy).var().item() / targets.var().item()
    assert ev == pytest.approx(expected)
    assert 0.0 < ev < 1.0
    # worse than a constant: negative
    assert explained_variance(-targets, targets) < 0
    assert isinstance(ev, float)
    # constant targets: undefined
    assert math.isnan(explained_variance(torch.randn(5), torch.ones(5)))


def test_normalize_advantages():
    g = torch.Generator().manual_seed(3)
    adv = torch.randn(100, generator=g) * 5 + 7
    out = normalize_advantages(adv)
    assert abs(out.mean().item()) < 1e-5
    assert out.std().item() == pytest.approx(1.0, abs=1e-5)
    single = torch.tensor([4.0])
    assert torch.equal(normalize_advantages(single), single)


def test_entropy_bonus_and_combined_loss():
    assert entropy_bonus(torch.tensor([1.0, 2.0, 3.0])).item() == pytest.approx(2.0)
    total = ppo_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), vf_coef=0.5, ent_coef=0.1)
    assert total.item() == pytest.approx(1.0 + 0.5 * 2.0 - 0.1 * 3.0)

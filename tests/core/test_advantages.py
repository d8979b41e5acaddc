"""Rewards-to-go and GAE against hand-computed values and their defining identities."""

from __future__ import annotations

import math

import pytest
import torch

from clippo.core.advantages import (
    PYTHON_LOOP_MAX_ENVS,
    compute_gae,
    discounted_rewards_to_go,
    discounted_sums,
    next_values_of,
)
from clippo.core.losses import explained_variance

F64 = torch.float64


def t(rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


def flags(rows):
    return torch.tensor(rows, dtype=torch.bool)


# 3 steps x 2 envs, gamma = 0.9, lambda = 0.8 (gamma * lambda = 0.72).
# env 0: no episode end, bootstraps from last_value = 2.0 at the rollout cut.
# env 1: terminated at t = 1 (t = 2 is the next-step autoreset step), last_value = 1.0.
REWARDS = [[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]]
VALUES = [[0.5, 0.2], [1.0, 0.4], [1.5, 0.6]]
LAST_VALUE = [2.0, 1.0]
TERMINATED = [[False, False], [False, True], [False, False]]
NO_FLAGS = [[False, False], [False, False], [False, False]]


def test_rewards_to_go_hand_computed():
    returns = discounted_rewards_to_go(
        t(REWARDS), t(VALUES), flags(TERMINATED), flags(NO_FLAGS), t(LAST_VALUE), gamma=0.9
    )
    # env 0: R2 = 3 + 0.9 * 2.0 = 4.8; R1 = 2 + 0.9 * 4.8 = 6.32; R0 = 1 + 0.9 * 6.32 = 6.688
    # env 1: R2 = 1 + 0.9 * 1.0 = 1.9; R1 = 1 (terminated: nothing bootstrapped); R0 = 1 + 0.9 * 1 = 1.9
    expected = t([[6.688, 1.9], [6.32, 1.0], [4.8, 1.9]])
    torch.testing.assert_close(returns, expected, rtol=0, atol=1e-12)


def test_gae_hand_computed():
    advantages, returns = compute_gae(
        t(REWARDS), t(VALUES), flags(TERMINATED), flags(NO_FLAGS), t(LAST_VALUE), gamma=0.9, gae_lambda=0.8
    )
    # env 0 deltas: d0 = 1 + 0.9*1.0 - 0.5 = 1.4; d1 = 2 + 0.9*1.5 - 1.0 = 2.35; d2 = 3 + 0.9*2.0 - 1.5 = 3.3
    #   A2 = 3.3; A1 = 2.35 + 0.72*3.3 = 4.726; A0 = 1.4 + 0.72*4.726 = 4.80272
    # env 1 deltas: d0 = 1 + 0.9*0.4 - 0.2 = 1.16; d1 = 1 + 0 - 0.4 = 0.6 (terminated);
    #   d2 = 1 + 0.9*1.0 - 0.6 = 1.3
    #   A2 = 1.3; A1 = 0.6 (no flow across the episode end); A0 = 1.16 + 0.72*0.6 = 1.592
    expected_adv = t([[4.80272, 1.592], [4.726, 0.6], [3.3, 1.3]])
    torch.testing.assert_close(advantages, expected_adv, rtol=0, atol=1e-12)
    # returns = advantages + values
    expected_ret = t([[5.30272, 1.792], [5.726, 1.0], [4.8, 1.9]])
    torch.testing.assert_close(returns, expected_ret, rtol=0, atol=1e-12)


def test_gae_and_rewards_to_go_truncation_bootstraps_from_final_observation_value():
    # Same as env 1 above, but the episode is truncated (time limit) at t = 1 instead of terminated.
    rewards = t([[1.0], [1.0], [1.0]])
    values = t([[0.2], [0.4], [0.6]])
    truncated = flags([[False], [True], [False]])
    terminated = flags([[False], [False], [False]])
    last_value = t([1.0])
    advantages, returns = compute_gae(rewards, values, terminated, truncated, last_value, 0.9, 0.8)
    # d1 = 1 + 0.9 * values[2] - 0.4 = 1 + 0.54 - 0.4 = 1.14, and nothing flows back from A2:
    # A2 = 1 + 0.9*1.0 - 0.6 = 1.3; A1 = 1.14; A0 = (1 + 0.9*0.4 - 0.2) + 0.72 * 1.14 = 1.16 + 0.8208 = 1.9808
    torch.testing.assert_close(advantages, t([[1.9808], [1.14], [1.3]]), rtol=0, atol=1e-12)
    torch.testing.assert_close(returns, t([[2.1808], [1.54], [1.9]]), rtol=0, atol=1e-12)
    rtg = discounted_rewards_to_go(rewards, values, terminated, truncated, last_value, 0.9)
    # R2 = 1 + 0.9 * 1.0 = 1.9; R1 = 1 + 0.9 * 0.6 = 1.54; R0 = 1 + 0.9 * 1.54 = 2.386
    torch.testing.assert_close(rtg, t([[2.386], [1.54], [1.9]]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", ["gae", "rtg"])
def test_terminated_step_does_not_bootstrap_but_truncated_step_does(fn):
    """Changing the value after an episode end matters for truncation only."""
    rewards = t([[1.0], [1.0], [1.0]])
    terminated = flags([[False], [True], [False]])
    truncated = flags([[False], [False], [False]])
    last_value = t([0.0])

    def run(values, term, trunc):
        if fn == "gae":
            return compute_gae(rewards, values, term, trunc, last_value, 0.9, 0.8)[0]
        return discounted_rewards_to_go(rewards, values, term, trunc, last_value, 0.9)

    base = t([[0.2], [0.4], [0.6]])
    bumped = t([[0.2], [0.4], [100.6]])  # the value of the final observation of the episode
    # terminated: steps 0 and 1 ignore values[2]
    a, b = run(base, terminated, truncated), run(bumped, terminated, truncated)
    assert torch.equal(a[:2], b[:2])
    # truncated: step 1 bootstraps gamma * values[2]; step 0 sees it through step 1
    a, b = run(base, truncated, terminated), run(bumped, truncated, terminated)
    assert torch.allclose(b[1] - a[1], t([0.9 * 100.0]), rtol=0, atol=1e-9)
    assert not torch.allclose(a[0], b[0])


def test_rollout_cut_bootstraps_from_last_value_and_not_across_episode_end():
    rewards = t([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    values = torch.zeros(3, 2, dtype=F64)
    terminated = flags([[False, True], [False, False], [False, False]])  # env 1 ended at t = 0
    truncated = flags(NO_FLAGS)
    for gae_lambda in (0.8, 1.0):
        adv0, _ = compute_gae(rewards, values, terminated, truncated, t([0.0, 0.0]), 0.9, gae_lambda)
        adv1, _ = compute_gae(rewards, values, terminated, truncated, t([10.0, 10.0]), 0.9, gae_lambda)
        diff = adv1 - adv0
        # env 0: the bootstrap reaches every step discounted by (gamma * lambda)^k * gamma
        decay = 0.9 * gae_lambda
        expected_env0 = t([decay**2 * 9.0, decay * 9.0, 9.0])
        torch.testing.assert_close(diff[:, 0], expected_env0, rtol=0, atol=1e-12)
        # env 1: after its episode ended at t = 0, only later steps see the bootstrap
        assert diff[0, 1] == 0.0
        torch.testing.assert_close(diff[1:, 1], expected_env0[1:], rtol=0, atol=1e-12)
    rtg0 = discounted_rewards_to_go(rewards, values, terminated, truncated, t([0.0, 0.0]), 0.9)
    rtg1 = discounted_rewards_to_go(rewards, values, terminated, truncated, t([10.0, 10.0]), 0.9)
    torch.testing.assert_close(rtg1 - rtg0, t([[8.1 * 0.9, 0.0], [8.1, 8.1], [9.0, 9.0]]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_lambda_one_gives_rewards_to_go_minus_values(seed):
    g = torch.Generator().manual_seed(seed)
    steps, envs = 37, 5
    rewards = torch.randn(steps, envs, generator=g, dtype=F64)
    values = torch.randn(steps, envs, generator=g, dtype=F64)
    last_value = torch.randn(envs, generator=g, dtype=F64)
    terminated = torch.rand(steps, envs, generator=g) < 0.15
    truncated = (torch.rand(steps, envs, generator=g) < 0.15) & ~terminated
    assert terminated.any() and truncated.any()
    gamma = 0.97
    advantages, returns = compute_gae(rewards, values, terminated, truncated, last_value, gamma, 1.0)
    rtg = discounted_rewards_to_go(rewards, values, terminated, truncated, last_value, gamma)
    torch.testing.assert_close(advantages, rtg - values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, rtg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_lambda_zero_gives_one_step_td_errors(seed):
    g = torch.Generator().manual_seed(seed)
    steps, envs = 11, 3
    rewards = torch.randn(steps, envs, generator=g, dtype=F64)
    values = torch.randn(steps, envs, generator=g, dtype=F64)
    last_value = torch.randn(envs, generator=g, dtype=F64)
    terminated = torch.rand(steps, envs, generator=g) < 0.3
    truncated = (torch.rand(steps, envs, generator=g) < 0.3) & ~terminated
    advantages, _ = compute_gae(rewards, values, terminated, truncated, last_value, 0.9, 0.0)
    next_values = torch.cat([values[1:], last_value[None]])
    expected = rewards + 0.9 * next_values * (~terminated) - values
    torch.testing.assert_close(advantages, expected, rtol=1e-12, atol=1e-12)


def test_rewards_to_go_without_episode_ends_is_plain_discounted_sum():
    rewards = t([[1.0], [2.0], [4.0], [8.0]])
    values = torch.zeros(4, 1, dtype=F64)
    none = torch.zeros(4, 1, dtype=torch.bool)
    rtg = discounted_rewards_to_go(rewards, values, none, none, t([16.0]), 0.5)
    # R3 = 8 + 0.5 * 16 = 16; R2 = 4 + 0.5 * 16 = 12; R1 = 2 + 0.5 * 12 = 8; R0 = 1 + 0.5 * 8 = 5
    torch.testing.assert_close(rtg, t([[5.0], [8.0], [12.0], [16.0]]), rtol=0, atol=1e-12)


def test_next_values_of_shifts_and_appends_last_value():
    values = t([[1.0, 2.0], [3.0, 4.0]])
    out = next_values_of(values, t([5.0, 6.0]))
    assert torch.equal(out, t([[3.0, 4.0], [5.0, 6.0]]))


def test_inputs_are_not_modified_and_float32_works():
    rewards = torch.ones(4, 2)
    values = torch.full((4, 2), 0.5)
    terminated = torch.zeros(4, 2, dtype=torch.bool)
    terminated[1, 0] = True
    truncated = torch.zeros(4, 2, dtype=torch.bool)
    copies = [x.clone() for x in (rewards, values, terminated, truncated)]
    advantages, returns = compute_gae(rewards, values, terminated, truncated, torch.zeros(2), 0.99, 0.95)
    assert advantages.dtype == torch.float32 and advantages.shape == (4, 2)
    for before, after in zip(copies, (rewards, values, terminated, truncated), strict=False):
        assert torch.equal(before, after)
    torch.testing.assert_close(returns, advantages + values)


@pytest.mark.parametrize("num_envs", [1, 3, PYTHON_LOOP_MAX_ENVS - 1, PYTHON_LOOP_MAX_ENVS, 17])
def test_discounted_sums_match_the_recursion_on_both_paths(num_envs):
    # Few envs take the loop on Python floats, many the loop over numpy rows: both are the
    # recursion y_t = x_t + d_t y_{t+1} (checked here in float64, with episode ends as d_t = 0).
    generator = torch.Generator().manual_seed(num_envs)
    x = torch.randn(50, num_envs, generator=generator)
    d = 0.9 * (torch.rand(50, num_envs, generator=generator) > 0.1).float()
    expected = torch.zeros(50, num_envs, dtype=F64)
    later = torch.zeros(num_envs, dtype=F64)
    for step in range(49, -1, -1):
        later = x[step].double() + d[step].double() * later
        expected[step] = later
    result = discounted_sums(x, d)
    assert result.dtype == x.dtype and result.shape == x.shape
    torch.testing.assert_close(result.double(), expected, rtol=1e-5, atol=1e-5)


def test_explained_variance_is_one_minus_the_variance_ratio():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(200, generator=generator)
    predictions = targets + 0.5 * torch.randn(200, generator=generator)
    expected = 1.0 - float((targets - predictions).var() / targets.var())
    assert explained_variance(predictions, targets) == pytest.approx(expected, rel=1e-5)
    assert explained_variance(targets, targets) == pytest.approx(1.0)
    assert math.isnan(explained_variance(predictions, torch.ones(200)))
    assert math.isnan(explained_variance(predictions[:1], targets[:1]))


def test_half_precision_inputs_give_the_float32_results():
    # numpy has no bfloat16: such inputs are computed in float32 (the torch path's type promotion aside)
    generator = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(20, 3, generator=generator), torch.randn(20, 3, generator=generator)
    terminated, truncated = torch.rand(20, 3, generator=generator) > 0.9, torch.zeros(20, 3, dtype=torch.bool)
    last_value = torch.randn(3, generator=generator)
    half = [x.bfloat16() for x in (rewards, values)]
    expected, _ = compute_gae(
        *(x.float() for x in half), terminated, truncated, last_value.bfloat16().float(), 0.9, 0.8
    )
    advantages, _ = compute_gae(*half, terminated, truncated, last_value.bfloat16(), 0.9, 0.8)
    torch.testing.assert_close(advantages.float(), expected, rtol=1e-2, atol=1e-2)
    targets = torch.randn(50, generator=generator)
    predictions = targets + 0.3 * torch.randn(50, generator=generator)
    assert explained_variance(predictions.bfloat16(), targets.bfloat16()) == pytest.approx(
        explained_variance(predictions, targets), abs=0.05
    )

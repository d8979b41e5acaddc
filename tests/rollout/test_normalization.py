"""Running statistics, observation normalization and reward scaling."""

from __future__ import annotations

import numpy as np
import pytest

from clippo.rollout.normalization import (
    ObservationNormalizer,
    RewardScaler,
    RunningMeanStd,
    clip_,
)


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 3)) for n in (1, 7, 50, 13)]
    rms = RunningMeanStd(shape=(3,), epsilon=1e-12)
    for batch in batches:
        rms.update(batch)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, everything.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(rms.var, everything.var(axis=0), rtol=1e-9)
    assert rms.count == pytest.approx(len(everything))
    assert rms.mean.dtype == np.float64


@pytest.mark.parametrize("shape", [(), (3,)])
def test_running_mean_std_batch_moments_are_numpys_bit_for_bit(shape):
    """The per-step update skips np.mean/np.var's overhead but must compute the same numbers."""
    batch = np.random.default_rng(2).normal(5.0, 3.0, size=(37, *shape))
    seen = []
    rms = RunningMeanStd(shape=shape)
    rms.update_from_moments = lambda mean, var, count: seen.append((mean, var, count))
    rms.update(batch)
    ((mean, var, count),) = seen
    np.testing.assert_array_equal(mean, batch.mean(axis=0))
    np.testing.assert_array_equal(var, batch.var(axis=0))
    assert count == 37


def test_clip_matches_np_clip_in_place():
    x = np.array([-7.0, -2.0, 0.5, 2.0, 9.0, np.nan, np.inf, -np.inf])
    expected = np.clip(x, -2.0, 2.0)
    out = clip_(x, 2.0)
    assert out is x
    np.testing.assert_array_equal(out, expected)


def test_running_mean_std_empty_batch_is_ignored():
    rms = RunningMeanStd(shape=(2,))
    rms.update(np.ones((3, 2)))
    before = (rms.mean.copy(), rms.var.copy(), rms.count)
    rms.update(np.zeros((0, 2)))
    np.testing.assert_array_equal(rms.mean, before[0])
    np.testing.assert_array_equal(rms.var, before[1])
    assert rms.count == before[2]


def test_running_mean_std_state_dict_round_trip():
    rms = RunningMeanStd(shape=(2,))
    rms.update(np.random.default_rng(1).normal(size=(20, 2)))
    other = RunningMeanStd(shape=(2,))
    other.load_state_dict(rms.state_dict())
    np.testing.assert_array_equal(other.mean, rms.mean)
    np.testing.assert_array_equal(other.var, rms.var)
    assert other.count == rms.count
    # the copy is independent
    rms.update(np.ones((5, 2)) * 100)
    assert not np.array_equal(other.mean, rms.mean)


def test_observation_normalizer_standardizes_and_clips():
    rng = np.random.default_rng(2)
    norm = ObservationNormalizer((2,), clip=5.0, enabled=True)
    data = rng.normal([10.0, -4.0], [3.0, 0.5], size=(5000, 2))
    out = norm(data, update=True)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=0), [0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(out.std(axis=0), [1.0, 1.0], atol=1e-3)
    far = norm(np.array([[1e6, -1e6]]))
    np.testing.assert_array_equal(far, [[5.0, -5.0]])


def test_observation_normalizer_frozen_without_update():
    norm = ObservationNormalizer((1,), clip=10.0, enabled=True)
    norm(np.array([[1.0], [3.0]]), update=True)
    mean, var = norm.stats.mean.copy(), norm.stats.var.copy()
    norm(np.array([[100.0]]))  # update=False is the default
    np.testing.assert_array_equal(norm.stats.mean, mean)
    np.testing.assert_array_equal(norm.stats.var, var)


def test_observation_normalizer_disabled_is_identity():
    norm = ObservationNormalizer((2,), clip=1.0, enabled=False)
    obs = np.array([[50.0, -50.0]])
    np.testing.assert_array_equal(norm(obs, update=True), obs)
    assert norm.stats.count < 1  # nothing was recorded


def test_reward_scaler_divides_by_std_of_discounted_return_without_mean_shift():
    scaler = RewardScaler(num_envs=1, gamma=0.5, clip=100.0, enabled=True)
    valid = np.array([True])
    not_done = np.array([False])
    outs = [scaler(np.array([1.0]), not_done, valid) for _ in range(4)]
    # discounted returns seen: 1, 1.5, 1.75, 1.875
    returns = np.array([1.0, 1.5, 1.75, 1.875])
    np.testing.assert_allclose(scaler.returns, [1.875])
    np.testing.assert_allclose(scaler.stats.mean, returns.mean(), rtol=1e-3)
    np.testing.assert_allclose(scaler.stats.var, returns.var(), rtol=1e-3)
    expected_last = 1.0 / np.sqrt(scaler.stats.var + 1e-8)
    assert outs[-1][0] == pytest.approx(expected_last, rel=1e-5)
    # constant positive rewards stay positive (no mean is subtracted)
    assert all(o[0] > 0 for o in outs)


def test_reward_scaler_resets_on_done_and_ignores_invalid_steps():
    scaler = RewardScaler(num_envs=2, gamma=0.9, clip=10.0, enabled=True)
    scaler(np.array([1.0, 1.0]), np.array([False, True]), np.array([True, True]))
    np.testing.assert_allclose(scaler.returns, [1.0, 0.0])
    count = scaler.stats.count
    # env 1 is on an autoreset step: its reward does not enter its return or the statistics
    scaler(np.array([1.0, 7.0]), np.array([False, False]), np.array([True, False]))
    np.testing.assert_allclose(scaler.returns, [1.9, 0.0])
    assert scaler.stats.count == pytest.approx(count + 1)


def test_reward_scaler_clips_and_disabled_is_identity():
    scaler = RewardScaler(num_envs=1, gamma=0.99, clip=2.0, enabled=True)
    for _ in range(20):
        scaler(np.array([0.01]), np.array([False]), np.array([True]))
    big = scaler(np.array([1e6]), np.array([False]), np.array([True]))
    assert big[0] == 2.0
    off = RewardScaler(num_envs=1, gamma=0.99, clip=2.0, enabled=False)
    np.testing.assert_array_equal(off(np.array([123.0]), np.array([False]), np.array([True])), [123.0])


def test_reward_scaler_state_dict_round_trip():
    scaler = RewardScaler(num_envs=3, gamma=0.9, clip=10.0, enabled=True)
    for _ in range(5):
        scaler(np.array([1.0, 2.0, 3.0]), np.zeros(3, bool), np.ones(3, bool))
    other = RewardScaler(num_envs=3, gamma=0.9, clip=10.0, enabled=True)
    other.load_state_dict(scaler.state_dict())
    np.testing.assert_array_equal(other.returns, scaler.returns)
    np.testing.assert_array_equal(other.stats.var, scaler.stats.var)
    # a different number of envs keeps its own (zero) running returns but loads the statistics
    fewer = RewardScaler(num_envs=2, gamma=0.9, clip=10.0, enabled=True)
    fewer.load_state_dict(scaler.state_dict())
    np.testing.assert_array_equal(fewer.returns, [0.0, 0.0])
    np.testing.assert_array_equal(fewer.stats.var, scaler.stats.var)


def test_one_sample_batches_match_the_statistics_of_the_whole_stream():
    """One env updates with one-row batches (a fast path): same moments as numpy over all rows."""
    rng = np.random.default_rng(3)
    data = rng.normal(2.0, 3.0, size=(200, 5))
    stats = RunningMeanStd((5,), epsilon=1e-12)
    for row in data:
        stats.update(row[None])
    np.testing.assert_allclose(stats.mean, data.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.var, data.var(axis=0), rtol=1e-6)

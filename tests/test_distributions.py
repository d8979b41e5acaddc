"""Action distributions against torch.distributions, sampling, env mapping and unsupported spaces."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import distributions as D

from clippo.distributions import Categorical, DiagGaussian, MultiCategorical, log_softmax, make_distribution


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Categorical
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 6, 7, 8, 18])
@pytest.mark.parametrize("rows", [5, 8, 255, 256, 8192])
def test_log_softmax_is_torchs_bit_for_bit(size, rows):
    g = gen(size * rows)
    logits = torch.randn(rows, size, generator=g) * 5
    logits[torch.rand(rows, size, generator=g) < 0.05] = -1e30  # near-impossible actions
    assert torch.equal(log_softmax(logits), torch.log_softmax(logits, dim=-1))
    assert torch.equal(log_softmax(logits[:, ::2]), torch.log_softmax(logits[:, ::2], dim=-1))  # strided
    # with a gradient: the same values and the same backward as torch's own
    leaf = logits.clone().requires_grad_(True)
    weights = torch.randn(rows, size, generator=g)
    ours = torch.autograd.grad((log_softmax(leaf) * weights).sum(), leaf)[0]
    theirs = torch.autograd.grad((torch.log_softmax(leaf, dim=-1) * weights).sum(), leaf)[0]
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("seed", range(3))
def test_categorical_matches_torch(seed):
    g = gen(seed)
    dist = make_distribution(spaces.Discrete(5))
    assert isinstance(dist, Categorical) and dist.num_outputs == 5 and dist.action_shape == ()
    logits = torch.randn(64, 5, generator=g, dtype=torch.float64) * 3
    actions = torch.randint(0, 5, (64,), generator=g)
    reference = D.Categorical(logits=logits)
    torch.testing.assert_close(dist.log_prob(logits, actions), reference.log_prob(actions))
    torch.testing.assert_close(dist.entropy(logits), reference.entropy())


def test_categorical_sampling_frequencies_and_mode(draw):
    dist = make_distribution(spaces.Discrete(3))
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).expand(20000, 3)
    samples = draw(dist, logits, False, gen(4))
    assert samples.shape == (20000,) and samples.dtype == torch.int64
    freq = torch.bincount(samples, minlength=3).double() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), atol=0.02, rtol=0)
    det = draw(dist, torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]]), True, None)
    assert det.tolist() == [1, 0]


def test_categorical_sampling_is_reproducible_with_generator(draw):
    dist = make_distribution(spaces.Discrete(4))
    logits = torch.zeros(100, 4)
    a = draw(dist, logits, False, gen(7))
    b = draw(dist, logits, False, gen(7))
    c = draw(dist, logits, False, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_discrete_start_offset():
    dist = make_distribution(spaces.Discrete(3, start=5))
    assert dist.num_outputs == 3
    actions = np.array([0, 1, 2])
    assert dist.to_env(actions).tolist() == [5, 6, 7]
    space = spaces.Discrete(3, start=5)
    assert all(space.contains(int(a)) for a in dist.to_env(actions))
    # start 0: unchanged
    assert make_distribution(spaces.Discrete(3)).to_env(actions).tolist() == [0, 1, 2]
    # negative start
    assert make_distribution(spaces.Discrete(2, start=-1)).to_env(np.array([0, 1])).tolist() == [-1, 0]


# ------------------------------------------------------------------------------------------------
# MultiCategorical
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_multicategorical_matches_independent_torch_categoricals(seed):
    g = gen(seed)
    sizes = [3, 4, 2]
    dist = make_distribution(spaces.MultiDiscrete(sizes))
    assert isinstance(dist, MultiCategorical)
    assert dist.num_outputs == 9 and dist.action_shape == (3,)
    logits = torch.randn(32, 9, generator=g, dtype=torch.float64) * 2
    actions = torch.stack([torch.randint(0, n, (32,), generator=g) for n in sizes], dim=-1)
    parts = [D.Categorical(logits=p) for p in logits.split(sizes, dim=-1)]
    expected_lp = sum(p.log_prob(actions[:, i]) for i, p in enumerate(parts))
    expected_ent = sum(p.entropy() for p in parts)
    torch.testing.assert_close(dist.log_prob(logits, actions), expected_lp)
    torch.testing.assert_close(dist.entropy(logits), expected_ent)


def test_multicategorical_sampling_shape_bounds_and_mode(draw):
    sizes = [3, 4]
    dist = make_distribution(spaces.MultiDiscrete(sizes))
    logits = torch.randn(500, 7, generator=gen(1))
    samples = draw(dist, logits, False, gen(2))
    assert samples.shape == (500, 2) and samples.dtype == torch.int64
    assert samples[:, 0].min() >= 0 and samples[:, 0].max() <= 2
    assert samples[:, 1].min() >= 0 and samples[:, 1].max() <= 3
    # both components are actually sampled (not always the argmax)
    assert len(torch.unique(samples[:, 0])) == 3 and len(torch.unique(samples[:, 1])) == 4
    mode = draw(dist, logits, True, None)
    expected = torch.stack([logits[:, :3].argmax(-1), logits[:, 3:].argmax(-1)], dim=-1)
    assert torch.equal(mode, expected)
    # sampling respects the per-component probabilities
    peaked = torch.tensor([[0.0, 20.0, 0.0, 0.0, 0.0, 0.0, 20.0]]).expand(50, 7)
    peaked_samples = draw(dist, peaked, False, gen(3))
    assert (peaked_samples[:, 0] == 1).all() and (peaked_samples[:, 1] == 3).all()


def test_multicategorical_sampling_frequencies(draw):
    dist = make_distribution(spaces.MultiDiscrete([2, 3]))
    probs = [torch.tensor([0.7, 0.3]), torch.tensor([0.1, 0.3, 0.6])]
    logits = torch.cat([p.log() for p in probs])[None].expand(20000, 5)
    samples = draw(dist, logits, False, gen(9))
    for i, p in enumerate(probs):
        freq = torch.bincount(samples[:, i], minlength=len(p)).double() / 20000
        torch.testing.assert_close(freq, p.double(), atol=0.02, rtol=0)


@pytest.mark.parametrize(
    "space",
    [spaces.Discrete(4), spaces.MultiDiscrete([3, 2]), spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)],
    ids=["Discrete", "MultiDiscrete", "Box"],
)
def test_sample_with_log_prob_agrees_with_log_prob(space):
    """Where a distribution samples and scores in one pass, the score is that of log_prob."""
    dist = make_distribution(space)
    if isinstance(dist, DiagGaussian):
        dist.log_std = torch.tensor([0.3, -0.4])
    params = torch.randn(50, dist.num_outputs, generator=gen(10))
    if "noise" in inspect.signature(dist.sample_with_log_prob).parameters:
        actions, logprobs = dist.sample_with_log_prob(params, dist.noise((50,), gen(11)))
        mode, mode_lp = dist.sample_with_log_prob(params, None)
    else:
        actions, logprobs = dist.sample_with_log_prob(params, False, gen(11))
        mode, mode_lp = dist.sample_with_log_prob(params, True, None)
    torch.testing.assert_close(logprobs, dist.log_prob(params, actions))
    torch.testing.assert_close(mode_lp, dist.log_prob(params, mode))
    lp, ent = dist.log_prob_and_entropy(params, actions)
    torch.testing.assert_close(lp, dist.log_prob(params, actions))
    torch.testing.assert_close(ent, dist.entropy(params))


def test_multidiscrete_start_offset():
    space = spaces.MultiDiscrete([3, 4], start=[1, -2])
    dist = make_distribution(space)
    out = dist.to_env(np.array([[0, 0], [2, 3]]))
    assert out.tolist() == [[1, -2], [3, 1]]
    assert all(space.contains(a) for a in out)


# ------------------------------------------------------------------------------------------------
# DiagGaussian
# ------------------------------------------------------------------------------------------------
def gaussian(shape=(3,), low=-1.0, high=1.0, log_std=None):
    dist = make_distribution(spaces.Box(low, high, shape=shape, dtype=np.float32))
    assert isinstance(dist, DiagGaussian)
    n = int(np.prod(shape))
    dist.log_std = log_std if log_std is not None else torch.zeros(n)
    return dist


@pytest.mark.parametrize("seed", range(3))
def test_gaussian_matches_torch_independent_normal(seed):
    g = gen(seed)
    log_std = torch.randn(3, generator=g, dtype=torch.float64) * 0.5
    dist = gaussian(log_std=log_std)
    mean = torch.randn(40, 3, generator=g, dtype=torch.float64)
    actions = torch.randn(40, 3, generator=g, dtype=torch.float64) * 2
    reference = D.Independent(D.Normal(mean, log_std.exp().expand(40, 3)), 1)
    torch.testing.assert_close(dist.log_prob(mean, actions), reference.log_prob(actions))
    entropy = dist.entropy(mean)
    assert entropy.shape == (40,)
    torch.testing.assert_close(entropy, reference.entropy())


def test_gaussian_log_prob_gradient_reaches_log_std():
    log_std = torch.zeros(2, requires_grad=True)
    dist = gaussian(shape=(2,), log_std=log_std)
    lp = dist.log_prob(torch.zeros(1, 2), torch.tensor([[2.0, 0.0]])).sum()
    lp.backward()
    # d/dlog_std of (-0.5 z^2 - log_std) with z = a / std: z^2 - 1
    torch.testing.assert_close(log_std.grad, torch.tensor([3.0, -1.0]))


def test_gaussian_sampling_statistics_and_mode(draw):
    log_std = torch.log(torch.tensor([0.5, 2.0]))
    dist = gaussian(shape=(2,), log_std=log_std)
    mean = torch.tensor([[1.0, -3.0]]).expand(20000, 2)
    samples = draw(dist, mean, False, gen(5))
    assert samples.shape == (20000, 2)
    torch.testing.assert_close(samples.mean(0), torch.tensor([1.0, -3.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.tensor([0.5, 2.0]), atol=0.05, rtol=0)
    assert torch.equal(draw(dist, mean, True, None), mean)


def test_box_to_env_clips_but_stored_sample_is_unclipped(draw):
    dist = gaussian(shape=(2,), low=-1.0, high=1.0, log_std=torch.full((2,), 1.5))
    mean = torch.zeros(1000, 2)
    samples = draw(dist, mean, False, gen(6))
    assert samples.abs().max() > 1.0  # std e^1.5 ~ 4.5: many samples fall outside the bounds
    before = samples.clone()
    env_actions = dist.to_env(samples.numpy())
    assert env_actions.min() >= -1.0 and env_actions.max() <= 1.0
    assert torch.equal(samples, before)  # the stored sample is not modified in place
    inside = (samples.abs() <= 1.0).numpy()
    np.testing.assert_array_equal(env_actions[inside], samples.numpy()[inside])
    # log_prob of the unclipped sample is the exact Gaussian density, not that of the clipped action
    reference = D.Independent(D.Normal(mean, torch.full((1000, 2), np.exp(1.5))), 1)
    torch.testing.assert_close(dist.log_prob(mean, samples), reference.log_prob(samples))


def test_box_to_env_restores_shape_and_per_dimension_bounds():
    space = spaces.Box(low=np.array([[-1.0, 0.0], [-2.0, 5.0]], dtype=np.float32),
                       high=np.array([[1.0, 1.0], [2.0, 6.0]], dtype=np.float32))
    dist = make_distribution(space)
    assert dist.num_outputs == 4 and dist.action_shape == (4,)
    flat = np.array([[10.0, -10.0, 0.5, 0.0], [-10.0, 10.0, -3.0, 5.5]], dtype=np.float32)
    out = dist.to_env(flat)
    assert out.shape == (2, 2, 2)
    np.testing.assert_array_equal(out[0], [[1.0, 0.0], [0.5, 5.0]])
    np.testing.assert_array_equal(out[1], [[-1.0, 1.0], [-2.0, 5.5]])
    assert all(space.contains(a) for a in out)


def test_unbounded_box_is_not_clipped():
    dist = make_distribution(spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32))
    actions = np.array([[100.0, -100.0]], dtype=np.float32)
    np.testing.assert_array_equal(dist.to_env(actions), actions)


# ------------------------------------------------------------------------------------------------
# unsupported spaces
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "space, name",
    [
        (spaces.Dict({"a": spaces.Discrete(2)}), "Dict"),
        (spaces.MultiBinary(3), "MultiBinary"),
        (spaces.Text(5), "Text"),
        (spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3))), "Tuple"),
    ],
)
def test_unsupported_spaces_raise_value_error_naming_the_space(space, name):
    with pytest.raises(ValueError, match=name) as info:
        make_distribution(space)
    assert "not supported" in str(info.value)


def test_integer_box_and_multidimensional_multidiscrete_are_rejected():
    with pytest.raises(ValueError, match="Box"):
        make_distribution(spaces.Box(0, 10, shape=(2,), dtype=np.int64))
    with pytest.raises(ValueError, match="MultiDiscrete"):
        make_distribution(spaces.MultiDiscrete(np.array([[2, 3], [4, 5]])))

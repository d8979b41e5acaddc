"""Action distributions against torch.distributions, sampling, env mapping and unsupported spaces."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import distributions as D

from clippo.networks.distributions import (
    MASKED_LOGIT,
    Bernoulli,
    Categorical,
    Composite,
    DiagGaussian,
    MultiCategorical,
    log_softmax,
    make_distribution,
)


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
    space = spaces.Box(
        low=np.array([[-1.0, 0.0], [-2.0, 5.0]], dtype=np.float32),
        high=np.array([[1.0, 1.0], [2.0, 6.0]], dtype=np.float32),
    )
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
        (spaces.Text(5), "Text"),
        (spaces.Sequence(spaces.Discrete(2)), "Sequence"),
        (spaces.Graph(spaces.Box(-1, 1, (2,)), None), "Graph"),
        (spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Text(3)}), "Text"),  # a part is named
        (spaces.Box(0, 3, (2,), dtype=np.int64), "floating dtype"),
    ],
)
def test_unsupported_spaces_raise_value_error_naming_the_space(space, name):
    with pytest.raises(ValueError, match=name) as info:
        make_distribution(space)
    assert "not supported" in str(info.value) and "\n" not in str(info.value)


def test_integer_box_and_multidimensional_multidiscrete_are_rejected():
    with pytest.raises(ValueError, match="Box"):
        make_distribution(spaces.Box(0, 10, shape=(2,), dtype=np.int64))
    with pytest.raises(ValueError, match="MultiDiscrete"):
        make_distribution(spaces.MultiDiscrete(np.array([[2, 3], [4, 5]])))


# ------------------------------------------------------------------------------------------------
# invalid-action masks (Categorical, MultiCategorical)
# ------------------------------------------------------------------------------------------------
def test_masked_logits_give_zero_probability_and_finite_log_probs_entropy_and_gradient(draw):
    dist = make_distribution(spaces.Discrete(5))
    logits = (torch.randn(4, 5, generator=gen(0)) * 3).requires_grad_(True)
    masks = torch.tensor([[1, 0, 1, 0, 1], [0, 0, 0, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    masked = dist.mask(logits, masks)
    probs = torch.softmax(masked, dim=-1)
    assert torch.equal(probs[~masks], torch.zeros(int((~masks).sum())))  # exactly 0, not just small
    # over the valid actions: the renormalized distribution, as torch.distributions has it
    valid_logits = torch.where(masks, logits, torch.tensor(-float("inf")))
    reference = D.Categorical(logits=valid_logits)
    actions = torch.tensor([2, 3, 0, 1])
    torch.testing.assert_close(dist.log_prob(masked, actions), reference.log_prob(actions))
    entropy = dist.entropy(masked)
    assert torch.isfinite(entropy).all()
    torch.testing.assert_close(entropy, reference.entropy())
    assert entropy[1].item() == 0.0  # one valid action: a certain choice
    lp, ent = dist.log_prob_and_entropy(masked, actions)
    (lp.sum() + ent.sum()).backward()
    assert torch.isfinite(logits.grad).all() and torch.equal(logits.grad[~masks], torch.zeros(int((~masks).sum())))
    # a naive -inf mask makes the entropy NaN; MASKED_LOGIT does not
    assert torch.isnan(-(torch.softmax(valid_logits, -1) * torch.log_softmax(valid_logits, -1)).sum(-1)).any()
    assert MASKED_LOGIT > -float("inf")
    # sampling never picks a masked action, and the mode is the best valid one
    many = dist.mask(logits.detach()[3:].expand(20000, 5), masks[3:].expand(20000, 5))
    samples = draw(dist, many, False, gen(1))
    assert set(samples.unique().tolist()) == {1, 2}
    assert draw(dist, masked.detach(), True, None).tolist() == [
        int(torch.where(m, l, -1e9).argmax()) for l, m in zip(logits, masks, strict=False)
    ]


def test_an_all_masked_row_stays_finite():
    dist = make_distribution(spaces.Discrete(3))
    masked = dist.mask(torch.randn(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    assert torch.isfinite(dist.entropy(masked)).all() and torch.isfinite(dist.log_prob(masked, torch.tensor([1]))).all()


def test_multidiscrete_masks_each_component(draw):
    dist = make_distribution(spaces.MultiDiscrete([3, 4]))
    masks = torch.tensor([[0, 1, 0, 1, 0, 1, 1]], dtype=torch.bool).expand(5000, 7)
    logits = torch.randn(5000, 7, generator=gen(2))
    masked = dist.mask(logits, masks)
    samples = draw(dist, masked, False, gen(3))
    assert set(samples[:, 0].tolist()) == {1} and set(samples[:, 1].tolist()) == {0, 2, 3}
    assert torch.isfinite(dist.entropy(masked)).all()
    reference = D.Categorical(logits=torch.where(masks[:, 3:], logits[:, 3:], torch.tensor(-float("inf"))))
    torch.testing.assert_close(dist.entropy(masked), reference.entropy())  # component 0 has one choice: entropy 0


@pytest.mark.parametrize(
    "space", [spaces.Box(-1, 1, (2,)), spaces.MultiBinary(3), spaces.Dict({"a": spaces.Discrete(2)})]
)
def test_masks_on_other_spaces_raise_one_line(space):
    dist = make_distribution(space)
    assert not dist.maskable
    with pytest.raises(ValueError, match="masks are not supported"):
        dist.mask(torch.zeros(1, dist.num_outputs), torch.ones(1, dist.num_outputs, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# Bernoulli (MultiBinary)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_bernoulli_matches_torch_independent_bernoullis(seed):
    g = gen(seed)
    dist = make_distribution(spaces.MultiBinary(4))
    assert isinstance(dist, Bernoulli) and dist.num_outputs == 4 and dist.action_shape == (4,)
    logits = torch.randn(64, 4, generator=g, dtype=torch.float64) * 3
    actions = torch.randint(0, 2, (64, 4), generator=g)
    reference = D.Independent(D.Bernoulli(logits=logits), 1)
    torch.testing.assert_close(dist.log_prob(logits, actions), reference.log_prob(actions.double()))
    torch.testing.assert_close(dist.entropy(logits), reference.entropy())


def test_bernoulli_sampling_frequencies_mode_and_env_actions(draw):
    space = spaces.MultiBinary([2, 3])
    dist = make_distribution(space)
    assert dist.num_outputs == 6 and dist.action_shape == (6,)
    p = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.99, 0.02])
    logits = (p.log() - (1 - p).log())[None].expand(20000, 6)
    samples = draw(dist, logits, False, gen(4))
    assert samples.dtype == torch.int64 and set(samples.unique().tolist()) <= {0, 1}
    torch.testing.assert_close(samples.double().mean(0), p.double(), atol=0.02, rtol=0)
    assert draw(dist, logits[:1], True, None).tolist() == [[0, 0, 1, 0, 1, 0]]  # the mode: p > 0.5
    env_actions = dist.to_env(samples[:10].numpy())
    assert env_actions.shape == (10, 2, 3) and env_actions.dtype == space.dtype
    assert all(space.contains(a) for a in env_actions)


# ------------------------------------------------------------------------------------------------
# Composite (Tuple and Dict)
# ------------------------------------------------------------------------------------------------
HYBRID = spaces.Dict(
    {
        "tool": spaces.Discrete(3, start=1),
        "force": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32),
        "bits": spaces.MultiBinary(2),
        "grid": spaces.MultiDiscrete([2, 3]),
    }
)


def hybrid_distribution(space=HYBRID):
    dist = make_distribution(space)
    assert isinstance(dist, Composite)
    dist.bind_log_std(torch.tensor([0.3, -0.5], dtype=torch.float64))
    return dist


def test_composite_layout_log_prob_and_entropy_are_sums_over_parts():
    dist = hybrid_distribution()
    # Dict parts in the space's (sorted) key order: bits, force, grid, tool
    assert dist.keys == ["bits", "force", "grid", "tool"]
    assert dist.output_sizes == [2, 2, 5, 3] and dist.num_outputs == 12
    assert dist.action_widths == [2, 2, 2, 1] and dist.action_shape == (7,) and dist.action_dtype == torch.float32
    assert dist.gaussian_size == 2 and not dist.discrete
    g = gen(5)
    params = torch.randn(32, 12, generator=g, dtype=torch.float64)
    actions = dist.sample(params, dist.noise((32,), g)).double()
    bits, force, grid, tool = params.split([2, 2, 5, 3], dim=-1)
    parts = [
        (D.Independent(D.Bernoulli(logits=bits), 1), actions[:, 0:2]),
        (
            D.Independent(D.Normal(force, torch.tensor([0.3, -0.5], dtype=torch.float64).exp().expand(32, 2)), 1),
            actions[:, 2:4],
        ),
        (D.Categorical(logits=grid[:, :2]), actions[:, 4]),
        (D.Categorical(logits=grid[:, 2:]), actions[:, 5]),
        (D.Categorical(logits=tool), actions[:, 6]),
    ]
    expected_lp = sum(d.log_prob(a) for d, a in parts)
    expected_ent = sum(d.entropy() for d, _ in parts)
    torch.testing.assert_close(dist.log_prob(params, actions), expected_lp)
    torch.testing.assert_close(dist.entropy(params), expected_ent)
    lp, ent = dist.log_prob_and_entropy(params, actions)
    torch.testing.assert_close(lp, expected_lp)
    torch.testing.assert_close(ent, expected_ent)
    _, sampled_lp = dist.sample_with_log_prob(params, dist.noise((32,), g))
    assert sampled_lp.shape == (32,)


def test_composite_samples_mode_and_env_actions_fit_the_space(draw):
    dist = hybrid_distribution()
    params = torch.randn(200, 12, generator=gen(6))
    actions = draw(dist, params, False, gen(7))
    assert actions.shape == (200, 7) and actions.dtype == torch.float32
    env_actions = dist.to_env(actions.numpy())
    assert set(env_actions) == {"tool", "force", "bits", "grid"}
    assert env_actions["tool"].shape == (200,) and env_actions["tool"].dtype == np.int64
    assert env_actions["force"].shape == (200, 2) and env_actions["force"].dtype == np.float32
    assert env_actions["bits"].dtype == np.int8 and env_actions["grid"].dtype == np.int64
    for i in range(200):
        assert HYBRID.contains({key: value[i] for key, value in env_actions.items()})
    assert set(env_actions["tool"].tolist()) == {1, 2, 3}  # the space's start is added
    # the mode of each part: argmax, the mean, logit > 0
    mode = draw(dist, params[:3], True, None)
    torch.testing.assert_close(mode[:, 2:4], params[:3, 2:4])
    assert torch.equal(mode[:, 6], params[:3, 9:12].argmax(-1).float())
    assert torch.equal(mode[:, 0:2], (params[:3, 0:2] > 0).float())
    # one action (no batch dimension) comes back in the same structure
    single = dist.to_env(actions[0].numpy())
    assert HYBRID.contains(single)


def test_tuple_and_nested_spaces():
    space = spaces.Tuple(
        (spaces.Discrete(2), spaces.Dict({"x": spaces.Box(-2.0, 2.0, (1,), dtype=np.float32), "k": spaces.Discrete(4)}))
    )
    dist = make_distribution(space)
    dist.bind_log_std(torch.zeros(1))
    assert dist.num_outputs == 2 + 1 + 4 and dist.action_shape == (3,) and dist.gaussian_size == 1
    params = torch.randn(50, 7, generator=gen(8))
    actions = dist.sample(params, dist.noise((50,), gen(9)))
    env_actions = dist.to_env(actions.numpy())
    assert isinstance(env_actions, tuple) and isinstance(env_actions[1], dict)
    for i in range(50):
        assert space.contains((env_actions[0][i], {key: value[i] for key, value in env_actions[1].items()}))
    assert torch.isfinite(dist.log_prob(params, actions)).all() and dist.entropy(params).shape == (50,)


def test_composite_log_std_is_a_slice_of_the_policys_parameter():
    space = spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": spaces.Discrete(2), "c": spaces.Box(-1, 1, (1,))})
    dist = make_distribution(space)
    log_std = torch.nn.Parameter(torch.tensor([0.1, 0.2, 0.3]))
    dist.bind_log_std(log_std)
    a, _, c = dist.parts
    assert a.log_std.tolist() == pytest.approx([0.1, 0.2]) and c.log_std.tolist() == pytest.approx([0.3])
    with torch.no_grad():
        log_std.copy_(torch.tensor([1.0, 2.0, 3.0]))  # the slices follow the parameter
    assert c.log_std.item() == 3.0
    dist.log_prob(torch.zeros(1, 5), torch.ones(1, 4)).sum().backward()
    assert log_std.grad is not None and (log_std.grad != 0).all()

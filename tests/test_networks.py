"""The actor-critic: orthogonal init gains, shared vs separate structure, output shapes."""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from clippo import networks
from clippo.networks import BLOCK_ROWS, ActorCritic, layer, mlp_body, observation_size

OBS = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)


def gram_is_scaled_identity(weight: torch.Tensor, gain: float) -> bool:
    """An orthogonal init of the given gain: W W^T = gain^2 I (wide W) or W^T W = gain^2 I (tall W)."""
    w = weight.detach().double()
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    eye = torch.eye(min(rows, cols), dtype=torch.float64)
    return torch.allclose(gram, gain**2 * eye, atol=1e-5 * max(gain**2, 1e-4), rtol=1e-4)


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("network", ["separate", "shared"])
@pytest.mark.parametrize(
    "action_space", [spaces.Discrete(2), spaces.Box(-2.0, 2.0, shape=(3,), dtype=np.float32), spaces.MultiDiscrete([3, 4])]
)
def test_orthogonal_init_gains_and_zero_biases(network, action_space):
    torch.manual_seed(0)
    model = ActorCritic(OBS, action_space, [64, 32], "tanh", network)
    head = model.actor_head.weight
    assert gram_is_scaled_identity(head, 0.01)
    assert not gram_is_scaled_identity(head, 1.0)
    assert head.abs().max() < 0.02  # small: near-uniform initial policy / near-zero initial mean
    assert gram_is_scaled_identity(model.critic_head.weight, 1.0)
    bodies = [model.trunk] if network == "shared" else [model.actor_body, model.critic_body]
    for body in bodies:
        for lin in linear_layers(body):
            assert gram_is_scaled_identity(lin.weight, math.sqrt(2))
    for lin in linear_layers(model):
        assert torch.count_nonzero(lin.bias) == 0


def test_gram_helper_detects_wrong_gains():
    lin = layer(10, 3, 0.5)
    assert gram_is_scaled_identity(lin.weight, 0.5)
    assert not gram_is_scaled_identity(lin.weight, 0.01)
    tall = layer(3, 10, 2.0)
    assert gram_is_scaled_identity(tall.weight, 2.0)
    random = nn.Linear(10, 3)  # default (Kaiming-uniform) init is not orthogonal
    assert not gram_is_scaled_identity(random.weight, 0.5)


def test_mlp_body_layer_widths():
    body = mlp_body(5, [8, 7], *(["relu"] if "activation" in inspect.signature(mlp_body).parameters else []))
    widths = [(lin.in_features, lin.out_features) for lin in linear_layers(body)]
    assert widths == [(5, 8), (8, 7)]


def test_activation_choice():
    """ReLU with zero biases is positively homogeneous (f(2x) = 2 f(x)); tanh is not."""
    obs = torch.randn(5, 4)
    torch.manual_seed(0)
    relu = ActorCritic(OBS, spaces.Discrete(2), [16, 16], activation="relu")
    torch.testing.assert_close(relu.value(2 * obs), 2 * relu.value(obs))
    torch.manual_seed(0)
    tanh = ActorCritic(OBS, spaces.Discrete(2), [16, 16], activation="tanh")
    assert not torch.allclose(tanh.value(2 * obs), 2 * tanh.value(obs))
    # tanh saturates: values stay bounded by the critic head's weight norm (gain 1) for huge inputs
    assert tanh.value(1e6 * obs).abs().max() <= tanh.critic_head.weight.abs().sum() + 1e-4


def test_separate_networks_have_disjoint_parameters():
    model = ActorCritic(OBS, spaces.Discrete(2), [16, 16], network="separate")
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("trunk") for n in names)
    assert any(n.startswith("actor_body") for n in names) and any(n.startswith("critic_body") for n in names)
    # 4->16->16 twice, plus heads 16->2 and 16->1
    body = (4 * 16 + 16) + (16 * 16 + 16)
    assert sum(p.numel() for p in model.parameters()) == 2 * body + (16 * 2 + 2) + (16 + 1)
    # the critic's loss does not reach the actor body and vice versa
    obs = torch.randn(8, 4)
    model.value(obs).sum().backward()
    assert all(p.grad is None for p in model.actor_body.parameters())
    assert model.actor_head.weight.grad is None
    assert all(p.grad is not None for p in model.critic_body.parameters())


def test_shared_network_has_one_trunk_used_by_both_heads():
    model = ActorCritic(OBS, spaces.Discrete(2), [16, 16], network="shared")
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("actor_body", "critic_body")) for n in names)
    body = (4 * 16 + 16) + (16 * 16 + 16)
    assert sum(p.numel() for p in model.parameters()) == body + (16 * 2 + 2) + (16 + 1)
    obs = torch.randn(8, 4)
    model.value(obs).sum().backward()
    assert all(p.grad is not None for p in model.trunk.parameters())
    model.zero_grad()
    logits, _ = model(obs)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.trunk.parameters())


@pytest.mark.parametrize("network", ["separate", "shared"])
def test_output_shapes_per_action_space(network, act):
    obs = torch.randn(6, 4)
    cases = [
        (spaces.Discrete(3), (6, 3), (6,), torch.int64),
        (spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32), (6, 2), (6, 2), torch.float32),
        (spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float32), (6, 6), (6, 6), torch.float32),
        (spaces.MultiDiscrete([3, 4]), (6, 7), (6, 2), torch.int64),
    ]
    for space, params_shape, action_shape, dtype in cases:
        model = ActorCritic(OBS, space, [32], network=network)
        params, values = model(obs)
        assert params.shape == params_shape
        assert values.shape == (6,)
        actions, logprobs, values2 = act(model, obs, False, torch.Generator().manual_seed(0))
        assert actions.shape == action_shape and actions.dtype == dtype
        assert logprobs.shape == (6,) and values2.shape == (6,)
        lp, ent, v = model.evaluate_actions(obs, actions)
        assert lp.shape == (6,) and ent.shape == (6,) and v.shape == (6,)
        torch.testing.assert_close(lp, logprobs)
        torch.testing.assert_close(model.value(obs), values)


def test_gaussian_policy_owns_a_learned_log_std(act):
    model = ActorCritic(OBS, spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32), [8], init_log_std=-0.5)
    assert isinstance(model.log_std, nn.Parameter)
    assert torch.equal(model.log_std.detach(), torch.full((2,), -0.5))
    assert model.distribution.log_std is model.log_std
    assert any(p is model.log_std for p in model.parameters())
    # deterministic action is the mean, which starts near 0 (head gain 0.01)
    actions, _, _ = act(model, torch.randn(3, 4), deterministic=True)
    assert actions.abs().max() < 0.5


def test_discrete_observations_are_one_hot():
    obs_space = spaces.Discrete(5, start=2)
    assert observation_size(obs_space) == 5
    model = ActorCritic(obs_space, spaces.Discrete(2), [8])
    x = model.preprocess(np.array([2, 6, 4]))
    expected = torch.zeros(3, 5)
    expected[0, 0] = expected[1, 4] = expected[2, 2] = 1.0
    assert torch.equal(x, expected)


def test_box_observations_are_flattened_to_float32():
    space = spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float64)
    assert observation_size(space) == 6
    model = ActorCritic(space, spaces.Discrete(2), [8])
    x = model.preprocess(np.ones((4, 2, 3)))
    assert x.shape == (4, 6) and x.dtype == torch.float32


def test_unsupported_observation_space():
    with pytest.raises(ValueError, match="Dict"):
        ActorCritic(spaces.Dict({"a": OBS}), spaces.Discrete(2), [8])


@pytest.fixture(params=["np.tanh", "sigmoid"])
def tanh_form(request, monkeypatch):
    """Both ways the numpy copies compute tanh, whichever this machine's numpy would pick."""
    monkeypatch.setattr(networks, "SIGMOID_MIN_ACTIVATIONS", math.inf if request.param == "np.tanh" else 0)
    return request.param


@pytest.mark.parametrize("network", ["separate", "shared"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize(
    "observation_space, action_space",
    [
        (OBS, spaces.Discrete(3)),
        (OBS, spaces.Box(-2.0, 2.0, shape=(3,), dtype=np.float32)),
        (OBS, spaces.MultiDiscrete([3, 4])),
        (spaces.Discrete(5, start=2), spaces.Discrete(2)),
    ],
)
def test_numpy_actor_matches_the_torch_actor(network, activation, observation_space, action_space, tanh_form):
    """The rollout acts with a numpy copy of the actor: same outputs, same sampled actions."""
    torch.manual_seed(0)
    model = ActorCritic(observation_space, action_space, [32, 16], activation, network, init_log_std=-0.5)
    with torch.no_grad():  # non-trivial heads and log-std, so that a wrong copy would show
        model.actor_head.weight.normal_()
        if hasattr(model, "log_std"):
            model.log_std.uniform_(-1.0, 0.5)
    observation_space.seed(0)
    raw_obs = np.stack([observation_space.sample() for _ in range(9)])
    obs = model.numpy_input(raw_obs)
    assert obs.dtype == np.float32 and obs.shape == (9, model.obs_size)
    np.testing.assert_array_equal(obs, model.preprocess(raw_obs).numpy())

    actor = model.numpy_actor()
    with torch.no_grad():
        expected = model.actor(torch.from_numpy(obs)).numpy()
        # tanh runs as a sigmoid with folded weights in the numpy copy: float32 rounding up to ~1e-6
        np.testing.assert_allclose(actor(obs), expected, rtol=1e-5, atol=1e-5)
        noise = model.distribution.noise((9,), torch.Generator().manual_seed(1))
        torch_actions = model.distribution.sample(model.actor(torch.from_numpy(obs)), noise).numpy()
    numpy_actions = model.distribution.sample_numpy(actor(obs), noise.numpy(), actor.std)
    np.testing.assert_allclose(numpy_actions, torch_actions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.distribution.sample_numpy(actor(obs), None, actor.std), model.distribution.sample(torch.from_numpy(expected), None).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("network", ["separate", "shared"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("rows", [7, 700, 2 * BLOCK_ROWS + 5])  # the last one runs in blocks
def test_numpy_critic_matches_the_torch_critic(network, activation, rows, tanh_form):
    torch.manual_seed(0)
    model = ActorCritic(OBS, spaces.Discrete(2), [32, 16], activation, network)
    obs = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32) * 3
    with torch.no_grad():
        expected = model.value(torch.from_numpy(obs)).numpy()
    values = model.numpy_critic()(obs)
    assert values.shape == (rows, 1)
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_copies_keep_their_buffers_apart_from_their_outputs(activation):
    """The numpy copies write each layer into kept buffers (a ones column carries the bias): a
    batch of another size, a later call or a new copy sharing a workspace must not change or
    reuse an output already returned."""
    torch.manual_seed(1)
    model = ActorCritic(OBS, spaces.Discrete(3), [32, 16], activation, "separate")
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(rows, 4)).astype(np.float32) for rows in (5, 64, 5, 1, 64)]
    with torch.no_grad():
        expected = [model.actor(torch.from_numpy(obs)).numpy() for obs in batches]
    actor = model.numpy_actor()
    outputs = [actor(obs) for obs in batches]
    for out, want in zip(outputs, expected):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    workspace: list = []
    first = model.numpy_critic()(batches[1], workspace)
    second = model.numpy_critic()(batches[4], workspace)  # a fresh copy reusing the workspace
    with torch.no_grad():
        np.testing.assert_allclose(first[:, 0], model.value(torch.from_numpy(batches[1])).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(second[:, 0], model.value(torch.from_numpy(batches[4])).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("rows", [3, 64])
def test_numpy_mlp_reads_inputs_with_a_ones_column_in_place(activation, rows, tanh_form):
    """The rollout buffer keeps observations as ``[obs, 1]`` rows and has the actor write into it:
    same result as a plain call, written into ``out``, the input left as it was."""
    torch.manual_seed(2)
    model = ActorCritic(OBS, spaces.Discrete(3), [32, 16], activation, "separate")
    obs = np.random.default_rng(4).normal(size=(rows, 4)).astype(np.float32) * 5
    inputs = np.ones((rows, 5), dtype=np.float32)
    inputs[:, :-1] = obs
    before = inputs.copy()
    out = np.full((rows, 3), np.nan, dtype=np.float32)
    actor = model.numpy_actor()
    returned = actor.with_ones_column(inputs, out=out)
    assert returned is out
    np.testing.assert_array_equal(out, actor(obs))
    np.testing.assert_array_equal(inputs, before)
    with torch.no_grad():
        np.testing.assert_allclose(out, model.actor(torch.from_numpy(obs)).numpy(), rtol=1e-5, atol=1e-5)


def test_tanh_form_follows_numpys_dispatch():
    """With numpy's AVX-512 loops switched off, the numpy copies and the analytic update go back to
    torch's sigmoid form of tanh (numpy's AVX2 tanh is the slower one)."""
    code = (
        "from clippo import gradients, networks; "
        "print(networks.numpy_tanh_is_avx512(), networks.SIGMOID_MIN_ACTIVATIONS, gradients.TANH_IN_NUMPY)"
    )
    # names of numpy's AVX-512 dispatch targets across numpy versions (unknown ones only warn)
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512_SKX X86_V4 AVX512_ICL AVX512_SPR"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "1024", "False"]

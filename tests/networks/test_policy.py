"""The actor-critic (clippo.networks.policy) and its MLP encoder: orthogonal init gains, shared vs separate
structure, output shapes, observation encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from clippo.networks.encoders import MLPEncoder, flat_size, flatten_input, layer, mlp_layers, run_layers
from clippo.networks.policy import ActorCritic

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
    "action_space",
    [spaces.Discrete(2), spaces.Box(-2.0, 2.0, shape=(3,), dtype=np.float32), spaces.MultiDiscrete([3, 4])],
)
def test_orthogonal_init_gains_and_zero_biases(network, action_space):
    torch.manual_seed(0)
    model = ActorCritic(OBS, action_space, [64, 32], "tanh", network)
    head = model.actor_head.weight
    assert gram_is_scaled_identity(head, 0.01)
    assert not gram_is_scaled_identity(head, 1.0)
    assert head.abs().max() < 0.02  # small: near-uniform initial policy / near-zero initial mean
    assert gram_is_scaled_identity(model.critic_head.weight, 1.0)
    bodies = [model.encoder] if network == "shared" else [model.actor_encoder, model.critic_encoder]
    for body in bodies:
        for lin in linear_layers(body):
            assert gram_is_scaled_identity(lin.weight, math.sqrt(2))
    for lin in linear_layers(model):
        assert torch.count_nonzero(lin.bias) == 0


@pytest.mark.parametrize("network", ["separate", "shared"])
def test_orthogonal_init_off_gives_pytorchs_default_init(network):
    torch.manual_seed(0)
    model = ActorCritic(OBS, spaces.Discrete(3), [64, 32], "tanh", network, orthogonal_init=False)
    for lin in linear_layers(model):
        bound = 1.0 / math.sqrt(lin.in_features)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias too
        assert lin.weight.abs().max() <= bound and lin.bias.abs().max() <= bound
        assert torch.count_nonzero(lin.bias) == lin.bias.numel()
        assert not gram_is_scaled_identity(lin.weight, math.sqrt(2)) and not gram_is_scaled_identity(lin.weight, 0.01)
    assert model.actor_head.weight.abs().max() > 0.02  # not the near-uniform 0.01-gain head


def test_orthogonal_init_off_leaves_a_user_encoder_alone():
    class Mine(nn.Module):
        def __init__(self, observation_space):
            super().__init__()
            self.output_size = 8
            self.linear = nn.Linear(4, 8)
            nn.init.constant_(self.linear.weight, 0.5)

        def forward(self, obs):
            return self.linear(obs)

    model = ActorCritic(OBS, spaces.Discrete(2), network="shared", encoder=Mine(OBS), orthogonal_init=False)
    assert torch.all(model.encoder.linear.weight == 0.5)
    assert torch.count_nonzero(model.actor_head.bias) == 2  # the heads are reset


def test_gram_helper_detects_wrong_gains():
    lin = layer(10, 3, 0.5)
    assert gram_is_scaled_identity(lin.weight, 0.5)
    assert not gram_is_scaled_identity(lin.weight, 0.01)
    tall = layer(3, 10, 2.0)
    assert gram_is_scaled_identity(tall.weight, 2.0)
    random = nn.Linear(10, 3)  # default (Kaiming-uniform) init is not orthogonal
    assert not gram_is_scaled_identity(random.weight, 0.5)


def test_mlp_layers_widths():
    body = mlp_layers(5, [8, 7])
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
    assert not any(n.startswith("encoder.") for n in names)
    assert any(n.startswith("actor_encoder.") for n in names) and any(n.startswith("critic_encoder.") for n in names)
    # 4->16->16 twice, plus heads 16->2 and 16->1
    body = (4 * 16 + 16) + (16 * 16 + 16)
    assert sum(p.numel() for p in model.parameters()) == 2 * body + (16 * 2 + 2) + (16 + 1)
    # the critic's loss does not reach the actor body and vice versa
    obs = torch.randn(8, 4)
    model.value(obs).sum().backward()
    assert all(p.grad is None for p in model.actor_encoder.parameters())
    assert model.actor_head.weight.grad is None
    assert all(p.grad is not None for p in model.critic_encoder.parameters())


def test_shared_network_has_one_encoder_used_by_both_heads():
    model = ActorCritic(OBS, spaces.Discrete(2), [16, 16], network="shared")
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("actor_encoder.", "critic_encoder.")) for n in names)
    body = (4 * 16 + 16) + (16 * 16 + 16)
    assert sum(p.numel() for p in model.parameters()) == body + (16 * 2 + 2) + (16 + 1)
    obs = torch.randn(8, 4)
    model.value(obs).sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    model.zero_grad()
    logits, _ = model(obs)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


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
    assert flat_size(obs_space) == 5
    model = ActorCritic(obs_space, spaces.Discrete(2), [8])
    raw = torch.from_numpy(np.array([2, 6, 4]))
    x = flatten_input(raw, obs_space)
    expected = torch.zeros(3, 5)
    expected[0, 0] = expected[1, 4] = expected[2, 2] = 1.0
    assert torch.equal(x, expected)
    # the model's encoder reads the raw indices through that one-hot encoding
    encoder = model.actor_encoder
    assert isinstance(encoder, MLPEncoder) and encoder.input_size == 5
    with torch.no_grad():
        torch.testing.assert_close(
            model.actor(raw), model.actor_head(run_layers(expected, encoder.layers, encoder.activation))
        )


def test_box_observations_are_flattened_to_float32():
    space = spaces.Box(-1.0, 1.0, shape=(2, 3), dtype=np.float64)
    assert flat_size(space) == 6
    model = ActorCritic(space, spaces.Discrete(2), [8])
    raw = torch.from_numpy(np.ones((4, 2, 3)))
    x = flatten_input(raw, space)
    assert x.shape == (4, 6) and x.dtype == torch.float32
    assert model.actor_encoder.input_size == 6
    with torch.no_grad():
        assert model.actor(raw).shape == (4, 2)  # the float64 batch goes in as it is


def test_unsupported_observation_space():
    # (Dict observations are supported now: tests/networks/test_encoders.py)
    with pytest.raises(ValueError, match="Text"):
        ActorCritic(spaces.Text(5), spaces.Discrete(2), [8])

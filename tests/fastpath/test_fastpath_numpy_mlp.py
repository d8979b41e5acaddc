"""The fast path's numpy copies of the actor and critic (clippo.fastpath.numpy_mlp) against the
torch model: same outputs and sampled actions, both forms of tanh, kept buffers, ones columns."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo.fastpath import numpy_mlp
from clippo.fastpath.numpy_mlp import BLOCK_ROWS, NumpyActor, numpy_critic
from clippo.fastpath.sampling import numpy_sampler
from clippo.networks.encoders import flat_size, flatten_input
from clippo.networks.policy import ActorCritic

OBS = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)


@pytest.fixture(params=["np.tanh", "sigmoid"])
def tanh_form(request, monkeypatch):
    """Both ways the numpy copies compute tanh, whichever this machine's numpy would pick."""
    monkeypatch.setattr(numpy_mlp, "SIGMOID_MIN_ACTIVATIONS", math.inf if request.param == "np.tanh" else 0)
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
    # the numpy copy reads the encoder's flat input (one-hot for Discrete observations)
    obs = flatten_input(torch.from_numpy(raw_obs), observation_space).numpy()
    assert obs.dtype == np.float32 and obs.shape == (9, flat_size(observation_space))

    actor = NumpyActor(model)
    with torch.no_grad():
        expected = model.actor(torch.from_numpy(raw_obs)).numpy()  # the torch model on the raw observations
        # tanh runs as a sigmoid with folded weights in the numpy copy: float32 rounding up to ~1e-6
        np.testing.assert_allclose(actor(obs), expected, rtol=1e-5, atol=1e-5)
        noise = model.distribution.noise((9,), torch.Generator().manual_seed(1))
        torch_actions = model.distribution.sample(model.actor(torch.from_numpy(raw_obs)), noise).numpy()
    numpy_actions = numpy_sampler(model.distribution)(actor(obs), noise.numpy(), actor.std)
    np.testing.assert_allclose(numpy_actions, torch_actions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        numpy_sampler(model.distribution)(actor(obs), None, actor.std),
        model.distribution.sample(torch.from_numpy(expected), None).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("network", ["separate", "shared"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("rows", [7, 700, 2 * BLOCK_ROWS + 5])  # the last one runs in blocks
def test_numpy_critic_matches_the_torch_critic(network, activation, rows, tanh_form):
    torch.manual_seed(0)
    model = ActorCritic(OBS, spaces.Discrete(2), [32, 16], activation, network)
    obs = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32) * 3
    with torch.no_grad():
        expected = model.value(torch.from_numpy(obs)).numpy()
    values = numpy_critic(model)(obs)
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
    actor = NumpyActor(model)
    outputs = [actor(obs) for obs in batches]
    for out, want in zip(outputs, expected, strict=False):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    workspace: list = []
    first = numpy_critic(model)(batches[1], workspace)
    second = numpy_critic(model)(batches[4], workspace)  # a fresh copy reusing the workspace
    with torch.no_grad():
        np.testing.assert_allclose(first[:, 0], model.value(torch.from_numpy(batches[1])).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            second[:, 0], model.value(torch.from_numpy(batches[4])).numpy(), rtol=1e-5, atol=1e-5
        )


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
    actor = NumpyActor(model)
    returned = actor.with_ones_column(inputs, out=out)
    assert returned is out
    np.testing.assert_array_equal(out, actor(obs))
    np.testing.assert_array_equal(inputs, before)
    with torch.no_grad():
        np.testing.assert_allclose(out, model.actor(torch.from_numpy(obs)).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_tanh_form_follows_numpys_dispatch():
    """With numpy's AVX-512 loops switched off, the numpy copies and the analytic update go back to
    torch's sigmoid form of tanh (numpy's AVX2 tanh is the slower one)."""
    code = (
        "from clippo.fastpath import gradient, numpy_mlp; "
        "print(numpy_mlp.numpy_tanh_is_avx512(), numpy_mlp.SIGMOID_MIN_ACTIVATIONS, gradient.TANH_IN_NUMPY)"
    )
    # names of numpy's AVX-512 dispatch targets across numpy versions (unknown ones only warn)
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512_SKX X86_V4 AVX512_ICL AVX512_SPR"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "1024", "False"]

"""Property-based tests (hypothesis): config validation, rewards-to-go and GAE, rollout flattening.

The advantage functions are checked against a plain per-env Python loop written from the
definitions, on random shapes, episode boundaries, discounts and lambdas.
"""

from __future__ import annotations

import math
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clippo import PPO, PPOConfig
from clippo.config.ppo_config import CHOICES, ConfigError, config_from_dict, resolve_config
from clippo.core.advantages import compute_gae, discounted_rewards_to_go
from clippo.fastpath.rollout import FlatRolloutBuffer
from clippo.rollout.buffer import RolloutBuffer
from tests.helpers import run_cli

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

DEFAULTS = PPOConfig()
finite = dict(allow_nan=False, allow_infinity=False)
positive_floats = st.floats(min_value=0.0, exclude_min=True, max_value=1e6, **finite)
nonnegative_floats = st.floats(min_value=0.0, max_value=1e6, **finite)
unit_floats = st.floats(min_value=0.0, max_value=1.0, **finite)


# ------------------------------------------------------------------------------------------------
# config validation
# ------------------------------------------------------------------------------------------------
@st.composite
def valid_configs(draw) -> dict:
    num_envs = draw(st.integers(1, 64))
    num_steps = draw(st.integers(1, 2048))
    values = {
        "env_id": draw(st.sampled_from(["CartPole-v1", "Pendulum-v1", "custom-env"])),
        "total_steps": draw(st.integers(1, 10**8)),
        "seed": draw(st.integers(0, 2**31 - 1)),
        "num_envs": num_envs,
        "num_steps": num_steps,
        "vector_env": draw(st.sampled_from(["auto", "sync", "async", "native"])),
        "num_minibatches": draw(st.integers(1, num_envs * num_steps)),
        "update_epochs": draw(st.integers(1, 100)),
        "learning_rate": draw(positive_floats),
        "anneal_lr": draw(st.booleans()),
        "gamma": draw(unit_floats),
        "gae_lambda": draw(unit_floats),
        "clip_epsilon": draw(positive_floats),
        "clip_value_loss": draw(st.booleans()),
        "ent_coef": draw(nonnegative_floats | st.integers(0, 10)),
        "vf_coef": draw(nonnegative_floats),
        "max_grad_norm": draw(st.none() | positive_floats),
        "target_kl": draw(st.none() | positive_floats | st.integers(1, 5)),
        "normalize_advantages": draw(st.booleans()),
        "network": draw(st.sampled_from(["separate", "shared"])),
        "hidden_sizes": draw(st.lists(st.integers(1, 512), min_size=1, max_size=4)),
        "activation": draw(st.sampled_from(["tanh", "relu"])),
        "init_log_std": draw(st.floats(-20, 20, **finite)),
        "normalize_observations": draw(st.booleans()),
        "normalize_rewards": draw(st.booleans()),
        "obs_clip": draw(positive_floats),
        "reward_clip": draw(positive_floats),
        "device": draw(st.sampled_from(["cpu", "cuda", "auto"])),
        "torch_threads": draw(st.integers(1, 64)),
        "checkpoint_every": draw(st.integers(0, 10**6)),
        "keep_checkpoints": draw(st.integers(1, 1000)),
        "nonfinite": draw(st.sampled_from(["stop", "skip"])),
        "eval_episodes": draw(st.integers(0, 1000)),
        "tensorboard": draw(st.booleans()),
    }
    # a field added later: its default (which must be valid)
    return {**{f.name: getattr(DEFAULTS, f.name) for f in fields(PPOConfig)}, **values}


FLOAT_FIELDS = {f.name for f in fields(PPOConfig) if f.type in ("float", "float | None")}


@PROPERTY
@given(valid_configs())
def test_valid_values_construct(values):
    config = PPOConfig(**values).validate()
    for name, value in values.items():
        got = getattr(config, name)
        assert got == value, name
        if name in FLOAT_FIELDS and value is not None:
            assert isinstance(got, float), name  # ints given for floats are stored as floats
    # what a checkpoint or config.yaml stores comes back unchanged
    assert config_from_dict(config.to_dict()) == config
    assert resolve_config(values["env_id"], preset="default", overrides=values) == config


NOT_A_NUMBER = st.sampled_from(["3", "abc", None, [1], True, False])
NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
positive_int = st.integers(max_value=0) | st.floats(0.5, 100.5).filter(lambda x: x != int(x)) | NOT_A_NUMBER
nonnegative_int = st.integers(max_value=-1) | st.just(2.5) | NOT_A_NUMBER
positive_float = st.floats(max_value=0.0, **finite) | NOT_FINITE | NOT_A_NUMBER
nonnegative_float = st.floats(max_value=0.0, exclude_max=True, **finite) | NOT_FINITE | NOT_A_NUMBER
optional_positive_float = st.floats(max_value=0.0, **finite) | NOT_FINITE | st.sampled_from(["none", [], True])
unit_interval = (
    st.floats(max_value=0.0, exclude_max=True, **finite)
    | st.floats(min_value=1.0, exclude_min=True, **finite)
    | st.just(math.nan)
    | NOT_A_NUMBER
)
boolean = st.sampled_from([0, 1, "yes", None, 1.0])


def choice_of(*allowed):
    return st.text(max_size=8).filter(lambda s: s not in allowed) | st.sampled_from([None, 1, ["sync"]])


INVALID = {
    "env_id": st.sampled_from([None, 3, ["CartPole-v1"]]),
    "total_steps": positive_int,
    "num_envs": positive_int,
    "num_steps": positive_int,
    "num_minibatches": positive_int,
    "update_epochs": positive_int,
    "learning_rate": positive_float,
    "anneal_lr": boolean,
    "gamma": unit_interval,
    "gae_lambda": unit_interval,
    "clip_epsilon": positive_float,
    "clip_value_loss": boolean,
    "ent_coef": nonnegative_float,
    "vf_coef": nonnegative_float,
    "max_grad_norm": optional_positive_float,
    "target_kl": optional_positive_float,
    "normalize_advantages": boolean,
    "network": choice_of("separate", "shared"),
    "hidden_sizes": st.sampled_from([[], [0], [64, -1], [1.5], [True], "64", 64, None]),
    "activation": choice_of("tanh", "relu"),
    "init_log_std": NOT_FINITE | NOT_A_NUMBER,
    "normalize_observations": boolean,
    "normalize_rewards": boolean,
    "obs_clip": positive_float,
    "reward_clip": positive_float,
    "device": choice_of("cpu", "cuda", "auto"),
    "torch_threads": positive_int,
    "checkpoint_every": nonnegative_int,
    "keep_checkpoints": positive_int,
    "nonfinite": choice_of("stop", "skip"),
    "eval_episodes": nonnegative_int,
    "vector_env": choice_of(*CHOICES["vector_env"]),
    "fast_path": choice_of(*CHOICES["fast_path"]),
    "tensorboard": boolean,
    "seed": st.integers(max_value=-1) | st.integers(min_value=2**64) | st.just(1.5) | NOT_A_NUMBER,
}
WRONG_TYPE = {  # for a field added later without its own entry above
    "int": st.sampled_from(["3", 2.5, None, True]),
    "float": st.sampled_from(["0.1", None, True, [0.1]]),
    "float | None": st.sampled_from(["0.1", True, [0.1]]),
    "bool": boolean,
    "str": st.sampled_from([None, 3, ["x"]]),
    "dict": st.sampled_from([None, 3, "a=1", [("a", 1)], {1: "a"}]),
    "list[int]": st.sampled_from([None, 3, [1.5], "1"]),
    "list[str]": st.sampled_from([None, 3, [1], "mod", ["not a module"], ["a..b"]]),
}
UNCHECKED: set[str] = set()


def invalid_values(name: str):
    if name in INVALID:
        return INVALID[name]
    return WRONG_TYPE[next(f.type for f in fields(PPOConfig) if f.name == name)]


CHECKED_FIELDS = sorted(f.name for f in fields(PPOConfig) if f.name not in UNCHECKED)


@PROPERTY
@given(st.data())
def test_invalid_value_raises_config_error_naming_the_field(data):
    name = data.draw(st.sampled_from(CHECKED_FIELDS), label="field")
    bad = data.draw(invalid_values(name), label="value")
    values = {**data.draw(valid_configs(), label="others"), name: bad}
    with pytest.raises(ConfigError) as info:
        PPOConfig(**values).validate()
    message = str(info.value)
    assert message.startswith(f"{name}="), message
    assert "invalid" in message
    assert len(message.splitlines()) == 1


@PROPERTY
@given(num_envs=st.integers(1, 16), num_steps=st.integers(1, 64), extra=st.integers(1, 1000))
def test_more_minibatches_than_samples_is_invalid(num_envs, num_steps, extra):
    with pytest.raises(ConfigError, match=r"^num_minibatches=.*num_envs \* num_steps"):
        PPOConfig(num_envs=num_envs, num_steps=num_steps, num_minibatches=num_envs * num_steps + extra).validate()


NUMERIC_INVALID = {  # values argparse accepts, that validation must reject
    "total_steps": st.integers(-(10**6), 0),
    "num_envs": st.integers(-100, 0),
    "num_steps": st.integers(-100, 0),
    "update_epochs": st.integers(-100, 0),
    "keep_checkpoints": st.integers(-100, 0),
    "checkpoint_every": st.integers(-100, -1),
    "eval_episodes": st.integers(-100, -1),
    "torch_threads": st.integers(-100, 0) | st.integers(100_000, 10**6),
    "seed": st.integers(-(10**6), -1) | st.integers(2**64, 2**80),
    "learning_rate": st.floats(max_value=0.0, **finite) | NOT_FINITE,
    "clip_epsilon": st.floats(max_value=0.0, **finite) | NOT_FINITE,
    "ent_coef": st.floats(max_value=0.0, exclude_max=True, **finite) | NOT_FINITE,
    "gamma": st.floats(min_value=1.0, exclude_min=True, **finite) | st.just(math.nan),
    "gae_lambda": st.floats(max_value=0.0, exclude_max=True, **finite) | st.just(math.nan),
    "max_grad_norm": st.floats(max_value=0.0, **finite) | NOT_FINITE,
    "init_log_std": NOT_FINITE,
}


@PROPERTY
@given(st.data())
def test_cli_and_api_give_the_same_one_line_message(data):
    name = data.draw(st.sampled_from(sorted(NUMERIC_INVALID)), label="field")
    value = data.draw(NUMERIC_INVALID[name], label="value")
    flag = "--" + name.replace("_", "-")
    code, out, err = run_cli(["train", "CartPole-v1", f"{flag}={value!r}"])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    with pytest.raises(ValueError) as info:
        PPO("CartPole-v1", **{name: value})
    assert lines[0] == f"clippo: error: {info.value}"
    assert str(info.value).startswith(f"{name}=")


# ------------------------------------------------------------------------------------------------
# rewards-to-go and GAE
# ------------------------------------------------------------------------------------------------
@st.composite
def rollouts(draw, dtype=torch.float64):
    steps = draw(st.integers(1, 24))
    envs = draw(st.integers(1, 5))
    numbers = st.floats(-100, 100, **finite)
    shape = (steps, envs)

    def array(size):
        return torch.tensor(draw(st.lists(numbers, min_size=size, max_size=size)), dtype=dtype)

    def mask(p):
        return torch.tensor(
            draw(st.lists(st.booleans() if p else st.just(False), min_size=steps * envs, max_size=steps * envs)),
            dtype=torch.bool,
        ).reshape(shape)

    return {
        "rewards": array(steps * envs).reshape(shape),
        "values": array(steps * envs).reshape(shape),
        "terminated": mask(draw(st.booleans())),
        "truncated": mask(draw(st.booleans())),
        "last_value": array(envs),
    }


def reference_returns(r, gamma):
    """R_t = r_t + gamma * future, future restarting at every episode end (as plain Python)."""
    rewards, values, terminated, truncated, last = (
        r[k].tolist() for k in ("rewards", "values", "terminated", "truncated", "last_value")
    )
    steps, envs = len(rewards), len(rewards[0])
    out = [[0.0] * envs for _ in range(steps)]
    for i in range(envs):
        future = last[i]
        for t in reversed(range(steps)):
            next_value = values[t + 1][i] if t + 1 < steps else last[i]
            if terminated[t][i]:
                future = 0.0
            elif truncated[t][i]:
                future = next_value
            future = rewards[t][i] + gamma * future
            out[t][i] = future
    return torch.tensor(out, dtype=torch.float64)


def reference_gae(r, gamma, lam):
    rewards, values, terminated, truncated, last = (
        r[k].tolist() for k in ("rewards", "values", "terminated", "truncated", "last_value")
    )
    steps, envs = len(rewards), len(rewards[0])
    out = [[0.0] * envs for _ in range(steps)]
    for i in range(envs):
        running = 0.0
        for t in reversed(range(steps)):
            next_value = values[t + 1][i] if t + 1 < steps else last[i]
            delta = rewards[t][i] + gamma * next_value * (0.0 if terminated[t][i] else 1.0) - values[t][i]
            done = terminated[t][i] or truncated[t][i]
            running = delta + gamma * lam * (0.0 if done else running)
            out[t][i] = running
    return torch.tensor(out, dtype=torch.float64)


def gae_args(r):
    return r["rewards"], r["values"], r["terminated"], r["truncated"], r["last_value"]


@PROPERTY
@given(rollouts(), unit_floats, unit_floats)
def test_gae_shapes_finite_and_matches_the_definition(r, gamma, lam):
    advantages, returns = compute_gae(*gae_args(r), gamma=gamma, gae_lambda=lam)
    assert advantages.shape == returns.shape == r["rewards"].shape
    assert advantages.dtype == returns.dtype == torch.float64
    assert torch.isfinite(advantages).all() and torch.isfinite(returns).all()
    torch.testing.assert_close(returns, advantages + r["values"], rtol=0, atol=0)
    torch.testing.assert_close(advantages, reference_gae(r, gamma, lam), rtol=1e-10, atol=1e-9)


@PROPERTY
@given(rollouts(dtype=torch.float32), unit_floats, unit_floats)
def test_gae_float32_keeps_dtype_and_shape(r, gamma, lam):
    advantages, returns = compute_gae(*gae_args(r), gamma=gamma, gae_lambda=lam)
    assert advantages.dtype == returns.dtype == torch.float32
    assert advantages.shape == returns.shape == r["rewards"].shape
    assert torch.isfinite(advantages).all() and torch.isfinite(returns).all()
    r64 = {k: v.double() if v.is_floating_point() else v for k, v in r.items()}
    torch.testing.assert_close(advantages.double(), reference_gae(r64, gamma, lam), rtol=1e-4, atol=1e-2)


@PROPERTY
@given(rollouts(), unit_floats)
def test_rewards_to_go_shapes_finite_and_matches_the_definition(r, gamma):
    returns = discounted_rewards_to_go(*gae_args(r), gamma=gamma)
    assert returns.shape == r["rewards"].shape and returns.dtype == torch.float64
    assert torch.isfinite(returns).all()
    torch.testing.assert_close(returns, reference_returns(r, gamma), rtol=1e-10, atol=1e-9)


@PROPERTY
@given(rollouts(), unit_floats)
def test_gae_lambda_one_is_rewards_to_go_minus_values(r, gamma):
    advantages, returns = compute_gae(*gae_args(r), gamma=gamma, gae_lambda=1.0)
    rewards_to_go = discounted_rewards_to_go(*gae_args(r), gamma=gamma)
    torch.testing.assert_close(advantages, rewards_to_go - r["values"], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(returns, rewards_to_go, rtol=1e-10, atol=1e-9)


@PROPERTY
@given(rollouts(), unit_floats)
def test_gae_lambda_zero_is_the_one_step_td_error(r, gamma):
    advantages, _ = compute_gae(*gae_args(r), gamma=gamma, gae_lambda=0.0)
    next_values = torch.cat([r["values"][1:], r["last_value"][None]])
    td_errors = r["rewards"] + gamma * next_values * (~r["terminated"]).double() - r["values"]
    torch.testing.assert_close(advantages, td_errors, rtol=1e-12, atol=1e-12)


@PROPERTY
@given(rollouts(), unit_floats, unit_floats, st.data())
def test_nothing_flows_back_across_an_episode_end(r, gamma, lam, data):
    """Changing anything after an episode's last step leaves that episode's advantages unchanged."""
    steps, _envs = r["rewards"].shape
    ends = (r["terminated"] | r["truncated"]).nonzero().tolist()
    assume(ends)
    t_end, i = data.draw(st.sampled_from(ends))
    assume(t_end + 1 < steps)
    before, _ = compute_gae(*gae_args(r), gamma=gamma, gae_lambda=lam)
    changed = {k: v.clone() for k, v in r.items()}
    changed["rewards"][t_end + 1 :, i] += 1000.0
    changed["last_value"][i] -= 1000.0
    if r["terminated"][t_end, i]:
        changed["values"][t_end + 1 :, i] += 1000.0  # nothing at all is bootstrapped after a termination
    else:
        changed["values"][t_end + 2 :, i] += 1000.0  # a truncation bootstraps from values[t_end + 1] only
    after, _ = compute_gae(*gae_args(changed), gamma=gamma, gae_lambda=lam)
    torch.testing.assert_close(after[: t_end + 1, i], before[: t_end + 1, i], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# rollout flattening
# ------------------------------------------------------------------------------------------------
@PROPERTY
@given(
    steps=st.integers(1, 12),
    envs=st.integers(1, 5),
    obs_size=st.integers(1, 4),
    action_shape=st.sampled_from([(), (1,), (3,)]),
    discrete=st.booleans(),
    buffer_class=st.sampled_from([RolloutBuffer, FlatRolloutBuffer]),  # the general and the fast path's
    data=st.data(),
)
def test_flatten_keeps_exactly_the_valid_entries_in_time_major_order(
    steps, envs, obs_size, action_shape, discrete, buffer_class, data
):
    dtype = torch.int64 if discrete else torch.float32
    obs_space = spaces.Box(-np.inf, np.inf, shape=(obs_size,), dtype=np.float32)
    # what a buffer reads of the action distribution: how actions and actor outputs are stored
    storage = SimpleNamespace(action_shape=action_shape, action_dtype=dtype, num_outputs=2, param_size=2)
    buffer = buffer_class(steps, envs, obs_space, storage, torch.device("cpu"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    valid = np.array(
        data.draw(st.lists(st.booleans(), min_size=steps * envs, max_size=steps * envs), label="valid"), dtype=bool
    ).reshape(steps, envs)
    buffer.obs[:] = rng.normal(size=buffer.obs.shape)
    buffer.actions[:] = (
        rng.integers(0, 100, size=buffer.actions.shape) if discrete else rng.normal(size=buffer.actions.shape)
    )
    buffer.logprobs[:] = rng.normal(size=(steps, envs))
    buffer.values[:] = rng.normal(size=(steps, envs))
    buffer.valid[:] = valid
    advantages = torch.from_numpy(rng.normal(size=(steps, envs)))
    returns = torch.from_numpy(rng.normal(size=(steps, envs)))

    batch = buffer.flatten(advantages, returns)

    kept = [(t, i) for t in range(steps) for i in range(envs) if valid[t, i]]  # time-major
    assert len(batch) == len(kept) == int(valid.sum())
    assert batch.obs.shape == (len(kept), obs_size)
    assert batch.actions.shape == (len(kept), *action_shape) and batch.actions.dtype == dtype
    for row, (t, i) in enumerate(kept):
        assert torch.equal(batch.obs[row], torch.as_tensor(buffer.obs[t, i]))
        assert torch.equal(batch.actions[row], torch.as_tensor(buffer.actions[t, i]))
        assert batch.logprobs[row] == buffer.logprobs[t, i]
        assert batch.values[row] == buffer.values[t, i]
        assert batch.advantages[row] == advantages[t, i]
        assert batch.returns[row] == returns[t, i]
    # indexing a batch keeps its fields aligned
    if len(kept):
        order = torch.from_numpy(rng.permutation(len(kept)))
        shuffled = batch[order]
        for name in ("obs", "actions", "logprobs", "values", "advantages", "returns"):
            assert torch.equal(getattr(shuffled, name), getattr(batch, name)[order])


@pytest.mark.parametrize("modules", [["not a module"], ["a..b"], ["ok.module", "-bad"], ["m"] * 1000])
def test_bad_env_modules_are_named_by_the_field(modules):
    # (the property test above draws these only sometimes)
    with pytest.raises(ConfigError) as info:
        PPOConfig(env_modules=modules).validate()
    message = str(info.value)
    assert message.startswith("env_modules=") and "is invalid" in message and "\n" not in message

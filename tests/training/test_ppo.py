"""The PPO agent: the update loop, early stopping, acting per action space, seeding, learning."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from gymnasium import spaces

from clippo import PPO

# use_sde=False: Pendulum-v1's preset uses gSDE; these tests check the plain Gaussian
TINY = dict(num_envs=2, num_steps=32, num_minibatches=4, update_epochs=2, hidden_sizes=[16, 16], use_sde=False)


def record_update_stats(agent: PPO) -> list[dict]:
    """Wrap agent.update_policy so each update's stats are kept."""
    stats: list[dict] = []
    original = agent.learner.update_policy

    def wrapper(batch, plan=None):
        result = original(batch, plan)
        stats.append(result)
        return result

    agent.learner.update_policy = wrapper
    return stats


def record_logratios(agent: PPO) -> list[torch.Tensor]:
    """The log probability ratio of every minibatch step, in order (either gradient path)."""
    calls: list[torch.Tensor] = []
    original = agent.learner.loss_and_gradient

    def recording(minibatch, advantages):
        terms = original(minibatch, advantages)
        calls.append(terms.logratio.clone())
        return terms

    agent.learner.loss_and_gradient = recording
    return calls


def record_first_logratios(agent: PPO) -> list[torch.Tensor]:
    """The logratio of the first minibatch of every update."""
    calls = record_logratios(agent)
    firsts: list[torch.Tensor] = []
    original_update = agent.learner.update_policy

    def update_wrapper(batch, plan=None):
        start = len(calls)
        result = original_update(batch, plan)
        assert len(calls) > start, "the update took no minibatch step"
        firsts.append(calls[start])
        return result

    agent.learner.update_policy = update_wrapper
    return firsts


# ------------------------------------------------------------------------------------------------
# the update
# ------------------------------------------------------------------------------------------------
# The rollout stores the log-probabilities of its numpy actor; the update recomputes them with the
# torch actor on minibatches. Before the first Adam step both are the same function of the same
# weights, so the first ratio is 1 up to float32 rounding (a misaligned or stale log-prob is far off).
SAME_SHAPE = dict(
    num_envs=8, num_steps=1, num_minibatches=1, update_epochs=4, learning_rate=1e-2, hidden_sizes=[16, 16]
)


def env_source(name, multidiscrete_env):
    return {"CartPole-v1": "CartPole-v1", "Pendulum-v1": "Pendulum-v1", "multidiscrete": multidiscrete_env}[name]


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1", "multidiscrete"])
@pytest.mark.parametrize("network", ["separate", "shared"])
def test_ratio_is_one_on_first_shuffled_minibatch_up_to_rounding(multidiscrete_env, env, network):
    agent = PPO(
        env_source(env, multidiscrete_env),
        **{**TINY, "update_epochs": 3, "learning_rate": 1e-2},
        network=network,
        normalize_observations=True,
        seed=3,
    )
    firsts = record_first_logratios(agent)
    agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    assert len(firsts) == 3
    for logratio in firsts:
        assert logratio.numel() > 0
        assert logratio.abs().max().item() < 1e-5, logratio


def test_later_minibatches_see_a_changed_policy():
    agent = PPO("CartPole-v1", **SAME_SHAPE, seed=0)
    calls = record_logratios(agent)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    assert len(calls) == SAME_SHAPE["num_minibatches"] * SAME_SHAPE["update_epochs"]
    first = calls[0].abs().max()
    assert first < 1e-5
    assert all(c.abs().max() > 100 * first + 1e-6 for c in calls[1:])  # the policy moved after the first Adam step


def test_early_stopping_triggers_with_tiny_target_kl():
    agent = PPO(
        "CartPole-v1", **{**TINY, "update_epochs": 10}, learning_rate=0.05, target_kl=1e-6, anneal_lr=False, seed=0
    )
    stats = record_update_stats(agent)
    agent.learn(total_steps=agent.batch_size * 2)
    agent.close()
    assert len(stats) == 2
    for s in stats:
        assert s["early_stopped"] == 1
        assert s["epochs_run"] < 10
        assert s["approx_kl"] > 1e-6
        assert s["epochs_run"] > 0  # the first minibatch (KL 0) always gets its step


def test_no_early_stopping_without_target_kl():
    agent = PPO(
        "CartPole-v1", **{**TINY, "update_epochs": 10}, learning_rate=0.05, target_kl=None, anneal_lr=False, seed=0
    )
    stats = record_update_stats(agent)
    agent.learn(total_steps=agent.batch_size * 2)
    agent.close()
    assert len(stats) == 2
    for s in stats:
        assert s["early_stopped"] == 0
        assert s["epochs_run"] == 10
        assert s["approx_kl"] > 1e-6  # the KL was large: only the disabled check kept it going


def test_update_stats_are_finite_and_sensible():
    agent = PPO("Pendulum-v1", **TINY, seed=0)
    stats = record_update_stats(agent)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    (s,) = stats
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        assert math.isfinite(s[name]), name
    assert s["value_loss"] > 0 and s["approx_kl"] >= 0 and 0 <= s["clip_fraction"] <= 1
    # entropy of the initial Gaussian (log_std 0, 1 dim): 0.5 + 0.5 log(2 pi), slightly changed by training
    assert s["entropy"] == pytest.approx(0.5 + 0.5 * math.log(2 * math.pi), abs=0.05)
    assert s["epochs_run"] == TINY["update_epochs"] and s["early_stopped"] == 0


def test_training_changes_parameters_and_counts_steps():
    agent = PPO("CartPole-v1", **TINY, seed=0)
    before = [p.detach().clone() for p in agent.model.parameters()]
    agent.learn(total_steps=100)  # rounded up to whole rollouts of 64
    assert agent.global_step == 128 and agent.update == 2
    agent.learn(total_steps=64)
    assert agent.global_step == 192 and agent.update == 3
    agent.close()
    after = list(agent.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=False))


@pytest.mark.parametrize("bad", [0, -5, 1.5, "100", True])
def test_learn_rejects_bad_total_steps(bad):
    agent = PPO("CartPole-v1", **TINY)
    try:
        with pytest.raises(ValueError, match="total_steps"):
            agent.learn(total_steps=bad)
    finally:
        agent.close()


def test_learning_rate_anneals_linearly_within_a_learn_call(tmp_path):
    agent = PPO("CartPole-v1", **TINY, learning_rate=1e-3, run_dir=tmp_path / "run")
    agent.learn(total_steps=agent.batch_size * 4)
    agent.close()
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    np.testing.assert_allclose(metrics["learning_rate"], [1e-3, 0.75e-3, 0.5e-3, 0.25e-3], rtol=1e-9)
    np.testing.assert_array_equal(metrics["global_step"], [64, 128, 192, 256])
    constant = PPO("CartPole-v1", **TINY, learning_rate=1e-3, anneal_lr=False, run_dir=tmp_path / "run2")
    constant.learn(total_steps=constant.batch_size * 2)
    constant.close()
    np.testing.assert_allclose(pd.read_csv(tmp_path / "run2" / "metrics.csv")["learning_rate"], [1e-3, 1e-3])


@pytest.mark.parametrize("fast_path", ["auto", "off"])
def test_clip_range_anneals_like_the_learning_rate_on_either_gradient_path(fast_path):
    agent = PPO("CartPole-v1", **TINY, clip_epsilon=0.2, anneal_clip=True, fast_path=fast_path)
    used = []
    original = agent.learner.loss_and_gradient

    def recording(minibatch, advantages):
        used.append(agent.learner.loss.clip_epsilon)  # what the loss object clips with in this step
        return original(minibatch, advantages)

    agent.learner.loss_and_gradient = recording
    agent.learn(total_steps=agent.batch_size * 4)
    assert agent.config.clip_epsilon == 0.2  # the configured start value is kept for the checkpoint
    agent.close()
    per_update = len(used) // 4
    np.testing.assert_allclose(sorted(set(used), reverse=True), [0.2, 0.15, 0.1, 0.05], rtol=1e-9)
    assert used == sorted(used, reverse=True) and len(used) == 4 * per_update


def test_value_clipping_and_entropy_options_train():
    agent = PPO("Pendulum-v1", **TINY, clip_value_loss=True, ent_coef=0.01, max_grad_norm=None, seed=0)
    stats = record_update_stats(agent)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    assert math.isfinite(stats[0]["value_loss"])


# ------------------------------------------------------------------------------------------------
# acting
# ------------------------------------------------------------------------------------------------
def test_act_cartpole_discrete():
    agent = PPO("CartPole-v1", **TINY, seed=0)
    try:
        single_obs = np.array([0.01, -0.02, 0.03, 0.04], dtype=np.float32)
        action = agent.act(single_obs)
        assert np.ndim(action) == 0
        assert agent.action_space.contains(int(action))
        assert np.asarray(action).dtype.kind == "i"
        batch_obs = np.random.default_rng(0).uniform(-0.05, 0.05, size=(7, 4)).astype(np.float32)
        actions = agent.act(batch_obs)
        assert actions.shape == (7,)
        assert all(agent.action_space.contains(int(a)) for a in actions)
        det = agent.act(batch_obs, deterministic=True)
        assert np.array_equal(det, agent.act(batch_obs, deterministic=True))
        action_pred, state = agent.predict(single_obs, deterministic=True)
        assert state is None and action_pred == agent.act(single_obs, deterministic=True)
    finally:
        agent.close()


def test_act_pendulum_box_within_bounds_even_with_wide_policy():
    agent = PPO("Pendulum-v1", **TINY, init_log_std=2.0, seed=0)  # std e^2 ~ 7.4 >> bound 2
    try:
        space = agent.action_space
        rng = np.random.default_rng(1)
        for _ in range(20):
            obs = rng.uniform(-1, 1, size=3).astype(np.float32)
            action = agent.act(obs)
            assert action.shape == (1,)
            assert space.contains(action), action
        batch = rng.uniform(-1, 1, size=(200, 3)).astype(np.float32)
        actions = agent.act(batch)
        assert actions.shape == (200, 1)
        assert actions.min() >= space.low[0] and actions.max() <= space.high[0]
        assert (np.abs(actions) == 2.0).any()  # the wide policy really needed clipping
        det = agent.act(batch, deterministic=True)
        assert det.shape == (200, 1) and np.abs(det).max() < 2.0
    finally:
        agent.close()


def test_act_multidiscrete_custom_env(multidiscrete_env):
    agent = PPO(multidiscrete_env, **TINY, seed=0)
    try:
        assert agent.action_space == spaces.MultiDiscrete([3, 4])
        rng = np.random.default_rng(2)
        for _ in range(20):
            action = agent.act(rng.uniform(-1, 1, size=4).astype(np.float32))
            assert action.shape == (2,)
            assert agent.action_space.contains(action), action
        actions = agent.act(rng.uniform(-1, 1, size=(300, 4)).astype(np.float32))
        assert actions.shape == (300, 2)
        assert actions[:, 0].min() >= 0 and actions[:, 0].max() <= 2
        assert actions[:, 1].min() >= 0 and actions[:, 1].max() <= 3
        assert len(np.unique(actions[:, 1])) == 4  # a near-uniform initial policy visits every value
        # training on the custom env works end to end (the env asserts every action it receives)
        agent.learn(total_steps=agent.batch_size * 2)
        assert agent.global_step == 2 * agent.batch_size
    finally:
        agent.close()


def test_discrete_start_offset_end_to_end(fixed_length_env):
    agent = PPO(fixed_length_env(length=4, action_space=spaces.Discrete(3, start=5)), **TINY, seed=0)
    try:
        actions = agent.act(np.zeros((100, 2), dtype=np.float32))
        assert set(np.unique(actions)) <= {5, 6, 7} and len(np.unique(actions)) == 3
        agent.learn(total_steps=agent.batch_size)  # the env asserts each action lies in its space
    finally:
        agent.close()


@pytest.mark.parametrize(
    "action_space, name",
    [
        (spaces.Sequence(spaces.Discrete(2)), "Sequence"),
        (spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Text(4)}), "Text"),
        (spaces.Text(4), "Text"),
    ],
)
def test_unsupported_action_space_is_rejected_by_name(fixed_length_env, action_space, name):
    with pytest.raises(ValueError, match=name):
        PPO(fixed_length_env(action_space=action_space), **TINY)


def test_act_rejects_wrong_observation_shape():
    agent = PPO("CartPole-v1", **TINY)
    try:
        with pytest.raises(ValueError, match="observation of shape"):
            agent.act(np.zeros(3))
        with pytest.raises(ValueError, match="observation of shape"):
            agent.act(np.zeros((2, 5)))
    finally:
        agent.close()


def test_act_applies_the_agents_observation_normalization():
    agent = PPO("Pendulum-v1", **TINY, normalize_observations=True, seed=0)
    try:
        agent.learn(total_steps=agent.batch_size)
        obs = np.random.default_rng(3).uniform(-1, 1, size=(5, 3)).astype(np.float32)
        with torch.no_grad():
            normalized = agent.obs_normalizer(obs)
            expected_mean, _ = agent.model(torch.from_numpy(normalized))
            raw_mean, _ = agent.model(torch.from_numpy(obs))
        det = agent.act(obs, deterministic=True)
        np.testing.assert_allclose(det, np.clip(expected_mean.numpy(), -2, 2), rtol=1e-6, atol=1e-6)
        assert not np.allclose(det, np.clip(raw_mean.numpy(), -2, 2))
    finally:
        agent.close()


# ------------------------------------------------------------------------------------------------
# seeding
# ------------------------------------------------------------------------------------------------
def train_params(seed: int, env="CartPole-v1", **kw) -> list[torch.Tensor]:
    agent = PPO(env, **{**TINY, **kw}, seed=seed)
    agent.learn(total_steps=agent.batch_size * 2)
    agent.close()
    return [p.detach().clone() for p in agent.model.parameters()]


def test_same_seed_gives_bit_identical_parameters():
    a = train_params(7)
    b = train_params(7)
    assert len(a) == len(b)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False))


def test_same_seed_bit_identical_continuous_with_normalization():
    kw = dict(normalize_observations=True, normalize_rewards=True)
    a = train_params(5, "Pendulum-v1", **kw)
    b = train_params(5, "Pendulum-v1", **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False))


def test_different_seeds_give_different_parameters():
    a = train_params(7)
    b = train_params(8)
    assert any(not torch.equal(x, y) for x, y in zip(a, b, strict=False))


def test_same_seed_same_sampled_actions():
    obs = np.random.default_rng(0).uniform(-0.05, 0.05, size=(50, 4)).astype(np.float32)
    first = PPO("CartPole-v1", **TINY, seed=11)
    second = PPO("CartPole-v1", **TINY, seed=11)
    try:
        assert np.array_equal(first.act(obs), second.act(obs))
    finally:
        first.close()
        second.close()


# ------------------------------------------------------------------------------------------------
# learning
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cartpole_learns_with_builtin_preset():
    """CartPole's tuned preset, its own 100k steps: the deterministic policy solves the task
    (random play scores ~20; 475 is Gymnasium's threshold)."""
    agent = PPO("CartPole-v1", seed=0)
    agent.learn()
    agent.close()
    result = agent.evaluate(episodes=10, seed=1234)
    assert result["episodes"] == 10
    assert result["mean_return"] >= 475, result

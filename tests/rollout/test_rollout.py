"""Rollout collection: autoreset steps, episode bookkeeping, flattening, and the vector env builder.

Rollout behaviour is checked on both paths: the general one (``clippo.rollout.runner``: ``EnvRunner``,
``RolloutBuffer``) and the fast path (``clippo.fastpath.rollout``: ``FastEnvRunner``,
``FlatRolloutBuffer``)."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo import PPO
from clippo.envs.make import make_vector_env
from clippo.fastpath.rollout import FastEnvRunner, FlatRolloutBuffer
from clippo.networks import encoders
from clippo.networks.policy import ActorCritic
from clippo.rollout.normalization import ObservationNormalizer, RewardScaler
from clippo.rollout.runner import Batch, EnvRunner, RolloutBuffer

#: (runner, buffer) classes of each rollout path
PATHS = {"general": (EnvRunner, RolloutBuffer), "fast": (FastEnvRunner, FlatRolloutBuffer)}


@pytest.fixture(params=sorted(PATHS))
def path(request):
    """The runner and buffer classes of the general and of the fast rollout path."""
    return PATHS[request.param]


def new_runner(envs, obs_normalizer, reward_scaler, seed=0, runner_class=EnvRunner) -> EnvRunner:
    """A runner whose envs are reset with ``seed``."""
    runner = runner_class(envs, obs_normalizer, reward_scaler)
    runner.start(seed)
    return runner


def action_storage(action_shape, action_dtype, num_outputs) -> SimpleNamespace:
    """What a rollout buffer reads of the action distribution: how actions and actor outputs are stored."""
    return SimpleNamespace(
        action_shape=tuple(action_shape), action_dtype=action_dtype, num_outputs=num_outputs, param_size=num_outputs
    )


def T(x) -> torch.Tensor:
    """A buffer field as a tensor, whether the buffer stores tensors or numpy arrays."""
    return torch.as_tensor(x)


def make_runner(env_fn, num_envs, num_steps, path, reward_scaling=False, gamma=0.9):
    runner_class, buffer_class = path
    envs = make_vector_env(env_fn, num_envs, "sync")
    torch.manual_seed(0)
    policy = ActorCritic(envs.single_observation_space, envs.single_action_space, [16])
    obs_norm = ObservationNormalizer(envs.single_observation_space.shape, 10.0, enabled=False)
    scaler = RewardScaler(num_envs, gamma, 10.0, enabled=reward_scaling)
    runner = new_runner(envs, obs_norm, scaler, seed=0, runner_class=runner_class)
    buffer = buffer_class(num_steps, num_envs, envs.single_observation_space, policy.distribution, "cpu")
    return runner, policy, buffer


def test_autoreset_steps_are_invalid_and_dropped(fixed_length_env, path):
    # Episodes of 3 steps: transitions at t = 0,1,2 then an autoreset step at t = 3, and so on.
    runner, policy, buffer = make_runner(fixed_length_env(length=3, reward=2.0), num_envs=2, num_steps=12, path=path)
    try:
        runner.collect(policy, buffer, torch.Generator().manual_seed(0))
        expected_valid = torch.tensor([t % 4 != 3 for t in range(12)])
        for env in range(2):
            assert torch.equal(T(buffer.valid)[:, env], expected_valid)
        expected_terminated = torch.tensor([t % 4 == 2 for t in range(12)])
        assert torch.equal(T(buffer.terminated)[:, 0], expected_terminated)
        assert not T(buffer.truncated).any()
        # the autoreset step carries reward 0 and the real ones carry the env's reward
        assert torch.equal(T(buffer.rewards)[:, 0], torch.where(expected_valid, 2.0, 0.0))
        # the stored observation at an autoreset step is the final observation [3, 1] of the episode;
        # transitions start from observations [0, 1], [1, 1], [2, 1]
        assert T(buffer.obs)[:, 0, 0].tolist() == [0, 1, 2, 3] * 3

        advantages, returns = torch.zeros(12, 2), torch.zeros(12, 2)
        batch = buffer.flatten(advantages, returns)
        assert len(batch) == 2 * 9
        assert (batch.obs[:, 0] < 3).all()  # no autoreset step made it into the batch

        finished_returns, finished_lengths = runner.pop_finished_episodes()
        assert finished_returns == [6.0] * 6  # 3 episodes per env, 3 steps of reward 2
        assert finished_lengths == [3] * 6
        assert runner.pop_finished_episodes() == ([], [])
    finally:
        runner.close()


def test_episode_tracking_carries_over_between_rollouts(fixed_length_env, path):
    runner, policy, buffer = make_runner(fixed_length_env(length=5, reward=1.0), num_envs=1, num_steps=4, path=path)
    try:
        gen = torch.Generator().manual_seed(0)
        runner.collect(policy, buffer, gen)
        assert runner.pop_finished_episodes() == ([], [])
        assert T(buffer.valid).all()
        runner.collect(policy, buffer, gen)  # steps 4..7: step 4 ends the episode, step 5 is the autoreset
        assert T(buffer.valid)[:, 0].tolist() == [True, False, True, True]
        assert T(buffer.terminated)[:, 0].tolist() == [True, False, False, False]
        assert runner.pop_finished_episodes() == ([5.0], [5])
        runner.collect(policy, buffer, gen)  # steps 8..11: 6, 7, 8, 9 -> second episode ends at step 10
        runner.collect(policy, buffer, gen)
        assert runner.pop_finished_episodes() == ([5.0], [5])
    finally:
        runner.close()


@pytest.mark.parametrize("reward_scaling", [False, True])
def test_an_episode_ending_on_a_rollouts_last_step_makes_the_next_rollout_start_with_its_autoreset(
    fixed_length_env, reward_scaling, path
):
    # Episodes of 4 steps, rollouts of 4 steps: step 3 ends the first episode, step 4 (the next
    # rollout's first) is its autoreset step, steps 5-8 the next episode.
    runner, policy, buffer = make_runner(
        fixed_length_env(length=4, reward=1.0), num_envs=1, num_steps=4, path=path, reward_scaling=reward_scaling
    )
    try:
        gen = torch.Generator().manual_seed(0)
        runner.collect(policy, buffer, gen)
        assert T(buffer.valid)[:, 0].tolist() == [True, True, True, True]
        assert T(buffer.terminated)[:, 0].tolist() == [False, False, False, True]
        runner.collect(policy, buffer, gen)
        assert T(buffer.valid)[:, 0].tolist() == [False, True, True, True]
        assert T(buffer.rewards)[0, 0] == 0.0  # the autoreset step's reward, scaled or not
        runner.collect(policy, buffer, gen)
        assert T(buffer.valid)[:, 0].tolist() == [True, False, True, True]
    finally:
        runner.close()


def test_recorded_returns_are_raw_rewards_even_with_reward_scaling(fixed_length_env, path):
    runner, policy, buffer = make_runner(
        fixed_length_env(length=4, reward=3.0), num_envs=2, num_steps=10, path=path, reward_scaling=True
    )
    try:
        runner.collect(policy, buffer, torch.Generator().manual_seed(0))
        valid_rewards = T(buffer.rewards)[T(buffer.valid)]
        assert not torch.allclose(valid_rewards, torch.full_like(valid_rewards, 3.0))  # scaled in the buffer
        returns, lengths = runner.pop_finished_episodes()
        assert returns == [12.0, 12.0, 12.0, 12.0]  # raw: 4 steps of reward 3, two episodes per env
        assert lengths == [4, 4, 4, 4]
    finally:
        runner.close()


def test_truncation_is_recorded_separately(fixed_length_env, path):
    runner, policy, buffer = make_runner(fixed_length_env(length=2, truncate=True), num_envs=1, num_steps=6, path=path)
    try:
        runner.collect(policy, buffer, torch.Generator().manual_seed(0))
        assert T(buffer.truncated)[:, 0].tolist() == [False, True, False, False, True, False]
        assert not T(buffer.terminated).any()
        assert T(buffer.valid)[:, 0].tolist() == [True, True, False, True, True, False]
    finally:
        runner.close()


def test_last_value_is_the_value_of_the_next_observation(fixed_length_env, path):
    runner, policy, buffer = make_runner(fixed_length_env(length=10), num_envs=2, num_steps=3, path=path)
    try:
        runner.collect(policy, buffer, torch.Generator().manual_seed(0))
        buffer.estimate_values(policy)  # the trainer's step between collection and GAE
        with torch.no_grad():
            expected = policy.value(torch.tensor([[3.0, 1.0], [3.0, 1.0]]))
        torch.testing.assert_close(T(buffer.last_value), expected)
        # stored values and log-probs are those of the policy on the stored observations/actions
        with torch.no_grad():
            lp, _, values = policy.evaluate_actions(T(buffer.obs).reshape(-1, 2), T(buffer.actions).reshape(-1))
        torch.testing.assert_close(values, T(buffer.values).reshape(-1))
        torch.testing.assert_close(lp, T(buffer.logprobs).reshape(-1))
    finally:
        runner.close()


@pytest.mark.parametrize("fast_path", ["auto", "off"])
def test_cartpole_autoreset_counts(fast_path):
    """CartPole-v1's native vector env: every episode end is followed by exactly one invalid step."""
    agent = PPO("CartPole-v1", num_envs=4, num_steps=100, num_minibatches=1, seed=3, fast_path=fast_path)
    try:
        assert agent.buffer_class is (FlatRolloutBuffer if fast_path == "auto" else RolloutBuffer)
        runner = agent.env_runner()
        model = agent.model
        buffer = agent.new_rollout_buffer()
        assert buffer.actions.shape == (100, 4) and buffer.actions.dtype == np.int64
        runner.collect(model, buffer, agent.generator)
        dones = T(buffer.terminated) | T(buffer.truncated)
        assert dones.sum() > 4  # a random policy ends many episodes in 100 steps
        # invalid exactly at the step following an episode end
        expected_valid = torch.ones_like(T(buffer.valid))
        expected_valid[1:] = ~dones[:-1]
        assert torch.equal(T(buffer.valid), expected_valid)
        batch = buffer.flatten(torch.zeros(100, 4), torch.zeros(100, 4))
        assert len(batch) == 400 - int(dones[:-1].sum())
        returns, lengths = runner.pop_finished_episodes()
        assert len(returns) == int(dones.sum())
        assert returns == [float(n) for n in lengths]  # CartPole gives reward 1 per step
        assert sum(lengths) <= int(T(buffer.valid).sum())
    finally:
        agent.close()


@pytest.mark.parametrize("buffer_class", [RolloutBuffer, FlatRolloutBuffer])
def test_flatten_is_time_major_and_masks_all_fields(buffer_class):
    obs_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    buffer = buffer_class(3, 2, obs_space, action_storage((2,), torch.int64, 2), device="cpu")
    ids = torch.arange(6, dtype=torch.float32).reshape(3, 2)  # id = t * 2 + env
    buffer.obs[:] = ids[..., None].expand(3, 2, 2)
    buffer.actions[:] = ids.long()[..., None].expand(3, 2, 2)
    buffer.logprobs[:] = ids
    buffer.values[:] = ids + 100
    buffer.valid[1, 0] = False
    buffer.valid[2, 1] = False
    batch = buffer.flatten(ids + 200, ids + 300)
    kept = [0, 1, 3, 4]
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.obs[:, 0].tolist() == kept
    assert batch.actions.shape == (4, 2) and batch.actions[:, 1].tolist() == kept
    assert batch.logprobs.tolist() == kept
    assert batch.values.tolist() == [k + 100 for k in kept]
    assert batch.advantages.tolist() == [k + 200 for k in kept]
    assert batch.returns.tolist() == [k + 300 for k in kept]
    sub = batch[torch.tensor([3, 0])]
    assert sub.logprobs.tolist() == [4, 0] and sub.returns.tolist() == [304, 300]


# ------------------------------------------------------------------------------------------------
# vector env construction
# ------------------------------------------------------------------------------------------------
def test_make_vector_env_variants(fixed_length_env):
    envs = make_vector_env("CartPole-v1", 3)
    try:
        assert envs.num_envs == 3
    finally:
        envs.close()
    envs = make_vector_env(fixed_length_env(), 2, "sync")
    try:
        assert envs.num_envs == 2 and envs.single_action_space == spaces.Discrete(2)
    finally:
        envs.close()


class InfoEnv(gym.Env):
    """Reports a per-step info entry, as MuJoCo envs do."""

    metadata: dict = {"render_modes": []}
    observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {"x_position": 0.0}

    def step(self, action):
        return np.zeros(1, dtype=np.float32), 1.0, False, False, {"x_position": 1.0}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs_made_from_an_id_drop_per_step_infos(mode):
    gym.register("ClippoInfoTest-v0", entry_point=InfoEnv, max_episode_steps=3)
    try:
        envs = make_vector_env("ClippoInfoTest-v0", 2, mode)
        try:
            assert envs.reset(seed=0)[1] == {}
            for _ in range(4):  # past a truncation and its autoreset step
                assert envs.step(np.zeros(2, dtype=np.int64))[4] == {}
        finally:
            envs.close()
        envs = gym.make_vec("ClippoInfoTest-v0", 2, vectorization_mode="sync")  # what is dropped
        envs.reset(seed=0)
        assert "x_position" in envs.step(np.zeros(2, dtype=np.int64))[4]
        envs.close()
    finally:
        del gym.registry["ClippoInfoTest-v0"]


def test_make_vector_env_errors(fixed_length_env):
    with pytest.raises(ValueError, match="unknown environment id 'NoSuchEnv-v0'"):
        make_vector_env("NoSuchEnv-v0", 1)
    with pytest.raises(ValueError, match="native"):
        make_vector_env("Pendulum-v1", 1, "native")
    with pytest.raises(ValueError, match="native"):
        make_vector_env(fixed_length_env(), 1, "native")
    with pytest.raises(TypeError, match="env must be"):
        make_vector_env(42, 1)


class CounterEnv(gym.Env):
    """Discrete observations: the step index within the episode (0..5); episodes of 5 steps."""

    metadata: dict = {}

    def __init__(self) -> None:
        self.observation_space = spaces.Discrete(6)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action):
        self.t += 1
        return self.t, 1.0, self.t >= 5, False, {}


@pytest.mark.parametrize("fast_path", ["off", "auto"])
@pytest.mark.parametrize("normalize_observations", [False, True])
def test_discrete_observations_train_on_their_one_hot_encoding(normalize_observations, fast_path):
    """Observation normalization applies to Box observations only (as in PPO.act): a Discrete
    observation is a category, and the network must always see the one-hot of the raw state.

    On the general path the batch holds the raw states and the encoder one-hot encodes them
    (``encoders.flatten_input``): what the encoders read in each minibatch step is recorded. The
    fast path stores the one-hot rows themselves, and the hand-written gradient reads them."""
    agent = PPO(
        CounterEnv,
        num_envs=2,
        num_steps=16,
        num_minibatches=1,
        update_epochs=1,
        normalize_observations=normalize_observations,
        seed=0,
        fast_path=fast_path,
    )
    seen: list[list[torch.Tensor]] = []  # per minibatch step, what each encoder read
    recording: list[list[torch.Tensor]] = []  # the step under way
    original = agent.loss_and_gradient
    original_flatten = encoders.flatten_input

    def spy(minibatch, advantages):
        if fast_path == "off":
            assert minibatch.obs.dtype == torch.int64  # the raw states
        else:
            assert minibatch.obs.dtype == torch.float32 and minibatch.obs.shape[1] == 6  # one-hot rows
            seen.append([minibatch.obs.clone()])
            return original(minibatch, advantages)
        recording.append([])
        try:
            terms = original(minibatch, advantages)
        finally:
            seen.append(recording.pop())
        return terms

    def recording_flatten(x, space):
        flat = original_flatten(x, space)
        if recording:
            recording[-1].append(flat.detach().clone())
        return flat

    agent.loss_and_gradient = spy
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encoders, "flatten_input", recording_flatten)
        try:
            agent.learn(total_steps=agent.batch_size * 2)
        finally:
            agent.close()
    assert len(seen) == 2
    for inputs in seen:
        assert inputs  # the actor's and the critic's encoders
        for obs in inputs:
            assert obs.shape[1] == 6
            assert torch.equal(obs.sum(dim=1), torch.ones(len(obs)))
            assert set(obs.unique().tolist()) == {0.0, 1.0}
            # the transitions start from states 0..4 (state 5 is only ever a final observation)
            assert set(obs.argmax(dim=1).tolist()) == {0, 1, 2, 3, 4}


def test_box_actions_are_stored_unclipped_and_sent_clipped(fixed_length_env, path):
    box = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    envs = make_vector_env(fixed_length_env(length=50, action_space=box), 2, "sync")
    torch.manual_seed(0)
    policy = ActorCritic(envs.single_observation_space, box, [16], init_log_std=1.5)  # std ~4.5 >> bounds
    runner_class, buffer_class = path
    runner = new_runner(
        envs,
        ObservationNormalizer((2,), 10.0, False),
        RewardScaler(2, 0.9, 10.0, False),
        seed=0,
        runner_class=runner_class,
    )
    buffer = buffer_class(20, 2, envs.single_observation_space, policy.distribution, "cpu")
    try:
        runner.collect(policy, buffer, torch.Generator().manual_seed(0))
        stored = T(buffer.actions)
        assert stored.abs().max() > 1.0  # the buffer keeps the sampled (unclipped) action
        for i, env in enumerate(envs.envs):
            sent = np.stack(env.actions_seen)
            assert sent.shape == (20, 2)
            assert np.abs(sent).max() <= 1.0
            np.testing.assert_array_equal(sent, np.clip(stored[:, i].numpy(), -1.0, 1.0))
        # the stored log-probabilities are those of the unclipped samples
        with torch.no_grad():
            lp, _, _ = policy.evaluate_actions(T(buffer.obs).reshape(-1, 2), stored.reshape(-1, 2))
        torch.testing.assert_close(lp, T(buffer.logprobs).reshape(-1))
    finally:
        runner.close()

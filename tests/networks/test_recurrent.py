"""Recurrent policies: the state's resets, the stored sequences' exact replay, the sequence
minibatches, the SB3 prediction contract, every encoder and masks with memory, and learning."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from clippo import PPO
from clippo.core.errors import ConfigError
from clippo.networks.recurrent import RecurrentCore, episode_pieces
from tests.helpers import run_cli
from tests.toy_envs import CueEnv, DictGoalEnv, MaskedGridEnv, SpotImageEnv
from tests.training.test_ppo import record_first_logratios, record_logratios

TINY = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, hidden_sizes=[16], recurrent_hidden_size=8)


def cue_env(length: int = 3):
    return lambda: CueEnv(length)


# ------------------------------------------------------------------------------------------------
# the core: one fused replay equals stepping through time
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequence_replay_equals_stepping_with_resets(kind, seed):
    rng = np.random.default_rng(seed)
    length, num_seq, width = 12, 5, 3
    core = RecurrentCore(width, 6, kind)
    features = torch.randn(length, num_seq, width, generator=torch.Generator().manual_seed(seed))
    starts = rng.random((length, num_seq)) < 0.25
    starts[:, 0] = False  # one sequence with no start at all
    starts[0, 1] = True  # one whose first step starts an episode (its stored state is dropped)
    initial = torch.randn(num_seq, core.state_size, generator=torch.Generator().manual_seed(seed + 10))

    state, stepped = initial, []
    for t in range(length):
        out, state = core.step(features[t], state, torch.from_numpy(starts[t]))
        stepped.append(out)
    replayed = core.sequence(features, initial, episode_pieces(starts))
    torch.testing.assert_close(replayed, torch.cat(stepped), rtol=1e-5, atol=1e-6)


def test_episode_pieces_cover_every_step_once():
    starts = np.random.default_rng(0).random((20, 7)) < 0.3
    pieces = episode_pieces(starts)
    gathered = pieces.gather.reshape(pieces.max_len, pieces.count)
    assert sorted(gathered.reshape(-1)[pieces.scatter].tolist()) == list(range(20 * 7))
    # each piece reads consecutive steps of one sequence, beginning at a start or at step 0
    for piece in range(pieces.count):
        slots = [s for s in range(pieces.max_len) if (pieces.scatter == s * pieces.count + piece).any()]
        steps = gathered[slots, piece].numpy()
        t, seq = steps // 7, steps % 7
        assert (seq == seq[0]).all() and (np.diff(t) == 1).all()
        assert t[0] == 0 or starts[t[0], seq[0]]
        assert not starts[t[1:], seq[1:]].any()
    assert len(pieces.first) == 7


# ------------------------------------------------------------------------------------------------
# acting: the state is carried, reset where episodes start (the autoreset step included)
# ------------------------------------------------------------------------------------------------
def test_state_resets_at_episode_starts_including_after_the_autoreset_step():
    agent = PPO(cue_env(3), **TINY, recurrent="lstm", seed=0)
    buffer = agent.new_rollout_buffer()
    runner = agent.env_runner()
    model = agent.model
    for _ in range(2):  # the second rollout begins from the state the first one ended with
        state_before = runner.state
        runner.collect(model, buffer, agent.generator)
        step_index = buffer.obs[..., 2]
        # Episodes of 3 steps, then the autoreset step (on the final observation, t=3): the
        # observation after it (t=0) begins the next episode, and only those are starts.
        expected_starts = step_index == 0
        np.testing.assert_array_equal(buffer.starts, expected_starts)
        assert not buffer.valid[step_index == 3].any() and buffer.valid[step_index < 3].all()
        # the stored state is the one carried in: zeros only at the very first step of the run
        if state_before is None:
            assert not buffer.states[0].any()
        else:
            np.testing.assert_array_equal(buffer.states[0], state_before.numpy())
        # at a start, the policy's outputs are those of a zero state whatever it carried
        t, i = np.argwhere(expected_starts[1:])[0] + (1, 0)
        assert buffer.states[t, i].any()
        obs = torch.from_numpy(buffer.obs[t, i][None])
        with torch.no_grad():
            _, value, _ = model.step(obs, model.initial_state(1), torch.tensor([False]))
        assert buffer.values[t, i] == pytest.approx(value.item(), abs=1e-6)
    agent.close()


def test_values_are_taken_while_acting_and_bootstrap_from_the_carried_state():
    agent = PPO(cue_env(4), **TINY, recurrent="gru", network="separate", seed=1)
    buffer, runner = agent.new_rollout_buffer(), agent.env_runner()
    runner.collect(agent.model, buffer, agent.generator)
    assert buffer.values_stored and buffer.bootstrap_stored
    values, last = buffer.values.copy(), buffer.last_value.copy()
    buffer.estimate_values(agent.model)  # nothing to recompute: a feed-forward pass would be wrong
    np.testing.assert_array_equal(buffer.values, values)
    np.testing.assert_array_equal(buffer.last_value, last)
    with torch.no_grad():  # the runner keeps the state after the last step, for the next rollout
        _, value, _ = agent.model.step(
            torch.from_numpy(runner.next_obs), runner.state, torch.from_numpy(runner.episode_start)
        )
    np.testing.assert_allclose(last, value.numpy(), atol=1e-6)
    agent.close()


# ------------------------------------------------------------------------------------------------
# the update: exact replay, whole sequences, every valid step once per epoch
# ------------------------------------------------------------------------------------------------
RATIO_CASES = {
    "lstm-separate-whole": dict(recurrent="lstm", network="separate"),
    "gru-shared-bptt4": dict(recurrent="gru", network="shared", bptt_length=4),
    "lstm-shared-bptt8": dict(recurrent="lstm", network="shared", bptt_length=8),
}


@pytest.mark.parametrize("env", ["cue", "Pendulum-v1"])
@pytest.mark.parametrize("case", list(RATIO_CASES))
def test_first_update_replays_the_rollout_log_probabilities_exactly(env, case):
    source = cue_env(3) if env == "cue" else env
    agent = PPO(source, **TINY, **RATIO_CASES[case], learning_rate=1e-2, seed=2)
    firsts = record_first_logratios(agent)
    agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    assert len(firsts) == 3
    for logratio in firsts:  # each update's first minibatch, before its first Adam step
        assert logratio.numel() > 0 and logratio.abs().max().item() < 1e-6


def test_later_minibatches_move_the_policy_while_the_first_ratio_stays_one():
    agent = PPO(cue_env(3), **TINY, recurrent="lstm", learning_rate=1e-2, seed=3)
    calls = record_logratios(agent)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    assert calls[0].abs().max().item() < 1e-6
    assert max(call.abs().max().item() for call in calls[1:]) > 1e-4


@pytest.mark.parametrize("bptt_length", [0, 4])
def test_sequence_minibatches_cover_every_valid_step_once_per_epoch(bptt_length):
    agent = PPO("Pendulum-v1", **{**TINY, "num_minibatches": 3}, recurrent="lstm", bptt_length=bptt_length, seed=4)
    seen: list = []
    original = agent.loss_and_gradient

    def recording(minibatch, advantages):
        seen.append((minibatch.starts.shape, minibatch.samples("logprobs").clone(), minibatch.initial_state.shape))
        return original(minibatch, advantages)

    agent.loss_and_gradient = recording
    batches = []
    original_update = agent.update_policy
    agent.update_policy = lambda batch, plan=None: (batches.append(batch), original_update(batch, plan))[1]
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    (batch,) = batches
    length = bptt_length or TINY["num_steps"]
    assert len(batch) == TINY["num_envs"] * TINY["num_steps"] // length
    assert len(seen) == 3 * TINY["update_epochs"]
    everything = np.sort(batch.samples("logprobs").numpy())
    for epoch in range(TINY["update_epochs"]):
        steps = seen[epoch * 3 : (epoch + 1) * 3]
        for starts_shape, _, state_shape in steps:  # whole sequences in time order, each with its stored state
            assert starts_shape[0] == length and state_shape[0] == starts_shape[1]
        np.testing.assert_array_equal(np.sort(torch.cat([s[1] for s in steps]).numpy()), everything)


# ------------------------------------------------------------------------------------------------
# the SB3 prediction contract
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_predict_with_state_matches_step_by_step_acting(kind):
    agent = PPO(cue_env(3), **TINY, recurrent=kind, network="separate", seed=5)
    agent.learn(total_steps=agent.batch_size)
    envs = gym.vector.SyncVectorEnv([cue_env(3)] * 2, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs, _ = envs.reset(seed=0)
    state, episode_start = None, np.ones(2, dtype=bool)
    reference_state = agent.model.initial_state(2)
    for _ in range(10):
        action, state = agent.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        with torch.no_grad():
            params, _, reference_state = agent.model.step(
                torch.from_numpy(obs), reference_state, torch.from_numpy(episode_start)
            )
        expected = agent.model.distribution.sample(params, None).numpy()  # no noise: the mode
        np.testing.assert_array_equal(action, expected)
        assert isinstance(state, np.ndarray) and state.shape == (2, agent.model.state_size)
        np.testing.assert_allclose(state, reference_state.numpy(), atol=1e-6)
        obs, _, terminated, truncated, _ = envs.step(action)
        episode_start = terminated | truncated
    envs.close()
    # one unbatched observation gives one action and a [state_size] state
    single = CueEnv(3)
    action, state = agent.predict(single.reset(seed=0)[0], deterministic=True)
    assert np.ndim(action) == 0 and state.shape == (agent.model.state_size,)
    agent.close()


def test_predict_state_changes_the_action_where_memory_matters():
    """A policy that learned the cue task answers the query from its state: the same query
    observation after different cues gets different actions."""
    agent = PPO(cue_env(3), **LEARN, seed=0)
    agent.learn()
    answers = {}
    for cue in (-1.0, 1.0):
        state = None
        for t, obs in enumerate([[cue, 0, 0], [0, 0, 1], [0, 1, 2]]):
            action, state = agent.predict(
                np.array(obs, dtype=np.float32), state=state, episode_start=np.array(t == 0), deterministic=True
            )
        answers[cue] = int(action)
    agent.close()
    assert answers == {-1.0: 0, 1.0: 1}


def test_act_and_feed_forward_calls_refuse_a_recurrent_agent_with_one_line():
    agent = PPO(cue_env(3), **TINY, recurrent="gru")
    with pytest.raises(ValueError) as info:
        agent.act(np.zeros(3, dtype=np.float32))
    message = str(info.value)
    assert "predict" in message and "state" in message and "\n" not in message
    with pytest.raises(RuntimeError, match="step"):
        agent.model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="episode_start"):
        agent.predict(
            np.zeros((2, 3), dtype=np.float32),
            state=np.zeros((2, agent.model.state_size)),
            episode_start=np.ones(3, dtype=bool),
        )
    with pytest.raises(ValueError, match="state"):
        agent.predict(np.zeros((2, 3), dtype=np.float32), state=np.zeros((2, 5)))
    agent.close()


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, named",
    [
        (dict(recurrent="rnn"), "recurrent='rnn'"),
        (dict(recurrent="lstm", recurrent_hidden_size=0), "recurrent_hidden_size=0"),
        (dict(recurrent="lstm", bptt_length=5), "bptt_length=5"),
        (dict(recurrent="lstm", bptt_length=-1), "bptt_length=-1"),
        (dict(recurrent="lstm", num_minibatches=5), "num_minibatches=5"),  # 4 envs: 4 sequences
    ],
)
def test_bad_recurrent_settings_are_named(options, named):
    with pytest.raises(ConfigError) as info:
        PPO(cue_env(3), **{**TINY, **options})
    assert named in str(info.value) and "\n" not in str(info.value)


def test_state_sizes_and_parameters_of_shared_and_separate_cores():
    lstm = PPO(cue_env(3), **TINY, recurrent="lstm", network="shared")
    gru = PPO(cue_env(3), **TINY, recurrent="gru", network="separate")
    assert lstm.model.state_size == 16 and gru.model.state_size == 16  # LSTM h and c; two GRU cores
    assert hasattr(lstm.model, "core") and hasattr(gru.model, "actor_core") and hasattr(gru.model, "critic_core")
    assert not lstm.model.is_mlp and lstm.runner_class.__name__ == "EnvRunner"  # the general torch path
    lstm.close(), gru.close()


# ------------------------------------------------------------------------------------------------
# every encoder and masks, with memory
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, options",
    [
        (lambda: SpotImageEnv(size=12), dict(network="shared")),
        (lambda: DictGoalEnv(), dict(network="separate")),
        (lambda: MaskedGridEnv(), dict(network="shared")),
        ("Pendulum-v1", dict(network="separate", normalize_observations=True)),
    ],
    ids=["image-cnn", "dict", "masked-multidiscrete", "continuous"],
)
def test_every_encoder_and_action_space_trains_with_a_core_and_replays_exactly(source, options, tmp_path):
    agent = PPO(source, **{**TINY, **options}, recurrent="gru", run_dir=tmp_path / "run", tensorboard=False, seed=6)
    firsts = record_first_logratios(agent)
    agent.learn(total_steps=agent.batch_size * 2)
    assert all(r.abs().max().item() < 1e-6 for r in firsts)
    loaded = PPO.load(tmp_path / "run", env=source)
    result = loaded.evaluate(episodes=2, seed=0)
    assert result["episodes"] == 2
    agent.close(), loaded.close()


def test_masked_actions_are_never_taken_by_a_recurrent_policy():
    agent = PPO(lambda: MaskedGridEnv(), **TINY, recurrent="lstm", seed=7)
    agent.learn(total_steps=agent.batch_size * 3)  # MaskedGridEnv raises on a masked action
    assert agent.evaluate(episodes=4, seed=1)["mean_return"] == 5.0
    agent.close()


# ------------------------------------------------------------------------------------------------
# checkpoints and learning
# ------------------------------------------------------------------------------------------------
def test_save_load_keeps_recurrent_actions_and_states(tmp_path):
    agent = PPO(cue_env(3), **TINY, recurrent="lstm", seed=8)
    agent.learn(total_steps=agent.batch_size)
    agent.save(tmp_path / "a.pt")
    loaded = PPO.load(tmp_path / "a.pt", env=cue_env(3))
    assert loaded.config.recurrent == "lstm"
    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    first = agent.predict(obs, deterministic=True)
    second = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    agent.close(), loaded.close()


LEARN = dict(
    total_steps=12_000,
    num_envs=8,
    num_steps=24,
    num_minibatches=2,
    update_epochs=4,
    learning_rate=3e-3,
    hidden_sizes=[16],
    recurrent="gru",
    recurrent_hidden_size=16,
    gamma=0.9,
    ent_coef=0.01,
)


@pytest.mark.slow
def test_memory_task_is_learned_with_a_core_and_not_without():
    memory = PPO(cue_env(3), **LEARN, seed=1)
    memory.learn()
    feed_forward = PPO(cue_env(3), **{**LEARN, "recurrent": "none"}, seed=1)
    feed_forward.learn()
    with_memory = memory.evaluate(episodes=40, seed=0)["mean_return"]
    without = feed_forward.evaluate(episodes=40, seed=0)["mean_return"]
    memory.close(), feed_forward.close()
    assert with_memory >= 0.95 and without <= 0.75


def test_cli_trains_evaluates_and_plays_a_recurrent_agent(tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "clippo/CartPoleNoVel-v1",
            "--run-dir",
            str(run_dir),
            "--recurrent",
            "lstm",
            "--recurrent-hidden-size",
            "8",
            "--num-envs",
            "2",
            "--num-steps",
            "16",
            "--num-minibatches",
            "2",
            "--update-epochs",
            "1",
            "--total-steps",
            "64",
            "--bptt-length",
            "8",
            "--eval-episodes",
            "2",
            "--no-tensorboard",
        ]
    )
    assert code == 0, err
    code, out, err = run_cli(["eval", str(run_dir), "--episodes", "2"])
    assert code == 0 and "mean" in out, err
    assert PPO.load(run_dir).config.bptt_length == 8
    # enjoy plays with the carried state: its episodes are PPO.evaluate's on one env
    code, out, err = run_cli(["enjoy", str(run_dir), "--episodes", "2", "--seed", "4"])
    assert code == 0, err
    expected = PPO.load(run_dir).evaluate(
        episodes=2, seed=4, num_envs=1, env=lambda: gym.make("clippo/CartPoleNoVel-v1")
    )
    assert [line.split("return ")[1].split(",")[0] for line in out.splitlines()[:2]] == [
        f"{r:.2f}" for r in expected["returns"]
    ]
    code, _, err = run_cli(["plot", str(run_dir), "-o", str(tmp_path / "curve.png")])
    assert code == 0 and (tmp_path / "curve.png").is_file(), err
    code, out, err = run_cli(["report", str(run_dir)])
    assert code == 0 and out, err


# ------------------------------------------------------------------------------------------------
# the partially observed tasks shipped with clippo
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env_id, full_id, kept",
    [
        ("clippo/CartPoleNoVel-v1", "CartPole-v1", [0, 2]),
        ("clippo/PendulumNoVel-v1", "Pendulum-v1", [0, 1]),
    ],
)
def test_no_velocity_tasks_hide_the_velocities(env_id, full_id, kept):
    partial, full = gym.make(env_id), gym.make(full_id)
    assert partial.observation_space.shape == (len(kept),)
    obs, _ = partial.reset(seed=3)
    full_obs, _ = full.reset(seed=3)
    np.testing.assert_array_equal(obs, full_obs[kept])
    action = partial.action_space.sample()
    np.testing.assert_array_equal(partial.step(action)[0], full.step(action)[0][kept])
    assert partial.spec.max_episode_steps == full.spec.max_episode_steps
    partial.close(), full.close()

"""Multi-agent PPO on PettingZoo envs (clippo.multiagent): adapters, groups, critics, per-agent
storage and advantages, self-play, acting, checkpoints and one-line errors, on tiny toy envs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

pytest.importorskip("pettingzoo")

from clippo import PPO
from clippo.core import precision
from clippo.core.errors import ActionMaskError, ConfigError
from clippo.multiagent.agent import MultiAgentPPO
from clippo.multiagent.buffer import IDLE, OBSERVED
from clippo.multiagent.pettingzoo import UntrustedImportError, import_env_module
from clippo.multiagent.runner import GroupActor
from clippo.multiagent.selfplay import ELO_START, RANDOM, SelfPlay, elo_update
from clippo.multiagent.toy_envs import LeaveJoin, Rendezvous, TakeAway, TwoKinds
from tests.helpers import run_cli

SMALL = dict(num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2, tensorboard=False, seed=0)


def collect_once(agent: MultiAgentPPO) -> int:
    runner = agent.env_runner()
    return runner.collect([learner.generator for learner in agent.learners])


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text.strip(), text
    return text


# --- dispatch and bad input ---------------------------------------------------------------------
def test_ppo_hands_a_pettingzoo_factory_to_the_multiagent_ppo():
    agent = PPO(Rendezvous, **SMALL)
    assert isinstance(agent, MultiAgentPPO)
    assert agent.config.env_id == "Rendezvous"
    gym_agent = PPO("CartPole-v1", num_envs=2)
    assert type(gym_agent) is PPO
    gym_agent.close()
    agent.close()


@pytest.mark.parametrize(
    "env, error, words",
    [
        (lambda: object(), TypeError, "neither a gymnasium.Env nor a PettingZoo env"),
        (Rendezvous(), TypeError, "env instance"),
        (42, TypeError, "got 42"),
        ("no_such_package_xyz.envs", ValueError, "does not import"),
        ("json.decoder", ValueError, "no parallel_env() or env() constructor"),
    ],
)
def test_bad_envs_are_one_line_errors(env, error, words):
    with pytest.raises(error) as info:
        PPO(env, **SMALL)
    assert words in one_line(info.value)


def test_untrusted_module_paths_are_refused():
    with pytest.raises(UntrustedImportError) as info:
        import_env_module("pettingzoo.classic.tictactoe_v3", trusted=False)
    assert "trust_code=True" in one_line(info.value)
    assert import_env_module("pettingzoo.classic.tictactoe_v3", trusted=True).__name__.endswith("tictactoe_v3")


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"critic": "global"}, "critic='global' is invalid"),
        ({"use_sde": True}, "not supported for multi-agent"),
        ({"reward_sign": True}, "not supported for multi-agent"),
        ({"frame_stack": 2}, "not supported for multi-agent"),
        ({"policy_groups": {"g": ["agent_0", "nobody"]}}, "agent 'nobody'"),
        ({"policy_groups": {"g": ["agent_0", "agent_1"]}}, "leaves out agent(s) agent_2"),
        ({"policy_groups": {"g": ["agent_0"], "h": ["agent_0", "agent_1", "agent_2"]}}, "in both"),
        ({"critic": "centralized", "network": "shared"}, "network='shared' is invalid"),
        ({"selfplay": "on"}, "selfplay='on' is invalid"),
        ({"selfplay_latest_prob": 1.5}, "selfplay_latest_prob=1.5 is invalid"),
        ({"selfplay_random_prob": -0.1}, "selfplay_random_prob=-0.1 is invalid: it must be in [0, 1]"),
        ({"selfplay_random_prob": 0.8}, "with selfplay_latest_prob=0.25: their sum must be <= 1"),
    ],
)
def test_bad_settings_are_one_line_errors(overrides, words):
    with pytest.raises((ConfigError, ValueError)) as info:
        PPO(Rendezvous, **{**SMALL, **overrides})
    assert words in one_line(info.value)


def test_groups_of_different_spaces_cannot_be_named_together():
    with pytest.raises(ConfigError) as info:
        PPO(TwoKinds, **SMALL, policy_groups={"all": ["speaker", "listener"]})
    assert "different observation spaces" in one_line(info.value)


# --- groups ---------------------------------------------------------------------------------------
def test_identical_agents_share_one_policy_and_different_ones_get_their_own():
    shared = PPO(Rendezvous, **SMALL)
    assert [(spec.name, spec.agents) for spec in shared.specs] == [("shared", ["agent_0", "agent_1", "agent_2"])]
    kinds = PPO(TwoKinds, **SMALL)
    assert [(spec.name, spec.agents) for spec in kinds.specs] == [("speaker", ["speaker"]), ("listener", ["listener"])]
    assert kinds.groups["speaker"].model.distribution.num_outputs == 3
    assert kinds.groups["listener"].model.distribution.num_outputs == 2
    named = PPO(Rendezvous, **SMALL, policy_groups={"solo": ["agent_0"], "pair": ["agent_1", "agent_2"]})
    assert [(spec.name, spec.agents) for spec in named.specs] == [
        ("solo", ["agent_0"]),
        ("pair", ["agent_1", "agent_2"]),
    ]
    # different groups do not start from the same weights
    solo, pair = named.learners
    assert not torch.equal(solo.model.actor_head.weight, pair.model.actor_head.weight)
    kinds.learn(64, progress=False)  # both policies train
    for agent in (shared, kinds, named):
        agent.close()


def test_agent_id_feature_appends_a_one_hot_per_agent():
    agent = PPO(Rendezvous, **SMALL, agent_id_feature=True)
    spec = agent.specs[0]
    assert spec.policy_space.shape == (4 + 3,)
    collect_once(agent)
    buffer = agent.env_runner().buffers[0]
    rows = buffer.obs[0]  # row 0 of every slot: [target one-hot, agent one-hot]
    np.testing.assert_array_equal(rows[:, 4:], np.tile(np.eye(3, dtype=np.float32), (2, 1)))
    agent.close()


# --- per-agent transitions and advantages -------------------------------------------------------
def test_agents_that_leave_and_join_store_only_real_transitions():
    # one env copy, 4-step episodes: a0 acts twice then terminates, a1 four times (truncated),
    # a2 joins at step 2 and acts twice (truncated)
    agent = PPO(LeaveJoin, num_envs=1, num_steps=8, num_minibatches=1, tensorboard=False)
    taken = collect_once(agent)
    buffer = agent.env_runner().buffers[0]
    counts = buffer.valid.sum(axis=0)
    assert counts.tolist() == [4, 8, 4]  # two whole episodes
    assert taken == 16
    # each agent's stored rewards are its own, never from a step it was not in
    for slot, reward in enumerate([1.0, 2.0, 3.0]):
        np.testing.assert_array_equal(buffer.rewards[buffer.valid[:, slot], slot], reward)
    # termination and truncation flags where they happened
    assert buffer.terminated[:, 0].sum() == 2 and buffer.truncated[:, 0].sum() == 0
    assert buffer.truncated[:, 1].sum() == 2 and buffer.terminated[:, 1].sum() == 0
    assert buffer.truncated[:, 2].sum() == 2
    agent.close()


def reference_gae(steps, gamma, lam):
    """GAE of one agent's episode from (reward, V(s), V(s'), terminated, bootstrap_at_end) lists."""
    advantages, later = [], 0.0
    for reward, value, next_value, terminated, last in reversed(steps):
        delta = reward + (0.0 if terminated else gamma * next_value) - value
        later = delta + (0.0 if last else gamma * lam * later)
        advantages.append(later)
    return advantages[::-1]


def test_advantages_bootstrap_on_truncation_and_the_cut_but_not_on_termination():
    gamma, lam = 0.9, 0.8
    agent = PPO(LeaveJoin, num_envs=1, num_steps=6, num_minibatches=1, tensorboard=False, gamma=gamma, gae_lambda=lam)
    collect_once(agent)
    buffer = agent.env_runner().buffers[0]

    def value_fn(obs):  # V(s) = 1 + t, t read from the observation [t / 4, ...]
        return 1.0 + 4.0 * obs[:, 0]

    buffer.estimate_values(value_fn)
    advantages, returns = buffer.advantages(gamma, lam)
    V = lambda t: 1.0 + t  # noqa: E731
    # episode 1 (steps 0-3), then the first 2 steps of episode 2, cut there
    expected = {
        # a0: acts at t=0, 1, terminated at its 2nd action: no bootstrap; the same again in episode 2
        0: reference_gae([(1, V(0), V(1), False, False), (1, V(1), V(2), True, True)], gamma, lam) * 2,
        # a1: t=0..3, truncated after t=3: bootstraps from the final observation (t=4); episode 2:
        # t=0, 1, cut by the rollout's end: bootstraps from t=2
        1: reference_gae([(2, V(t), V(t + 1), False, t == 3) for t in range(4)], gamma, lam)
        + reference_gae([(2, V(t), V(t + 1), False, t == 1) for t in range(2)], gamma, lam),
        # a2: joins at t=2, acts at t=2, 3, truncated: bootstraps from t=4; in episode 2 it has just
        # joined (due to act at t=2): no transition yet
        2: reference_gae([(3, V(2), V(3), False, False), (3, V(3), V(4), False, True)], gamma, lam),
    }
    for slot, values in expected.items():
        got = advantages[:, slot][torch.from_numpy(buffer.valid[:, slot])]
        np.testing.assert_allclose(got.numpy(), values, rtol=1e-5, atol=1e-5)
    # the batch: the valid rows only, returns = advantages + values
    batch = buffer.flatten(advantages, returns)
    assert len(batch) == 4 + 6 + 2
    np.testing.assert_allclose(batch.returns.numpy(), (batch.advantages + batch.values).numpy(), rtol=1e-6)
    # the cut: a1's and a2's current rows (t=2 of episode 2) become row 0 of the next rollout;
    # a0 has left
    buffer.carry_over()
    assert buffer.ptr.tolist() == [0, 0, 0] and not buffer.valid.any()
    assert buffer.status.tolist() == [IDLE, OBSERVED, OBSERVED]
    np.testing.assert_allclose(buffer.obs[0, 1:, 0], 2 / 4)
    agent.close()


def test_turn_based_rewards_are_credited_to_the_agent_that_earned_them():
    # pile of 3, each takes 1: player_0 takes, player_1 takes, player_0 takes the last: +1 / -1
    agent = PPO(
        lambda: TakeAway(stones=3), num_envs=1, num_steps=3, num_minibatches=1, tensorboard=False, selfplay="off"
    )
    runner = agent.env_runner()

    class TakeOne(GroupActor):
        def __call__(self, obs, masks, generator, deterministic=False):
            n = len(obs)
            return np.zeros(n, dtype=np.int64), np.zeros((n, 2), np.float32)

    actors = [TakeOne(agent.learners[0])]
    for _ in range(3):
        runner.step(actors, [agent.learners[0].generator])
    buffer = runner.buffers[0]
    p0, p1 = buffer.valid[:, 0], buffer.valid[:, 1]
    np.testing.assert_array_equal(buffer.rewards[p0, 0], [0.0, 1.0])
    np.testing.assert_array_equal(buffer.terminated[p0, 0], [False, True])
    # player_1's only move closes at its dead step, with the -1 it got while player_0 moved
    np.testing.assert_array_equal(buffer.rewards[p1, 1], [-1.0])
    np.testing.assert_array_equal(buffer.terminated[p1, 1], [True])
    [episode] = runner.pop_finished()
    assert episode.agent_returns == {"player_0": 1.0, "player_1": -1.0} and episode.length == 3
    agent.close()


def test_turn_based_truncation_bootstraps_and_an_unanswered_move_is_dropped():
    agent = PPO(lambda: TakeAway(stones=9, max_moves=3), num_envs=1, num_steps=3, num_minibatches=1,
                tensorboard=False, selfplay="off")  # fmt: skip
    collect_once(agent)
    buffer = agent.env_runner().buffers[0]
    # three moves then a truncation: player_0 moved twice, player_1 once; all are closed by the
    # dead steps, as truncations (a draw, rewards 0)
    assert buffer.valid[:, 0].sum() == 2 and buffer.valid[:, 1].sum() == 1
    assert buffer.truncated[buffer.valid[:, 0], 0].tolist() == [False, True]
    assert buffer.truncated[buffer.valid[:, 1], 1].tolist() == [True]
    assert not buffer.terminated.any()
    agent.close()


# --- critics -------------------------------------------------------------------------------------
def test_centralized_critic_reads_the_state_and_actors_their_own_observation():
    agent = PPO(Rendezvous, **SMALL, critic="centralized")
    learner = agent.learners[0]
    # state (4 + 1) plus the agent's one-hot in its group of 3
    assert learner.critic_space.shape == (5 + 3,)
    assert learner.model.critic_encoder.inner.layers[0].in_features == 8
    assert learner.model.actor_encoder.inner.layers[0].in_features == 4
    collect_once(agent)
    buffer = agent.env_runner().buffers[0]
    assert buffer.critic.shape[-1] == 8
    valid = buffer.valid
    # every agent of a copy sees the same state, its own one-hot after it
    np.testing.assert_array_equal(buffer.critic[valid][:, 5:].sum(axis=1), 1.0)
    buffer.carry_over()
    agent.learn(128, progress=False)
    # acting needs only the agents' own observations
    actions = agent.act({"agent_0": np.eye(4, dtype=np.float32)[1], "agent_2": np.eye(4, dtype=np.float32)[3]})
    assert set(actions) == {"agent_0", "agent_2"} and all(0 <= a < 4 for a in actions.values())
    assert agent.evaluate(episodes=2, seed=0)["episodes"] == 2
    agent.close()


def test_centralized_critic_without_a_state_concatenates_every_agents_observation():
    agent = PPO(LeaveJoin, num_envs=1, num_steps=4, num_minibatches=1, tensorboard=False, critic="centralized")
    assert agent.learners[0].critic_space.shape == (3 * 4 + 3,)
    collect_once(agent)
    buffer = agent.env_runner().buffers[0]
    first = buffer.critic[0, 0]  # a0 at t=0: a0's and a1's observations, zeros for a2 (not yet in)
    np.testing.assert_array_equal(first[:4], [0, 1, 0, 0])
    np.testing.assert_array_equal(first[4:8], [0, 0, 1, 0])
    np.testing.assert_array_equal(first[8:12], 0)
    np.testing.assert_array_equal(first[12:], [1, 0, 0])
    agent.close()


# --- self-play ---------------------------------------------------------------------------------
def test_selfplay_is_on_by_default_for_two_player_masked_games_and_respects_masks():
    agent = PPO(TakeAway, **{**SMALL, "num_envs": 4}, selfplay_snapshot_every=1, selfplay_pool_size=2,
                selfplay_latest_prob=0.0, selfplay_random_prob=0.0, selfplay_eval_every=1,
                selfplay_eval_games=4)  # fmt: skip
    assert agent.selfplay is not None
    rows = []
    agent.learn(4 * 16 * 3, progress=False, callback=lambda a, m: rows.append(m))  # TakeAway raises on an illegal move
    assert len(agent.selfplay.pool) == 2  # one per update, capped at the pool size
    # with latest_prob 0, every game after the first update is against a snapshot
    assert rows[-1]["selfplay/games_vs_pool"] > 0 and rows[-1]["selfplay/games_vs_latest"] == 0
    # the snapshots' moves are env steps but not the learner's agent steps
    assert rows[-1]["env_steps"] == len(rows) * 4 * 16 and rows[-1]["global_step"] < rows[-1]["env_steps"]
    assert {"vs_random/win", "selfplay/elo"} <= set(rows[-1])
    agent.close()


def test_selfplay_seats_alternate_and_elo_moves_both_ratings():
    selfplay = SelfPlay(["p0", "p1"], pool_size=3, latest_prob=1.0, sampling="uniform", seed=0)
    assert [selfplay.assign(0, game)[0] for game in range(4)] == ["p0", "p1", "p0", "p1"]
    assert [selfplay.assign(1, game)[0] for game in range(2)] == ["p1", "p0"]
    winner, loser = elo_update(1000.0, 1000.0, 1.0)
    assert winner == pytest.approx(1008.0) and loser == pytest.approx(992.0)


def test_selfplay_draws_random_latest_and_pool_opponents_at_their_rates():
    selfplay = SelfPlay(["p0", "p1"], pool_size=3, latest_prob=0.5, sampling="uniform", seed=0, random_prob=0.25)
    n = 4000

    def rates() -> tuple[float, float, float]:
        opponents = [selfplay.assign(0, game)[1] for game in range(n)]
        random = sum(o is RANDOM for o in opponents) / n
        latest = sum(o is None for o in opponents) / n
        return random, latest, 1.0 - random - latest

    # an empty pool: the snapshots' share goes to the current policy
    for got, want in zip(rates(), (0.25, 0.75, 0.0), strict=True):
        assert abs(got - want) < 0.03, (got, want)
    selfplay.add_snapshot(torch.nn.Linear(2, 2), update=1)
    for got, want in zip(rates(), (0.25, 0.5, 0.25), strict=True):
        assert abs(got - want) < 0.03, (got, want)
    # the same seed draws the same opponents
    a, b = (SelfPlay(["p0", "p1"], 3, 0.5, "uniform", seed=7, random_prob=0.25) for _ in range(2))
    assert [a.assign(0, g)[1] is RANDOM for g in range(50)] == [b.assign(0, g)[1] is RANDOM for g in range(50)]


def test_the_random_opponent_picks_every_legal_move_and_only_those():
    selfplay = SelfPlay(["p0", "p1"], pool_size=1, latest_prob=0.0, sampling="uniform", seed=0, random_prob=1.0)
    masks = np.array([[True, False, True, False], [False, False, False, True]])
    moves = np.stack([selfplay.random_actions(masks) for _ in range(200)])
    assert set(moves[:, 0].tolist()) == {0, 2} and set(moves[:, 1].tolist()) == {3}


def test_games_against_the_random_opponent_are_learned_from_tallied_and_rated():
    agent = PPO(TakeAway, **{**SMALL, "num_envs": 4}, selfplay_snapshot_every=1, selfplay_latest_prob=0.0,
                selfplay_random_prob=1.0, selfplay_eval_every=0)  # fmt: skip
    rows = []
    agent.learn(4 * 16 * 3, progress=False, callback=lambda a, m: rows.append(m))  # TakeAway raises on an illegal move
    for row in rows:
        assert row["selfplay/games_vs_random"] > 0
        assert row["selfplay/games_vs_pool"] == 0 and row["selfplay/games_vs_latest"] == 0
        rates = [row[f"selfplay/{r}_vs_random"] for r in ("win", "draw", "loss")]
        assert sum(rates) == pytest.approx(1.0)
    # only the learner's seat is learned from: the random player's moves are env steps, not agent steps
    assert rows[-1]["global_step"] < rows[-1]["env_steps"]
    # every game moved the learner's rating against the fixed anchor
    assert agent.selfplay.rating != ELO_START
    agent.close()


def test_selfplay_evaluation_against_a_random_player_counts_both_seats():
    agent = PPO(TakeAway, **SMALL)
    result = agent.evaluate(episodes=6, seed=0)
    assert result["games"] == 6 and set(result["per_seat"]) == {"player_0", "player_1"}
    assert result["win"] + result["draw"] + result["loss"] == pytest.approx(1.0)
    agent.close()


# --- acting, checkpoints, learning ---------------------------------------------------------------
def test_act_takes_and_gives_dicts_and_never_picks_a_masked_action():
    agent = PPO(TakeAway, **SMALL)
    env = TakeAway()
    env.reset()
    env.pile = 1  # only "take 1" is legal
    obs = {a: env.observe(a) for a in env.possible_agents}
    for deterministic in (True, False):
        for _ in range(20):
            actions = agent.act(obs, deterministic=deterministic)
            assert set(actions) == set(obs) and all(a == 0 for a in actions.values())
    obs["player_0"]["action_mask"][:] = 0
    with pytest.raises(ActionMaskError) as info:
        agent.act(obs)
    assert "'player_0'" in one_line(info.value)
    with pytest.raises(ValueError) as info:
        agent.act({"nobody": obs["player_1"]})
    assert "unknown agent 'nobody'" in one_line(info.value)
    with pytest.raises(TypeError):
        agent.act([obs["player_1"]])
    agent.close()


def test_save_and_load_round_trip_with_the_opponent_pool(tmp_path):
    agent = PPO("pettingzoo.classic.tictactoe_v3", **SMALL, selfplay_snapshot_every=1, selfplay_eval_every=0)
    agent.learn(64, progress=False)
    path = agent.save(tmp_path / "agent.pt")
    payload = torch.load(path, weights_only=True)  # tensors and plain data only
    assert payload["multiagent"]["selfplay"]["pool"]
    loaded = PPO.load(path)
    assert isinstance(loaded, MultiAgentPPO)
    assert len(loaded.selfplay.pool) == len(agent.selfplay.pool)
    assert loaded.selfplay.rating == agent.selfplay.rating and loaded.global_step == agent.global_step
    for a, b in zip(
        agent.learners[0].model.state_dict().values(), loaded.learners[0].model.state_dict().values(), strict=False
    ):
        assert torch.equal(a, b)
    from pettingzoo.classic import tictactoe_v3

    env = tictactoe_v3.env()
    env.reset(seed=1)
    obs = {env.agent_selection: env.observe(env.agent_selection)}  # the player to move
    assert agent.act(obs, deterministic=True) == loaded.act(obs, deterministic=True)
    # the checkpoint names its env module: not imported unless trusted
    with pytest.raises(UntrustedImportError) as info:
        loaded.learn(64, progress=False)
    assert "trust_code=True" in one_line(info.value)
    trusted = PPO.load(path, trust_code=True)
    trusted.learn(64, progress=False)
    assert trusted.global_step > agent.global_step
    for a in (agent, loaded, trusted):
        a.close()


def test_learn_counts_agent_steps_and_logs_env_steps(tmp_path):
    agent = PPO(Rendezvous, **SMALL, run_dir=tmp_path / "run")
    agent.learn(200, progress=False)
    # 2 copies x 16 steps x 3 agents = 96 agent steps per update: 3 updates reach 200
    assert agent.global_step == 288 and agent.env_steps == 96 and agent.update == 3
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["global_step"].tolist() == [96, 192, 288]
    assert metrics["env_steps"].tolist() == [32, 64, 96]
    assert (tmp_path / "run" / "agent.pt").exists()


@pytest.mark.slow
def test_cooperative_toy_env_improves():
    agent = PPO(lambda: Rendezvous(n_agents=2, choices=3, length=4), num_envs=4, num_steps=32, num_minibatches=2,
                update_epochs=4, learning_rate=3e-3, tensorboard=False, seed=1)  # fmt: skip
    before = agent.evaluate(episodes=20, seed=5)["mean_return"]
    agent.learn(20_000, progress=False)
    after = agent.evaluate(episodes=20, seed=5)["mean_return"]
    # 2 agents x 4 steps x the fraction of agents on target: random ~2.7, perfect 8
    assert after > 7.0 > before + 2.0


# --- command line --------------------------------------------------------------------------------
def test_cli_trains_a_pettingzoo_module_path(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    code, out, err = run_cli([
        "train", "pettingzoo.classic.tictactoe_v3", "--total-steps", "128", "--num-envs", "2", "--num-steps", "32",
        "--eval-episodes", "4", "--run-dir", str(run_dir), "--no-tensorboard", "--critic", "centralized",
    ])  # fmt: skip
    assert code == 0, err
    assert (run_dir / "agent.pt").exists() and "evaluation over 4 episodes" in out and "against a random player" in out
    # the run names its env module: `clippo eval` imports it only with --trust-code
    code, out, err = run_cli(["eval", str(run_dir), "--episodes", "4"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--trust-code" in err
    code, out, err = run_cli(["eval", str(run_dir), "--episodes", "4", "--trust-code"])
    assert code == 0 and "against a random player over 4 games" in out, err
    code, out, err = run_cli(["eval", str(run_dir), "--episodes", "4", "--trust-code", "--opponent", str(run_dir)])
    assert code == 0 and f"against {run_dir} over 4 games" in out, err
    # a person plays: every cell typed in turn (taken ones are refused), three times over
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(map(str, list(range(9)) * 3)) + "\n"))
    code, out, err = run_cli(["play", str(run_dir), "--trust-code", "--seat", "1"])
    assert code == 0, err
    assert out.strip().splitlines()[-1] in ("you win", "the agent wins", "a draw")
    code, out, err = run_cli(["train", "no_such_package_xyz.env_v0", "--run-dir", str(tmp_path / "bad")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not import" in err


class ChangingSpace(Rendezvous):
    """Rendezvous whose observations lose a value at step 2, or whose rewards turn NaN there."""

    def __init__(self, what: str = "shape") -> None:
        super().__init__(n_agents=2, choices=3, length=5)
        self.what = what

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = super().step(actions)
        if self.t == 2:
            if self.what == "shape":
                obs = {agent: value[:-1] for agent, value in obs.items()}
            else:
                rewards = {agent: float("nan") for agent in rewards}
        return obs, rewards, terminations, truncations, infos


@pytest.mark.parametrize("what, error, words", [("shape", ValueError, "spaces must not change mid-run"),
                                                ("nan", Exception, "non-finite reward of agent 'agent_0' at env step "
                                                    "1")])  # fmt: skip
def test_observations_that_change_shape_and_nan_rewards_are_one_line_errors(what, error, words):
    agent = PPO(lambda: ChangingSpace(what), **SMALL)
    with pytest.raises(error) as info:
        agent.learn(64, progress=False)
    assert words in one_line(info.value)
    agent.close()


def test_multiagent_knobs_on_a_gymnasium_env_are_one_line_errors_and_env_kwargs_reach_gym_make():
    with pytest.raises(ValueError) as info:
        PPO("CartPole-v1", critic="centralized")
    assert "is for multi-agent (PettingZoo) envs" in one_line(info.value)
    agent = PPO("CartPole-v1", num_envs=2, env_kwargs={"max_episode_steps": 7})
    assert agent.evaluate(episodes=2)["mean_length"] <= 7
    agent.close()


# --- recurrent policies --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_env, overrides",
    [(LeaveJoin, {}), (LeaveJoin, {"critic": "centralized"}), (lambda: TakeAway(stones=7), {"selfplay": "off"})],
)
def test_recurrent_replay_reproduces_what_the_rollout_computed_across_cuts_and_resets(make_env, overrides):
    # the update replays each agent's column from its stored state: its log-probabilities and
    # values must be the rollout's exactly, so states reset where each agent's episodes start
    # (a0 leaves, a2 joins) and carry over rollout cuts (an observed row, or an open move)
    agent = PPO(make_env, num_envs=2, num_steps=5, num_minibatches=1, tensorboard=False, recurrent="lstm",
                recurrent_hidden_size=8, **overrides)  # fmt: skip
    runner = agent.env_runner()
    model = agent.learners[0].model
    for _ in range(3):
        runner.collect([agent.learners[0].generator])
        buffer = runner.buffers[0]
        advantages, returns = buffer.advantages(0.99, 0.95)
        batch = buffer.flatten(advantages, returns)
        buffer.carry_over()
        with torch.no_grad():
            logprobs, _, values = model.evaluate_actions(
                batch.obs, batch.actions, masks=batch.masks, sequences=batch.sequences
            )
        np.testing.assert_allclose(logprobs.numpy(), batch.samples("logprobs").numpy(), atol=1e-5)
        np.testing.assert_allclose(values.numpy(), batch.samples("values").numpy(), atol=1e-5)
    agent.learn(100, progress=False)
    agent.close()


def test_recurrent_agents_predict_with_a_state_per_agent():
    agent = PPO(Rendezvous, **SMALL, recurrent="gru", recurrent_hidden_size=8)
    obs = {"agent_0": np.eye(4, dtype=np.float32)[0], "agent_1": np.eye(4, dtype=np.float32)[1]}
    with pytest.raises(ValueError) as info:
        agent.act(obs)
    assert "predict" in one_line(info.value)
    actions, state = agent.predict(obs, deterministic=True)
    assert set(actions) == set(state) == set(obs) and state["agent_0"].shape == (16,)  # actor + critic cores
    _again, state2 = agent.predict(obs, state=state, deterministic=True)
    assert not np.allclose(state2["agent_0"], state["agent_0"])  # the state moved on
    _, reset = agent.predict(obs, state=state2, episode_start=True, deterministic=True)
    np.testing.assert_allclose(reset["agent_0"], state["agent_0"])  # an episode start zeroes it first
    assert agent.evaluate(episodes=2, seed=0)["episodes"] == 2
    agent.close()


def test_recurrent_self_play_is_a_one_line_error():
    with pytest.raises(ConfigError) as info:
        PPO(TakeAway, **SMALL, recurrent="lstm")
    assert "not supported with self-play yet" in one_line(info.value)


def test_reward_scaling_runs_per_agent_slot_and_episode_returns_stay_raw():
    agent = PPO(LeaveJoin, num_envs=1, num_steps=8, num_minibatches=1, tensorboard=False, normalize_rewards=True)
    collect_once(agent)
    runner = agent.env_runner()
    buffer = runner.buffers[0]
    scaled = buffer.rewards[buffer.valid[:, 1], 1]  # a1's reward is always 2
    assert np.all(scaled > 0) and not np.allclose(scaled, 2.0)
    assert [episode.agent_returns["a1"] for episode in runner.pop_finished()] == [8.0, 8.0]
    state = agent.learners[0].reward_scaler.state_dict()
    assert state["returns"].shape == (3,)  # one running return per agent slot
    agent.close()


def test_games_against_another_checkpoint_and_one_from_another_game(tmp_path):
    first = PPO(TakeAway, **SMALL)
    first.learn(64, progress=False)
    path = first.save(tmp_path / "first.pt")
    second = PPO(TakeAway, **{**SMALL, "seed": 1})
    result = second.play_against(path, 6, seed=0)
    assert result["games"] == 6 and set(result["per_seat"]) == {"player_0", "player_1"}
    other = PPO(lambda: TakeAway(stones=7), **SMALL).save(tmp_path / "other.pt")
    with pytest.raises(ValueError) as info:
        second.play_against(other, 2)
    assert "not on this agent's game" in one_line(info.value) or "other spaces" in one_line(info.value)
    gym_path = PPO("CartPole-v1", num_envs=2).save(tmp_path / "cartpole.pt")
    with pytest.raises(ValueError) as info:
        second.play_against(gym_path, 2)
    assert "single-agent" in one_line(info.value)


def test_a_person_plays_a_game_with_illegal_moves_refused():
    from clippo.multiagent.play import board_text, play_human

    agent = PPO(lambda: TakeAway(stones=3), **SMALL)
    typed = iter(["two", "5", "0", "0", "0"])  # not a number, not legal, then "take 1" each turn
    shown: list[str] = []
    result = play_human(agent, human_seat=0, ask=lambda prompt: next(typed), show=shown.append)
    text = "\n".join(shown)
    assert "'two' is not a move" in text and "move 5 is illegal here" in text
    assert result in ("win", "loss") and shown[-1] in ("you win", "the agent wins")
    assert board_text(np.zeros((2, 2, 2))) == ". .\n. ."
    with pytest.raises(ValueError):
        play_human(PPO(Rendezvous, **SMALL))


def test_an_interrupted_run_resumes_from_the_command_line_with_its_pool(tmp_path):
    from clippo.core.errors import TrainingInterrupted

    run_dir = tmp_path / "run"
    agent = PPO(
        "pettingzoo.classic.tictactoe_v3", **SMALL, run_dir=run_dir, selfplay_snapshot_every=1, selfplay_eval_every=0
    )

    def stop_after_two(a, metrics):
        if metrics["update"] == 2:
            a.request_stop()

    with pytest.raises(TrainingInterrupted):
        agent.learn(32 * 5, progress=False, callback=stop_after_two)
    agent.close()
    code, out, err = run_cli(["resume", str(run_dir)])
    assert code == 2 and "--trust-code" in err  # the run names its env module
    code, out, err = run_cli(["resume", str(run_dir), "--trust-code"])
    assert code == 0, err
    assert "resuming pettingzoo.classic.tictactoe_v3 at step" in out
    done = PPO.load(run_dir)
    assert done.finished and len(done.selfplay.pool) == done.update  # one snapshot per update, all kept
    import pandas as pd

    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["update"].tolist() == list(range(1, done.update + 1))  # no update logged twice
    assert "env_steps" in metrics.columns


def test_several_groups_log_their_own_statistics(tmp_path):
    agent = PPO(TwoKinds, **SMALL, run_dir=tmp_path / "run")
    agent.learn(128, progress=False)  # 2 copies x 16 steps x 2 agents = 64 agent steps per update
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    for name in ("speaker", "listener"):
        assert metrics[f"group/{name}/transitions"].tolist() == [32, 32]  # 2 copies x 16 steps, one agent each
        assert metrics[f"group/{name}/entropy"].notna().all()


class OneAgentCartPole:
    """CartPole-v1 as a one-agent PettingZoo Parallel env (truncated at 500 steps)."""

    metadata: dict[str, Any] = {"name": "cartpole_one_agent"}  # noqa: RUF012 (an instance attribute of PettingZoo's envs)

    def __init__(self) -> None:
        import gymnasium as gym

        self.env = gym.make("CartPole-v1")
        self.possible_agents = ["pole"]

    def observation_space(self, agent):
        return self.env.observation_space

    def action_space(self, agent):
        return self.env.action_space

    def reset(self, seed=None, options=None):
        obs, _ = self.env.reset(seed=seed)
        self.agents = ["pole"]
        return {"pole": obs}, {"pole": {}}

    def step(self, actions):
        obs, reward, terminated, truncated, _ = self.env.step(actions["pole"])
        if terminated or truncated:
            self.agents = []
        return {"pole": obs}, {"pole": reward}, {"pole": terminated}, {"pole": truncated}, {"pole": {}}

    def close(self):
        self.env.close()


@pytest.mark.slow
def test_a_one_agent_pettingzoo_cartpole_learns_as_the_single_agent_ppo_does():
    # the whole multi-agent path (adapter, slots, GAE, group update) against the single-agent
    # one, with CartPole-v1's preset (16 copies of 128 steps here): both reach 500 in 100k steps
    from pettingzoo import ParallelEnv

    from clippo.config.ppo_config import ENV_PRESETS

    env_class = type("OneAgentCartPoleEnv", (OneAgentCartPole, ParallelEnv), {})
    preset = {k: v for k, v in ENV_PRESETS["CartPole-v1"].items() if k != "total_steps"}
    preset.update(num_envs=16, num_steps=128)
    agent = PPO(env_class, tensorboard=False, seed=1, **preset)
    agent.learn(100_000, progress=False)
    assert agent.evaluate(episodes=20, seed=5)["mean_return"] >= 450
    agent.close()


class NoMoveTakeAway(TakeAway):
    """TakeAway whose masks allow nothing once a stone has been taken."""

    def observe(self, agent):
        obs = super().observe(agent)
        if self.pile < self.stones:
            obs["action_mask"][:] = 0
        return obs


def test_a_mask_that_allows_no_action_names_the_agent_and_the_step():
    agent = PPO(NoMoveTakeAway, **SMALL, selfplay="off")
    with pytest.raises(ActionMaskError) as info:
        agent.learn(64, progress=False)
    message = one_line(info.value)
    assert "agent 'player_1'" in message and "env step 1" in message and "all false" in message
    agent.close()


class NestedMaskTakeAway(TakeAway):
    """TakeAway whose action_mask field is a Dict (a space without a shape)."""

    def __init__(self) -> None:
        super().__init__()
        self._obs = spaces.Dict(
            {
                "observation": self._obs["observation"],
                "action_mask": spaces.Dict({"moves": spaces.Box(0, 1, (2,), np.int8)}),
            }
        )


def test_a_mask_field_without_a_shape_is_a_one_line_error():
    with pytest.raises(ValueError) as info:
        PPO(NestedMaskTakeAway, **SMALL, selfplay="off")
    message = one_line(info.value)
    assert "'action_mask' of player_0, player_1 is Dict" in message and "needs 2 values" in message


@pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_precision_auto_keeps_the_numpy_actor_and_bf16_runs_the_torch_one(monkeypatch, tmp_path):
    """``auto`` resolves per group: flat MLP groups stay on the fp32 numpy actor; ``bf16`` acts in
    torch, and its checkpoint loads in fp32 on hardware without bf16."""
    auto = PPO(Rendezvous, **SMALL, precision="auto")
    bf16 = PPO(Rendezvous, **SMALL, precision="bf16")
    assert (auto.precision, bf16.precision) == ("fp32", "bf16")
    assert GroupActor(auto.learners[0]).numpy is not None and GroupActor(bf16.learners[0]).numpy is None
    bf16.learn(2 * 16 * 2 * 3, progress=False)
    assert bf16.update >= 1
    path = bf16.save(tmp_path / "agent.pt")
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    loaded = MultiAgentPPO.load(path, env=Rendezvous)
    assert loaded.precision == "fp32" and loaded.saved_precision == "bf16"

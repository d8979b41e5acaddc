"""Callbacks: the contract of ``learn(callback=...)`` (stop, metrics, call order, functions and
lists) and the periodic evaluation (EvalCallback, ``--eval-every``, best.pt, ``--stop-at-return``,
resume)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from clippo import PPO
from clippo.config.ppo_config import save_config
from clippo.core.errors import TrainingInterrupted
from clippo.training.callbacks import (
    BEST_NAME,
    BEST_RECORD,
    EVAL_MEAN,
    EVAL_SEED_OFFSET,
    EVAL_STD,
    Callback,
    EvalCallback,
    as_callback,
)
from clippo.training.logger import COLUMNS, truncate_metrics
from tests.helpers import run_cli

# 2 envs x 16 steps: 32 env steps per update.
TINY = dict(
    num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2, tensorboard=False, checkpoint_every=0, eval_episodes=0
)
BATCH = 32
TRAINING_KEYS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "recent_return",
    "learning_rate",
)


def tiny_agent(run_dir=None, updates: int = 6, **overrides) -> PPO:
    return PPO("CartPole-v1", run_dir=run_dir, total_steps=updates * BATCH, **{**TINY, **overrides})


def fake_evaluations(agent: PPO, returns: list[float]) -> list[dict]:
    """Make ``agent.evaluate`` return these mean returns in turn; the calls are recorded."""
    calls: list[dict] = []

    def evaluate(episodes=10, seed=None, deterministic=True, env=None, num_envs=None):
        calls.append({"episodes": episodes, "seed": seed, "deterministic": deterministic, "step": agent.global_step})
        value = returns[len(calls) - 1]
        return {"mean_return": value, "std_return": 1.0, "episodes": episodes, "mean_length": value, "returns": [value]}

    agent.evaluate = evaluate
    return calls


def comparable(metrics: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv without the columns that measure time, and without recent_return (its window
    of the last 100 episodes starts empty in each learn or resume call)."""
    return metrics.drop(columns=["wall_time", "sps", "rollout_time", "exchange_time", "update_time", "recent_return"])


# ------------------------------------------------------------------------------------------------
# the callback contract
# ------------------------------------------------------------------------------------------------
def test_returning_false_stops_after_that_update_and_writes_the_final_checkpoint(tmp_path):
    agent = tiny_agent(tmp_path / "run", updates=10)
    result = agent.learn(progress=False, callback=lambda a, metrics: False if a.update == 3 else None)
    assert result is agent
    assert agent.update == 3 and agent.stopped_by_callback
    assert (tmp_path / "run" / "agent.pt").is_file()
    assert PPO.load(tmp_path / "run").update == 3
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 3  # the stopping update is logged


def test_metrics_hold_the_update_and_keys_added_by_a_callback_are_logged(tmp_path):
    seen = []

    def record(agent, metrics):
        assert metrics["global_step"] == agent.global_step and metrics["update"] == agent.update
        seen.append(dict(metrics))
        metrics[EVAL_MEAN] = 10.0 * agent.update  # a key the logger knows: it lands in metrics.csv

    agent = tiny_agent(tmp_path / "run", updates=3)
    agent.learn(progress=False, callback=record)
    assert [m["update"] for m in seen] == [1, 2, 3]
    for metrics in seen:
        for key in TRAINING_KEYS:
            assert key in metrics, key
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert logged[EVAL_MEAN].tolist() == [10.0, 20.0, 30.0]
    assert logged["policy_loss"].tolist() == pytest.approx([m["policy_loss"] for m in seen])


def test_on_rollout_runs_once_per_update_before_on_update():
    events = []

    class Recorder(Callback):
        def on_rollout(self, agent):
            events.append(("rollout", agent.update))

        def on_update(self, agent, metrics):
            events.append(("update", agent.update))

    tiny_agent(updates=3).learn(progress=False, callback=Recorder())
    assert events == [(kind, u) for u in (1, 2, 3) for kind in ("rollout", "update")]


def test_on_rollout_returning_false_stops_after_that_update():
    class StopAtSecondRollout(Callback):
        def on_rollout(self, agent):
            return False if agent.update == 2 else None

    agent = tiny_agent(updates=5)
    agent.learn(progress=False, callback=StopAtSecondRollout())
    assert agent.update == 2 and agent.stopped_by_callback


def test_a_list_of_callbacks_calls_each_and_stops_when_any_asks():
    calls = {"function": 0, "object": 0}

    def function(agent, metrics):
        calls["function"] += 1
        return False if agent.update == 2 else None

    class Counter(Callback):
        def on_update(self, agent, metrics):
            calls["object"] += 1

    agent = tiny_agent(updates=5)
    agent.learn(progress=False, callback=[function, Counter()])
    assert agent.update == 2 and calls == {"function": 2, "object": 2}


def test_bad_callback_is_a_one_line_type_error():
    with pytest.raises(TypeError, match="callback=3 is invalid") as info:
        as_callback(3)
    assert len(str(info.value).splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# EvalCallback
# ------------------------------------------------------------------------------------------------
def test_evaluates_at_each_multiple_of_every_env_steps_and_at_the_end():
    agent = tiny_agent(updates=7)
    calls = fake_evaluations(agent, [1.0] * 10)
    agent.learn(progress=False, callback=EvalCallback(every=3 * BATCH, episodes=2))
    # multiples of 96 steps: updates 3 and 6; then the last update (7)
    assert [c["step"] for c in calls] == [3 * BATCH, 6 * BATCH, 7 * BATCH]
    assert all(c["deterministic"] and c["episodes"] == 2 for c in calls)


def test_eval_every_in_the_python_api_evaluates_as_the_command_line_does(tmp_path):
    """PPO(env, eval_every=N).learn() runs the periodic evaluation itself (with a user callback
    beside it); given an EvalCallback of its own, the config's is not added a second time."""
    agent = tiny_agent(tmp_path / "run", updates=4, eval_every=2 * BATCH, eval_episodes=2, stop_at_return=1e9)
    calls = fake_evaluations(agent, [1.0, 3.0, 2.0])
    seen = []
    agent.learn(progress=False, callback=lambda a, metrics: seen.append(metrics.get(EVAL_MEAN)))
    assert [c["step"] for c in calls] == [2 * BATCH, 4 * BATCH]
    assert seen[1] == 1.0 and seen[3] == 3.0  # the user's callback sees the evaluation's metrics
    assert (tmp_path / "run" / BEST_NAME).is_file()
    own = tiny_agent(updates=4, eval_every=2 * BATCH, eval_episodes=2)
    own_calls = fake_evaluations(own, [1.0] * 5)
    own.learn(progress=False, callback=[EvalCallback(every=4 * BATCH, episodes=1)])
    assert [c["step"] for c in own_calls] == [4 * BATCH]


def test_best_pt_is_written_only_when_an_evaluation_improves(tmp_path):
    run_dir = tmp_path / "run"
    agent = tiny_agent(run_dir, updates=5)
    fake_evaluations(agent, [5.0, 3.0, 5.0, 9.0, 2.0])
    saved = []
    original_save = agent.save

    def save(path, include_runner=True):
        saved.append((path.name, agent.update, include_runner))
        return original_save(path, include_runner=include_runner)

    agent.save = save
    callback = EvalCallback(every=BATCH, episodes=1)
    agent.learn(progress=False, callback=callback)
    assert [(name, update, runner) for name, update, runner in saved if name == BEST_NAME] == [
        (BEST_NAME, 1, False),
        (BEST_NAME, 4, False),
    ]  # 5 (first), then 9; not the tie at update 3
    assert PPO.load(run_dir / BEST_NAME).update == 4
    record = json.loads((run_dir / BEST_RECORD).read_text())
    assert record["mean_return"] == 9.0 and record["global_step"] == 4 * BATCH and record["update"] == 4
    assert callback.best["mean_return"] == 9.0
    logged = pd.read_csv(run_dir / "metrics.csv")
    assert logged[EVAL_MEAN].tolist() == [5.0, 3.0, 5.0, 9.0, 2.0]
    assert logged[EVAL_STD].tolist() == [1.0] * 5


def test_rows_without_an_evaluation_are_blank(tmp_path):
    agent = tiny_agent(tmp_path / "run", updates=4)
    fake_evaluations(agent, [1.0, 2.0])
    agent.learn(progress=False, callback=EvalCallback(every=2 * BATCH, episodes=1, at_end=False))
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert logged[EVAL_MEAN].isna().tolist() == [True, False, True, False]
    assert list(logged.columns) == COLUMNS


def test_the_best_so_far_is_read_back_from_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / BEST_RECORD).write_text(json.dumps({"global_step": 64, "update": 2, "mean_return": 7.0}))
    agent = tiny_agent(run_dir, updates=3)
    fake_evaluations(agent, [6.0, 8.0, 1.0])
    callback = EvalCallback(every=BATCH, episodes=1)
    agent.learn(progress=False, callback=callback)
    # 6 does not beat the recorded 7; 8 does
    assert json.loads((run_dir / BEST_RECORD).read_text())["mean_return"] == 8.0
    assert PPO.load(run_dir / BEST_NAME).update == 2


def test_stop_at_return_stops_training_with_its_checkpoint(tmp_path):
    agent = tiny_agent(tmp_path / "run", updates=10)
    fake_evaluations(agent, [10.0, 40.0, 600.0, 700.0])
    callback = EvalCallback(every=BATCH, episodes=1, stop_at_return=500.0)
    agent.learn(progress=False, callback=callback)
    assert agent.update == 3 and agent.stopped_by_callback
    assert callback.reached["mean_return"] == 600.0 and callback.reached["update"] == 3
    assert PPO.load(tmp_path / "run").update == 3


def test_evaluation_envs_are_separate_from_the_training_envs():
    """Training with evaluations is the same computation as without: an evaluation does not step,
    reset or reseed the training envs and draws no training random numbers. Its seeds are not the
    training envs' either."""
    plain = tiny_agent(updates=4, seed=3)
    plain_metrics = []
    plain.learn(progress=False, callback=lambda agent, metrics: plain_metrics.append(dict(metrics)))

    evaluated = tiny_agent(updates=4, seed=3)
    seeds = []
    original_evaluate = evaluated.evaluate

    def evaluate(**kwargs):
        seeds.append(kwargs["seed"])
        return original_evaluate(**kwargs)

    evaluated.evaluate = evaluate
    callback = EvalCallback(every=BATCH, episodes=3)
    evaluated_metrics = []
    evaluated.learn(progress=False, callback=[callback, lambda agent, metrics: evaluated_metrics.append(dict(metrics))])

    assert len(callback.history) == 4 and all(EVAL_MEAN in m for m in evaluated_metrics)
    for before, after in zip(plain_metrics, evaluated_metrics, strict=False):
        for key in (*TRAINING_KEYS, "episode_return", "episodes", "global_step"):
            assert after[key] == pytest.approx(before[key], nan_ok=True), key
    assert plain.optimizer.flat.equal(evaluated.optimizer.flat)
    training_seeds = set(range(3, 3 + TINY["num_envs"]))
    assert seeds == [3 + EVAL_SEED_OFFSET] * 4
    assert not training_seeds & set(range(seeds[0], seeds[0] + 3))


def test_only_the_main_rank_evaluates():
    from clippo.training.distributed import World

    agent = tiny_agent(updates=2)
    calls = fake_evaluations(agent, [1.0])
    agent.world = World(rank=1, size=2)
    agent.global_step = 2 * BATCH  # an update that crossed a multiple
    metrics: dict = {}
    assert EvalCallback(every=BATCH, stop_at_return=0.0).on_update(agent, metrics) is None
    assert calls == [] and metrics == {}


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(every=0), "every=0"),
        (dict(every=1, episodes=0), "episodes=0"),
        (dict(every=1, stop_at_return=float("nan")), "stop_at_return=nan"),
        (dict(every=1.5), "every=1.5"),
    ],
)
def test_bad_eval_callback_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match="invalid") as info:
        EvalCallback(**kwargs)
    assert fragment in str(info.value) and len(str(info.value).splitlines()) == 1


def test_truncate_metrics_keeps_the_evaluation_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = [{"global_step": 32 * i, "update": i, EVAL_MEAN: 1.5 * i if i % 2 else "", EVAL_STD: 0.5} for i in (1, 2, 3)]
    pd.DataFrame(rows).reindex(columns=COLUMNS).to_csv(path, index=False)
    truncate_metrics(tmp_path, 64)
    kept = pd.read_csv(path)
    assert kept["global_step"].tolist() == [32, 64]
    assert kept[EVAL_MEAN].tolist()[0] == 1.5 and pd.isna(kept[EVAL_MEAN].tolist()[1])


def test_an_old_metrics_header_is_rewritten_on_resume(tmp_path):
    """A run begun before the evaluation columns existed: its rows keep their values under the
    current header, so the rows a resumed run appends line up."""
    old = [c for c in COLUMNS if not c.startswith("eval/")]
    pd.DataFrame([{"global_step": 32, "update": 1, "policy_loss": 0.25}]).reindex(columns=old).to_csv(
        tmp_path / "metrics.csv", index=False
    )
    truncate_metrics(tmp_path, 32)
    rewritten = pd.read_csv(tmp_path / "metrics.csv")
    assert list(rewritten.columns) == COLUMNS and rewritten["policy_loss"].tolist() == [0.25]


# ------------------------------------------------------------------------------------------------
# the command line: --eval-every, --stop-at-return, clippo resume
# ------------------------------------------------------------------------------------------------
CLI_TINY = [
    "--num-envs",
    "2",
    "--num-steps",
    "16",
    "--num-minibatches",
    "2",
    "--update-epochs",
    "2",
    "--checkpoint-every",
    "0",
]


def test_train_with_eval_every_logs_the_evaluation_and_keeps_best_pt(tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        [
            "train",
            "CartPole-v1",
            "--run-dir",
            str(run_dir),
            *CLI_TINY,
            "--total-steps",
            "128",
            "--eval-every",
            "64",
            "--eval-episodes",
            "2",
        ]
    )
    assert code == 0, err
    logged = pd.read_csv(run_dir / "metrics.csv")
    assert logged[EVAL_MEAN].notna().tolist() == [False, True, False, True]
    assert (logged[EVAL_MEAN].dropna() > 0).all() and logged[EVAL_STD].notna().sum() == 2
    assert (run_dir / BEST_NAME).is_file() and (run_dir / BEST_RECORD).is_file()
    assert "best periodic evaluation" in out
    best = json.loads((run_dir / BEST_RECORD).read_text())
    assert best["mean_return"] == logged[EVAL_MEAN].max()
    assert best["seed"] == EVAL_SEED_OFFSET  # seed 0 + the offset: not the training envs' 0 and 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert EVAL_MEAN in tags and EVAL_STD in tags and "train/policy_loss" in tags
    assert not any(tag.startswith("train/eval") for tag in tags)
    assert [e.step for e in events.Scalars(EVAL_MEAN)] == [64, 128]


def test_stop_at_return_from_the_command_line_and_resume_has_nothing_left(tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        [
            "train",
            "CartPole-v1",
            "--run-dir",
            str(run_dir),
            *CLI_TINY,
            "--total-steps",
            "640",
            "--eval-every",
            "64",
            "--eval-episodes",
            "1",
            "--stop-at-return",
            "1",
        ]
    )
    assert code == 0, err
    assert "stopped at step 64" in out
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 2 and PPO.load(run_dir).global_step == 64
    code, _, err = run_cli(["resume", str(run_dir)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "already stopped at step 64" in err and "stop_at_return=1" in err


def test_resume_continues_the_evaluations_exactly(tmp_path):
    """A run interrupted (and checkpointed) mid-way and resumed with clippo resume ends with the
    same metrics, evaluations included, and the same best.json as the run left alone."""
    settings = dict(TINY, total_steps=8 * BATCH, eval_every=2 * BATCH, eval_episodes=2, checkpoint_every=1)

    whole = tmp_path / "whole"
    agent = PPO("CartPole-v1", run_dir=whole, **settings)
    agent.learn(progress=False, callback=EvalCallback.from_config(agent.config))

    split = tmp_path / "split"
    agent = PPO("CartPole-v1", run_dir=split, **settings)
    split.mkdir()
    save_config(agent.config, split / "config.yaml")
    stop = lambda agent, metrics: agent.request_stop() if agent.update == 5 else None  # noqa: E731
    with pytest.raises(TrainingInterrupted):
        agent.learn(progress=False, callback=[EvalCallback.from_config(agent.config), stop])
    agent.close()
    assert json.loads((split / BEST_RECORD).read_text())["global_step"] <= 4 * BATCH
    code, out, err = run_cli(["resume", str(split)])
    assert code == 0, err
    assert "exactly" in out

    left_alone, resumed = (pd.read_csv(d / "metrics.csv") for d in (whole, split))
    pd.testing.assert_frame_equal(comparable(resumed), comparable(left_alone))
    assert resumed[EVAL_MEAN].notna().sum() == 4
    assert json.loads((split / BEST_RECORD).read_text()) == json.loads((whole / BEST_RECORD).read_text())


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--eval-every", "-5"], "eval_every=-5 is invalid"),
        (["--eval-every", "100", "--eval-episodes", "0"], "eval_every=100 is invalid with eval_episodes=0"),
        (["--stop-at-return", "400"], "stop_at_return=400.0 is invalid without periodic evaluations"),
        (["--eval-every", "100", "--stop-at-return", "inf"], "stop_at_return=inf is invalid"),
        (["--eval-every", "ten"], "--eval-every"),
    ],
)
def test_bad_evaluation_flags_give_one_line_errors(flags, fragment):
    code, out, err = run_cli(["train", "CartPole-v1", *flags])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and fragment in lines[0], err

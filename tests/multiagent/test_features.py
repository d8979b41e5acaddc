"""The rest of clippo on multi-agent runs (issue #33, item 7): ONNX export per policy group,
enjoy --video, per-group plot and report, tune, and --nproc (torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from clippo import PPO
from clippo.core.errors import CheckpointError, ExportCheckError
from clippo.multiagent.agent import MultiAgentPPO
from clippo.multiagent.toy_envs import Rendezvous, TakeAway, TwoKinds
from tests.helpers import run_cli

SMALL = dict(num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2, tensorboard=False, seed=0)


@pytest.fixture
def toy_module(tmp_path, monkeypatch) -> str:
    """A PettingZoo env module on sys.path (what the command line names): Rendezvous with 2 agents."""
    folder = tmp_path / "modules"
    (folder / "matoy").mkdir(parents=True)
    (folder / "matoy" / "__init__.py").write_text("")
    (folder / "matoy" / "rendezvous.py").write_text(
        textwrap.dedent(
            """
            from clippo.multiagent.toy_envs import Rendezvous


            def parallel_env(n_agents=2, choices=3, length=4):
                return Rendezvous(n_agents=n_agents, choices=choices, length=length)
            """
        )
    )
    monkeypatch.syspath_prepend(str(folder))
    return "matoy.rendezvous"


# --- export ---------------------------------------------------------------------------------------
def run_graph(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_export_writes_a_parity_checked_graph_per_policy_group(tmp_path):
    pytest.importorskip("onnxruntime")
    from clippo.tools.export import export_policies

    agent = PPO(TwoKinds, **SMALL, normalize_observations=True)
    agent.learn(256, progress=False)  # (the normalization statistics move: the graph must fold them in)
    results = export_policies(agent, tmp_path / "policy.onnx", check_steps=32, check_envs=2)
    assert set(results) == {"speaker", "listener"}
    for name, result in results.items():
        assert result.path == tmp_path / f"policy_{name}.onnx" and result.path.exists()
        assert result.check.passed and result.check.observations == 64  # 2 copies x 32 steps, one move each
    # the graphs act as agent.act does on observations the check did not see
    env = TwoKinds()
    obs, _ = env.reset(seed=123)
    for _ in range(4):
        expected = agent.act(obs, deterministic=True)
        for name in ("speaker", "listener"):
            (action,) = run_graph(tmp_path / f"policy_{name}.onnx", {"obs": obs[name][None].astype(np.float32)})
            assert int(action[0]) == expected[name]
        obs, *_ = env.step(expected)
    agent.close()


@pytest.mark.parametrize(
    "make_env, overrides, inputs",
    [
        (TakeAway, {}, ["obs", "action_mask"]),  # self-play game: the mask is an input of its own
        (lambda: Rendezvous(n_agents=3), {"critic": "centralized", "agent_id_feature": True}, ["obs"]),
        (lambda: Rendezvous(n_agents=2), {"recurrent": "gru", "recurrent_hidden_size": 8}, ["obs", "state_in"]),
    ],
    ids=["masked-game", "centralized-agent-id", "recurrent"],
)
def test_export_covers_masks_centralized_critics_agent_ids_and_recurrent_policies(
    make_env, overrides, inputs, tmp_path
):
    pytest.importorskip("onnxruntime")
    from clippo.tools.export import export_policies

    agent = PPO(make_env, **{**SMALL, **overrides})
    agent.learn(128, progress=False)
    (result,) = export_policies(agent, tmp_path / "p.onnx", check_steps=24, check_envs=2).values()
    assert [port.name for port in result.inputs] == inputs
    assert result.check.passed and result.check.identical == result.check.observations
    if "recurrent" in overrides:
        assert result.check.max_difference is not None and result.check.max_difference <= 1e-5  # state_out
    agent.close()


def test_a_failed_group_check_writes_no_file_at_all(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from clippo.tools import export

    agent = PPO(TwoKinds, **SMALL)
    calls = []
    real = export.check_parity

    def second_fails(*args, **kwargs):
        check = real(*args, **kwargs)
        calls.append(check)
        if len(calls) == 2:  # the listener's graph disagrees with agent.act
            return export.ParityCheck(check.observations, check.source, 0, None, check.tolerance)
        return check

    monkeypatch.setattr(export, "check_parity", second_fails)
    with pytest.raises(ExportCheckError, match="policy group 'listener'"):
        export.export_policies(agent, tmp_path / "policy.onnx", check_steps=8, check_envs=1)
    assert calls[0].passed and sorted(p.name for p in tmp_path.iterdir()) == []  # the speaker's is not written either
    with pytest.raises(ValueError, match="export_policies"):
        export.export_onnx(agent, tmp_path / "policy.onnx")
    agent.close()


def test_cli_export_and_enjoy_on_a_module_path_run(tmp_path, toy_module):
    pytest.importorskip("onnxruntime")
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["train", toy_module, "--total-steps", "256", "--num-envs", "2", "--num-steps", "16",
                              "--run-dir", str(run_dir), "--no-tensorboard", "--eval-episodes", "2"])  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(["export", str(run_dir), "--check-steps", "16"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--trust-code" in err  # the run names its module
    code, out, err = run_cli(["export", str(run_dir), "--trust-code", "--check-steps", "16", "--check-envs", "2"])
    assert code == 0, err
    assert (
        "policy group shared: wrote" in out and "64/64 discrete actions identical" in out
    )  # 2 copies x 16 steps x 2 agents
    assert (run_dir / "policy_shared.onnx").exists()
    code, out, err = run_cli(["enjoy", str(run_dir), "--trust-code", "--episodes", "2", "--seed", "1"])
    assert code == 0, err
    assert out.count("length 4") == 2 and "mean return" in out
    # Rendezvous renders nothing: --video is one line naming render_mode
    code, out, err = run_cli(["enjoy", str(run_dir), "--trust-code", "--video", str(tmp_path / "v.mp4")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "render_mode" in err
    assert not (tmp_path / "v.mp4").exists()


# --- enjoy --video ----------------------------------------------------------------------------------
class Painted(Rendezvous):
    """Rendezvous that renders: a 6x8 frame whose brightness tells the step."""

    metadata = {"name": "painted_v0", "render_modes": ["rgb_array"], "render_fps": 4}  # noqa: RUF012

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(n_agents=2, choices=3, length=3)
        self.render_mode = render_mode

    def render(self):
        return np.full((6, 8, 3), 40 * self.t, dtype=np.uint8)


def test_enjoy_video_records_every_frame_of_every_episode(tmp_path):
    pytest.importorskip("moviepy")
    from moviepy import VideoFileClip

    from clippo.tools.playback import play_multiagent

    agent = PPO(Painted, **SMALL)
    video = tmp_path / "episodes.mp4"
    result = play_multiagent(agent, episodes=2, seed=0, video=video)
    assert result.lengths == [3, 3] and result.video_path == video
    clip = VideoFileClip(str(video))
    try:
        frames = list(clip.iter_frames())
    finally:
        clip.close()
    assert len(frames) == 2 * (3 + 1)  # the reset's frame and one per step, per episode
    assert frames[0].shape[:2] == (258, 344)  # 6x8 scaled up 43 times: a shorter side of at least 256
    brightness = [int(frame.mean().round()) for frame in frames]
    assert brightness[:4] == sorted(brightness[:4]) and brightness[0] < 10 < 100 < brightness[3]
    agent.close()


# --- plot and report per group --------------------------------------------------------------------
@pytest.mark.slow
def test_report_and_plot_show_each_policy_group(tmp_path):
    pytest.importorskip("matplotlib")
    from clippo.tools.plotting import RunGroup, draw_groups, read_run
    from clippo.tools.report import write_report

    run_dir = tmp_path / "run"
    agent = PPO(TwoKinds, **SMALL, run_dir=run_dir)
    agent.learn(256, progress=False)
    agent.close()
    report = write_report(run_dir, run_dir / "report.md")
    text = (run_dir / "report.md").read_text()
    assert "## Policy group speaker" in text and "## Policy group listener" in text
    assert report.figure_path is not None and report.figure_path.exists()
    run = read_run(run_dir)
    figure = draw_groups([RunGroup([run], label="toy")], diagnostics=True)
    labels = {line.get_label() for ax in figure.axes for line in ax.get_lines()}
    assert {"toy", "toy: speaker", "toy: listener"} <= labels
    step_axes = [ax for ax in figure.axes if ax.get_lines() and ax.get_xlabel().endswith("steps")]
    assert step_axes and {ax.get_xlabel() for ax in step_axes} == {"agent steps"}


def test_a_policy_groups_own_collapse_is_a_warning_of_its_own():
    import pandas as pd

    from clippo.tools.report import group_health_warnings

    rows = 20
    metrics = pd.DataFrame({
        "global_step": np.arange(1, rows + 1) * 64, "wall_time": np.arange(rows) * 0.1,
        "group/speaker/explained_variance": np.full(rows, 0.5), "group/speaker/entropy": np.full(rows, 1.0),
        "group/listener/explained_variance": np.full(rows, -0.4), "group/listener/entropy": np.full(rows, 0.69),
    })  # fmt: skip
    warnings = group_health_warnings(metrics, {}, ["speaker", "listener"])
    assert [(w.check, w.title.split(":")[0]) for w in warnings] == [("explained_variance", "Policy group 'listener'")]


@pytest.mark.slow
def test_selfplay_runs_report_their_games(tmp_path):
    pytest.importorskip("matplotlib")
    from clippo.tools.report import write_report

    run_dir = tmp_path / "run"
    agent = PPO(TakeAway, **SMALL, run_dir=run_dir, selfplay_eval_every=1, selfplay_eval_games=4)
    agent.learn(96, progress=False)
    agent.close()
    write_report(run_dir, run_dir / "report.md")
    text = (run_dir / "report.md").read_text()
    assert "## Self-play" in text and "`vs_random/win`" in text and "`selfplay/elo`" in text


# --- tune -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tune_runs_a_study_on_a_pettingzoo_module(tmp_path, toy_module):
    pytest.importorskip("optuna")
    from clippo.tools.tuning import TuneSettings

    config = tmp_path / "base.yaml"
    config.write_text("num_envs: 2\nupdate_epochs: 1\nnum_minibatches: 1\n")
    settings = TuneSettings(env_id=toy_module, trials=2, steps_per_trial=512, eval_every=128, eval_episodes=2,
                            out=str(tmp_path / "tune"), config_file=str(config), plots=False)  # fmt: skip
    resolved = settings.resolved()
    assert resolved.agents_per_step == 2  # Rendezvous: both agents act at every env step
    code, out, err = run_cli(["tune", toy_module, "--trials", "2", "--steps-per-trial", "512", "--eval-every", "128",
                              "--eval-episodes", "2", "--out", str(tmp_path / "tune"), "--config", str(config),
                              "--no-plots"])  # fmt: skip
    assert code == 0, err
    # every trial is evaluated at each of the 4 multiples of --eval-every (its rollouts fit in one interval)
    assert out.count("over 4 evaluations") == 2, out
    best = tmp_path / "tune" / f"clippo-{toy_module}" / "best_config.yaml"
    assert best.exists() and f"clippo train {toy_module} --config" in out
    code, out, err = run_cli(["tune", "no_such_module_xyz.env_v0", "--trials", "1"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not import" in err


# --- --nproc (torchrun) -----------------------------------------------------------------------------
def run_two_ranks(mode: str, tmp_path: Path) -> None:
    """tests/multiagent/distributed_worker.py MODE under torchrun with 2 ranks (each writes rankN.pt)."""
    worker = Path(__file__).with_name("distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker)]
    result = subprocess.run([*command, mode, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_train_the_groups_in_lockstep_and_a_resume_needs_two(tmp_path):
    run_two_ranks("lockstep", tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["params"].shape[0] == 4  # four updates recorded
    assert torch.equal(rank0["params"], rank1["params"])  # both groups' weights, after every update
    assert torch.equal(rank0["obs_mean"], rank1["obs_mean"])  # normalization pooled across ranks
    assert not torch.equal(rank0["params"][0], rank0["params"][-1])  # and they learned
    # steps count over both ranks: 4 updates x 2 ranks x 2 copies x 16 env steps x 2 agents
    assert rank0["global_step"] == rank1["global_step"] == 4 * 2 * 2 * 16 * 2
    assert rank0["env_steps"] == 4 * 2 * 2 * 16
    # each rank's episodes (2 copies x 16 steps / 6-step episodes, both ranks) are logged once by rank 0
    assert torch.equal(rank0["episodes"], rank1["episodes"]) and rank0["episodes"].sum() > 0
    # one process would halve each update's batch: resuming the run takes --nproc 2
    with pytest.raises(CheckpointError, match="--nproc 2"):
        PPO.from_run(tmp_path / "run", env=TwoKinds)
    agent = PPO.load(tmp_path / "run" / "agent.pt")  # (it loads in one process to act)
    assert agent.global_step == rank0["global_step"]


# --- exact resume -----------------------------------------------------------------------------------
def train_updates(make_env, overrides: dict, run_dir: Path, updates: int = 5, stop_at: int | None = None,
                  restore: bool = True, monkeypatch=None):  # fmt: skip
    """``updates`` updates straight, or stopped after ``stop_at`` and resumed from the run directory
    (``restore=False``: the resumed run's env copies start fresh, the control)."""
    from clippo.core.errors import TrainingInterrupted

    def stop(agent, metrics):
        if metrics["update"] in (updates, stop_at):
            agent.request_stop()

    agent = PPO(make_env, **SMALL, **overrides, run_dir=run_dir)
    with pytest.raises(TrainingInterrupted):
        agent.learn(10**7, progress=False, callback=stop)
    agent.close()
    if stop_at is not None:
        if not restore:
            monkeypatch.setattr("clippo.multiagent.agent.restore_runner", lambda runner, state: "switched off")
        agent = PPO.from_run(run_dir, env=make_env)
        with pytest.raises(TrainingInterrupted):
            agent.resume(progress=False, callback=stop)
        assert agent.envs_restored == restore, agent.envs_fresh_reason
        agent.close()
    import pandas as pd

    metrics = pd.read_csv(run_dir / "metrics.csv")
    return torch.cat([learner.optimizer.flat for learner in agent.learners]), metrics


@pytest.mark.parametrize(
    "make_env, overrides",
    [
        (Rendezvous, {"critic": "centralized"}),
        (TakeAway, {"selfplay_snapshot_every": 1, "selfplay_eval_every": 0}),  # the games against the pool
        # games in progress against the random player (and its moves from the self-play rng)
        (TakeAway, {"selfplay_snapshot_every": 1, "selfplay_eval_every": 0, "selfplay_random_prob": 0.5}),
        (TwoKinds, {"normalize_observations": True, "normalize_rewards": True}),
        (lambda: Rendezvous(n_agents=2, length=7), {"recurrent": "gru", "recurrent_hidden_size": 8}),
        ("pettingzoo.classic.connect_four_v3", {"selfplay_snapshot_every": 1, "selfplay_eval_every": 0}),
        ("mpe2.simple_spread_v3", {"env_kwargs": {"N": 2, "max_cycles": 10}}),
    ],
    ids=["centralized", "selfplay", "selfplay-random", "normalized-groups", "recurrent", "connect-four", "mpe"],
)
def test_an_interrupted_run_resumes_exactly_as_if_never_stopped(make_env, overrides, tmp_path, monkeypatch):
    straight, metrics = train_updates(make_env, overrides, tmp_path / "a")
    resumed, metrics_resumed = train_updates(make_env, overrides, tmp_path / "b", stop_at=2)
    assert torch.equal(straight, resumed)
    columns = ["global_step", "episode_return", "episodes", "value_loss", "entropy", "approx_kl"]
    assert metrics[columns].equals(metrics_resumed[columns])
    # the control: with the env copies reset on resume, the run goes elsewhere
    fresh, _ = train_updates(make_env, overrides, tmp_path / "c", stop_at=2, restore=False, monkeypatch=monkeypatch)
    assert not torch.equal(straight, fresh)


def interrupted_run(make_env, run_dir: Path) -> Path:
    """A run stopped after its second update; the checkpoint it wrote then."""
    from clippo.core.errors import TrainingInterrupted

    def stop(agent, metrics):
        if metrics["update"] == 2:
            agent.request_stop()

    agent = PPO(make_env, **SMALL, run_dir=run_dir)
    with pytest.raises(TrainingInterrupted) as info:
        agent.learn(10**6, progress=False, callback=stop)
    agent.close()
    return Path(info.value.checkpoint)


def test_the_saved_env_state_is_data_and_a_bad_one_leaves_the_envs_fresh(tmp_path):
    from clippo.training.checkpoint import write_atomic

    run_dir = tmp_path / "run"
    checkpoint = interrupted_run(TakeAway, run_dir)
    payload = torch.load(checkpoint, weights_only=True)  # tensors and plain data only
    env_state = payload["runner"]["adapters"][0]["env"]["object"]
    assert env_state["pile"] in range(6) and isinstance(payload["runner"]["buffers"][0]["ptr"]["ndarray"], torch.Tensor)

    def resumed_with(change) -> MultiAgentPPO:
        bad = torch.load(checkpoint, weights_only=True)
        change(bad["runner"]["adapters"][0]["env"]["object"])
        write_atomic(bad, checkpoint)
        loaded = PPO.load(checkpoint, env=TakeAway)
        loaded.env_runner()
        loaded.close()
        return loaded

    def shadow_a_method(state):
        state["step"] = 1

    def an_object_for_a_number(state):
        state["pile"] = {"object": {"__skipped__": []}}

    def a_list_for_a_number(state):
        state["pile"] = {"list": [1, 2]}

    for change, words in ((shadow_a_method, "step"), (an_object_for_a_number, "pile"), (a_list_for_a_number, "pile")):
        loaded = resumed_with(change)
        assert not loaded.envs_restored and words in loaded.envs_fresh_reason
        assert "\n" not in loaded.envs_fresh_reason


class OwnEnv(Rendezvous):
    """An env class clippo does not walk (its module is not one of resume.RESTORABLE_MODULES)."""


def test_an_env_clippo_does_not_walk_resumes_with_fresh_copies(tmp_path):

    interrupted_run(OwnEnv, tmp_path / "run")
    loaded = PPO.from_run(tmp_path / "run", env=OwnEnv)
    loaded.env_runner()
    assert not loaded.envs_restored and "holds no env state" in loaded.envs_fresh_reason
    loaded.close()


def test_cli_resume_of_a_module_path_run_restores_its_env_copies(tmp_path, toy_module):
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["train", toy_module, "--total-steps", "640", "--num-envs", "2", "--num-steps", "16",
                              "--run-dir", str(run_dir), "--no-tensorboard", "--checkpoint-every", "3"])  # fmt: skip
    assert code == 0, err
    (run_dir / "agent.pt").unlink()  # as if stopped after the checkpoint of update 9 (of 10)
    code, out, err = run_cli(["resume", str(run_dir), "--trust-code"])
    assert code == 0, err
    assert f"resuming {toy_module} at step 576 exactly (envs restored)" in out


# --- periodic evaluation, best.pt and callbacks -----------------------------------------------------
def test_periodic_evaluation_keeps_the_best_policy_and_callbacks_see_every_update(tmp_path):
    from clippo.training.callbacks import Callback

    class Seen(Callback):
        def __init__(self) -> None:
            self.updates: list[int] = []

        def on_update(self, agent, metrics):
            self.updates.append(metrics["update"])

    seen = Seen()
    run_dir = tmp_path / "run"
    agent = PPO(TwoKinds, **SMALL, run_dir=run_dir, eval_every=128, eval_episodes=2)
    agent.learn(512, progress=False, callback=seen)  # 64 agent steps per update: 8 updates, 4 evaluations
    agent.close()
    assert seen.updates == list(range(1, 9))
    import json

    import pandas as pd

    metrics = pd.read_csv(run_dir / "metrics.csv")
    evaluations = metrics["eval/mean_return"].dropna()
    assert len(evaluations) == 4
    best = json.loads((run_dir / "best.json").read_text())
    assert best["mean_return"] == evaluations.max()
    payload = torch.load(run_dir / "best.pt", weights_only=True)
    assert payload["global_step"] == best["global_step"]
    loaded = PPO.load(run_dir / "best.pt")  # acts without its env
    env = TwoKinds()
    obs, _ = env.reset(seed=0)
    assert set(loaded.act(obs, deterministic=True)) == {"speaker", "listener"}


@pytest.mark.slow
def test_one_ranks_callback_stop_ends_training_on_every_rank_after_the_same_update(tmp_path):
    run_two_ranks("callback_stop", tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # asked on rank 1 at update 2, agreed in update 3's after-rollout exchange: both end after update 3
    assert rank0 == rank1 == {"update": 3, "stopped": True}


@pytest.mark.slow
def test_two_ranks_of_selfplay_keep_one_rating_and_count_every_ranks_games(tmp_path):
    run_two_ranks("selfplay", tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["rows"] for r in (0, 1))
    assert rank0.shape[0] >= 5
    # (NaN: no pool game in an update) ratings, pool ratings and tallies identical on both ranks
    assert torch.equal(torch.nan_to_num(rank0, nan=-1.0), torch.nan_to_num(rank1, nan=-1.0))
    assert len(set(rank0[:, 0].tolist())) > 1  # the rating moved
    # every update's games are both ranks' (each rank plays its own 2 copies)
    games = rank0[:, 2:5].sum(dim=1)
    assert (games > 0).all()


# --- trust: a run names its env module; only the user's opt-in imports it ----------------------------
def test_commands_on_a_module_path_run_import_its_module_only_with_trust_code(tmp_path, monkeypatch):
    """The env module a run directory names is imported by eval, enjoy (with or without --video),
    export and resume only with --trust-code (each refusal one line, the module not imported: its
    import leaves a marker file); plot and report read the run without importing it."""
    folder, marker = tmp_path / "modules", tmp_path / "imported.txt"
    (folder / "marked").mkdir(parents=True)
    (folder / "marked" / "__init__.py").write_text("")
    (folder / "marked" / "rendezvous.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            from clippo.multiagent.toy_envs import Rendezvous

            Path({str(marker)!r}).write_text("imported")


            def parallel_env(n_agents=2, choices=3, length=4):
                return Rendezvous(n_agents=n_agents, choices=choices, length=length)
            """
        )
    )
    monkeypatch.syspath_prepend(str(folder))
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["train", "marked.rendezvous", "--total-steps", "128", "--num-envs", "2", "--num-steps",
                              "16", "--run-dir", str(run_dir), "--no-tensorboard", "--eval-episodes", "1"])  # fmt: skip
    assert code == 0, err
    assert marker.exists()  # typed on the command line: the user's choice
    for name in [n for n in sys.modules if n == "marked" or n.startswith("marked.")]:
        monkeypatch.delitem(sys.modules, name)
    marker.unlink()
    refused = [
        ["eval", str(run_dir), "--episodes", "1"],
        ["enjoy", str(run_dir), "--episodes", "1"],
        ["enjoy", str(run_dir), "--video", str(tmp_path / "v.mp4")],
        ["export", str(run_dir), "--check-steps", "16"],
        ["resume", str(run_dir), "--total-steps", "256"],
    ]
    for command in refused:
        code, out, err = run_cli(command)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--trust-code" in err, (command, err)
        assert not marker.exists(), command
    for command in (["plot", str(run_dir), "--output", str(tmp_path / "curves.png")], ["report", str(run_dir)]):
        code, out, err = run_cli(command)
        assert code == 0, (command, err)
        assert not marker.exists(), command
    code, out, err = run_cli(["enjoy", str(run_dir), "--trust-code", "--episodes", "1"])
    assert code == 0, err
    assert marker.exists() and "mean return" in out


def test_a_bf16_agent_exports_its_groups_fp32_policies(tmp_path):
    pytest.importorskip("onnxruntime")
    from clippo.core import precision
    from clippo.tools.export import export_policies

    if not precision.cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX)")
    agent = PPO(TwoKinds, **SMALL, precision="bf16")
    agent.learn(128, progress=False)
    results = export_policies(agent, tmp_path / "policy.onnx", check_steps=16, check_envs=2)
    assert all(result.check.passed for result in results.values()) and agent.precision == "bf16"

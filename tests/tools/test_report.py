"""clippo report: each health warning on a real run made to show it, none on a healthy run, and the
Markdown and HTML output.

The runs are CartPole-v1, 16 updates of 8 envs x 32 steps (about a second each). With these
recipes every warning showed on each of seeds 0-3 and the healthy recipe gave none:

- healthy: learning rate 2e-3 (target_kl 0.05, so the KL check is active);
- KL early stop: learning rate 0.05 with target_kl 0.01;
- clip fraction: clip_epsilon 0.01, far too small for learning rate 3e-3 and 8 epochs;
- explained variance: vf_coef 0, so the critic is never trained;
- entropy collapse: learning rate 0.1 without gradient clipping;
- erased reward signal: each trajectory's rewards standardized to zero mean before the returns
  are computed (benchmarks/reward_normalization.py), which turns CartPole's rewards into zeros.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from clippo import PPO
from clippo.config.ppo_config import save_config
from clippo.tools.report import (
    CHECKS,
    build_report,
    check_clip_fraction,
    check_entropy_collapse,
    check_kl_early_stop,
    check_reward_signal_erased,
    initial_entropy,
    write_report,
)
from tests.helpers import run_cli

SMALL = dict(num_envs=8, num_steps=32, total_steps=16 * 256, tensorboard=False, eval_episodes=0, checkpoint_every=0)

RECIPES = {
    "healthy": dict(seed=0, learning_rate=2e-3, target_kl=0.05),
    "kl_early_stop": dict(seed=1, learning_rate=0.05, target_kl=0.01),
    "clip_fraction": dict(seed=0, learning_rate=3e-3, clip_epsilon=0.01, update_epochs=8),
    "explained_variance": dict(seed=0, vf_coef=0.0),
    "entropy_collapse": dict(seed=0, learning_rate=0.1, max_grad_norm=None),
    "reward_signal_erased": dict(seed=0, learning_rate=2e-3),
}


def make_run(run_dir: Path, name: str) -> Path:
    agent = PPO("CartPole-v1", run_dir=run_dir, **SMALL, **RECIPES[name])
    run_dir.mkdir(parents=True)
    save_config(agent.config, run_dir / "config.yaml")
    if name == "reward_signal_erased":
        from benchmarks.reward_normalization import install_per_trajectory_normalization

        install_per_trajectory_normalization(agent)
    agent.learn(progress=False)
    agent.close()
    return run_dir


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    return {name: make_run(root / name, name) for name in RECIPES}


def checks_found(run_dir: Path) -> set[str]:
    return {w.check for w in build_report(run_dir).warnings}


@pytest.mark.slow
def test_healthy_run_has_no_warning(run_dirs):
    report = build_report(run_dirs["healthy"])
    assert report.warnings == [], [w.title for w in report.warnings]
    assert len(report.passed) == len(CHECKS)


@pytest.mark.parametrize("check", [name for name in RECIPES if name != "healthy"])
def test_each_warning_shows_on_a_run_made_to_show_it(run_dirs, check):
    assert check in checks_found(run_dirs[check])


def test_warnings_explain_and_suggest(run_dirs):
    (warning,) = [w for w in build_report(run_dirs["kl_early_stop"]).warnings if w.check == "kl_early_stop"]
    assert "learning rate" in warning.title and "target_kl=0.01" in warning.detail
    assert "learning_rate" in warning.fix


def test_the_erasing_mistake_zeroes_cartpole_rewards(run_dirs):
    """The run really shows what the check claims: per-step reward 1, critic loss ~0."""
    metrics = pd.read_csv(run_dirs["reward_signal_erased"] / "metrics.csv").dropna(subset=["episode_return"])
    assert (metrics["episode_return"] == metrics["episode_length"]).all()
    assert metrics["value_loss"].iloc[len(metrics) // 2 :].median() < 1e-3


# ------------------------------------------------------------------------------------------------
# the checks on hand-made tables: thresholds and cases a small run does not reach
# ------------------------------------------------------------------------------------------------
def test_kl_check_needs_target_kl_and_most_updates_stopped():
    stopped = pd.DataFrame({"early_stopped": [1, 1, 0], "epochs_run": [0.5, 0.5, 4.0]})
    assert check_kl_early_stop(stopped, {"target_kl": 0.01}) is not None
    assert check_kl_early_stop(stopped, {"target_kl": None}) is None
    assert check_kl_early_stop(pd.DataFrame({"early_stopped": [1, 0]}), {"target_kl": 0.01}) is None  # exactly half


def test_clip_fraction_threshold():
    assert check_clip_fraction(pd.DataFrame({"clip_fraction": [0.31, 0.35, 0.1]}), {}) is not None
    assert check_clip_fraction(pd.DataFrame({"clip_fraction": [0.31, 0.2, 0.1]}), {}) is None


def test_entropy_collapse_of_a_gaussian_policy():
    box = {"type": "Box", "low": [[-1.0, -1.0]], "high": [[1.0, 1.0]]}
    h0, kind, dims = initial_entropy(box, {"init_log_std": 0.0})
    assert kind == "continuous" and dims == 2
    assert h0 == pytest.approx(2 * 0.5 * math.log(2 * math.pi * math.e))
    # the std shrank 20x in every dimension by the end of the first tenth: collapsed
    shrunk = h0 - 2 * math.log(20)
    table = pd.DataFrame({"entropy": [h0, shrunk] + [shrunk] * 18})  # 20 updates: the first tenth is 2
    assert check_entropy_collapse(table, {"init_log_std": 0.0}, box) is not None
    kept = h0 - 2 * math.log(2)
    assert check_entropy_collapse(pd.DataFrame({"entropy": [kept] * 10}), {"init_log_std": 0.0}, box) is None


def test_signal_check_spares_constant_reward_runs_at_the_time_limit():
    """A solved CartPole: every episode lasts the 500-step limit and the critic's targets are
    honestly constant, so its loss is ~0 without anything being wrong."""
    table = pd.DataFrame(
        {
            "episode_return": [500.0] * 6,
            "episode_length": [500.0] * 6,
            "value_loss": [1e-6] * 6,
            "recent_return": [500.0] * 6,
        }
    )
    assert check_reward_signal_erased(table, {"gamma": 0.99}, time_limit=500) is None
    short = table.assign(episode_return=[20.0] * 6, episode_length=[20.0] * 6)
    assert check_reward_signal_erased(short, {"gamma": 0.99}, time_limit=500) is not None
    varying = short.assign(episode_return=[10.0, 20.0, 5.0, 8.0, 9.0, 12.0])  # rewards differ per step
    assert check_reward_signal_erased(varying, {"gamma": 0.99}, time_limit=500) is None


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_markdown_report_from_the_command(run_dirs, tmp_path):
    out = tmp_path / "r" / "report.md"
    code, stdout, err = run_cli(["report", str(run_dirs["explained_variance"]), "-o", str(out)])
    assert code == 0, err
    assert "warning: Explained variance is below 0" in stdout
    text = out.read_text()
    for heading in (
        "# clippo run report: CartPole-v1",
        "## Health: 1 warning",
        "## Curves",
        "## Diagnostics",
        "## Config",
    ):
        assert heading in text
    for row in ("final return", "best return", "throughput", "`vf_coef` | `0.0`"):
        assert row in text
    assert "![return and diagnostics against environment steps](report.png)" in text
    assert (out.parent / "report.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_report_shows_the_periodic_evaluations(tmp_path):
    run_dir = tmp_path / "evaluated"
    code, _, err = run_cli(
        [
            "train",
            "CartPole-v1",
            "--run-dir",
            str(run_dir),
            "--total-steps",
            "256",
            "--num-envs",
            "2",
            "--num-steps",
            "32",
            "--eval-every",
            "128",
            "--eval-episodes",
            "2",
            "--no-tensorboard",
        ]
    )
    assert code == 0, err
    metrics = pd.read_csv(run_dir / "metrics.csv")
    best = metrics["eval/mean_return"].max()
    out = tmp_path / "report.md"
    code, _, err = run_cli(["report", str(run_dir), "-o", str(out)])
    assert code == 0, err
    text = out.read_text()
    assert "| last periodic evaluation |" in text and "(2 evaluations of 2 deterministic episodes)" in text
    assert f"| best periodic evaluation | {best:.2f} at step" in text and "kept as `best.pt`" in text


@pytest.mark.slow
def test_default_output_is_in_the_run_dir(run_dirs):
    code, stdout, err = run_cli(["report", str(run_dirs["healthy"])])
    assert code == 0, err
    assert "no health warnings" in stdout
    assert (run_dirs["healthy"] / "report.md").is_file() and (run_dirs["healthy"] / "report.png").is_file()


@pytest.mark.slow
def test_html_report_is_self_contained(run_dirs, tmp_path):
    out = tmp_path / "report.html"
    report = write_report(run_dirs["reward_signal_erased"], out)
    assert report.figure_path is None
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert 'src="data:image/png;base64,' in text
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    assert "Warning (reward_signal_erased)" in text
    assert "<code>learning_rate</code>" in text  # backticks become code elements
    assert not list(tmp_path.glob("*.png"))


def test_report_errors_are_one_line(tmp_path, run_dirs):
    (tmp_path / "empty").mkdir()
    for args, needle in [
        (["report", str(tmp_path / "empty")], "metrics.csv"),
        (["report", str(tmp_path / "missing")], "no such run directory"),
        (["report", str(run_dirs["healthy"]), "-o", str(tmp_path / "r.pdf")], ".md or .html"),
    ]:
        code, _, err = run_cli(args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err

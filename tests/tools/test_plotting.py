"""clippo plot: reading run directories, grouping seeds, mean curves with bands, the figure, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clippo.tools.plotting import (
    DIAGNOSTICS,
    EVAL_COLUMN,
    EVAL_LABEL,
    RETURN_LABEL,
    Run,
    RunGroup,
    draw_groups,
    group_runs,
    mean_curve,
    plot_runs,
    read_run,
    t_quantile_975,
)
from tests.helpers import run_cli

TINY = [
    "--total-steps",
    "1024",
    "--num-envs",
    "4",
    "--num-steps",
    "64",
    "--eval-episodes",
    "0",
    "--no-tensorboard",
    "--checkpoint-every",
    "0",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two seeds of one config, and one run with another learning rate (4 updates each)."""
    root = tmp_path_factory.mktemp("plot")
    made = {}
    for name, extra in {
        "a-seed1": ["--seed", "1"],
        "a-seed2": ["--seed", "2"],
        "b-seed1": ["--seed", "1", "--learning-rate", "1e-3"],
    }.items():
        code, _, err = run_cli(["train", "CartPole-v1", "--run-dir", str(root / name), *TINY, *extra])
        assert code == 0, err
        made[name] = root / name
    return made


def assert_one_line_error(code, stderr: str, *needles: str) -> None:
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def fake_run(name: str, x: list[float], y: list[float], seed: int = 0, **config) -> Run:
    metrics = pd.DataFrame({"global_step": x, "wall_time": x, "recent_return": y})
    return Run(Path(name), {"env_id": "Fake-v0", "seed": seed, **config}, metrics)


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(12.706)
    assert t_quantile_975(4) == pytest.approx(2.776)
    assert t_quantile_975(60) == pytest.approx(2.000, abs=2e-3)
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=2e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_curve_ci_and_minmax_on_a_common_grid():
    a = fake_run("a", [0, 10], [0.0, 10.0])
    b = fake_run("b", [0, 10], [2.0, 12.0], seed=1)
    curve = mean_curve([a, b], "global_step", "recent_return", points=3)
    np.testing.assert_allclose(curve.x, [0, 5, 10])
    np.testing.assert_allclose(curve.mean, [1, 6, 11])
    half = 12.706 * np.std([0.0, 2.0], ddof=1) / math.sqrt(2)
    np.testing.assert_allclose(curve.high - curve.mean, half, rtol=1e-6)
    assert curve.count == 2
    minmax = mean_curve([a, b], "global_step", "recent_return", band="minmax", points=3)
    np.testing.assert_allclose(minmax.low, [0, 5, 10])
    np.testing.assert_allclose(minmax.high, [2, 7, 12])


def test_mean_curve_interpolates_and_keeps_the_range_all_runs_cover():
    # wall-clock x values differ between seeds: each run is interpolated onto one grid
    a = fake_run("a", [0, 4, 8], [0.0, 4.0, 8.0])
    b = fake_run("b", [1, 6], [1.0, 6.0], seed=1)
    curve = mean_curve([a, b], "wall_time", "recent_return", points=5)
    assert curve.x[0] == 1 and curve.x[-1] == 6
    np.testing.assert_allclose(curve.mean, curve.x)  # both runs are y = x


def test_mean_curve_drops_missing_values():
    a = fake_run("a", [0, 1, 2], [float("nan"), 1.0, 2.0])
    curve = mean_curve([a], "global_step", "recent_return")
    np.testing.assert_allclose(curve.x, [1, 2])
    assert curve.low is None  # one run: no band
    assert mean_curve([fake_run("b", [0], [float("nan")])], "global_step", "recent_return") is None


def test_runs_differing_only_by_seed_and_bookkeeping_are_grouped():
    runs = [
        fake_run("a1", [0], [0], seed=1, learning_rate=1e-3, tensorboard=True),
        fake_run("a2", [0], [0], seed=2, learning_rate=1e-3, tensorboard=False),
        fake_run("b1", [0], [0], seed=1, learning_rate=3e-4),
    ]
    groups = group_runs(runs)
    assert [len(g.runs) for g in groups] == [2, 1]
    assert [g.label for g in groups] == ["learning_rate=0.001", "learning_rate=0.0003"]


# ------------------------------------------------------------------------------------------------
# real runs and the command
# ------------------------------------------------------------------------------------------------
def test_real_runs_are_grouped_by_config(runs):
    groups = group_runs([read_run(runs[n]) for n in ("a-seed1", "a-seed2", "b-seed1")])
    assert [sorted(r.run_dir.name for r in g.runs) for g in groups] == [["a-seed1", "a-seed2"], ["b-seed1"]]
    assert groups[1].label == "learning_rate=0.001"


def test_figure_has_a_panel_per_x_axis_and_diagnostic(runs):
    groups = group_runs([read_run(p) for p in runs.values()])
    figure = draw_groups(groups, x="both", diagnostics=True)
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert len(visible) == 2 + len(DIAGNOSTICS)
    assert {ax.get_xlabel() for ax in visible[:2]} == {"environment steps", "training wall time (s)"}
    assert [ax.get_ylabel() for ax in visible[2:]] == list(DIAGNOSTICS.values())
    legend = figure.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert any("(2 seeds)" in label for label in labels)
    assert "95% CI of the mean" in legend.get_title().get_text()


def test_runs_with_periodic_evaluations_get_an_evaluation_panel():
    a = fake_run("a", [0, 10, 20, 30], [1.0, 2.0, 3.0, 4.0])
    a.metrics[EVAL_COLUMN] = [float("nan"), 50.0, float("nan"), 80.0]  # only the updates that evaluated
    b = fake_run("b", [0, 10, 20, 30], [2.0, 3.0, 4.0, 5.0], seed=1)
    b.metrics[EVAL_COLUMN] = [float("nan"), 70.0, float("nan"), 100.0]
    figure = draw_groups(group_runs([a, b]), x="both")
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in visible] == [RETURN_LABEL, RETURN_LABEL, EVAL_LABEL, EVAL_LABEL]
    curve = mean_curve([a, b], "global_step", EVAL_COLUMN, points=3)
    np.testing.assert_allclose(curve.x, [10, 20, 30])
    np.testing.assert_allclose(curve.mean, [60, 75, 90])
    # without evaluations: no evaluation panel
    plain = draw_groups(group_runs([fake_run("c", [0, 1], [0, 1])]), x="steps")
    assert [ax.get_ylabel() for ax in plain.axes if ax.get_visible()] == [RETURN_LABEL]


def test_one_row_per_environment():
    a = RunGroup([fake_run("a", [0, 1], [0, 1])], label="x")
    b = RunGroup([Run(Path("b"), {"env_id": "Other-v0"}, a.runs[0].metrics)], label="y")
    figure = draw_groups([a, b], x="both")
    assert len(figure.axes) == 4
    assert [ax.get_title() for ax in figure.axes] == ["Fake-v0", "Fake-v0", "Other-v0", "Other-v0"]


@pytest.mark.parametrize("x", ["steps", "time", "both"])
def test_plot_command_writes_a_png(runs, tmp_path, x):
    out = tmp_path / f"curves-{x}.png"
    code, stdout, err = run_cli(["plot", *(str(p) for p in runs.values()), "-o", str(out), "--x", x])
    assert code == 0, err
    assert str(out) in stdout
    assert out.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_plot_command_with_diagnostics_and_minmax_band(runs, tmp_path):
    out = tmp_path / "sub" / "diag.png"
    code, _, err = run_cli(
        ["plot", str(runs["a-seed1"]), str(runs["a-seed2"]), "-o", str(out), "--diagnostics", "--band", "minmax"]
    )
    assert code == 0, err
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_a_run_made_with_the_python_api(tmp_path):
    """No config.yaml: the config comes from the checkpoint."""
    from clippo import PPO

    run_dir = tmp_path / "api"
    PPO("CartPole-v1", run_dir=run_dir, num_envs=4, num_steps=32, total_steps=256, tensorboard=False).learn(
        progress=False
    )
    assert not (run_dir / "config.yaml").exists()
    assert read_run(run_dir).config["num_steps"] == 32
    assert "<svg" in plot_runs([run_dir], tmp_path / "api.svg", x="steps").read_text()[:500]


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
def test_run_dir_without_metrics_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["plot", str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, "metrics.csv", "empty")


def test_missing_run_dir_is_a_one_line_error(tmp_path):
    code, _, err = run_cli(["plot", str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, "no such run directory")


def test_metrics_without_rows_or_columns(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("global_step,update,wall_time,sps,episode_return,recent_return\n")
    code, _, err = run_cli(["plot", str(run_dir), "-o", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, "no rows")
    (run_dir / "metrics.csv").write_text("a,b\n1,2\n")
    code, _, err = run_cli(["plot", str(run_dir), "-o", str(tmp_path / "x.png")])
    assert_one_line_error(code, err, "lacks the column")


def test_bad_output_suffix_and_bad_choices(runs, tmp_path):
    code, _, err = run_cli(["plot", str(runs["a-seed1"]), "-o", str(tmp_path / "x.gif")])
    assert_one_line_error(code, err, ".png")
    code, _, err = run_cli(["plot", str(runs["a-seed1"]), "--x", "episodes"])
    assert code == 2 and len(err.strip().splitlines()) == 1

"""Learning curves of one or more run directories (what ``clippo plot`` draws).

Each run directory is read through its ``metrics.csv`` (one row per update) and its resolved
config (``config.yaml``, else the config stored in its checkpoint). Runs whose configs are equal
except for the seed (and a few settings that do not change what is learned: ``IGNORED_KEYS``)
are one *group*: their curves are interpolated onto a common grid over the x range that every run
of the group covers, and drawn as the mean with a band, either the 95% confidence interval of that
mean (Student t, the default) or the min-max range over the seeds. Runs of different environments
get a row of panels each. Runs with periodic evaluations (``--eval-every``) get a panel of their
deterministic evaluation return beside the training return. Multi-agent runs: with several policy
groups the diagnostics panels also draw each group's own statistic (dashed), and self-play runs
get panels of their win rate against a random player and their Elo rating.

matplotlib is used through its object API on the Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from clippo.config.ppo_config import BOOKKEEPING_KEYS
from clippo.core.errors import first_line
from clippo.training.logger import METRICS_FILE

CONFIG_FILE = "config.yaml"

# Config keys that may differ between runs of one group: the seed, and bookkeeping that does not
# change the training computation.
IGNORED_KEYS = frozenset({"seed"}) | BOOKKEEPING_KEYS

RETURN_COLUMN = "recent_return"
RETURN_LABEL = "return (mean of last 100 episodes)"
# The periodic evaluation (clippo.training.callbacks.EvalCallback): a value only in the rows of the
# updates that evaluated.
EVAL_COLUMN = "eval/mean_return"
EVAL_LABEL = "evaluation return (deterministic)"
X_COLUMNS = {"steps": ("global_step", "environment steps"), "time": ("wall_time", "training wall time (s)")}
X_CHOICES = ("steps", "time", "both")
BANDS = {"ci95": "95% CI of the mean", "minmax": "min-max over seeds"}
# The diagnostics ``--diagnostics`` adds, with their axis labels.
DIAGNOSTICS = {
    "approx_kl": "approx KL (old || new)",
    "clip_fraction": "clip fraction",
    "entropy": "policy entropy",
    "explained_variance": "explained variance",
    "value_loss": "value loss",
}
# A multi-agent run's self-play panels (two-player games), drawn where the run logged them.
SELFPLAY_PANELS = {"vs_random/win": "win rate against a random player", "selfplay/elo": "Elo rating (self-play)"}
# A multi-agent run with several policy groups logs each group's statistics as group/NAME/STATISTIC:
# the diagnostics panels draw each group's beside the run's (the transition-weighted mean), dashed.
GROUP_PREFIX = "group/"
GROUP_LINE_STYLES = ("--", ":", "-.")
REQUIRED_COLUMNS = ("global_step", "wall_time", RETURN_COLUMN)
GRID_POINTS = 200

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (the 95% CI multiplier).

    Tabulated up to 30; beyond, ``1.96 + 2.4 / dof`` is within 0.002 of the exact value (no scipy
    needed for one number).
    """
    if dof < 1:
        raise ValueError(f"dof={dof} is invalid: a confidence interval needs at least 2 values")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96 + 2.4 / dof


def require_plotting_packages(command: str = "clippo plot") -> None:
    """One-line error when matplotlib or pandas (the ``plot`` extra) is missing."""
    for module in ("matplotlib", "pandas"):
        try:
            __import__(module)
        except ImportError:
            raise ValueError(f"{command} needs {module}: pip install 'clippo[plot]'") from None


@dataclass
class Run:
    """One run directory: its resolved config (may be empty) and its metrics table."""

    run_dir: Path
    config: dict[str, Any]
    metrics: Any  # pandas.DataFrame

    @property
    def env_id(self) -> str:
        return str(self.config.get("env_id", self.run_dir.name))


@dataclass
class RunGroup:
    """Runs whose configs match up to ``IGNORED_KEYS``: seeds of one experiment."""

    runs: list[Run]
    label: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def env_id(self) -> str:
        return self.runs[0].env_id


@dataclass
class Curve:
    """A group's mean curve on a common grid, with the band's lower and upper edges."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray | None
    high: np.ndarray | None
    count: int


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config: ``config.yaml``, else the config inside its checkpoint, else {}.

    Either is data from a file (the run may be someone else's): ``config.yaml`` is read with a
    size cap and without YAML aliases, and the values of both go through the config's own
    validation (``run_config_values``) before anything uses them."""
    from clippo.core import safety

    path = run_dir / CONFIG_FILE
    if path.is_file():
        try:
            data = safety.load_yaml(safety.read_capped_text(path, what="config file"), f"{str(path)!r}")
        except OSError as exc:
            raise ValueError(f"cannot read {str(path)!r}: {first_line(exc)}") from None
        return run_config_values(data, f"{str(path)!r}")
    # Runs made with the Python API have no config.yaml; their checkpoint carries the config.
    from clippo.training.checkpoint import CHECKPOINT_DIR, FINAL_NAME

    if (run_dir / FINAL_NAME).is_file() or any((run_dir / CHECKPOINT_DIR).glob("step_*.pt")):
        from clippo.core.errors import CheckpointError
        from clippo.training.checkpoint import read_checkpoint

        try:
            data = read_checkpoint(run_dir)["config"]
        except CheckpointError:
            return {}
        return run_config_values(data, f"the checkpoint in {str(run_dir)!r}")
    return {}


def run_config_values(data: Any, source: str) -> dict[str, Any]:
    """A run's config mapping checked as the CLI checks one (names, types, ranges, size caps,
    strings without control characters): the file's keys with their validated values."""
    from clippo.config.ppo_config import config_from_dict

    if not isinstance(data, dict):
        raise ValueError(f"{source} does not hold a mapping of hyperparameters")
    try:
        config = config_from_dict(dict(data))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source} is not a valid clippo config: {first_line(exc)}") from None
    return {key: getattr(config, key) for key in data}


def read_run(run_dir: str | Path) -> Run:
    """Read a run directory; one-line ValueError naming what is missing."""
    import pandas as pd

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"no such run directory: {str(run_dir)!r}")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"run directory {str(run_dir)!r} has no {METRICS_FILE} (is it a clippo run directory?)")
    try:
        metrics = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{str(path)!r} is empty") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = first_line(exc)
        raise ValueError(f"cannot read {str(path)!r}: {first}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(f"{str(path)!r} lacks the column(s) {', '.join(missing)}: is it a clippo metrics file?")
    if metrics.empty:
        raise ValueError(f"{str(path)!r} has no rows yet: the run has not finished an update")
    return Run(run_dir, read_run_config(run_dir), metrics)


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in IGNORED_KEYS}


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return tuple(value) if isinstance(value, list) else value


def group_runs(runs: Sequence[Run]) -> list[RunGroup]:
    """Group runs that differ only by ``IGNORED_KEYS`` (runs without a config stay alone), in order
    of first appearance, and label each group by the settings that tell it apart from the other
    groups of the same environment."""
    groups: dict[Any, RunGroup] = {}
    for run in runs:
        settings = _settings(run.config)
        key = tuple(sorted((k, _hashable(v)) for k, v in settings.items())) if settings else ("dir", str(run.run_dir))
        if key not in groups:
            groups[key] = RunGroup([], settings=settings)
        groups[key].runs.append(run)
    result = list(groups.values())
    for group in result:
        siblings = [g for g in result if g.env_id == group.env_id]
        varying = sorted(
            {
                k
                for g in siblings
                for k in set(g.settings) | set(group.settings)
                if _hashable(g.settings.get(k)) != _hashable(group.settings.get(k))
            }
            - {"env_id"}
        )
        group.label = ", ".join(f"{k}={_short(group.settings.get(k))}" for k in varying)
        if len(group.label) > 120:
            group.label = group.label[:117] + "..."
        if not group.label:
            group.label = group.runs[0].run_dir.name if len(group.runs) == 1 and not group.settings else group.env_id
    return result


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return str(value)


def mean_curve(
    runs: Sequence[Run], x_column: str, y_column: str, band: str = "ci95", points: int = GRID_POINTS
) -> Curve | None:
    """The runs' mean of ``y_column`` against ``x_column`` on a common grid, with a band.

    Rows where y is missing (no episode finished yet, or a skipped update) are dropped first. The
    grid spans the x range every run covers, so each grid point averages all runs. None when no
    run has a value.
    """
    if band not in BANDS:
        raise ValueError(f"band={band!r} is invalid: choose one of {', '.join(BANDS)}")
    series = []
    for run in runs:
        if y_column not in run.metrics.columns:
            continue
        rows = run.metrics[[x_column, y_column]].apply(_to_float).dropna()
        rows = rows[np.isfinite(rows[y_column]) & np.isfinite(rows[x_column])]
        if len(rows):
            series.append((rows[x_column].to_numpy(float), rows[y_column].to_numpy(float)))
    if not series:
        return None
    if len(series) == 1:
        x, y = series[0]
        return Curve(x, y, None, None, 1)
    start = max(x[0] for x, _ in series)
    end = min(x[-1] for x, _ in series)
    # np.interp holds the end values outside a run's range, which matters only when the ranges
    # do not overlap (then the grid is a single point).
    grid = np.linspace(start, end, points) if end > start else np.array([start])
    values = np.stack([np.interp(grid, x, y) for x, y in series])
    mean = values.mean(axis=0)
    if band == "minmax":
        low, high = values.min(axis=0), values.max(axis=0)
    else:
        n = len(series)
        half = t_quantile_975(n - 1) * values.std(axis=0, ddof=1) / math.sqrt(n)
        low, high = mean - half, mean + half
    return Curve(grid, mean, low, high, len(series))


def _to_float(column):
    import pandas as pd

    return pd.to_numeric(column, errors="coerce")


def plot_runs(
    run_dirs: Iterable[str | Path],
    output: str | Path,
    x: str = "steps",
    diagnostics: bool = False,
    band: str = "ci95",
    trust_code: bool = False,
) -> Path:
    """Draw the return (and, with ``diagnostics``, the training diagnostics) of the runs into ``output``.

    ``x``: ``steps`` (environment steps), ``time`` (training wall time) or ``both`` (a panel each).
    The format follows the suffix: .png, .pdf or .svg. Returns the path written (atomically, never
    through a link). Plotting imports nothing a run names, so ``trust_code`` changes nothing here
    (it is taken as by every command that reads a run).
    """
    require_plotting_packages()
    if x not in X_CHOICES:
        raise ValueError(f"x={x!r} is invalid: choose one of {', '.join(X_CHOICES)}")
    if band not in BANDS:
        raise ValueError(f"band={band!r} is invalid: choose one of {', '.join(BANDS)}")
    output = Path(output)
    if output.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"cannot write {str(output)!r}: give a file name ending in .png, .pdf or .svg")
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("no run directory given")
    groups = group_runs([read_run(d) for d in run_dirs])
    figure = draw_groups(groups, x=x, diagnostics=diagnostics, band=band)
    output.parent.mkdir(parents=True, exist_ok=True)
    import io

    from clippo.core.safety import write_file

    buffer = io.BytesIO()
    figure.savefig(buffer, format=output.suffix.lower()[1:], dpi=110, bbox_inches="tight")
    return write_file(output, buffer.getvalue())


def policy_groups(columns: Iterable[str]) -> list[str]:
    """The policy groups whose own statistics a multi-agent run's metrics hold (``group/NAME/STATISTIC``)."""
    names: list[str] = []
    for column in columns:
        rest = column[len(GROUP_PREFIX) :] if column.startswith(GROUP_PREFIX) else ""
        if "/" in rest and rest.rsplit("/", 1)[0] not in names:
            names.append(rest.rsplit("/", 1)[0])
    return names


def group_metrics(metrics, name: str):
    """Policy group ``name``'s statistics under the run-wide column names (``entropy``...), with the x columns."""
    prefix = f"{GROUP_PREFIX}{name}/"
    own = {column: column[len(prefix) :] for column in metrics.columns if column.startswith(prefix)}
    x_columns = [column for column in ("global_step", "wall_time") if column in metrics.columns]
    return metrics[x_columns + list(own)].rename(columns=own)


def panels_for(
    x: str, diagnostics: bool, evaluation: bool = False, selfplay: Sequence[str] = ()
) -> list[tuple[str, str, str, str]]:
    """(x column, x label, y column, y label) of each panel of one environment's row; with
    ``evaluation``, the evaluation return against the same x axes; ``selfplay``: the columns of
    ``SELFPLAY_PANELS`` to draw against env steps."""
    modes = ["steps", "time"] if x == "both" else [x]
    panels = [(*X_COLUMNS[m], RETURN_COLUMN, RETURN_LABEL) for m in modes]
    if evaluation:
        panels += [(*X_COLUMNS[m], EVAL_COLUMN, EVAL_LABEL) for m in modes]
    panels += [(*X_COLUMNS["steps"], column, SELFPLAY_PANELS[column]) for column in selfplay]
    if diagnostics:
        panels += [(*X_COLUMNS["steps"], column, label) for column, label in DIAGNOSTICS.items()]
    return panels


def axis_label(x_column: str, x_label: str, groups: Sequence[RunGroup]) -> str:
    """``x_label``, but "agent steps" on the step axis of multi-agent runs (one step per agent action)."""
    multiagent = any("env_steps" in run.metrics.columns for group in groups for run in group.runs)
    return "agent steps" if x_column == "global_step" and multiagent else x_label


def draw_groups(groups: Sequence[RunGroup], x: str = "steps", diagnostics: bool = False, band: str = "ci95"):
    """A matplotlib Figure: a row of panels per environment (a wrapped grid for one environment)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    runs = [run for g in groups for run in g.runs]
    panels = panels_for(
        x,
        diagnostics,
        evaluation=any(has_values(run, EVAL_COLUMN) for run in runs),
        selfplay=[column for column in SELFPLAY_PANELS if any(has_values(run, column) for run in runs)],
    )
    envs = list(dict.fromkeys(g.env_id for g in groups))
    if len(envs) == 1:
        ncols = min(len(panels), 3)
        nrows = math.ceil(len(panels) / ncols)
    else:
        ncols, nrows = len(panels), len(envs)
    figure = Figure(figsize=(4.6 * ncols, 3.4 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    colors = _colors(groups)
    for env_index, env_id in enumerate(envs):
        env_groups = [g for g in groups if g.env_id == env_id]
        for panel_index, (x_column, x_label, y_column, y_label) in enumerate(panels):
            if len(envs) == 1:
                ax = axes.flat[panel_index]
            else:
                ax = axes[env_index, panel_index]
            for group in env_groups:
                curve = mean_curve(group.runs, x_column, y_column, band)
                if curve is None:
                    continue
                color = colors[group.label]
                name = group.label if curve.count == 1 else f"{group.label} ({curve.count} seeds)"
                # evaluations are sparse: mark each one
                marker = "o" if len(curve.x) == 1 or (y_column == EVAL_COLUMN and curve.count == 1) else None
                ax.plot(curve.x, curve.mean, color=color, lw=1.6, label=name, marker=marker, markersize=4)
                if curve.low is not None:
                    ax.fill_between(curve.x, curve.low, curve.high, color=color, alpha=0.2, lw=0)
                if y_column in DIAGNOSTICS:
                    _draw_policy_groups(ax, group, x_column, y_column, band, color)
            ax.set_xlabel(axis_label(x_column, x_label, env_groups))
            ax.set_ylabel(y_label)
            ax.set_title(env_id if panel_index == 0 or len(envs) > 1 else f"{env_id}: {y_label}", fontsize=10)
            ax.grid(alpha=0.3)
            if x_column == "global_step":
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            if y_column == "value_loss" and _all_positive(env_groups, y_column):
                ax.set_yscale("log")  # value losses span orders of magnitude as the returns grow
    for index in range(len(panels), nrows * ncols) if len(envs) == 1 else ():
        axes.flat[index].set_visible(False)
    # One legend under all panels: a group keeps its color in every row, and long labels do not
    # cover the curves.
    entries: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=False):
            entries.setdefault(label, handle)
    if entries:
        seeded = any(len(g.runs) > 1 for g in groups)
        title = f"line: mean over seeds; band: {BANDS[band]}" if seeded else None
        figure.legend(
            list(entries.values()),
            list(entries),
            loc="outside lower center",
            ncols=min(len(entries), max(ncols, 1)),
            fontsize=9,
            title=title,
            title_fontsize=9,
            frameon=False,
        )
    return figure


def _draw_policy_groups(ax, group: RunGroup, x_column: str, y_column: str, band: str, color: Any) -> None:
    """Each policy group's own ``y_column`` (a multi-agent run's ``group/NAME/...``), dashed."""
    names = policy_groups(column for run in group.runs for column in run.metrics.columns)
    for index, policy in enumerate(names):
        own = mean_curve(group.runs, x_column, f"{GROUP_PREFIX}{policy}/{y_column}", band)
        if own is not None:
            style = GROUP_LINE_STYLES[index % len(GROUP_LINE_STYLES)]
            ax.plot(own.x, own.mean, color=color, lw=1.1, ls=style, label=f"{group.label}: {policy}")


def has_values(run: Run, column: str) -> bool:
    """Whether the run's metrics hold at least one finite value of ``column``."""
    if column not in run.metrics.columns:
        return False
    return bool(np.isfinite(_to_float(run.metrics[column]).to_numpy(float)).any())


def _all_positive(groups: Sequence[RunGroup], column: str) -> bool:
    values = [run.metrics[column] for g in groups for run in g.runs if column in run.metrics.columns]
    import pandas as pd

    finite = [v[np.isfinite(pd.to_numeric(v, errors="coerce"))] for v in values]
    return bool(finite) and all((v > 0).all() for v in finite) and any(len(v) for v in finite)


def _colors(groups: Sequence[RunGroup]) -> dict[str, Any]:
    """One color per group label, the same in every environment's row."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    tab10 = colormaps["tab10"]
    assert isinstance(tab10, ListedColormap)
    palette = cast("Sequence[Any]", tab10.colors)  # its ten colors (the stubs say ArrayLike)
    labels = list(dict.fromkeys(g.label for g in groups))
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}

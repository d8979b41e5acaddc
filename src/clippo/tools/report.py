"""A one-page report of a run (what ``clippo report`` writes): config, results, throughput, and
health checks that turn the logged diagnostics into plain-language warnings with suggested fixes.

Each check is a small function of the run's metrics table and config that returns a
:class:`HealthWarning` or None. Their thresholds are the constants below (and are listed in
docs/tuning.md); every check is tested on a real run made to show it, and on a healthy run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clippo.tools.plotting import (
    EVAL_COLUMN,
    RunGroup,
    draw_groups,
    group_metrics,
    policy_groups,
    read_run,
    require_plotting_packages,
)
from clippo.training.callbacks import BEST_NAME

# --- thresholds -------------------------------------------------------------------------------
# KL early stop: ended the epochs of more than this share of the updates.
KL_EARLY_STOP_SHARE = 0.5
# Clip fraction: above CLIP_FRACTION_LIMIT on at least CLIP_FRACTION_SHARE of the updates.
CLIP_FRACTION_LIMIT = 0.3
CLIP_FRACTION_SHARE = 0.5
# Explained variance: its median over the second half of training below this.
EXPLAINED_VARIANCE_FLOOR = 0.0
# Entropy collapse, judged at the end of the first EARLY_SHARE of the updates against the initial
# policy's entropy: discrete actions below ENTROPY_KEPT_DISCRETE of it; continuous actions lower
# by more than ENTROPY_DROP_PER_DIM nats per action dimension (log 10: the std shrank tenfold).
EARLY_SHARE = 0.1
ENTROPY_KEPT_DISCRETE = 0.1
ENTROPY_DROP_PER_DIM = math.log(10.0)
# Erased reward signal: every step pays the same reward (return / length equal in every update,
# to this relative tolerance), episodes still end before TIME_LIMIT_SHARE of the env's time limit
# in the second half, and the critic's loss there is below VALUE_LOSS_COLLAPSE times the squared
# per-step reward the learner should see.
CONSTANT_REWARD_TOLERANCE = 1e-6
TIME_LIMIT_SHARE = 0.9
VALUE_LOSS_COLLAPSE = 1e-3

# Config keys shown in the report's header rather than in the hyperparameter table.
_HEADER_KEYS = ("env_id", "seed", "total_steps")


@dataclass
class HealthWarning:
    """One finding: ``check`` is the check's name, ``title`` one plain sentence, ``detail`` the
    numbers behind it, ``fix`` what to try."""

    check: str
    title: str
    detail: str
    fix: str


@dataclass
class RunReport:
    """Everything a report shows, before it is rendered."""

    run_dir: Path
    config: dict[str, Any]
    metrics: Any  # pandas.DataFrame
    evaluation: dict[str, Any] | None
    warnings: list[HealthWarning]
    passed: list[str]
    figure_path: Path | None = None
    figure_png: bytes | None = field(default=None, repr=False)


# --- helpers ----------------------------------------------------------------------------------
def _column(metrics, name: str) -> np.ndarray:
    """A metrics column as floats with missing values (NaN) dropped; empty if absent."""
    import pandas as pd

    if name not in metrics.columns:
        return np.array([])
    values = pd.to_numeric(metrics[name], errors="coerce").to_numpy(float)
    return values[np.isfinite(values)]


def _second_half(values: np.ndarray) -> np.ndarray:
    return values[len(values) // 2 :]


def _early_index(count: int) -> int:
    """Index of the last update of the first EARLY_SHARE of training."""
    return max(math.ceil(EARLY_SHARE * count), 1) - 1


# --- the checks -------------------------------------------------------------------------------
def check_kl_early_stop(metrics, config: dict[str, Any]) -> HealthWarning | None:
    """The KL early stop cut most updates short: each update's steps are too large."""
    target_kl = config.get("target_kl")
    stopped = _column(metrics, "early_stopped")
    if target_kl is None or len(stopped) == 0:
        return None
    share = float(np.mean(stopped > 0))
    if share <= KL_EARLY_STOP_SHARE:
        return None
    epochs = _column(metrics, "epochs_run")
    ran = f"; on average {np.mean(epochs):.2f} of {config.get('update_epochs', '?')} epochs ran" if len(epochs) else ""
    return HealthWarning(
        "kl_early_stop",
        "The KL early stop ended most updates: the learning rate is probably too high.",
        f"approx KL exceeded target_kl={target_kl:g} and stopped the epochs in {share:.0%} of the updates "
        f"(threshold {KL_EARLY_STOP_SHARE:.0%}){ran}.",
        f"Lower learning_rate (now {config.get('learning_rate', '?')}; try half), or use fewer update_epochs or "
        "larger minibatches (fewer num_minibatches). Raise target_kl only if you accept larger policy changes.",
    )


def check_clip_fraction(metrics, config: dict[str, Any]) -> HealthWarning | None:
    """The probability ratio left the clip range for a large share of the samples, update after update."""
    clip = _column(metrics, "clip_fraction")
    if len(clip) == 0:
        return None
    share = float(np.mean(clip > CLIP_FRACTION_LIMIT))
    if share < CLIP_FRACTION_SHARE:
        return None
    return HealthWarning(
        "clip_fraction",
        f"The clip fraction stayed above {CLIP_FRACTION_LIMIT:g}: the policy moves further than the clip range "
        "allows on every update.",
        f"clip fraction > {CLIP_FRACTION_LIMIT:g} in {share:.0%} of the updates (threshold {CLIP_FRACTION_SHARE:.0%}), "
        f"median {np.median(clip):.2f}, with clip_epsilon={config.get('clip_epsilon', '?')}. Clipped samples give no "
        "gradient, so most of each update's data is wasted.",
        f"Lower learning_rate (now {config.get('learning_rate', '?')}) or update_epochs "
        f"(now {config.get('update_epochs', '?')}); set target_kl (e.g. 0.02) to stop an update that runs away; "
        "a clip_epsilon below 0.1 makes this likelier.",
    )


def check_explained_variance(metrics, config: dict[str, Any]) -> HealthWarning | None:
    """The critic predicts the returns worse than a constant would."""
    ev = _second_half(_column(metrics, "explained_variance"))
    if len(ev) == 0:
        return None
    median = float(np.median(ev))
    if median >= EXPLAINED_VARIANCE_FLOOR:
        return None
    return HealthWarning(
        "explained_variance",
        "Explained variance is below 0: the critic is not learning the returns.",
        f"median explained variance over the second half of training {median:.3f} (threshold "
        f"{EXPLAINED_VARIANCE_FLOOR:g}: a critic predicting a constant scores 0). Its advantages are mostly noise.",
        f"Check vf_coef > 0 (now {config.get('vf_coef', '?')}); turn on normalize_rewards (now "
        f"{config.get('normalize_rewards', '?')}) and normalize_observations (now "
        f"{config.get('normalize_observations', '?')}) when returns or observations are large; train longer or with "
        "a larger learning_rate if it is still early; try network=separate if the critic shares a trunk.",
    )


def initial_entropy(action_space: dict[str, Any] | None, config: dict[str, Any]) -> tuple[float, str, int] | None:
    """The entropy of clippo's initial policy, its kind (discrete/continuous) and the action dims.

    The policy head starts near zero (gain 0.01), so a categorical policy starts almost uniform
    (entropy log n); a Gaussian starts with log-std ``init_log_std`` in every dimension.
    """
    if not action_space:
        return None
    kind = action_space.get("type")
    if kind == "Discrete":
        return math.log(int(action_space["n"])), "discrete", 1
    if kind == "MultiDiscrete":
        nvec = np.asarray(action_space["nvec"]).reshape(-1)
        return float(np.sum(np.log(nvec))), "discrete", len(nvec)
    if kind == "Box":
        dims = int(np.prod(np.asarray(action_space["low"]).shape))
        per_dim = 0.5 * math.log(2 * math.pi * math.e) + float(config.get("init_log_std", 0.0))
        return dims * per_dim, "continuous", dims
    return None


def check_entropy_collapse(
    metrics, config: dict[str, Any], action_space: dict[str, Any] | None = None
) -> HealthWarning | None:
    """The policy became (nearly) deterministic within the first tenth of training."""
    entropy = _column(metrics, "entropy")
    if len(entropy) == 0:
        return None
    start = initial_entropy(action_space, config)
    if start is None:  # unknown action space: the first update's entropy is the best estimate
        start = (float(entropy[0]), "discrete" if entropy[0] >= 0 else "continuous", 1)
    h0, kind, dims = start
    index = _early_index(len(entropy))
    early = float(entropy[index])
    if kind == "discrete":
        collapsed = h0 > 0 and early < ENTROPY_KEPT_DISCRETE * h0
        how = (
            f"{early:.3f} nats, {early / h0:.0%} of the initial {h0:.3f} (threshold {ENTROPY_KEPT_DISCRETE:.0%})"
            if h0 > 0
            else ""
        )
    else:
        drop = (h0 - early) / dims
        collapsed = drop > ENTROPY_DROP_PER_DIM
        how = (
            f"{early:.3f} nats, {drop:.2f} nats per action dimension below the initial {h0:.3f} "
            f"(threshold {ENTROPY_DROP_PER_DIM:.2f}: the action std shrank more than tenfold)"
        )
    if not collapsed:
        return None
    return HealthWarning(
        "entropy_collapse",
        "The policy's entropy collapsed in the first tenth of training: it stopped exploring early.",
        f"entropy after update {index + 1} of {len(entropy)}: {how}.",
        f"Lower learning_rate (now {config.get('learning_rate', '?')}); add an entropy bonus (ent_coef, now "
        f"{config.get('ent_coef', '?')}; e.g. 0.01 for discrete actions); keep max_grad_norm set (now "
        f"{config.get('max_grad_norm', '?')}).",
    )


def _usable_env_id(env_id: Any, trust_code: bool = False) -> str | None:
    """``env_id`` from a run's config if it may be handed to Gymnasium: of Gymnasium's id form, and
    naming no module to import (``module:Env-v0``) unless ``trust_code`` (clippo.core.safety); else None."""
    from clippo.core import safety

    try:
        safety.check_env_id_text(env_id, "the run's config")
    except ValueError:
        return None
    return env_id if trust_code or not safety.env_id_needs_import(env_id) else None


def time_limit_of(env_id: str | None, trust_code: bool = False) -> int | None:
    """The registered env's time limit (max_episode_steps), if any (None for an id Gymnasium may
    not be given: ``_usable_env_id``)."""
    env_id = _usable_env_id(env_id, trust_code)
    if not env_id:
        return None
    try:
        import gymnasium as gym

        return gym.spec(env_id).max_episode_steps
    except Exception:  # an env id Gymnasium does not know (a custom factory's name)
        return None


def check_reward_signal_erased(metrics, config: dict[str, Any], time_limit: int | None = None) -> HealthWarning | None:
    """Every step pays the same reward, episodes still end early, yet the critic fits its targets
    almost exactly: its targets do not depend on how long an episode lasts, so nothing is learned
    from the rewards. This is what subtracting each trajectory's mean reward does to such tasks.

    With honest discounted returns of a constant reward ``c``, a critic's targets inside an episode
    that terminates run from about ``c`` (the last step) to ``c (1 - gamma^L) / (1 - gamma)``, so
    its loss cannot be tiny next to ``c^2`` unless it predicts every episode's end exactly. With
    clippo's reward scaling the learner's reward is ``c / sigma`` with ``sigma`` at most
    ``|c| / (2 (1 - gamma))``, so the bound uses ``2 (1 - gamma)`` as the smallest such reward.
    """
    import pandas as pd

    rows = metrics[["episode_return", "episode_length"]].apply(pd.to_numeric, errors="coerce").dropna()
    rows = rows[rows["episode_length"] > 0]
    if len(rows) < 3:
        return None
    per_step = (rows["episode_return"] / rows["episode_length"]).to_numpy(float)
    reward = float(np.median(per_step))
    if reward == 0 or np.max(np.abs(per_step - reward)) > CONSTANT_REWARD_TOLERANCE * abs(reward):
        return None
    lengths = _second_half(rows["episode_length"].to_numpy(float))
    mean_length = float(np.mean(lengths))
    if time_limit is not None and mean_length >= TIME_LIMIT_SHARE * time_limit:
        return None  # episodes end at the time limit: constant targets are then honest
    gamma = float(config.get("gamma", 0.99))
    learner_reward = 2 * (1 - gamma) if config.get("normalize_rewards") else abs(reward)
    value_loss = _second_half(_column(metrics, "value_loss"))
    if len(value_loss) == 0:
        return None
    median_loss = float(np.median(value_loss))
    bound = VALUE_LOSS_COLLAPSE * learner_reward**2
    if median_loss >= bound:
        return None
    returns = _column(metrics, "recent_return")
    trend = f"; the mean return went from {returns[0]:.1f} to {returns[-1]:.1f}" if len(returns) else ""
    limit = f" (time limit {time_limit})" if time_limit else ""
    return HealthWarning(
        "reward_signal_erased",
        "Every step pays the same reward, yet the critic's loss is ~0 while episodes still end early: the "
        "rewards the learner sees carry no signal (typically reward normalization that subtracts a mean).",
        f"reward per step {reward:g} in every update; mean episode length over the second half {mean_length:.1f}"
        f"{limit}; median value loss there {median_loss:.2e}, below {VALUE_LOSS_COLLAPSE:g} x "
        f"{learner_reward:.3g}^2 = {bound:.2e}{trend}. When each trajectory's rewards are shifted to zero mean, "
        "a constant reward becomes 0 everywhere, and returns no longer depend on how long an episode lasts.",
        "Do not subtract a mean from rewards. If rewards need normalizing, scale them only: clippo's "
        "normalize_rewards divides by the running std of the discounted return and keeps the sign and the "
        "per-step signal (docs/reward-normalization.md).",
    )


# --- building and rendering -------------------------------------------------------------------
def _read_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """eval.json's numbers (size-capped, each value checked as a number), or None."""
    from clippo.core import safety

    path = run_dir / "eval.json"
    try:
        data = json.loads(safety.read_capped_text(path, 1 << 20, "evaluation file"))
        if not isinstance(data, dict) or "mean_return" not in data:
            return None
        evaluation = {"mean_return": float(data["mean_return"])}
        for key in ("std_return", "episodes"):
            if key in data:
                evaluation[key] = float(data[key]) if key == "std_return" else int(data[key])
    except (OSError, ValueError, TypeError):
        return None
    return evaluation


def _action_space(run_dir: Path, env_id: str | None, trust_code: bool = False) -> dict[str, Any] | None:
    """The action space as the checkpoint stores it (checked as data), else from the registered
    env (when Gymnasium may be given its id: ``_usable_env_id``)."""
    try:
        from clippo.training.checkpoint import read_checkpoint, space_from_dict, space_to_dict

        return space_to_dict(space_from_dict(read_checkpoint(run_dir)["action_space"]))
    except Exception:  # no or unreadable checkpoint: ask Gymnasium
        pass
    env_id = _usable_env_id(env_id, trust_code)
    if not env_id:
        return None
    try:
        import gymnasium as gym

        from clippo.training.checkpoint import space_to_dict

        env = gym.make(env_id)
        try:
            return space_to_dict(env.action_space)
        finally:
            env.close()
    except Exception:
        return None


CHECKS: dict[str, Callable[..., HealthWarning | None]] = {
    "kl_early_stop": check_kl_early_stop,
    "clip_fraction": check_clip_fraction,
    "explained_variance": check_explained_variance,
    "entropy_collapse": check_entropy_collapse,
    "reward_signal_erased": check_reward_signal_erased,
}
PASSED = {
    "kl_early_stop": "KL early stop: not on most updates",
    "clip_fraction": f"clip fraction: not persistently above {CLIP_FRACTION_LIMIT:g}",
    "explained_variance": "explained variance: not below 0",
    "entropy_collapse": "entropy: no collapse in the first tenth",
    "reward_signal_erased": "reward signal: not erased",
}


def health_warnings(
    metrics, config: dict[str, Any], action_space: dict[str, Any] | None = None, time_limit: int | None = None
) -> tuple[list[HealthWarning], list[str]]:
    """Run every check: the warnings, and the descriptions of the checks that passed."""
    warnings, passed = [], []
    for name, check in CHECKS.items():
        if name == "entropy_collapse":
            found = check(metrics, config, action_space)
        elif name == "reward_signal_erased":
            found = check(metrics, config, time_limit)
        else:
            found = check(metrics, config)
        if found is None:
            passed.append(PASSED[name])
        else:
            warnings.append(found)
    return warnings, passed


#: the checks run on each policy group's own statistics (a multi-agent run with several groups)
GROUP_CHECKS: dict[str, Callable[..., HealthWarning | None]] = {
    "explained_variance": check_explained_variance,
    "entropy_collapse": check_entropy_collapse,
}


def group_health_warnings(metrics, config: dict[str, Any], groups: list[str]) -> list[HealthWarning]:
    """The checks of ``GROUP_CHECKS`` on each policy group's own statistics (``group/NAME/...``),
    titled with the group: one group's collapse can hide in the run-wide mean."""
    found = []
    for name in groups:
        for check in GROUP_CHECKS.values():
            warning = check(group_metrics(metrics, name), config)
            if warning is not None:
                found.append(
                    HealthWarning(warning.check, f"Policy group {name!r}: {warning.title}", warning.detail, warning.fix)
                )
    return found


def build_report(
    run_dir: str | Path, trust_code: bool = False, env_modules: list[str] | tuple[str, ...] = ()
) -> RunReport:
    """Read a run directory and run the checks (no files written). The run is data: its config is
    validated (``plotting.read_run``), and its env id is given to Gymnasium only when that
    imports no module, or with ``trust_code``; so are the env modules it records (those the user
    names in ``env_modules`` are imported)."""
    require_plotting_packages("clippo report")
    run = read_run(run_dir)
    env_id = run.config.get("env_id")
    _import_run_modules(run.config, trust_code, tuple(env_modules))
    warnings, passed = health_warnings(
        run.metrics, run.config, _action_space(run.run_dir, env_id, trust_code), time_limit_of(env_id, trust_code)
    )
    warnings += group_health_warnings(run.metrics, run.config, policy_groups(run.metrics.columns))
    return RunReport(run.run_dir, run.config, run.metrics, _read_evaluation(run.run_dir), warnings, passed)


def render_figure(report: RunReport) -> bytes:
    """The return (and the periodic evaluations, when there are some) and the five diagnostics
    against env steps, as PNG bytes."""
    run = read_run(report.run_dir)
    figure = draw_groups([RunGroup([run], label=run.env_id)], x="steps", diagnostics=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def _import_run_modules(config: dict[str, Any], trust_code: bool, passed: tuple[str, ...]) -> None:
    """Import the env modules the user named, and those the run records when trusted (the report
    then finds the run's env in Gymnasium's registry); a recorded module is skipped otherwise."""
    from clippo.core import safety
    from clippo.envs.families import import_env_modules

    recorded = config.get("env_modules") or []
    if not isinstance(recorded, list):
        recorded = []
    usable = [m for m in recorded if isinstance(m, str) and (trust_code or m in passed)]
    for module in usable:
        safety.check_text(module, "env_modules entry")
    try:
        import_env_modules([*passed, *(m for m in usable if m not in passed)])
    except ValueError:
        if passed:
            raise  # (a module the user typed: its failure is theirs to see)


def write_report(
    run_dir: str | Path, output: str | Path, trust_code: bool = False, env_modules: list[str] | tuple[str, ...] = ()
) -> RunReport:
    """Write the report as Markdown (.md, figure in a PNG beside it) or self-contained HTML (.html),
    atomically and never through a link (clippo.core.safety); everything taken from the run is escaped."""
    from clippo.core.safety import refuse_symlink, write_file

    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".md", ".markdown", ".html", ".htm"):
        raise ValueError(f"cannot write {str(output)!r}: give a file name ending in .md or .html")
    refuse_symlink(output)
    if suffix not in (".html", ".htm"):
        refuse_symlink(output.with_suffix(".png"))
    report = build_report(run_dir, trust_code, env_modules)
    report.figure_png = render_figure(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    blocks = report_blocks(report)
    if suffix in (".html", ".htm"):
        write_file(output, render_html(blocks, report.figure_png))
    else:
        report.figure_path = output.with_suffix(".png")
        write_file(report.figure_path, report.figure_png)
        write_file(output, render_markdown(blocks, report.figure_path.name))
    return report


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _summary_rows(report: RunReport) -> list[list[str]]:
    m, config = report.metrics, report.config
    steps = int(m["global_step"].iloc[-1])
    wall = float(m["wall_time"].iloc[-1])
    returns = _column(m, "recent_return")
    rows = [
        ["environment", _code(config.get("env_id", "n/a"))],
        ["seed", _fmt(config.get("seed"))],
        [
            "steps",
            f"{steps:,} of {_fmt(config.get('total_steps'))} ({len(m)} updates, "
            f"{int(_column(m, 'episodes').sum()):,} episodes)",
        ],
        ["training wall time", f"{wall:,.1f} s"],
        ["throughput", f"{steps / wall:,.0f} steps/s on average" if wall > 0 else "n/a"],
    ]
    if len(returns):
        best = int(np.nanargmax(m["recent_return"].to_numpy(float)))
        rows.append(["final return", f"{returns[-1]:.2f} (mean of the last 100 training episodes)"])
        rows.append(
            ["best return", f"{m['recent_return'].iloc[best]:.2f} at step {int(m['global_step'].iloc[best]):,}"]
        )
    else:
        rows.append(["final return", "n/a: no episode finished"])
    rows += _periodic_evaluation_rows(report)
    if report.evaluation:
        e = report.evaluation
        rows.append(
            [
                "evaluation",
                f"{e['mean_return']:.2f} ± {e.get('std_return', float('nan')):.2f} over "
                f"{e.get('episodes', '?')} deterministic episodes (eval.json)",
            ]
        )
    return rows


def _periodic_evaluation_rows(report: RunReport) -> list[list[str]]:
    """The last and the best of the periodic evaluations (``--eval-every``), when the run has them."""
    import pandas as pd

    m = report.metrics
    if EVAL_COLUMN not in m.columns:
        return []
    values = pd.to_numeric(m[EVAL_COLUMN], errors="coerce").to_numpy(float)
    evaluated = np.flatnonzero(np.isfinite(values))
    if not len(evaluated):
        return []
    stds = pd.to_numeric(m.get("eval/std_return", pd.Series(np.nan, index=m.index)), errors="coerce").to_numpy(float)
    last, best = evaluated[-1], evaluated[int(np.argmax(values[evaluated]))]
    steps = m["global_step"].to_numpy()
    kept = f", kept as `{BEST_NAME}`" if (report.run_dir / BEST_NAME).is_file() else ""
    episodes = report.config.get("eval_episodes", "?")
    return [
        [
            "last periodic evaluation",
            f"{values[last]:.2f} ± {stds[last]:.2f} at step {int(steps[last]):,} "
            f"({len(evaluated)} evaluations of {episodes} deterministic episodes)",
        ],
        ["best periodic evaluation", f"{values[best]:.2f} at step {int(steps[best]):,}{kept}"],
    ]


def _diagnostic_rows(metrics) -> list[list[str]]:
    rows = []
    for name in (
        "approx_kl",
        "clip_fraction",
        "entropy",
        "explained_variance",
        "value_loss",
        "policy_loss",
        "epochs_run",
    ):
        values = _column(metrics, name)
        if len(values):
            rows.append([f"`{name}`", f"{values[0]:.4g}", f"{np.median(values):.4g}", f"{values[-1]:.4g}"])
    return rows


def _selfplay_rows(metrics) -> list[list[str]]:
    """A self-play run's results against a random player, its pool and its Elo rating, where logged."""
    rows = []
    for name in ("vs_random/win", "vs_random/draw", "vs_random/loss", "selfplay/win_vs_pool", "selfplay/elo"):
        values = _column(metrics, name)
        if len(values):
            rows.append([f"`{name}`", f"{values[0]:.4g}", f"{np.median(values):.4g}", f"{values[-1]:.4g}"])
    return rows


def _config_rows(config: dict[str, Any]) -> list[list[str]]:
    items = [(k, v) for k, v in config.items() if k not in _HEADER_KEYS]
    half = math.ceil(len(items) / 2)
    rows = []
    for i in range(half):
        left = items[i]
        right = items[i + half] if i + half < len(items) else ("", "")
        rows.append(
            [_code(left[0]), _code(left[1]), _code(right[0]) if right[0] else "", _code(right[1]) if right[0] else ""]
        )
    return rows


Block = tuple  # ("h1" | "h2" | "p" | "table" | "warning" | "list" | "figure", ...)


def report_blocks(report: RunReport) -> list[Block]:
    """The report's content, independent of the output format."""
    count = len(report.warnings)
    blocks: list[Block] = [
        ("h1", f"clippo run report: {_plain(report.config.get('env_id', report.run_dir.name))}"),
        ("p", f"Run directory {_code(report.run_dir)}."),
        ("table", ["", ""], _summary_rows(report)),
        ("h2", f"Health: {count} warning{'s' if count != 1 else ''}" if count else "Health: no warnings"),
    ]
    for warning in report.warnings:
        blocks.append(("warning", warning))
    if report.passed:
        blocks.append(("list", [f"OK: {text}" for text in report.passed]))
    blocks.append(("p", "Thresholds: docs/tuning.md (constants at the top of `src/clippo/tools/report.py`)."))
    blocks += [
        ("h2", "Curves"),
        ("figure", "return and diagnostics against environment steps"),
        ("h2", "Diagnostics"),
        ("table", ["metric", "first update", "median", "last update"], _diagnostic_rows(report.metrics)),
    ]
    for name in policy_groups(report.metrics.columns):
        rows = _diagnostic_rows(group_metrics(report.metrics, name))
        if rows:
            blocks += [
                ("h2", f"Policy group {name}"),
                ("table", ["metric", "first update", "median", "last update"], rows),
            ]
    selfplay = _selfplay_rows(report.metrics)
    if selfplay:
        blocks += [("h2", "Self-play"), ("table", ["metric", "first", "median", "last"], selfplay)]
    blocks += [
        ("h2", "Config"),
        ("table", ["hyperparameter", "value", "hyperparameter", "value"], _config_rows(report.config)),
    ]
    return blocks


def _plain(value: Any) -> str:
    """A value from the run's files as one line of text (control characters replaced)."""
    from clippo.core.safety import clean

    return clean(str(value), 200)


def _code(value: Any) -> str:
    """A value from the run's files as an inline code span: one line, no backtick to end it early."""
    return "`" + _plain(value).replace("`", "'") + "`"


_CODE_SPAN = re.compile(r"(`[^`]*`)")


def _md(text: str, table: bool = False) -> str:
    """Text for Markdown with nothing in it read as HTML or as a link: ``& < >`` become entities
    everywhere (code spans included: some viewers render HTML there), ``\\ [ ]`` are escaped
    outside code spans, and in a table cell so is ``|``. (The HTML output uses ``html.escape``.)"""
    parts = []
    for part in _CODE_SPAN.split(html.escape(text, quote=False)):
        if not (part.startswith("`") and part.endswith("`") and len(part) > 1):
            part = re.sub(r"([\\\[\]])", r"\\\1", part)
        parts.append(part.replace("|", "\\|") if table else part)
    return "".join(parts)


def render_markdown(blocks: list[Block], figure_name: str) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {_md(block[1])}", ""]
        elif kind == "h2":
            lines += [f"## {_md(block[1])}", ""]
        elif kind == "p":
            lines += [_md(block[1]), ""]
        elif kind == "list":
            lines += [f"- {_md(item)}" for item in block[1]] + [""]
        elif kind == "warning":
            w: HealthWarning = block[1]
            lines += [
                f"> **Warning ({_md(w.check)}): {_md(w.title)}**",
                ">",
                f"> {_md(w.detail)}",
                ">",
                f"> *Try:* {_md(w.fix)}",
                "",
            ]
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines.append("| " + " | ".join(_md(h, table=True) for h in headers) + " |")
            lines.append("|" + "|".join(" --- " for _ in headers) + "|")
            lines += ["| " + " | ".join(_md(cell, table=True) for cell in row) + " |" for row in rows]
            lines.append("")
        elif kind == "figure":
            lines += [f"![{block[1]}]({figure_name})", ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; } td, th { border: 1px solid #ccc; padding: 0.2rem 0.6rem; }
.warning { border-left: 4px solid #d9822b; background: #fff6ec; padding: 0.5rem 1rem; margin: 0.7rem 0; }
code { background: #f3f3f3; padding: 0 0.2rem; } img { max-width: 100%; }
"""


def render_html(blocks: list[Block], figure_png: bytes | None) -> str:
    """A single HTML file: the figure is embedded as a base64 PNG, nothing else is loaded."""
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "warning":
            w: HealthWarning = block[1]
            body.append(
                f'<div class="warning"><p><strong>Warning ({html.escape(w.check)}): '
                f"{_inline_html(w.title)}</strong></p>"
                f"<p>{_inline_html(w.detail)}</p><p><em>Try:</em> {_inline_html(w.fix)}</p></div>"
            )
        elif kind == "table":
            headers, rows = block[1], block[2]
            head = (
                "" if not any(headers) else "<tr>" + "".join(f"<th>{_inline_html(h)}</th>" for h in headers) + "</tr>"
            )
            body.append(
                "<table>"
                + head
                + "".join("<tr>" + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row) + "</tr>" for row in rows)
                + "</table>"
            )
        elif kind == "figure" and figure_png is not None:
            data = base64.b64encode(figure_png).decode("ascii")
            body.append(f'<img alt="{html.escape(block[1])}" src="data:image/png;base64,{data}">')
    title = html.escape(blocks[0][1]) if blocks and blocks[0][0] == "h1" else "clippo run report"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )

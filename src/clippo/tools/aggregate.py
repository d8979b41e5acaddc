"""Results over seeds: per-seed final returns, a success count, the interquartile mean (IQM) with a
bootstrap confidence interval.

One seed of an RL run says little about a config: a preset that solves seeds 1-3 may fail a seed
nobody tried. Agarwal et al. (2021, "Deep RL at the edge of the statistical precipice", the rliable
library) recommend the interquartile mean over runs, robust to a few outlier seeds yet using half
of them, with a percentile bootstrap confidence interval over runs. This module computes those with
numpy alone, and reads the final deterministic evaluation that ``clippo train`` writes
(``eval.json``) from several run directories of one config (``clippo report RUN_DIR RUN_DIR ...``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clippo.config.ppo_config import BOOKKEEPING_KEYS

# Bookkeeping keys that may differ between runs of "one config" (the seed is the point).
PER_RUN_KEYS = frozenset({"seed", "run_dir", "nonfinite", "vector_env"}) | BOOKKEEPING_KEYS


def iqm(values: Any) -> float:
    """The interquartile mean: the mean of the values left after dropping the lowest and the highest
    ``floor(n / 4)`` (scipy's ``trim_mean(values, 0.25)``, as rliable computes it)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("iqm of no values is undefined")
    cut = int(0.25 * x.size)
    return float(x[cut : x.size - cut].mean())


def bootstrap_ci(
    values: Any, statistic: str = "iqm", confidence: float = 0.95, reps: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` (iqm, mean or median) over the
    values (seeds drawn with replacement ``reps`` times; a fixed ``seed`` makes it reproducible)."""
    if statistic not in ("iqm", "mean", "median"):
        raise ValueError(f"statistic={statistic!r} is invalid: choose iqm, mean or median")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} is invalid: it must lie strictly between 0 and 1")
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("a confidence interval of no values is undefined")
    rng = np.random.default_rng(seed)
    samples = np.sort(x[rng.integers(0, x.size, size=(reps, x.size))], axis=1)
    if statistic == "iqm":
        cut = int(0.25 * x.size)  # every resample has x.size values, so one cut fits all rows
        stats = samples[:, cut : x.size - cut].mean(axis=1)
    elif statistic == "mean":
        stats = samples.mean(axis=1)
    else:
        stats = np.median(samples, axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass
class SeedSummary:
    """Summary of one config's final returns over seeds (``successes`` is None without a threshold)."""

    seeds: list[int]
    returns: list[float]
    threshold: float | None
    successes: int | None
    median: float
    worst: float
    best: float
    mean: float
    iqm: float
    iqm_ci: tuple[float, float]
    confidence: float

    @property
    def failed_seeds(self) -> list[int]:
        if self.threshold is None:
            return []
        return [s for s, r in zip(self.seeds, self.returns, strict=True) if r < self.threshold]


def summarize(
    returns: Any,
    seeds: Any = None,
    threshold: float | None = None,
    confidence: float = 0.95,
    reps: int = 2000,
) -> SeedSummary:
    """Success count (return >= threshold), median, worst, best, mean and IQM with its bootstrap CI."""
    x = [float(r) for r in np.asarray(returns, dtype=np.float64).ravel()]
    if not x:
        raise ValueError("no returns to summarize")
    seed_list = list(range(len(x))) if seeds is None else [int(s) for s in seeds]
    if len(seed_list) != len(x):
        raise ValueError(f"{len(seed_list)} seeds for {len(x)} returns: give one seed per return")
    return SeedSummary(
        seeds=seed_list,
        returns=x,
        threshold=threshold,
        successes=None if threshold is None else sum(r >= threshold for r in x),
        median=float(np.median(x)),
        worst=min(x),
        best=max(x),
        mean=float(np.mean(x)),
        iqm=iqm(x),
        iqm_ci=bootstrap_ci(x, "iqm", confidence, reps),
        confidence=confidence,
    )


@dataclass
class FinalResult:
    """A run directory's final deterministic evaluation (``eval.json``) and its config."""

    run_dir: Path
    seed: int
    mean_return: float
    episodes: int
    config: dict[str, Any]


def read_final(run_dir: str | Path) -> FinalResult:
    """The final evaluation of a finished ``clippo train`` run; a one-line ValueError otherwise.
    The run's files are data (the run may be someone else's): its config is read as
    ``clippo plot`` reads it (``read_run_config``), ``eval.json`` as bounded JSON numbers."""
    from clippo.tools.plotting import read_run_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} does not exist")
    eval_path, config_path = run_dir / "eval.json", run_dir / "config.yaml"
    if not config_path.exists():
        raise ValueError(f"{str(run_dir)!r} is not a clippo run directory (no config.yaml)")
    if not eval_path.exists():
        raise ValueError(
            f"run {str(run_dir)!r} has no final evaluation (eval.json): unfinished, or trained with eval_episodes=0"
        )
    config = read_run_config(run_dir)
    if eval_path.stat().st_size > 1 << 20:  # (a real one is a few hundred bytes)
        raise ValueError(f"{str(eval_path)!r} is larger than 1 MB: it is not a clippo evaluation")
    try:
        evaluation = json.loads(eval_path.read_text())
        return FinalResult(
            run_dir=run_dir,
            seed=int(config.get("seed", 0)),
            mean_return=float(evaluation["mean_return"]),
            episodes=int(evaluation["episodes"]),
            config=config,
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{str(eval_path)!r} is not a clippo evaluation: {type(exc).__name__}") from None


def config_differences(results: list[FinalResult]) -> dict[str, list[Any]]:
    """Hyperparameters (other than the seed and bookkeeping) whose values differ between the runs."""
    keys = sorted(set().union(*(r.config.keys() for r in results)) - PER_RUN_KEYS)
    out = {}
    for key in keys:
        values = [r.config.get(key) for r in results]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


def fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1e5 else f"{value:.4g}"


def seeds_markdown(
    run_dirs: list[str | Path], threshold: float | None = None, confidence: float = 0.95, reps: int = 2000
) -> str:
    """The Markdown summary ``clippo report RUN_DIR RUN_DIR ...`` writes."""
    results = sorted((read_final(d) for d in run_dirs), key=lambda r: r.seed)
    seeds = [r.seed for r in results]
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ValueError(f"seed(s) {', '.join(map(str, dup))} appear in more than one run: give one run per seed")
    summary = summarize([r.mean_return for r in results], seeds, threshold, confidence, reps)
    env = results[0].config.get("env_id", "?")
    lines = [f"# {env}: {len(results)} seeds of one config", ""]
    differences = config_differences(results)
    if differences:
        shown = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in differences.items())
        lines += [f"**Warning: the runs differ in more than the seed** ({shown}).", ""]
    pct = f"{confidence:.0%}"
    lines += ["| statistic | value |", "| --- | --- |"]
    lines.append(f"| seeds | {', '.join(map(str, seeds))} |")
    if threshold is not None:
        failed = ", ".join(map(str, summary.failed_seeds)) or "none"
        lines.append(f"| successes (final return >= {threshold:g}) | {summary.successes} of {len(seeds)} |")
        lines.append(f"| seeds below | {failed} |")
    lines.append(f"| IQM (interquartile mean) | {fmt(summary.iqm)} |")
    lines.append(
        f"| IQM {pct} bootstrap CI ({reps} resamples) | [{fmt(summary.iqm_ci[0])}, {fmt(summary.iqm_ci[1])}] |"
    )
    lines.append(f"| median | {fmt(summary.median)} |")
    lines.append(f"| worst seed | {fmt(summary.worst)} |")
    lines.append(f"| mean | {fmt(summary.mean)} |")
    lines += ["", "| seed | final return (eval.json) | episodes | run |", "| --- | --- | --- | --- |"]
    for r in results:
        mark = "" if threshold is None else (" (success)" if r.mean_return >= threshold else " (below)")
        lines.append(f"| {r.seed} | {fmt(r.mean_return)}{mark} | {r.episodes} | `{r.run_dir}` |")
    lines += [
        "",
        "Final return: the deterministic evaluation `clippo train` runs after its last update. IQM: the mean of the "
        "middle half of the seeds (Agarwal et al. 2021), with a percentile bootstrap interval over seeds.",
    ]
    return "\n".join(lines) + "\n"

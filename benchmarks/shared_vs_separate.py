#!/usr/bin/env python
"""Shared trunk or separate actor and critic: the same clippo recipe trained both ways.

For each env (its built-in clippo preset) and seed, ``clippo train ENV --network shared|separate``
runs as a process of its own, seed-major and alternating the two networks, so that a slow patch of
the machine hurts both alike. Then:

- ``curves.png``: return against env steps and against wall time, mean of the seeds with a 95%
  confidence band of the mean, made by ``clippo.tools.plotting`` (what ``clippo plot`` draws);
- ``diagnostics.png``: the same runs' approx KL, clip fraction, entropy, explained variance and
  value loss;
- ``results.md`` / ``results.json``: per env and network, the final training return (mean of the
  last 100 training episodes), the deterministic evaluation return (``--eval-episodes`` episodes at
  the end of training), and the training wall time, each as mean and 95% CI over the seeds.

Run from the repository root; finished runs (``eval.json`` present) are reused, so an interrupted
benchmark continues where it stopped. ``--no-train`` only redraws and retabulates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    child_env,
    command_line,
    fmt,
    machine_info,
    machine_markdown,
    md_table,
    now,
    write_json,
)

ENVS = ["CartPole-v1", "Acrobot-v1", "Pendulum-v1"]
NETWORKS = ["separate", "shared"]
# --followup: on CartPole-v1, whose raw returns reach 50 (gamma 0.98) and whose critic loss is
# therefore large, the shared trunk again with the critic's pull reduced in two ways.
FOLLOWUPS = {
    "shared-normalize-rewards": ["--network", "shared", "--normalize-rewards"],
    "shared-vf-coef-0.05": ["--network", "shared", "--vf-coef", "0.05"],
}


def clippo_command() -> list[str]:
    """The ``clippo`` console script of this interpreter's environment, else ``python -m clippo``."""
    script = Path(sys.executable).parent / "clippo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clippo"]


def run_dir_of(out: Path, env_id: str, network: str, seed: int) -> Path:
    return out / "runs" / env_id / f"{network}-seed{seed}"


def train(env_id: str, network: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run; ``network`` is a network name or a FOLLOWUPS name."""
    run_dir = run_dir_of(args.out, env_id, network, seed)
    if (run_dir / "eval.json").exists():
        return {"env": env_id, "network": network, "seed": seed, "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again (clippo refuses a used run dir)
    flags = FOLLOWUPS[network] if network in FOLLOWUPS else ["--network", network]
    cmd = [
        *clippo_command(),
        "train",
        env_id,
        *flags,
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--eval-episodes",
        str(args.eval_episodes),
        "--no-tensorboard",
        "--checkpoint-every",
        "0",
    ]
    if args.total_steps is not None:
        cmd += ["--total-steps", str(args.total_steps)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = args.out / "runs" / "logs" / f"{env_id}-{network}-seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        f"$ {' '.join(cmd)}\nexit status {proc.returncode}, {wall:.1f} s\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    print(f"{env_id} {network} seed {seed}: exit {proc.returncode}, {wall:.0f} s", flush=True)
    return {"env": env_id, "network": network, "seed": seed, "reused": False, "exit_status": proc.returncode}


def confidence_interval(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95% confidence interval (Student t)."""
    from clippo.tools.plotting import t_quantile_975

    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    variants = [(e, n) for e in args.envs for n in NETWORKS] + [("CartPole-v1", f) for f in FOLLOWUPS]
    per_run = []
    for (env_id, network), seed in itertools.product(variants, args.seeds):
        run_dir = run_dir_of(args.out, env_id, network, seed)
        eval_path, metrics_path = run_dir / "eval.json", run_dir / "metrics.csv"
        if not eval_path.exists() or not metrics_path.exists():
            continue
        metrics = pd.read_csv(metrics_path)
        evaluation = json.loads(eval_path.read_text())
        per_run.append(
            {
                "env": env_id,
                "network": network,
                "seed": seed,
                "final_train_return": float(metrics["recent_return"].iloc[-1]),
                "eval_return": float(evaluation["mean_return"]),
                "train_wall_s": float(metrics["wall_time"].iloc[-1]),
                "steps": int(metrics["global_step"].iloc[-1]),
                "approx_kl_median": float(metrics["approx_kl"].median()),
                "clip_fraction_median": float(metrics["clip_fraction"].median()),
                "explained_variance_median": float(metrics["explained_variance"].median()),
            }
        )
    summary = []
    for env_id, network in variants:
        runs = [r for r in per_run if r["env"] == env_id and r["network"] == network]
        if not runs:
            continue
        row: dict[str, Any] = {"env": env_id, "network": network, "seeds": len(runs)}
        for key in (
            "final_train_return",
            "eval_return",
            "train_wall_s",
            "approx_kl_median",
            "clip_fraction_median",
            "explained_variance_median",
        ):
            row[key] = confidence_interval([r[key] for r in runs])
        summary.append(row)
    return {"runs": per_run, "summary": summary}


def draw(args: argparse.Namespace) -> list[Path]:
    from clippo.tools.plotting import plot_runs

    run_dirs = [run_dir_of(args.out, e, n, s) for e in args.envs for n in NETWORKS for s in args.seeds]
    run_dirs = [d for d in run_dirs if (d / "eval.json").exists()]
    curves = plot_runs(run_dirs, args.out / "curves.png", x="both")
    diagnostics = plot_runs(run_dirs, args.out / "diagnostics.png", x="steps", diagnostics=True)
    figures = [curves, diagnostics]
    followups = [
        run_dir_of(args.out, "CartPole-v1", n, s) for n in ["separate", "shared", *FOLLOWUPS] for s in args.seeds
    ]
    followups = [d for d in followups if (d / "eval.json").exists()]
    if any(d.name.startswith(tuple(FOLLOWUPS)) for d in followups):
        figures.append(plot_runs(followups, args.out / "cartpole_followup.png", x="steps", diagnostics=True))
    return figures


def _variant(name: str) -> str:
    return f"{name} (`{' '.join(FOLLOWUPS[name])}`)" if name in FOLLOWUPS else name


def _pm(cell: tuple[float | None, float | None], digits: int = 1) -> str:
    mean, half = cell
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if half is not None else f"{mean:.{digits}f}"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = ["# Shared trunk vs separate actor and critic (clippo, built-in presets)", ""]
    lines += machine_markdown(results["meta"])
    lines += [
        f"- seeds {results['seeds']}; per run: `clippo train ENV --network NETWORK --seed S --run-dir DIR "
        f"--eval-episodes {results['eval_episodes']} --no-tensorboard --checkpoint-every 0`"
        + (f" `--total-steps {results['total_steps']}`" if results["total_steps"] else ""),
        "- final training return: `recent_return` of the last update (mean of the last 100 training episodes, "
        "stochastic policy); evaluation return: the deterministic evaluation at the end of training (eval.json, "
        "eval seed S+10000); training wall time: `wall_time` of the last update",
        "- cells: mean over the seeds ± half-width of the 95% confidence interval of that mean (Student t)",
        "- the two long MuJoCo trainings of another task shared this 2-core machine during the runs, so wall times "
        "compare the two networks with each other only",
        "",
        "## Final returns",
        "",
    ]
    rows = []
    for row in results["summary"]:
        rows.append(
            [
                row["env"],
                _variant(row["network"]),
                row["seeds"],
                _pm(row["final_train_return"]),
                _pm(row["eval_return"]),
                _pm(row["train_wall_s"]) + " s",
            ]
        )
    lines += md_table(
        ["env", "network", "seeds", "final training return", "evaluation return", "training wall time"], rows
    )
    lines += ["", "## Diagnostics", "", "Per run, the median over its updates; then mean ± 95% CI over the seeds.", ""]
    rows = [
        [
            row["env"],
            _variant(row["network"]),
            _pm(row["approx_kl_median"], 4),
            _pm(row["clip_fraction_median"], 3),
            _pm(row["explained_variance_median"], 2),
        ]
        for row in results["summary"]
    ]
    lines += md_table(["env", "network", "approx KL", "clip fraction", "explained variance"], rows)
    lines += ["", "## Per run", ""]
    rows = [
        [
            r["env"],
            _variant(r["network"]),
            r["seed"],
            fmt(r["final_train_return"], 1),
            fmt(r["eval_return"], 1),
            fmt(r["train_wall_s"], 1),
        ]
        for r in results["runs"]
    ]
    lines += md_table(["env", "network", "seed", "final training return", "evaluation return", "wall time (s)"], rows)
    lines += [
        "",
        "Curves: `curves.png` (return), `diagnostics.png` (approx KL, clip fraction, entropy, "
        "explained variance, value loss), `cartpole_followup.png` (CartPole-v1 with the follow-up variants, "
        "`--followup`), drawn by `clippo.tools.plotting.plot_runs` from the runs' metrics.csv.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=ENVS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--total-steps", type=int, default=None, help="override every preset (smoke tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "shared_vs_separate")
    parser.add_argument("--no-train", action="store_true", help="only summarize the runs already made")
    parser.add_argument(
        "--followup",
        action="store_true",
        help="also train the CartPole-v1 follow-up variants (FOLLOWUPS) for every seed",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command_line(), "date": now(), "machine": machine_info()}
    previous = args.out / "results.json"
    if args.no_train and previous.exists():  # keep the command and machine of the training runs
        meta = json.loads(previous.read_text())["meta"]
    if not args.no_train:
        for seed in args.seeds:
            for env_id in args.envs:
                for network in NETWORKS:
                    train(env_id, network, seed, args)
        if args.followup:
            for seed in args.seeds:
                for name in FOLLOWUPS:
                    train("CartPole-v1", name, seed, args)
        meta["finished"] = now()
    results = {
        "meta": meta,
        "seeds": args.seeds,
        "eval_episodes": args.eval_episodes,
        "total_steps": args.total_steps,
        **summarize(args),
    }
    write_json(args.out / "results.json", results)
    write_markdown(results, args.out / "results.md")
    for figure in draw(args):
        print(f"wrote {figure}")
    print(f"wrote {args.out / 'results.md'}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Learning quality over many seeds: merge ``bench_sb3.py`` results and compare the libraries.

Single seeds of PPO runs land far apart (a seed that never reaches the goal is common in sparse
tasks), so side-by-side learning claims need many seeds. This reads any number of
``results.json`` files written by ``bench_sb3.py`` (e.g. seed ranges run separately), keeps one
run per (env, library, seed), and writes a Markdown table per env: per library the runs, the mean
and median deterministic evaluation return, and the seeds whose final training return (the last
point of the training curve) stayed at or below ``--stuck-below``; then every seed side by side.

    python benchmarks/seed_summary.py RESULTS.json [RESULTS.json ...] --env Acrobot-v1 --stuck-below -450 \
        --out benchmarks/results/acrobot_seeds_1-24.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, fmt, md_table, mean_std
from bench_sb3 import LIB_NAMES


def load_runs(paths: list[Path], env_id: str) -> dict[str, dict[int, dict[str, Any]]]:
    """``{lib: {seed: run}}`` for ``env_id``; a later file's run of the same seed replaces an earlier one."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            if run["env_id"] == env_id and run.get("ok"):
                runs.setdefault(run["lib"], {})[run["seed"]] = run
    return runs


def final_training_return(run: dict[str, Any]) -> float | None:
    points = [p for p in run.get("curve", []) if p[2] is not None]
    return points[-1][2] if points else None


def eval_mean(run: dict[str, Any]) -> float:
    return mean_std(run["eval_returns"])[0]


def summary_markdown(paths: list[Path], env_id: str, stuck_below: float) -> str:
    runs = load_runs(paths, env_id)
    libs = [lib for lib in ("clippo", "sb3") if lib in runs]
    lines = [f"# {env_id}: learning over seeds, clippo and SB3 with the same hyperparameters", ""]
    lines += [f"- command: `{command_line()}`"]
    lines += [
        f"- merged from: {', '.join(f'`{p}`' for p in paths)} "
        "(each file's own results.md gives its command, date, machine and evaluation episodes)"
    ]
    lines += [
        f"- stuck: the training curve's last point (mean return of the last episodes) at or below {stuck_below:g}",
        "",
    ]
    rows = []
    for lib in libs:
        seeds = sorted(runs[lib])
        evals = [eval_mean(runs[lib][s]) for s in seeds]
        stuck = [s for s in seeds if (final_training_return(runs[lib][s]) or float("-inf")) <= stuck_below]
        rows.append(
            [
                LIB_NAMES[lib],
                len(seeds),
                f"{statistics.mean(evals):.1f}",
                f"{statistics.median(evals):.1f}",
                f"{len(stuck)} ({', '.join(map(str, stuck)) or 'none'})",
            ]
        )
    lines += md_table(["library", "seeds", "eval return, mean", "eval return, median", "stuck seeds"], rows)
    lines += ["", "## Per seed (final training return / deterministic evaluation return)", ""]
    all_seeds = sorted(set().union(*(runs[lib].keys() for lib in libs)))
    per_seed = []
    for seed in all_seeds:
        row: list[Any] = [seed]
        for lib in libs:
            run = runs[lib].get(seed)
            row.append("n/a" if run is None else f"{fmt(final_training_return(run), 1)} / {eval_mean(run):.1f}")
        per_seed.append(row)
    lines += md_table(["seed", *(LIB_NAMES[lib] for lib in libs)], per_seed)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of bench_sb3.py")
    parser.add_argument("--env", required=True, help="the env to summarize")
    parser.add_argument(
        "--stuck-below",
        type=float,
        required=True,
        help="final training return at or below which a seed counts as stuck",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here (default: print it)")
    args = parser.parse_args(argv)
    text = summary_markdown(args.results, args.env, args.stuck_below)
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Whole-process time to solve CartPole-v1: ``clippo train`` against SB3 with the RL-Zoo recipe.

For each seed, alternately:

- ``clippo train CartPole-v1 --seed S --run-dir DIR`` as a process of its own (its built-in
  CartPole recipe, 100k steps, then its 10-episode deterministic evaluation into DIR/eval.json);
- ``python benchmarks/sb3_zoo_cartpole.py --seed S``: SB3 PPO with the same recipe, learn(100_000),
  then evaluate_policy over 10 deterministic episodes.

Each is timed with time.perf_counter() around subprocess.run, so interpreter start-up and imports
count. Solved means a mean evaluation return >= 475. Writes time_to_solve.md and
time_to_solve.json into --out (benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    DEFAULT_OUT,
    child_env,
    command_line,
    fmt,
    fmt_pm,
    machine_info,
    machine_markdown,
    md_table,
    mean_std,
    median,
    now,
    ratio,
    write_json,
)

SOLVED = 475.0
WARM_UP = "import torch, gymnasium, stable_baselines3, clippo.tools.cli, clippo.agent"


def clippo_command() -> list[str]:
    """The ``clippo`` console script of this interpreter's environment, else ``python -m clippo``."""
    script = Path(sys.executable).parent / "clippo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clippo"]


def run_timed(cmd: list[str], log_path: Path, timeout: float | None) -> tuple[float, int | None, str]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        wall = time.perf_counter() - start
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = (
            exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        ) + f"\ntimed out after {timeout} s"
        code = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(
        f"$ {' '.join(cmd)}\nexit status {code}, {wall:.3f} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    )
    tail = "\n".join((stderr or stdout).strip().splitlines()[-3:])
    return wall, code, stdout if code == 0 else tail


def run_clippo(seed: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    run_dir = scratch / f"clippo-seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # clippo train refuses a run dir that already holds a run
    cmd = [*clippo_command(), "train", "CartPole-v1", "--seed", str(seed), "--run-dir", str(run_dir)]
    if args.total_steps is not None:
        cmd += ["--total-steps", str(args.total_steps)]
    if args.eval_episodes is not None:
        cmd += ["--eval-episodes", str(args.eval_episodes)]
    wall, code, output = run_timed(cmd, scratch / "logs" / f"clippo-seed{seed}.log", args.timeout)
    result: dict[str, Any] = {"lib": "clippo", "seed": seed, "command": cmd, "wall_s": wall, "exit_status": code}
    eval_path = run_dir / "eval.json"
    if code != 0 or not eval_path.exists():
        return {**result, "ok": False, "error": output if code != 0 else f"no {eval_path}"}
    evaluation = json.loads(eval_path.read_text())
    result.update(
        ok=True,
        mean_return=evaluation["mean_return"],
        std_return=evaluation["std_return"],
        episodes=evaluation["episodes"],
        train_loop_s=_last_wall_time(run_dir / "metrics.csv"),
    )
    return result


def _last_wall_time(metrics_csv: Path) -> float | None:
    import csv

    try:
        with open(metrics_csv, newline="") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["wall_time"]) if rows else None
    except (OSError, KeyError, ValueError):
        return None


CONFIG_KEYS = [
    "total_steps",
    "num_envs",
    "num_steps",
    "vector_env",
    "num_minibatches",
    "update_epochs",
    "learning_rate",
    "anneal_lr",
    "gamma",
    "gae_lambda",
    "clip_epsilon",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "network",
    "hidden_sizes",
    "activation",
    "normalize_observations",
    "normalize_rewards",
    "torch_threads",
]


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        import yaml

        return yaml.safe_load(path.read_text())
    except Exception:  # a missing file or an unreadable one: report it as unknown
        return None


def _config_summary(config: dict[str, Any] | None) -> str:
    if not config:
        return "n/a"
    return ", ".join(f"`{k}={config[k]}`" for k in CONFIG_KEYS if k in config)


def run_sb3(seed: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH_DIR / "sb3_zoo_cartpole.py"), "--seed", str(seed)]
    if args.total_steps is not None:
        cmd += ["--total-steps", str(args.total_steps)]
    if args.eval_episodes is not None:
        cmd += ["--eval-episodes", str(args.eval_episodes)]
    if args.sb3_linear_clip:
        cmd += ["--linear-clip"]
    wall, code, output = run_timed(cmd, scratch / "logs" / f"sb3-seed{seed}.log", args.timeout)
    result: dict[str, Any] = {"lib": "sb3", "seed": seed, "command": cmd, "wall_s": wall, "exit_status": code}
    if code != 0:
        return {**result, "ok": False, "error": output}
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        return {**result, "ok": False, "error": "no JSON line in the output"}
    evaluation = json.loads(lines[-1])
    result.update(
        ok=True,
        mean_return=evaluation["mean_return"],
        std_return=evaluation["std_return"],
        episodes=evaluation["episodes"],
        train_loop_s=evaluation["learn_s"],
    )
    return result


def write_markdown(results: dict[str, Any], path: Path) -> None:
    s = results["summary"]
    lines = ["# Time to solve CartPole-v1: whole-process `clippo train` vs SB3 (RL-Zoo recipe)", ""]
    lines += machine_markdown(results["meta"])
    lines += [
        f"- seeds {results['seeds']}; solved = deterministic evaluation mean return >= {SOLVED:g}; "
        "order: per seed, clippo then SB3, after one untimed process importing both libraries "
        "(warms the OS file cache)",
        f"- clippo: `{' '.join(results['clippo_command'])} train CartPole-v1 --seed S --run-dir DIR`"
        + (f" plus `{results['overrides']}`" if results["overrides"] else "")
        + " (built-in CartPole-v1 recipe; eval.json from its end-of-training evaluation, eval seed S+10000)",
        f"- SB3: `{sys.executable} benchmarks/sb3_zoo_cartpole.py --seed S`"
        + (" --linear-clip" if results["sb3_linear_clip"] else "")
        + " (make_vec_env 8 envs, 8 x 32 steps, batch 256, 20 epochs, gamma 0.98, lambda 0.8, lr 1e-3 annealed, "
        f"clip {'0.2 annealed' if results['sb3_linear_clip'] else '0.2'}, learn({results['sb3_total_steps']:_}), "
        "evaluate_policy deterministic, eval seed S+10000)",
        f"- clippo's resolved config (config.yaml of the first run): {_config_summary(results.get('clippo_config'))}",
        "- wall time: `time.perf_counter()` around `subprocess.run`, interpreter start-up and imports included",
        "",
        "## Summary",
        "",
    ]
    lines += md_table(
        ["", "clippo", "SB3"],
        [
            [
                "median whole-process wall time",
                fmt(s["clippo"]["median_wall_s"], 2, " s"),
                fmt(s["sb3"]["median_wall_s"], 2, " s"),
            ],
            [
                "median training loop (clippo metrics.csv / SB3 learn())",
                fmt(s["clippo"]["median_train_loop_s"], 2, " s"),
                fmt(s["sb3"]["median_train_loop_s"], 2, " s"),
            ],
            [
                "eval return (mean ± sd over seeds)",
                fmt_pm(s["clippo"]["eval_mean"], s["clippo"]["eval_std"]),
                fmt_pm(s["sb3"]["eval_mean"], s["sb3"]["eval_std"]),
            ],
            ["solved", f"{s['clippo']['solved']}/{s['clippo']['runs']}", f"{s['sb3']['solved']}/{s['sb3']['runs']}"],
        ],
    )
    lines += [
        "",
        f"Ratio of median wall times clippo / SB3: **{fmt(s['ratio_clippo_over_sb3'], 3)}** "
        "(below 1: clippo finishes sooner).",
        "",
        "## Per seed",
        "",
    ]
    rows = []
    for seed in results["seeds"]:
        c = next((r for r in results["runs"] if r["seed"] == seed and r["lib"] == "clippo"), None)
        b = next((r for r in results["runs"] if r["seed"] == seed and r["lib"] == "sb3"), None)
        rows.append(
            [
                seed,
                _cell(c, "wall_s"),
                _eval(c),
                _solved(c),
                _cell(b, "wall_s"),
                _eval(b),
                _solved(b),
                fmt(ratio(c["wall_s"] if c and c["ok"] else None, b["wall_s"] if b and b["ok"] else None), 3),
            ]
        )
    lines += md_table(
        [
            "seed",
            "clippo wall",
            "clippo eval return",
            "clippo solved",
            "SB3 wall",
            "SB3 eval return",
            "SB3 solved",
            "clippo / SB3",
        ],
        rows,
    )
    failures = [r for r in results["runs"] if not r["ok"]]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {r['lib']} seed {r['seed']}: {r['error']}" for r in failures]
    path.write_text("\n".join(lines) + "\n")


def _cell(run: dict[str, Any] | None, key: str) -> str:
    if run is None:
        return "n/a"
    return fmt(run[key], 2, " s") if run["ok"] else "failed"


def _eval(run: dict[str, Any] | None) -> str:
    if run is None or not run["ok"]:
        return "n/a"
    return f"{run['mean_return']:.1f} ± {run['std_return']:.1f}"


def _solved(run: dict[str, Any] | None) -> str:
    if run is None or not run["ok"]:
        return "n/a"
    return "yes" if run["solved"] else "no"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for lib in ("clippo", "sb3"):
        ok = [r for r in runs if r["lib"] == lib and r["ok"]]
        eval_mean, eval_std = mean_std(r["mean_return"] for r in ok)
        summary[lib] = {
            "runs": len(ok),
            "failed": len([r for r in runs if r["lib"] == lib and not r["ok"]]),
            "median_wall_s": median(r["wall_s"] for r in ok),
            "median_train_loop_s": median(r.get("train_loop_s") for r in ok),
            "eval_mean": eval_mean,
            "eval_std": eval_std,
            "solved": sum(r["solved"] for r in ok),
        }
    summary["ratio_clippo_over_sb3"] = ratio(summary["clippo"]["median_wall_s"], summary["sb3"]["median_wall_s"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--total-steps", type=int, default=None, help="override both runs' 100k steps (smoke tests only)"
    )
    parser.add_argument("--eval-episodes", type=int, default=None, help="override both runs' 10 evaluation episodes")
    parser.add_argument(
        "--sb3-linear-clip",
        action="store_true",
        help="give SB3 the Zoo's exact clip schedule (linear from 0.2) instead of clippo's constant 0.2",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "runs" / "time_to_solve"  # git-ignored (runs/)
    overrides = " ".join(
        ([f"--total-steps {args.total_steps}"] if args.total_steps is not None else [])
        + ([f"--eval-episodes {args.eval_episodes}"] if args.eval_episodes is not None else [])
    )
    results: dict[str, Any] = {
        "meta": {"command": command_line(), "date": now(), "machine": machine_info()},
        "seeds": args.seeds,
        "solved_threshold": SOLVED,
        "clippo_command": clippo_command(),
        "overrides": overrides,
        "sb3_linear_clip": args.sb3_linear_clip,
        "sb3_total_steps": args.total_steps if args.total_steps is not None else 100_000,
        "clippo_config": None,
        "runs": [],
        "summary": {},
    }

    def save() -> None:
        results["summary"] = summarize(results["runs"])
        write_json(out / "time_to_solve.json", results)
        write_markdown(results, out / "time_to_solve.md")

    # One untimed import of both libraries first, so that neither library's first timed run
    # pays for reading its files from disk into the OS cache.
    subprocess.run([sys.executable, "-c", WARM_UP], env=child_env(), check=True, capture_output=True)
    for seed in args.seeds:
        for runner in (run_clippo, run_sb3):
            r = runner(seed, args, scratch)
            if r["ok"]:
                r["solved"] = r["mean_return"] >= SOLVED
                print(
                    f"{r['lib']:6} seed {seed}: {r['wall_s']:.2f} s whole process, eval {r['mean_return']:.1f} "
                    f"({'solved' if r['solved'] else 'not solved'})",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                print(f"{r['lib']:6} seed {seed}: FAILED {r['error']}", file=sys.stderr, flush=True)
            results["runs"].append(r)
            if r["lib"] == "clippo" and results["clippo_config"] is None:
                results["clippo_config"] = _read_config(scratch / f"clippo-seed{seed}" / "config.yaml")
            save()
    results["meta"]["finished"] = now()
    save()
    print(f"wrote {out / 'time_to_solve.md'}, {out / 'time_to_solve.json'}", file=sys.stderr)
    return 0 if all(r["ok"] for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""How close ``clippo train ENV --seed S`` comes to the env alone: whole-process times, alternating.

For each seed, two processes, one after the other (the order alternating), each pinned to one
core and single-threaded:

- env only: ``import gymnasium``, ``gymnasium.make(ENV)``, then ``--steps`` steps with uniformly
  random actions (drawn up front, in blocks), resetting whenever an episode ends;
- clippo: ``clippo train ENV --seed S --total-steps STEPS`` with the env's own preset, a fresh run
  directory and everything else as a user gets it (metrics, TensorBoard, checkpoints and the
  final evaluation included).

Reported: both wall and CPU times, their ratio (clippo / env only; issue #36 asks at most 1.5 for
Hopper-v5), clippo's rollout / update split from its metrics.csv and its final evaluation.

    python benchmarks/env_overhead.py --env Hopper-v5 --steps 204800 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    REPO_SRC,
    RESULT_PREFIX,
    child_env,
    command_line,
    failure,
    fmt,
    git_commit,
    machine_info,
    machine_markdown,
    md_table,
    now,
    parse_child_output,
    pinned,
    pinning_core,
    time_clippo_train,
    timed,
    write_json,
)

# Run with argv [env_id, steps, seed]; prints one BENCH_RESULT line.
ENV_ONLY_DRIVER = """
import json, sys, time
start = time.perf_counter()
import gymnasium as gym
import numpy as np
env_id, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = gym.make(env_id)
env.reset(seed=seed)
rng = np.random.default_rng(seed)
space = env.action_space
episodes, done = 0, 0
while done < steps:
    block = min(4096, steps - done)
    if isinstance(space, gym.spaces.Box):
        actions = rng.uniform(space.low, space.high, size=(block, *space.shape)).astype(space.dtype)
    else:
        actions = [space.sample() for _ in range(block)]
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
            episodes += 1
    done += block
print("BENCH_RESULT " + json.dumps({"episodes": episodes, "inner_s": time.perf_counter() - start}))
"""


def run_env_only(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    command = [sys.executable, "-c", ENV_ONLY_DRIVER, args.env, str(args.steps), str(seed)]
    proc, wall, cpu = timed(pinned(command, args.core), child_env())
    result = parse_child_output(proc.stdout)
    if proc.returncode != 0 or result is None:
        return {"side": "env only", "seed": seed, "ok": False, "error": failure(proc)}
    return {"side": "env only", "seed": seed, "ok": True, "wall_s": wall, "cpu_s": cpu, **result}


def run_clippo(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    train_args = [args.env, "--seed", str(seed), "--total-steps", str(args.steps), "--no-progress"]
    return {"side": "clippo", "seed": seed, **time_clippo_train(train_args, args.core)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per side and per-seed ratios (clippo / env only), wall and CPU."""
    ok = [run for run in runs if run["ok"]]
    summary: dict[str, Any] = {}
    for side in ("env only", "clippo"):
        mine = [run for run in ok if run["side"] == side]
        summary[side] = {
            key: statistics.median(run[key] for run in mine) if mine else None for key in ("wall_s", "cpu_s")
        }
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    for seed in sorted({run["seed"] for run in ok}):
        pair = {run["side"]: run for run in ok if run["seed"] == seed}
        if len(pair) == 2:
            ratios["wall"].append(pair["clippo"]["wall_s"] / pair["env only"]["wall_s"])
            ratios["cpu"].append(pair["clippo"]["cpu_s"] / pair["env only"]["cpu_s"])
    summary["ratios"] = ratios
    summary["median_ratio_wall"] = statistics.median(ratios["wall"]) if ratios["wall"] else None
    summary["median_ratio_cpu"] = statistics.median(ratios["cpu"]) if ratios["cpu"] else None
    return summary


def markdown(meta: dict[str, Any], runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        f"# `clippo train {meta['env']}` against the env alone: whole-process time",
        "",
        f"Command: `{meta['command']}` ({meta['date']}). {meta['steps']:,} steps per process, each pinned to core "
        f"{meta['core']}, one thread. Env only: random actions, resets included; clippo: its preset, with "
        "metrics, TensorBoard, checkpoints and the final evaluation.",
        "",
    ]
    rows = []
    for run in runs:
        if not run["ok"]:
            rows.append([run["side"], run["seed"], "failed", run["error"], "", ""])
            continue
        split = f"{fmt(run['rollout_s'])} / {fmt(run['update_s'])}" if "rollout_s" in run else ""
        ret = fmt(run["eval_return"], 1) if "eval_return" in run else f"{run['episodes']:,} episodes"
        rows.append([run["side"], run["seed"], fmt(run["wall_s"]), fmt(run["cpu_s"]), split, ret])
    lines += md_table(["side", "seed", "wall s", "CPU s", "rollout / update s (clippo's metrics)", "return"], rows)
    ratios = summary["ratios"]
    lines += [
        "",
        f"clippo / env only, per seed: wall {', '.join(fmt(r) for r in ratios['wall'])} (median "
        f"{fmt(summary['median_ratio_wall'])}x); CPU {', '.join(fmt(r) for r in ratios['cpu'])} (median "
        f"{fmt(summary['median_ratio_cpu'])}x).",
        "",
        f"- clippo: this checkout's src/ (commit {meta['clippo_commit']})",
        *machine_markdown(meta),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--steps", type=int, default=204_800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--core", default="0", help="taskset core list for every child ('none': no pinning)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/env_overhead_<env>")
    args = parser.parse_args(argv)
    args.core = pinning_core(args.core)
    out = args.out or DEFAULT_OUT / f"env_overhead_{args.env.replace('/', '-')}"

    started = now()
    runs: list[dict[str, Any]] = []
    for index, seed in enumerate(args.seeds):
        order = [run_env_only, run_clippo] if index % 2 == 0 else [run_clippo, run_env_only]
        for run in order:
            result = run(args, seed)
            runs.append(result)
            print(json.dumps(result), flush=True)
    summary = summarize(runs)
    meta = {
        "machine": machine_info(),
        "command": command_line(),
        "date": started,
        "finished": now(),
        "env": args.env,
        "steps": args.steps,
        "core": args.core,
        "clippo_commit": git_commit(REPO_SRC.parent),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"meta": meta, "runs": runs, "summary": summary})
    (out / "results.md").write_text(markdown(meta, runs, summary))
    print(RESULT_PREFIX + json.dumps(summary))
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

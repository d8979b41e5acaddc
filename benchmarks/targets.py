#!/usr/bin/env python
"""The speed targets of issue #3, measured in one command, with a met / not met table.

    python benchmarks/targets.py

1. Same hyperparameters (RL-Zoo CartPole recipe, 100k steps): clippo's ``learn()`` at least 3x
   faster than SB3's (median over ``--seeds``), and both solve CartPole on every seed
   (``bench_sb3.py``, which also draws the return-against-time plot).
2. Time to solve: ``clippo train CartPole-v1 --seed S`` (built-in recipe) evaluates at 475 or more
   in at most a fifth of the SB3-Zoo process's time, whole processes timed, on every one of
   ``--solve-seeds`` (``time_to_solve.py``).
3. Throughput at scale: with 64 CartPole envs, clippo's rollout collection (actions,
   log-probabilities, values, GAE) at half the env-only step rate or more. Measured
   ``--limit-repeats`` times, each a fresh process alternating env-only blocks and rollouts
   (the first one inside step 1); the target is judged on the median, the spread reported.

Everything runs one process at a time, one thread each; run it on an otherwise idle machine.
Writes ``targets.md`` and ``targets.json`` into ``--out`` beside the two scripts' own reports
(``results.md``, ``time_to_solve.md``, ``limits_repeat_K/``). Exits 1 when a run failed or a
target is not met.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sb3
import purejaxrl_cartpole
import time_to_solve
from _common import (
    DEFAULT_OUT,
    command_line,
    fmt,
    machine_info,
    machine_markdown,
    md_table,
    mean_std,
    median,
    now,
    write_json,
)

ENV_ID = "CartPole-v1"
SPEEDUP = 3.0  # target 1: SB3 time / clippo time, at least
SOLVE_RATIO = 0.2  # target 2: clippo whole-process time / SB3's, at most, per seed
ROLLOUT_FRACTION = 0.5  # target 3: rollout rate / env-only rate, at least
SOLVED = time_to_solve.SOLVED
VERDICT = {True: "yes", False: "**no**", None: "not measured"}


def throughput_fraction(results: dict[str, Any], num_envs: int) -> float | None:
    """clippo's rollout / env-only rate in a bench_sb3 results.json, for ``num_envs`` envs."""
    for lim in results["limits"]:
        if lim["lib"] == "clippo" and lim["env_id"] == ENV_ID and lim["num_envs"] == num_envs and lim.get("ok"):
            return lim["rollout_sps"] / lim["env_sps"]
    return None


def judge(
    bench: dict[str, Any], solve: dict[str, Any], fractions: list[float | None], num_envs: int
) -> list[dict[str, Any]]:
    """One row per target: what it asks, what was measured, and whether it is met."""
    summary = bench["summary"].get(ENV_ID, {})
    speedup = summary.get("speedup_sb3_over_clippo")
    runs = [r for r in bench["runs"] if r["env_id"] == ENV_ID]
    evals = {
        lib: [mean_std(r["eval_returns"])[0] for r in runs if r["lib"] == lib and r["ok"]] for lib in ("clippo", "sb3")
    }
    seeds = len(bench["seeds"])
    solved = {lib: sum(e >= SOLVED for e in evals[lib]) for lib in evals}
    t1_met = speedup is not None and speedup >= SPEEDUP and all(solved[lib] == seeds for lib in solved)

    by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for r in solve["runs"]:
        by_seed.setdefault(r["seed"], {})[r["lib"]] = r
    per_seed = []
    for seed, pair in sorted(by_seed.items()):
        c, b = pair.get("clippo"), pair.get("sb3")
        ok = bool(c and b and c["ok"] and b["ok"])
        per_seed.append(
            {
                "seed": seed,
                "ratio": c["wall_s"] / b["wall_s"] if ok else None,
                "clippo_solved": bool(c and c["ok"] and c["solved"]),
            }
        )
    t2_met = bool(per_seed) and all(
        p["ratio"] is not None and p["ratio"] <= SOLVE_RATIO and p["clippo_solved"] for p in per_seed
    )
    t2_ratios = [p["ratio"] for p in per_seed if p["ratio"] is not None]

    measured = [f for f in fractions if f is not None]
    t3_median = median(measured)
    t3_met = t3_median is not None and len(measured) == len(fractions) and t3_median >= ROLLOUT_FRACTION
    return [
        {
            "target": f"1. same hyperparameters, {ENV_ID} 100k steps: "
            f"clippo >= {SPEEDUP:g}x faster than SB3, both solving it",
            "measured": f"{fmt(speedup, 2, 'x')} (median over {seeds} seeds); "
            f"eval >= {SOLVED:g}: clippo {solved['clippo']}/{seeds}, SB3 {solved['sb3']}/{seeds}",
            "met": t1_met,
            "values": {"speedup": speedup, "solved": solved, "seeds": seeds},
        },
        {
            "target": f"2. time to solve: `clippo train {ENV_ID} --seed S` <= {SOLVE_RATIO:g} "
            "of SB3-Zoo's whole-process time, eval >= 475, on every seed",
            "measured": f"median {fmt(solve['summary'].get('ratio_clippo_over_sb3'), 3)}, worst seed "
            f"{fmt(max(t2_ratios) if t2_ratios else None, 3)}; "
            f"clippo solved {sum(p['clippo_solved'] for p in per_seed)}/{len(per_seed)}",
            "met": t2_met,
            "values": {"per_seed": per_seed, "median_ratio": solve["summary"].get("ratio_clippo_over_sb3")},
        },
        {
            "target": f"3. {num_envs} {ENV_ID} envs: "
            f"rollout collection >= {ROLLOUT_FRACTION:g} of the env-only step rate",
            "measured": f"median {fmt(t3_median, 2)} over {len(measured)} measurements "
            f"({', '.join(fmt(f, 2) for f in measured)})",
            "met": t3_met,
            "values": {"fractions": fractions, "median": t3_median},
        },
    ]


def judge_purejaxrl(result: dict[str, Any] | None) -> dict[str, Any]:
    """Target 4's row (``met`` None when it was not measured)."""
    target = (
        f"4. PureJaxRL's {ENV_ID} recipe, whole processes on one core: clippo's median time <= PureJaxRL's, "
        f"clippo's eval >= {SOLVED:g} on every seed"
    )
    if result is None:
        how = "give --purejaxrl PATH --jax-python PYTHON (see purejaxrl_cartpole.py)"
        return {"target": target, "measured": f"not measured: {how}", "met": None, "values": {}}
    summary = result["summary"]
    clippo, peer = summary["clippo"], summary["purejaxrl"]
    seeds = len({run["seed"] for run in result["runs"]})
    evals = [run["eval_return"] for run in result["runs"] if run["library"] == "clippo" and run["ok"]]
    solved = sum(e >= SOLVED for e in evals)
    met = (
        clippo.get("wall_s") is not None
        and peer.get("wall_s") is not None
        and clippo["wall_s"] <= peer["wall_s"]
        and len(evals) == seeds
        and solved == seeds
    )
    return {
        "target": target,
        "measured": f"median wall: clippo {fmt(clippo.get('wall_s'))} s, PureJaxRL {fmt(peer.get('wall_s'))} s "
        f"({fmt(summary.get('speedup_wall'), 2, 'x')} PureJaxRL / clippo); clippo eval >= {SOLVED:g}: {solved}/{seeds}",
        "met": met,
        "values": {"summary": summary},
    }


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = ["# Speed targets (issues #3 and #36): clippo against Stable-Baselines3 and PureJaxRL", ""]
    lines += machine_markdown(report["meta"])
    lines += ["", md_row_note(report), ""]
    lines += md_table(
        ["target", "measured", "met"],
        [[t["target"], t["measured"], VERDICT[t["met"]]] for t in report["targets"]],
    )
    lines += [
        "",
        "Details: `results.md` (target 1, and target 3's first measurement, with the peer's limits), "
        "`time_to_solve.md` (target 2), `limits_repeat_K/results.md` (target 3's further measurements), "
        "`purejaxrl_cartpole/results.md` (target 4).",
    ]
    path.write_text("\n".join(lines) + "\n")


def md_row_note(report: dict[str, Any]) -> str:
    a = report["args"]
    return (
        f"Seeds: target 1 {a['seeds']}, target 2 {a['solve_seeds']}; target 3 measured {a['limit_repeats']} times "
        f"with {a['throughput_envs']} envs x {a['throughput_steps']} steps. "
        "Every run is a process of its own, one thread."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="training seeds of target 1")
    parser.add_argument("--solve-seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="seeds of target 2")
    parser.add_argument("--limit-repeats", type=int, default=3, help="measurements of target 3 (at least 1)")
    parser.add_argument("--throughput-envs", type=int, default=64)
    parser.add_argument("--throughput-steps", type=int, default=128)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--total-steps", type=int, default=None, help="override the training runs' steps (smoke tests only)"
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=None, help="override the evaluation episodes (smoke tests only)"
    )
    parser.add_argument("--purejaxrl", type=Path, default=None, help="a PureJaxRL checkout (target 4)")
    parser.add_argument("--jax-python", default=purejaxrl_cartpole.DEFAULT_JAX_PYTHON, help="its Python (target 4)")
    args = parser.parse_args(argv)
    if args.limit_repeats < 1:
        parser.error(f"--limit-repeats {args.limit_repeats} is invalid: it must be at least 1")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command_line(), "date": now(), "machine": machine_info()}

    shrink = [] if args.total_steps is None else ["--total-steps", str(args.total_steps)]
    shrink += [] if args.eval_episodes is None else ["--eval-episodes", str(args.eval_episodes)]
    throughput = ["--throughput-envs", str(args.throughput_envs), "--throughput-steps", str(args.throughput_steps)]
    status = bench_sb3.main(
        ["--envs", ENV_ID, "--seeds", *map(str, args.seeds), *throughput, *shrink, "--out", str(out)]
    )
    bench = json.loads((out / "results.json").read_text())
    fractions = [throughput_fraction(bench, args.throughput_envs)]
    for k in range(2, args.limit_repeats + 1):
        repeat_out = out / f"limits_repeat_{k}"
        status |= bench_sb3.main(
            ["--envs", ENV_ID, "--no-train", "--libs", "clippo", *throughput, "--out", str(repeat_out)]
        )
        fractions.append(
            throughput_fraction(json.loads((repeat_out / "results.json").read_text()), args.throughput_envs)
        )
    status |= time_to_solve.main(["--seeds", *map(str, args.solve_seeds), *shrink, "--out", str(out)])
    solve = json.loads((out / "time_to_solve.json").read_text())

    peer = None
    if args.purejaxrl is not None:
        peer_out = out / "purejaxrl_cartpole"
        status |= purejaxrl_cartpole.main(
            ["--purejaxrl", str(args.purejaxrl), "--jax-python", args.jax_python, "--out", str(peer_out)]
        )
        peer = json.loads((peer_out / "results.json").read_text())

    meta["finished"] = now()
    report = {
        "meta": meta,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": [*judge(bench, solve, fractions, args.throughput_envs), judge_purejaxrl(peer)],
    }
    write_json(out / "targets.json", report)
    write_markdown(report, out / "targets.md")
    for t in report["targets"]:
        print(f"{VERDICT[t['met']].strip('*'):12} {t['target']}: {t['measured']}", file=sys.stderr)
    print(f"wrote {out / 'targets.md'}, {out / 'targets.json'}", file=sys.stderr)
    return status or int(any(t["met"] is False for t in report["targets"]))  # 1 when a target is missed


if __name__ == "__main__":
    sys.exit(main())

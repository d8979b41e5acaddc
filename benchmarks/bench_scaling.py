"""Steps/second against process count for clippo's distributed training (torchrun, gloo).

For each process count N, runs `clippo train ENV --nproc N` (N=1 runs without torchrun) with the
same per-process settings, reads the run's metrics.csv and eval.json, and reports steps/second
over all processes (training loop only), the speed-up over one process, and the final
deterministic evaluation return.

    python benchmarks/bench_scaling.py --env Hopper-v5 --nprocs 1 2 --total-steps 200000 --seeds 1 2
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PHASES = ("rollout_time", "exchange_time", "update_time")


def run(
    env_id: str, nproc: int, seed: int, total_steps: int, extra: list[str], scratch: Path, total_envs: int | None = None
) -> dict:
    run_dir = scratch / f"{env_id}-n{nproc}-s{seed}"
    command = [
        sys.executable,
        "-m",
        "clippo",
        "train",
        env_id,
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--total-steps",
        str(total_steps),
        "--eval-episodes",
        "10",
        "--no-tensorboard",
        *extra,
    ]
    if total_envs is not None:
        command += ["--num-envs", str(total_envs // nproc)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    with open(run_dir / "metrics.csv", newline="") as f:
        metrics = list(csv.DictReader(f))
    last = metrics[-1]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    return {
        "nproc": nproc,
        "seed": seed,
        "steps": int(last["global_step"]),
        "train_s": float(last["wall_time"]),
        "sps": int(last["global_step"]) / float(last["wall_time"]),
        "eval_return": evaluation["mean_return"],
        # mean return of the last 100 training episodes (over all processes): less noisy than a
        # 10-episode deterministic evaluation while the policy is still learning
        "train_return": float(last["recent_return"]),
        # rank 0's seconds per update in each phase (medians over updates)
        **{name: statistics.median(float(m[name]) for m in metrics) for name in PHASES},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--total-steps", type=int, default=200_000)
    parser.add_argument("--out", default="benchmarks/results/scaling_hopper.md")
    parser.add_argument(
        "--total-envs",
        type=int,
        default=None,
        help="split this many envs over the processes (N processes run TOTAL/N each), so every "
        "process count takes the same updates on batches of the same size; by default "
        "every process runs the preset's envs",
    )
    parser.add_argument("extra", nargs="*", help="extra `clippo train` flags (after --)")
    args = parser.parse_args()

    if args.total_envs is not None:
        for n in args.nprocs:
            if args.total_envs % n:
                parser.error(f"--total-envs {args.total_envs} is not divisible by the process count {n}")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for nproc in args.nprocs:
                row = run(args.env, nproc, seed, args.total_steps, args.extra, Path(scratch), args.total_envs)
                rows.append(row)
                print(json.dumps(row), flush=True)

    base = statistics.median(r["sps"] for r in rows if r["nproc"] == args.nprocs[0])
    if args.total_envs is None:
        layout = (
            "per-process settings unchanged, so N processes step N times the envs and make 1/N as many "
            "updates of N times the data"
        )
    else:
        layout = (
            f"{args.total_envs} envs split over the processes (`--num-envs {args.total_envs}/N`), so every "
            "process count makes the same number of updates on batches of the same size"
        )
    lines = [
        f"# Scaling: {args.env}, steps/second against process count",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()} cores ({platform.machine()}), "
        "one torch thread per process, gloo backend",
        f"- each run: `clippo train {' '.join([args.env, '--total-steps', str(args.total_steps), *args.extra])}` "
        f"(the env's built-in preset or the default one, with these flags; {layout}), deterministic evaluation "
        "over 10 episodes",
        "",
        "| processes | seed | steps | training time (s) | steps/s (all processes) | speed-up | final eval return | "
        "last 100 training episodes | rollout s/update | exchange s/update | update s/update |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['nproc']} | {r['seed']} | {r['steps']} | {r['train_s']:.1f} | {r['sps']:.0f} | "
            f"{r['sps'] / base:.2f}x | {r['eval_return']:.1f} | {r['train_return']:.1f} | "
            + " | ".join(f"{r[name]:.3f}" for name in PHASES)
            + " |"
        )
    lines.append("")
    for n in args.nprocs:
        sps = statistics.median(r["sps"] for r in rows if r["nproc"] == n)
        ret = statistics.mean(r["eval_return"] for r in rows if r["nproc"] == n)
        train = statistics.mean(r["train_return"] for r in rows if r["nproc"] == n)
        lines.append(
            f"- {n} process(es): median {sps:.0f} steps/s ({sps / base:.2f}x), mean final eval return {ret:.1f}, "
            f"mean return of the last 100 training episodes {train:.1f}"
        )
    lines += [
        "",
        "Phase times are rank 0's medians over updates (`metrics.csv`): the rollout (collection, critic values, "
        "advantages), the after-rollout exchange between ranks (waiting for the slowest rank included), and the "
        "minibatch epochs (gradient all-reduces included).",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

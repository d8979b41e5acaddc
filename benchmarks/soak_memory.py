"""Soak test: a long CartPole run must hold flat memory.

Trains CartPole-v1 for --total-steps (default 1M) in this process with a run directory (so the
CSV, TensorBoard and checkpoint paths are exercised too), samples the resident set size after
every update, and compares the RSS at the end of warm-up (--warmup fraction of the run) with the
RSS at the end. Passes when the growth is below --max-growth (default 5%).

    python benchmarks/soak_memory.py --total-steps 1000000 --out benchmarks/results/soak.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total-steps", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the run treated as warm-up")
    parser.add_argument("--max-growth", type=float, default=0.05)
    parser.add_argument("--out", default=None, help="Markdown file for the result")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from clippo import PPO
    from clippo.training.update import Learner

    samples: list[tuple[int, float]] = []
    original = Learner.update_policy

    def sampled_update(self, batch, plan=None):
        stats = original(self, batch, plan)
        samples.append((agent.global_step, rss_mib()))  # (agent: the one trained below)
        return stats

    Learner.update_policy = sampled_update
    with tempfile.TemporaryDirectory() as run_dir:
        agent = PPO("CartPole-v1", seed=0, run_dir=run_dir, checkpoint_every=50)
        start = time.perf_counter()
        agent.learn(total_steps=args.total_steps, progress=False)
        elapsed = time.perf_counter() - start
        agent.close()

    warm_index = max(int(len(samples) * args.warmup) - 1, 0)
    warm_step, warm_rss = samples[warm_index]
    end_step, end_rss = samples[-1]
    peak_rss = max(r for _, r in samples[warm_index:])
    growth = (end_rss - warm_rss) / warm_rss
    passed = growth < args.max_growth
    lines = [
        "# Soak: memory over a long CartPole-v1 run",
        "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; machine: {os.cpu_count()} cores, "
        f"{platform.machine()}, torch {torch.__version__}",
        f"- steps: {end_step}, updates: {len(samples)}, training time {elapsed:.1f} s",
        f"- RSS after warm-up (step {warm_step}): {warm_rss:.1f} MiB; at the end: {end_rss:.1f} MiB; "
        f"peak after warm-up: {peak_rss:.1f} MiB",
        f"- growth: {100 * growth:+.2f}% (limit {100 * args.max_growth:.0f}%): **{'PASS' if passed else 'FAIL'}**",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Does the clip keep PPO inside a trust region? CartPole-v1 with more and more epochs per update.

clippo's built-in CartPole-v1 recipe (8 epochs per update) against the same recipe with 40 epochs,
with and without the KL early stop (``--target-kl 0.02``). Each run is ``clippo train`` in a process
of its own. For each run, from its metrics.csv: the median over the updates of the approximate KL
between the rollout policy and the updated policy (measured on the update's last minibatch), its
95th percentile, the median clip fraction, the share of updates the KL stop ended, the final
training return and the deterministic evaluation return.

Writes ``results.md``, ``results.json`` and ``diagnostics.png`` (``clippo.tools.plotting``) into
``--out`` (default ``benchmarks/results/trust_region/``); run dirs go to ``--out/runs/``
(git-ignored). Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_OUT, child_env, command_line, fmt, machine_info, machine_markdown, md_table, now, write_json

VARIANTS = {
    "8 epochs (preset)": [],
    "40 epochs": ["--update-epochs", "40"],
    "40 epochs, target_kl 0.02": ["--update-epochs", "40", "--target-kl", "0.02"],
}


def clippo_command() -> list[str]:
    script = Path(sys.executable).parent / "clippo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clippo"]


def slug(variant: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in variant).strip("-").replace("--", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "trust_region")
    args = parser.parse_args()
    import numpy as np
    import pandas as pd

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command_line(), "date": now(), "machine": machine_info()}
    rows, run_dirs = [], []
    for seed in args.seeds:
        for variant, flags in VARIANTS.items():
            run_dir = args.out / "runs" / f"{slug(variant)}-seed{seed}"
            run_dirs.append(run_dir)
            if not (run_dir / "eval.json").exists():
                shutil.rmtree(run_dir, ignore_errors=True)
                cmd = [
                    *clippo_command(),
                    "train",
                    "CartPole-v1",
                    "--seed",
                    str(seed),
                    "--run-dir",
                    str(run_dir),
                    "--no-tensorboard",
                    "--checkpoint-every",
                    "0",
                    "--eval-episodes",
                    "20",
                    *flags,
                ]
                proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
            m = pd.read_csv(run_dir / "metrics.csv")
            evaluation = json.loads((run_dir / "eval.json").read_text())
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "flags": flags,
                    "kl_median": float(m["approx_kl"].median()),
                    "kl_p95": float(np.percentile(m["approx_kl"].dropna(), 95)),
                    "clip_fraction_median": float(m["clip_fraction"].median()),
                    "early_stop_share": float(m["early_stopped"].mean()),
                    "epochs_run_mean": float(m["epochs_run"].mean()),
                    "final_train_return": float(m["recent_return"].iloc[-1]),
                    "eval_return": float(evaluation["mean_return"]),
                }
            )
            print(f"{variant} seed {seed}: median KL {rows[-1]['kl_median']:.4f}", flush=True)
    meta["finished"] = now()
    results = {"meta": meta, "seeds": args.seeds, "runs": rows}
    write_json(args.out / "results.json", results)

    lines = ["# Trust region or not: approximate KL per update on CartPole-v1", ""]
    lines += machine_markdown(meta)
    lines += [
        f"- seeds {args.seeds}; per run: `clippo train CartPole-v1 --seed S --run-dir DIR --no-tensorboard "
        "--checkpoint-every 0 --eval-episodes 20` plus the variant's flags",
        "- KL: `approx_kl` of metrics.csv, the estimate `mean((r - 1) - log r)` on the last minibatch of each "
        "update; cells are the mean over seeds of each run's statistic",
        "",
    ]
    table = []
    for variant, flags in VARIANTS.items():
        runs = [r for r in rows if r["variant"] == variant]

        def avg(key: str, runs: list[dict] = runs) -> float:
            return statistics.fmean(r[key] for r in runs)

        table.append(
            [
                variant,
                f"`{' '.join(flags)}`" if flags else "",
                fmt(avg("kl_median"), 4),
                fmt(avg("kl_p95"), 4),
                fmt(avg("clip_fraction_median"), 3),
                fmt(avg("early_stop_share"), 2),
                fmt(avg("epochs_run_mean"), 1),
                fmt(avg("final_train_return"), 1),
                fmt(avg("eval_return"), 1),
            ]
        )
    lines += md_table(
        [
            "variant",
            "flags",
            "median KL",
            "95th pct KL",
            "median clip fraction",
            "updates KL-stopped",
            "epochs run (mean)",
            "final training return",
            "evaluation return",
        ],
        table,
    )
    lines += ["", "## Per run", ""]
    lines += md_table(
        [
            "variant",
            "seed",
            "median KL",
            "95th pct KL",
            "median clip fraction",
            "final training return",
            "evaluation return",
        ],
        [
            [
                r["variant"],
                r["seed"],
                fmt(r["kl_median"], 4),
                fmt(r["kl_p95"], 4),
                fmt(r["clip_fraction_median"], 3),
                fmt(r["final_train_return"], 1),
                fmt(r["eval_return"], 1),
            ]
            for r in rows
        ],
    )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    from clippo.tools.plotting import plot_runs

    plot_runs(run_dirs, args.out / "diagnostics.png", x="steps", diagnostics=True)
    print(f"wrote {args.out / 'results.md'} and {args.out / 'diagnostics.png'}")


if __name__ == "__main__":
    main()

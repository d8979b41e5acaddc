#!/usr/bin/env python
"""Evaluate finished runs under two protocols: the deterministic policy (clippo's default, the
mode of the action distribution) and the stochastic one (actions sampled, as gymnax-blines
evaluates its published MinAtar PPO returns: 164 sampled rollouts).

Each run is evaluated with ``clippo eval RUN --episodes N --seed S --json`` and
``... --stochastic``, each in its own process; the table gives the mean and std of the returns.

    python benchmarks/eval_protocols.py runs/minatar/MinAtar-*_s1 --episodes 100 \
        --out benchmarks/results/minatar/eval_protocols
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine_info, machine_markdown, md_table, now, write_json


def evaluate(run_dir: Path, episodes: int, seed: int, stochastic: bool, clippo: str) -> dict:
    command = [clippo, "eval", str(run_dir), "--episodes", str(episodes), "--seed", str(seed), "--json"]
    if stochastic:
        command.append("--stochastic")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=20_000, help="seed of the evaluation envs (not a training seed)")
    parser.add_argument("--clippo", default=str(Path(sys.executable).with_name("clippo")))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    meta = {"command": command_line(), "date": now(), "machine": machine_info()}
    rows, results = [], []
    for run_dir in args.runs:
        config = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
        deterministic = evaluate(run_dir, args.episodes, args.seed, False, args.clippo)
        stochastic = evaluate(run_dir, args.episodes, args.seed, True, args.clippo)
        results.append(
            {
                "run": str(run_dir),
                "env": config["env_id"],
                "seed": config["seed"],
                "deterministic": deterministic,
                "stochastic": stochastic,
            }
        )
        rows.append(
            [
                config["env_id"],
                config["seed"],
                f"{deterministic['mean_return']:.1f} ± {deterministic['std_return']:.1f}",
                f"{stochastic['mean_return']:.1f} ± {stochastic['std_return']:.1f}",
                run_dir.name,
            ]
        )
        print(rows[-1], flush=True)
    meta["finished"] = now()
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(
        args.out / "eval_protocols.json", {**meta, "episodes": args.episodes, "seed": args.seed, "runs": results}
    )
    text = "\n".join(
        [
            "# Final policies under two evaluation protocols",
            "",
            *machine_markdown(meta),
            "",
            f"{args.episodes} episodes each, evaluation envs seeded from {args.seed} (not a training seed).",
            "",
            *md_table(["env", "seed", "deterministic (mode)", "stochastic (sampled)", "run"], rows),
            "",
        ]
    )
    (args.out / "eval_protocols.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

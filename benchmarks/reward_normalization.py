#!/usr/bin/env python
"""Reward normalization done wrong, measured: per-trajectory zero-mean rewards on CartPole-v1.

Three variants of clippo's built-in CartPole-v1 recipe, each over the same seeds:

- ``raw``: rewards as the env gives them (the preset: ``normalize_rewards=False``);
- ``scaled``: clippo's ``--normalize-rewards``: each reward divided by the running standard
  deviation of the discounted return, no mean subtracted (``clippo.rollout.normalization.RewardScaler``);
- ``per-trajectory``: the mistake. After each rollout, the rewards of every trajectory (each
  env's stretch of steps between episode ends and rollout cuts) are shifted to zero mean and
  divided by their standard deviation before returns and advantages are computed. The only
  change to clippo is ``install_per_trajectory_normalization`` below, which wraps the rollout
  collection; everything else is the stock trainer.

CartPole pays 1 per step, so within a trajectory every reward equals the mean and the mistake
turns each one into exactly 0: the returns, the critic's targets and the advantages no longer
depend on how long the pole stays up.

Writes into ``--out`` (default ``benchmarks/results/reward_normalization/``): ``curves.png``
(return against steps, mean of the seeds with a 95% CI band), ``results.md`` and
``results.json`` (final training return, deterministic evaluation return, the share of zero
rewards the learner saw, the value loss at the end), and ``report-per-trajectory.md``, the
``clippo report`` of the first per-trajectory run. Run dirs go to ``--out/runs/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_OUT, command_line, fmt, machine_info, machine_markdown, md_table, now, write_json  # noqa: E402

VARIANTS = {
    "raw": ("rewards as given (preset)", {}),
    "scaled": ("clippo --normalize-rewards (scale only)", {"normalize_rewards": True}),
    "per-trajectory": ("per-trajectory zero mean, unit std (the mistake)", {}),
}


def per_trajectory_zero_mean(
    rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, valid: np.ndarray, eps: float = 1e-8
) -> np.ndarray:
    """Rewards ``[num_steps, num_envs]`` with each trajectory's rewards standardized on their own.

    A trajectory is one env's run of steps up to an episode end or the rollout's last step.
    Autoreset steps (``valid`` False) are not transitions and are left out of the statistics.
    """
    out = rewards.copy()
    num_steps, num_envs = rewards.shape
    ends = terminated | truncated
    for env in range(num_envs):
        start = 0
        for t in range(num_steps):
            if ends[t, env] or t == num_steps - 1:
                mask = valid[start : t + 1, env]
                segment = rewards[start : t + 1, env][mask]
                if segment.size:
                    out[start : t + 1, env][mask] = (segment - segment.mean()) / (segment.std() + eps)
                start = t + 1
    return out


def install_per_trajectory_normalization(agent) -> dict[str, float]:
    """Make ``agent`` standardize every trajectory's rewards after each rollout (the mistake).

    Returns a dict that counts the rewards the learner saw and how many of them were zero.
    """
    runner = agent.env_runner()
    collect = runner.collect
    seen = {"rewards": 0.0, "zeros": 0.0}

    def collect_then_standardize(policy, buffer, generator) -> None:
        collect(policy, buffer, generator)
        buffer.rewards[:] = per_trajectory_zero_mean(buffer.rewards, buffer.terminated, buffer.truncated, buffer.valid)
        learner_rewards = buffer.rewards[buffer.valid]
        seen["rewards"] += learner_rewards.size
        seen["zeros"] += float(np.sum(np.abs(learner_rewards) < 1e-6))

    runner.collect = collect_then_standardize
    return seen


def train_variant(variant: str, seed: int, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from clippo import PPO
    from clippo.config.ppo_config import save_config

    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides: dict[str, Any] = dict(VARIANTS[variant][1])
    if args.total_steps is not None:
        overrides["total_steps"] = args.total_steps
    agent = PPO("CartPole-v1", seed=seed, run_dir=run_dir, tensorboard=False, checkpoint_every=0,
                eval_episodes=args.eval_episodes, **overrides)
    run_dir.mkdir(parents=True)
    save_config(agent.config, run_dir / "config.yaml")
    seen = install_per_trajectory_normalization(agent) if variant == "per-trajectory" else None
    try:
        agent.learn(progress=False)
    finally:
        agent.close()
    evaluation = agent.evaluate(episodes=args.eval_episodes, seed=seed + 10_000)
    (run_dir / "eval.json").write_text(json.dumps({k: evaluation[k] for k in ("mean_return", "std_return", "episodes")}))
    import pandas as pd

    metrics = pd.read_csv(run_dir / "metrics.csv")
    half = metrics.iloc[len(metrics) // 2 :]
    result = {
        "variant": variant, "seed": seed,
        "final_train_return": float(metrics["recent_return"].iloc[-1]),
        "eval_return": float(evaluation["mean_return"]),
        "value_loss_first": float(metrics["value_loss"].iloc[0]),
        "value_loss_second_half_median": float(half["value_loss"].median()),
        "zero_reward_share": seen["zeros"] / seen["rewards"] if seen else None,
    }
    print(f"{variant} seed {seed}: final return {result['final_train_return']:.1f}, eval {result['eval_return']:.1f}",
          flush=True)
    return result


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    from clippo.tools.plotting import t_quantile_975

    if not values:
        return None, None
    if len(values) < 2:
        return statistics.fmean(values), None
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return statistics.fmean(values), half


def draw(run_dirs: dict[str, list[Path]], path: Path) -> None:
    from clippo.tools.plotting import RunGroup, draw_groups, read_run

    groups = [RunGroup([read_run(d) for d in dirs], label=VARIANTS[v][0]) for v, dirs in run_dirs.items() if dirs]
    figure = draw_groups(groups, x="steps")
    figure.savefig(path, dpi=110, bbox_inches="tight")


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = ["# Reward normalization done wrong: CartPole-v1 (clippo built-in recipe)", ""]
    lines += machine_markdown(results["meta"])
    lines += [
        f"- seeds {results['seeds']}; `{results['total_steps'] or 100_000}` env steps per run; deterministic "
        f"evaluation over {results['eval_episodes']} episodes at the end (eval seed S+10000)",
        "- cells: mean over the seeds ± half-width of the 95% confidence interval of that mean (Student t)",
        "",
    ]
    rows = []
    for variant, (label, _) in VARIANTS.items():
        runs = [r for r in results["runs"] if r["variant"] == variant]
        cells = [mean_ci([r[k] for r in runs]) for k in ("final_train_return", "eval_return")]
        zero = [r["zero_reward_share"] for r in runs if r["zero_reward_share"] is not None]
        vloss = [r["value_loss_second_half_median"] for r in runs]
        rows.append([label, len(runs), *(_pm(c) for c in cells),
                     fmt(statistics.fmean(zero), 4) if zero else "n/a",
                     f"{statistics.median(vloss):.2e}" if vloss else "n/a"])
    lines += md_table(["variant", "seeds", "final training return", "evaluation return",
                       "share of learner rewards equal to 0", "value loss, 2nd half (median)"], rows)
    lines += ["", "## Per run", ""]
    lines += md_table(
        ["variant", "seed", "final training return", "evaluation return", "value loss, first update",
         "value loss, 2nd half (median)"],
        [[r["variant"], r["seed"], fmt(r["final_train_return"], 1), fmt(r["eval_return"], 1),
          f"{r['value_loss_first']:.3g}", f"{r['value_loss_second_half_median']:.3g}"] for r in results["runs"]],
    )
    path.write_text("\n".join(lines) + "\n")


def _pm(cell: tuple[float | None, float | None]) -> str:
    mean, half = cell
    if mean is None:
        return "n/a"
    return f"{mean:.1f} ± {half:.1f}" if half is not None else f"{mean:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--total-steps", type=int, default=None, help="override the preset's 100k (smoke tests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "reward_normalization")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command_line(), "date": now(), "machine": machine_info()}
    runs, run_dirs = [], {v: [] for v in VARIANTS}
    for seed in args.seeds:
        for variant in VARIANTS:
            run_dir = args.out / "runs" / f"{variant}-seed{seed}"
            runs.append(train_variant(variant, seed, run_dir, args))
            run_dirs[variant].append(run_dir)
    meta["finished"] = now()
    results = {"meta": meta, "seeds": args.seeds, "eval_episodes": args.eval_episodes,
               "total_steps": args.total_steps, "runs": runs}
    write_json(args.out / "results.json", results)
    write_markdown(results, args.out / "results.md")
    draw(run_dirs, args.out / "curves.png")
    from clippo.tools.report import write_report

    write_report(run_dirs["per-trajectory"][0], args.out / "report-per-trajectory.md")
    print(f"wrote {args.out / 'results.md'}, {args.out / 'curves.png'}, {args.out / 'report-per-trajectory.md'}")


if __name__ == "__main__":
    main()

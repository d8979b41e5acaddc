#!/usr/bin/env python
"""Do the built-in presets hold on seeds nobody tuned on? Train each in-scope preset on unseen
seeds and count the seeds whose final deterministic evaluation reaches the task's reference.

Every run is a plain ``clippo train ENV --seed S --eval-episodes 20`` (the preset decides
everything else; MinAtar Breakout adds ``--total-steps 2000000``) on seeds 1000-1009 (1000-1004
for MinAtar Breakout and Hopper), which no preset was tuned on. The cheapest tasks run first.
One command runs, resumes and tabulates; stopped at any point (Ctrl-C, a killed session), the
same command continues: finished runs are kept, unfinished ones continued with ``clippo resume``,
runs stopped before their first checkpoint started again.

    nohup nice -n 19 python benchmarks/seed_robustness.py run >> runs/seed_robustness.log 2>&1 &
    python benchmarks/seed_robustness.py table          # rewrite the table from what is there
    python benchmarks/seed_robustness.py run --tasks CartPole-v1 --seeds 1000 1001   # a subset

The table (``benchmarks/results/seed_robustness/results.md`` and ``results.json``) is rewritten
as each run ends: per task the success count, median, worst seed and interquartile mean (IQM) with
a 95% bootstrap confidence interval (``clippo.tools.aggregate``), then every seed's row.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_OUT, command_line, fmt, machine_info, machine_markdown, md_table, now
from preset_runs import finished, last_step, read_run, run_name, run_queue, total_steps_of

SEEDS = list(range(1000, 1010))
FEW_SEEDS = list(range(1000, 1005))
GYM = "Gymnasium's reward_threshold"


@dataclass
class Task:
    """One preset in scope: its env id, success threshold (and where the figure comes from), seeds
    and any flags beyond ``--seed``."""

    env: str
    threshold: float
    source: str
    seeds: list[int] = field(default_factory=lambda: list(SEEDS))
    extra: list[str] = field(default_factory=list)


# Cheapest first (measured or estimated time of one run on this 2-core machine).
TASKS = [
    Task("CartPole-v1", 475, GYM),
    Task("clippo/Bits-v0", 7.8, "97.5% of the optimum 8 (random 4; seeds 1-3 gave 7.90-7.91)"),
    Task("MountainCarContinuous-v0", 90, GYM + " (RL-Zoo's PPO: 88.3 +- 2.6)"),
    Task("clippo/ToolAmount-v0", 19.5, "97.5% of the optimum 20 (random 7.8; seeds 1-3 gave 19.89-19.90)"),
    Task("clippo/CartPoleNoVel-v1", 475, "CartPole's " + GYM + " (RL-Zoo's RecurrentPPO: 500 at 100k)"),
    Task("Pendulum-v1", -200, "no Gymnasium threshold; -200, the usual bar (RL-Zoo's PPO: -172 +- 104 at 100k)"),
    Task("clippo/PendulumNoVel-v1", -218, "RL-Zoo's RecurrentPPO at 100k steps"),
    Task("Acrobot-v1", -100, GYM),
    Task("MountainCar-v0", -110, GYM + " (RL-Zoo's PPO: -110.4 +- 19.5)"),
    Task("LunarLander-v3", 200, GYM + " (RL-Zoo's PPO: 242.1 +- 31.8)"),
    Task("LunarLanderContinuous-v3", 200, GYM + " (RL-Zoo's PPO: 270.9 +- 32.1)"),
    Task(
        "MinAtar/Breakout-v1",
        28,
        "gymnax's PPO at 10M steps (no figure at 2M is published: a strict bar)",
        FEW_SEEDS,
        ["--total-steps", "2000000"],
    ),
    Task("Hopper-v5", 2500, "the README's target (published PPO at 1M: CleanRL 2383, RL-Zoo 2410)", FEW_SEEDS),
]
COMMON_EXTRA = ["--eval-episodes", "20"]

#: Where a preset falls short, the reference's own library run with its own recipe on the same
#: seeds (written by another benchmark into OUT/<folder>; a glob, so that seeds run by invocations
#: side by side, each with its own --out, count together): does the reference itself hold there?
PEERS = {
    "MountainCarContinuous-v0": (
        "SB3 PPO, RL-Zoo's recipe (the preset's values)",
        "peer_mcc*/results.json",
        "python benchmarks/bench_sb3.py --envs MountainCarContinuous-v0 --libs sb3 --seeds 1000 ... 1009 "
        "--eval-episodes 20 --no-limits --out benchmarks/results/seed_robustness/peer_mcc",
    ),
    "clippo/PendulumNoVel-v1": (
        "sb3-contrib RecurrentPPO, RL-Zoo's recipe",
        "peer_pendulumnovel*/zoo.json",
        "python benchmarks/bench_recurrent.py zoo --envs clippo/PendulumNoVel-v1 --seeds 1000 ... 1009 "
        "--out benchmarks/results/seed_robustness/peer_pendulumnovel",
    ),
}
ROOT = Path("runs/seed_robustness")
OUT = DEFAULT_OUT / "seed_robustness"


def task_items(tasks: list[Task], seeds: list[int] | None) -> list[tuple[str, int, list[str]]]:
    return [(t.env, s, [*COMMON_EXTRA, *t.extra]) for t in tasks for s in t.seeds if seeds is None or s in seeds]


def recipe_differences(run_dir: Path, task: Task) -> dict[str, Any]:
    """Where the run's hyperparameters differ from what the task's command uses today (empty for a
    run of the current preset); the task's own flags are not differences."""
    import yaml
    from preset_runs import preset_differences

    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    differences = {k: v for k, v in preset_differences(config).items() if not recipe_ignores(k)}
    if "--total-steps" in task.extra:
        differences.pop("total_steps", None)
    return differences


def retire_old_recipes(tasks: list[Task], root: Path) -> None:
    """Move runs of an earlier recipe of a preset (finished or not) to ``root/superseded/``, so the
    queue trains the seed again with today's preset; the table lists them apart."""
    stamp = now().replace(":", "")[:17]
    for task in tasks:
        for seed in task.seeds:
            run_dir = root / run_name(task.env, seed)
            if not (run_dir / "config.yaml").exists():
                continue
            differences = recipe_differences(run_dir, task)
            if differences:
                target = root / "superseded" / f"{run_dir.name}_{stamp}"
                target.parent.mkdir(parents=True, exist_ok=True)
                run_dir.rename(target)
                log = root / f"{run_dir.name}.log"
                if log.exists():
                    log.rename(target.with_suffix(".log"))
                print(f"{now()} {run_dir.name}: recipe changed ({differences}); moved to {target}", flush=True)


def recipe_values(env_id: str) -> dict[str, Any]:
    """Today's preset of ``env_id``: its hyperparameters (bookkeeping keys left out), as JSON values."""
    from clippo.config.ppo_config import resolve_config

    values = {k: v for k, v in resolve_config(env_id).to_dict().items() if not recipe_ignores(k)}
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def recipe_ignores(key: str) -> bool:
    """Keys that are no part of a single-agent task's recipe: bookkeeping, and the knobs that only
    multi-agent runs read (every task here is single-agent)."""
    from clippo.tools.plotting import IGNORED_KEYS

    bookkeeping = IGNORED_KEYS | {"env_id", "nonfinite", "vector_env", "eval_every", "eval_episodes", "seed"}
    return key in bookkeeping or key.startswith("selfplay") or key in {"critic", "agent_id_feature", "policy_groups"}


def recipe(env_id: str) -> str:
    """A fingerprint of today's preset of ``env_id`` (``recipe_values``), shown with each run."""
    import hashlib

    return hashlib.sha256(json.dumps(recipe_values(env_id), sort_keys=True).encode()).hexdigest()[:16]


def same_recipe(row: dict[str, Any], env_id: str) -> bool:
    """Whether a kept row ran today's preset of ``env_id``. A row with its recipe's values compares
    them key by key, a knob added since counting as its default (a new knob at its default changes
    no run); an older row has only the fingerprint."""
    values = row.get("recipe_values")
    if values is None:
        return row.get("recipe") == recipe(env_id)
    from clippo.config.ppo_config import PPOConfig

    defaults = json.loads(json.dumps(PPOConfig().to_dict(), default=str))
    today = recipe_values(env_id)
    keys = {k for k in set(values) | set(today) if not recipe_ignores(k)}
    return all(values.get(k, defaults.get(k)) == today.get(k, defaults.get(k)) for k in keys)


def archived_rows(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The finished rows of the table already written to ``out``: a run directory can be lost
    (another machine, a cleaned checkout) while its result stays valid for the same preset."""
    path = out / "results.json"
    if not path.exists():
        return {}
    return {(r["env_id"], int(r["seed"])): r for task in json.loads(path.read_text()) for r in task["runs"]}


def collect(
    task: Task, root: Path, archive: dict[tuple[str, int], dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The task's rows: finished runs with their final evaluation, unfinished ones with the step
    they reached. A finished run whose recipe differs from today's preset (beyond the task's own
    flags) is marked, so a preset change never mixes with runs of the old one. A seed with no run
    directory takes its row from ``archive`` (the earlier table) if that row's recorded recipe is
    today's preset; such rows are marked ``archived``."""
    rows = []
    today = recipe(task.env)
    for seed in task.seeds:
        run_dir = root / run_name(task.env, seed)
        if not (run_dir / "metrics.csv").exists():
            kept = (archive or {}).get((task.env, seed))
            if kept is not None and same_recipe(kept, task.env):
                rows.append({**kept, "archived": True})
            continue
        try:
            row = read_run(run_dir)
        except Exception:  # a run that has just started: metrics.csv holds no row yet
            continue
        if row is None:
            continue
        if row.get("unfinished") or not finished(run_dir):
            row["unfinished"] = True
            row["steps"] = last_step(run_dir)
            row["total_steps"] = total_steps_of(run_dir)
        else:
            differences = {k: v for k, v in row["differences"].items() if not recipe_ignores(k)}
            if "--total-steps" in task.extra:
                differences.pop("total_steps", None)
            row["differences"] = differences
            row["success"] = row["eval_mean"] >= task.threshold
            log = root / f"{run_dir.name}.log"
            # continued after a stop: its trajectory may differ from an uninterrupted run's
            row["resumed"] = log.exists() and "resuming " in log.read_text(errors="replace")
            row.update(diagnostics(run_dir))
            row["recipe"] = today
            row["recipe_values"] = recipe_values(task.env)
        rows.append(row)
    for run_dir in sorted((root / "superseded").glob(f"{run_name(task.env, 0)[:-1]}*")):
        row = read_run(run_dir) if (run_dir / "eval.json").exists() else None
        if row is not None and not row.get("unfinished"):
            row["differences"] = recipe_differences(run_dir, task) or {"superseded": run_dir.name}
            rows.append(row)
    return rows


def diagnostics(run_dir: Path) -> dict[str, Any]:
    """What a failing seed's curve says at a glance: the entropy at the start and the end, the
    share of updates whose epochs the KL stop cut, and the last value loss (metrics.csv)."""
    import csv

    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))

    def col(name: str) -> list[float]:
        out = []
        for r in rows:
            value = r.get(name)
            if value not in (None, ""):
                try:
                    out.append(float(value))
                except ValueError:
                    pass
        return out

    entropy, value_loss, stops = col("entropy"), col("value_loss"), col("early_stopped")
    return {
        "entropy_first": entropy[0] if entropy else None,
        "entropy_last": entropy[-1] if entropy else None,
        "value_loss_last": value_loss[-1] if value_loss else None,
        "kl_stop_share": sum(1 for s in stops if s > 0) / len(stops) if stops else None,
    }


def write_table(tasks: list[Task], root: Path, out: Path) -> Path:
    from clippo.tools.aggregate import summarize

    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Seed robustness of the built-in presets", ""]
    lines += machine_markdown({"command": command_line(), "date": now(), "machine": machine_info()})
    lines += [
        "",
        "Each run: `clippo train ENV --seed S --eval-episodes 20` (the env's built-in preset; MinAtar Breakout "
        "with `--total-steps 2000000`), on seeds no preset was tuned on. Final return: the deterministic "
        "evaluation `clippo train` runs after its last update (20 episodes, env seed S + 10000, eval.json). "
        "Success: final return >= the threshold. IQM: mean of the middle half of the seeds, with a 95% "
        "percentile bootstrap interval over seeds (2000 resamples). Runs share 2 cores with other work at "
        "`nice 19`, so wall times say little. A run marked resumed was stopped and continued with `clippo resume` "
        "from its last checkpoint. A run marked kept is a row of the table written before, whose run directory "
        "is no longer here; it is kept while the preset it ran is today's (its recipe is recorded with it).",
        "",
        "## Summary",
        "",
    ]
    summary_rows, per_seed, unfinished, earlier, records = [], [], [], [], []
    archive = archived_rows(out)
    for task in tasks:
        rows = collect(task, root, archive)
        done = [r for r in rows if not r.get("unfinished") and not r["differences"]]
        unfinished += [r for r in rows if r.get("unfinished")]
        earlier += [r for r in rows if not r.get("unfinished") and r["differences"]]
        if done:
            s = summarize([r["eval_mean"] for r in done], [r["seed"] for r in done], task.threshold)
            failed = ", ".join(str(x) for x in s.failed_seeds) or "none"
            summary_rows.append(
                [
                    task.env,
                    f"{len(done)} of {len(task.seeds)}",
                    f"**{s.successes}/{len(done)}**",
                    f"{task.threshold:g}",
                    fmt(s.median, 1),
                    fmt(s.worst, 1),
                    f"{s.iqm:.1f} [{s.iqm_ci[0]:.1f}, {s.iqm_ci[1]:.1f}]",
                    failed,
                ]
            )
            records.append(
                {
                    "env_id": task.env,
                    "threshold": task.threshold,
                    "threshold_source": task.source,
                    "seeds_planned": task.seeds,
                    "successes": s.successes,
                    "seeds_done": s.seeds,
                    "median": s.median,
                    "worst": s.worst,
                    "iqm": s.iqm,
                    "iqm_ci95": list(s.iqm_ci),
                    "runs": done,
                }
            )
        else:
            summary_rows.append([task.env, f"0 of {len(task.seeds)}", "-", f"{task.threshold:g}", "-", "-", "-", "-"])
        per_seed += done
    lines += md_table(
        ["task", "seeds done", "successes", "threshold", "median", "worst", "IQM [95% CI]", "seeds below"],
        summary_rows,
    )
    lines += ["", "Thresholds:", ""]
    lines += [f"- {t.env}: {t.threshold:g}, {t.source}; seeds {t.seeds[0]}-{t.seeds[-1]}" for t in tasks]
    lines += ["", "## Per seed", ""]
    lines += md_table(
        [
            "task",
            "seed",
            "final return",
            "success",
            "last training return",
            "entropy first / last",
            "KL-stopped updates",
            "steps",
            "wall time",
        ],
        [
            [
                r["env_id"],
                r["seed"],
                f"{r['eval_mean']:.1f} ± {r['eval_std']:.1f}",
                "yes" if r["success"] else "**no**",
                fmt(r["train_return"], 1),
                f"{fmt(r['entropy_first'], 2)} / {fmt(r['entropy_last'], 2)}",
                "-" if r["kl_stop_share"] is None else f"{r['kl_stop_share']:.0%}",
                f"{r['steps']:_}"
                + (" (resumed)" if r.get("resumed") else "")
                + (" (kept)" if r.get("archived") else ""),
                f"{r['wall_s'] / 60:.1f} min",
            ]
            for r in per_seed
        ],
    )
    if unfinished:
        lines += ["", "## Unfinished (continued by the same command)", ""]
        lines += md_table(
            ["task", "seed", "steps reached", "of"],
            [[r["env_id"], r["seed"], f"{r['steps']:_}", f"{r['total_steps'] or 0:_}"] for r in unfinished],
        )
    if earlier:
        lines += ["", "## Runs of earlier recipes (not counted above)", ""]
        lines += md_table(
            ["task", "seed", "final return", "differences from today's preset"],
            [
                [
                    r["env_id"],
                    r["seed"],
                    f"{r['eval_mean']:.1f}",
                    ", ".join(f"{k}={v}" for k, v in r["differences"].items()),
                ]
                for r in earlier
            ],
        )
    lines += peer_lines(tasks, records, out)
    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(records, indent=2, default=str) + "\n")
    return path


def peer_finals(path: Path, env_id: str) -> dict[int, float]:
    """Seed -> mean deterministic evaluation return of the finished peer runs in a bench_sb3
    results.json or a bench_recurrent part's JSON."""
    runs = json.loads(path.read_text())["runs"]
    return {
        r["seed"]: sum(r["eval_returns"]) / len(r["eval_returns"])
        for r in runs
        if r.get("ok") and r.get("env_id", r.get("env")) == env_id and r.get("eval_returns")
    }


def peer_lines(tasks: list[Task], records: list[dict[str, Any]], out: Path) -> list[str]:
    rows = []
    for task in tasks:
        if task.env not in PEERS:
            continue
        label, pattern, _command = PEERS[task.env]
        finals = {
            seed: final for path in sorted(out.glob(pattern)) for seed, final in peer_finals(path, task.env).items()
        }
        ours = {r["seed"]: r["eval_mean"] for rec in records if rec["env_id"] == task.env for r in rec["runs"]}
        seeds = sorted(set(finals) & set(ours))
        if not seeds:
            continue
        rows.append(
            [
                task.env,
                label,
                ", ".join(f"{finals[s]:.1f}" for s in seeds),
                f"**{sum(finals[s] >= task.threshold for s in seeds)}/{len(seeds)}**",
                f"{sum(ours[s] >= task.threshold for s in seeds)}/{len(seeds)}",
                f"{task.threshold:g}",
                ", ".join(f"[{p.parent.name}]({p.parent.name}/)" for p in sorted(out.glob(pattern))),
            ]
        )
    if not rows:
        return []
    lines = ["", "## The reference's own library on the same seeds", ""]
    lines += [
        "Where a preset falls short of 9 of 10: the library whose published figure sets the bar, with its "
        "own recipe, trained on the same seeds and evaluated deterministically over 20 episodes (its "
        "benchmark's evaluation seeds, not S + 10000). Commands: "
        + "; ".join(f"`{PEERS[t.env][2]}`" for t in tasks if t.env in PEERS)
        + ".",
        "",
    ]
    lines += md_table(
        ["task", "reference library and recipe", "its final returns", "its successes", "clippo's", "threshold", "runs"],
        rows,
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument("--tasks", nargs="+", default=None, help="env ids (default: every task in scope)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="only these of each task's seeds")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--root", type=Path, default=ROOT, help="where the run directories go")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--clippo", default=f"{sys.executable} -m clippo", help="the command that runs clippo")
    args = parser.parse_args(argv)
    known = {t.env: t for t in TASKS}
    if args.tasks is not None:
        bad = [e for e in args.tasks if e not in known]
        if bad:
            parser.error(f"--tasks {bad[0]!r} is not in scope: choose from {', '.join(known)}")
    tasks = TASKS if args.tasks is None else [known[e] for e in args.tasks]
    if args.command == "run":

        def rewrite(_run_dir: Path) -> None:
            try:
                write_table(TASKS, args.root, args.out)
            except Exception as exc:  # a table error must not stop the training queue
                print(f"{now()} table not written: {exc}", flush=True)

        retire_old_recipes(tasks, args.root)
        archive = archived_rows(args.out)
        kept = {
            (t.env, s)
            for t in tasks
            for s in t.seeds
            if (t.env, s) in archive and same_recipe(archive[(t.env, s)], t.env)
        }
        items = [item for item in task_items(tasks, args.seeds) if (item[0], item[1]) not in kept]
        run_queue(items, args.root, args.jobs, args.clippo, on_done=rewrite)
    print(f"wrote {write_table(TASKS, args.root, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

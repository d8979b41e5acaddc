#!/usr/bin/env python
"""Learning with clippo's built-in presets: run (or resume) the seeds, then tabulate them.

Every row is one plain ``clippo train ENV --seed S`` (the preset decides everything else), so
anyone can reproduce a row with that one command. The table reads each run directory's
``eval.json`` (the deterministic evaluation of the final policy that ``clippo train`` runs:
10 episodes on env seed ``seed + 10000``), ``metrics.csv`` and ``config.yaml``.

    # train (two runs at a time on a 2-core machine), then write the table and the curves
    python benchmarks/preset_runs.py run --envs Hopper-v5 Walker2d-v5 HalfCheetah-v5 --seeds 1 2 3 --jobs 2
    python benchmarks/preset_runs.py table RUNS_ROOT/*-v5_s* --out benchmarks/results/mujoco
    # MinAtar at 10M steps: long runs, continued by the same command after a stop
    python benchmarks/preset_runs.py run --envs MinAtar/Breakout-v1 --seeds 1 2 3 --root runs/minatar \
        --out benchmarks/results/minatar --extra=--eval-every=500000
    # Atari's 10M-step preset measured at 1M steps (each run stopped there; resumable later)
    python benchmarks/preset_runs.py run --envs ALE/Breakout-v5 ALE/Pong-v5 --seeds 1 --root runs/atari \
        --out benchmarks/results/atari --stop-at-steps 1000000 --extra=--eval-every=250000 --extra=--eval-episodes=8

``run`` puts run directories at ``RUNS_ROOT/<env>_s<seed>`` (``/`` in ids as ``-``; default
``runs/presets``), resumes those that hold an unfinished run (``clippo resume``), skips finished
ones, and ends with ``table``. Rows of unfinished runs are listed apart with the step they reached.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_OUT, child_env, command_line, fmt, machine_info, machine_markdown, md_table, mean_std, now

# The issues' targets: mean over seeds of the final deterministic evaluation at the preset's
# step budget, and published PPO figures at that budget for reference.
TARGETS = {
    # MuJoCo at 1M steps (published figures for the v4 envs)
    "Hopper-v5": 2500.0,
    "Walker2d-v5": 3500.0,
    "HalfCheetah-v5": 3000.0,
    # MinAtar at 10M steps: gymnax's published PPO returns (gymnax's MinAtar has no sticky
    # actions; minatar's default, used here, repeats the last action with probability 0.1)
    "MinAtar/Asterix-v1": 15.0,
    "MinAtar/Breakout-v1": 28.0,
    "MinAtar/Freeway-v1": 58.0,
    "MinAtar/SpaceInvaders-v1": 131.0,
    # Classic control and Box2D at RL-Zoo's budgets: RL-Zoo's PPO benchmark table
    # (rl-baselines3-zoo benchmark.md, v2 envs; the v3 landers have the same dynamics)
    "LunarLander-v3": 242.119,
    "LunarLanderContinuous-v3": 270.863,
    "MountainCar-v0": -110.423,
    "MountainCarContinuous-v0": 88.343,
    "BipedalWalker-v3": 213.299,
    "CarRacing-v3": 153.938,
}
PUBLISHED = {
    "Hopper-v5": "CleanRL 2383, SB3 RL-Zoo 2410 (1M, v4)",
    "Walker2d-v5": "CleanRL 2288, SB3 RL-Zoo 3479 (1M, v4)",
    "HalfCheetah-v5": "CleanRL 1443, SB3 RL-Zoo 5819 (1M, v4)",
    "MinAtar/Asterix-v1": "gymnax PPO 15 (10M, no sticky actions)",
    "MinAtar/Breakout-v1": "gymnax PPO 28 (10M, no sticky actions)",
    "MinAtar/Freeway-v1": "gymnax PPO 58 (10M, no sticky actions)",
    "MinAtar/SpaceInvaders-v1": "gymnax PPO 131 (10M, no sticky actions)",
    "MinAtar/Seaquest-v1": "-",
    "LunarLander-v3": "RL-Zoo PPO 242.1 +- 31.8 (1M, LunarLander-v2)",
    "LunarLanderContinuous-v3": "RL-Zoo PPO 270.9 +- 32.1 (1M, LunarLanderContinuous-v2)",
    "MountainCar-v0": "RL-Zoo PPO -110.4 +- 19.5 (1M)",
    "MountainCarContinuous-v0": "RL-Zoo PPO 88.3 +- 2.6 (20k, gSDE)",
    "BipedalWalker-v3": "RL-Zoo PPO 213.3 +- 129.5 (5M)",
    "CarRacing-v3": "RL-Zoo PPO 153.9 +- 74.5 (4M, CarRacing-v0)",
}


def run_name(env: str, seed: int) -> str:
    return f"{env.replace('/', '-')}_s{seed}"


def last_step(run_dir: Path) -> int:
    """The ``global_step`` of the last row of the run's metrics.csv (0 before the first update)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        return 0
    column = lines[0].split(",").index("global_step")
    return int(float(lines[-1].split(",")[column]))


def logged_since(run_dir: Path, since: float) -> bool:
    """Whether the run's metrics.csv was written after ``since`` (a ``time.time()``)."""
    path = run_dir / "metrics.csv"
    return path.exists() and path.stat().st_mtime > since


def total_steps_of(run_dir: Path) -> int | None:
    """The run's ``total_steps`` from its config.yaml (None when it has none yet)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("total_steps:"):
            return int(float(line.split(":", 1)[1]))
    return None


def finished(run_dir: Path, stop_at_steps: int | None = None) -> bool:
    """Done: the run reached ``stop_at_steps`` (a run stopped there by SIGINT writes no final
    evaluation: its periodic ones are its record), or, without it, the run wrote its final
    evaluation at its own total_steps."""
    if stop_at_steps is not None:
        return last_step(run_dir) >= stop_at_steps
    if not (run_dir / "eval.json").exists():
        return False
    target = total_steps_of(run_dir)
    return target is None or last_step(run_dir) >= target


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``clippo resume`` can continue the run (a final or a periodic checkpoint)."""
    return (run_dir / "agent.pt").exists() or any((run_dir / "checkpoints").glob("step_*.pt"))


def run_all(
    envs: list[str],
    seeds: list[int],
    root: Path,
    jobs: int,
    clippo: str,
    extra: list[str],
    stop_at_steps: int | None = None,
) -> list[Path]:
    """Train every (env, seed) as its own ``clippo train`` process, ``jobs`` at a time (see
    ``run_queue``)."""
    return run_queue([(env, seed, extra) for seed in seeds for env in envs], root, jobs, clippo, stop_at_steps)


def run_queue(
    items: list[tuple[str, int, list[str]]],
    root: Path,
    jobs: int,
    clippo: str,
    stop_at_steps: int | None = None,
    on_done: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Train every (env, seed, extra flags) in order, ``jobs`` processes at a time; a run
    directory holding an unfinished run is continued with ``clippo resume``, a finished one kept,
    and one with no checkpoint to resume from (stopped before its first) started again.

    ``clippo`` is the command that runs clippo (``clippo`` or ``python -m clippo``).
    ``stop_at_steps`` stops each run with SIGINT (``clippo train`` then checkpoints after the
    current update and evaluates) once its metrics.csv reaches that many steps: a long preset,
    e.g. Atari's 10M, measured part way and continued later with ``clippo resume``.
    ``on_done(run_dir)`` is called as each run's process ends (e.g. to rewrite a table)."""
    queue = list(items)
    running: dict[subprocess.Popen, Path] = {}
    signalled: set[subprocess.Popen] = set()
    started: dict[subprocess.Popen, float] = {}  # when each run's process started (time.time())
    run_dirs = []
    root.mkdir(parents=True, exist_ok=True)
    command = shlex.split(clippo)

    def stop_driver(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    # A killed driver stops its runs as well (SIGINT: each checkpoints first): a run left behind
    # would still hold its run directory when the driver is started again, which then fails it.
    signal.signal(signal.SIGTERM, stop_driver)
    try:
        _drain_queue(queue, running, signalled, started, run_dirs, root, jobs, command, stop_at_steps, on_done)
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in running:
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
    return run_dirs


def _drain_queue(
    queue: list[tuple[str, int, list[str]]],
    running: dict[subprocess.Popen, Path],
    signalled: set[subprocess.Popen],
    started: dict[subprocess.Popen, float],
    run_dirs: list[Path],
    root: Path,
    jobs: int,
    command: list[str],
    stop_at_steps: int | None,
    on_done: Callable[[Path], None] | None,
) -> None:
    while queue or running:
        for proc, run_dir in list(running.items()):
            if proc.poll() is not None:
                print(f"{now()} {run_dir.name} ended with exit status {proc.returncode}", flush=True)
                del running[proc]
                if on_done is not None:
                    on_done(run_dir)
        for proc, run_dir in running.items():
            # Signalled only once the run has logged an update of its own: clippo's SIGINT handler is
            # installed by then (before it, e.g. while Python imports, a SIGINT that the driver's
            # parent made ignored, as a shell does for `&` jobs, is lost and the run trains on).
            step = last_step(run_dir)
            due = stop_at_steps is not None and step >= stop_at_steps and logged_since(run_dir, started[proc])
            if due and proc not in signalled:
                print(
                    f"{now()} {run_dir.name} reached {step:_} >= {stop_at_steps:_} steps: SIGINT",
                    flush=True,
                )
                proc.send_signal(signal.SIGINT)
                signalled.add(proc)
        while queue and len(running) < jobs:
            env, seed, extra = queue.pop(0)
            run_dir = root / run_name(env, seed)
            run_dirs.append(run_dir)
            if finished(run_dir, stop_at_steps):
                continue
            log = open(root / f"{run_name(env, seed)}.log", "a")
            if run_dir.exists() and not has_checkpoint(run_dir):
                # stopped before its first checkpoint: nothing to resume, start it again
                shutil.rmtree(run_dir)
            if run_dir.exists():
                cmd = [*command, "resume", str(run_dir)]
            else:
                cmd = [*command, "train", env, "--seed", str(seed), "--run-dir", str(run_dir), *extra]
            print(f"{now()} start: {' '.join(cmd)}", flush=True)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env())
            running[proc] = run_dir
            started[proc] = time.time()
        time.sleep(2)


def preset_differences(config: dict[str, Any]) -> dict[str, Any]:
    """The run's value of every hyperparameter where it differs from what ``clippo train ENV``
    uses today (bookkeeping keys that do not change training, as ``clippo plot`` ignores them,
    left out); empty for a run of the current preset."""
    from clippo.config.ppo_config import PPOConfig, resolve_config
    from clippo.tools.plotting import IGNORED_KEYS

    preset = resolve_config(config["env_id"]).to_dict()
    defaults = PPOConfig().to_dict()  # what a run made before a knob existed used
    config = {**defaults, **config}
    ignored = IGNORED_KEYS | {"env_id", "nonfinite", "vector_env", "eval_every", "eval_episodes"}
    return {k: config.get(k) for k, v in preset.items() if k not in ignored and config.get(k) != v}


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """One table row from a finished run directory (None when it has no final evaluation)."""
    from clippo.tools.plotting import read_run as read_run_dir

    eval_path = run_dir / "eval.json"
    if not (run_dir / "metrics.csv").exists():
        return None
    run = read_run_dir(run_dir)  # config.yaml and metrics.csv
    if not eval_path.exists():  # still running, or stopped: continued by ``run``
        last = run.metrics.iloc[-1]
        return {
            "env_id": run.config["env_id"],
            "seed": run.config["seed"],
            "run_dir": str(run_dir),
            "unfinished": True,
            "steps": int(last["global_step"]),
            "total_steps": int(run.config["total_steps"]),
            "train_return": float(last["recent_return"]),
        }
    evaluation = json.loads(eval_path.read_text())
    last = run.metrics.iloc[-1]
    steps, wall = int(last["global_step"]), float(last["wall_time"])
    train_return = float(last["recent_return"])
    return {
        "env_id": run.config["env_id"],
        "seed": run.config["seed"],
        "run_dir": str(run_dir),
        "eval_mean": float(evaluation["mean_return"]),
        "eval_std": float(evaluation["std_return"]),
        "eval_episodes": int(evaluation["episodes"]),
        "train_return": train_return if math.isfinite(train_return) else None,
        "steps": steps,
        "wall_s": wall,
        "sps": steps / wall if wall > 0 else None,
        "differences": preset_differences(run.config),
    }


def write_table(run_dirs: list[Path], out: Path) -> Path:
    """results.md + results.json + learning curves (``clippo plot``) for the finished runs."""
    found = [r for r in (read_run(Path(d)) for d in run_dirs) if r is not None]
    unfinished = [r for r in found if r.get("unfinished")]
    found = [r for r in found if not r.get("unfinished")]
    runs = [r for r in found if not r["differences"]]
    earlier = [r for r in found if r["differences"]]
    if not runs and not unfinished:
        raise SystemExit("no runs among the given run directories")
    runs.sort(key=lambda r: (r["env_id"], r["seed"]))
    envs = sorted({r["env_id"] for r in runs})
    out.mkdir(parents=True, exist_ok=True)

    lines = ["# clippo with its built-in presets", ""]
    lines += machine_markdown({"command": command_line(), "date": now(), "machine": machine_info()})
    lines += ["", "## Per env (mean over seeds of the final deterministic evaluation)", ""]
    summary = []
    for env in envs:
        mine = [r for r in runs if r["env_id"] == env]
        mean, std = mean_std([r["eval_mean"] for r in mine])
        target = TARGETS.get(env)
        verdict = "" if target is None else ("met" if mean >= target else f"not met (gap {target - mean:.0f})")
        summary.append(
            [
                env,
                len(mine),
                fmt(mean, 0),
                fmt(std, 0),
                fmt(target, 0) if target else "-",
                verdict,
                fmt(sum(r["sps"] for r in mine) / len(mine), 0),
                PUBLISHED.get(env, "-"),
            ]
        )
    lines += md_table(
        ["env", "seeds", "eval mean", "std over seeds", "target", "met?", "mean SPS", "published PPO"], summary
    )
    lines += ["", "## Per run", ""]
    lines += md_table(
        ["env", "seed", "final eval (eval.json)", "last training return", "steps", "wall time", "SPS", "reproduce"],
        [
            [
                r["env_id"],
                r["seed"],
                f"{r['eval_mean']:.0f} ± {r['eval_std']:.0f}",
                fmt(r["train_return"], 0),
                f"{r['steps']:_}",
                f"{r['wall_s'] / 60:.1f} min",
                fmt(r["sps"], 0),
                f"`clippo train {r['env_id']} --seed {r['seed']}`",
            ]
            for r in runs
        ],
    )
    if unfinished:
        lines += ["", "## Unfinished runs (continued by `preset_runs.py run` with the same arguments)", ""]
        lines += md_table(
            ["env", "seed", "steps reached", "of", "last training return (100 episodes)", "continue with"],
            [
                [
                    r["env_id"],
                    r["seed"],
                    f"{r['steps']:_}",
                    f"{r['total_steps']:_}",
                    fmt(r["train_return"], 1),
                    f"`clippo resume {r['run_dir']}`",
                ]
                for r in unfinished
            ],
        )
    if earlier:
        lines += ["", "## Runs of earlier recipes (not in the means above)", ""]
        lines += md_table(
            ["env", "seed", "final eval (eval.json)", "run dir", "recipe differences from today's preset"],
            [
                [
                    r["env_id"],
                    r["seed"],
                    f"{r['eval_mean']:.0f} ± {r['eval_std']:.0f}",
                    Path(r["run_dir"]).name,
                    ", ".join(f"{k}={v}" for k, v in r["differences"].items()),
                ]
                for r in earlier
            ],
        )
    lines += [
        "",
        "Wall time and SPS are clippo's own training-loop clock (metrics.csv), one torch thread per run, "
        "with two runs sharing the machine's two cores (and other work running beside them), so they are lower "
        "than a run alone would show. Steps/second comparisons with SB3 on the same hyperparameters are in "
        "`benchmarks/results/mujoco_speed/` and `benchmarks/results/atari_speed/`.",
    ]

    figures = []
    try:
        from clippo.tools.plotting import plot_runs

        for env in sorted({r["env_id"] for r in runs + unfinished}):
            figure = out / f"curves_{env.replace('/', '-')}.png"
            plot_runs([r["run_dir"] for r in runs + unfinished if r["env_id"] == env], figure, x="both")
            figures.append(figure)
    except Exception as exc:  # the table matters more than the figure
        lines += ["", f"(curves not drawn: {exc})"]
    if figures:
        lines += ["", "## Learning curves (mean over seeds with a 95% confidence band)", ""]
        lines += [f"![{f.stem}]({f.name})" for f in figures]

    path = out / "results.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(runs, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train every env x seed, then write the table")
    run.add_argument("--envs", nargs="+", default=list(TARGETS))
    run.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    run.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    run.add_argument("--root", type=Path, default=Path("runs/presets"), help="where the run directories go")
    run.add_argument("--extra", action="append", default=[], help="a flag passed to every new clippo train (repeat it)")
    run.add_argument("--clippo", default="clippo", help='the command that runs clippo (e.g. "python -m clippo")')
    run.add_argument(
        "--stop-at-steps",
        type=int,
        default=None,
        help="stop each run (SIGINT: checkpoint, then the final evaluation) once it reaches this many steps",
    )
    run.add_argument("--out", type=Path, default=DEFAULT_OUT / "mujoco")
    table = commands.add_parser("table", help="tabulate finished run directories")
    table.add_argument("run_dirs", nargs="+", type=Path)
    table.add_argument("--out", type=Path, default=DEFAULT_OUT / "mujoco")
    args = parser.parse_args(argv)
    if args.command == "run":
        run_dirs = run_all(args.envs, args.seeds, args.root, args.jobs, args.clippo, args.extra, args.stop_at_steps)
    else:
        run_dirs = args.run_dirs
    print(f"wrote {write_table(run_dirs, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

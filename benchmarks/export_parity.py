#!/usr/bin/env python
"""Export parity: briefly trained agents exported with ``clippo export``, the ONNX graph's actions
(onnxruntime) against ``agent.act(obs, deterministic=True)`` on observations of each run's env.

Each case trains with ``clippo train ENV --total-steps N --seed 1`` (the env's preset; the image
toy env through the Python API, being no registered id), then runs ``clippo export RUN_DIR --json``,
whose check steps 4 envs for 256 steps (1,024 observations; a quarter of the steps with random
actions). Discrete actions must be identical, continuous ones within 1e-5. Writes
``benchmarks/results/export_parity.md`` (and ``.json``) with each case's commands and numbers.
Run it under ``nice`` on a shared machine; about 3 minutes here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_OUT, child_env, command_line, machine_info, machine_markdown, md_table, now, write_json

ROOT = Path(__file__).resolve().parent.parent

#: name -> (env id, extra train flags, total steps, what the case exercises)
CASES = {
    "cartpole": ("CartPole-v1", [], 20480, "discrete actions, MLP"),
    "pendulum": ("Pendulum-v1", ["--normalize-observations"], 20480, "continuous actions, observation normalization"),
    "hopper": ("Hopper-v5", [], 20480, "MuJoCo, continuous actions (3-D, clipped), observation normalization"),
    "minatar": ("MinAtar/Breakout-v1", [], 16384, "bool 10x10x4 grid, its preset's MLP"),
    "minatar-cnn": ("MinAtar/Breakout-v1", ["--encoder", "cnn"], 16384, "bool 10x10x4 grid, MinAtar CNN"),
    "spot": ("SpotImageEnv", [], 4096, "uint8 10x10x1 image, MinAtar CNN (tests/toy_envs.py, Python API)"),
    "atari": ("ALE/Breakout-v5", [], 4096, "Atari uint8 4x84x84 frames, Nature CNN"),
}

# The image toy env is no registered id: this is the Python a user would write for it.
SPOT_SCRIPT = """\
import sys; sys.path.insert(0, "tests")
import json
from clippo import PPO
from clippo.tools.export import export_onnx
from toy_envs import SpotImageEnv
run_dir = {run_dir!r}
agent = PPO(SpotImageEnv, seed=1, num_envs=8, num_steps=64, run_dir=run_dir)
agent.learn({steps}).save(run_dir + "/agent.pt")
print(json.dumps(export_onnx(agent, run_dir + "/policy.onnx").to_dict()))
"""


def run(command: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout, time.perf_counter() - start


def shown_path(path: Path) -> str:
    """A path as the commands in the results show it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run_case(name: str, work: Path) -> dict:
    env_id, flags, steps, what = CASES[name]
    run_dir = work / name
    shown_dir = shown_path(run_dir)
    if name == "spot":
        script = SPOT_SCRIPT.format(run_dir=str(run_dir), steps=steps)
        commands = [[sys.executable, "-c", script]]
        out, seconds = run(commands[0])
        shown = ["python -c '<the Python below>'"]
    else:
        train = [
            "clippo",
            "train",
            env_id,
            "--total-steps",
            str(steps),
            "--seed",
            "1",
            "--run-dir",
            str(run_dir),
            *flags,
        ]
        export = ["clippo", "export", str(run_dir), "-o", str(run_dir / "policy.onnx"), "--json"]
        commands = [[sys.executable, "-m", "clippo", *train[1:]], [sys.executable, "-m", "clippo", *export[1:]]]
        run(commands[0])
        out, seconds = run(commands[1])
        shown = [shlex.join(c).replace(str(run_dir), shown_dir) for c in (train, export)]
    report = json.loads(out.strip().splitlines()[-1])
    return {"case": name, "env_id": env_id, "what": what, "total_steps": steps, "commands": shown,
            "run_dir": shown_dir, "export_seconds": seconds, **report}  # fmt: skip


def markdown(results: list[dict], meta: dict) -> str:
    def difference(r: dict) -> str:
        return "n/a" if r["max_difference"] is None else f"{r['max_difference']:.2e}"

    def agreement(r: dict) -> str:
        return "n/a" if r["agreement"] is None else f"{r['identical']}/{r['observations']} ({r['agreement']:.3f})"

    rows = [
        [r["env_id"], r["what"], f"{r['total_steps']:,}", ", ".join(f"{p['name']} {p['dtype']}" for p in r["inputs"]),
         ", ".join(f"{p['name']} {p['dtype']}" for p in r["outputs"]), r["observations"], agreement(r), difference(r),
         "yes" if r["passed"] else "**no**"]
        for r in results
    ]  # fmt: skip
    lines = [
        "# Export parity: ONNX graph (onnxruntime) vs `agent.act(obs, deterministic=True)`",
        "",
        "Each agent trained briefly (seed 1, the env's preset), then exported with `clippo export`, whose check",
        "steps 4 copies of the run's env for 256 steps (a quarter of them with random actions) and compares the",
        "graph's actions on every observation with the agent's. Required: identical discrete actions, continuous",
        "actions within 1e-5 (absolute).",
        "",
        *md_table(
            [
                "env",
                "what it exercises",
                "train steps",
                "inputs",
                "outputs",
                "observations",
                "identical discrete actions",
                "max continuous difference",
                "passed",
            ],
            rows,
        ),
        "",
        "## Commands",
        "",
    ]
    for r in results:
        lines += [f"- {r['env_id']} ({r['case']}):", "", "  ```bash", *(f"  {c}" for c in r["commands"]), "  ```", ""]
        if r["case"] == "spot":
            script = SPOT_SCRIPT.format(run_dir=r["run_dir"], steps=r["total_steps"])
            lines += ["  ```python", *(f"  {line}" for line in script.splitlines()), "  ```", ""]
    lines += ["## Machine", "", *machine_markdown(meta), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "export", help="run directories go here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "export_parity.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    meta = {"command": command_line(), "date": now(), "machine": machine_info()}
    results = []
    for name in args.cases:
        if (args.work / name).exists():
            raise SystemExit(f"{args.work / name} exists: remove it or pass another --work")
        results.append(run_case(name, args.work))
        r = results[-1]
        print(
            f"{name}: {r['observations']} observations, agreement {r['agreement']}, "
            f"max difference {r['max_difference']}",
            flush=True,
        )
    meta["finished"] = now()
    args.out.write_text(markdown(results, meta))
    write_json(args.out.with_suffix(".json"), {"meta": meta, "results": results})
    print(f"wrote {args.out}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

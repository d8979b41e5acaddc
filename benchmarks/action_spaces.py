#!/usr/bin/env python
"""Action spaces beyond Discrete and Box: invalid-action masking against sb3-contrib's MaskablePPO,
hybrid Dict and MultiBinary actions, and both under ``--nproc 2`` with a resumed checkpoint.

    python benchmarks/action_spaces.py masking --seeds 1 2 3      # clippo vs MaskablePPO
    python benchmarks/action_spaces.py spaces --seeds 1 2 3       # hybrid Dict and MultiBinary
    python benchmarks/action_spaces.py distributed                # --nproc 2, then clippo resume

Each writes ``<part>.json`` into --out (benchmarks/results/action_spaces/), and ``results.md`` is
rewritten from every part's JSON there. See benchmarks/README.md.

masking: on sb3-contrib's ``InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10)`` ("invalid",
which only counts invalid actions: a wrapper here counts them, for both libraries) and on
``clippo.envs.toy.SlotsMethodEnv`` ("slots", whose ``step`` raises on an invalid action), clippo
and MaskablePPO train with MaskablePPO's default hyperparameters (below), each run a child
process of its own (one thread), alternating clippo / MaskablePPO in seed-major order. Reported:
``learn()`` wall time and steps/s, the deterministic evaluation with masks, invalid actions taken.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    child_env,
    command_line,
    emit_result,
    fmt,
    machine_info,
    machine_markdown,
    md_table,
    mean_std,
    median,
    now,
    ratio,
    run_child_script,
    write_json,
)

OUT = DEFAULT_OUT / "action_spaces"
LIBS = ("clippo", "maskable")
LIB_NAMES = {"clippo": "clippo", "maskable": "MaskablePPO"}

#: MaskablePPO's defaults (sb3-contrib 2.x, those of SB3's PPO): one env, 2048-step rollouts,
#: minibatches of 64, 10 epochs, a constant learning rate, separate 64-64 tanh MLPs.
MASKABLE_DEFAULTS = {
    "n_envs": 1, "n_steps": 2048, "batch_size": 64, "n_epochs": 10, "learning_rate": 3e-4, "gamma": 0.99,
    "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
}  # fmt: skip
MASKING_ENVS = ("invalid", "slots")
EVAL_SEED = 10_000

#: hybrid and MultiBinary envs: their built-in presets (clippo.config.ppo_config.ENV_PRESETS), these step counts
SPACES_RUNS = {"clippo/ToolAmount-v0": 200_000, "clippo/Bits-v0": 100_000}
SPACES_OPTIMUM = {"clippo/ToolAmount-v0": 20.0, "clippo/Bits-v0": 8.0}


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------
INVALID_TAKEN = [0]  # invalid actions the envs of this (child) process were given


def make_masking_env(name: str, seed: int):
    """A fresh env of the masking comparison (the same for both libraries)."""
    import gymnasium as gym
    import numpy as np

    if name == "slots":
        from clippo.envs.toy import SlotsMethodEnv

        return SlotsMethodEnv()
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete

    class CountInvalid(gym.Wrapper):
        """Counts the actions that the env's mask forbade (the env itself accepts them)."""

        def step(self, action):
            if int(action) in self.env.unwrapped.invalid_actions:
                INVALID_TAKEN[0] += 1
            return self.env.step(action)

    # The env draws its states from the global numpy RNG and its unseeded action space.
    np.random.seed(seed)
    env = InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10)
    env.action_space.seed(seed)
    return CountInvalid(env)


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def child_masking_clippo(spec: dict[str, Any]) -> dict[str, Any]:
    _single_thread()
    from clippo import PPO

    name, seed, d = spec["env"], spec["seed"], MASKABLE_DEFAULTS
    hyperparameters = {
        "seed": seed, "num_envs": d["n_envs"], "num_steps": d["n_steps"],
        "num_minibatches": d["n_envs"] * d["n_steps"] // d["batch_size"],
        "update_epochs": d["n_epochs"], "learning_rate": d["learning_rate"], "anneal_lr": False, "gamma": d["gamma"],
        "gae_lambda": d["gae_lambda"], "clip_epsilon": d["clip_range"], "clip_value_loss": False,
        "ent_coef": d["ent_coef"], "vf_coef": d["vf_coef"], "max_grad_norm": d["max_grad_norm"], "target_kl": None,
        "normalize_advantages": True, "network": "separate", "hidden_sizes": [64, 64], "activation": "tanh",
        "normalize_observations": False, "normalize_rewards": False, "vector_env": "sync", "torch_threads": 1,
        "checkpoint_every": 0, "tensorboard": False,
    }  # fmt: skip
    counter = iter(range(10**9))
    agent = PPO(
        lambda: make_masking_env(name, seed * 1000 + next(counter)), preset="default", env_id=name, **hyperparameters
    )
    t0 = time.perf_counter()
    agent.learn(spec["total_steps"], progress=False)
    learn_s = time.perf_counter() - t0
    invalid_training = INVALID_TAKEN[0]
    source = agent.action_masks.kind
    result = agent.evaluate(episodes=spec["eval_episodes"], seed=spec["eval_seed"], num_envs=1)
    agent.close()
    return {"learn_s": learn_s, "steps": agent.global_step, "eval_returns": result["returns"], "mask_source": source,
            "invalid_training": invalid_training, "invalid_eval": INVALID_TAKEN[0] - invalid_training}  # fmt: skip


def child_masking_maskable(spec: dict[str, Any]) -> dict[str, Any]:
    _single_thread()
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    name, seed = spec["env"], spec["seed"]
    d = MASKABLE_DEFAULTS
    venv = DummyVecEnv([lambda i=i: Monitor(make_masking_env(name, seed * 1000 + i)) for i in range(d["n_envs"])])
    model = MaskablePPO(
        "MlpPolicy", venv, learning_rate=d["learning_rate"], n_steps=d["n_steps"], batch_size=d["batch_size"],
        n_epochs=d["n_epochs"], gamma=d["gamma"], gae_lambda=d["gae_lambda"], clip_range=d["clip_range"],
        ent_coef=d["ent_coef"], vf_coef=d["vf_coef"], max_grad_norm=d["max_grad_norm"], seed=seed, device="cpu",
        verbose=0,
    )  # fmt: skip
    t0 = time.perf_counter()
    model.learn(total_timesteps=spec["total_steps"])
    learn_s = time.perf_counter() - t0
    invalid_training = INVALID_TAKEN[0]
    eval_env = DummyVecEnv([lambda: Monitor(make_masking_env(name, spec["eval_seed"]))])
    eval_env.seed(spec["eval_seed"])
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=spec["eval_episodes"], deterministic=True,
                                 return_episode_rewards=True, use_masking=True)  # fmt: skip
    return {"learn_s": learn_s, "steps": int(model.num_timesteps), "eval_returns": [float(r) for r in returns],
            "mask_source": "method", "invalid_training": invalid_training,
            "invalid_eval": INVALID_TAKEN[0] - invalid_training}  # fmt: skip


def child_spaces(spec: dict[str, Any]) -> dict[str, Any]:
    _single_thread()
    from clippo import PPO

    agent = PPO(spec["env"], seed=spec["seed"], total_steps=spec["total_steps"], checkpoint_every=0, tensorboard=False)
    t0 = time.perf_counter()
    agent.learn(progress=False)
    learn_s = time.perf_counter() - t0
    result = agent.evaluate(episodes=spec["eval_episodes"], seed=spec["eval_seed"])
    agent.close()
    return {"learn_s": learn_s, "steps": agent.global_step, "eval_returns": result["returns"]}


CHILDREN = {
    "masking-clippo": child_masking_clippo,
    "masking-maskable": child_masking_maskable,
    "spaces-clippo": child_spaces,
}


def run_child(spec: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its output goes to log_path."""
    return run_child_script(__file__, spec, log_path, ("part", "lib", "env", "seed"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------
def slots_baselines(eval_episodes: int, eval_seed: int, episodes: int = 20_000) -> dict[str, float]:
    """Mean best and random-order returns of SlotsEnv (Monte Carlo), and the mean best return of
    the evaluation's own episodes (one env reset with ``eval_seed``, then unseeded resets, as both
    libraries' evaluations play them)."""
    import numpy as np

    from clippo.envs.toy import SlotsEnv

    env, rng = SlotsEnv(), np.random.default_rng(0)
    weights = (env.size - np.arange(env.size)) / env.size
    best, random = [], []
    for i in range(episodes):
        env.reset(seed=i)
        best.append(env.best_return())
        random.append(float(rng.permutation(env.values) @ weights))
    env.reset(seed=eval_seed)
    eval_best = [env.best_return()]
    for _ in range(eval_episodes - 1):
        env.reset()
        eval_best.append(env.best_return())
    return {"best": float(np.mean(best)), "random": float(np.mean(random)), "eval_best": float(np.mean(eval_best))}


def run_masking(args, out: Path) -> dict[str, Any]:
    results = {"meta": meta(), "recipe": MASKABLE_DEFAULTS, "total_steps": args.total_steps,
               "eval_episodes": args.eval_episodes, "slots_baselines": slots_baselines(args.eval_episodes, EVAL_SEED),
               "runs": []}  # fmt: skip
    order = [(seed, env, lib) for seed in args.seeds for env in args.envs for lib in LIBS]
    for i, (seed, env, lib) in enumerate(order, 1):
        spec = {"part": "masking", "lib": lib, "env": env, "seed": seed, "total_steps": args.total_steps,
                "eval_episodes": args.eval_episodes, "eval_seed": EVAL_SEED}  # fmt: skip
        r = run_child(spec, out / "runs" / "logs" / f"masking-{env}-seed{seed}-{lib}.log")
        results["runs"].append(r)
        if r["ok"]:
            log(
                f"[{i}/{len(order)}] {LIB_NAMES[lib]:11} {env:7} seed {seed}: "
                f"{r['steps'] / r['learn_s']:,.0f} steps/s, eval {mean_std(r['eval_returns'])[0]:.3f}, "
                f"invalid actions {r['invalid_training']} + {r['invalid_eval']}"
            )
        else:
            log(f"[{i}/{len(order)}] {LIB_NAMES[lib]:11} {env:7} seed {seed}: FAILED {r['error']}")
        write_json(out / "masking.json", results)
    results["meta"]["finished"] = now()
    write_json(out / "masking.json", results)
    return results


def run_spaces(args, out: Path) -> dict[str, Any]:
    results = {"meta": meta(), "eval_episodes": args.eval_episodes, "runs": []}
    for seed in args.seeds:
        for env, steps in SPACES_RUNS.items():
            spec = {"part": "spaces", "lib": "clippo", "env": env, "seed": seed, "total_steps": steps,
                    "eval_episodes": args.eval_episodes, "eval_seed": EVAL_SEED}  # fmt: skip
            r = run_child(spec, out / "runs" / "logs" / f"spaces-{env.replace('/', '_')}-seed{seed}.log")
            results["runs"].append(r)
            log(
                f"{env} seed {seed}: "
                + (f"eval {mean_std(r['eval_returns'])[0]:.3f} in {r['learn_s']:.1f} s" if r["ok"] else r["error"])
            )
            write_json(out / "spaces.json", results)
    results["meta"]["finished"] = now()
    write_json(out / "spaces.json", results)
    return results


def clippo_cli(
    *args: str, timeout: float = 1800, interrupt_at_step: int | None = None, run_dir: Path | None = None
) -> tuple[int, str]:
    """``python -m clippo ARGS``; with ``interrupt_at_step``, a Ctrl-C (SIGINT to the process
    group: every rank stops at the next update boundary, rank 0 checkpoints) as soon as
    ``run_dir`` holds a periodic checkpoint at or past that step."""
    cmd = [sys.executable, "-m", "clippo", *args]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    start = time.perf_counter()
    if interrupt_at_step is not None:
        while proc.poll() is None and time.perf_counter() - start < timeout:
            steps = [int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt")]
            if steps and max(steps) >= interrupt_at_step:
                os.killpg(proc.pid, signal.SIGINT)
                break
            time.sleep(0.2)
    try:
        output, _ = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    return proc.returncode, output


def run_distributed(args, out: Path) -> dict[str, Any]:
    """Each env trains with --nproc 2, is interrupted (Ctrl-C) once a periodic checkpoint past half
    of its steps exists, and is finished by ``clippo resume`` in one process from the distributed
    run's checkpoint."""
    results = {"meta": meta(), "runs": []}
    runs = {"clippo/Slots-v0": ("65536", ["--num-envs", "4", "--num-steps", "128"]),
            "clippo/ToolAmount-v0": ("262144", [])}  # fmt: skip
    for env, (total, flags) in runs.items():
        run_dir = out / "runs" / "distributed" / env.replace("/", "_")
        shutil.rmtree(run_dir, ignore_errors=True)
        train_args = ["train", env, "--nproc", "2", "--run-dir", str(run_dir), "--seed", "1", "--no-tensorboard",
                      "--total-steps", total, "--checkpoint-every", "5", *flags]  # fmt: skip
        t0 = time.perf_counter()
        code, output = clippo_cli(*train_args, interrupt_at_step=int(total) // 2, run_dir=run_dir)
        train_s = time.perf_counter() - t0
        (run_dir.parent / f"{run_dir.name}-train.log").write_text(output)
        t0 = time.perf_counter()
        resume_code, resume_output = clippo_cli("resume", str(run_dir))
        resume_s = time.perf_counter() - t0
        (run_dir.parent / f"{run_dir.name}-resume.log").write_text(resume_output)
        evaluation = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else None
        resumed_at = next((line for line in resume_output.splitlines() if line.startswith("resuming")), None)
        entry = {"env": env, "command": "clippo " + " ".join(train_args).replace(str(run_dir), "RUN_DIR"),
                 "train_exit": code, "train_s": train_s, "resume_exit": resume_code, "resume_s": resume_s,
                 "resumed": resumed_at,
                 "eval": evaluation and {k: evaluation[k] for k in ("mean_return", "std_return", "episodes")},
        }  # fmt: skip
        results["runs"].append(entry)
        log(
            f"{env}: train exit {code} ({train_s:.0f} s), {resumed_at}, resume exit {resume_code}, eval {entry['eval']}"
        )
        write_json(out / "distributed.json", results)
    results["meta"]["finished"] = now()
    write_json(out / "distributed.json", results)
    return results


def meta() -> dict[str, Any]:
    return {"command": command_line(), "date": now(), "machine": machine_info()}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def masking_summary(results: dict[str, Any]) -> dict[str, Any]:
    summary = {}
    for env in MASKING_ENVS:
        per_lib = {}
        for lib in LIBS:
            runs = [r for r in results["runs"] if r["env"] == env and r["lib"] == lib]
            ok = [r for r in runs if r["ok"]]
            per_lib[lib] = {
                "runs": len(ok), "failed": len(runs) - len(ok),
                "median_sps": median(r["steps"] / r["learn_s"] for r in ok),
                "median_eval": median(mean_std(r["eval_returns"])[0] for r in ok),
                "invalid": sum(r["invalid_training"] + r["invalid_eval"] for r in ok),
            }  # fmt: skip
        if per_lib["clippo"]["runs"] or per_lib["maskable"]["runs"]:
            summary[env] = {
                **per_lib,
                "speedup": ratio(per_lib["clippo"]["median_sps"], per_lib["maskable"]["median_sps"]),
            }
    return summary


def write_markdown(out: Path) -> None:
    lines = ["# Action spaces: masking vs MaskablePPO, hybrid and MultiBinary actions, --nproc 2", ""]
    path = out / "masking.json"
    if path.exists():
        results = json.loads(path.read_text())
        summary = masking_summary(results)
        base = results["slots_baselines"]
        lines += ["## Invalid-action masking: clippo vs sb3-contrib's MaskablePPO", "",
                  *machine_markdown(results["meta"]), "",
                  f"MaskablePPO's default hyperparameters for both ({json.dumps(results['recipe'])}; "
                  "separate 64-64 tanh MLPs, orthogonal init, constant learning rate), "
                  f"{results['total_steps']:,} steps per run, each run a child process of its own, "
                  "alternating clippo / MaskablePPO. Evaluation: deterministic, "
                  f"with the env's masks, {results['eval_episodes']} episodes. "
                  "`invalid`: `InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10)` "
                  "(best return 100; a wrapper counts the masked actions taken); "
                  "`slots`: `clippo.envs.toy.SlotsMethodEnv`, "
                  f"whose step raises on an invalid action (best return {base['best']:.3f} on average, random valid "
                  f"actions {base['random']:.3f}; the best possible on the evaluation's own episodes: "
                  f"{base['eval_best']:.3f}).", ""]  # fmt: skip
        rows = []
        for env, s in summary.items():
            rows.append([env, fmt(s["clippo"]["median_sps"], 0), fmt(s["maskable"]["median_sps"], 0),
                         fmt(s["speedup"], 2, "x"), fmt(s["clippo"]["median_eval"], 3),
                         fmt(s["maskable"]["median_eval"], 3),
                         f"{s['clippo']['invalid']} / {s['maskable']['invalid']}",
                         f"{s['clippo']['failed']} / {s['maskable']['failed']}"])  # fmt: skip
        lines += md_table(["env", "clippo steps/s (median)", "MaskablePPO steps/s (median)", "clippo speed-up",
                           "clippo eval (median of seeds)", "MaskablePPO eval (median of seeds)",
                           "invalid actions taken (clippo / MaskablePPO)", "failed runs"], rows)  # fmt: skip
        lines += ["", "Per run:", ""]
        rows = [[r["env"], r["seed"], LIB_NAMES[r["lib"]], fmt(r["steps"] / r["learn_s"], 0) if r["ok"] else "FAILED",
                 fmt(r["learn_s"], 1) if r["ok"] else r["error"][:120],
                 fmt(mean_std(r["eval_returns"])[0], 3) if r["ok"] else "",
                 f"{r['invalid_training']} + {r['invalid_eval']}" if r["ok"] else "", r.get("mask_source", "")]
                for r in results["runs"]]  # fmt: skip
        lines += md_table(
            ["env", "seed", "library", "steps/s", "learn s", "eval", "invalid (training + eval)", "mask source"], rows
        )
        lines.append("")
    path = out / "spaces.json"
    if path.exists():
        results = json.loads(path.read_text())
        lines += ["## Hybrid Dict and MultiBinary actions (each env's built-in preset)", "",
                  *machine_markdown(results["meta"]), "",
                  "`clippo/ToolAmount-v0`: `Dict(tool=Discrete(3), amount=Box(-1, 1, (1,)))`, optimum 20 per episode "
                  "(random actions 7.8); `clippo/Bits-v0`: `MultiBinary(4)`, optimum 8 (random 4). Both train with "
                  "`clippo train ENV`'s values (clippo's defaults with gamma 0.5 and lambda 0.5, and an initial "
                  "log-std of -1 for ToolAmount: docs/presets.md). "
                  f"Deterministic evaluation, {results['eval_episodes']} episodes.", ""]  # fmt: skip
        rows = []
        for env in SPACES_RUNS:
            runs = [r for r in results["runs"] if r["env"] == env and r["ok"]]
            evals = [mean_std(r["eval_returns"])[0] for r in runs]
            rows.append([env, fmt(SPACES_RUNS[env]), ", ".join(f"{e:.2f}" for e in evals), fmt(median(evals), 2),
                         fmt(SPACES_OPTIMUM[env], 1), fmt(ratio(median(evals), SPACES_OPTIMUM[env]), 3),
                         fmt(median(r["learn_s"] for r in runs), 1)])  # fmt: skip
        lines += md_table(
            ["env", "steps", "eval per seed", "median", "optimum", "median / optimum", "median learn s"], rows
        )
        lines.append("")
    path = out / "distributed.json"
    if path.exists():
        results = json.loads(path.read_text())
        lines += ["## `--nproc 2`, interrupted, resumed in one process", "", *machine_markdown(results["meta"]), "",
                  "Each run: `clippo train ENV --nproc 2 ...`, Ctrl-C (SIGINT to the process group) once a periodic "
                  "checkpoint past half of the steps exists (every rank stops at the next update boundary and rank 0 "
                  "checkpoints), then `clippo resume RUN_DIR` (one process) to the end; `eval` is the final "
                  "`eval.json` (10 deterministic episodes).", ""]  # fmt: skip
        rows = [[r["env"], f"`{r['command']}`", r["train_exit"], r["resumed"] or "n/a", r["resume_exit"],
                 fmt(r["eval"]["mean_return"], 3) if r["eval"] else "n/a"] for r in results["runs"]]  # fmt: skip
        lines += md_table(
            ["env", "command", "train exit (130: interrupted)", "resume", "resume exit", "eval mean return"], rows
        )
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("part", choices=["masking", "spaces", "distributed", "report", "_child"])
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--envs", nargs="+", default=list(MASKING_ENVS), choices=MASKING_ENVS, help="masking envs")
    parser.add_argument("--total-steps", type=int, default=32_768, help="steps per masking run")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.part == "_child":
        spec = json.loads(args.spec)
        emit_result(CHILDREN[f"{spec['part']}-{spec['lib']}"](spec))
        return 0
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = None
    if args.part == "masking":
        results = run_masking(args, out)
    elif args.part == "spaces":
        results = run_spaces(args, out)
    elif args.part == "distributed":
        results = run_distributed(args, out)
    write_markdown(out)
    log(f"wrote {out / 'results.md'}")
    if results is None:
        return 0
    runs = results["runs"]
    if args.part == "distributed":
        return 0 if all(r["resume_exit"] == 0 and r["eval"] for r in runs) else 1
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

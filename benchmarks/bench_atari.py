#!/usr/bin/env python
"""Atari training speed: clippo against Stable-Baselines3 with the PPO paper's Atari recipe.

Both libraries train the same game with the same hyperparameters (8 envs x 128 steps, 4 epochs of
4 minibatches of 256, lr 2.5e-4, clip 0.1, entropy 0.01, value 0.5, Nature CNN shared by the
actor and the critic), each in its own child process, alternating clippo / SB3 / clippo / SB3 ...
Each library steps Atari its own standard way: clippo through its default vector env for Atari
ids (``clippo.envs.atari``), SB3 through ``make_atari_env`` (AtariWrapper: no-op reset, frame skip 4
with max-pooling, 84x84 grayscale, episodic life, fire reset, reward clipping) and
``VecFrameStack(4)`` in a DummyVecEnv. Reported: training steps per second (whole ``learn`` call,
after a warm-up update), and the env-only rate of each library's vector env (random actions).

    python benchmarks/bench_atari.py --env ALE/Breakout-v5 --steps 16384 --rounds 2 --threads 1 2

writes atari_speed.md / atari_speed.json into --out (benchmarks/results/atari_speed/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    command_line,
    emit_result,
    fmt,
    machine_info,
    machine_markdown,
    md_table,
    median,
    now,
    parse_child_output,
    ratio,
    write_json,
)

RECIPE = dict(
    num_envs=8,
    num_steps=128,
    num_minibatches=4,
    update_epochs=4,
    learning_rate=2.5e-4,
    clip_epsilon=0.1,
    ent_coef=0.01,
    vf_coef=0.5,
    gamma=0.99,
    gae_lambda=0.95,
    max_grad_norm=0.5,
)


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def child_clippo(spec: dict[str, Any]) -> dict[str, Any]:
    _threads(spec["threads"])
    from clippo import PPO

    agent = PPO(
        spec["env"],
        seed=spec["seed"],
        torch_threads=spec["threads"],
        tensorboard=False,
        precision=spec.get("precision", "fp32"),
        device=spec.get("device", "cpu"),
        **RECIPE,
    )
    batch = agent.batch_size
    agent.learn(batch, progress=False)  # warm-up: env start, first allocations
    start = time.perf_counter()
    agent.learn(spec["steps"], progress=False)
    elapsed = time.perf_counter() - start
    result = {
        "sps": spec["steps"] / elapsed,
        "seconds": elapsed,
        "vector_env": type(agent.env_runner().envs).__name__,
        "encoder": type(agent.model.encoder).__name__,
    }
    agent.close()
    return result


def _sb3_env(spec: dict[str, Any]):
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    # AtariWrapper skips frames itself: the base env must not (v5 ids skip 4 by default).
    kwargs = {"frameskip": 1} if spec["env"].startswith("ALE/") else {}
    return VecFrameStack(
        make_atari_env(spec["env"], n_envs=RECIPE["num_envs"], seed=spec["seed"], env_kwargs=kwargs), 4
    )


def child_sb3(spec: dict[str, Any]) -> dict[str, Any]:
    _threads(spec["threads"])
    from stable_baselines3 import PPO as SB3PPO

    env = _sb3_env(spec)
    model = SB3PPO(
        "CnnPolicy",
        env,
        n_steps=RECIPE["num_steps"],
        batch_size=RECIPE["num_envs"] * RECIPE["num_steps"] // RECIPE["num_minibatches"],
        n_epochs=RECIPE["update_epochs"],
        learning_rate=RECIPE["learning_rate"],
        clip_range=RECIPE["clip_epsilon"],
        ent_coef=RECIPE["ent_coef"],
        vf_coef=RECIPE["vf_coef"],
        gamma=RECIPE["gamma"],
        gae_lambda=RECIPE["gae_lambda"],
        max_grad_norm=RECIPE["max_grad_norm"],
        seed=spec["seed"],
        device=spec.get("device", "cpu"),
        verbose=0,
    )
    batch = RECIPE["num_envs"] * RECIPE["num_steps"]
    model.learn(batch)  # warm-up
    start = time.perf_counter()
    model.learn(spec["steps"], reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    env.close()
    return {"sps": spec["steps"] / elapsed, "seconds": elapsed, "vector_env": "DummyVecEnv+VecFrameStack"}


def _env_rate(envs, sample, steps: int) -> float:
    envs.reset(seed=0)
    for _ in range(20):
        envs.step(sample())
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(sample())
    return steps * RECIPE["num_envs"] / (time.perf_counter() - start)


def child_env_clippo(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from clippo.envs.make import make_vector_env

    envs = make_vector_env(spec["env"], RECIPE["num_envs"], "auto")
    rng = np.random.default_rng(0)
    n = envs.single_action_space.n
    rate = _env_rate(envs, lambda: rng.integers(n, size=RECIPE["num_envs"]), spec["env_steps"])
    kind = type(envs).__name__
    envs.close()
    return {"sps": rate, "vector_env": kind}


def child_env_sb3(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    env = _sb3_env(spec)
    rng = np.random.default_rng(0)
    n = env.action_space.n
    env.reset()
    for _ in range(20):
        env.step(rng.integers(n, size=RECIPE["num_envs"]))
    start = time.perf_counter()
    for _ in range(spec["env_steps"]):
        env.step(rng.integers(n, size=RECIPE["num_envs"]))
    rate = spec["env_steps"] * RECIPE["num_envs"] / (time.perf_counter() - start)
    env.close()
    return {"sps": rate, "vector_env": "DummyVecEnv+VecFrameStack"}


CHILDREN = {
    "clippo": child_clippo,
    # bf16 mixed precision (clippo's --precision bf16); SB3 as it ships, fp32
    "clippo_bf16": lambda spec: child_clippo({**spec, "precision": "bf16"}),
    "sb3": child_sb3,
    "env_clippo": child_env_clippo,
    "env_sb3": child_env_sb3,
}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    threads = str(spec["threads"])
    env = {
        **__import__("os").environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    result = parse_child_output(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"child {spec['kind']} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ALE/Breakout-v5")
    parser.add_argument(
        "--steps", type=int, default=16384, help="timed training steps per run (after one warm-up update)"
    )
    parser.add_argument("--env-steps", type=int, default=1000, help="vector steps of the env-only measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "atari_speed")
    parser.add_argument(
        "--bf16", action="store_true", help="also time clippo in bf16 mixed precision (CPUs with AVX512-BF16 or AMX)"
    )
    parser.add_argument(
        "--device", default="cpu", help="where both libraries train: cpu or cuda (the envs step on the CPU)"
    )
    parser.add_argument(
        "--no-sb3", action="store_true", help="time clippo alone (e.g. fp32 against bf16 on a GPU machine)"
    )
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        spec = json.loads(args._child)
        emit_result(CHILDREN[spec["kind"]](spec))
        return 0

    meta = {
        "command": command_line(),
        "date": now(),
        "machine": machine_info(),
        "recipe": RECIPE,
        "device": args.device,
    }
    kinds = ["env_clippo", "env_sb3", "clippo", *(["clippo_bf16"] if args.bf16 else []), "sb3"]
    if args.no_sb3:
        kinds = [kind for kind in kinds if "sb3" not in kind]
    runs: list[dict[str, Any]] = []
    for threads in args.threads:
        for round_index in range(args.rounds):
            for kind in kinds:
                spec = {
                    "kind": kind,
                    "env": args.env,
                    "steps": args.steps,
                    "env_steps": args.env_steps,
                    "threads": threads,
                    "seed": args.seed,
                    "device": args.device,
                }
                result = run_child(spec)
                runs.append({**spec, **result, "round": round_index})
                print(f"threads {threads} round {round_index} {kind}: {result['sps']:.1f} steps/s", flush=True)
    meta["finished"] = now()
    summary = []
    for threads in args.threads:
        rates = {
            kind: median(r["sps"] for r in runs if r["kind"] == kind and r["threads"] == threads)
            for kind in CHILDREN
            if any(r["kind"] == kind for r in runs)
        }
        sb3 = rates.get("sb3")
        bf16 = {"ratio_bf16": ratio(rates["clippo_bf16"], sb3)} if "clippo_bf16" in rates else {}
        summary.append({"threads": threads, **rates, "ratio": ratio(rates["clippo"], sb3), **bf16})
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "atari_speed.json", {"meta": meta, "runs": runs, "summary": summary})
    lines = [
        f"# Atari training speed: clippo vs Stable-Baselines3 ({args.env})",
        "",
        *machine_markdown(meta),
        f"- device: {args.device} (the networks and the update; the envs step on the CPU)",
        "",
        "Same recipe for both (the PPO paper's Atari settings, Nature CNN shared by actor and critic): "
        + ", ".join(f"`{k}={v}`" for k, v in RECIPE.items())
        + ".",
        f"Training steps/s: median over {args.rounds} alternating rounds of {args.steps} timed steps each "
        "(after a warm-up update); env-only: random actions in each library's own vector env.",
        "",
    ]
    lines += md_table(
        [
            "torch threads",
            "clippo train steps/s",
            "SB3 train steps/s",
            "clippo / SB3",
            "clippo bf16 train steps/s",
            "clippo bf16 / SB3",
            "clippo env-only steps/s",
            "SB3 env-only steps/s",
        ],
        [
            [
                s["threads"],
                fmt(s["clippo"], 1),
                fmt(s.get("sb3"), 1),
                fmt(s["ratio"], 2, "x"),
                fmt(s["clippo_bf16"], 1) if "clippo_bf16" in s else "-",
                fmt(s["ratio_bf16"], 2, "x") if "ratio_bf16" in s else "-",
                fmt(s["env_clippo"], 0),
                fmt(s.get("env_sb3"), 0),
            ]
            for s in summary
        ],
    )
    lines += ["", "Every run:", ""]
    lines += md_table(
        ["threads", "round", "what", "steps/s", "vector env"],
        [[r["threads"], r["round"], r["kind"], fmt(r["sps"], 1), r.get("vector_env", "")] for r in runs],
    )
    (args.out / "atari_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

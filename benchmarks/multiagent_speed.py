"""Training speed on ``mpe2.simple_spread_v3``: clippo's multi-agent PPO against SB3 PPO with
parameter sharing through SuperSuit, and the env alone, measured in the same run (issue #33's
target 1).

The recipe, the same for both learners: N=3 agents, 25 cycles, discrete actions; 8 env copies x
128 steps (3072 agent steps per update), 4 epochs of minibatches of 512 rows, lr 3e-4, gamma
0.99, lambda 0.95, entropy 0.01, clip 0.2, separate 64-64 tanh networks, one policy shared by the
agents, a local critic; one torch thread each, the envs stepped in the training process.

- ``env``: the 8 envs stepped with uniformly random actions through PettingZoo's Parallel API
  (``env.step(actions)``); agent steps / second. The issue's target compares clippo with this.
- ``env-direct``: the same, stepped as clippo's runner steps them
  (``clippo.multiagent.pettingzoo.DirectParallelAdapter``: the same AEC steps as the
  ``aec_to_parallel`` conversion, beneath its order and bounds checking wrappers, whose checks
  it keeps). clippo / env-direct is the share of clippo's time spent in the env.
- ``clippo``: ``PPO("mpe2.simple_spread_v3", ...)`` learning ``--steps`` agent steps.
- ``sb3``: ``supersuit.pettingzoo_env_to_vec_env_v1`` + ``concat_vec_envs_v1(..., 8, num_cpus=1,
  base_class="stable_baselines3")`` (every agent a row: 24 rows x 128 steps), SB3's PPO learning
  the same steps. SB3's ``seed=`` fails on SuperSuit 3.11's vec env, so torch and numpy are seeded
  directly.

Each measurement is a fresh single-threaded child process (after a one-update warm-up, the timed
``learn``); the three kinds alternate within each round, ``--rounds`` rounds, medians reported.
Writes ``multiagent_speed.json`` and ``.md`` to ``--out``. Needs ``clippo[multiagent]``,
``stable-baselines3`` and ``supersuit==3.11.*``.

    python benchmarks/multiagent_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

ENV_KWARGS = {"N": 3, "max_cycles": 25, "continuous_actions": False}
NUM_ENVS, NUM_STEPS, MINIBATCH, EPOCHS = 8, 128, 512, 4
AGENT_STEPS_PER_UPDATE = NUM_ENVS * NUM_STEPS * ENV_KWARGS["N"]
KINDS = ("env", "env-direct", "clippo", "sb3")


def make_env():
    from mpe2 import simple_spread_v3

    return simple_spread_v3.parallel_env(**ENV_KWARGS)


def child_env_only(spec: dict) -> dict:
    import numpy as np

    envs = [make_env() for _ in range(NUM_ENVS)]
    for i, env in enumerate(envs):
        env.reset(seed=spec["seed"] + i)
    rng = np.random.default_rng(spec["seed"])
    steps = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while steps < spec["steps"]:
        for env in envs:
            actions = {agent: int(rng.integers(5)) for agent in env.agents}
            env.step(actions)
            steps += len(actions)
            if not env.agents:
                env.reset()
    return {
        "agent_steps": steps,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }


def child_env_direct(spec: dict) -> dict:
    import numpy as np

    from clippo.multiagent.pettingzoo import DirectParallelAdapter, make_adapter

    adapters = [make_adapter(make_env()) for _ in range(NUM_ENVS)]
    assert all(isinstance(adapter, DirectParallelAdapter) for adapter in adapters)
    acting = [adapter.reset(spec["seed"] + i) for i, adapter in enumerate(adapters)]
    rng = np.random.default_rng(spec["seed"])
    steps = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while steps < spec["steps"]:
        for i, adapter in enumerate(adapters):
            actions = {agent: int(rng.integers(5)) for agent in acting[i]}
            _, acting[i], over = adapter.step(actions)
            steps += len(actions)
            if over:
                acting[i] = adapter.reset(None)
    return {
        "agent_steps": steps,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
    }


def child_clippo(spec: dict) -> dict:
    import torch

    from clippo import PPO

    torch.set_num_threads(1)
    agent = PPO(
        "mpe2.simple_spread_v3", seed=spec["seed"], env_kwargs=ENV_KWARGS, num_envs=NUM_ENVS, num_steps=NUM_STEPS,
        num_minibatches=AGENT_STEPS_PER_UPDATE // MINIBATCH, update_epochs=EPOCHS, learning_rate=3e-4, gamma=0.99,
        gae_lambda=0.95, ent_coef=0.01, clip_epsilon=0.2, network="separate", hidden_sizes=[64, 64], activation="tanh",
        critic="local", tensorboard=False, checkpoint_every=0,
    )  # fmt: skip
    agent.learn(AGENT_STEPS_PER_UPDATE, progress=False)  # warm-up: first calls, allocations
    before = agent.global_step
    start, cpu_start = time.perf_counter(), time.process_time()
    agent.learn(spec["steps"], progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    agent.close()
    return {"agent_steps": agent.global_step - before, "seconds": seconds, "cpu_seconds": cpu}


def child_sb3(spec: dict) -> dict:
    import numpy as np
    import supersuit as ss
    import torch
    from stable_baselines3 import PPO as SB3PPO

    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])
    vec = ss.pettingzoo_env_to_vec_env_v1(make_env())
    envs = ss.concat_vec_envs_v1(vec, NUM_ENVS, num_cpus=1, base_class="stable_baselines3")
    model = SB3PPO(
        "MlpPolicy", envs, n_steps=NUM_STEPS, batch_size=MINIBATCH, n_epochs=EPOCHS, learning_rate=3e-4, gamma=0.99,
        gae_lambda=0.95, ent_coef=0.01, clip_range=0.2, device="cpu", verbose=0,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh},
    )  # fmt: skip
    model.learn(AGENT_STEPS_PER_UPDATE)  # warm-up
    before = model.num_timesteps
    start, cpu_start = time.perf_counter(), time.process_time()
    model.learn(spec["steps"], reset_num_timesteps=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    envs.close()
    return {"agent_steps": model.num_timesteps - before, "seconds": seconds, "cpu_seconds": cpu}


def child(spec: dict) -> int:
    kinds = {"env": child_env_only, "env-direct": child_env_direct, "clippo": child_clippo, "sb3": child_sb3}
    result = kinds[spec["kind"]](spec)
    result["agent_steps_per_s"] = result["agent_steps"] / result["seconds"]
    # per CPU second of the (single-threaded) process: less sensitive to other jobs on the machine
    result["agent_steps_per_cpu_s"] = result["agent_steps"] / result["cpu_seconds"]
    _common.emit_result(result)
    return 0


def measure(spec: dict) -> dict:
    return _common.measure_child(__file__, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps", type=int, default=10 * AGENT_STEPS_PER_UPDATE, help="timed agent steps per measurement"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--out", type=Path, default=_common.DEFAULT_OUT / "multiagent_speed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    meta = {"command": _common.command_line(), "date": _common.now(), "load_average_at_start": os.getloadavg()}
    meta["packages"] = {
        name: _common.package_version(name)
        for name in ("torch", "pettingzoo", "mpe2", "stable-baselines3", "supersuit")
    }
    runs: dict[str, list[dict]] = {kind: [] for kind in args.kinds}
    for round_index in range(args.rounds):
        for kind in args.kinds:
            result = measure({"kind": kind, "steps": args.steps, "seed": args.seed + round_index})
            runs[kind].append(result)
            rate = result.get("agent_steps_per_s")
            print(
                f"round {round_index + 1}: {kind}: "
                + (f"{rate:,.0f} agent steps/s" if rate else result.get("error", "?")),
                flush=True,
            )
    meta["finished"] = _common.now()
    meta["load_average_at_end"] = os.getloadavg()
    medians = {kind: _common.median(r.get("agent_steps_per_s") for r in runs[kind]) for kind in args.kinds}
    cpu_medians = {kind: _common.median(r.get("agent_steps_per_cpu_s") for r in runs[kind]) for kind in args.kinds}
    data = {
        "meta": meta,
        "settings": {"steps": args.steps, "rounds": args.rounds, "seed": args.seed},
        "median_agent_steps_per_s": medians,
        "median_agent_steps_per_cpu_s": cpu_medians,
        "cpu_clippo_over_sb3": _common.ratio(cpu_medians.get("clippo"), cpu_medians.get("sb3")),
        "cpu_clippo_over_env": _common.ratio(cpu_medians.get("clippo"), cpu_medians.get("env")),
        "clippo_over_sb3": _common.ratio(medians.get("clippo"), medians.get("sb3")),
        "clippo_over_env": _common.ratio(medians.get("clippo"), medians.get("env")),
        "cpu_clippo_over_env_direct": _common.ratio(cpu_medians.get("clippo"), cpu_medians.get("env-direct")),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "multiagent_speed.json", data)
    lines = [
        "# simple_spread_v3 (N=3): agent steps per second",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; load average at start {_common.fmt_load(meta['load_average_at_start'])}, "
        f"at end {_common.fmt_load(meta['load_average_at_end'])}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in meta["packages"].items()),
        "",
        *_common.md_table(
            ["kind", "median agent steps/s", "runs", "median agent steps per CPU second"],
            [
                [
                    kind,
                    _common.fmt(medians[kind], 0),
                    ", ".join(_common.fmt(r.get("agent_steps_per_s"), 0) for r in runs[kind]),
                    _common.fmt(cpu_medians[kind], 0),
                ]
                for kind in args.kinds
            ],
        ),
        "",
        f"clippo / SB3+SuperSuit: {_common.fmt(data['clippo_over_sb3'])} (target >= 1.5); "
        f"clippo / env alone: {_common.fmt(data['clippo_over_env'])} (target >= 0.75); per CPU second: "
        f"{_common.fmt(data['cpu_clippo_over_sb3'])} and {_common.fmt(data['cpu_clippo_over_env'])}; "
        f"clippo / env-direct per CPU second: {_common.fmt(data['cpu_clippo_over_env_direct'])} (the share of "
        "clippo's time in the env, stepped as clippo steps it)",
    ]
    (args.out / "multiagent_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cooperative learning on ``mpe2.simple_spread_v3`` (N=3): clippo's IPPO and MAPPO against SB3
PPO with parameter sharing through SuperSuit, the same agent steps and recipe (issue #33's
target 2).

Each (learner, seed) is a fresh single-threaded child process: it trains for ``--steps`` agent
steps with the recipe of ``multiagent_speed.py`` (8 env copies x 128 steps, 4 epochs of
minibatches of 512 rows, lr 3e-4, gamma 0.99, lambda 0.95, entropy 0.01, clip 0.2, separate
64-64 tanh networks, one shared policy; clippo's learning rate anneals as its preset does, SB3's
is constant as its default), then plays ``--episodes`` deterministic episodes on env seeds
10000, 10001, ... (the same for every learner) and reports the mean team return (the sum of all
agents' rewards per episode). Writes ``multiagent_learning.json`` and ``.md`` to ``--out``.

    python benchmarks/multiagent_learning.py --steps 2000000 --seeds 1 2 3
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
from multiagent_speed import AGENT_STEPS_PER_UPDATE, ENV_KWARGS, EPOCHS, MINIBATCH, NUM_ENVS, NUM_STEPS, make_env

LEARNERS = ("clippo-local", "clippo-centralized", "sb3")
EVAL_SEED = 10_000


def team_returns(act, episodes: int) -> list[float]:
    """Deterministic episodes on env seeds EVAL_SEED + i: ``act(agent, obs)`` gives each action."""
    env = make_env()
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED + episode)
        total = 0.0
        while env.agents:
            obs, rewards, _, _, _ = env.step({agent: act(agent, obs[agent]) for agent in env.agents})
            total += sum(rewards.values())
        returns.append(total)
    env.close()
    return returns


def child(spec: dict) -> int:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    if spec["learner"].startswith("clippo"):
        from clippo import PPO

        agent = PPO(
            "mpe2.simple_spread_v3", seed=spec["seed"], env_kwargs=ENV_KWARGS, num_envs=NUM_ENVS, num_steps=NUM_STEPS,
            num_minibatches=AGENT_STEPS_PER_UPDATE // MINIBATCH, update_epochs=EPOCHS, learning_rate=3e-4, gamma=0.99,
            gae_lambda=0.95, ent_coef=0.01, clip_epsilon=0.2, network="separate", hidden_sizes=[64, 64],
            activation="tanh", critic=spec["learner"].split("-")[1], tensorboard=False, checkpoint_every=0,
        )  # fmt: skip
        agent.learn(spec["steps"], progress=False)
        steps = agent.global_step

        def act(name, obs):
            return agent.act({name: obs}, deterministic=True)[name]
    else:
        import supersuit as ss
        from stable_baselines3 import PPO as SB3PPO

        torch.manual_seed(spec["seed"])
        np.random.seed(spec["seed"])
        envs = ss.concat_vec_envs_v1(
            ss.pettingzoo_env_to_vec_env_v1(make_env()), NUM_ENVS, num_cpus=1, base_class="stable_baselines3"
        )
        model = SB3PPO(
            "MlpPolicy", envs, n_steps=NUM_STEPS, batch_size=MINIBATCH, n_epochs=EPOCHS, learning_rate=3e-4, gamma=0.99,
            gae_lambda=0.95, ent_coef=0.01, clip_range=0.2, device="cpu", verbose=0,
            policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh},
        )  # fmt: skip
        model.learn(spec["steps"])
        steps = model.num_timesteps

        def act(name, obs):
            return int(model.predict(obs, deterministic=True)[0])

    train_s = time.perf_counter() - start
    returns = team_returns(act, spec["episodes"])
    _common.emit_result({"agent_steps": steps, "train_s": train_s, "mean_team_return": float(np.mean(returns)),
                         "std_team_return": float(np.std(returns)), "returns": returns})  # fmt: skip
    return 0


def measure(spec: dict) -> dict:
    return _common.measure_child(__file__, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2_000_000, help="agent steps each learner trains for")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--episodes", type=int, default=50, help="deterministic evaluation episodes")
    parser.add_argument("--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS))
    parser.add_argument("--out", type=Path, default=_common.DEFAULT_OUT / "multiagent_learning")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    meta = {"command": _common.command_line(), "date": _common.now(), "load_average_at_start": os.getloadavg()}
    runs: dict[str, list[dict]] = {learner: [] for learner in args.learners}
    for seed in args.seeds:
        for learner in args.learners:
            result = measure({"learner": learner, "seed": seed, "steps": args.steps, "episodes": args.episodes})
            runs[learner].append({"seed": seed, **result})
            value = result.get("mean_team_return")
            print(
                f"seed {seed}: {learner}: "
                + (f"team return {value:.2f}" if value is not None else result.get("error", "?")),
                flush=True,
            )
    meta["finished"] = _common.now()
    medians = {learner: _common.median(r.get("mean_team_return") for r in runs[learner]) for learner in args.learners}
    data = {"meta": meta, "settings": {k: v for k, v in vars(args).items() if k != "child"} | {"out": str(args.out)},
            "median_team_return": medians, "runs": runs}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "multiagent_learning.json", data)
    rows = [
        [
            learner,
            _common.fmt(medians[learner]),
            ", ".join(_common.fmt(r.get("mean_team_return")) for r in runs[learner]),
        ]
        for learner in args.learners
    ]
    lines = [
        f"# simple_spread_v3 (N=3): mean team return after {args.steps:,} agent steps",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; {args.episodes} deterministic episodes per run, env seeds {EVAL_SEED}...",
        "",
        *_common.md_table(["learner", "median over seeds", f"per seed ({', '.join(map(str, args.seeds))})"], rows),
    ]
    (args.out / "multiagent_learning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

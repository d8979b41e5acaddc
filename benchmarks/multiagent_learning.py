"""Cooperative learning on ``mpe2.simple_spread_v3`` (N=3): clippo's preset, as IPPO
(``critic="local"``) and MAPPO (``critic="centralized"``), against SB3 PPO with parameter sharing
through SuperSuit, the same agent steps (issue #33's target 2).

Each (learner, seed) is a fresh single-threaded child process: it trains for ``--steps`` agent
steps (default: the preset's ``total_steps``), then plays ``--episodes`` deterministic episodes
on env seeds 10000, 10001, ... (the same for every learner) and reports the mean team return
(the sum of all agents' rewards per episode).

- clippo: ``PPO("mpe2.simple_spread_v3", seed=seed, critic=...)``: everything else from the
  preset (``clippo train mpe2.simple_spread_v3``; ``clippo presets``).
- SB3: the recipe of ``multiagent_speed.py`` (8 env copies x 128 steps, 4 epochs of minibatches
  of 512 rows, lr 3e-4 constant as its default, gamma 0.99, lambda 0.95, entropy 0.01, clip
  0.2, separate 64-64 tanh networks, one shared policy).

The training curves (mean team return of the episodes finished in each rollout, stochastic
actions) come from clippo's per-update metrics and from SB3's ``VecMonitor`` (each SuperSuit row
is one agent; all agents of simple_spread end together, so a team's return is N times the mean
of its agents'). Writes ``multiagent_learning.json``, ``.md`` and ``.png`` to ``--out``, after
every run (a run cut short keeps what finished).

    python benchmarks/multiagent_learning.py --seeds 1000 1001 1002
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
from multiagent_speed import ENV_KWARGS, EPOCHS, MINIBATCH, NUM_ENVS, NUM_STEPS, make_env

LEARNERS = ("clippo-local", "clippo-centralized", "sb3")
EVAL_SEED = 10_000
ENV = "mpe2.simple_spread_v3"


def preset_steps() -> int:
    from clippo.config.ppo_config import ENV_PRESETS

    return int(ENV_PRESETS[ENV]["total_steps"])


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
    curve: list[tuple[int, float]] = []  # (agent steps, mean team return of the episodes of that rollout)
    if spec["learner"].startswith("clippo"):
        from clippo import PPO

        agent = PPO(ENV, seed=spec["seed"], critic=spec["learner"].split("-")[1], tensorboard=False,
                    checkpoint_every=0)  # fmt: skip
        if agent.config.env_kwargs != ENV_KWARGS:  # the evaluation env must be the one trained on
            raise SystemExit(f"the preset's env_kwargs {agent.config.env_kwargs} are not {ENV_KWARGS}")

        def record(learner, metrics):
            if metrics["episodes"]:
                curve.append((int(metrics["global_step"]), float(metrics["episode_return"])))

        agent.learn(spec["steps"], progress=False, callback=record)
        steps = agent.global_step

        def act(name, obs):
            return agent.act({name: obs}, deterministic=True)[name]
    else:
        import supersuit as ss
        from stable_baselines3 import PPO as SB3PPO
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.vec_env import VecMonitor

        torch.manual_seed(spec["seed"])
        np.random.seed(spec["seed"])
        envs = VecMonitor(ss.concat_vec_envs_v1(
            ss.pettingzoo_env_to_vec_env_v1(make_env()), NUM_ENVS, num_cpus=1, base_class="stable_baselines3"
        ))  # fmt: skip
        model = SB3PPO(
            "MlpPolicy", envs, n_steps=NUM_STEPS, batch_size=MINIBATCH, n_epochs=EPOCHS, learning_rate=3e-4, gamma=0.99,
            gae_lambda=0.95, ent_coef=0.01, clip_range=0.2, device="cpu", verbose=0,
            policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh},
        )  # fmt: skip

        class Record(BaseCallback):
            def _on_step(self) -> bool:
                returns = [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
                if returns:
                    self.pending.extend(returns)
                return True

            def _on_rollout_start(self) -> None:
                self.pending: list[float] = []

            def _on_rollout_end(self) -> None:
                if self.pending:
                    curve.append((int(self.num_timesteps), ENV_KWARGS["N"] * float(np.mean(self.pending))))

        model.learn(spec["steps"], callback=Record())
        steps = model.num_timesteps

        def act(name, obs):
            return int(model.predict(obs, deterministic=True)[0])

    train_s = time.perf_counter() - start
    returns = team_returns(act, spec["episodes"])
    _common.emit_result({"agent_steps": steps, "train_s": train_s, "mean_team_return": float(np.mean(returns)),
                         "std_team_return": float(np.std(returns)), "returns": returns, "curve": curve})  # fmt: skip
    return 0


def measure(spec: dict) -> dict:
    return _common.measure_child(__file__, spec)


def plot(runs: dict[str, list[dict]], steps: int, path: Path) -> None:
    """Each learner's training curves (one line per seed, smoothed over 10 rollouts) and its
    deterministic evaluations at the end (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    for (learner, results), color in zip(runs.items(), ("tab:blue", "tab:orange", "tab:gray"), strict=False):
        for index, run in enumerate(results):
            curve = run.get("curve") or []
            if curve:
                x, y = np.array(curve).T
                smooth = np.convolve(y, np.ones(10) / 10, mode="valid") if len(y) >= 10 else y
                ax.plot(x[len(x) - len(smooth):], smooth, color=color, alpha=0.7,
                        label=f"{learner} (training, stochastic)" if index == 0 else None)  # fmt: skip
            if run.get("mean_team_return") is not None:
                label = f"{learner} (deterministic, end of run)" if index == 0 else None
                ax.scatter([run["agent_steps"]], [run["mean_team_return"]], color=color, marker="o", edgecolor="k",
                           zorder=3, label=label)  # fmt: skip
    ax.set_xlabel("agent steps")
    ax.set_ylabel("mean team return")
    ax.set_title(f"mpe2.simple_spread_v3 (N=3): {steps:,} agent steps per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(args, meta: dict, runs: dict[str, list[dict]]) -> list[str]:
    medians = {learner: _common.median(r.get("mean_team_return") for r in runs[learner]) for learner in args.learners}
    data = {"meta": meta, "settings": {k: v for k, v in vars(args).items() if k != "child"} | {"out": str(args.out)},
            "median_team_return": medians, "runs": runs}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "multiagent_learning.json", data)
    seeds = args.seeds
    rows = []
    for learner in args.learners:
        by_seed = {r["seed"]: r for r in runs[learner]}
        rows.append(
            [learner, _common.fmt(medians[learner])]
            + [_common.fmt(by_seed[s].get("mean_team_return")) if s in by_seed else "-" for s in seeds]
            + [_common.fmt(_common.median(r.get("train_s") for r in runs[learner]), 0)]
        )
    lines = [
        f"# simple_spread_v3 (N=3): mean team return after {args.steps:,} agent steps",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}" + (f" to {meta['finished']}" if meta.get("finished") else " (unfinished)"),
        f"- {args.episodes} deterministic episodes per run, env seeds {EVAL_SEED}...{EVAL_SEED + args.episodes - 1}; "
        "clippo: the preset (`clippo train mpe2.simple_spread_v3`) with its --critic; SB3+SuperSuit: the same recipe "
        "(constant lr)",
        "",
        *_common.md_table(
            ["learner", "median over seeds", *[f"seed {s}" for s in seeds], "median train seconds"], rows
        ),
        "",
        "![curves](multiagent_learning.png)",
    ]
    (args.out / "multiagent_learning.md").write_text("\n".join(lines) + "\n")
    if any(r.get("curve") for results in runs.values() for r in results):
        plot(runs, args.steps, args.out / "multiagent_learning.png")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="agent steps each learner trains for (default: the "
                        "preset's total_steps)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002])
    parser.add_argument("--episodes", type=int, default=50, help="deterministic evaluation episodes")
    parser.add_argument("--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS))
    parser.add_argument("--out", type=Path, default=_common.DEFAULT_OUT / "multiagent_learning")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.steps is None:
        args.steps = preset_steps()
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
            write(args, meta, runs)
    meta["finished"] = _common.now()
    print("\n".join(write(args, meta, runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

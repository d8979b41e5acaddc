"""Where a rollout's time goes: clippo's collection loop with a timer around each part.

The loop below mirrors ``FastEnvRunner.collect`` (clippo/fastpath/rollout.py; plus the critic pass
and GAE that ``clippo.training.loop.train`` runs after it) step by step, on the Zoo CartPole
recipe's network with N envs, and reports microseconds per vector step for each part, medians
over rounds. Keep it in step with ``clippo/fastpath/rollout.py`` when that changes.

    python benchmarks/rollout_breakdown.py --envs 64 --steps 128 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import bench_sb3

    from clippo import PPO
    from clippo.core.advantages import compute_gae
    from clippo.fastpath.numpy_mlp import NumpyActor
    from clippo.fastpath.sampling import numpy_sampler

    recipe = {**bench_sb3.recipe_for("CartPole-v1", None), "n_envs": args.envs, "n_steps": args.steps}
    agent = PPO("CartPole-v1", preset="default", **bench_sb3.clippo_hyperparameters(recipe, 1))
    runner, buffer, policy = agent.env_runner(), agent.new_rollout_buffer(), agent.model
    envs, distribution = runner.envs, policy.distribution
    clock = time.perf_counter
    times: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = clock()
        times[name] = times.get(name, 0.0) + now - since
        return now

    @torch.inference_mode()
    def rollout() -> None:
        t = clock()
        noise = distribution.noise((args.steps, args.envs), agent.generator).numpy()
        actor = NumpyActor(policy)
        t = lap("noise and actor copy", t)
        buffer.all_obs[0] = runner.next_obs
        act = actor.for_rows(args.envs)
        rows = zip(
            buffer.network_inputs, buffer.params, noise, buffer.actions,
            buffer.all_obs[1:], buffer.raw_rewards, buffer.terminated, buffer.truncated, strict=False,
        )  # fmt: skip
        for inputs, params, step_noise, actions_t, next_obs_t, rewards_t, terminated_t, truncated_t in rows:
            act(inputs, params)
            t = lap("actor (numpy)", t)
            actions = numpy_sampler(distribution)(params, step_noise, actor.std)
            t = lap("sample", t)
            actions_t[...] = actions
            t = lap("store", t)
            raw_obs, rewards, terminated, truncated, _ = envs.step(distribution.to_env(actions))
            t = lap("env step", t)
            next_obs_t[...] = raw_obs  # no observation normalization here
            t = lap("network input", t)
            rewards_t[...] = rewards
            terminated_t[...], truncated_t[...] = terminated, truncated
            t = lap("store after step", t)
        runner.next_obs = runner.obs_normalizer(raw_obs)
        dones = buffer.terminated | buffer.truncated
        buffer.valid[0] = ~runner.autoreset
        np.logical_not(dones[:-1], out=buffer.valid[1:])
        runner.autoreset = dones[-1].copy()
        buffer.rewards[:] = buffer.raw_rewards  # no reward scaling in this recipe
        runner._check_rollout(buffer)  # no normalizer, discrete actions: one check per rollout
        t = lap("non-finite check", t)
        runner._track_episodes(buffer)
        buffer.fill_logprobs(distribution)
        t = lap("episodes and log-probabilities", t)
        buffer.estimate_values(policy)
        t = lap("critic values (batched)", t)
        compute_gae(
            *(buffer.tensor(n) for n in ("rewards", "values", "terminated", "truncated", "last_value")),
            gamma=recipe["gamma"],
            gae_lambda=recipe["gae_lambda"],
        )
        lap("GAE", t)

    def env_only() -> None:
        t = clock()
        for _ in range(args.steps):
            envs.step(envs.action_space.sample())
        lap("env-only block (random actions)", t)

    rollout()
    env_only()
    per_round: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # alternate, so both see the same drift of the machine's speed
        times.clear()
        rollout()
        env_only()
        for name, seconds in times.items():
            per_round.setdefault(name, []).append(seconds / args.steps * 1e6)
    agent.close()

    print(f"CartPole-v1, {args.envs} envs x {args.steps} steps, median over {args.rounds} rounds, us per vector step")
    rollout_total = []
    for i in range(args.rounds):
        rollout_total.append(sum(v[i] for k, v in per_round.items() if not k.startswith("env-only")))
    for name, values in per_round.items():
        print(f"  {name:34s} {statistics.median(values):8.1f}")
    env_block = per_round["env-only block (random actions)"]
    print(f"  {'rollout total':34s} {statistics.median(rollout_total):8.1f}")
    print(
        "  rollout / env-only rate: "
        f"{statistics.median(e / r for e, r in zip(env_block, rollout_total, strict=False)):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

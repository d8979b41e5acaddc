#!/usr/bin/env python
"""The RL-Baselines3-Zoo CartPole-v1 recipe in Stable-Baselines3, as one whole process.

The reference that ``time_to_solve.py`` times against ``clippo train CartPole-v1``: imports,
``make_vec_env`` with 8 envs, PPO (8 x 32 steps, batch 256, 20 epochs, gamma 0.98, lambda 0.8,
lr 1e-3 linearly annealed, ent_coef 0, clip 0.2, default 64-64 tanh separate MLPs),
``learn(100_000)``, then a deterministic ``evaluate_policy`` over 10 episodes on a fresh env.
Prints one JSON line (mean_return, std_return, episodes, returns, learn_s).

    python benchmarks/sb3_zoo_cartpole.py --seed 1
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--eval-seed", type=int, default=None, help="default: seed + 10000, as clippo train")
    parser.add_argument(
        "--linear-clip",
        action="store_true",
        help="anneal clip_range linearly from 0.2 as the Zoo does (default: constant 0.2, as clippo)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (clippo's default is 1)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(args.threads)
    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        gamma=0.98,
        gae_lambda=0.8,
        learning_rate=lambda f: 1e-3 * f,
        clip_range=(lambda f: 0.2 * f) if args.linear_clip else 0.2,
        ent_coef=0.0,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": torch.nn.Tanh},
        seed=args.seed,
        device="cpu",
        verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=args.total_steps)
    learn_s = time.perf_counter() - start

    eval_seed = args.seed + 10_000 if args.eval_seed is None else args.eval_seed
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=eval_seed)
    returns, lengths = evaluate_policy(
        model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True, return_episode_rewards=True
    )
    print(
        json.dumps(
            {
                "mean_return": float(np.mean(returns)),
                "std_return": float(np.std(returns)),
                "episodes": len(returns),
                "mean_length": float(np.mean(lengths)),
                "returns": [float(r) for r in returns],
                "learn_s": learn_s,
                "steps": int(model.num_timesteps),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

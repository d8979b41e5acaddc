"""Time of one PPO update (``PPO.update_policy``) on a fixed batch, per minibatch step.

Trains an agent for two updates to get a realistic batch, then times ``update_policy`` on that
batch again and again (learning rate set to ~0 so that the policy, and with it the work, stays
the same). ``--recipe zoo`` is the RL-Zoo CartPole recipe of ``bench_sb3.py`` (one 256-row
minibatch, 20 epochs); ``--recipe preset`` is the env's own ``clippo train`` preset; ``--recipe purejaxrl`` PureJaxRL's
CartPole recipe of ``purejaxrl_cartpole.py`` (4 envs x 128 steps, 4 minibatches of 128 rows, 4 epochs).

To compare two versions of clippo, run this once per version, alternating a few times (the
machine's speed drifts by tens of percent within minutes), e.g. with ``PYTHONPATH=<other>/src``;
the minimum over repetitions is the steadiest figure.

    python benchmarks/update_step.py --env CartPole-v1 --recipe zoo --repeats 30
    python benchmarks/update_step.py --env Hopper-v5 --recipe preset --repeats 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


#: ``purejaxrl_cartpole.py``'s recipe as keyword arguments.
PUREJAXRL_RECIPE = dict(
    num_envs=4, num_steps=128, num_minibatches=4, update_epochs=4, learning_rate=2.5e-4, anneal_lr=True,
    clip_value_loss=True, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95,
    clip_epsilon=0.2, hidden_sizes=[64, 64], activation="tanh",
)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--recipe", choices=["zoo", "preset", "purejaxrl"], default="zoo")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from clippo import PPO

    if args.recipe == "zoo":
        import bench_sb3

        agent = PPO(
            args.env,
            preset="default",
            **bench_sb3.clippo_hyperparameters(bench_sb3.recipe_for(args.env, None), args.seed),
        )
    elif args.recipe == "purejaxrl":
        agent = PPO(args.env, preset="default", seed=args.seed, **PUREJAXRL_RECIPE)
    else:
        agent = PPO(args.env, seed=args.seed)
    batches = []
    update_policy = agent.learner.update_policy

    def keep_batch(batch, plan=None):
        batches.append(batch)
        return update_policy(batch, plan)

    agent.learner.update_policy = keep_batch
    agent.learn(2 * agent.batch_size, progress=False)
    batch = batches[-1]
    agent.optimizer.lr = 1e-12
    cfg = agent.config
    steps = cfg.num_minibatches * cfg.update_epochs
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        update_policy(batch)
        times.append(time.perf_counter() - start)
    agent.close()
    print(
        f"{args.env} ({args.recipe}): {len(batch)} rows, "
        f"{cfg.num_minibatches} minibatch(es) x {cfg.update_epochs} epochs; "
        f"per minibatch step: min {min(times) / steps * 1e6:.0f} us, "
        f"median {statistics.median(times) / steps * 1e6:.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run by tests/multiagent/test_features.py under torchrun: one rank of a small distributed
multi-agent job (TwoKinds: two policy groups), recording every group's parameters after each update.

python -m torch.distributed.run --standalone --nproc-per-node 2 tests/multiagent/distributed_worker.py MODE OUT_DIR

MODE: ``lockstep`` (4 updates, parameters recorded), ``callback_stop`` (rank 1's callback asks to
stop at update 2) or ``selfplay`` (TakeAway by self-play: each update's Elo and game tallies).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from clippo import PPO
from clippo.multiagent.toy_envs import TakeAway, TwoKinds
from clippo.training.distributed import shutdown


def callback_stop(out: Path) -> None:
    """Rank 1's callback returns False at update 2: every rank must end after the same update."""
    agent = PPO(TwoKinds, num_envs=2, num_steps=16, tensorboard=False, seed=3)
    rank = agent.world.rank

    def stop(a, metrics):
        return False if rank == 1 and metrics["update"] == 2 else None

    agent.learn(10 * 128, progress=False, callback=stop)
    torch.save({"update": agent.update, "stopped": agent.stopped_by_callback}, out / f"rank{rank}.pt")
    agent.close()
    shutdown(agent.world)


def selfplay(out: Path) -> None:
    """Self-play with a pool, random games and evaluations: ratings and tallies must agree across ranks."""
    agent = PPO(
        TakeAway, num_envs=2, num_steps=16, tensorboard=False, seed=3, selfplay_snapshot_every=1,
        selfplay_latest_prob=0.3, selfplay_random_prob=0.3, selfplay_eval_every=2, selfplay_eval_games=4,
    )  # fmt: skip
    rows: list[list[float]] = []
    keys = ["selfplay/elo", "selfplay/pool_mean_elo", "selfplay/games_vs_pool", "selfplay/games_vs_latest",
            "selfplay/games_vs_random", "selfplay/win_vs_pool"]  # fmt: skip

    def record(a, metrics):
        rows.append([float(metrics[key]) for key in keys])

    agent.learn(6 * 2 * 2 * 16, progress=False, callback=record)
    torch.save({"rows": torch.tensor(rows, dtype=torch.float64)}, out / f"rank{agent.world.rank}.pt")
    agent.close()
    shutdown(agent.world)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "callback_stop":
        callback_stop(out)
        return
    if mode == "selfplay":
        selfplay(out)
        return
    agent = PPO(
        TwoKinds, num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2, normalize_observations=True,
        tensorboard=False, seed=3, run_dir=out / "run",
    )  # fmt: skip
    snapshots: list[torch.Tensor] = []
    returns: list[float] = []

    def record(a, metrics):
        snapshots.append(torch.cat([learner.optimizer.flat.clone() for learner in a.learners]))
        returns.append(float(metrics["episodes"]))

    agent.learn(4 * 128, progress=False, callback=record)  # 2 ranks x 2 copies x 16 steps x 2 agents per update
    rank = agent.world.rank
    torch.save(
        {
            "params": torch.stack(snapshots),
            "obs_mean": torch.from_numpy(agent.learners[0].obs_normalizer.stats.mean.copy()),
            "global_step": agent.global_step,
            "env_steps": agent.env_steps,
            "episodes": torch.tensor(returns),
        },
        out / f"rank{rank}.pt",
    )
    agent.close()
    shutdown(agent.world)


if __name__ == "__main__":
    main()

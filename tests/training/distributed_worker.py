"""Run by tests/training/test_distributed.py under torchrun: one rank of a small distributed job.

python -m torch.distributed.run --standalone --nproc-per-node 2 tests/training/distributed_worker.py MODE OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from clippo import PPO
from clippo.rollout.runner import Batch
from clippo.training.distributed import shutdown


def synthetic_batch(agent: PPO, size: int, seed: int) -> Batch:
    """A fixed batch of CartPole-shaped transitions, the same for a given seed in any process."""
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(size, 4, generator=g),
        actions=torch.randint(0, 2, (size,), generator=g),
        logprobs=torch.full((size,), -0.6931),
        values=torch.randn(size, generator=g),
        advantages=torch.randn(size, generator=g),
        returns=torch.randn(size, generator=g),
    )


def train_recording_parameters(agent: PPO, updates: int) -> list[torch.Tensor]:
    """Train ``updates`` updates, keeping a copy of the parameters after each one."""
    snapshots = []
    original = agent.update_policy

    def recording(batch, plan=None):
        stats = original(batch, plan)
        snapshots.append(agent.optimizer.flat.clone())
        return stats

    agent.update_policy = recording
    agent.learn(total_steps=agent.global_batch_size * updates, progress=False)
    return snapshots


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "identical":
        # A few real updates; every rank records its parameters after each one.
        agent = PPO(
            "CartPole-v1",
            seed=5,
            num_envs=2,
            num_steps=32,
            num_minibatches=2,
            update_epochs=2,
            normalize_observations=True,
            normalize_rewards=True,
        )
        rank = agent.world.rank
        snapshots = train_recording_parameters(agent, updates=4)
        torch.save(
            {
                "params": torch.stack(snapshots),
                "obs_mean": torch.from_numpy(agent.obs_normalizer.stats.mean),
                "global_step": agent.global_step,
            },
            out / f"rank{rank}.pt",
        )
        agent.close()
        shutdown(agent.world)
    elif mode == "recurrent":
        # A recurrent agent (LSTM, BPTT chunks of 16 steps) on two ranks, with periodic checkpoints.
        agent = PPO(
            "clippo/CartPoleNoVel-v1",
            seed=5,
            num_envs=2,
            num_steps=32,
            num_minibatches=2,
            update_epochs=2,
            recurrent="lstm",
            recurrent_hidden_size=16,
            bptt_length=16,
            normalize_observations=True,
            checkpoint_every=3,
            tensorboard=False,
            run_dir=out / "run",
        )
        rank = agent.world.rank
        snapshots = train_recording_parameters(agent, updates=4)
        torch.save({"params": torch.stack(snapshots)}, out / f"rank{rank}.pt")
        agent.close()
        shutdown(agent.world)
    elif mode == "equivalence":
        # Each rank updates on its half of a fixed batch; compared with one process on the whole.
        agent = PPO("CartPole-v1", seed=7, num_envs=2, num_steps=32, num_minibatches=1, update_epochs=3)
        rank = agent.world.rank
        agent.update_policy(synthetic_batch(agent, 64, seed=100 + rank))
        torch.save({"params": agent.optimizer.flat.clone()}, out / f"rank{rank}.pt")
        agent.close()
        shutdown(agent.world)
    elif mode == "callback_stop":
        # Only rank 0's callback asks to stop (at its second update): both ranks must end together.
        agent = PPO("CartPole-v1", seed=5, num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2)
        rank = agent.world.rank
        agent.learn(
            total_steps=agent.global_batch_size * 20,
            progress=False,
            callback=lambda a, metrics: not (rank == 0 and metrics["update"] == 2),
        )
        torch.save({"update": agent.update, "stopped": agent.stopped_by_callback}, out / f"rank{rank}.pt")
        agent.close()
        shutdown(agent.world)
    elif mode == "average":
        # all_reduce_mean_ both ways: all-gather plus local sum (gloo, few ranks) and all-reduce.
        import clippo.training.distributed as distributed

        world = distributed.init_world("cpu")
        values = torch.randn(1000, generator=torch.Generator().manual_seed(world.rank)) * 10.0
        gathered = distributed.all_reduce_mean_(values.clone(), world)
        distributed.GATHER_MAX_RANKS = 0
        reduced = distributed.all_reduce_mean_(values.clone(), world)
        torch.save({"values": values, "gathered": gathered, "reduced": reduced}, out / f"rank{world.rank}.pt")
        shutdown(world)
    elif mode == "action_spaces":
        # A masked env and a hybrid-action env, each trained to 2048 steps with periodic checkpoints.
        for env_id in ("clippo/Slots-v0", "clippo/ToolAmount-v0"):
            agent = PPO(
                env_id,
                seed=1,
                num_envs=2,
                num_steps=64,
                checkpoint_every=3,
                tensorboard=False,
                run_dir=out / env_id.replace("/", "_"),
            )
            agent.learn(total_steps=2048, progress=False)
            agent.close()
        shutdown(agent.world)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

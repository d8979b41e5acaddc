"""Distributed training on torch.distributed (gloo, CPU), launched with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clippo import PPO
from clippo.core.errors import CheckpointError

#: every test here starts torchrun with two processes
pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("distributed_worker.py")


def torchrun(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_ranks_hold_identical_parameters_after_every_update(tmp_path):
    torchrun(str(WORKER), "identical", str(tmp_path), cwd=tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["params"].shape[0] == 4  # four updates recorded
    assert torch.equal(rank0["params"], rank1["params"])
    assert torch.equal(rank0["obs_mean"], rank1["obs_mean"])  # normalization statistics agree too
    # total steps count over both ranks: 4 updates x 2 ranks x 2 envs x 32 steps
    assert rank0["global_step"] == rank1["global_step"] == 4 * 2 * 2 * 32
    # and the ranks did learn something (the parameters moved between updates)
    assert not torch.equal(rank0["params"][0], rank0["params"][-1])


def test_a_recurrent_agent_trains_on_two_ranks_and_resumes_on_two(tmp_path):
    torchrun(str(WORKER), "recurrent", str(tmp_path), cwd=tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["params"] for r in (0, 1))
    assert rank0.shape[0] == 4 and torch.equal(rank0, rank1)
    assert not torch.equal(rank0[0], rank0[-1])
    run_dir = tmp_path / "run"
    (run_dir / "agent.pt").unlink()  # as if interrupted after the checkpoint of update 3
    # one process would halve the global batch (128 -> 64 steps per update): refused (issue #35)
    with pytest.raises(CheckpointError, match="--nproc 2"):
        PPO.from_run(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "clippo", "resume", str(run_dir), "--nproc", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming clippo/CartPoleNoVel-v1 at step 384 on 2 processes" in result.stdout
    agent = PPO.load(run_dir)  # (a distributed run's checkpoint loads in one process to act)
    assert agent.update == 4 and agent.config.recurrent == "lstm" and agent.global_step == 4 * 128
    assert agent.evaluate(episodes=2, seed=0)["episodes"] == 2
    agent.close()


def test_one_ranks_callback_stop_ends_training_on_every_rank_after_the_same_update(tmp_path):
    torchrun(str(WORKER), "callback_stop", str(tmp_path), cwd=tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # asked at update 2, agreed in update 3's after-rollout exchange, so both end after update 3
    assert rank0 == rank1 == {"update": 3, "stopped": True}


def test_gradient_average_is_the_mean_of_the_ranks_and_identical_on_each(tmp_path):
    torchrun(str(WORKER), "average", str(tmp_path), cwd=tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    expected = (rank0["values"] + rank1["values"]) / 2
    assert not torch.equal(rank0["values"], rank1["values"])
    for way in ("gathered", "reduced"):  # all-gather plus local sum, and gloo's all-reduce
        assert torch.equal(rank0[way], rank1[way]), way
        torch.testing.assert_close(rank0[way], expected)


def test_two_ranks_make_the_same_update_as_one_process_on_the_whole_batch(tmp_path):
    from tests.training.distributed_worker import synthetic_batch

    torchrun(str(WORKER), "equivalence", str(tmp_path), cwd=tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["params"] for r in (0, 1))
    assert torch.equal(rank0, rank1)

    single = PPO("CartPole-v1", seed=7, num_envs=4, num_steps=32, num_minibatches=1, update_epochs=3)
    before = single.optimizer.flat.clone()
    halves = [synthetic_batch(single, 64, seed=100 + r) for r in (0, 1)]
    fields = [f for f in halves[0].__dataclass_fields__ if getattr(halves[0], f) is not None]  # (masks: None)
    whole = type(halves[0])(**{f: torch.cat([getattr(h, f) for h in halves]) for f in fields})
    single.update_policy(whole)
    single.close()
    assert not torch.allclose(before, single.optimizer.flat)
    torch.testing.assert_close(rank0, single.optimizer.flat, rtol=1e-5, atol=1e-6)


def test_two_process_cartpole_run_learns_and_resumes_in_one_process(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clippo",
            "train",
            "CartPole-v1",
            "--nproc",
            "2",
            "--run-dir",
            str(run_dir),
            "--total-steps",
            "40000",
            "--seed",
            "1",
            "--eval-episodes",
            "5",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["mean_return"] >= 150, evaluation
    # the checkpoint of a distributed run loads in a single process
    agent = PPO.load(run_dir)
    assert agent.global_step >= 40000
    assert agent.evaluate(episodes=2, seed=0)["episodes"] == 2


def test_pooled_advantage_moments_equal_the_moments_of_the_concatenated_groups():
    import numpy as np

    from clippo.training.distributed import moment_sums, pooled_moments

    rng = np.random.default_rng(0)
    ranks = [rng.normal(3.0, 2.0, size=40).astype(np.float32) for _ in range(2)]
    groups = [np.arange(0, 13), np.arange(13, 40), np.array([5, 1, 30])]
    moments = pooled_moments([moment_sums([values[g] for g in groups]) for values in ranks])
    for (mean, std), group in zip(moments, groups, strict=False):
        pooled = np.concatenate([values[group] for values in ranks]).astype(np.float64)
        assert mean == pytest.approx(pooled.mean(), rel=1e-9)
        assert std == pytest.approx(pooled.std(ddof=1), rel=1e-9)


def test_pooled_running_statistics_weigh_each_rank_equally_and_agree_on_every_rank():
    import numpy as np

    from clippo.rollout.normalization import RunningMeanStd
    from clippo.training.distributed import pool_statistics, statistics_sums

    rng = np.random.default_rng(1)
    data = [rng.normal(r, 1.0 + r, size=(50, 3)) for r in range(2)]
    per_rank = []
    for values in data:
        stats = RunningMeanStd((3,))
        stats.update(values)
        per_rank.append(stats)
    shares = [statistics_sums([s]) for s in per_rank]
    for s in per_rank:  # what each rank does with the gathered shares
        pool_statistics([s], shares, world_size=2)
    combined = np.concatenate(data)
    for s in per_rank:
        np.testing.assert_allclose(s.mean, combined.mean(0), rtol=1e-4)
        np.testing.assert_allclose(s.var, combined.var(0), rtol=1e-3)
        assert s.count == pytest.approx(50 + 1e-4)  # grows by one rank's batch, as in one process
    assert np.array_equal(per_rank[0].mean, per_rank[1].mean) and np.array_equal(per_rank[0].var, per_rank[1].var)

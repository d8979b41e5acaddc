"""MultiBinary and Tuple/Dict (hybrid) actions end to end: acting in the space's own structure,
learning the toy envs, checkpoints keeping actions identical, and --nproc 2 runs that resume."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo import PPO
from clippo.core.errors import CheckpointError
from clippo.envs.toy import BitsEnv, ToolAmountEnv

TINY = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2, hidden_sizes=[16, 16], tensorboard=False)


class TupleEnv(gym.Env):
    """``Tuple(Discrete(2), Box(-1, 1, (2,)), MultiBinary(3))`` actions, checked on every step."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    observation_space = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
    action_space = spaces.Tuple(
        (spaces.Discrete(2, start=3), spaces.Box(-1.0, 1.0, (2,), dtype=np.float32), spaces.MultiBinary(3))
    )

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        assert isinstance(action, tuple) and self.action_space.contains(action), action
        self.t += 1
        return np.zeros(3, np.float32), float(action[0] == 4), self.t >= 4, False, {}


@pytest.mark.parametrize("source", [ToolAmountEnv, BitsEnv, TupleEnv], ids=["dict", "multibinary", "tuple"])
def test_actions_come_in_the_spaces_own_structure(source):
    agent = PPO(source, seed=0, **TINY)
    agent.learn(64)  # the envs check every action they get
    space = agent.action_space
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (5, *agent.observation_space.shape)).astype(np.float32)
    for deterministic in (True, False):
        batch = agent.act(obs, deterministic)
        single = agent.act(obs[0], deterministic)
        assert space.contains(single), single
        if isinstance(space, spaces.Dict):
            assert all(space.contains({k: v[i] for k, v in batch.items()}) for i in range(5))
        elif isinstance(space, spaces.Tuple):
            assert all(space.contains(tuple(part[i] for part in batch)) for i in range(5))
        else:
            assert batch.shape == (5, 4) and batch.dtype == np.int8
    assert agent.evaluate(episodes=2, seed=0)["episodes"] == 2
    agent.close()


@pytest.mark.parametrize("source", [ToolAmountEnv, BitsEnv], ids=["dict", "multibinary"])
def test_save_load_keeps_actions_identical(source, tmp_path):
    agent = PPO(source, seed=4, **TINY)
    agent.learn(64)
    agent.save(tmp_path / "agent.pt")
    loaded = PPO.load(tmp_path / "agent.pt", env=source)
    obs = np.random.default_rng(2).uniform(-1, 1, (16, *agent.observation_space.shape)).astype(np.float32)
    for deterministic in (True, False):
        ours, theirs = agent.act(obs, deterministic), loaded.act(obs, deterministic)
        if isinstance(ours, dict):
            assert all(np.array_equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
        else:
            assert np.array_equal(ours, theirs) and ours.dtype == theirs.dtype
    if hasattr(agent.model, "log_std"):
        assert torch.equal(agent.model.log_std, loaded.model.log_std)
    agent.close()
    loaded.close()


@pytest.mark.slow
def test_hybrid_and_multibinary_toy_envs_learn_near_their_optimum():
    # ToolAmount: 20 at best, random actions ~8 per episode; Bits: 8 at best, random 4
    hybrid = PPO("clippo/ToolAmount-v0", seed=0, total_steps=24_576, tensorboard=False, checkpoint_every=0)
    hybrid.learn(progress=False)
    assert hybrid.evaluate(episodes=10, seed=0)["mean_return"] > 18.5
    hybrid.close()
    bits = PPO("clippo/Bits-v0", seed=0, total_steps=16_384, tensorboard=False, checkpoint_every=0)
    bits.learn(progress=False)
    assert bits.evaluate(episodes=10, seed=0)["mean_return"] > 6.5
    bits.close()


@pytest.mark.slow
def test_masked_and_hybrid_envs_train_on_two_processes_and_resume_from_a_checkpoint(tmp_path):
    from tests.training.test_distributed import WORKER, torchrun

    torchrun(str(WORKER), "action_spaces", str(tmp_path), cwd=tmp_path)  # (what clippo train --nproc 2 runs)
    for env_id in ("clippo/Slots-v0", "clippo/ToolAmount-v0"):
        run_dir = tmp_path / env_id.replace("/", "_")
        assert PPO.load(run_dir).global_step == 2048
        # the run as if interrupted after update 6 of 8 (2 ranks x 2 envs x 64 steps each): its
        # periodic checkpoint resumes on two processes (one would halve the global batch: refused)
        (run_dir / "agent.pt").unlink()
        with pytest.raises(CheckpointError, match="--nproc 2"):
            PPO.from_run(run_dir)
        result = subprocess.run(
            [sys.executable, "-m", "clippo", "resume", str(run_dir), "--nproc", "2"],
            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"resuming {env_id} at step {6 * 256} on 2 processes" in result.stdout
        agent = PPO.load(run_dir)
        assert agent.global_step == 2048
        agent.env_runner()  # the envs' masks are detected again
        assert (agent.action_masks is not None) == (env_id == "clippo/Slots-v0")
        assert agent.evaluate(episodes=2, seed=0)["episodes"] == 2
        agent.close()

"""The CUDA paths: the model on the GPU, the rollout's numpy actor on the CPU, the stored
log-probabilities and the update on the GPU. CI has no GPU, so these run only where one is
present (they were run on a lent H100 machine: benchmarks/results/gpu_machine/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clippo import PPO
from tests.toy_envs import SpotImageEnv
from tests.training.test_ppo import record_first_logratios

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("network", ["separate", "shared"])
def test_cuda_update_starts_from_the_rollouts_log_probs(env, network):
    """The rollout acts on the CPU with a numpy copy of the actor, the log-probabilities of its
    outputs are computed on the GPU after the loop, and the update recomputes them with the torch
    actor on the GPU: before the first Adam step the ratio is 1 up to rounding."""
    agent = PPO(
        env, device="cuda", num_envs=4, num_steps=32, num_minibatches=2, update_epochs=2, network=network, seed=0
    )
    firsts = record_first_logratios(agent)
    agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    assert all(p.device.type == "cuda" for p in agent.model.parameters())
    assert all(torch.isfinite(p).all() for p in agent.model.parameters())
    assert len(firsts) == 3
    for logratio in firsts:
        assert logratio.device.type == "cuda"
        assert logratio.abs().max().item() < 1e-5, logratio


def test_cuda_checkpoint_resumes_on_the_cpu(tmp_path):
    agent = PPO("Pendulum-v1", device="cuda", num_envs=2, num_steps=32, seed=1)
    agent.learn(total_steps=128)
    path = agent.save(tmp_path / "agent.pt")
    obs = np.linspace(-1.0, 1.0, 9, dtype=np.float32).reshape(3, 3)
    on_gpu = agent.predict(obs, deterministic=True)[0]
    agent.close()
    cpu = PPO.load(path, device="cpu")
    assert all(p.device.type == "cpu" for p in cpu.model.parameters())
    np.testing.assert_allclose(cpu.predict(obs, deterministic=True)[0], on_gpu, rtol=1e-5, atol=1e-5)
    cpu.learn(total_steps=64)  # and trains on from there
    cpu.close()


def test_cuda_training_solves_cartpole():
    agent = PPO("CartPole-v1", device="cuda", seed=1)
    agent.learn()
    result = agent.evaluate(episodes=10, seed=10_000)
    agent.close()
    assert result["mean_return"] >= 475, result


@pytest.mark.parametrize("env", ["clippo/Slots-v0", "clippo/ToolAmount-v0"])
def test_cuda_masked_and_hybrid_agents_train_from_the_rollouts_log_probs(env):
    """The general path on the GPU: action masks (Slots: its step raises on a masked action)
    and a Dict action (one head per part, the log-std a slice of the policy's parameter)."""
    agent = PPO(
        env, device="cuda", num_envs=4, num_steps=32, num_minibatches=2, update_epochs=2, seed=0, tensorboard=False
    )
    firsts = record_first_logratios(agent)
    agent.learn(total_steps=agent.batch_size * 3)
    assert len(firsts) == 3
    for logratio in firsts:
        assert logratio.device.type == "cuda" and logratio.abs().max().item() < 1e-5, logratio
    assert agent.evaluate(episodes=2, seed=0)["episodes"] == 2
    agent.close()


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs a bf16 GPU")
@pytest.mark.parametrize("network", ["separate", "shared"])
def test_cuda_bf16_update_starts_from_the_rollouts_log_probs(network):
    """bf16 on CUDA (issue #36): the rollout acts in bf16 on batches of num_envs frames, the update
    recomputes the log-probabilities in bf16 on minibatches of other sizes; where the GPU's kernels
    round differently with the batch size, the first ratio of an update would drift from 1."""
    agent = PPO(
        lambda: SpotImageEnv(size=12),
        device="cuda",
        precision="bf16",
        network=network,
        num_envs=4,
        num_steps=32,
        num_minibatches=2,
        update_epochs=2,
        tensorboard=False,
        seed=0,
    )
    firsts = record_first_logratios(agent)
    agent.learn(total_steps=agent.batch_size * 3)
    assert agent.model.compute_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in agent.model.parameters())
    assert len(firsts) == 3
    for logratio in firsts:
        assert logratio.abs().max().item() < 1e-5, logratio
    agent.close()


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs a bf16 GPU")
def test_cuda_bf16_checkpoint_loads_on_the_cpu_in_fp32(tmp_path):
    agent = PPO(lambda: SpotImageEnv(size=12), device="cuda", precision="bf16", num_envs=2, num_steps=32, seed=1)
    agent.learn(total_steps=128)
    path = agent.save(tmp_path / "agent.pt")
    agent.close()
    cpu = PPO.load(path, env=lambda: SpotImageEnv(size=12), device="cpu", precision="fp32")
    assert cpu.model.compute_dtype is None and all(p.device.type == "cpu" for p in cpu.model.parameters())
    cpu.learn(total_steps=64)
    cpu.close()


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs a bf16 GPU")
def test_cuda_precision_auto_is_bf16_on_a_bf16_gpu():
    agent = PPO(lambda: SpotImageEnv(size=12), device="cuda", precision="auto", num_envs=2, num_steps=32, seed=1)
    assert agent.precision == "bf16" and agent.model.compute_dtype == torch.bfloat16
    agent.learn(total_steps=64)
    agent.close()

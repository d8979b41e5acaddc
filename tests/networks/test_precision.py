"""bf16 mixed precision (``precision="bf16"``, clippo.core.precision): the networks' passes run in
bfloat16 while parameters, outputs and statistics stay fp32; the first ratio of every update is
still 1; hardware without bf16 is refused in one line; ``auto`` takes bf16 where the hardware has
it and the fast path does not apply. (Exact resume in bf16: tests/training/test_reliability.py,
case cartpole-bf16.)"""

from __future__ import annotations

import pytest
import torch

from clippo import PPO
from clippo.core import precision
from clippo.core.losses import AutogradLoss
from clippo.rollout.runner import EnvRunner
from tests.helpers import run_cli
from tests.toy_envs import SpotImageEnv
from tests.training.test_ppo import record_first_logratios

IMAGE = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2, tensorboard=False, seed=0)


needs_bf16 = pytest.mark.skipif(
    not precision.cpu_supports_bf16(),
    reason="this CPU has no native bf16 (AVX512-BF16 or AMX); the refusal and auto's fp32 are tested without it",
)


@needs_bf16
@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_first_ratio_of_every_update_is_one(name):
    """The rollout's log-probabilities and the update's first ones come from the same networks in
    the same precision: before the first Adam step of an update their ratio is 1."""
    agent = PPO(lambda: SpotImageEnv(size=12), precision=name, **IMAGE)
    firsts = record_first_logratios(agent)
    agent.learn(3 * agent.batch_size, progress=False)
    assert len(firsts) == 3
    for logratio in firsts:
        assert logratio.abs().max().item() < 1e-5, logratio


@needs_bf16
def test_bf16_runs_the_networks_in_bf16_and_keeps_everything_else_fp32():
    agent = PPO(lambda: SpotImageEnv(size=12), precision="bf16", **IMAGE)
    seen: list[torch.dtype] = []
    layer = next(m for m in agent.model.actor_features.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    obs = torch.from_numpy(SpotImageEnv(size=12).reset(seed=0)[0][None])
    params, values = agent.model(obs)
    assert seen == [torch.bfloat16]
    assert params.dtype == values.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in agent.model.parameters())
    agent.learn(agent.batch_size, progress=False)
    assert agent.optimizer.flat.dtype == torch.float32 and torch.isfinite(agent.optimizer.flat).all()


@needs_bf16
def test_bf16_takes_the_general_torch_path():
    """The numpy fast path computes in fp32: bf16 runs flat MLPs on the torch path."""
    fp32 = PPO("CartPole-v1", **IMAGE)
    bf16 = PPO("CartPole-v1", precision="bf16", **IMAGE)
    assert fp32.runner_class is not EnvRunner and not isinstance(fp32.learner.loss, AutogradLoss)
    assert bf16.runner_class is EnvRunner and isinstance(bf16.learner.loss, AutogradLoss)
    bf16.learn(2 * bf16.batch_size, progress=False)
    fp32.close()
    bf16.close()


@needs_bf16
def test_a_checkpoint_loads_in_either_precision(tmp_path):
    agent = PPO(lambda: SpotImageEnv(size=12), precision="bf16", **IMAGE)
    agent.learn(agent.batch_size, progress=False)
    path = agent.save(tmp_path / "agent.pt")
    saved = torch.load(path, weights_only=True)
    assert all(t.dtype == torch.float32 for t in saved["model"].values() if t.is_floating_point())
    for name in ("bf16", "fp32"):
        loaded = PPO.load(path, env=lambda: SpotImageEnv(size=12), precision=name)
        assert loaded.config.precision == name
        assert torch.equal(loaded.optimizer.flat, agent.optimizer.flat)


def test_bf16_on_a_cpu_without_it_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"^precision='bf16' is invalid on this CPU: .*\(use fp32\)$") as info:
        PPO("CartPole-v1", precision="bf16", **IMAGE)
    assert "\n" not in str(info.value)
    code, _out, err = run_cli(["train", "CartPole-v1", "--precision", "bf16", "--run-dir", str(tmp_path / "run")])
    assert code == 2 and "precision='bf16' is invalid on this CPU" in err and len(err.strip().splitlines()) == 1


@needs_bf16
def test_auto_is_bf16_where_the_cpu_has_it_and_the_fast_path_does_not_apply(tmp_path):
    image = PPO(lambda: SpotImageEnv(size=12), precision="auto", **IMAGE)
    flat = PPO("CartPole-v1", precision="auto", **IMAGE)
    off = PPO("CartPole-v1", precision="auto", fast_path="off", **IMAGE)
    assert (image.precision, flat.precision, off.precision) == ("bf16", "fp32", "bf16")
    assert image.model.compute_dtype == torch.bfloat16 and flat.model.compute_dtype is None
    assert flat.runner_class is not EnvRunner and not isinstance(flat.learner.loss, AutogradLoss)
    image.learn(image.batch_size, progress=False)
    path = image.save(tmp_path / "agent.pt")
    # The checkpoint keeps "auto": loaded on a machine without bf16, the same agent runs in fp32.
    assert PPO.load(path, env=lambda: SpotImageEnv(size=12)).precision == "bf16"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_supports_bf16", lambda: False)
        loaded = PPO.load(path, env=lambda: SpotImageEnv(size=12))
        assert loaded.config.precision == "auto" and loaded.precision == "fp32"
        assert torch.equal(loaded.optimizer.flat, image.optimizer.flat)
    for agent in (image, flat, off):
        agent.close()


def test_auto_is_fp32_on_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    agent = PPO(lambda: SpotImageEnv(size=12), precision="auto", **IMAGE)
    assert agent.precision == "fp32" and agent.model.compute_dtype is None
    agent.learn(agent.batch_size, progress=False)


def test_the_atari_and_minatar_presets_train_in_auto():
    from clippo.config.ppo_config import PRESETS, PPOConfig, env_preset_values

    assert PRESETS["atari"]["precision"] == PRESETS["minatar"]["precision"] == "auto"
    assert env_preset_values("ALE/Breakout-v5")["precision"] == env_preset_values("MinAtar/Breakout-v1")["precision"]
    assert PPOConfig().precision == "fp32"  # everything else stays fp32 unless asked


def test_a_bad_precision_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^precision='fp16' is invalid: choose one of fp32, bf16, auto$"):
        PPO("CartPole-v1", precision="fp16", **IMAGE)
    code, _out, err = run_cli(["train", "CartPole-v1", "--precision", "fp16", "--run-dir", str(tmp_path / "run")])
    assert code == 2 and "fp16" in err and len(err.strip().splitlines()) == 1


@needs_bf16
def test_the_cli_says_when_it_trains_in_bf16(tmp_path):
    flags = ["--total-steps", "64", "--num-envs", "2", "--num-steps", "32", "--eval-episodes", "1", "--no-tensorboard"]
    for name, said in (("auto", False), ("bf16", True)):  # (auto keeps CartPole's fp32 fast path)
        run = tmp_path / name
        code, out, err = run_cli(["train", "CartPole-v1", "--precision", name, "--run-dir", str(run), *flags])
        assert code == 0, err
        assert ("steps in bf16; run directory" in out) is said, out


@needs_bf16
def test_a_resume_says_when_auto_resolves_to_another_precision(monkeypatch, tmp_path):
    run = tmp_path / "run"
    flags = ["--num-envs", "2", "--num-steps", "32", "--eval-episodes", "1", "--no-tensorboard"]
    code, out, err = run_cli(
        [
            "train",
            "CartPole-v1",
            "--precision",
            "auto",
            "--fast-path",
            "off",
            "--total-steps",
            "64",
            "--run-dir",
            str(run),
            *flags,
        ]
    )
    assert code == 0 and "in bf16" in out, err
    code, out, err = run_cli(["resume", str(run), "--total-steps", "128"])
    assert code == 0 and "resuming" in out and "it trained in" not in out, err
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)  # the run moves to a CPU without bf16
    code, out, err = run_cli(["resume", str(run), "--total-steps", "192"])
    assert code == 0 and "; in fp32, not the bf16 it trained in" in out, err


@needs_bf16
def test_a_bf16_run_goes_on_in_fp32_on_hardware_without_bf16(monkeypatch, tmp_path):
    """The run's own bf16 falls back to fp32 where it cannot run (its parameters are fp32): it can
    still be evaluated, exported and resumed there; a bf16 asked for now is refused."""
    run = tmp_path / "run"
    flags = ["--num-envs", "2", "--num-steps", "32", "--eval-episodes", "1", "--no-tensorboard"]
    code, _out, err = run_cli(
        ["train", "CartPole-v1", "--precision", "bf16", "--total-steps", "64", "--run-dir", str(run), *flags]
    )
    assert code == 0, err
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    loaded = PPO.load(run / "agent.pt")
    assert loaded.config.precision == "bf16" and loaded.precision == "fp32" and loaded.saved_precision == "bf16"
    with pytest.raises(ValueError, match=r"precision='bf16' is invalid on this CPU"):
        PPO.load(run / "agent.pt", precision="bf16")
    code, out, err = run_cli(["eval", str(run), "--episodes", "1"])
    assert code == 0, err
    code, out, err = run_cli(["resume", str(run), "--total-steps", "128"])
    assert code == 0 and "; in fp32, not the bf16 it trained in" in out, err

"""Save and load: identical behaviour after a round trip, run directories, safe and clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo import PPO
from clippo.training.checkpoint import (
    CheckpointError,
    periodic_checkpoint_path,
    prune_checkpoints,
    read_checkpoint,
    resolve_checkpoint_path,
    space_from_dict,
    space_to_dict,
    write_atomic,
)

TINY = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2, hidden_sizes=[16, 16])


def params(agent: PPO) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.model.parameters()]


def test_save_load_identical_actions_with_normalization(tmp_path):
    agent = PPO("Pendulum-v1", **TINY, normalize_observations=True, normalize_rewards=True, seed=0)
    agent.learn(total_steps=agent.batch_size * 2)
    agent.close()
    assert agent.obs_normalizer.stats.count > 1  # statistics were actually gathered
    path = agent.save(tmp_path / "agent.pt")
    assert path.is_file()

    loaded = PPO.load(path)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    np.testing.assert_array_equal(loaded.act(obs[0], deterministic=True), agent.act(obs[0], deterministic=True))
    np.testing.assert_array_equal(loaded.obs_normalizer.stats.mean, agent.obs_normalizer.stats.mean)
    np.testing.assert_array_equal(loaded.obs_normalizer.stats.var, agent.obs_normalizer.stats.var)
    assert loaded.obs_normalizer.stats.count == agent.obs_normalizer.stats.count
    assert loaded.obs_normalizer.enabled and loaded.reward_scaler.enabled
    np.testing.assert_array_equal(loaded.reward_scaler.stats.var, agent.reward_scaler.stats.var)
    assert all(torch.equal(a, b) for a, b in zip(params(loaded), params(agent), strict=False))
    assert loaded.config == agent.config
    assert loaded.global_step == agent.global_step and loaded.update == agent.update
    assert loaded.action_space == agent.action_space and loaded.observation_space == agent.observation_space
    # the normalization matters: without it the loaded agent would act differently
    loaded.obs_normalizer.enabled = False
    assert not np.array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))


def test_save_load_without_reward_normalization(tmp_path):
    # (Pendulum's built-in preset turns reward normalization on: switch it off explicitly)
    agent = PPO("Pendulum-v1", **TINY, normalize_observations=True, normalize_rewards=False, seed=0)
    agent.learn(total_steps=agent.batch_size * 2)
    agent.close()
    loaded = PPO.load(agent.save(tmp_path / "agent.pt"))
    assert not loaded.reward_scaler.enabled
    obs = np.random.default_rng(1).uniform(-1, 1, size=(8, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    np.testing.assert_array_equal(loaded.obs_normalizer.stats.mean, agent.obs_normalizer.stats.mean)


def test_load_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    agent = PPO("CartPole-v1", **TINY, run_dir=run_dir, seed=0)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    assert (run_dir / "agent.pt").is_file()
    loaded = PPO.load(run_dir)
    obs = np.random.default_rng(2).uniform(-0.1, 0.1, size=(10, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    # a loaded agent can evaluate on its env id
    result = loaded.evaluate(episodes=2, seed=0)
    assert result["episodes"] == 2


def test_loaded_agent_continues_training_deterministically(tmp_path):
    """Optimizer, generator and schedule come back: two loads of one checkpoint train identically."""
    agent = PPO("CartPole-v1", **TINY, seed=4)
    agent.learn(total_steps=agent.batch_size)
    path = agent.save(tmp_path / "agent.pt")
    agent.close()
    first, second = PPO.load(path), PPO.load(path)
    for loaded in (first, second):
        loaded.learn(total_steps=loaded.batch_size)
        loaded.close()
        assert loaded.global_step == 2 * agent.batch_size and loaded.update == 2
    assert all(torch.equal(a, b) for a, b in zip(params(first), params(second), strict=False))
    assert any(not torch.equal(a, b) for a, b in zip(params(first), params(agent), strict=False))


def test_periodic_checkpoints_are_pruned(tmp_path):
    run_dir = tmp_path / "run"
    agent = PPO("CartPole-v1", **TINY, run_dir=run_dir, checkpoint_every=1, keep_checkpoints=2, seed=0)
    agent.learn(total_steps=agent.batch_size * 4)
    agent.close()
    periodic = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert periodic == [periodic_checkpoint_path(run_dir, s).name for s in (192, 256)]
    # the run dir resolves to agent.pt first, then to the newest periodic checkpoint
    assert resolve_checkpoint_path(run_dir) == run_dir / "agent.pt"
    (run_dir / "agent.pt").unlink()
    assert resolve_checkpoint_path(run_dir) == run_dir / "checkpoints" / periodic[-1]
    assert PPO.load(run_dir).global_step == 256


def test_custom_env_checkpoint_needs_the_env_to_evaluate(tmp_path, multidiscrete_env):
    agent = PPO(multidiscrete_env, **TINY, seed=0)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    loaded = PPO.load(agent.save(tmp_path / "agent.pt"), env=multidiscrete_env)
    assert loaded.action_space == spaces.MultiDiscrete([3, 4])
    obs = np.random.default_rng(3).uniform(-1, 1, size=(6, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    assert loaded.evaluate(episodes=2)["mean_length"] == 10.0


@pytest.mark.parametrize(
    "space",
    [
        spaces.Discrete(4, start=-2),
        spaces.MultiDiscrete([3, 4], start=[1, 0]),
        spaces.Box(low=np.array([-1.0, 0.0], dtype=np.float32), high=np.array([1.0, 5.0], dtype=np.float32)),
        spaces.Box(-np.inf, np.inf, shape=(2, 3), dtype=np.float64),
    ],
)
def test_space_round_trip(space):
    assert space_from_dict(space_to_dict(space)) == space


def test_unstorable_space():
    # (MultiBinary, Dict and Tuple spaces are stored now: tests/networks/test_encoders.py)
    with pytest.raises(CheckpointError):
        space_to_dict(spaces.Text(5))
    with pytest.raises(CheckpointError, match="unknown space type"):
        space_from_dict({"type": "Graph"})


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        PPO.load(tmp_path / "nope.pt")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in run directory"):
        PPO.load(empty_dir)
    not_a_zip = tmp_path / "not_a_zip.pt"
    not_a_zip.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(not_a_zip)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        read_checkpoint(empty)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a clippo checkpoint"):
        read_checkpoint(other)


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint", b"hello\n", b"(((((", bytes(range(256))],
    ids=["text", "short-text", "pickle-marks", "binary"],
)
def test_garbage_file_gives_checkpoint_error(tmp_path, content):
    """read_checkpoint promises a one-line CheckpointError for any file that is not a checkpoint."""
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    agent = PPO("CartPole-v1", **TINY)
    path = agent.save(tmp_path / "agent.pt")
    agent.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        PPO.load(path)


def test_wrong_format_version(tmp_path):
    agent = PPO("CartPole-v1", **TINY)
    payload = agent.state_dict()
    agent.close()
    payload["format_version"] = 999
    path = write_atomic(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version 999"):
        PPO.load(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "clippo-checkpoint", "format_version": 1, "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(path)


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "ckpt.pt"
    write_atomic({"a": torch.ones(3)}, target)
    write_atomic({"a": torch.zeros(3)}, target)  # overwrite
    assert sorted(p.name for p in target.parent.iterdir()) == ["ckpt.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.zeros(3))


def test_prune_keeps_newest(tmp_path):
    for step in (10, 200, 3000, 40000):
        write_atomic({"s": step}, periodic_checkpoint_path(tmp_path, step))
    prune_checkpoints(tmp_path, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [periodic_checkpoint_path(tmp_path, s).name for s in (3000, 40000)]


def test_state_dict_holds_only_plain_data(tmp_path):
    agent = PPO("Pendulum-v1", **TINY, normalize_observations=True, seed=0)
    path = agent.save(tmp_path / "a.pt")
    agent.close()
    # loading with weights_only=True succeeds: no pickled classes inside
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "clippo-checkpoint"
    assert set(payload) >= {"config", "model", "optimizer", "obs_normalizer", "reward_scaler", "generator"}


@pytest.mark.parametrize("env_id", ["MountainCar-v0", "Acrobot-v1", "CartPole-v1"])
def test_a_trained_runs_checkpoint_with_env_state_loads_with_weights_only(tmp_path, env_id):
    """The envs' state is in the checkpoint (exact resume); MountainCar keeps its state as a tuple
    of numpy float64 scalars (a float subclass), which must not be pickled as numpy objects."""
    agent = PPO(env_id, **TINY, vector_env="sync", total_steps=128, seed=0, run_dir=tmp_path, tensorboard=False)
    agent.learn()
    agent.close()
    payload = torch.load(tmp_path / "agent.pt", weights_only=True)
    assert payload["runner"]["envs"] is not None
    PPO.load(tmp_path).close()


def test_generator_state_from_another_device_kind_seeds_a_reproducible_stream():
    """A CUDA generator's state (16 bytes: seed and offset) cannot be set on a CPU generator (and
    the other way round): loading across devices seeds the new generator from the saved state."""
    from clippo.agent import restore_generator

    same = torch.Generator().manual_seed(5)
    state = same.get_state()
    expected = torch.rand(3, generator=same)
    target = torch.Generator()
    restore_generator(target, state)
    assert torch.equal(torch.rand(3, generator=target), expected)  # same kind: exactly where it was

    foreign = torch.arange(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    first, second, other = torch.Generator(), torch.Generator(), torch.Generator()
    restore_generator(first, foreign)
    restore_generator(second, foreign)
    restore_generator(other, foreign + 1)
    draws = [torch.rand(3, generator=g) for g in (first, second, other)]
    assert torch.equal(draws[0], draws[1])  # reproducible
    assert not torch.equal(draws[0], draws[2])  # and a function of the saved state


def test_checkpoint_from_before_the_paired_layout_loads_its_optimizer_state_by_name(tmp_path):
    """Checkpoints written before the optimizer recorded its layout hold Adam's moments in the
    model's parameter order; they load into today's paired layout parameter by parameter."""
    agent = PPO("CartPole-v1", **TINY, seed=5)
    agent.learn(total_steps=agent.batch_size)
    payload = agent.state_dict()
    optimizer = agent.optimizer
    agent.close()
    sizes = dict(zip(optimizer.names, (p.numel() for p in optimizer.params), strict=False))
    model_order = [name for name, _ in agent.model.named_parameters()]
    assert model_order != optimizer.names  # the layouts differ: the test means something

    def in_model_order(vector):
        pieces = dict(zip(optimizer.names, vector.split([sizes[name] for name in optimizer.names]), strict=False))
        return torch.cat([pieces[name] for name in model_order])

    old = dict(payload["optimizer"])
    del old["names"]
    old["exp_avg"], old["exp_avg_sq"] = in_model_order(old["exp_avg"]), in_model_order(old["exp_avg_sq"])
    payload = {**payload, "optimizer": old}
    loaded = PPO.load(write_atomic(payload, tmp_path / "old.pt"))
    assert torch.equal(loaded.optimizer.exp_avg, optimizer.exp_avg)
    assert torch.equal(loaded.optimizer.exp_avg_sq, optimizer.exp_avg_sq)
    loaded.close()


#: How version-1 checkpoints (MLP-only clippo) named the encoder parameters: today's prefix, then v1's.
V1_PREFIXES = {
    "actor_encoder.layers.": "actor_body.",
    "critic_encoder.layers.": "critic_body.",
    "encoder.layers.": "trunk.",
}
#: Config fields that came with format version 2 (a version-1 checkpoint has none of them).
V2_CONFIG_FIELDS = (
    "encoder",
    "encoder_kwargs",
    "fast_path",
    "reward_sign",
    "episodic_life",
    "eval_every",
    "stop_at_return",
)


def v1_name(name: str) -> str:
    for new, old in V1_PREFIXES.items():
        if name.startswith(new):
            return old + name[len(new) :]
    return name


@pytest.mark.parametrize("network", ["separate", "shared"])
def test_version_1_checkpoint_loads_and_acts_identically(tmp_path, network):
    """A checkpoint written by the MLP-only clippo (format version 1: parameters named
    ``actor_body.*``, ``critic_body.*``, ``trunk.*``) loads with its parameters and Adam's moments
    in place: the loaded agent acts as the one that was saved."""
    agent = PPO("CartPole-v1", **TINY, network=network, seed=6)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    payload = torch.load(agent.save(tmp_path / "v2.pt"), weights_only=True)
    payload["format_version"] = 1
    payload["model"] = {v1_name(name): value for name, value in payload["model"].items()}
    payload["optimizer"]["names"] = [v1_name(name) for name in payload["optimizer"]["names"]]
    for name in V2_CONFIG_FIELDS:
        payload["config"].pop(name, None)
    old_names = list(payload["model"])
    expected = ["trunk.0.weight"] if network == "shared" else ["actor_body.0.weight", "critic_body.0.weight"]
    assert set(expected) <= set(old_names) and not any("encoder" in name for name in old_names)
    path = tmp_path / "v1.pt"
    torch.save(payload, path)

    loaded = PPO.load(path)
    obs = np.random.default_rng(7).uniform(-0.5, 0.5, size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    # stochastic actions too: the same weights and the same generator state
    np.testing.assert_array_equal(loaded.act(obs), agent.act(obs))
    assert all(torch.equal(a, b) for a, b in zip(params(loaded), params(agent), strict=False))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model.value(torch.from_numpy(obs)), agent.model.value(torch.from_numpy(obs)), rtol=0, atol=0
        )
    assert torch.equal(loaded.optimizer.exp_avg, agent.optimizer.exp_avg)
    assert torch.equal(loaded.optimizer.exp_avg_sq, agent.optimizer.exp_avg_sq)
    assert loaded.global_step == agent.global_step and loaded.update == agent.update
    loaded.close()

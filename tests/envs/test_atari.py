"""Atari and MinAtar vector envs (clippo.envs.atari): the contract every mode keeps, and the errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from clippo.config.ppo_config import CHOICES
from clippo.envs import atari, families
from clippo.envs.make import make_vector_env

ATARI_MODES = ["ale", "envpool", "sync", "async"]
FRAMES = spaces.Box(0, 255, (4, 84, 84), np.uint8)


def _need(mode: str) -> None:
    if mode == "envpool":
        pytest.importorskip("envpool")  # not a clippo dependency


def test_ids():
    for env_id in ("ALE/Breakout-v5", "ALE/MontezumaRevenge-v5", "BreakoutNoFrameskip-v4", "PongNoFrameskip-v4"):
        assert families.is_atari(env_id) and not families.is_minatar(env_id)
    for env_id in ("CartPole-v1", "Breakout-v4", "BreakoutDeterministic-v4", "MinAtar/Breakout-v1", "ALE/Breakout-v4"):
        assert not families.is_atari(env_id)
    assert families.is_minatar("MinAtar/SpaceInvaders-v1") and not families.is_minatar("CartPole-v1")


def test_one_family_rule_for_ram_ids():
    """ALE RAM ids are plain ids everywhere: no Atari preset, no pixel pipeline, generic knobs allowed."""
    from clippo.config.ppo_config import PPOConfig, env_preset_values

    assert families.family("ALE/Pong-ram-v5") is None and families.family("ALE/Pong-v5") == "atari"
    assert env_preset_values("ALE/Pong-ram-v5") == {}
    assert env_preset_values("ALE/Pong-v5")  # the atari preset
    PPOConfig(env_id="ALE/Pong-ram-v5", frame_stack=4)  # generic knobs are valid for it
    with pytest.raises(ValueError, match=r"^unknown environment id 'ALE/Pong-ram-v5'"):
        families.check_env_id("ALE/Pong-ram-v5")  # ale-py 0.11 registers no RAM ids (obs_type="ram" instead)


def test_sticky_actions_are_the_envs_own():
    families.ensure_registered("ALE/Breakout-v5")
    assert atari._ale_settings("ALE/Breakout-v5", {})["repeat_action_probability"] == 0.25
    assert atari._ale_settings("BreakoutNoFrameskip-v4", {})["repeat_action_probability"] == 0.0
    assert (
        atari._ale_settings("ALE/Breakout-v5", {"repeat_action_probability": 0.0})["repeat_action_probability"] == 0.0
    )


@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=pytest.mark.slow) if m == "async" else m for m in ATARI_MODES]
)  # (async starts a process per env)
def test_atari_contract_and_next_step_autoreset(mode):
    """Spaces, dtypes, info["lives"] and NEXT_STEP autoreset, an episode cut short at 60 frames (15 steps)."""
    _need(mode)
    envs = make_vector_env("ALE/Breakout-v5", 2, mode, max_num_frames_per_episode=60)
    try:
        assert envs.single_observation_space == FRAMES
        assert envs.observation_space.shape == (2, 4, 84, 84)
        assert envs.single_action_space == spaces.Discrete(4)
        assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        obs, info = envs.reset(seed=1)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        assert info["lives"].shape == (2,) and info["lives"].dtype.kind == "i"
        ended = None
        for _ in range(20):
            obs, rewards, terminated, truncated, info = envs.step(np.array([3, 2]))
            assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
            assert rewards.shape == (2,) and rewards.dtype == np.float32
            assert terminated.dtype == bool and truncated.dtype == bool
            assert info["lives"].shape == (2,) and info["lives"].dtype.kind == "i"
            if truncated.any() or terminated.any():
                ended = terminated | truncated
                break
        assert ended is not None, "the 60-frame limit did not end an episode"
        _, rewards, terminated, truncated, info = envs.step(np.array([0, 0]))
        # the step after the end is the first observation of a fresh game
        assert not (terminated[ended].any() or truncated[ended].any())
        assert (rewards[ended] == 0).all() and (info["lives"][ended] == 5).all()
    finally:
        envs.close()


@pytest.mark.parametrize("mode", ["ale", "envpool", "sync"])
def test_atari_rewards_are_raw(mode):
    """Space Invaders scores 5-30 points per invader: a clipped reward would never exceed 1."""
    _need(mode)
    envs = make_vector_env("ALE/SpaceInvaders-v5", 2, mode)
    try:
        envs.reset(seed=0)
        rng = np.random.default_rng(0)
        best = 0.0
        for _ in range(400):
            _, rewards, *_ = envs.step(rng.integers(0, envs.single_action_space.n, 2))
            best = max(best, float(rewards.max()))
            if best > 1:
                break
        assert best > 1
    finally:
        envs.close()


def test_noframeskip_v4_ids():
    envs = make_vector_env("PongNoFrameskip-v4", 2, "ale")
    try:
        obs, info = envs.reset(seed=0)
        assert obs.shape == (2, 4, 84, 84) and envs.single_action_space == spaces.Discrete(6)
        assert "lives" in info
    finally:
        envs.close()


@pytest.mark.slow
def test_minatar_observations_and_next_step_autoreset():
    envs = make_vector_env("MinAtar/Breakout-v1", 2)
    try:
        assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        shape = envs.single_observation_space.shape
        assert len(shape) == 3 and shape[:2] == (10, 10) and envs.single_observation_space.dtype == bool
        obs, info = envs.reset(seed=0)
        assert obs.shape == (2, *shape) and obs.dtype == bool and info == {}
        rng = np.random.default_rng(0)
        for _ in range(2000):
            obs, rewards, terminated, _truncated, info = envs.step(rng.integers(0, 3, 2))
            if terminated.any():
                break
        assert terminated.any() and info == {}
        ended = terminated.copy()
        _, rewards, terminated, _, _ = envs.step(np.zeros(2, dtype=np.int64))
        assert (rewards[ended] == 0).all() and not terminated[ended].any()
    finally:
        envs.close()


@pytest.mark.slow  # starts a process per env
def test_minatar_async():
    envs = make_vector_env("MinAtar/Freeway-v1", 2, "async")
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape[:3] == (2, 10, 10) and obs.dtype == bool
    finally:
        envs.close()


def _one_line_error(call, *parts: str) -> str:
    with pytest.raises(ValueError) as exc:
        call()
    message = str(exc.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def test_mode_errors():
    assert {"ale", "envpool"} <= set(CHOICES["vector_env"])
    _one_line_error(
        lambda: make_vector_env("ALE/Breakout-v5", 2, "threads"),
        "'threads'",
        "ALE/Breakout-v5",
        "ale",
        "envpool",
        "async",
        "sync",
    )
    _one_line_error(lambda: make_vector_env("CartPole-v1", 2, "ale"), "'ale'", "CartPole-v1", "sync", "Atari")
    _one_line_error(lambda: make_vector_env("CartPole-v1", 2, "envpool"), "'envpool'", "CartPole-v1", "native")
    _one_line_error(
        lambda: make_vector_env("MinAtar/Breakout-v1", 2, "ale"), "'ale'", "MinAtar/Breakout-v1", "sync", "async"
    )
    _one_line_error(lambda: make_vector_env(lambda: None, 2, "ale"), "'ale'", "factory")
    _one_line_error(lambda: make_vector_env("ALE/NoSuchGame-v5", 2), "unknown environment id 'ALE/NoSuchGame-v5'")
    _one_line_error(
        lambda: make_vector_env("MinAtar/NoSuchGame-v1", 2), "unknown environment id 'MinAtar/NoSuchGame-v1'"
    )


def test_missing_packages_are_one_line_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)  # import ale_py now raises ImportError
    message = _one_line_error(lambda: make_vector_env("ALE/Breakout-v5", 2))
    assert message == "environment 'ALE/Breakout-v5' needs the atari extra: pip install 'clippo[atari]'"
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "minatar", None)
    monkeypatch.setitem(sys.modules, "minatar.gym", None)
    _one_line_error(
        lambda: make_vector_env("MinAtar/Breakout-v1", 2), "'MinAtar/Breakout-v1'", "minatar extra", "clippo[minatar]"
    )
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "envpool", None)
    _one_line_error(lambda: make_vector_env("ALE/Breakout-v5", 2, "envpool"), "pip install envpool")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "cv2", None)
    _one_line_error(lambda: make_vector_env("ALE/Breakout-v5", 2, "sync"), "OpenCV", "clippo[atari]")

"""clippo enjoy (clippo.tools.playback): per-episode returns of a trained agent, a video, errors."""

from __future__ import annotations

import sys

import gymnasium as gym
import pytest

from clippo import PPO
from clippo.tools.playback import play
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A very short CartPole run (short episodes make a quick video) with observation normalization (the agent must see normalized inputs)."""
    path = tmp_path_factory.mktemp("enjoy") / "run"
    code, _, err = run_cli(
        [
            "train",
            "CartPole-v1",
            "--run-dir",
            str(path),
            "--total-steps",
            "1024",
            "--num-envs",
            "8",
            "--num-steps",
            "64",
            "--normalize-observations",
            "--eval-episodes",
            "0",
            "--no-tensorboard",
            "--checkpoint-every",
            "0",
        ]
    )
    assert code == 0, err
    return path


def test_enjoy_prints_each_episode(run_dir):
    code, out, err = run_cli(["enjoy", str(run_dir), "--episodes", "3", "--seed", "5"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["episode 1", "episode 2", "episode 3"]
    assert "CartPole-v1: mean return" in lines[3] and "(deterministic)" in lines[3]


def test_enjoy_matches_evaluation_with_normalized_observations(run_dir):
    """The same episodes as PPO.evaluate on a single env: the frozen normalization is applied."""
    agent = PPO.load(run_dir)
    assert agent.obs_normalizer.enabled and agent.obs_normalizer.stats.count > 1
    expected = agent.evaluate(episodes=3, seed=11, env=lambda: gym.make("CartPole-v1"), num_envs=1)
    result = play(run_dir, episodes=3, seed=11)
    assert result.returns == expected["returns"]
    assert result.lengths and all(
        r == n for r, n in zip(result.returns, result.lengths, strict=False)
    )  # CartPole pays 1 a step
    stochastic = play(run_dir, episodes=2, seed=11, deterministic=False)
    assert len(stochastic.returns) == 2


def test_enjoy_records_one_video_of_all_episodes(run_dir, tmp_path):
    pytest.importorskip("moviepy")
    from moviepy import VideoFileClip

    out = tmp_path / "videos" / "agent.mp4"
    code, stdout, err = run_cli(["enjoy", str(run_dir), "--episodes", "2", "--seed", "3", "--video", str(out)])
    assert code == 0, err
    assert f"video: {out}" in stdout
    lengths = [int(line.split("length ")[1]) for line in stdout.splitlines() if line.startswith("episode")]
    clip = VideoFileClip(str(out))
    try:
        frames = round(clip.duration * clip.fps)
        assert clip.size == [600, 400]
    finally:
        clip.close()
    # one frame per step plus each episode's first frame, give or take the encoder's last frame
    assert abs(frames - (sum(lengths) + len(lengths))) <= 1
    assert not list(out.parent.glob("*episode*"))  # the per-episode parts are gone


def test_video_without_moviepy_is_a_one_line_error(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "moviepy", None)  # import moviepy now raises ImportError
    code, _, err = run_cli(["enjoy", str(run_dir), "--video", str(tmp_path / "x.mp4")])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "moviepy" in err and "clippo[video]" in err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    "args, needle",
    [(["--episodes", "0"], "--episodes=0"), (["--video", "out.gif"], ".mp4")],
)
def test_bad_arguments_are_one_line_errors(run_dir, args, needle):
    code, _, err = run_cli(["enjoy", str(run_dir), *args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_missing_run_dir(tmp_path):
    code, _, err = run_cli(["enjoy", str(tmp_path / "nope")])
    assert code == 2 and "no such checkpoint file or run directory" in err

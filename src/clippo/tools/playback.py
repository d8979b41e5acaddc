"""Watching a trained agent (what ``clippo enjoy`` does): whole episodes, optionally on video.

The agent is loaded with :meth:`clippo.PPO.load` and acts through :meth:`clippo.PPO.act`, which
applies the observation normalization frozen at the end of training: the policy sees exactly the
inputs it was trained on. Episodes are run by :func:`clippo.rollout.evaluation.run_episodes`, the code
behind ``clippo eval``, on a single env (a video shows one episode after another). Recording
uses Gymnasium's ``RecordVideo`` with ``render_mode="rgb_array"``, so no display is needed; it
writes through moviepy (``pip install 'clippo[video]'``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

VIDEO_PREFIX = "episode"


@dataclass
class PlaybackResult:
    env_id: str
    returns: list[float]
    lengths: list[int]
    video_path: Path | None

    @property
    def mean_return(self) -> float:
        return sum(self.returns) / len(self.returns)


def require_moviepy() -> None:
    """One-line error when video recording is asked for without moviepy."""
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise ValueError(
            "--video needs moviepy (Gymnasium's RecordVideo writes through it): pip install 'clippo[video]'"
        ) from None


def play(
    path: str | Path,
    episodes: int = 3,
    seed: int | None = None,
    deterministic: bool = True,
    video: str | Path | None = None,
    trust_code: bool = False,
    encoder: object = None,
    env_modules: list[str] | tuple[str, ...] = (),
) -> PlaybackResult:
    """Run ``episodes`` whole episodes of the agent in ``path`` (a run directory or checkpoint).

    With ``video``, every episode is recorded and the episodes are joined into that one MP4 file
    (written atomically, never through a link). ``encoder`` and ``trust_code``: as for
    :meth:`clippo.PPO.load`, as is ``env_modules``. Frames smaller than ``MIN_VIDEO_SIDE`` pixels
    (MinAtar's 10x10) are scaled up by a whole factor, pixels kept sharp.
    """
    from clippo.agent import PPO
    from clippo.core.safety import refuse_symlink
    from clippo.envs import atari
    from clippo.envs.families import check_env_id, is_atari
    from clippo.envs.make import make_run_envs
    from clippo.rollout.evaluation import run_episodes

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes={episodes!r} is invalid: it must be an integer >= 1")
    video_path = Path(video) if video is not None else None
    if video_path is not None:
        if video_path.suffix.lower() != ".mp4":
            raise ValueError(f"cannot write {str(video_path)!r}: give a file name ending in .mp4")
        require_moviepy()
        refuse_symlink(video_path)
        if not os.environ.get("DISPLAY"):
            # MuJoCo's default OpenGL backend (GLFW) needs a display; EGL renders off-screen. It
            # is read when MuJoCo's renderer is first imported, so set it before anything loads.
            os.environ.setdefault("MUJOCO_GL", "egl")
    agent = PPO.load(path, encoder=encoder, trust_code=trust_code, env_modules=env_modules)
    if hasattr(agent, "learners"):  # a multi-agent (PettingZoo) run
        return play_multiagent(agent, episodes, seed, deterministic, video_path)
    env_id = agent.config.env_id
    check_env_id(env_id, agent.config.env_modules)  # (their import was decided by PPO.load: clippo.core.safety)
    scratch = Path(tempfile.mkdtemp(prefix="clippo-video-")) if video_path is not None else None
    # A folder RecordVideo creates itself (it warns about one that exists).
    folder = scratch / "episodes" if scratch is not None else None

    def make(**kwargs) -> gym.Env:
        # Atari games get the agent's preprocessing; the video still shows the game's own screen.
        return atari.make_preprocessed_atari_env(env_id, **kwargs) if is_atari(env_id) else gym.make(env_id, **kwargs)

    def make_env() -> gym.Env:
        if folder is None:
            return make()
        # rgb_array rendering opens no window, but SDL (under pygame's renderers) still looks for
        # a display and prints an error on a machine without one.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        env = UpscaledRender(make(render_mode="rgb_array"))
        # One file per episode (recording everything as one clip would hold every frame in memory).
        return gym.wrappers.RecordVideo(env, str(folder), episode_trigger=lambda _: True, name_prefix=VIDEO_PREFIX)

    try:
        envs = make_run_envs(make_env, 1, agent.config, "sync")  # (the run's preprocessing outside the recorder)
        try:
            agent._check_spaces(envs)
            returns, lengths = run_episodes(envs, agent.acting_policy(deterministic), episodes, seed)
        finally:
            envs.close()  # RecordVideo writes the last episode's file on close
        if video_path is not None:
            assert folder is not None  # (made with video_path)
            join_videos(sorted(folder.glob(f"{VIDEO_PREFIX}-episode-*.mp4"), key=_episode_number), video_path)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return PlaybackResult(env_id, returns, lengths, video_path)


#: the shorter side a recorded frame is scaled up to at least (MinAtar renders 10x10 pixels)
MIN_VIDEO_SIDE = 256


def upscale_frame(frame, min_side: int = MIN_VIDEO_SIDE):
    """``frame`` (H, W, C) repeated by a whole factor so that its shorter side is at least
    ``min_side`` and both sides are even (H.264 needs even sizes); larger frames are returned as
    they are. A float frame in [0, 1] (MinAtar's) becomes uint8, as video encoders expect."""
    if frame is None or getattr(frame, "ndim", 0) < 2:
        return frame
    if frame.dtype.kind == "f":
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    height, width = frame.shape[:2]
    if min(height, width) >= min_side:
        return frame
    factor = -(-min_side // min(height, width))
    if (height * factor) % 2 or (width * factor) % 2:
        factor += 1
    return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


class UpscaledRender(gym.Wrapper):
    """An env whose ``render()`` frames are scaled up by ``upscale_frame`` (10x10 is unwatchable)."""

    def render(self):
        return upscale_frame(self.env.render())


def _episode_number(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[-1])


def join_videos(parts: list[Path], output: Path) -> None:
    """Concatenate the per-episode MP4 files into ``output`` (a single part is just copied), joined
    beside the parts first, then copied into place atomically and never through a link."""
    from clippo.core.safety import atomic_output

    if not parts:
        raise ValueError("no video was recorded: the environment rendered no frames")
    output.parent.mkdir(parents=True, exist_ok=True)
    source = parts[0]
    if len(parts) > 1:
        from moviepy import VideoFileClip, concatenate_videoclips

        source = parts[0].with_name("joined.mp4")
        clips = [VideoFileClip(str(p)) for p in parts]
        try:
            joined = concatenate_videoclips(clips)
            joined.write_videofile(str(source), fps=clips[0].fps, logger=None, audio=False)
        finally:
            for clip in clips:
                clip.close()
    with atomic_output(output, suffix=".mp4") as f, open(source, "rb") as video:
        shutil.copyfileobj(video, f)


def play_multiagent(
    agent, episodes: int, seed: int | None = None, deterministic: bool = True, video: Path | None = None
) -> PlaybackResult:
    """``play`` for a multi-agent (PettingZoo) agent: whole episodes on one env copy with every
    agent acting by its policy (both seats of a game: the agent against itself); ``returns`` are
    team returns (the sum of all agents' rewards). With ``video``, the env is made with
    ``render_mode="rgb_array"`` and its frame after the reset and after every step is recorded:
    one clip per episode, joined into that MP4 file."""
    import dataclasses

    from clippo.multiagent.evaluation import play_episodes, policy_chooser

    env_id = agent.config.env_id
    choose, episode_over = policy_chooser(agent, deterministic)

    if video is None:
        played = play_episodes(agent, episodes, seed, choose, 1, on_episode_end=episode_over)
        return PlaybackResult(env_id, [e.team_return for e in played], [e.length for e in played], None)
    source = agent.env_source
    if source is None:
        agent.new_adapter()  # (the one-line error: the checkpoint names an env module nobody trusted)
    recorder = FrameRecorder()
    agent.env_source = dataclasses.replace(
        source, constructor=recorder.wrap(source.constructor), kwargs={**source.kwargs, "render_mode": "rgb_array"},
        probe=None,
    )  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="clippo-video-"))
    try:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # (pygame renderers look for a display otherwise)
        played = play_episodes(agent, episodes, seed, choose, 1, on_episode_end=episode_over)
        clips = recorder.episodes[:episodes]
        if not clips or not all(clips):
            raise ValueError(f"no video was recorded: {env_id!r} rendered no frames with render_mode='rgb_array'")
        parts = []
        for index, frames in enumerate(clips, start=1):
            parts.append(scratch / f"{VIDEO_PREFIX}-episode-{index}.mp4")
            write_clip(frames, parts[-1], recorder.fps)
        join_videos(parts, video)
    finally:
        agent.env_source = source
        shutil.rmtree(scratch, ignore_errors=True)
    return PlaybackResult(env_id, [e.team_return for e in played], [e.length for e in played], video)


class FrameRecorder:
    """Wraps a PettingZoo env constructor so that every env it makes records its rendered frame
    after each reset and step (one list of frames per episode, in ``episodes``)."""

    def __init__(self) -> None:
        self.episodes: list[list[np.ndarray]] = []
        self.fps = 30

    def wrap(self, constructor):
        def make(**kwargs):
            try:
                env = constructor(**kwargs)
            except TypeError as exc:
                raise ValueError(
                    f"the env does not take render_mode='rgb_array', which --video needs: {str(exc).splitlines()[0]}"
                ) from None
            return self.recording(env)

        return make

    def recording(self, env):
        from pettingzoo.utils import BaseParallelWrapper, BaseWrapper

        from clippo.multiagent.pettingzoo import is_parallel_env

        recorder = self
        self.fps = max(1, int((getattr(env, "metadata", None) or {}).get("render_fps", 30)))
        base = BaseParallelWrapper if is_parallel_env(env) else BaseWrapper

        class Recording(base):  # type: ignore[valid-type, misc]
            def reset(self, *args, **kwargs):
                result = super().reset(*args, **kwargs)
                recorder.episodes.append([])
                recorder.frame(self.env)
                return result

            def step(self, *args, **kwargs):
                result = super().step(*args, **kwargs)
                recorder.frame(self.env)
                return result

        return Recording(env)

    def frame(self, env) -> None:
        image = env.render()
        if isinstance(image, np.ndarray) and image.ndim == 3:
            self.episodes[-1].append(upscale_frame(image))


def write_clip(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """One episode's frames as an MP4 file (through moviepy)."""
    from moviepy import ImageSequenceClip

    clip = ImageSequenceClip(frames, fps=fps)
    try:
        clip.write_videofile(str(path), fps=fps, logger=None, audio=False)
    finally:
        clip.close()

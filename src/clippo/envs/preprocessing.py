"""Generic observation preprocessing for pixel tasks (CarRacing and the like), from Gymnasium's
own wrappers: action repeat, resizing, grayscale, frame stacking.

Atari and MinAtar ids have the standard preprocessing of their own (``clippo.envs.atari``); these
knobs are for every other env made from an id or a factory, as RL-Zoo wraps CarRacing. Each env
is wrapped in this order (RL-Zoo's):

1. ``frame_skip``: each action is stepped that many times, the rewards summed and the last
   observation returned, stopping early where the episode ends (Gymnasium's ``RepeatAction``,
   which is RL-Zoo's ``FrameSkip``; ``MaxAndSkipObservation`` max-pools the last two frames
   against Atari's flicker, which would only blur a moving car);
2. ``resize``: images to ``(height, width)`` (``ResizeObservation``: OpenCV's area
   interpolation);
3. ``grayscale``: RGB images to one luminance plane ``(H, W)`` (``GrayscaleObservation``);
4. ``frame_stack``: the last that many observations along a new first axis
   (``FrameStackObservation``, zero frames before an episode's first, as SB3's VecFrameStack).

Grayscale 64x64 frames stacked in twos are ``(2, 64, 64)`` uint8 images: clippo's encoders read
them as CHW (the smaller of the first and last axis is the channels) and give them to the Nature
CNN. The policy sees, and an exported graph takes, the preprocessed observations.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from clippo.config.ppo_config import PPOConfig


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing knobs of a run (see ``PPOConfig``); calling it wraps one env."""

    frame_skip: int = 1
    resize: tuple[int, ...] = ()
    grayscale: bool = False
    frame_stack: int = 1

    @classmethod
    def from_config(cls, config: PPOConfig) -> Preprocessing:
        return cls(config.frame_skip, tuple(config.resize), config.grayscale, config.frame_stack)

    @property
    def active(self) -> bool:
        """Whether it changes anything (else envs are left as they are made)."""
        return self != Preprocessing()

    def __str__(self) -> str:
        """The knobs it sets, as config values: ``frame_skip=2, resize=[64, 64]``."""
        default = Preprocessing()
        changed = [
            (f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)
        ]
        return ", ".join(f"{name}={list(value) if isinstance(value, tuple) else value}" for name, value in changed)

    def __call__(self, env: gym.Env) -> gym.Env:
        """``env`` wrapped; a one-line ValueError where a step does not fit its observations."""
        if self.frame_skip > 1:
            repeat = getattr(gym.wrappers, "RepeatAction", None)
            if repeat is None:  # pragma: no cover - Gymnasium 1.1 and 1.2
                raise ValueError(
                    f"frame_skip={self.frame_skip} needs Gymnasium >= 1.3 (its RepeatAction wrapper): pip install -U "
                    "gymnasium"
                )
            env = repeat(env, self.frame_skip)
        if self.resize:
            _require_pixels(
                env.observation_space, f"resize={list(self.resize)}", "uint8 images (H, W) or (H, W, C)", (2, 3)
            )
            try:
                env = gym.wrappers.ResizeObservation(env, self.resize)
            except gym.error.DependencyNotInstalled:
                raise ValueError(
                    f"resize={list(self.resize)} needs OpenCV: pip install opencv-python-headless (part of clippo's "
                    "box2d extra)"
                ) from None
        if self.grayscale:
            _require_pixels(env.observation_space, "grayscale=True", "uint8 RGB images (H, W, 3)", (3,))
            if env.observation_space.shape[-1] != 3:
                raise ValueError(
                    f"grayscale=True is invalid for observation space {env.observation_space}: it applies to uint8 "
                    "RGB images (H, W, 3)"
                )
            env = gym.wrappers.GrayscaleObservation(env, keep_dim=False)
        if self.frame_stack > 1:
            space = env.observation_space
            if isinstance(space, spaces.Box) and len(space.shape) == 3:
                raise ValueError(
                    f"frame_stack={self.frame_stack} is invalid for observation space {space}: stacked (H, W, C) "
                    "images "
                    "are 4-D, which no encoder reads; stack (H, W) frames (grayscale=True makes them of RGB images)"
                )
            env = gym.wrappers.FrameStackObservation(env, self.frame_stack, padding_type="zero")
        return env


def _require_pixels(space: gym.Space, what: str, allowed: str, dims: tuple[int, ...]) -> None:
    """A one-line error unless ``space`` is a uint8 Box of 0-255 values with ``dims`` axes."""
    ok = (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) in dims
        and bool(np.all(space.low == 0) and np.all(space.high == 255))
    )
    if not ok:
        raise ValueError(f"{what} is invalid for observation space {space}: it applies to {allowed} of values 0-255")

"""Tiny environments and a user encoder for the tests of images, Dict observations and encoders."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn


class SpotImageEnv(gym.Env):
    """A ``size x size`` one-channel uint8 picture with one bright pixel in its left or right
    half; action 0 (left) or 1 (right) earns 1 when it names the side. Episodes last ``length``
    steps, so the best return is ``length`` and a random policy's is half of it."""

    metadata: dict = {}

    def __init__(self, size: int = 10, length: int = 8, channels_last: bool = True) -> None:
        self.size, self.length, self.channels_last = size, length, channels_last
        shape = (size, size, 1) if channels_last else (1, size, size)
        self.observation_space = spaces.Box(0, 255, shape, dtype=np.uint8)
        self.action_space = spaces.Discrete(2)

    def _observe(self) -> np.ndarray:
        self.side = int(self.np_random.integers(2))
        image = np.zeros((self.size, self.size), dtype=np.uint8)
        half = self.size // 2
        image[self.np_random.integers(self.size), self.side * half + self.np_random.integers(half)] = 255
        return image[..., None] if self.channels_last else image[None]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observe(), {}

    def step(self, action):
        reward = float(int(action) == self.side)
        self.t += 1
        return self._observe(), reward, self.t >= self.length, False, {}


class DictGoalEnv(gym.Env):
    """Dict observations ``{"position": Box(2), "goal": Discrete(3)}``: the rewarded action is
    ``(goal + (position[0] > 0)) % 3``, so a policy needs both fields (each alone earns about a
    third to a half of the best return, ``length``)."""

    metadata: dict = {}

    def __init__(self, length: int = 8) -> None:
        self.length = length
        self.observation_space = spaces.Dict(
            {"position": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32), "goal": spaces.Discrete(3)}
        )
        self.action_space = spaces.Discrete(3)

    def _observe(self) -> dict:
        self.obs = {
            "position": self.np_random.uniform(-1, 1, 2).astype(np.float32),
            "goal": int(self.np_random.integers(3)),
        }
        return self.obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observe(), {}

    def step(self, action):
        target = (self.obs["goal"] + int(self.obs["position"][0] > 0)) % 3
        reward = float(int(action) == target)
        self.t += 1
        return self._observe(), reward, self.t >= self.length, False, {}


class TinyEncoder(nn.Module):
    """A user encoder as a user would write one: built as ``TinyEncoder(observation_space, width=...)``."""

    def __init__(self, observation_space: spaces.Space, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(observation_space.shape)), width), nn.ReLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float())


class MaskedGridEnv(gym.Env):
    """``MultiDiscrete([3, 4])`` actions with a random mask each step (at least one valid choice
    per component) in ``info["action_mask"]`` (7 booleans, the components concatenated); the
    observation is the mask as floats. ``step`` raises on a masked choice; each valid step earns 1.
    ``dead_end_at``: from that step of an episode on, the mask is all false (an env bug, which
    clippo must report rather than act on)."""

    metadata: dict = {"render_modes": []}

    def __init__(self, length: int = 5, dead_end_at: int | None = None) -> None:
        self.length, self.dead_end_at = length, dead_end_at
        self.action_space = spaces.MultiDiscrete([3, 4])
        self.observation_space = spaces.Box(0.0, 1.0, (7,), dtype=np.float32)
        self.t = 0

    def _observe(self) -> tuple[np.ndarray, dict]:
        mask = self.np_random.random(7) < 0.5
        mask[int(self.np_random.integers(3))] = True
        mask[3 + int(self.np_random.integers(4))] = True
        if self.dead_end_at is not None and self.t >= self.dead_end_at:
            mask[:] = False
        self.mask = mask
        return mask.astype(np.float32), {"action_mask": mask}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observe()

    def step(self, action):
        a, b = (int(x) for x in action)
        if not (self.mask[a] and self.mask[3 + b]):
            raise ValueError(f"invalid action {[a, b]} under mask {self.mask.astype(int).tolist()}")
        self.t += 1
        obs, info = self._observe()
        return obs, 1.0, self.t >= self.length, False, info


class CueEnv(gym.Env):
    """A memory task: the first observation shows a cue (``[+-1, 0]``), the next ones show
    nothing (``[0, 0]``) until the last, a query (``[0, 1]``), where action 1 earns 1 if the cue
    was +1 and action 0 if it was -1; no other step earns anything. A feed-forward policy earns
    0.5 per episode at best, one with memory 1. The observation also carries the step index
    (``t`` as a third entry) so that tests can tell where episodes begin."""

    metadata: dict = {}

    def __init__(self, length: int = 3) -> None:
        self.length = length
        self.observation_space = spaces.Box(-1.0, float(length), (3,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def _observe(self) -> np.ndarray:
        cue = float(self.cue) if self.t == 0 else 0.0
        return np.array([cue, float(self.t == self.length - 1), self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.cue = 0, 1 if self.np_random.random() < 0.5 else -1
        return self._observe(), {}

    def step(self, action):
        reward = float(int(action) == (self.cue > 0)) if self.t == self.length - 1 else 0.0
        self.t += 1
        done = self.t >= self.length
        return (
            (self._observe() if not done else np.array([0.0, 0.0, self.t], dtype=np.float32)),
            reward,
            done,
            False,
            {},
        )

"""Small environments for the action spaces beyond Discrete and Box, with known optima.

Registered with Gymnasium as ``clippo/...`` ids (so ``clippo train clippo/Slots-v0`` works, on
several processes too); the tests and ``benchmarks/action_spaces.py`` use them, and they are short
examples of each convention:

- ``clippo/Slots-v0``: invalid-action masking through an ``action_masks()`` method
  (``SlotsMethodEnv``; also ``clippo/SlotsDict-v0``: the mask as an ``"action_mask"`` observation
  key, PettingZoo's way; ``clippo/SlotsInfo-v0``: in ``info["action_mask"]``). ``step`` raises on
  an invalid action.
- ``clippo/ToolAmount-v0``: a hybrid ``Dict(tool=Discrete(3), amount=Box(-1, 1, (1,)))`` action.
- ``clippo/Bits-v0``: ``MultiBinary(4)`` actions.

And the standard partially observed tasks of recurrent PPO, which need memory:
``clippo/CartPoleNoVel-v1`` (CartPole-v1 observing only the cart position and the pole angle)
and ``clippo/PendulumNoVel-v1`` (Pendulum-v1 observing only cos and sin of the angle).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class SlotsEnv(gym.Env):
    """Fill ``size`` slots one at a time, in the order that earns the most.

    Each episode draws a value in [0, 1) for every slot. The action picks a slot; filling slot i
    as the t-th of the episode (t = 0, 1, ...) earns ``value_i * (size - t) / size``, so the best
    order is by decreasing value. A filled slot cannot be picked again: it is masked, and ``step``
    raises ``ValueError`` if it is picked anyway, so one unmasked sample ends a run. The episode
    ends (terminates) when every slot is filled, where the mask is all false (nothing left to
    pick). The observation is the values and the filled flags, ``Box(2 * size)``.

    ``mask_in``: ``"info"`` (``info["action_mask"]``) or ``"observation"`` (a Dict observation
    ``{"observation": ..., "action_mask": ...}``); ``SlotsMethodEnv`` has an ``action_masks()`` method.
    """

    metadata: dict = {"render_modes": []}

    def __init__(self, size: int = 6, mask_in: str = "info") -> None:
        if mask_in not in ("method", "observation", "info"):
            raise ValueError(f"mask_in={mask_in!r} is invalid: choose one of method, observation, info")
        self.size = size
        self.mask_in = mask_in
        self.action_space = spaces.Discrete(size)
        flat = spaces.Box(0.0, 1.0, (2 * size,), dtype=np.float32)
        if mask_in == "observation":
            self.observation_space = spaces.Dict({"observation": flat, "action_mask": spaces.MultiBinary(size)})
        else:
            self.observation_space = flat
        self.values = np.zeros(size, dtype=np.float32)
        self.filled = np.zeros(size, dtype=bool)
        self.t = 0

    def _observe(self) -> tuple:
        flat = np.concatenate([self.values, self.filled.astype(np.float32)])
        mask = ~self.filled
        if self.mask_in == "observation":
            return {"observation": flat, "action_mask": mask.astype(np.int8)}, {}
        return flat, ({"action_mask": mask} if self.mask_in == "info" else {})

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.values = self.np_random.random(self.size, dtype=np.float32)
        self.filled[:] = False
        self.t = 0
        return self._observe()

    def step(self, action):
        slot = int(action)
        if self.filled[slot]:
            raise ValueError(
                f"invalid action {slot}: slot {slot} is already filled (filled: {self.filled.astype(int).tolist()})"
            )
        reward = float(self.values[slot]) * (self.size - self.t) / self.size
        self.filled[slot] = True
        self.t += 1
        obs, info = self._observe()
        return obs, reward, bool(self.filled.all()), False, info

    def best_return(self) -> float:
        """The episode's highest return (slots filled by decreasing value)."""
        weights = (self.size - np.arange(self.size)) / self.size
        return float(np.sort(self.values)[::-1] @ weights)


class SlotsMethodEnv(SlotsEnv):
    """``SlotsEnv`` giving its mask through an ``action_masks()`` method (MaskablePPO's convention)."""

    def __init__(self, size: int = 6) -> None:
        super().__init__(size, mask_in="method")

    def action_masks(self) -> np.ndarray:
        """The valid actions: the slots not yet filled."""
        return ~self.filled


class ToolAmountEnv(gym.Env):
    """A hybrid action: which tool (``Discrete(3)``) and how hard (``Box(-1, 1, (1,))``).

    The observation shows the tool that is wanted (one-hot) and the amount that is wanted (in
    [-0.8, 0.8]). A step earns 1 for the wanted tool plus ``1 - min(1, |amount - wanted amount|)``:
    the optimum is 2 per step, 20 per 10-step episode; random actions earn about 7.8 an episode.
    """

    metadata: dict = {"render_modes": []}

    def __init__(self, length: int = 10) -> None:
        self.length = length
        self.action_space = spaces.Dict(
            {"tool": spaces.Discrete(3), "amount": spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)}
        )
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        self.t = 0

    def _observe(self) -> np.ndarray:
        self.tool = int(self.np_random.integers(3))
        self.amount = float(self.np_random.uniform(-0.8, 0.8))
        return np.array([*np.eye(3)[self.tool], self.amount], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observe(), {}

    def step(self, action):
        tool = int(action["tool"])
        amount = float(np.asarray(action["amount"]).reshape(-1)[0])
        reward = float(tool == self.tool) + 1.0 - min(1.0, abs(amount - self.amount))
        self.t += 1
        return self._observe(), reward, False, self.t >= self.length, {}


class BitsEnv(gym.Env):
    """``MultiBinary(size)`` actions: bit i should be 1 where observation i exceeds observation
    i + 1 (the last compared with the first). A step earns the fraction of right bits: 1 at best,
    8 per 8-step episode; random bits earn 0.5 a step."""

    metadata: dict = {"render_modes": []}

    def __init__(self, size: int = 4, length: int = 8) -> None:
        self.size, self.length = size, length
        self.action_space = spaces.MultiBinary(size)
        self.observation_space = spaces.Box(-1.0, 1.0, (size,), dtype=np.float32)
        self.t = 0

    def _observe(self) -> np.ndarray:
        self.obs = self.np_random.uniform(-1.0, 1.0, self.size).astype(np.float32)
        self.target = self.obs > np.roll(self.obs, -1)
        return self.obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._observe(), {}

    def step(self, action):
        reward = float(np.mean(np.asarray(action).astype(bool) == self.target))
        self.t += 1
        return self._observe(), reward, False, self.t >= self.length, {}


class NoVelocity(gym.ObservationWrapper):
    """An env observing only the components ``keep`` of its Box observation (the positions of
    a task whose velocities are dropped): the agent has to infer the velocities from memory."""

    def __init__(self, env: gym.Env, keep: list[int]) -> None:
        super().__init__(env)
        self.keep = np.asarray(keep)
        space = env.observation_space
        self.observation_space = spaces.Box(space.low[self.keep], space.high[self.keep], dtype=space.dtype)

    def observation(self, observation):
        return observation[self.keep]


def cartpole_no_velocity(**kwargs) -> gym.Env:
    """CartPole-v1 observing cart position and pole angle only (its 500-step limit included)."""
    return NoVelocity(gym.make("CartPole-v1", **kwargs), keep=[0, 2])


def pendulum_no_velocity(**kwargs) -> gym.Env:
    """Pendulum-v1 observing cos and sin of the angle only (its 200-step limit included)."""
    return NoVelocity(gym.make("Pendulum-v1", **kwargs), keep=[0, 1])


#: id -> (entry point, keyword arguments)
TOY_ENVS = {
    "clippo/Slots-v0": ("clippo.envs.toy:SlotsMethodEnv", {}),
    "clippo/SlotsDict-v0": ("clippo.envs.toy:SlotsEnv", {"mask_in": "observation"}),
    "clippo/SlotsInfo-v0": ("clippo.envs.toy:SlotsEnv", {"mask_in": "info"}),
    "clippo/ToolAmount-v0": ("clippo.envs.toy:ToolAmountEnv", {}),
    "clippo/Bits-v0": ("clippo.envs.toy:BitsEnv", {}),
    "clippo/CartPoleNoVel-v1": ("clippo.envs.toy:cartpole_no_velocity", {}),
    "clippo/PendulumNoVel-v1": ("clippo.envs.toy:pendulum_no_velocity", {}),
}


def register_toy_envs() -> None:
    """Register the ``clippo/...`` ids with Gymnasium (once; the modules load only on ``make``)."""
    for env_id, (entry_point, kwargs) in TOY_ENVS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=True)


register_toy_envs()  # importing the module registers them (as gym.make("clippo.envs.toy:clippo/Slots-v0") does)

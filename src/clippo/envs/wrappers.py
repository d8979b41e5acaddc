"""Gymnasium wrappers clippo puts around the envs it makes."""

from __future__ import annotations

import gymnasium as gym

#: Where an env gives its action mask: an observation's Dict key or an info entry (``clippo.rollout.masking``).
MASK_KEY = "action_mask"


def _kept_info(info: dict) -> dict:
    return {MASK_KEY: info[MASK_KEY]} if MASK_KEY in info else {}


class DropInfo(gym.Wrapper):
    """An env whose step and reset return an empty info dict, but for an ``action_mask`` entry.

    clippo reads nothing else from infos (action masks may come from there: ``clippo.rollout.masking``),
    while Gymnasium's sync and async vector envs merge every env's info into per-key arrays at
    every step: for a MuJoCo env's half-dozen entries, 25-30 us or 6-9% of a one-env vector step
    (Hopper, Walker2d, HalfCheetah, Ant v5, alternating blocks in one process). Applied to envs
    made from an id (an env factory's envs are left as the factory makes them)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, _kept_info(info)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, _kept_info(info)

"""Evaluation: run a policy for a number of whole episodes and report raw environment returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv

from clippo.networks.distributions import make_distribution
from clippo.rollout.masking import detect_mask_source


def run_episodes(
    envs: VectorEnv, policy: Callable[..., Any], episodes: int, seed: int | None
) -> tuple[list[float], list[int]]:
    """Returns and lengths of ``episodes`` episodes, split evenly across the vector env's copies.

    Each copy has a fixed quota decided up front: counting whichever episodes finish first would
    favour short episodes and bias the mean. ``policy(obs)`` gives the actions; for envs that
    give action masks (``clippo.rollout.masking``) it is called as ``policy(obs, masks)``, ``obs``
    without an ``"action_mask"`` key. A policy with a true ``recurrent`` attribute (see
    ``PPO.acting_policy``) also gets ``episode_start``: per env, whether ``obs`` is the first
    observation of an episode (after the reset, and after each autoreset step).
    """
    recurrent = getattr(policy, "recurrent", False)
    n = envs.num_envs
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    obs, info = envs.reset(seed=seed)
    masks = detect_mask_source(envs, make_distribution(envs.single_action_space), info)
    running_return = np.zeros(n)
    running_length = np.zeros(n, dtype=np.int64)
    autoreset = np.zeros(n, dtype=bool)
    returns: list[list[float]] = [[] for _ in range(n)]
    lengths: list[list[int]] = [[] for _ in range(n)]
    done_count = np.zeros(n, dtype=np.int64)
    step = 0
    starts = np.ones(n, dtype=bool)
    while np.any(done_count < quota):
        args = (obs,) if masks is None else masks.read(obs, info, autoreset, f"evaluation step {step}")
        actions = policy(*args, episode_start=starts) if recurrent else policy(*args)
        starts = autoreset  # the step after an autoreset step returns a first observation
        obs, rewards, terminated, truncated, info = envs.step(actions)
        step += 1
        counting = ~autoreset
        running_return += rewards * counting
        running_length += counting
        dones = (terminated | truncated) & counting
        for i in np.flatnonzero(dones):
            if done_count[i] < quota[i]:
                returns[i].append(float(running_return[i]))
                lengths[i].append(int(running_length[i]))
                done_count[i] += 1
        running_return[dones] = 0.0
        running_length[dones] = 0
        autoreset = terminated | truncated
    return [r for per_env in returns for r in per_env], [ln for per_env in lengths for ln in per_env]

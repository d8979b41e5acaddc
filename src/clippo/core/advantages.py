"""Discounted rewards-to-go and generalized advantage estimation (GAE), as pure tensor functions.

All inputs are ``[num_steps, num_envs]`` tensors from one rollout, in the layout of Gymnasium's
next-step autoreset: ``values[t + 1]`` is the critic's value of the observation returned by step
``t``. When step ``t`` ended an episode, that observation is the episode's *final* observation
(the env resets on the following step), so:

* termination (``terminated[t]``): the episode truly ended, nothing is bootstrapped;
* truncation (``truncated[t]``, e.g. a time limit): the task did not end, so the return is
  bootstrapped from ``values[t + 1]``, the value of the final observation;
* the rollout cut: the last step bootstraps from ``last_value``, the value of the observation
  returned by the last step.

In both cases nothing flows back across the episode boundary. Steps that are autoreset steps
(not transitions) get meaningless values here and are dropped from the batch by the caller.
"""

from __future__ import annotations

import numpy as np
import torch


def next_values_of(values: torch.Tensor, last_value: torch.Tensor) -> torch.Tensor:
    """``values`` shifted one step back, with the bootstrap value of the rollout cut appended."""
    return torch.cat([values[1:], last_value.unsqueeze(0)], dim=0)


def discounted_sums(terms: torch.Tensor, discounts: torch.Tensor) -> torch.Tensor:
    """``y_t = terms_t + discounts_t * y_{t+1}`` backwards over the time axis (zero after the end).

    A loop over the steps of tiny per-step operations: run in numpy, whose per-call cost is a
    fraction of torch's (the inputs carry no gradient), on rows walked by one ``zip`` (indexing
    each row costs as much as the arithmetic; docs/fast-path.md).
    """
    x = terms.detach().cpu().numpy()
    d = discounts.detach().cpu().numpy().astype(x.dtype, copy=False)
    out = np.empty_like(x)
    out[-1] = later = x[-1]
    for out_t, x_t, d_t in zip(out[-2::-1], x[-2::-1], d[-2::-1], strict=False):
        np.multiply(d_t, later, out=out_t)
        np.add(out_t, x_t, out=out_t)
        later = out_t
    return torch.from_numpy(out).to(terms.device)


def discounted_rewards_to_go(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """``R_t = r_t + gamma * R_{t+1}`` within an episode; bootstrapped on truncation and at the cut."""
    next_values = next_values_of(values, last_value)
    # Where the episode ended (or the rollout was cut) the future is the next observation's value
    # (truncation, cut) or zero (termination), and nothing flows back from the step after.
    bootstrap = terminated | truncated
    bootstrap[-1] = True
    terms = rewards + gamma * torch.where(bootstrap & ~terminated, next_values, 0.0)
    return discounted_sums(terms, gamma * (~bootstrap).to(rewards.dtype))


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) advantages and the critic's targets ``returns = advantages + values``.

    ``delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)`` and
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}``. With ``gae_lambda = 1`` the
    advantages equal ``discounted_rewards_to_go(...) - values``.
    """
    next_values = next_values_of(values, last_value)
    not_terminated = (~terminated).to(rewards.dtype)
    continues = (~(terminated | truncated)).to(rewards.dtype)
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages = discounted_sums(deltas, gamma * gae_lambda * continues)
    return advantages, advantages + values

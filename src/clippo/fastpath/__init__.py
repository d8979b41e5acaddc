"""The fast path: flat (float Box or Discrete) observations, MLP encoders, on a CPU.

At PPO's MLP sizes a torch call costs more in dispatch than in arithmetic, so for this common
case the rollout acts through a numpy copy of the actor on observations stored as ``[obs, 1]``
rows (``rollout``, ``numpy_mlp``), and the loss gradient of separate MLPs is worked out by hand
(``gradient``). Everything else takes the general torch path (``clippo.rollout.runner``,
``clippo.core.losses.AutogradLoss``). The choice is made here, in one place; the training loop calls
the pieces it gets without knowing which ones they are. ``fast_path="off"`` forces the general
path (``tests/test_fastpath.py`` pins both to the same updates). Measurements: docs/fast-path.md.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces

from clippo.config.ppo_config import PPOConfig
from clippo.core.losses import AutogradLoss
from clippo.fastpath.layout import is_plain_mlp, paired_parameters
from clippo.fastpath.sampling import numpy_sampler
from clippo.networks.policy import ActorCritic
from clippo.rollout.buffer import RolloutBuffer
from clippo.rollout.runner import EnvRunner

__all__ = ["make_loss", "make_rollout", "paired_parameters", "rollout_applies"]


def rollout_applies(config: PPOConfig, model: ActorCritic, device: torch.device, masked: bool = False) -> bool:
    """Whether the numpy rollout covers this agent: float Box or Discrete (one-hot) observations, MLP encoders
    (no recurrent core), a CPU, a Discrete, MultiDiscrete or Box action space (MultiBinary, Tuple
    and Dict actions take the general path; ``masked``: the envs give action masks, which only
    the discrete ones take), and no Atari-style reward handling."""
    space = model.observation_space
    return (
        config.fast_path == "auto"
        and model.compute_dtype is None  # fp32 (clippo.core.precision)
        and not (masked and not model.distribution.maskable)
        and device.type == "cpu"
        and (
            isinstance(space, spaces.Discrete)
            or (isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating))
        )
        and is_plain_mlp(model)
        and numpy_sampler(model.distribution) is not None
        and not config.reward_sign
        and not config.episodic_life
    )


def make_rollout(
    config: PPOConfig, model: ActorCritic, device: torch.device, masked: bool = False
) -> tuple[type[EnvRunner], type[RolloutBuffer]]:
    """The runner and buffer classes for this agent (``masked``: its envs give action masks)."""
    if rollout_applies(config, model, device, masked):
        from clippo.fastpath.rollout import FastEnvRunner, FlatRolloutBuffer

        return FastEnvRunner, FlatRolloutBuffer
    return EnvRunner, RolloutBuffer


def make_loss(config: PPOConfig, model: ActorCritic, device: torch.device, zero_grad, masked: bool = False):
    """``loss_and_gradient(obs, actions, old_logprobs, advantages, returns, old_values[, masks])``:
    the hand-written gradient where it covers the model (the fast rollout's flat float32 batches,
    separate MLPs, Discrete (masked or not) or Box actions), autograd otherwise."""
    from clippo.fastpath.gradient import AnalyticGradient, supports

    if rollout_applies(config, model, device, masked) and supports(model, device):
        return AnalyticGradient(model, config.clip_epsilon, config.vf_coef, config.ent_coef)
    return AutogradLoss(model, config.clip_epsilon, config.vf_coef, config.ent_coef, zero_grad)

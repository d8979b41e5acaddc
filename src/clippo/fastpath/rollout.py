"""The fast path's rollout: flat observations stored as the numpy MLPs read them, and a
collection loop that acts through the numpy copy of the actor.

Same transitions, noise and bookkeeping as ``clippo.rollout.runner`` (whose classes these extend); only
the storage layout and the actor's arithmetic differ.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from gymnasium import spaces

from clippo.fastpath.numpy_mlp import NumpyActor, numpy_critic
from clippo.networks.distributions import MASKED_LOGIT, ActionDistribution
from clippo.networks.encoders import flat_size
from clippo.networks.policy import ActorCritic
from clippo.rollout.runner import EnvRunner, RolloutBuffer


class FlatRolloutBuffer(RolloutBuffer):
    """A rollout buffer for flat observations kept as the networks read them, ``[obs, 1]``
    (see ``NumpyMLP``), in ``network_inputs``: ``num_steps + 1`` rows, the last one the bootstrap
    observation. The actor acts on a row and the critic evaluates them all without copying;
    ``all_obs`` and ``obs`` are views of it. Discrete observations are stored one-hot (what the
    MLP encoder feeds its first layer), float rows that the encoder takes as they are."""

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        observation_space,
        distribution: ActionDistribution,
        device,
        masked: bool = False,
        state_size: int = 0,
        sequence_length: int | None = None,
    ) -> None:
        if state_size:  # (clippo.fastpath.rollout_applies rules recurrent cores out)
            raise ValueError("the fast path takes no recurrent states")
        super().__init__(num_steps, num_envs, observation_space, distribution, device, masked)
        obs_size = flat_size(observation_space)
        #: a Discrete observation space's start: its observations are stored one-hot (None for a Box)
        self.one_hot_start = int(observation_space.start) if isinstance(observation_space, spaces.Discrete) else None
        self.network_inputs = np.ones((num_steps + 1, num_envs, obs_size + 1), dtype=np.float32)
        self.all_obs = self.network_inputs[..., :-1]  # [num_steps + 1, num_envs, obs_size] views
        self.obs = self.all_obs[:-1]
        self.critic_workspace: list = []  # see NumpyMLP.__call__

    def write_obs(self, row: np.ndarray, obs: np.ndarray) -> None:
        """Store one step's observations (every env) into ``row`` (a row of ``all_obs``)."""
        if self.one_hot_start is None:
            row[...] = obs.reshape(row.shape)
        else:
            row.fill(0.0)
            row[np.arange(row.shape[0]), obs.astype(np.intp) - self.one_hot_start] = 1.0  # (the runner keeps floats)

    @torch.no_grad()
    def estimate_values(self, policy: ActorCritic) -> None:
        """The critic's values through its numpy copy, on the stored ``[obs, 1]`` rows as they are."""
        if self.device.type != "cpu":
            return super().estimate_values(policy)
        inputs = self.network_inputs.reshape(-1, self.network_inputs.shape[-1])
        values = numpy_critic(policy).with_ones_column(inputs, self.critic_workspace)[:, 0]
        num_envs = self.last_value.shape[0]
        self.values[:] = values[:-num_envs].reshape(self.values.shape)
        self.last_value[:] = values[-num_envs:]


class FastEnvRunner(EnvRunner):
    """``EnvRunner`` acting through the numpy actor on ``FlatRolloutBuffer`` rows."""

    @torch.inference_mode()
    def collect(self, policy: ActorCritic, buffer: FlatRolloutBuffer, generator: torch.Generator) -> None:
        """Run the policy for ``num_steps`` steps in every env, storing each step into ``buffer``."""
        self.begin_rollout(buffer)
        distribution = policy.distribution
        num_steps = buffer.obs.shape[0]
        noise = distribution.noise((num_steps, self.num_envs), generator, buffer.device).cpu().numpy()
        actor = NumpyActor(policy)
        scale_rewards = self.reward_scaler.enabled
        # A NaN or inf must never reach the normalizers' running statistics, nor (as an action) the
        # env: with either normalizer on, or continuous actions, each step is checked as it comes.
        # Otherwise nothing carries it forward (the argmax of any logits is a valid action) and one
        # check of the whole rollout after the loop finds the same first bad value.
        normalize_obs = self.obs_normalizer.enabled
        check_each_step = normalize_obs or scale_rewards or not distribution.discrete
        flat = (self.num_envs, buffer.all_obs.shape[-1])
        one_hot = buffer.one_hot_start is not None
        buffer.write_obs(buffer.all_obs[0], self.next_obs)
        act, sample, std, step = actor.for_rows(self.num_envs), distribution.sample_numpy, actor.std, self._step
        masks = self.action_masks
        if masks is not None:
            invalid = np.empty_like(self.next_masks)  # the step's ~mask, written in place
        # Step t's rows of the buffer (views), walked together: cheaper than indexing each per step.
        rows = zip(
            buffer.network_inputs, buffer.params, noise, buffer.actions,
            buffer.all_obs[1:], buffer.raw_rewards, buffer.terminated, buffer.truncated, buffer.rewards,
            buffer.all_masks if masks is not None else itertools.repeat(None), strict=False,
        )  # fmt: skip
        for t, (
            inputs,
            params,
            step_noise,
            actions_t,
            next_obs_t,
            rewards_t,
            terminated_t,
            truncated_t,
            scaled_t,
            masks_t,
        ) in enumerate(rows):
            act(inputs, params)
            if masks is not None:  # as Categorical.mask: the logits of invalid actions set to MASKED_LOGIT
                np.copyto(params, MASKED_LOGIT, where=np.logical_not(masks_t, out=invalid))
            actions = sample(params, step_noise, std)
            actions_t[...] = actions

            raw_obs, rewards, terminated, truncated, info = step(distribution.to_env(actions))
            if masks is not None:  # the mask of the returned observation, used at the next step
                raw_obs, _ = masks.read(
                    raw_obs, info, terminated | truncated, f"rollout step {t + 1}", buffer.all_masks[t + 1]
                )
            # One sum is finite exactly when all its terms are (or it overflowed: checked in detail).
            if check_each_step and not math.isfinite(raw_obs.sum() + rewards.sum()):
                raw_obs, rewards = self._handle_nonfinite(raw_obs, rewards)
            obs = self.obs_normalizer(raw_obs, update=True) if normalize_obs else raw_obs
            if one_hot:
                buffer.write_obs(next_obs_t, obs)
            else:
                next_obs_t[...] = obs.reshape(flat)  # (the assignment casts to float32)
            rewards_t[...] = rewards
            terminated_t[...] = terminated
            truncated_t[...] = truncated
            if scale_rewards:  # the running return needs to know, step by step, which envs are mid-episode
                dones = terminated | truncated
                scaled_t[...] = self.reward_scaler(rewards, dones, ~self.autoreset)
                self.autoreset = dones
        self.next_obs = obs if normalize_obs else self.obs_normalizer(obs)  # (float32 either way)
        if masks is not None:
            self.next_masks = buffer.all_masks[num_steps].copy()
        if not scale_rewards:
            buffer.rewards[:] = buffer.raw_rewards
        if not check_each_step:
            self._check_rollout(buffer)
        self.finish_rollout(buffer, distribution)

    def _check_rollout(self, buffer: FlatRolloutBuffer) -> None:
        """The per-step non-finite check for a whole rollout at once: the first bad step (in time
        order) is reported or, with nonfinite="skip", zeroed as a step's check would have."""
        returned_obs = buffer.all_obs[1:]
        if math.isfinite(returned_obs.sum(dtype=np.float64) + buffer.raw_rewards.sum(dtype=np.float64)):
            return
        bad = ~np.isfinite(returned_obs).all(axis=2) | ~np.isfinite(buffer.raw_rewards)
        if not bad.any():  # only the sum overflowed
            return
        t = int(np.flatnonzero(bad.any(axis=1))[0])
        self._handle_nonfinite(returned_obs[t], buffer.raw_rewards[t])  # raises, or poisons the rollout
        for array in (buffer.all_obs, buffer.raw_rewards, buffer.rewards):
            np.nan_to_num(array, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        self.next_obs = np.nan_to_num(self.next_obs, nan=0.0, posinf=0.0, neginf=0.0)

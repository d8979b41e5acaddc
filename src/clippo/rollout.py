"""Rollout storage and collection: run the current policy in the vector env and store transitions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from clippo.networks import ActorCritic
from clippo.normalization import ObservationNormalizer, RewardScaler


@dataclass
class Batch:
    """A rollout flattened to ``[batch]`` with autoreset steps dropped: what the update trains on."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def __getitem__(self, index: torch.Tensor) -> Batch:
        return Batch(*(getattr(self, name)[index] for name in self.__dataclass_fields__))


class RolloutBuffer:
    """Preallocated ``[num_steps, num_envs, ...]`` arrays for one rollout.

    Stored as numpy arrays (writing a row costs a fraction of a torch indexed copy, and the rollout
    loop writes eight per step), viewed as tensors for the advantage computation and the update.
    ``valid[t, i]`` is False where step ``t`` of env ``i`` was an autoreset step: the env ignored
    the action and returned the first observation of a new episode, so it is not a transition.
    """

    def __init__(self, num_steps: int, num_envs: int, obs_size: int, action_shape, action_dtype, device) -> None:
        shape = (num_steps, num_envs)
        numpy_dtype = np.int64 if action_dtype == torch.int64 else np.float32
        self.device = device
        self.obs = np.zeros(shape + (obs_size,), dtype=np.float32)
        self.actions = np.zeros(shape + tuple(action_shape), dtype=numpy_dtype)
        self.logprobs = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.valid = np.ones(shape, dtype=bool)
        self.last_value = np.zeros(num_envs, dtype=np.float32)

    def tensor(self, name: str) -> torch.Tensor:
        """One stored array as a tensor on the training device (no copy on the CPU)."""
        return torch.from_numpy(getattr(self, name)).to(self.device)

    def flatten(self, advantages: torch.Tensor, returns: torch.Tensor) -> Batch:
        """The valid transitions as one flat batch (time-major order)."""
        mask = self.tensor("valid").reshape(-1)
        obs_size = self.obs.shape[-1]
        action_shape = self.actions.shape[2:]
        return Batch(
            obs=self.tensor("obs").reshape(-1, obs_size)[mask],
            actions=self.tensor("actions").reshape(-1, *action_shape)[mask],
            logprobs=self.tensor("logprobs").reshape(-1)[mask],
            values=self.tensor("values").reshape(-1)[mask],
            advantages=advantages.reshape(-1)[mask],
            returns=returns.reshape(-1)[mask],
        )


class EnvRunner:
    """The vector env plus what carries over between rollouts.

    That is the latest observation, which envs are due an autoreset step, and the running return
    and length of each env's current episode (in raw, unscaled rewards).
    """

    def __init__(
        self,
        envs: VectorEnv,
        obs_normalizer: ObservationNormalizer,
        reward_scaler: RewardScaler,
        seed: int | None,
    ) -> None:
        self.envs = envs
        self.num_envs = envs.num_envs
        self.obs_normalizer = obs_normalizer
        self.reward_scaler = reward_scaler
        raw_obs, _ = envs.reset(seed=seed)
        self.next_obs = obs_normalizer(raw_obs, update=True)
        self.autoreset = np.zeros(self.num_envs, dtype=bool)
        self.episode_returns = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []

    @torch.inference_mode()
    def collect(self, policy: ActorCritic, buffer: RolloutBuffer, generator: torch.Generator) -> None:
        """Run the policy for ``num_steps`` steps in every env, storing each step into ``buffer``."""
        distribution = policy.distribution
        num_steps = buffer.obs.shape[0]
        noise = distribution.noise((num_steps, self.num_envs), generator, buffer.device)
        for t in range(num_steps):
            obs = policy.preprocess(self.next_obs)
            actions, logprobs, values = policy.act(obs, noise[t])
            actions = actions.cpu().numpy()
            buffer.obs[t] = obs.cpu().numpy()
            buffer.actions[t] = actions
            buffer.logprobs[t] = logprobs.cpu().numpy()
            buffer.values[t] = values.cpu().numpy()
            valid = ~self.autoreset
            buffer.valid[t] = valid

            raw_obs, rewards, terminated, truncated, _ = self.envs.step(distribution.to_env(actions))
            dones = terminated | truncated
            self.next_obs = self.obs_normalizer(raw_obs, update=True)
            buffer.rewards[t] = self.reward_scaler(rewards, dones, valid)
            buffer.terminated[t] = terminated
            buffer.truncated[t] = truncated
            self._track_episodes(rewards, dones, valid)
            self.autoreset = dones
        buffer.last_value[:] = policy.value(policy.preprocess(self.next_obs)).cpu().numpy()

    def _track_episodes(self, rewards: np.ndarray, dones: np.ndarray, valid: np.ndarray) -> None:
        self.episode_returns += rewards * valid
        self.episode_lengths += valid
        if dones.any():
            self.finished_returns.extend(self.episode_returns[dones].tolist())
            self.finished_lengths.extend(self.episode_lengths[dones].tolist())
            self.episode_returns[dones] = 0.0
            self.episode_lengths[dones] = 0

    def pop_finished_episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes finished since the last call."""
        finished = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return finished

    def close(self) -> None:
        self.envs.close()

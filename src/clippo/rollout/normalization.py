"""Running statistics for observation normalization and reward scaling.

Both live in the agent (not in env wrappers) so that they are saved in checkpoints, frozen for
evaluation, applied identically by ``act``, and can be reduced across distributed ranks.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al.'s parallel update), in float64."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        # A tiny prior count keeps the first update well defined.
        self.count = epsilon

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64)
        n = batch.shape[0]
        if n == 0:
            return
        if n == 1:  # one env, every step: Chan et al.'s update for a single sample, in fewer operations
            w = 1.0 / (self.count + 1.0)
            delta = batch[0] - self.mean
            step = delta * w
            self.mean = np.asarray(self.mean + step)
            self.var = np.asarray((self.var + delta * step) * (1.0 - w))
            self.count += 1.0
            return
        # What np.mean and np.var compute, in the same order (so the same bits), without their
        # Python-level overhead: this runs once per env step (docs/fast-path.md).
        mean = batch.sum(axis=0, keepdims=True) / n
        centered = batch - mean
        var = np.multiply(centered, centered, out=centered).sum(axis=0) / n
        self.update_from_moments(mean[0], var, n)

    def update_from_moments(self, batch_mean: np.ndarray, batch_var: np.ndarray, batch_count: float) -> None:
        delta = batch_mean - self.mean
        total = self.count + batch_count
        # np.asarray keeps 0-d statistics arrays (numpy arithmetic on them returns scalars).
        self.mean = np.asarray(self.mean + delta * batch_count / total)
        m2 = self.var * self.count + batch_var * batch_count + delta * delta * self.count * batch_count / total
        self.var = np.asarray(m2 / total)
        self.count = total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.mean.copy()),
            "var": torch.from_numpy(self.var.copy()),
            "count": torch.tensor(self.count, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean = state["mean"].numpy().astype(np.float64).copy()
        self.var = state["var"].numpy().astype(np.float64).copy()
        self.count = float(state["count"])


def clip_(x: np.ndarray, bound: float) -> np.ndarray:
    """``np.clip(x, -bound, bound)`` in place, at half its call overhead (it runs every env step)."""
    np.maximum(x, -bound, out=x)
    return np.minimum(x, bound, out=x)


class ObservationNormalizer:
    """``clip((obs - mean) / sqrt(var + eps))`` with statistics updated while training."""

    def __init__(self, shape: tuple[int, ...], clip: float, enabled: bool, epsilon: float = 1e-8) -> None:
        self.enabled = enabled
        self.clip = clip
        self.epsilon = epsilon
        self.stats = RunningMeanStd(shape)

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        if not self.enabled:
            return obs
        if update:
            self.stats.update(obs)
        normalized = (obs - self.stats.mean) / np.sqrt(self.stats.var + self.epsilon)
        return clip_(normalized, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats.load_state_dict(state)


class RewardScaler:
    """Divide rewards by the running std of the discounted return; no mean is subtracted.

    Subtracting a mean would erase the signal of tasks whose reward is constant per step
    (CartPole's is always 1: only the episode length carries information).
    """

    def __init__(self, num_envs: int, gamma: float, clip: float, enabled: bool, epsilon: float = 1e-8) -> None:
        self.enabled = enabled
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon
        self.stats = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Update with this step's rewards (``valid`` marks real transitions) and return them scaled."""
        rewards = np.asarray(rewards, dtype=np.float32)
        if not self.enabled:
            return rewards
        if np.count_nonzero(valid) == valid.size:  # valid.all(), without its Python-level overhead
            self.returns *= self.gamma
            self.returns += rewards
            self.stats.update(self.returns)
        else:
            updated = self.returns * self.gamma
            updated += rewards
            np.copyto(self.returns, updated, where=valid)
            self.stats.update(self.returns[valid])
        self.returns[dones] = 0.0
        # (the statistics are 0-d: the same square root in plain floats, without numpy's call overhead)
        scaled = rewards / np.float64(math.sqrt(float(self.stats.var) + self.epsilon))
        return clip_(scaled, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.stats.state_dict(), "returns": torch.from_numpy(self.returns.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats.load_state_dict(state)
        returns = state["returns"].numpy().astype(np.float64).copy()
        if returns.shape == self.returns.shape:
            self.returns = returns

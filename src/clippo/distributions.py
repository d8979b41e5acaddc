"""Action distributions for each Gymnasium action space, as small pure functions of the head output.

``torch.distributions`` objects validate and allocate on every construction; in the rollout loop
that costs more than the network itself for small MLPs, so the three distributions PPO needs are
written out here (each a couple of lines of textbook math, tested against torch.distributions).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None, device=None) -> torch.Tensor:
    """Standard Gumbel samples: ``argmax(logits + g)`` is then an exact draw from softmax(logits)."""
    u = torch.rand(shape, generator=generator, device=device)
    return u.log_().neg_().log_().neg_()  # -log(-log(u)), in place


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``torch.log_softmax(logits, dim=-1)``, bit for bit.

    Over fewer than 8 actions torch's kernel along the last dimension is slow (it vectorizes along
    that dimension): along dim 0 of the transposed view it is faster on a rollout's 8192 rows
    (docs/fast-path.md), with the same values where that kernel runs 8 rows at a time (contiguous logits, whole
    groups of 8 rows; its scalar tail rounds differently). Only where no gradient is tracked: the
    backward's rounding differs.
    """
    rows, size = logits.shape if logits.dim() == 2 else (0, 0)
    if 0 < size < 8 and rows % 8 == 0 and logits.is_contiguous() and not logits.requires_grad:
        return torch.log_softmax(logits.T, dim=0).T
    return torch.log_softmax(logits, dim=-1)


class ActionDistribution:
    """Maps the actor's output to sampled actions, log-probabilities and entropies.

    Sampling is split in two: ``noise`` draws the randomness for many samples at once (a whole
    rollout's worth, one call instead of one per step), ``sample`` turns the actor's output and
    that noise into actions; ``noise=None`` gives the deterministic action (the mode).
    """

    #: number of outputs the actor head must produce
    num_outputs: int
    #: whether actions are picked by argmax, so that any actor output (even NaN) gives a valid action
    discrete: bool = False
    #: shape of one action as stored in the rollout buffer
    action_shape: tuple[int, ...]
    action_dtype: torch.dtype

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None, device=None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, params: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_with_log_prob(
        self, params: torch.Tensor, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        actions = self.sample(params, noise)
        return actions, self.log_prob(params, actions)

    def log_prob_and_entropy(self, params: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.log_prob(params, actions), self.entropy(params)

    def sample_numpy(self, params: np.ndarray, noise: np.ndarray | None, std: np.ndarray | None = None) -> np.ndarray:
        """``sample`` on numpy arrays, for the rollout loop's numpy actor (``std``: Gaussian only)."""
        raise NotImplementedError

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """The action as sent to the environment (offset by the space's start, clipped to bounds)."""
        return actions


class Categorical(ActionDistribution):
    """One logit per action of a ``Discrete(n)`` space."""

    discrete = True

    def __init__(self, space: spaces.Discrete) -> None:
        self.num_outputs = int(space.n)
        self.start = int(space.start)
        self.action_shape = ()
        self.action_dtype = torch.int64

    def noise(self, shape, generator, device=None):
        return gumbel_noise((*shape, self.num_outputs), generator, device)

    def sample(self, logits, noise):
        return (logits if noise is None else logits + noise).argmax(dim=-1)

    def sample_numpy(self, logits, noise, std=None):
        return (logits if noise is None else logits + noise).argmax(axis=-1)

    def sample_with_log_prob(self, logits, noise):
        actions = self.sample(logits, noise)
        log_p = torch.log_softmax(logits, dim=-1)
        return actions, log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def log_prob_and_entropy(self, logits, actions):
        log_p = torch.log_softmax(logits, dim=-1)
        entropy = -(log_p.exp() * log_p).sum(dim=-1)
        return log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), entropy

    def log_prob(self, logits, actions):
        return log_softmax(logits).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, logits):
        log_p = torch.log_softmax(logits, dim=-1)
        return -(log_p.exp() * log_p).sum(dim=-1)

    def to_env(self, actions):
        return actions + self.start if self.start else actions


class MultiCategorical(ActionDistribution):
    """Independent categoricals, one per component of a ``MultiDiscrete`` space."""

    discrete = True

    def __init__(self, space: spaces.MultiDiscrete) -> None:
        if space.nvec.ndim != 1:
            raise ValueError(f"action space {space} is not supported: clippo needs a one-dimensional MultiDiscrete nvec")
        self.sizes = [int(n) for n in space.nvec]
        self.start = np.asarray(space.start)
        self.num_outputs = sum(self.sizes)
        self.action_shape = (len(self.sizes),)
        self.action_dtype = torch.int64

    def noise(self, shape, generator, device=None):
        return gumbel_noise((*shape, self.num_outputs), generator, device)

    def sample(self, logits, noise):
        perturbed = logits if noise is None else logits + noise
        return torch.stack([p.argmax(dim=-1) for p in perturbed.split(self.sizes, dim=-1)], dim=-1)

    def sample_numpy(self, logits, noise, std=None):
        perturbed = logits if noise is None else logits + noise
        parts = np.split(perturbed, np.cumsum(self.sizes)[:-1], axis=-1)
        return np.stack([p.argmax(axis=-1) for p in parts], axis=-1)

    def log_prob(self, logits, actions):
        parts = logits.split(self.sizes, dim=-1)
        return sum(
            torch.log_softmax(p, dim=-1).gather(-1, actions[..., i : i + 1].long()).squeeze(-1)
            for i, p in enumerate(parts)
        )

    def entropy(self, logits):
        total = 0
        for p in logits.split(self.sizes, dim=-1):
            log_p = torch.log_softmax(p, dim=-1)
            total = total - (log_p.exp() * log_p).sum(dim=-1)
        return total

    def to_env(self, actions):
        return actions + self.start if np.any(self.start) else actions


class DiagGaussian(ActionDistribution):
    """Gaussian with a state-dependent mean and a state-independent log-std (a learned vector).

    Samples are unclipped (their log-probability is exact); only ``to_env`` clips to the bounds.
    """

    def __init__(self, space: spaces.Box) -> None:
        self.shape = space.shape
        self.num_outputs = int(np.prod(space.shape))
        self.action_shape = (self.num_outputs,)
        self.action_dtype = torch.float32
        self.low = space.low.reshape(-1).astype(np.float32)
        self.high = space.high.reshape(-1).astype(np.float32)
        self.bounded = bool(np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)))
        self.log_std: torch.Tensor | None = None  # set by the network that owns the parameter

    def noise(self, shape, generator, device=None):
        return torch.randn((*shape, self.num_outputs), generator=generator, device=device)

    def sample(self, mean, noise):
        return mean if noise is None else mean + noise * self.log_std.exp()

    def sample_numpy(self, mean, noise, std=None):
        return mean if noise is None else mean + noise * std

    def log_prob(self, mean, actions):
        log_std = self.log_std
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - _LOG_SQRT_2PI).sum(dim=-1)

    def entropy(self, mean):
        per_dim = 0.5 + _LOG_SQRT_2PI + self.log_std
        return per_dim.sum().expand(mean.shape[:-1])

    def to_env(self, actions):
        if self.bounded:
            actions = np.clip(actions, self.low, self.high)
        return actions.reshape(*actions.shape[:-1], *self.shape)


def make_distribution(space: spaces.Space) -> ActionDistribution:
    """The distribution for a Gymnasium action space; a clear error for one clippo does not support."""
    if isinstance(space, spaces.Discrete):
        return Categorical(space)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiCategorical(space)
    if isinstance(space, spaces.Box):
        if not np.issubdtype(space.dtype, np.floating):
            raise ValueError(f"action space {space} is not supported: Box actions must have a floating dtype")
        return DiagGaussian(space)
    raise ValueError(
        f"action space {space} ({type(space).__name__}) is not supported: clippo handles Discrete, "
        "MultiDiscrete and Box action spaces"
    )

"""Action distributions for each Gymnasium action space, as small pure functions of the head output.

``torch.distributions`` objects validate and allocate on every construction; in the rollout loop
that costs more than the network itself for small MLPs, so the distributions PPO needs are
written out here (each a couple of lines of textbook math, tested against torch.distributions):
one class per action space, and ``Composite`` for Tuple and Dict spaces made of them.

Invalid-action masks (``Discrete`` and ``MultiDiscrete``) act on the logits: ``mask`` replaces the
logits of invalid actions by ``MASKED_LOGIT``, and every other method then works unchanged on the
masked logits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch.nn import functional as F

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: The logit of a masked (invalid) action. Its probability, exp(-1e8 - logsumexp), is exactly 0 in
#: float32, so it is never sampled and adds nothing to log-probabilities, the entropy or the KL;
#: unlike -inf it is finite, so the entropy's ``p * log p`` is ``0 * -1e8 = 0`` rather than NaN,
#: and an all-masked row stays finite (a uniform distribution, never NaN).
MASKED_LOGIT = -1e8
_MASKED_LOGIT_TENSOR = torch.tensor(MASKED_LOGIT)

#: Discrete parts of Tuple/Dict actions are stored as float32: indices up to 2**24 are exact.
_FLOAT32_EXACT_INTEGERS = 2**24


def masked_logits(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``logits`` with the entries where ``masks`` is False set to ``MASKED_LOGIT`` (no gradient
    flows to them)."""
    if logits.device.type == "cpu":  # (a 0-dim tensor made once: 2-3 us a call less than a Python float)
        return torch.where(masks, logits, _MASKED_LOGIT_TENSOR)
    return torch.where(masks, logits, MASKED_LOGIT)


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
    #: whether ``mask`` applies (a mask of ``num_outputs`` booleans: one per action, or per choice
    #: of each MultiDiscrete component, concatenated)
    maskable: bool = False
    #: how many log-std entries (a learned vector the policy owns) the distribution's Gaussian parts use
    gaussian_size: int = 0
    #: width of the actor's features appended to its output (``params`` is then the head's
    #: ``num_outputs`` numbers, then these features): state-dependent exploration reads them
    feature_size: int = 0

    @property
    def param_size(self) -> int:
        """Numbers in one row of ``params`` (the actor's output as stored in the rollout buffer)."""
        return self.num_outputs + self.feature_size

    def bind_features(self, width: int) -> None:
        """Told the width of the actor's features, before ``bind_log_std`` (only
        :class:`StateDependentGaussian` reads them)."""

    @property
    def action_width(self) -> int:
        """Numbers in one stored action (a Discrete index is one)."""
        return int(np.prod(self.action_shape))

    def mask(self, params: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The actor's output with invalid actions (False in ``masks``) given probability 0."""
        raise ValueError(
            f"action masks are not supported for {type(self).__name__} actions: clippo masks Discrete "
            "and MultiDiscrete action spaces"
        )

    def bind_log_std(self, log_std: torch.Tensor, offset: int = 0) -> None:
        """Use ``log_std[offset : offset + gaussian_size]`` (the policy's parameter) as the log-std."""

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

    def to_env(self, actions: np.ndarray) -> Any:
        """The action as sent to the environment (offset by the space's start, clipped to bounds,
        in the space's shape and dtype; for Tuple/Dict spaces a tuple/dict of arrays)."""
        return actions


class Categorical(ActionDistribution):
    """One logit per action of a ``Discrete(n)`` space."""

    discrete = True
    maskable = True

    def __init__(self, space: spaces.Discrete) -> None:
        self.num_outputs = int(space.n)
        self.start = int(space.start)
        self.action_shape = ()
        self.action_dtype = torch.int64

    def mask(self, logits, masks):
        return masked_logits(logits, masks)

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
    maskable = True

    def __init__(self, space: spaces.MultiDiscrete) -> None:
        if space.nvec.ndim != 1:
            raise ValueError(
                f"action space {space} is not supported: clippo needs a one-dimensional MultiDiscrete nvec"
            )
        self.sizes = [int(n) for n in space.nvec]
        self.start = np.asarray(space.start)
        self.num_outputs = sum(self.sizes)
        self.action_shape = (len(self.sizes),)
        self.action_dtype = torch.int64

    def mask(self, logits, masks):
        return masked_logits(logits, masks)

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
        self.gaussian_size = self.num_outputs
        self.log_std = None  # set by the network that owns the parameter (bind_log_std)

    @property
    def log_std(self) -> torch.Tensor | None:
        """The learned log-std vector: the policy's parameter, or this part's slice of it."""
        if self._log_std_slice is None:
            return self._log_std
        return self._log_std[self._log_std_slice]  # sliced at each use: the parameter may be re-pointed

    @log_std.setter
    def log_std(self, value: torch.Tensor | None) -> None:
        self._log_std, self._log_std_slice = value, None

    def bind_log_std(self, log_std, offset=0):
        self.log_std = log_std
        if offset or log_std.numel() != self.gaussian_size:
            self._log_std_slice = slice(offset, offset + self.gaussian_size)

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


class StateDependentGaussian(DiagGaussian):
    """Generalized state-dependent exploration (gSDE; Raffin, Kober and Stulp, CoRL 2021) for a
    ``Box`` space: the exploration noise is a linear function of the actor's features ``z(s)``,
    ``a = mean(s) + z(s) @ E`` with ``E[f, k] ~ N(0, sigma[f, k]^2)`` drawn once per
    ``sample_freq`` steps (-1: once per rollout) and held in between, so that exploration is
    smooth in time instead of white noise at every step (what tasks like MountainCarContinuous
    need). Given ``s``, the action is Gaussian with the per-state variance
    ``sum_f z_f(s)^2 sigma[f, k]^2`` (plus ``EPSILON``), which is what the log-probability and the
    entropy use. ``log_std`` is the learned ``[features, actions]`` matrix of ``log(sigma)``, flat;
    the features in ``params`` come detached from the encoder (the noise does not train it).
    """

    EPSILON = 1e-6  # keeps the variance positive where every feature is 0

    def __init__(self, space: spaces.Box, sample_freq: int = -1) -> None:
        super().__init__(space)
        if sample_freq == 0 or sample_freq < -1:
            raise ValueError(
                f"sde_sample_freq={sample_freq} is invalid: use -1 (once per rollout) or a number of steps >= 1"
            )
        self.sample_freq = sample_freq
        self.gaussian_size = 0  # known once the features' width is (bind_features)

    def bind_features(self, width):
        self.feature_size = int(width)
        self.gaussian_size = self.feature_size * self.num_outputs

    def _sigma(self) -> torch.Tensor:
        return self.log_std.exp().view(self.feature_size, self.num_outputs)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[..., : self.num_outputs], params[..., self.num_outputs :]

    def _std(self, features: torch.Tensor) -> torch.Tensor:
        return (features.pow(2) @ self._sigma().pow(2) + self.EPSILON).sqrt()

    def noise(self, shape, generator, device=None):
        """Standard-normal exploration matrices ``[*shape, features, actions]``. For a rollout's
        ``(steps, envs)`` each env's matrix holds for ``sample_freq`` steps (-1: all of them);
        any other shape gets one matrix per entry."""
        if len(shape) != 2:
            return torch.randn((*shape, self.feature_size, self.num_outputs), generator=generator, device=device)
        steps, envs = shape
        freq = steps if self.sample_freq == -1 else min(self.sample_freq, steps)
        draws = -(-steps // freq)
        matrices = torch.randn((draws, envs, self.feature_size, self.num_outputs), generator=generator, device=device)
        return matrices.repeat_interleave(freq, dim=0)[:steps]

    def sample(self, params, noise):
        mean, features = self._split(params)
        if noise is None:
            return mean
        return mean + (features.unsqueeze(-2) @ (noise * self._sigma())).squeeze(-2)

    def sample_numpy(self, params, noise, std=None):
        raise NotImplementedError(
            "gSDE acts through the torch rollout (clippo.rollout.runner), not the numpy fast path"
        )

    def log_prob(self, params, actions):
        mean, features = self._split(params)
        std = self._std(features)
        z = (actions - mean) / std
        return (-0.5 * z.pow(2) - std.log() - _LOG_SQRT_2PI).sum(dim=-1)

    def entropy(self, params):
        _, features = self._split(params)
        return (0.5 + _LOG_SQRT_2PI + self._std(features).log()).sum(dim=-1)


class Bernoulli(ActionDistribution):
    """Independent bits, one logit each, for a ``MultiBinary`` space: bit i is 1 with probability
    ``sigmoid(logit_i)``."""

    discrete = True

    def __init__(self, space: spaces.MultiBinary) -> None:
        self.shape = tuple(space.shape)
        self.dtype = space.dtype
        self.num_outputs = int(np.prod(self.shape))
        self.action_shape = (self.num_outputs,)
        self.action_dtype = torch.int64

    def noise(self, shape, generator, device=None):
        # Logistic noise: logit + L > 0 with probability sigmoid(logit), as Gumbel noise for argmax.
        u = torch.rand((*shape, self.num_outputs), generator=generator, device=device)
        return u.log() - torch.log1p(-u)

    def sample(self, logits, noise):
        return ((logits if noise is None else logits + noise) > 0).long()

    def sample_numpy(self, logits, noise, std=None):
        return ((logits if noise is None else logits + noise) > 0).astype(np.int64)

    def log_prob(self, logits, actions):
        return -F.binary_cross_entropy_with_logits(logits, actions.to(logits.dtype), reduction="none").sum(dim=-1)

    def entropy(self, logits):
        # -p log p - (1 - p) log(1 - p), with log p = logit - softplus(logit), log(1 - p) = -softplus(logit)
        return (F.softplus(logits) - logits * torch.sigmoid(logits)).sum(dim=-1)

    def to_env(self, actions):
        return actions.astype(self.dtype).reshape(*actions.shape[:-1], *self.shape)


class Composite(ActionDistribution):
    """One distribution per part of a ``Tuple`` or ``Dict`` space (nested ones too), e.g. a
    Discrete "which tool" with a Box "how hard": the actor's output is split into one head per
    part, and the parts are independent given the observation, so the log-probability and the
    entropy are the sums over the parts.

    An action is stored flat, as float32: each part's numbers side by side in the space's order
    (a Discrete index as one number, exact up to 2**24). ``to_env`` gives the space's own
    structure, a dict or tuple of arrays in each part's dtype.
    """

    def __init__(self, space: spaces.Dict | spaces.Tuple) -> None:
        items = list(space.spaces.items()) if isinstance(space, spaces.Dict) else list(enumerate(space.spaces))
        if not items:
            raise ValueError(f"action space {space} is not supported: it has no parts")
        self.is_dict = isinstance(space, spaces.Dict)
        self.keys = [key for key, _ in items]
        self.parts = [make_distribution(sub) for _, sub in items]
        for (key, sub), part in zip(items, self.parts, strict=False):
            if isinstance(sub, spaces.Discrete) and sub.n > _FLOAT32_EXACT_INTEGERS:
                raise ValueError(
                    f"action space part {key!r} ({sub}) is not supported: Discrete parts may have at most 2**24 actions"
                )
        self.output_sizes = [part.num_outputs for part in self.parts]
        self.action_widths = [part.action_width for part in self.parts]
        self.num_outputs = sum(self.output_sizes)
        self.action_shape = (sum(self.action_widths),)
        self.action_dtype = torch.float32
        self.discrete = all(part.discrete for part in self.parts)
        self.gaussian_size = sum(part.gaussian_size for part in self.parts)
        self._action_bounds = np.cumsum(self.action_widths)[:-1].tolist()

    def bind_log_std(self, log_std, offset=0):
        for part in self.parts:
            if part.gaussian_size:
                part.bind_log_std(log_std, offset)
                offset += part.gaussian_size

    def _split_actions(self, actions: torch.Tensor) -> list[torch.Tensor]:
        chunks = actions.split(self.action_widths, dim=-1)
        return [c.squeeze(-1) if part.action_shape == () else c for c, part in zip(chunks, self.parts, strict=False)]

    def noise(self, shape, generator, device=None):
        return torch.cat([part.noise(shape, generator, device) for part in self.parts], dim=-1)

    def sample(self, params, noise):
        params_parts = params.split(self.output_sizes, dim=-1)
        noise_parts = noise.split(self.output_sizes, dim=-1) if noise is not None else [None] * len(self.parts)
        actions = []
        for part, p, n in zip(self.parts, params_parts, noise_parts, strict=False):
            a = part.sample(p, n).to(torch.float32)
            actions.append(a.unsqueeze(-1) if part.action_shape == () else a)
        return torch.cat(actions, dim=-1)

    def log_prob(self, params, actions):
        pairs = zip(self.parts, params.split(self.output_sizes, dim=-1), self._split_actions(actions), strict=False)
        return sum(part.log_prob(p, a) for part, p, a in pairs)

    def entropy(self, params):
        return sum(
            part.entropy(p) for part, p in zip(self.parts, params.split(self.output_sizes, dim=-1), strict=False)
        )

    def log_prob_and_entropy(self, params, actions):
        logprob, entropy = 0, 0
        for part, p, a in zip(
            self.parts, params.split(self.output_sizes, dim=-1), self._split_actions(actions), strict=False
        ):
            part_logprob, part_entropy = part.log_prob_and_entropy(p, a)
            logprob, entropy = logprob + part_logprob, entropy + part_entropy
        return logprob, entropy

    def to_env(self, actions):
        out = []
        for part, chunk in zip(self.parts, np.split(actions, self._action_bounds, axis=-1), strict=False):
            if part.action_shape == ():
                chunk = chunk[..., 0]
            if part.action_dtype == torch.int64:
                chunk = chunk.astype(np.int64)  # float32 indices are exact: rint not needed
            out.append(part.to_env(chunk))
        return dict(zip(self.keys, out, strict=False)) if self.is_dict else tuple(out)


def make_distribution(space: spaces.Space, sde_sample_freq: int | None = None) -> ActionDistribution:
    """The distribution for a Gymnasium action space; a clear error for one clippo does not support.
    ``sde_sample_freq`` (not None): state-dependent exploration (:class:`StateDependentGaussian`),
    which needs a floating ``Box`` action space."""
    if sde_sample_freq is not None:
        if not (isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating)):
            raise ValueError(
                f"use_sde needs a floating Box action space, not {' '.join(str(space).split())} "
                f"({type(space).__name__})"
            )
        return StateDependentGaussian(space, sde_sample_freq)
    if isinstance(space, spaces.Discrete):
        return Categorical(space)
    if isinstance(space, spaces.MultiDiscrete):
        return MultiCategorical(space)
    if isinstance(space, spaces.Box):
        if not np.issubdtype(space.dtype, np.floating):
            raise ValueError(f"action space {space} is not supported: Box actions must have a floating dtype")
        return DiagGaussian(space)
    if isinstance(space, spaces.MultiBinary):
        return Bernoulli(space)
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        return Composite(space)
    raise ValueError(
        f"action space {' '.join(str(space).split())} ({type(space).__name__}) is not supported: clippo handles "
        "Discrete, MultiDiscrete, Box, MultiBinary, and Tuple/Dict spaces made of them"
    )

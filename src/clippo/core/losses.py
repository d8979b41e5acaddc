"""PPO's loss terms and diagnostics as pure tensor functions (Schulman et al., 2017)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from clippo.core.precision import as_numpy


def float_mean(x: np.ndarray) -> float:
    """``x.mean()`` as a float, without ``np.mean``'s Python-level overhead (more than the sum
    itself on the few hundred samples of a minibatch; docs/fast-path.md)."""
    return float(x.sum()) / x.size


def normalize_advantages(
    advantages: torch.Tensor, eps: float = 1e-8, moments: tuple[float, float] | None = None
) -> torch.Tensor:
    """Zero mean, unit std; a minibatch of one sample is left as it is (its std is undefined).

    ``moments``: a (mean, std) to use instead of the minibatch's own (across ranks, the pooled ones).
    """
    if moments is None and advantages.numel() < 2:
        return advantages
    if advantages.device.type == "cpu":
        # The same in numpy: on minibatches of a few hundred samples, a fifth of torch's call overhead.
        a = advantages.numpy()
        if moments is None:
            mean = float_mean(a)
            centered = a - np.float32(mean)
            moments = mean, math.sqrt(float(np.dot(centered, centered)) / (a.size - 1))  # unbiased, as torch.std
        mean, std = moments
        return torch.from_numpy((a - np.float32(mean)) * np.float32(1.0 / (std + eps)))
    # On a device, the tensor moments stay there (no transfer); pooled ones are floats.
    mu, sigma = (advantages.mean(), advantages.std()) if moments is None else moments
    return (advantages - mu) / (sigma + eps)


def clipped_surrogate_loss(
    logratio: torch.Tensor, advantages: torch.Tensor, clip_epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``-mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))`` and the ratio itself.

    Where the clipped term is the minimum, the loss does not depend on the ratio, so its gradient
    is zero: the policy gets no incentive to move further than the clip range.
    """
    ratio = logratio.exp()
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon) * advantages
    return -torch.min(unclipped, clipped).mean(), ratio


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip_epsilon: float | None = None,
) -> torch.Tensor:
    """Mean squared error to the returns; optionally the pessimistic max with a clipped prediction."""
    unclipped = (values - returns).pow(2)
    if old_values is None or clip_epsilon is None:
        return unclipped.mean()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_epsilon, clip_epsilon)
    return torch.max(unclipped, (clipped_values - returns).pow(2)).mean()


def entropy_bonus(entropy: torch.Tensor) -> torch.Tensor:
    """Mean policy entropy; subtracted (times ent_coef) from the loss to keep exploring."""
    return entropy.mean()


def ppo_loss(
    policy_loss: torch.Tensor, v_loss: torch.Tensor, entropy: torch.Tensor, vf_coef: float, ent_coef: float
) -> torch.Tensor:
    """The one combined loss that gets a single backward pass and a single Adam step."""
    return policy_loss + vf_coef * v_loss - ent_coef * entropy


@torch.no_grad()
def approx_kl(logratio: torch.Tensor, ratio: torch.Tensor | None = None) -> torch.Tensor:
    """Low-variance, always non-negative estimator of KL(old || new): ``E[(r - 1) - log r]``.

    ``ratio`` (``exp(logratio)``) may be passed when already computed.
    """
    if ratio is None:
        ratio = logratio.exp()
    return ((ratio - 1.0) - logratio).mean()


@torch.no_grad()
def clip_fraction(ratio: torch.Tensor, clip_epsilon: float) -> torch.Tensor:
    """Share of samples whose ratio lies outside the clip range."""
    return ((ratio - 1.0).abs() > clip_epsilon).float().mean()


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """``1 - Var(targets - predictions) / Var(targets)``: 1 is perfect, 0 no better than a constant."""
    if targets.numel() < 2:
        return float("nan")
    # (in numpy: a fraction of torch's per-call cost on a rollout's values)
    y = as_numpy(targets)
    sum_of_squares = _sum_of_squares(y)
    if sum_of_squares == 0:
        return float("nan")
    return 1.0 - _sum_of_squares(y - as_numpy(predictions)) / sum_of_squares


def _sum_of_squares(x: np.ndarray) -> float:
    """``sum((x - mean(x))^2)`` in float64 (the variance up to its divisor, which a ratio cancels)."""
    centered = x.astype(np.float64).reshape(-1) - float_mean(x)
    return float(np.dot(centered, centered))


@dataclass
class LossTerms:
    """One minibatch's loss, its parts and the step's diagnostics (approximate KL to the rollout
    policy, share of clipped ratios), as numbers; and each sample's log probability ratio."""

    loss: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    logratio: torch.Tensor


class AutogradLoss:
    """The combined PPO loss of a minibatch, its gradient left in the parameters' ``.grad`` by
    autograd: the general path, for every encoder, action space and device."""

    def __init__(
        self, model, clip_epsilon: float, vf_coef: float, ent_coef: float, zero_grad: Callable[[], None]
    ) -> None:
        self.model = model
        self.clip_epsilon = clip_epsilon
        self.vf_coef = vf_coef
        self.ent_coef = ent_coef
        self.zero_grad = zero_grad

    def __call__(
        self, obs, actions, old_logprobs, advantages, returns, old_values=None, masks=None, sequences=None
    ) -> LossTerms:
        """``old_values`` given: the value error is clipped around them (PPO2 style). ``masks``:
        the action masks the rollout acted with, so that the new log-probabilities, the entropy
        and hence the ratio and the KL estimate are those of the masked policy. ``sequences``
        (``clippo.networks.policy.Sequences``; recurrent policies): ``obs``, ``actions`` and ``masks``
        are stored sequences, replayed from their initial states; the other arguments are flat,
        one entry per valid step."""
        # With no entropy bonus, the entropy is only logged: keep it out of the graph.
        logprobs, entropy, values = self.model.evaluate_actions(
            obs, actions, entropy_grad=self.ent_coef > 0, masks=masks, sequences=sequences
        )
        logratio = logprobs - old_logprobs
        pg_loss, ratio = clipped_surrogate_loss(logratio, advantages, self.clip_epsilon)
        v_loss = value_loss(values, returns, old_values, self.clip_epsilon)
        entropy_mean = entropy_bonus(entropy)
        loss = ppo_loss(pg_loss, v_loss, entropy_mean, self.vf_coef, self.ent_coef)
        self.zero_grad()
        loss.backward()
        with torch.no_grad():
            if logratio.device.type == "cpu":
                # The two diagnostics in numpy: on a minibatch, a third of the time of seven torch ops.
                numbers = torch.stack([loss, pg_loss, v_loss, entropy_mean]).tolist()
                numbers += numpy_diagnostics(logratio.detach().numpy(), ratio.detach().numpy(), self.clip_epsilon)
            else:  # one transfer from the device for all six numbers
                numbers = torch.stack(
                    [
                        loss,
                        pg_loss,
                        v_loss,
                        entropy_mean,
                        approx_kl(logratio, ratio),
                        clip_fraction(ratio, self.clip_epsilon),
                    ]
                ).tolist()
        loss_value, policy_loss, v_loss_value, entropy_value, kl, clipped = numbers
        return LossTerms(loss_value, policy_loss, v_loss_value, entropy_value, kl, clipped, logratio.detach())


def numpy_diagnostics(logratio: np.ndarray, ratio: np.ndarray, clip_epsilon: float) -> list[float]:
    """``approx_kl`` and ``clip_fraction`` of numpy arrays, as floats."""
    kl = float(((ratio - 1.0) - logratio).sum()) / logratio.size
    return [kl, np.count_nonzero(np.abs(ratio - 1.0) > clip_epsilon) / logratio.size]

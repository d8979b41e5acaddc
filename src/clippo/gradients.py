"""The gradient of PPO's combined loss for MLP actor-critics, worked out by hand.

At PPO's sizes on a CPU (a few hundred samples, 64-unit layers), autograd's bookkeeping costs
more than the arithmetic: a graph node, a dispatch and temporaries for every operation, plus
copies of each parameter's gradient into the optimizer's flat buffer. The chain rule through
this one loss is short, so it is written out here and the gradients are written straight into
the flat buffer: about a third less time per minibatch step than ``loss.backward()``.

The math is the same loss as ``clippo.losses`` (tests compare the gradients with autograd on
random batches, clipped and unclipped samples, for every supported combination):

    L = -mean(min(r A, clip(r, 1-eps, 1+eps) A)) + vf_coef * value_error - ent_coef * mean(H)

- policy term, per sample: dL/dlog pi = -r A / N where ``r A`` is the smaller term (the clipped
  term has no gradient; on ties autograd splits the gradient between the two equal terms, which
  sums to the same ``r A``);
- categorical: dlog pi(a)/dlogits = onehot(a) - p, dH/dlogits = -p (log p + H);
- Gaussian (mean mu, log-std s): dlog pi/dmu = z e^-s, dlog pi/ds = z^2 - 1 with z = (a - mu) e^-s,
  dH/ds = 1;
- value error (v - R)^2 (or PPO2's pessimistic max with the clipped prediction), and back through
  each ``activation(x W^T + b)`` layer.

Supported: separate actor and critic MLPs (tanh or ReLU) with Discrete or Box actions on the
CPU. Anything else (a shared trunk, MultiDiscrete actions, GPUs, where autograd's overhead is
hidden) takes the autograd path in ``PPO``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clippo.distributions import _LOG_SQRT_2PI, Categorical, DiagGaussian
from clippo.networks import ActorCritic


#: elements of a tanh layer's output from which ``_forward`` computes it through a sigmoid (measured
#: on a 2-core x86 CPU: slower below about 64 x 64, ~25 us faster per layer at 256 x 64)
TANH_AS_SIGMOID_MIN = 8192
_MINUS_ONE = torch.tensor(-1.0)


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


def _mean(x: np.ndarray) -> float:
    """``x.mean()`` without ``np.mean``'s Python-level overhead (~10 us, more than the sum here)."""
    return float(x.sum()) / x.size


def supports(model: ActorCritic, device: torch.device) -> bool:
    """Whether ``AnalyticGradient`` covers this model (else PPO uses autograd)."""
    return (
        device.type == "cpu"
        and not model.shared
        and model.activation in (torch.tanh, torch.relu)
        and type(model.distribution) in (Categorical, DiagGaussian)
    )


class AnalyticGradient:
    """Computes the PPO loss of a minibatch and leaves its gradient in each parameter's ``.grad``
    (which ``FlatAdam`` points into its flat gradient buffer)."""

    def __init__(self, model: ActorCritic, clip_epsilon: float, vf_coef: float, ent_coef: float) -> None:
        if not supports(model, model.actor_head.weight.device):
            raise ValueError("AnalyticGradient needs separate tanh/ReLU MLPs with Discrete or Box actions on the CPU")
        self.model = model
        self.actor = [*model.actor_body, model.actor_head]
        self.critic = [*model.critic_body, model.critic_head]
        self.relu = model.activation is torch.relu
        self.gaussian = isinstance(model.distribution, DiagGaussian)
        self.clip_epsilon = clip_epsilon
        self.vf_coef = vf_coef
        self.ent_coef = ent_coef

    @torch.no_grad()
    def __call__(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_logprobs: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        old_values: torch.Tensor | None = None,
    ) -> LossTerms:
        """The loss on this minibatch; gradients written to the parameters' ``.grad``.

        ``old_values`` given: the value error is clipped around them (PPO2 style).

        The layers run in torch (matrix products); the loss and its derivatives at the network
        outputs are per-sample vectors of a few hundred entries, where numpy's call overhead is a
        fraction of torch's: the same formulas in float32, in numpy, on views of the same memory.
        """
        n = obs.shape[0]
        eps = self.clip_epsilon
        actor_inputs, out_tensor = self._forward(self.actor, obs)
        critic_inputs, values_tensor = self._forward(self.critic, obs)
        out, values = out_tensor.numpy(), values_tensor.numpy()[:, 0]
        old_logprobs, advantages, returns = old_logprobs.numpy(), advantages.numpy(), returns.numpy()

        # Policy: log-probabilities, entropy and their derivatives with respect to the head output.
        if self.gaussian:
            log_std = self.model.log_std.detach().numpy()
            inv_std = np.exp(-log_std)
            z = (actions.numpy() - out) * inv_std
            logprobs = (-0.5 * z * z - log_std - _LOG_SQRT_2PI) @ np.ones(z.shape[1], np.float32)
            entropy = float((0.5 + _LOG_SQRT_2PI + log_std).sum())
        else:
            rows, taken = np.arange(n), actions.numpy().astype(np.intp, copy=False)
            log_p = torch.log_softmax(out_tensor, 1).numpy()
            logprobs = log_p[rows, taken]
            p = np.exp(log_p)
            per_sample_entropy = -(p * log_p) @ np.ones(p.shape[1], np.float32)
            entropy = _mean(per_sample_entropy)

        logratio = logprobs - old_logprobs
        ratio = np.exp(logratio)
        unclipped = ratio * advantages
        clipped = np.minimum(np.maximum(ratio, 1.0 - eps), 1.0 + eps) * advantages
        policy_loss = -_mean(np.minimum(unclipped, clipped))
        # dL/dlog pi per sample: -r A / N where the unclipped term is the smaller one, else 0.
        d_logprob = np.where(unclipped <= clipped, unclipped, np.float32(0.0)) * np.float32(-1.0 / n)

        if self.gaussian:
            d_out = (d_logprob[:, None] * z) * inv_std
            d_log_std = (d_logprob[:, None] * (z * z - 1.0)).sum(0)
            if self.ent_coef:
                d_log_std -= self.ent_coef
            self.model.log_std.grad.copy_(torch.from_numpy(d_log_std))
        else:
            # (onehot(a) - p) * dL/dlog pi
            d_out = p * -d_logprob[:, None]
            d_out[rows, taken] += d_logprob
            if self.ent_coef:
                d_out += (log_p + per_sample_entropy[:, None]) * p * np.float32(self.ent_coef / n)

        # Value error and its derivative with respect to the values.
        error = values - returns
        if old_values is None:
            value_loss = _mean(error * error)
            d_values = error * np.float32(2.0 * self.vf_coef / n)
        else:
            old_values = old_values.numpy()
            delta = values - old_values
            clipped_error = old_values + np.minimum(np.maximum(delta, -eps), eps) - returns
            squared, clipped_squared = error * error, clipped_error * clipped_error
            value_loss = _mean(np.maximum(squared, clipped_squared))
            in_range = (delta >= -eps) & (delta <= eps)
            d_unclipped = 2.0 * error
            d_clipped = np.where(in_range, 2.0 * clipped_error, np.float32(0.0))
            # the max gives the gradient to the larger term (as torch.max does), half to each on a tie
            d_values = np.where(
                squared > clipped_squared,
                d_unclipped,
                np.where(squared < clipped_squared, d_clipped, 0.5 * (d_unclipped + d_clipped)),
            ) * np.float32(self.vf_coef / n)

        self._backward(self.actor, actor_inputs, torch.from_numpy(d_out))
        self._backward(self.critic, critic_inputs, torch.from_numpy(d_values[:, None]))
        loss = policy_loss + self.vf_coef * value_loss - self.ent_coef * entropy
        kl = _mean((ratio - 1.0) - logratio)
        clip_fraction = float(np.count_nonzero(np.abs(ratio - 1.0) > eps)) / n
        return LossTerms(loss, policy_loss, value_loss, entropy, kl, clip_fraction, torch.from_numpy(logratio))

    def _forward(self, layers: list[nn.Linear], x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each layer's input (the last hidden layer's output included) and the output."""
        inputs = []
        for linear in layers[:-1]:
            inputs.append(x)
            if self.relu:
                x = torch.addmm(linear.bias, x, linear.weight.t()).relu_()
            elif x.shape[0] * linear.out_features >= TANH_AS_SIGMOID_MIN:
                # tanh(u) = 2 sigmoid(2u) - 1 (same values up to ~1e-7): torch's CPU sigmoid is
                # vectorized, its tanh much less so, and on large layers this is the cheaper form.
                x = torch.addmm(linear.bias, x, linear.weight.t(), beta=2.0, alpha=2.0).sigmoid_()
                x = torch.add(_MINUS_ONE, x, alpha=2.0, out=x)  # 2 s - 1 in one pass
            else:
                x = torch.addmm(linear.bias, x, linear.weight.t()).tanh_()
        inputs.append(x)
        head = layers[-1]
        return inputs, torch.addmm(head.bias, x, head.weight.t())

    def _backward(self, layers: list[nn.Linear], inputs: list[torch.Tensor], d_out: torch.Tensor) -> None:
        """Write each layer's weight and bias gradients, from the loss gradient at the output."""
        for i in range(len(layers) - 1, -1, -1):
            linear = layers[i]
            if i < len(layers) - 1:  # through the activation: its output is the next layer's input
                output = inputs[i + 1]
                if self.relu:
                    d_out = torch.ops.aten.threshold_backward(d_out, output, 0.0)
                else:
                    d_out = torch.ops.aten.tanh_backward(d_out, output)
            torch.mm(d_out.t(), inputs[i], out=linear.weight.grad)
            torch.sum(d_out, 0, out=linear.bias.grad)
            if i > 0:
                d_out = d_out @ linear.weight

"""The gradient of PPO's combined loss for MLP actor-critics, worked out by hand.

At PPO's sizes on a CPU (a few hundred samples, 64-unit layers), autograd's bookkeeping costs
more than the arithmetic: a graph node, a dispatch and temporaries for every operation, plus
copies of each parameter's gradient into the optimizer's flat buffer. The chain rule through
this one loss is short, so it is written out here and the gradients are written straight into
the flat buffer (measurements: docs/fast-path.md).

The math is the same loss as ``clippo.core.losses`` (tests compare the gradients with autograd on
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

Two more savings of the same kind: the actor's and the critic's hidden layer i have the same shape,
so both run as one batched product on a [2, out, in] view of their weights (``FlatAdam`` lays
them side by side), halving the number of calls; and the loss and its derivatives at the outputs,
vectors of a few hundred samples, are computed in numpy, whose per-call cost is a fraction of
torch's.

Supported: separate actor and critic MLPs (tanh or ReLU) with Discrete (masked or not) or Box
actions on the CPU. Anything else (a shared trunk, MultiDiscrete actions, GPUs, where autograd's overhead is
hidden) takes ``clippo.core.losses.AutogradLoss`` (chosen by ``clippo.fastpath.make_loss``).
"""

from __future__ import annotations

import numpy as np
import torch

from clippo.core.losses import LossTerms, float_mean
from clippo.fastpath.numpy_mlp import NUMPY_TANH_AVX512
from clippo.networks.distributions import _LOG_SQRT_2PI, MASKED_LOGIT, Categorical, DiagGaussian
from clippo.networks.policy import ActorCritic

#: elements of a tanh layer's output from which ``_forward`` computes it through a sigmoid
#: (slower below, faster above: docs/fast-path.md)
TANH_AS_SIGMOID_MIN = 8192
#: hidden tanh layers computed by numpy in place (where its tanh is the AVX-512 loop)
TANH_IN_NUMPY = NUMPY_TANH_AVX512
_MINUS_ONE = torch.tensor(-1.0)


def supports(model: ActorCritic, device: torch.device) -> bool:
    """Whether ``AnalyticGradient`` covers this model (else PPO uses autograd)."""
    return (
        device.type == "cpu"
        and not model.shared
        and model.is_mlp
        and type(model.distribution) in (Categorical, DiagGaussian)
    )


class AnalyticGradient:
    """Computes the PPO loss of a minibatch and leaves its gradient in each parameter's ``.grad``
    (which ``FlatAdam`` points into its flat gradient buffer)."""

    def __init__(self, model: ActorCritic, clip_epsilon: float, vf_coef: float, ent_coef: float) -> None:
        if not supports(model, model.actor_head.weight.device):
            raise ValueError("AnalyticGradient needs separate tanh/ReLU MLPs with Discrete or Box actions on the CPU")
        self.model = model
        # Layer i of the actor and of the critic as one [2, out, in] block (and [2, out] bias),
        # with their gradients: one batched product runs both networks' layer.
        pairs = list(zip(model.actor_encoder.layers, model.critic_encoder.layers, strict=False))
        self.weights = [_side_by_side(a.weight, c.weight) for a, c in pairs]
        self.biases = [_side_by_side(a.bias, c.bias).unsqueeze(1) for a, c in pairs]
        self.weight_grads = [_side_by_side(a.weight.grad, c.weight.grad) for a, c in pairs]
        self.bias_grads = [_side_by_side(a.bias.grad, c.bias.grad) for a, c in pairs]
        # The heads (a few outputs each) in numpy, where such thin products cost about half of
        # torch's call: views of the same memory, kept once (module attribute lookups cost too).
        heads = (model.actor_head, model.critic_head)
        self.head_weights = [head.weight.detach().numpy() for head in heads]
        self.head_biases = [head.bias.detach().numpy() for head in heads]
        self.head_weight_grads = [head.weight.grad.numpy() for head in heads]
        self.head_bias_grads = [head.bias.grad.numpy() for head in heads]
        self.gaussian = isinstance(model.distribution, DiagGaussian)
        if self.gaussian:
            self.log_std, self.log_std_grad = model.log_std.detach().numpy(), model.log_std.grad.numpy()
        self.relu = model.actor_encoder.activation is torch.relu
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
        masks: torch.Tensor | None = None,
    ) -> LossTerms:
        """The loss on this minibatch; gradients written to the parameters' ``.grad``.

        ``old_values`` given: the value error is clipped around them (PPO2 style). ``masks``
        given (Discrete actions): the logits of invalid actions are replaced by ``MASKED_LOGIT``,
        as ``Categorical.mask`` does; their probability is exactly 0, so every term below gives
        them a zero derivative, as autograd does through the mask.

        The hidden layers run in torch (batched matrix products); the heads, the loss and its
        derivatives at the outputs (per-sample vectors of a few hundred entries, where numpy's
        call overhead is a fraction of torch's) in float32 numpy, on views of the same memory.
        """
        n = obs.shape[0]
        eps = self.clip_epsilon
        inputs, out, values = self._forward(obs)
        if masks is not None:
            np.copyto(out, np.float32(MASKED_LOGIT), where=~masks.numpy())
        old_logprobs, advantages, returns = old_logprobs.numpy(), advantages.numpy(), returns.numpy()

        # Policy: log-probabilities, entropy and their derivatives with respect to the head output.
        if self.gaussian:
            log_std = self.log_std
            inv_std = np.exp(-log_std)
            z = (actions.numpy() - out) * inv_std
            logprobs = (-0.5 * z * z - log_std - _LOG_SQRT_2PI) @ np.ones(z.shape[1], np.float32)
            entropy = float((0.5 + _LOG_SQRT_2PI + log_std).sum())
        else:
            rows, taken = np.arange(n), actions.numpy().astype(np.intp, copy=False)
            log_p = torch.log_softmax(torch.from_numpy(out), 1).numpy()
            logprobs = log_p[rows, taken]
            p = np.exp(log_p)
            per_sample_entropy = -(p * log_p) @ np.ones(p.shape[1], np.float32)
            entropy = float_mean(per_sample_entropy)

        logratio = logprobs - old_logprobs
        ratio = np.exp(logratio)
        unclipped = ratio * advantages
        clipped = np.minimum(np.maximum(ratio, 1.0 - eps), 1.0 + eps) * advantages
        policy_loss = -float_mean(np.minimum(unclipped, clipped))
        # dL/dlog pi per sample: -r A / N where the unclipped term is the smaller one, else 0.
        d_logprob = np.where(unclipped <= clipped, unclipped, np.float32(0.0)) * np.float32(-1.0 / n)

        if self.gaussian:
            d_out = (d_logprob[:, None] * z) * inv_std
            d_log_std = (d_logprob[:, None] * (z * z - 1.0)).sum(0)
            if self.ent_coef:
                d_log_std -= self.ent_coef
            self.log_std_grad[:] = d_log_std
        else:
            # (onehot(a) - p) * dL/dlog pi
            d_out = p * -d_logprob[:, None]
            d_out[rows, taken] += d_logprob
            if self.ent_coef:
                d_out += (log_p + per_sample_entropy[:, None]) * p * np.float32(self.ent_coef / n)

        # Value error and its derivative with respect to the values.
        error = values - returns
        if old_values is None:
            value_loss = float_mean(error * error)
            d_values = error * np.float32(2.0 * self.vf_coef / n)
        else:
            old_values = old_values.numpy()
            delta = values - old_values
            clipped_error = old_values + np.minimum(np.maximum(delta, -eps), eps) - returns
            squared, clipped_squared = error * error, clipped_error * clipped_error
            value_loss = float_mean(np.maximum(squared, clipped_squared))
            in_range = (delta >= -eps) & (delta <= eps)
            d_unclipped = 2.0 * error
            d_clipped = np.where(in_range, 2.0 * clipped_error, np.float32(0.0))
            # the max gives the gradient to the larger term (as torch.max does), half to each on a tie
            d_values = np.where(
                squared > clipped_squared,
                d_unclipped,
                np.where(squared < clipped_squared, d_clipped, 0.5 * (d_unclipped + d_clipped)),
            ) * np.float32(self.vf_coef / n)

        self._backward(inputs, d_out, d_values[:, None])
        loss = policy_loss + self.vf_coef * value_loss - self.ent_coef * entropy
        kl = float_mean((ratio - 1.0) - logratio)
        clip_fraction = float(np.count_nonzero(np.abs(ratio - 1.0) > eps)) / n
        return LossTerms(loss, policy_loss, value_loss, entropy, kl, clip_fraction, torch.from_numpy(logratio))

    def _forward(self, obs: torch.Tensor) -> tuple[list[torch.Tensor], np.ndarray, np.ndarray]:
        """Each hidden layer's input ([2, batch, in]: actor's, critic's) and the last one's
        output; the actor's output ([batch, outputs]) and the critic's values ([batch])."""
        x = obs.expand(2, *obs.shape)  # both networks read the same observations (no copy)
        inputs = []
        for weight, bias in zip(self.weights, self.biases, strict=False):
            inputs.append(x)
            if self.relu:
                x = torch.baddbmm(bias, x, weight.transpose(1, 2)).relu_()
            elif TANH_IN_NUMPY:  # numpy's AVX-512 tanh beats both torch forms (see numpy_tanh_is_avx512)
                x = torch.baddbmm(bias, x, weight.transpose(1, 2))
                h = x.numpy()  # the same memory
                np.tanh(h, out=h)
            elif x.shape[1] * weight.shape[1] >= TANH_AS_SIGMOID_MIN:
                # tanh(u) = 2 sigmoid(2u) - 1 (same values up to ~1e-7): torch's CPU sigmoid is
                # vectorized, its tanh much less so, and on large layers this is the cheaper form.
                x = torch.baddbmm(bias, x, weight.transpose(1, 2), beta=2.0, alpha=2.0).sigmoid_()
                x = torch.add(_MINUS_ONE, x, alpha=2.0, out=x)  # 2 s - 1 in one pass
            else:
                x = torch.baddbmm(bias, x, weight.transpose(1, 2)).tanh_()
        inputs.append(x)
        last = x.numpy()
        (actor_weight, critic_weight), (actor_bias, critic_bias) = self.head_weights, self.head_biases
        return inputs, last[0] @ actor_weight.T + actor_bias, (last[1] @ critic_weight.T)[:, 0] + critic_bias

    def _backward(self, inputs: list[torch.Tensor], d_out: np.ndarray, d_values: np.ndarray) -> None:
        """Write every weight and bias gradient, from the loss gradients at the actor's output
        and at the values ([batch, 1])."""
        last = inputs[-1].numpy()
        d = np.empty_like(last)
        for k, d_head in enumerate((d_out, d_values)):
            np.matmul(d_head.T, last[k], out=self.head_weight_grads[k])
            np.add.reduce(d_head, 0, out=self.head_bias_grads[k])
            np.matmul(d_head, self.head_weights[k], out=d[k])
        d = torch.from_numpy(d)
        for i in range(len(self.weights) - 1, -1, -1):
            # through the activation: its output is the next layer's input
            if self.relu:
                d = torch.ops.aten.threshold_backward(d, inputs[i + 1], 0.0)
            else:
                d = torch.ops.aten.tanh_backward(d, inputs[i + 1])
            torch.bmm(d.transpose(1, 2), inputs[i], out=self.weight_grads[i])
            torch.sum(d, 1, out=self.bias_grads[i])
            if i > 0:
                d = torch.bmm(d, self.weights[i])


def _side_by_side(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``torch.stack([first, second])`` as a view, for tensors that lie one after the other in
    memory (as ``FlatAdam`` lays out ``ActorCritic.paired_parameters``); outside autograd."""
    first, second = first.detach(), second.detach()
    if not (
        first.is_contiguous()
        and second.is_contiguous()
        and first.shape == second.shape
        and second.data_ptr() == first.data_ptr() + first.numel() * first.element_size()
    ):
        raise ValueError(
            "AnalyticGradient needs each actor layer's parameters and gradients right before the "
            "critic's: build the optimizer with FlatAdam(model.paired_parameters(), ...)"
        )
    return first.as_strided((2, *first.shape), (first.numel(), *first.stride()))

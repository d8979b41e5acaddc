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

from collections.abc import Iterable
from typing import cast

import numpy as np
import torch
from torch import nn

from clippo.core.losses import LossTerms, float_mean
from clippo.fastpath.layout import is_plain_mlp
from clippo.fastpath.numpy_mlp import NUMPY_TANH_AVX512
from clippo.networks.distributions import _LOG_SQRT_2PI, MASKED_LOGIT, Categorical, DiagGaussian
from clippo.networks.encoders import MLPEncoder
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
        and is_plain_mlp(model)
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
        actor, critic = model.actor_encoder, model.critic_encoder
        assert isinstance(actor, MLPEncoder) and isinstance(critic, MLPEncoder)  # supports() checked
        actor_layers, critic_layers = (cast("Iterable[nn.Linear]", e.layers) for e in (actor, critic))
        pairs = list(zip(actor_layers, critic_layers, strict=False))
        self.weights = [_side_by_side(a.weight, c.weight) for a, c in pairs]
        self.biases = [_side_by_side(a.bias, c.bias).unsqueeze(1) for a, c in pairs]
        self.weight_grads = [_side_by_side(_grad(a.weight), _grad(c.weight)) for a, c in pairs]
        self.bias_grads = [_side_by_side(_grad(a.bias), _grad(c.bias)) for a, c in pairs]
        # numpy views of the same memory: the hidden layers run in numpy (see _forward)
        self.np_weights = [w.numpy() for w in self.weights]
        self.np_weight_grads = [g.numpy() for g in self.weight_grads]
        self.np_bias_grads = [g.numpy() for g in self.bias_grads]
        self.hidden: dict[int, list[tuple[np.ndarray, torch.Tensor]]] = {}
        self.ones: dict[int, np.ndarray] = {}
        # The heads (a few outputs each) in numpy, where such thin products cost about half of
        # torch's call: views of the same memory, kept once (module attribute lookups cost too).
        heads = (model.actor_head, model.critic_head)
        self.head_weights = [head.weight.detach().numpy() for head in heads]
        self.head_biases = [head.bias.detach().numpy() for head in heads]
        self.head_weight_grads = [_grad(head.weight).numpy() for head in heads]
        self.head_bias_grads = [_grad(head.bias).numpy() for head in heads]
        self.gaussian = isinstance(model.distribution, DiagGaussian)
        if self.gaussian:
            self.log_std, self.log_std_grad = model.log_std.detach().numpy(), _grad(model.log_std).numpy()
        self.relu = actor.activation is torch.relu
        self.clip_epsilon = clip_epsilon
        self.vf_coef = vf_coef
        self.ent_coef = ent_coef

    # (no torch.no_grad(): every tensor here is a detached view or comes from numpy, so autograd
    # records nothing either way, and the context manager costs a few us per minibatch step)
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
        old_logprobs_np, advantages_np, returns_np = old_logprobs.numpy(), advantages.numpy(), returns.numpy()

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

        logratio = logprobs - old_logprobs_np
        ratio = np.exp(logratio)
        unclipped = ratio * advantages_np
        clipped = np.minimum(np.maximum(ratio, 1.0 - eps), 1.0 + eps) * advantages_np
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
        error = values - returns_np
        if old_values is None:
            value_loss = float_mean(error * error)
            d_values = error * np.float32(2.0 * self.vf_coef / n)
        else:
            old_values_np = old_values.numpy()
            delta = values - old_values_np
            clipped_error = old_values_np + np.minimum(np.maximum(delta, -eps), eps) - returns_np
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

    def _forward(self, obs: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Each hidden layer's input ([2, batch, in]: actor's, critic's; the first one the
        observations, [batch, in], which both read) and the last one's output; the actor's output
        ([batch, outputs]) and the critic's values ([batch]).

        The layers write into buffers kept per batch size (``_buffers``): at a minibatch of a
        hundred or so rows, fresh arrays on every step cost a noticeable share of it (issue #36).
        """
        x = obs.numpy()
        x_tensor = obs.expand(2, *obs.shape)  # both networks read the same observations (no copy)
        hidden = self._buffers(x.shape[0])
        inputs: list[np.ndarray] = []
        for weight, bias, (h, h_tensor) in zip(self.weights, self.biases, hidden, strict=False):
            inputs.append(x)
            # torch's batched product takes the transposed weights as they are (numpy's would copy)
            # and adds the bias in the same call
            torch.baddbmm(bias, x_tensor, weight.transpose(1, 2), out=h_tensor)
            if self.relu:
                np.maximum(h, 0.0, out=h)
            elif TANH_IN_NUMPY:  # numpy's AVX-512 tanh beats both torch forms (see numpy_tanh_is_avx512)
                np.tanh(h, out=h)
            elif h.size >= 2 * TANH_AS_SIGMOID_MIN:
                # tanh(u) = 2 sigmoid(2u) - 1 (same values up to ~1e-7): torch's CPU sigmoid is
                # vectorized, its tanh much less so, and on large layers this is the cheaper form.
                h_tensor.mul_(2.0).sigmoid_()
                torch.add(_MINUS_ONE, h_tensor, alpha=2.0, out=h_tensor)  # 2 s - 1 in one pass
            else:
                h_tensor.tanh_()
            x, x_tensor = h, h_tensor
        inputs.append(x)
        (actor_weight, critic_weight), (actor_bias, critic_bias) = self.head_weights, self.head_biases
        return inputs, x[0] @ actor_weight.T + actor_bias, (x[1] @ critic_weight.T)[:, 0] + critic_bias

    def _buffers(self, rows: int) -> list[tuple[np.ndarray, torch.Tensor]]:
        """The hidden layers' outputs ([2, rows, out] each, as arrays and as tensors on the same
        memory) and a row of ones (for sums over the batch as products), for batches of ``rows``
        rows, made once per batch size (a PPO update's minibatches all have one size, or two)."""
        hidden = self.hidden.get(rows)
        if hidden is None:
            if len(self.hidden) >= 4:  # (sizes seen once, e.g. a final partial minibatch, are not kept forever)
                self.hidden.clear()
                self.ones.clear()
            arrays = [np.empty((2, rows, w.shape[1]), np.float32) for w in self.np_weights]
            hidden = self.hidden[rows] = [(array, torch.from_numpy(array)) for array in arrays]
            self.ones[rows] = np.ones((1, rows), np.float32)
        return hidden

    def _backward(self, inputs: list[np.ndarray], d_out: np.ndarray, d_values: np.ndarray) -> None:
        """Write every weight and bias gradient, from the loss gradients at the actor's output
        and at the values ([batch, 1])."""
        last = inputs[-1]
        # Sums over the batch as products with a row of ones: numpy's reduction along the batch
        # axis of these thin arrays costs several times more.
        ones = self.ones[last.shape[1]]
        d = np.empty_like(last)
        for k, d_head in enumerate((d_out, d_values)):
            np.matmul(d_head.T, last[k], out=self.head_weight_grads[k])
            np.dot(ones[0], d_head, out=self.head_bias_grads[k])
            np.dot(d_head, self.head_weights[k], out=d[k])
        scratch = np.empty_like(last)
        for i in range(len(self.np_weights) - 1, -1, -1):
            # through the activation: its output is the next layer's input
            h = inputs[i + 1]
            if scratch.shape != h.shape:
                scratch = np.empty_like(h)
            if self.relu:
                np.greater(h, 0.0, out=scratch)
            else:  # tanh' = 1 - tanh^2
                np.multiply(h, h, out=scratch)
                np.subtract(1.0, scratch, out=scratch)
            np.multiply(d, scratch, out=d)
            x = inputs[i]
            if i == 0:  # the shared observations, [batch, in]
                np.dot(d[0].T, x, out=self.np_weight_grads[0][0])
                np.dot(d[1].T, x, out=self.np_weight_grads[0][1])
            else:
                np.matmul(d.transpose(0, 2, 1), x, out=self.np_weight_grads[i])
            np.matmul(ones, d, out=self.np_bias_grads[i][:, None, :])
            if i > 0:
                d = np.matmul(d, self.np_weights[i])


def _grad(param: torch.Tensor) -> torch.Tensor:
    """A parameter's gradient: FlatAdam points every ``.grad`` into its flat buffer before any loss runs."""
    assert param.grad is not None, "the parameters have no .grad: build FlatAdam on the model first"
    return param.grad


def _side_by_side(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``torch.stack([first, second])`` as a view, for tensors that lie one after the other in
    memory (as ``FlatAdam`` lays out ``clippo.fastpath.paired_parameters``); outside autograd."""
    first, second = first.detach(), second.detach()
    if not (
        first.is_contiguous()
        and second.is_contiguous()
        and first.shape == second.shape
        and second.data_ptr() == first.data_ptr() + first.numel() * first.element_size()
    ):
        raise ValueError(
            "AnalyticGradient needs each actor layer's parameters and gradients right before the "
            "critic's: build the optimizer with FlatAdam(clippo.fastpath.paired_parameters(model), ...)"
        )
    return first.as_strided((2, *first.shape), (first.numel(), *first.stride()))

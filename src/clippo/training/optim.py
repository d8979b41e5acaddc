"""Adam over one flat parameter vector.

The model's parameters are re-pointed to slices of a single contiguous tensor, and so are their
gradients. A whole Adam step, the global gradient-norm clip and zeroing the gradients then take a
handful of tensor operations instead of several per parameter: for the small MLPs of PPO that is
most of the optimizer's cost. (``torch.optim.Adam`` also imports ``torch._dynamo`` on first use,
three seconds of start-up on a small CPU.) The flat gradient is also the single buffer that
distributed training all-reduces.

The update is Adam as in Kingma & Ba (2015) and ``torch.optim.Adam`` (bias-corrected moments,
``eps`` added to the corrected root of the second moment); a test checks it against torch.
Where PyTorch has it, the step runs as one fused kernel (the one behind
``torch.optim.Adam(fused=True)``): one pass over the vector instead of seven.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn


class FlatAdam:
    """Adam on the parameters of ``params`` viewed as one vector."""

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[tuple[str, nn.Parameter]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        extra_slots: int = 0,
    ) -> None:
        """``params`` in the order they are laid out in the vector; given as (name, parameter)
        pairs, the saved state records the layout and loads into any other order by name.
        ``extra_slots`` reserves room after the gradient in ``exchange`` (the buffer that
        distributed training all-reduces) for scalars that travel with it."""
        items: list[Any] = list(params)  # parameters, or (name, parameter) pairs
        named = bool(items) and isinstance(items[0], tuple)
        self.names: list[str] | None = [name for name, _ in items] if named else None
        self.params: list[nn.Parameter] = [p for _, p in items] if named else items
        self.lr = lr
        self.betas = betas
        self.eps = eps
        first = self.params[0]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.exchange = torch.zeros(self.flat.numel() + extra_slots, dtype=self.flat.dtype, device=self.flat.device)
        self.grad = self.exchange[: self.flat.numel()]
        self.extra = self.exchange[self.flat.numel() :]
        offset = 0
        for p in self.params:
            n = p.numel()
            # Autograd accumulates into an existing .grad in place, so gradients land in self.grad.
            p.data = self.flat[offset : offset + n].view_as(p)
            p.grad = self.grad[offset : offset + n].view_as(p)
            offset += n
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.step_count = 0
        # The fused kernel's step counter lives in a tensor; it mirrors step_count.
        self._step_tensor = torch.zeros((), dtype=self.flat.dtype, device=self.flat.device)
        self.fused = _has_fused_adam(self.flat)
        #: the gradient as a numpy array (same memory) for float32 on the CPU, else None
        on_cpu = self.grad.device.type == "cpu" and self.grad.dtype == torch.float32
        self._grad_array = self.grad.numpy() if on_cpu else None
        assert self.flat.device == first.device

    def zero_grad(self) -> None:
        self.grad.zero_()

    def clip_grad_norm(self, max_norm: float | None) -> float:
        """Scale the gradient so its global L2 norm is at most ``max_norm`` (None: leave it);
        return the norm before (NaN or inf when the gradient is not finite)."""
        grad = self._grad_array
        # On the CPU in numpy (a float32 dot product; torch's norm where that overflows): once per
        # minibatch step, a third of torch's two calls at PPO's sizes (issue #36).
        norm = math.sqrt(float(np.dot(grad, grad))) if grad is not None else math.inf
        if not math.isfinite(norm):
            norm = torch.linalg.vector_norm(self.grad).item()
        if max_norm is not None:
            scale = max_norm / (norm + 1e-6)
            if scale < 1.0:
                if grad is not None:
                    np.multiply(grad, np.float32(scale), out=grad)
                else:
                    self.grad.mul_(scale)
        return norm

    def step(self) -> None:
        # (no torch.no_grad(): the flat vector and the moments are plain tensors outside autograd,
        # which the parameters only view, and the context manager costs a few us per step)
        beta1, beta2 = self.betas
        self.step_count += 1
        if self.fused:
            self._step_tensor.fill_(self.step_count)
            torch._fused_adam_(
                [self.flat],
                [self.grad],
                [self.exp_avg],
                [self.exp_avg_sq],
                [],
                [self._step_tensor],
                lr=self.lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        self.exp_avg.lerp_(self.grad, 1.0 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1.0 - beta2)
        bias_correction1 = 1.0 - beta1**self.step_count
        bias_correction2 = 1.0 - beta2**self.step_count
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg, denom, value=-self.lr / bias_correction1)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step_count,
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
        }
        if self.names is not None:
            state["names"] = list(self.names)
        return state

    def load_state_dict(self, state: dict[str, Any], saved_names: list[str] | None = None) -> None:
        """Restore a ``state_dict``; a state laid out in another order of the same named
        parameters (``state["names"]``, else ``saved_names``) is rearranged by name."""
        if state["exp_avg"].shape != self.exp_avg.shape:
            raise ValueError(
                f"optimizer state has {state['exp_avg'].numel()} values, the model has {self.exp_avg.numel()} "
                "parameters"
            )
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        saved_names = state.get("names", saved_names)
        if saved_names is not None and self.names is not None and list(saved_names) != self.names:
            exp_avg, exp_avg_sq = (self._rearranged(v, list(saved_names)) for v in (exp_avg, exp_avg_sq))
        self.step_count = int(state["step"])
        self.exp_avg.copy_(exp_avg)
        self.exp_avg_sq.copy_(exp_avg_sq)
        self.lr = float(state["lr"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.eps = float(state["eps"])

    def _rearranged(self, vector: torch.Tensor, saved_names: list[str]) -> torch.Tensor:
        """``vector``, laid out by ``saved_names``, in this optimizer's layout."""
        assert self.names is not None  # (load_state_dict checked: a layout by name)
        if sorted(saved_names) != sorted(self.names):
            raise ValueError(f"optimizer state is for parameters {saved_names}, the model has {self.names}")
        sizes = dict(zip(self.names, (p.numel() for p in self.params), strict=False))
        pieces = dict(zip(saved_names, vector.split([sizes[name] for name in saved_names]), strict=False))
        return torch.cat([pieces[name] for name in self.names])


def _has_fused_adam(flat: torch.Tensor) -> bool:
    """Whether this PyTorch build has the fused Adam kernel for ``flat``'s device and dtype."""
    if not hasattr(torch, "_fused_adam_"):
        return False
    try:  # a no-op step (lr 0) on scratch copies tells for sure
        scratch = [torch.zeros(2, dtype=flat.dtype, device=flat.device) for _ in range(4)]
        step = torch.ones((), dtype=flat.dtype, device=flat.device)
        torch._fused_adam_(
            [scratch[0]],
            [scratch[1]],
            [scratch[2]],
            [scratch[3]],
            [],
            [step],
            lr=0.0,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True

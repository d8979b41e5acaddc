"""Numeric precision of the networks' forward and backward passes: fp32, or bf16 mixed precision.

With ``bf16`` the encoders, recurrent cores and heads run under ``torch.autocast`` in bfloat16
(matrix products and convolutions in bf16, accumulated in fp32 by the kernels); the parameters,
Adam's state, the distributions' math, the loss reductions, advantages and every statistic stay
fp32, and the networks' outputs are returned as fp32. On a CPU this needs bf16 instructions
(AVX512-BF16 or AMX); on CUDA a GPU that supports bf16. Elsewhere ``bf16`` is refused in one line.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16")


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array on the CPU; half precisions, which numpy lacks, as float32."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor).numpy()


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles): without them bf16 is
    emulated and slower than fp32."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
        getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32); a one-line ValueError where
    the hardware cannot compute it natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bf16' is invalid on this GPU: it does not support bfloat16 (use fp32)")
    elif device.type == "cpu":
        if not cpu_supports_bf16():
            raise ValueError(
                "precision='bf16' is invalid on this CPU: it has neither AVX512-BF16 nor AMX, so bf16 would be "
                "emulated and slower than fp32 (use fp32)"
            )
    else:
        raise ValueError(f"precision='bf16' is invalid on device {device.type!r}: use cpu or cuda, or fp32")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """``torch.autocast`` in ``dtype`` on ``device``'s type, or a context that does nothing (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

"""Numeric precision of the networks' forward and backward passes: fp32, or bf16 mixed precision.

With ``bf16`` the encoders, recurrent cores and heads run under ``torch.autocast`` in bfloat16
(matrix products and convolutions in bf16, accumulated in fp32 by the kernels); the parameters,
Adam's state, the distributions' math, the loss reductions, advantages and every statistic stay
fp32, and the networks' outputs are returned as fp32. On a CPU this needs bf16 instructions
(AVX512-BF16 or AMX); on CUDA a GPU that supports bf16. Elsewhere ``bf16`` is refused in one line.

``auto`` picks per run: bf16 where the device computes it natively, fp32 elsewhere and wherever
the numpy fast path covers the agent (flat MLPs on a CPU, which it runs faster in fp32 than
torch runs them in bf16). A checkpoint keeps ``auto``, so it resolves again on the machine that
loads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "auto")


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


def device_supports_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (a CPU with AVX512-BF16 or AMX, a bf16 GPU)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_supports_bf16()


def resolve(precision: str, device: torch.device, fast_path_applies: bool = False) -> str:
    """``fp32`` or ``bf16``: ``precision`` itself, or what ``auto`` means on ``device`` (fp32 where
    ``fast_path_applies``, the numpy fast path covering the agent in fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if device_supports_bf16(device) and not fast_path_applies else "fp32"


def compute_dtype(
    precision: str, device: torch.device, fast_path_applies: bool = False, fallback: bool = False
) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32; ``auto`` as ``resolve``); a
    one-line ValueError where the hardware cannot compute bf16 natively, or with ``fallback`` (a
    loaded checkpoint's own precision, not one asked for now) fp32 there: its parameters are fp32,
    and refusing would leave a run that trained in bf16 unusable on other hardware."""
    if resolve(precision, device, fast_path_applies) == "fp32":
        return None
    if device_supports_bf16(device):
        return torch.bfloat16
    if fallback:
        return None
    if device.type == "cuda":
        raise ValueError("precision='bf16' is invalid on this GPU: it does not support bfloat16 (use fp32)")
    if device.type == "cpu":
        raise ValueError(
            "precision='bf16' is invalid on this CPU: it has neither AVX512-BF16 nor AMX, so bf16 would be "
            "emulated and slower than fp32 (use fp32)"
        )
    raise ValueError(f"precision='bf16' is invalid on device {device.type!r}: use cpu or cuda, or fp32")


def recorded(value: object) -> str | None:
    """The precision a checkpoint says its run trained in (``fp32`` or ``bf16``; None if it says none)."""
    return value if value in ("fp32", "bf16") else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """``torch.autocast`` in ``dtype`` on ``device``'s type, or a context that does nothing (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def fp32_passes(*models: Any) -> Iterator[None]:
    """The passes of ``models`` (ActorCritics) in fp32 for the duration, whatever their precision
    (the ONNX export: its graph holds the checkpoint's fp32 weights, checked against the policy in fp32)."""
    saved = [getattr(model, "compute_dtype", None) for model in models]
    for model in models:
        model.compute_dtype = None
    try:
        yield
    finally:
        for model, dtype in zip(models, saved, strict=True):
            model.compute_dtype = dtype

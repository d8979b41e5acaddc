"""Frozen numpy copies of the MLP actor and critic: what the fast path's rollout runs.

At PPO's MLP sizes (a few envs, 64-unit layers) a torch forward pass is mostly per-operation
dispatch overhead, about as long as stepping a fast vectorized env; the same products in numpy
cost a fraction of that. Measurements behind the choices here: docs/fast-path.md.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from clippo.networks.policy import ActorCritic


def numpy_tanh_is_avx512() -> bool:
    """Whether numpy runs float32 tanh in its AVX-512 loop (the CPU has AVX512_SKX and numpy dispatches
    to it). That loop beats torch's in-place sigmoid at every batch size; numpy's AVX2 loop is
    several times slower and loses to it (docs/fast-path.md)."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            features = importlib.import_module(module).__cpu_features__
        except (ImportError, AttributeError):
            continue
        return bool(features.get("AVX512_SKX"))
    return False


#: Whether this process's numpy runs float32 tanh in its AVX-512 loop (read once, at import).
NUMPY_TANH_AVX512 = numpy_tanh_is_avx512()
#: Batches with at least this many activations in the first hidden layer run tanh layers in the
#: sigmoid form (below, np.tanh's lower call overhead wins); never where np.tanh is the AVX-512 loop.
SIGMOID_MIN_ACTIVATIONS = math.inf if NUMPY_TANH_AVX512 else 1024
#: Batches of at least twice this many rows run in blocks (see ``NumpyMLP._in_blocks``).
BLOCK_ROWS = 2048


class NumpyMLP:
    """A frozen numpy copy of one MLP of the model (hidden layers and head): what the rollout runs.

    At PPO's sizes (a few envs, 64-unit layers) a torch forward pass is mostly per-operation
    dispatch overhead, about as long as stepping a fast vectorized env; the same matrix products
    in numpy cost a fraction of that. Nothing here is differentiated: the update recomputes what
    it needs with the torch model.

    Each layer is one matrix, its bias appended as the last row, and every array a layer reads
    carries a trailing column of ones: a layer is then a single matrix product (no separate bias
    addition). The hidden layers make the ones column of their own output: each has one more unit,
    with zero weights and a bias its activation turns into exactly 1.0 (relu(1); tanh(40) and
    sigmoid(40) round to 1 in float32), so every product writes a whole contiguous array, in
    buffers kept between calls, through ``np.dot`` (less call overhead than ``np.matmul``). Between
    env steps the number and kind of calls matter more than their arithmetic: the env's own code
    evicts each call's code paths from the CPU's caches (measurements: docs/fast-path.md).

    Where numpy's tanh is its slower AVX2 loop (see ``numpy_tanh_is_avx512``), tanh layers of more
    than a few rows run as ``tanh(u) = 2 sigmoid(2u) - 1``, with the factors and the offset folded
    into the weights on either side (computed in float64): the same function up to float32 rounding
    (~1e-7), and torch's vectorized in-place sigmoid then costs a third to a half of ``np.tanh``.
    """

    def __init__(self, body: nn.ModuleList, head: nn.Linear, activation) -> None:
        self.relu = activation is torch.relu
        # transposed so that each layer is ``[x, 1] @ [[w], [b]]`` on contiguous arrays
        self.layers = [
            (
                linear.weight.detach().cpu().numpy().T.astype(np.float64),
                linear.bias.detach().cpu().numpy().astype(np.float64),
            )
            for linear in [*body, head]
        ]
        self.forms: dict[bool, list[np.ndarray]] = {}  # weights per form (sigmoid or not), made on first use
        self.widths = [w.shape[1] + 1 for w, _ in self.layers[:-1]]  # hidden outputs with their ones column
        self.inputs = np.ones((0, 0), dtype=np.float32)
        self.hidden: list[tuple[np.ndarray, torch.Tensor]] = []
        self.plan: tuple | None = None  # (rows, workspace, layers, head, sigmoid form) of the last call

    def __call__(self, obs: np.ndarray, workspace: list | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The head's output for a batch of flat float32 inputs (written into ``out`` if given).

        ``workspace``: a list the layers' outputs are kept in, by the caller across calls of the
        same batch size (by default this copy's own). Large fresh arrays come from the OS as
        untouched pages, and faulting them in costs about as much as the products themselves.
        """
        if self.inputs.shape != (obs.shape[0], obs.shape[1] + 1):
            self.inputs = np.ones((obs.shape[0], obs.shape[1] + 1), dtype=np.float32)
        self.inputs[:, :-1] = obs
        return self.with_ones_column(self.inputs, workspace, out)

    def with_ones_column(
        self, inputs: np.ndarray, workspace: list | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``self(inputs[:, :-1])`` for contiguous inputs that already carry the trailing column of
        ones (as the rollout buffer stores observations), without copying them."""
        rows = inputs.shape[0]
        if rows >= 2 * BLOCK_ROWS:
            return self._in_blocks(inputs, workspace, out)
        return self._forward(*self._plan(rows, workspace), inputs, out)

    def for_rows(self, rows: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``with_ones_column(inputs, out=out)`` for batches of ``rows`` rows, with the plan looked up
        once: what the rollout calls once per step."""
        if rows >= 2 * BLOCK_ROWS:
            return lambda inputs, out: self._in_blocks(inputs, None, out)
        return functools.partial(self._forward, *self._plan(rows, None))

    def _plan(self, rows: int, workspace: list | None) -> tuple[list, np.ndarray, bool]:
        """The hidden layers (weights, output buffer), the head and the form for ``rows`` rows,
        kept from the last call: a rollout step's call then runs just the products and activations."""
        plan = self.plan
        if plan is None or plan[0] != rows or plan[1] is not workspace:
            # The sigmoid form pays a few microseconds of torch call overhead per layer: below a
            # thousand or so activations per layer np.tanh is the faster one.
            sigmoid_form = (
                not self.relu and len(self.layers) > 1 and rows * self.layers[0][0].shape[1] >= SIGMOID_MIN_ACTIVATIONS
            )
            weights = self._weights(sigmoid_form)
            hidden = self._hidden(rows, self.hidden if workspace is None else workspace)
            layers = [(weight, h, h_tensor) for weight, (h, h_tensor) in zip(weights, hidden, strict=False)]
            plan = self.plan = (rows, workspace, layers, weights[-1], sigmoid_form)
        return plan[2:]

    def _forward(
        self, layers: list, head: np.ndarray, sigmoid_form: bool, x: np.ndarray, out: np.ndarray | None
    ) -> np.ndarray:
        for weight, h, h_tensor in layers:
            np.dot(x, weight, out=h)
            if self.relu:
                np.maximum(h, 0.0, out=h)
            elif sigmoid_form:
                h_tensor.sigmoid_()  # in place, on the array's memory
            else:
                np.tanh(h, out=h)
            x = h
        return np.dot(x, head, out=out)

    def _in_blocks(self, inputs: np.ndarray, workspace: list | None, out: np.ndarray | None) -> np.ndarray:
        """A large batch (the critic on a whole rollout) in blocks of about ``BLOCK_ROWS`` rows, all
        of one size but the last: each layer's output then stays in the CPU's L2 cache for the next
        layer (docs/fast-path.md)."""
        rows = inputs.shape[0]
        size = -(-rows // (rows // BLOCK_ROWS))
        layers, head, sigmoid_form = self._plan(size, workspace)
        if out is None:
            out = np.empty((rows, head.shape[1]), dtype=np.float32)
        for start in range(0, rows, size):
            n = min(size, rows - start)
            block_layers = layers if n == size else [(weight, h[:n], h_tensor[:n]) for weight, h, h_tensor in layers]
            self._forward(block_layers, head, sigmoid_form, inputs[start : start + n], out[start : start + n])
        return out

    def _weights(self, sigmoid_form: bool) -> list[np.ndarray]:
        """The layers' float32 matrices ``[[w, 0], [b, c]]`` of one form, made once per copy."""
        if sigmoid_form not in self.forms:
            layers = self.layers
            if sigmoid_form:
                layers = []
                sigmoid_input = False  # whether the layer's input is a = (h + 1) / 2 instead of h = tanh(u)
                for i, (w, b) in enumerate(self.layers):
                    if sigmoid_input:  # h @ w + b with h = 2a - 1
                        w, b = 2.0 * w, b - w.sum(axis=0)
                    sigmoid_input = i < len(self.layers) - 1
                    if sigmoid_input:  # sigmoid(2u) gives the next layer's a
                        w, b = 2.0 * w, 2.0 * b
                    layers.append((w, b))
            one = 1.0 if self.relu else 40.0  # activation(one) == 1.0 exactly in float32
            matrices = [_with_bias_row(w, b, ones_unit=one) for w, b in layers[:-1]]
            self.forms[sigmoid_form] = [*matrices, _with_bias_row(*layers[-1])]
        return self.forms[sigmoid_form]

    def _hidden(self, rows: int, workspace: list) -> list[tuple[np.ndarray, torch.Tensor]]:
        """Each hidden layer's output (with its ones column) for ``rows`` rows, made once per batch size."""
        if len(workspace) != len(self.widths) or (workspace and workspace[0][0].shape != (rows, self.widths[0])):
            arrays = [np.empty((rows, width), dtype=np.float32) for width in self.widths]
            workspace[:] = [(array, torch.from_numpy(array)) for array in arrays]
        return workspace


def _with_bias_row(weight: np.ndarray, bias: np.ndarray, ones_unit: float | None = None) -> np.ndarray:
    """``[[weight], [bias]]`` as a contiguous float32 matrix: the layer for inputs with a ones column;
    with ``ones_unit``, one more output column ``[0, ..., 0, ones_unit]``."""
    matrix = np.vstack([weight, bias])
    if ones_unit is not None:
        extra = np.zeros((matrix.shape[0], 1))
        extra[-1, 0] = ones_unit
        matrix = np.hstack([matrix, extra])
    return np.ascontiguousarray(matrix, dtype=np.float32)


class NumpyActor(NumpyMLP):
    """The actor as numpy arrays: what the rollout acts with. Calling it gives logits or Gaussian
    means; ``distribution.sample_numpy(params, noise, std)`` turns them into actions."""

    def __init__(self, model: ActorCritic) -> None:
        encoder = model.actor_features
        super().__init__(encoder.layers, model.actor_head, encoder.activation)
        log_std = getattr(model, "log_std", None)
        self.std = None if log_std is None else np.exp(log_std.detach().cpu().numpy())


def numpy_critic(model: ActorCritic) -> NumpyMLP:
    """A frozen numpy copy of the critic's current weights (output shape [batch, 1])."""
    encoder = model.critic_features
    return NumpyMLP(encoder.layers, model.critic_head, encoder.activation)

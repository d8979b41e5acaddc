"""The actor-critic: an MLP actor (logits or Gaussian mean) and an MLP critic (one value)."""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from clippo.distributions import ActionDistribution, DiagGaussian, make_distribution

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def observation_size(space: spaces.Space) -> int:
    """Width of the flat network input for an observation space; a clear error if unsupported."""
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)  # one-hot encoded
    raise ValueError(
        f"observation space {space} ({type(space).__name__}) is not supported: clippo handles Box and "
        "Discrete observations (wrap others with gymnasium.wrappers.FlattenObservation)"
    )


def layer(in_features: int, out_features: int, gain: float) -> nn.Linear:
    """A linear layer with orthogonal weights of the given gain and zero bias (PPO's usual init)."""
    linear = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


def mlp_body(in_features: int, hidden_sizes: list[int]) -> nn.ModuleList:
    """The hidden layers of an MLP, orthogonal init with gain sqrt(2); see ``run_body``."""
    layers = nn.ModuleList()
    for width in hidden_sizes:
        layers.append(layer(in_features, width, math.sqrt(2)))
        in_features = width
    return layers


def run_body(x: torch.Tensor, layers: nn.ModuleList, activation) -> torch.Tensor:
    """``activation(linear(x))`` through each hidden layer.

    The layers are applied as functions rather than called as modules: a module call costs a few
    microseconds of Python, as much as the matrix product itself at PPO's sizes.
    """
    for linear in layers:
        x = activation(F.linear(x, linear.weight, linear.bias))
    return x


class ActorCritic(nn.Module):
    """Actor and critic, either with a shared trunk or as two separate MLPs.

    Heads: policy with gain 0.01 (near-uniform initial policy), value with gain 1.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        hidden_sizes: list[int],
        activation: str = "tanh",
        network: str = "separate",
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.obs_size = observation_size(observation_space)
        self.distribution: ActionDistribution = make_distribution(action_space)
        self.shared = network == "shared"
        self.activation = ACTIVATIONS[activation]
        width = hidden_sizes[-1]
        if self.shared:
            self.trunk = mlp_body(self.obs_size, hidden_sizes)
        else:
            self.actor_body = mlp_body(self.obs_size, hidden_sizes)
            self.critic_body = mlp_body(self.obs_size, hidden_sizes)
        self.actor_head = layer(width, self.distribution.num_outputs, 0.01)
        self.critic_head = layer(width, 1, 1.0)
        if isinstance(self.distribution, DiagGaussian):
            self.log_std = nn.Parameter(torch.full((self.distribution.num_outputs,), float(init_log_std)))
            self.distribution.log_std = self.log_std

    def paired_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters, each hidden layer of the critic right after the same (same-shaped)
        layer of the actor: the order ``FlatAdam`` lays them out in one vector, so that both
        networks' layer ``i`` is one ``[2, out, in]`` block that ``clippo.gradients`` runs as a
        single batched product."""
        named = dict(self.named_parameters())
        if self.shared:
            return list(named.items())
        order = []
        for i in range(len(self.actor_body)):
            for kind in ("weight", "bias"):
                order += [f"actor_body.{i}.{kind}", f"critic_body.{i}.{kind}"]
        order += [name for name in named if name not in order]
        return [(name, named[name]) for name in order]

    def preprocess(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Flat float32 network input for a batch of (already normalized) observations, as a
        tensor on the model's device (``numpy_input`` does the work)."""
        if isinstance(obs, torch.Tensor):
            obs = obs.cpu().numpy()
        return torch.from_numpy(self.numpy_input(np.asarray(obs))).to(self.actor_head.bias.device)

    def numpy_input(self, obs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The flat float32 network input as a numpy array: one-hot for Discrete observations.
        Written into ``out`` (``[batch, obs_size]``, any strides) if given, and returned."""
        if out is not None and obs.shape == out.shape:  # flat observations: the rollout's per-step case
            out[...] = obs  # (the assignment casts to float32)
            return out
        if isinstance(self.observation_space, spaces.Discrete):
            inputs = np.eye(self.obs_size, dtype=np.float32)[obs.astype(np.int64) - int(self.observation_space.start)]
        else:
            inputs = obs.reshape(obs.shape[0], self.obs_size)
        if out is not None:
            out[...] = inputs
            return out
        return np.ascontiguousarray(inputs, dtype=np.float32)

    def numpy_actor(self) -> NumpyActor:
        """A frozen numpy copy of the actor's current weights, for picking actions in the rollout."""
        return NumpyActor(self)

    def numpy_critic(self) -> NumpyMLP:
        """A frozen numpy copy of the critic's current weights (output shape [batch, 1])."""
        return NumpyMLP(self.trunk if self.shared else self.critic_body, self.critic_head, self.activation)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distribution parameters and values (shape [batch]) for a batch of network inputs."""
        if self.shared:
            hidden = run_body(obs, self.trunk, self.activation)
            return self._actor_out(hidden), self._critic_out(hidden)
        return self.actor(obs), self.value(obs)

    def actor(self, obs: torch.Tensor) -> torch.Tensor:
        """The actor's output alone: logits, or the Gaussian mean."""
        body = self.trunk if self.shared else self.actor_body
        return self._actor_out(run_body(obs, body, self.activation))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """The critic's values alone (shape [batch])."""
        body = self.trunk if self.shared else self.critic_body
        return self._critic_out(run_body(obs, body, self.activation))

    def _actor_out(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.actor_head.weight, self.actor_head.bias)

    def _critic_out(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.critic_head.weight, self.critic_head.bias).squeeze(-1)

    def act(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions of the current policy and their log-probabilities.

        ``noise`` comes from ``self.distribution.noise``; None acts deterministically (the mode).
        Acting needs only the actor: the rollout evaluates the critic once on the whole batch.
        """
        return self.distribution.sample_with_log_prob(self.actor(obs), noise)

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor, entropy_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of stored actions under the current policy, entropies and values.

        ``entropy_grad=False`` computes the entropy outside the autograd graph (for logging only).
        """
        params, values = self(obs)
        if entropy_grad:
            logprobs, entropy = self.distribution.log_prob_and_entropy(params, actions)
        else:
            logprobs = self.distribution.log_prob(params, actions)
            with torch.no_grad():
                entropy = self.distribution.entropy(params)
        return logprobs, entropy, values


def numpy_tanh_is_avx512() -> bool:
    """Whether numpy runs float32 tanh in its AVX-512 loop (the CPU has AVX512_SKX and numpy dispatches
    to it). That loop beats torch's in-place sigmoid at every batch size (2064 x 65: 20 vs 27 us;
    64 x 65: 0.9 vs 1.4 us); numpy's AVX2 loop is 5-6x slower (115 us) and loses to it."""
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
    evicts each call's code paths from the CPU's caches (the actor for 64 CartPole envs, timed
    between env steps, alternating: 37-39 us per call this way, 47-50 us writing into the ``x``
    part of ``[x, 1]`` arrays with ``np.matmul``).

    Where numpy's tanh is its slower AVX2 loop (see ``numpy_tanh_is_avx512``), tanh layers of more
    than a few rows run as ``tanh(u) = 2 sigmoid(2u) - 1``, with the factors and the offset folded
    into the weights on either side (computed in float64): the same function up to float32 rounding
    (~1e-7), and torch's vectorized in-place sigmoid then costs a third to a half of ``np.tanh``.
    """

    def __init__(self, body: nn.ModuleList, head: nn.Linear, activation) -> None:
        self.relu = activation is torch.relu
        # transposed so that each layer is ``[x, 1] @ [[w], [b]]`` on contiguous arrays
        self.layers = [
            (linear.weight.detach().cpu().numpy().T.astype(np.float64), linear.bias.detach().cpu().numpy().astype(np.float64))
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

    def with_ones_column(self, inputs: np.ndarray, workspace: list | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """``self(inputs[:, :-1])`` for contiguous inputs that already carry the trailing column of
        ones (as the rollout buffer stores observations), without copying them."""
        rows = inputs.shape[0]
        if rows >= 2 * BLOCK_ROWS:
            return self._in_blocks(inputs, workspace, out)
        return self._forward(*self._plan(rows, workspace), inputs, out)

    def for_rows(self, rows: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """``with_ones_column(inputs, out=out)`` for batches of ``rows`` rows, with the plan looked up
        once: what the rollout calls once per step (~1 us less per call)."""
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
            sigmoid_form = not self.relu and len(self.layers) > 1 and rows * self.layers[0][0].shape[1] >= SIGMOID_MIN_ACTIVATIONS
            weights = self._weights(sigmoid_form)
            hidden = self._hidden(rows, self.hidden if workspace is None else workspace)
            layers = [(weight, h, h_tensor) for weight, (h, h_tensor) in zip(weights, hidden)]
            plan = self.plan = (rows, workspace, layers, weights[-1], sigmoid_form)
        return plan[2:]

    def _forward(self, layers: list, head: np.ndarray, sigmoid_form: bool, x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
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
        layer (8256 rows of the 64-64 critic: 3.35 against 3.62 ms in one pass)."""
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
            self.forms[sigmoid_form] = matrices + [_with_bias_row(*layers[-1])]
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
        super().__init__(model.trunk if model.shared else model.actor_body, model.actor_head, model.activation)
        log_std = getattr(model, "log_std", None)
        self.std = None if log_std is None else np.exp(log_std.detach().cpu().numpy())

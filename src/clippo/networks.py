"""The actor-critic: an MLP actor (logits or Gaussian mean) and an MLP critic (one value)."""

from __future__ import annotations

import math

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

    def numpy_input(self, obs: np.ndarray) -> np.ndarray:
        """The flat float32 network input as a numpy array: one-hot for Discrete observations."""
        if isinstance(self.observation_space, spaces.Discrete):
            return np.eye(self.obs_size, dtype=np.float32)[obs.astype(np.int64) - int(self.observation_space.start)]
        return np.ascontiguousarray(obs.reshape(obs.shape[0], self.obs_size), dtype=np.float32)

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


#: Batches with at least this many activations in the first hidden layer run tanh layers in the
#: sigmoid form (below, np.tanh's lower call overhead wins).
SIGMOID_MIN_ACTIVATIONS = 1024


class NumpyMLP:
    """A frozen numpy copy of one MLP of the model (hidden layers and head): what the rollout runs.

    At PPO's sizes (a few envs, 64-unit layers) a torch forward pass is mostly per-operation
    dispatch overhead, about as long as stepping a fast vectorized env; the same matrix products
    in numpy cost a fraction of that. Nothing here is differentiated: the update recomputes what
    it needs with the torch model.

    Each layer is one matrix, its bias appended as the last row, and every array a layer reads
    carries a trailing column of ones: a layer is then a single matrix product (no separate bias
    addition), written into buffers kept between calls. Between env steps the number of calls
    matters more than their arithmetic: the env's own code evicts each call's code paths from the
    CPU's caches (the actor for 64 CartPole envs, timed between env steps: 45-47 us per call this
    way, 54-61 us with a product and an addition per layer; back to back 29-32 us against 37-40 us).

    On batches of more than a few rows, tanh layers run as ``tanh(u) = 2 sigmoid(2u) - 1``, with the
    factors and the offset folded into the weights on either side (computed in float64): the same
    function up to float32 rounding (~1e-7), and torch's vectorized in-place sigmoid costs a third
    to a half of ``np.tanh`` here.
    """

    def __init__(self, body: nn.ModuleList, head: nn.Linear, activation) -> None:
        self.relu = activation is torch.relu
        # transposed so that each layer is ``[x, 1] @ [[w], [b]]`` on contiguous arrays
        plain = [
            (linear.weight.detach().cpu().double().numpy().T, linear.bias.detach().cpu().double().numpy())
            for linear in [*body, head]
        ]
        self.plain = [_with_bias_row(w, b) for w, b in plain]
        self.folded = self.plain  # the weights of the sigmoid form (tanh networks only)
        if not self.relu:
            self.folded = []
            sigmoid_input = False  # whether the layer's input is a = (h + 1) / 2 instead of h = tanh(u)
            for i, (w, b) in enumerate(plain):
                if sigmoid_input:  # h @ w + b with h = 2a - 1
                    w, b = 2.0 * w, b - w.sum(axis=0)
                sigmoid_input = i < len(body)
                if sigmoid_input:  # sigmoid(2u) gives the next layer's a
                    w, b = 2.0 * w, 2.0 * b
                self.folded.append(_with_bias_row(w, b))
        self.buffers: list[_LayerInput] = []

    def __call__(self, obs: np.ndarray, workspace: list | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The head's output for a batch of flat float32 inputs (written into ``out`` if given).

        ``workspace``: a list the layers' inputs are kept in, by the caller across calls of the
        same batch size (by default this copy's own). Large fresh arrays come from the OS as
        untouched pages, and faulting them in costs about as much as the products themselves.
        """
        layers = self._buffers(obs.shape[0], self.buffers if workspace is None else workspace)
        layers[0].x[:] = obs
        return self.with_ones_column(layers[0].array, layers, out)

    def with_ones_column(self, inputs: np.ndarray, workspace: list | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """``self(inputs[:, :-1])`` for inputs that already carry the trailing column of ones
        (as the rollout buffer stores observations), without copying them."""
        rows = inputs.shape[0]
        # The sigmoid form pays a few microseconds of torch call overhead per layer: below a
        # thousand or so activations per layer np.tanh is the faster one.
        sigmoid_form = not self.relu and len(self.plain) > 1 and rows * self.plain[0].shape[1] >= SIGMOID_MIN_ACTIVATIONS
        weights = self.folded if sigmoid_form else self.plain
        layers = self._buffers(rows, self.buffers if workspace is None else workspace)
        inputs_of = [inputs] + [layer.array for layer in layers[1:]]
        for weight, layer_input, next_layer in zip(weights, inputs_of, layers[1:]):
            pre = next_layer.x
            np.matmul(layer_input, weight, out=pre)
            if self.relu:
                np.maximum(pre, 0.0, out=pre)
            elif sigmoid_form:
                next_layer.x_tensor.sigmoid_()  # in place, on the array's memory
            else:
                np.tanh(pre, out=pre)
        return np.matmul(inputs_of[-1], weights[-1], out=out)

    def _buffers(self, rows: int, workspace: list) -> list[_LayerInput]:
        """Each layer's input for ``rows`` rows (made once per batch size)."""
        if len(workspace) != len(self.plain) or workspace[0].array.shape != (rows, self.plain[0].shape[0]):
            workspace[:] = [_LayerInput(rows, weight.shape[0] - 1) for weight in self.plain]
        return workspace


class _LayerInput:
    """A layer's input array, ``[x, 1]``, with views of its ``x`` part made once (slicing an
    array or a tensor costs a microsecond or more each time)."""

    def __init__(self, rows: int, width: int) -> None:
        self.array = np.empty((rows, width + 1), dtype=np.float32)
        self.array[:, -1] = 1.0
        self.x = self.array[:, :-1]
        self.x_tensor = torch.from_numpy(self.array)[:, :-1]


def _with_bias_row(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``[[weight], [bias]]`` as a contiguous float32 matrix: the layer for inputs with a ones column."""
    return np.ascontiguousarray(np.vstack([weight, bias]), dtype=np.float32)


class NumpyActor(NumpyMLP):
    """The actor as numpy arrays: what the rollout acts with. Calling it gives logits or Gaussian
    means; ``distribution.sample_numpy(params, noise, std)`` turns them into actions."""

    def __init__(self, model: ActorCritic) -> None:
        super().__init__(model.trunk if model.shared else model.actor_body, model.actor_head, model.activation)
        log_std = getattr(model, "log_std", None)
        self.std = None if log_std is None else np.exp(log_std.detach().cpu().numpy())

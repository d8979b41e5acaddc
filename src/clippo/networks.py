"""The actor-critic: an MLP actor (logits or Gaussian mean) and an MLP critic (one value)."""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from clippo.distributions import ActionDistribution, DiagGaussian, make_distribution

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


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


def mlp_body(in_features: int, hidden_sizes: list[int], activation: str) -> nn.Sequential:
    """Hidden layers only: Linear + activation, orthogonal init with gain sqrt(2)."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [layer(in_features, width, math.sqrt(2)), ACTIVATIONS[activation]()]
        in_features = width
    return nn.Sequential(*layers)


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
        width = hidden_sizes[-1]
        if self.shared:
            self.trunk = mlp_body(self.obs_size, hidden_sizes, activation)
        else:
            self.actor_body = mlp_body(self.obs_size, hidden_sizes, activation)
            self.critic_body = mlp_body(self.obs_size, hidden_sizes, activation)
        self.actor_head = layer(width, self.distribution.num_outputs, 0.01)
        self.critic_head = layer(width, 1, 1.0)
        if isinstance(self.distribution, DiagGaussian):
            self.log_std = nn.Parameter(torch.full((self.distribution.num_outputs,), float(init_log_std)))
            self.distribution.log_std = self.log_std

    def preprocess(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Flat float32 network input for a batch of (already normalized) observations."""
        obs = torch.as_tensor(obs, device=self.critic_head.weight.device)
        if isinstance(self.observation_space, spaces.Discrete):
            return nn.functional.one_hot(obs.long() - int(self.observation_space.start), self.obs_size).float()
        return obs.reshape(obs.shape[0], self.obs_size).float()

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distribution parameters and values (shape [batch]) for a batch of network inputs."""
        if self.shared:
            hidden = self.trunk(obs)
            return self.actor_head(hidden), self.critic_head(hidden).squeeze(-1)
        return self.actor_head(self.actor_body(obs)), self.critic_head(self.critic_body(obs)).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self.critic_head(self.trunk(obs)).squeeze(-1)
        return self.critic_head(self.critic_body(obs)).squeeze(-1)

    def act(
        self, obs: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample actions from the current policy: (actions, log-probabilities, values)."""
        params, values = self(obs)
        actions = self.distribution.sample(params, deterministic, generator)
        return actions, self.distribution.log_prob(params, actions), values

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of stored actions under the current policy, entropies and values."""
        params, values = self(obs)
        return self.distribution.log_prob(params, actions), self.distribution.entropy(params), values

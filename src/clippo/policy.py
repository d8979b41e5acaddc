"""The actor-critic: observation encoder(s), shared or separate, then an action head and a value head.

The actor outputs the action distribution's parameters (one logit per action, or the Gaussian
mean; for Tuple/Dict actions, each part's side by side); the critic one value. Given masks of
valid actions, the actor's logits of invalid ones are replaced by ``MASKED_LOGIT``
(``ActionDistribution.mask``) before anything reads them. Heads are orthogonally initialized: the policy head with gain 0.01
(a near-uniform initial policy), the value head with gain 1.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from clippo.distributions import ActionDistribution, make_distribution
from clippo.encoders import MLPEncoder, layer, make_encoder
from clippo.observations import Obs


class ActorCritic(nn.Module):
    """Encoder(s) plus heads. ``network="shared"``: one encoder feeds both heads (``encoder``);
    ``"separate"``: the actor and the critic each have their own (``actor_encoder``,
    ``critic_encoder``)."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        hidden_sizes: list[int] | None = None,
        activation: str = "tanh",
        network: str = "separate",
        init_log_std: float = 0.0,
        encoder: Any = "auto",
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.distribution: ActionDistribution = make_distribution(action_space)
        self.shared = network == "shared"

        def build(copy_of=None) -> nn.Module:
            return make_encoder(observation_space, encoder, hidden_sizes, activation, encoder_kwargs, copy_of)

        if self.shared:
            self.encoder = build()
            width = self.encoder.output_size
        else:
            self.actor_encoder = build()
            self.critic_encoder = build(copy_of=self.actor_encoder)
            width = self.actor_encoder.output_size
        self.actor_head = layer(width, self.distribution.num_outputs, 0.01)
        self.critic_head = layer(self.critic_features.output_size, 1, 1.0)
        if self.distribution.gaussian_size:  # one vector for every Gaussian part (Box actions)
            self.log_std = nn.Parameter(torch.full((self.distribution.gaussian_size,), float(init_log_std)))
            self.distribution.bind_log_std(self.log_std)

    @property
    def actor_features(self) -> nn.Module:
        """The encoder the actor head reads."""
        return self.encoder if self.shared else self.actor_encoder

    @property
    def critic_features(self) -> nn.Module:
        """The encoder the critic head reads."""
        return self.encoder if self.shared else self.critic_encoder

    @property
    def is_mlp(self) -> bool:
        """Whether the encoders are the built-in MLP (what ``clippo.fastpath`` can copy)."""
        return isinstance(self.actor_features, MLPEncoder) and isinstance(self.critic_features, MLPEncoder)

    def paired_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters in the order ``FlatAdam`` lays them out in one vector. With two MLP
        encoders, each critic layer comes right after the same-shaped actor layer, so that both
        layers ``i`` form one ``[2, out, in]`` block (see ``clippo.fastpath.gradient``)."""
        named = dict(self.named_parameters())
        if self.shared or not self.is_mlp:
            return list(named.items())
        order = []
        for i in range(len(self.actor_encoder.layers)):
            for kind in ("weight", "bias"):
                order += [f"actor_encoder.layers.{i}.{kind}", f"critic_encoder.layers.{i}.{kind}"]
        order += [name for name in named if name not in order]
        return [(name, named[name]) for name in order]

    def forward(self, obs: Obs, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Distribution parameters (masked by ``masks``, if given) and values (shape [batch]) for
        an observation batch."""
        if self.shared:
            features = self.encoder(obs)
            return self._masked(self._actor_out(features), masks), self._critic_out(features)
        return self.actor(obs, masks), self.value(obs)

    def actor(self, obs: Obs, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The actor's output alone: logits (invalid actions' masked where ``masks`` is given),
        or the Gaussian mean."""
        return self._masked(self._actor_out(self.actor_features(obs)), masks)

    def _masked(self, params: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        return params if masks is None else self.distribution.mask(params, masks)

    def value(self, obs: Obs) -> torch.Tensor:
        """The critic's values alone (shape [batch])."""
        return self._critic_out(self.critic_features(obs))

    def _actor_out(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.actor_head.weight, self.actor_head.bias)

    def _critic_out(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.critic_head.weight, self.critic_head.bias).squeeze(-1)

    def act(
        self, obs: Obs, noise: torch.Tensor | None = None, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions of the current policy and their log-probabilities.

        ``noise`` comes from ``self.distribution.noise``; None acts deterministically (the mode).
        ``masks``: booleans ``[batch, num_outputs]``, False for invalid actions (never chosen).
        """
        return self.distribution.sample_with_log_prob(self.actor(obs, masks), noise)

    def evaluate_actions(
        self, obs: Obs, actions: torch.Tensor, entropy_grad: bool = True, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of stored actions under the current policy, entropies and values;
        with ``masks`` (those the actions were chosen under), of the masked policy.

        ``entropy_grad=False`` computes the entropy outside the autograd graph (for logging only).
        """
        params, values = self(obs, masks)
        if entropy_grad:
            logprobs, entropy = self.distribution.log_prob_and_entropy(params, actions)
        else:
            logprobs = self.distribution.log_prob(params, actions)
            with torch.no_grad():
                entropy = self.distribution.entropy(params)
        return logprobs, entropy, values


#: How version-1 checkpoints (MLP-only clippo) named the encoder parameters, and the names now.
_V1_PREFIXES = {"trunk.": "encoder.layers.", "actor_body.": "actor_encoder.layers.", "critic_body.": "critic_encoder.layers."}


def upgrade_v1_names(names: list[str]) -> list[str]:
    """Parameter names of a version-1 checkpoint in today's naming."""
    out = []
    for name in names:
        for old, new in _V1_PREFIXES.items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        out.append(name)
    return out

"""The actor-critic: observation encoder(s), shared or separate, an optional recurrent core after
each encoder (``clippo.networks.recurrent``), then an action head and a value head, each with optional
hidden layers of its own (``head_sizes``: SB3's ``net_arch=dict(pi=..., vf=...)`` after a shared
CNN).

The actor outputs the action distribution's parameters (one logit per action, or the Gaussian
mean; for Tuple/Dict actions, each part's side by side); the critic one value. Given masks of
valid actions, the actor's logits of invalid ones are replaced by ``MASKED_LOGIT``
(``ActionDistribution.mask``) before anything reads them. Heads are orthogonally initialized: the policy head with gain 0.01
(a near-uniform initial policy), the value head with gain 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from clippo.core.observations import Obs, map_obs
from clippo.networks.distributions import ActionDistribution, make_distribution
from clippo.networks.encoders import ACTIVATIONS, MLPEncoder, layer, make_encoder, mlp_layers, run_layers
from clippo.networks.recurrent import RecurrentCore, episode_pieces


@dataclass
class Sequences:
    """What replays stored ``[length, num_seq]`` sequences through a recurrent policy: where
    episodes start (bool), each sequence's state before its step 0 (``[num_seq, state_size]``),
    and which steps are transitions (bool; the loss reads only those)."""

    starts: torch.Tensor
    initial_state: torch.Tensor
    valid: torch.Tensor


#: the activations the fast path's numpy MLP and hand-written gradient compute (``clippo.fastpath``)
FAST_PATH_ACTIVATIONS = ("tanh", "relu")


class ActorCritic(nn.Module):
    """Encoder(s) plus heads. ``network="shared"``: one encoder feeds both heads (``encoder``);
    ``"separate"``: the actor and the critic each have their own (``actor_encoder``,
    ``critic_encoder``). With ``recurrent`` (``"lstm"`` or ``"gru"``), a recurrent core of
    ``recurrent_hidden_size`` units follows each encoder (``core``, or ``actor_core`` and
    ``critic_core``); the policy then acts with ``step`` and a carried state. ``head_sizes``:
    hidden layers (``activation``) in each head, ``actor_hidden`` and ``critic_hidden``, between
    the features and the output layers; the actor's last one is what gSDE's noise reads."""

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
        recurrent: str | None = None,
        recurrent_hidden_size: int = 128,
        sde_sample_freq: int | None = None,
        orthogonal_init: bool = True,
        head_sizes: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.distribution: ActionDistribution = make_distribution(action_space, sde_sample_freq)
        self.shared = network == "shared"
        self.recurrent = recurrent

        def build(copy_of=None) -> nn.Module:
            return make_encoder(observation_space, encoder, hidden_sizes, activation, encoder_kwargs, copy_of)

        def core(width: int) -> RecurrentCore:
            return RecurrentCore(width, recurrent_hidden_size, recurrent)

        if self.shared:
            self.encoder = build()
            width = critic_width = self.encoder.output_size
            if recurrent:
                self.core = core(width)
                width = critic_width = recurrent_hidden_size
        else:
            self.actor_encoder = build()
            self.critic_encoder = build(copy_of=self.actor_encoder)
            width, critic_width = self.actor_encoder.output_size, self.critic_encoder.output_size
            if recurrent:
                self.actor_core, self.critic_core = core(width), core(critic_width)
                width = critic_width = recurrent_hidden_size
        self.head_sizes = list(head_sizes or [])
        self.head_activation = ACTIVATIONS[activation]
        self.actor_hidden = mlp_layers(width, self.head_sizes)
        self.critic_hidden = mlp_layers(critic_width, self.head_sizes)
        if self.head_sizes:
            width = critic_width = self.head_sizes[-1]
        self.actor_head = layer(width, self.distribution.num_outputs, 0.01)
        self.distribution.bind_features(width)
        self.critic_head = layer(critic_width, 1, 1.0)
        if self.distribution.gaussian_size:  # one vector for every Gaussian part (Box actions)
            self.log_std = nn.Parameter(torch.full((self.distribution.gaussian_size,), float(init_log_std)))
            self.distribution.bind_log_std(self.log_std)
        if not orthogonal_init:
            self._default_init()

    def _default_init(self) -> None:
        """PyTorch's default init (``reset_parameters``) instead of the orthogonal one, for the heads
        and clippo's own encoders (a user encoder keeps the init it chose): RL-Zoo's
        ``ortho_init=False``."""
        own = [self.actor_head, self.critic_head, self.actor_hidden, self.critic_hidden]
        own += [
            m for m in (self.actor_features, self.critic_features) if type(m).__module__ == "clippo.networks.encoders"
        ]
        for part in own:
            for module in part.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    module.reset_parameters()

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
        """Whether the encoders are the built-in MLP with nothing after them (no recurrent core, no
        head layers) and an activation of ``FAST_PATH_ACTIVATIONS``: what ``clippo.fastpath`` can copy."""
        return (
            not self.recurrent
            and not self.head_sizes
            and all(
                isinstance(encoder, MLPEncoder) and encoder.activation_name in FAST_PATH_ACTIVATIONS
                for encoder in (self.actor_features, self.critic_features)
            )
        )

    @property
    def state_size(self) -> int:
        """Width of the recurrent state (the actor's core, then the critic's); 0 without memory."""
        if not self.recurrent:
            return 0
        return self.core.state_size if self.shared else self.actor_core.state_size + self.critic_core.state_size

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The state at an episode start: zeros ``[batch, state_size]``."""
        return torch.zeros(batch, self.state_size, device=device)

    def step(
        self, obs: Obs, state: torch.Tensor, starts: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of a recurrent policy: distribution parameters (masked by ``masks``), values
        and the new state, for observations ``[batch, ...]`` and the state before them (zeroed
        first where ``starts``, bool ``[batch]``, marks an episode's first observation)."""
        if self.shared:
            features, state = self.core.step(self.encoder(obs), state, starts)
            return self._masked(self._actor_out(features), masks), self._critic_out(features), state
        actor_state, critic_state = self._split_state(state)
        actor_features, actor_state = self.actor_core.step(self.actor_encoder(obs), actor_state, starts)
        critic_features, critic_state = self.critic_core.step(self.critic_encoder(obs), critic_state, starts)
        params = self._masked(self._actor_out(actor_features), masks)
        return params, self._critic_out(critic_features), torch.cat([actor_state, critic_state], dim=-1)

    def _split_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A separate network's state as the actor core's and the critic core's."""
        return state.split([self.actor_core.state_size, self.critic_core.state_size], dim=-1)

    def _replay(self, obs: Obs, sequences: Sequences, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Distribution parameters and values of the valid steps (flat, time-major) of stored
        ``[length, num_seq, ...]`` observation sequences, replayed through the recurrent core(s)."""
        length, num_seq = sequences.starts.shape
        flat = map_obs(lambda a: a.reshape(length * num_seq, *a.shape[2:]), obs)
        pieces = episode_pieces(sequences.starts.cpu().numpy(), sequences.starts.device)
        valid = sequences.valid.reshape(-1)

        def through(encoder: nn.Module, core: RecurrentCore, state: torch.Tensor) -> torch.Tensor:
            features = encoder(flat)
            return core.sequence(features.reshape(length, num_seq, -1), state, pieces)[valid]

        if masks is not None:
            masks = masks.reshape(length * num_seq, -1)[valid]
        state = sequences.initial_state
        if self.shared:
            features = through(self.encoder, self.core, state)
            return self._masked(self._actor_out(features), masks), self._critic_out(features)
        actor_state, critic_state = self._split_state(state)
        params = self._actor_out(through(self.actor_encoder, self.actor_core, actor_state))
        values = self._critic_out(through(self.critic_encoder, self.critic_core, critic_state))
        return self._masked(params, masks), values

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
        if self.recurrent:
            raise_needs_state()
        if self.shared:
            features = self.encoder(obs)
            return self._masked(self._actor_out(features), masks), self._critic_out(features)
        return self.actor(obs, masks), self.value(obs)

    def actor(self, obs: Obs, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The actor's output alone: logits (invalid actions' masked where ``masks`` is given),
        or the Gaussian mean."""
        if self.recurrent:
            raise_needs_state()
        return self._masked(self._actor_out(self.actor_features(obs)), masks)

    def _masked(self, params: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        return params if masks is None else self.distribution.mask(params, masks)

    def value(self, obs: Obs) -> torch.Tensor:
        """The critic's values alone (shape [batch])."""
        if self.recurrent:
            raise_needs_state()
        return self._critic_out(self.critic_features(obs))

    def _actor_out(self, features: torch.Tensor) -> torch.Tensor:
        if self.head_sizes:
            features = run_layers(features, self.actor_hidden, self.head_activation)
        out = F.linear(features, self.actor_head.weight, self.actor_head.bias)
        if self.distribution.feature_size:  # state-dependent exploration reads the features too
            out = torch.cat([out, features.detach()], dim=-1)
        return out

    def _critic_out(self, features: torch.Tensor) -> torch.Tensor:
        if self.head_sizes:
            features = run_layers(features, self.critic_hidden, self.head_activation)
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
        self,
        obs: Obs,
        actions: torch.Tensor,
        entropy_grad: bool = True,
        masks: torch.Tensor | None = None,
        sequences: Sequences | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of stored actions under the current policy, entropies and values;
        with ``masks`` (those the actions were chosen under), of the masked policy.

        ``sequences`` (recurrent policies): the inputs are ``[length, num_seq, ...]`` sequences,
        replayed from their stored states; the results are those of their valid steps (flat).
        ``entropy_grad=False`` computes the entropy outside the autograd graph (for logging only).
        """
        if sequences is not None:
            params, values = self._replay(obs, sequences, masks)
            actions = actions.reshape(-1, *actions.shape[2:])[sequences.valid.reshape(-1)]
        else:
            params, values = self(obs, masks)
        if entropy_grad:
            logprobs, entropy = self.distribution.log_prob_and_entropy(params, actions)
        else:
            logprobs = self.distribution.log_prob(params, actions)
            with torch.no_grad():
                entropy = self.distribution.entropy(params)
        return logprobs, entropy, values


def raise_needs_state() -> None:
    raise RuntimeError("a recurrent policy acts with step(obs, state, starts): its output depends on the carried state")


#: How version-1 checkpoints (MLP-only clippo) named the encoder parameters, and the names now.
_V1_PREFIXES = {
    "trunk.": "encoder.layers.",
    "actor_body.": "actor_encoder.layers.",
    "critic_body.": "critic_encoder.layers.",
}


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

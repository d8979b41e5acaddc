"""Critics: ``local`` (independent PPO, IPPO: each agent's value from its own observation) and
``centralized`` (MAPPO, Yu et al. 2022: the value function sees the whole env).

A centralized critic's input for an agent is the env's global ``state()`` where the env gives
one, else every agent's observation (its policy part, flattened) concatenated in
``possible_agents`` order, zeros for agents not in the episode; then, for a group of several
agents, the one-hot of the agent's index in its group (the team's value can differ per agent,
e.g. by what it can still do). Actors always act from their own observation.

The model is clippo's :class:`~clippo.networks.policy.ActorCritic` with separate networks whose
observation is a ``Dict(actor=..., critic=...)``: its actor encoder reads the ``actor`` field,
its critic encoder (built for the critic's input) the ``critic`` field. Everything downstream
(rollout batches, minibatches, the loss, recurrent cores, checkpoints) handles a Dict
observation already, so nothing else changes.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from clippo.core.errors import ConfigError
from clippo.multiagent.groups import GroupSpec, ObservationMaker
from clippo.networks.encoders import layer, make_encoder, mlp_layers
from clippo.networks.policy import ActorCritic
from clippo.networks.recurrent import RecurrentCore
from clippo.rollout.masking import policy_observation_space

ACTOR_KEY, CRITIC_KEY = "actor", "critic"
CRITICS = ("local", "centralized")


class KeyedEncoder(nn.Module):
    """An encoder that reads one field of a ``Dict(actor=..., critic=...)`` observation batch
    (flat keys: a Dict field's own fields arrive as ``"actor.x"``)."""

    output_size: int

    def __init__(self, key: str, encoder: nn.Module) -> None:
        super().__init__()
        self.key = key
        self.inner = encoder
        # every encoder has an int output_size (clippo.networks.encoders); nn.Module's stubs type it Tensor | Module
        self.output_size = cast(int, encoder.output_size)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.key in obs:
            return self.inner(obs[self.key])
        prefix = self.key + "."
        return self.inner({name[len(prefix) :]: value for name, value in obs.items() if name.startswith(prefix)})


def centralize(model: ActorCritic, actor_space: spaces.Space, critic_space: spaces.Box, hidden_sizes: list[int],
               activation: str, recurrent: str | None, recurrent_hidden_size: int) -> ActorCritic:  # fmt: skip
    """``model`` (separate networks, built for ``actor_space``) with its critic rebuilt for
    ``critic_space`` and both encoders reading their own field of the Dict observation."""
    if model.shared:
        raise ConfigError(
            "network='shared' is invalid with critic='centralized': the actor and the critic see different inputs; "
            "use network='separate'"
        )
    model.actor_encoder = KeyedEncoder(ACTOR_KEY, model.actor_encoder)
    critic_encoder = KeyedEncoder(CRITIC_KEY, make_encoder(critic_space, "mlp", hidden_sizes, activation))
    model.critic_encoder = critic_encoder
    width = critic_encoder.output_size
    if recurrent:
        model.critic_core = RecurrentCore(width, recurrent_hidden_size, recurrent)
        width = recurrent_hidden_size
    model.critic_hidden = mlp_layers(width, model.head_sizes)
    if model.head_sizes:
        width = model.head_sizes[-1]
    model.critic_head = layer(width, 1, 1.0)
    model.observation_space = spaces.Dict({ACTOR_KEY: actor_space, CRITIC_KEY: critic_space})
    return model


class CentralInput:
    """Builds the centralized critic's input rows (see the module docstring)."""

    def __init__(self, possible_agents: list[str], groups: list[GroupSpec], state_size: int | None) -> None:
        self.possible_agents = list(possible_agents)
        self.uses_state = state_size is not None
        self.makers: dict[str, ObservationMaker] = {}
        self.spaces: dict[str, spaces.Space] = {}
        for group in groups:
            maker = ObservationMaker(group)
            for agent in group.agents:
                self.makers[agent] = maker
                self.spaces[agent] = policy_observation_space(group.observation_space)
        if state_size is None:
            self.offsets, total = {}, 0
            for agent in self.possible_agents:
                self.offsets[agent] = total
                total += spaces.flatdim(self.spaces[agent])
            self.global_size = total
        else:
            self.global_size = int(state_size)
        self.group_sizes = {group.name: len(group.agents) for group in groups}

    def space(self, group: GroupSpec) -> spaces.Box:
        extra = len(group.agents) if len(group.agents) > 1 else 0
        return spaces.Box(-np.inf, np.inf, (self.global_size + extra,), np.float32)

    def global_vector(self, adapter: Any) -> np.ndarray:
        """This env copy's global input now."""
        if self.uses_state:
            return adapter.state()
        out = np.zeros(self.global_size, dtype=np.float32)
        for agent, obs in adapter.current_observations().items():
            if agent in self.offsets and obs is not None:
                policy_obs, _ = self.makers[agent].split(obs)
                flat = spaces.flatten(self.spaces[agent], policy_obs)
                assert isinstance(flat, np.ndarray)  # flatdim took the space above: it flattens to a vector
                out[self.offsets[agent] : self.offsets[agent] + flat.size] = flat
        return out

    def rows(self, group: GroupSpec, agents: list[str], global_vectors: list[np.ndarray]) -> np.ndarray:
        """The critic inputs ``[n, size]`` of ``agents`` (of ``group``), each with its copy's global vector."""
        base = np.stack(global_vectors).astype(np.float32, copy=False)
        if len(group.agents) == 1:
            return base
        index = {agent: i for i, agent in enumerate(group.agents)}
        ids = np.eye(len(group.agents), dtype=np.float32)[[index[agent] for agent in agents]]
        return np.concatenate([base, ids], axis=1)

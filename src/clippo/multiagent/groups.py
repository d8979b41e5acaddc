"""Policy groups: which agents share one policy.

By default agents with the same observation and action spaces share one policy (parameter
sharing), and agents whose spaces differ get their own; ``policy_groups`` names the groups
instead (``{"predators": ["adversary_0", "adversary_1"], "prey": ["agent_0"]}``), every agent
in exactly one, the agents of a group with the same spaces. With ``agent_id_feature``, a
shared policy's observations carry a one-hot of the agent's index in its group (a flat Box
gets it appended, a Dict an ``"agent_id"`` field), so that shared weights can still act
differently per agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from clippo.core.errors import ConfigError
from clippo.core.observations import EnvObs
from clippo.rollout.masking import MASK_KEY, policy_observation_space
from clippo.training.checkpoint import describe_space

#: the Dict field that carries the agent's one-hot identity
AGENT_ID_KEY = "agent_id"


@dataclass
class GroupSpec:
    """One policy group: its agents (in order: the one-hot index is the position here), the
    env's spaces for them, and whether its observations carry the agent-identity feature."""

    name: str
    agents: list[str]
    observation_space: spaces.Space  # the env's, action_mask key included
    action_space: spaces.Space
    agent_id: bool = False

    @property
    def policy_space(self) -> spaces.Space:
        """What the actor observes: the env's observation without its action mask, plus the
        agent-identity feature."""
        space = policy_observation_space(self.observation_space)
        if not self.agent_id:
            return space
        one_hot = spaces.Box(0.0, 1.0, (len(self.agents),), np.float32)
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            return spaces.Box(
                np.concatenate([space.low.astype(np.float32), one_hot.low]),
                np.concatenate([space.high.astype(np.float32), one_hot.high]),
                dtype=np.float32,
            )
        if isinstance(space, spaces.Discrete):
            raise ConfigError(
                f"agent_id_feature=True is invalid for group {self.name!r}: its observations are Discrete; use a Box "
                "or Dict observation"
            )
        if isinstance(space, spaces.Dict):
            return spaces.Dict({**space.spaces, AGENT_ID_KEY: one_hot})
        return spaces.Dict({"observation": space, AGENT_ID_KEY: one_hot})

    def to_dict(self) -> dict:
        return {"name": self.name, "agents": list(self.agents), "agent_id": self.agent_id}


def _same(a: spaces.Space, b: spaces.Space) -> bool:
    return a == b


def build_groups(
    agents: list[str],
    observation_spaces: dict[str, spaces.Space],
    action_spaces: dict[str, spaces.Space],
    policy_groups: dict[str, list[str]] | None = None,
    agent_id_feature: bool = False,
) -> list[GroupSpec]:
    """The policy groups of an env with ``agents`` (its ``possible_agents``)."""
    if policy_groups:
        return _named_groups(agents, observation_spaces, action_spaces, policy_groups, agent_id_feature)
    groups: list[GroupSpec] = []
    for agent in agents:
        for group in groups:
            first = group.agents[0]
            if _same(observation_spaces[agent], observation_spaces[first]) and _same(
                action_spaces[agent], action_spaces[first]
            ):
                group.agents.append(agent)
                break
        else:
            groups.append(GroupSpec(agent, [agent], observation_spaces[agent], action_spaces[agent]))
    if len(groups) == 1:
        groups[0].name = "shared"
    for group in groups:
        group.agent_id = agent_id_feature and len(group.agents) > 1
    return groups


def _named_groups(agents, observation_spaces, action_spaces, policy_groups, agent_id_feature) -> list[GroupSpec]:
    seen: dict[str, str] = {}
    groups = []
    for name, members in policy_groups.items():
        if isinstance(members, str) or not isinstance(members, (list, tuple)) or not members:
            raise ConfigError(f"policy_groups[{name!r}]={members!r} is invalid: give a non-empty list of agent names")
        for agent in members:
            if agent not in observation_spaces:
                raise ConfigError(
                    f"policy_groups[{name!r}] names agent {agent!r}, which the env does not have: its agents are "
                    f"{', '.join(agents)}"
                )
            if agent in seen:
                raise ConfigError(
                    f"policy_groups puts agent {agent!r} in both {seen[agent]!r} and {name!r}: each agent belongs to "
                    "one group"
                )
            seen[agent] = name
            first = members[0]
            for what, table in (("observation", observation_spaces), ("action", action_spaces)):
                if not _same(table[agent], table[first]):
                    raise ConfigError(
                        f"policy_groups[{name!r}] is invalid: {agent!r} and {first!r} have different {what} spaces "
                        f"({describe_space(table[agent])} vs {describe_space(table[first])}); agents of one group "
                        "share one policy"
                    )
        groups.append(GroupSpec(str(name), list(members), observation_spaces[members[0]], action_spaces[members[0]],
                                agent_id_feature and len(members) > 1))  # fmt: skip
    missing = [agent for agent in agents if agent not in seen]
    if missing:
        raise ConfigError(f"policy_groups leaves out agent(s) {', '.join(missing)}: put every agent in one group")
    return groups


class ObservationMaker:
    """Turns a group's raw per-agent observations into the actor's batch: the action mask split
    off, the agent-identity one-hot added, fields stacked (the raw form of
    ``clippo.core.observations``: an array, or a flat dict of arrays)."""

    def __init__(self, group: GroupSpec) -> None:
        self.group = group
        space = group.observation_space
        self.masked = isinstance(space, spaces.Dict) and MASK_KEY in space.spaces
        inner = policy_observation_space(space)
        self.inner_space = inner
        #: the fields besides the mask (read only where the group is masked)
        self.rest: list[str] = (
            [key for key in space.spaces if key != MASK_KEY] if isinstance(space, spaces.Dict) else []
        )
        self.index = {agent: i for i, agent in enumerate(group.agents)}
        self.flat_box = isinstance(inner, spaces.Box) and len(inner.shape) == 1
        self.eye = np.eye(len(group.agents), dtype=np.float32)

    def split(self, obs: Any) -> tuple[Any, np.ndarray | None]:
        """One raw observation as (what the policy sees before the identity feature, its mask)."""
        if not self.masked:
            return obs, None
        policy = obs[self.rest[0]] if len(self.rest) == 1 else {key: obs[key] for key in self.rest}
        return policy, np.asarray(obs[MASK_KEY], dtype=bool)

    def batch(self, agents: list[str], raw: list) -> tuple[EnvObs, np.ndarray | None]:
        """(the actor's observation batch, the masks ``[n, actions]`` or None) for agents' raw observations."""
        from clippo.core.observations import flatten_structure

        parts = [self.split(obs) for obs in raw]
        masks = np.stack([mask for _, mask in parts if mask is not None]) if self.masked else None
        policy = [obs for obs, _ in parts]
        stacked: EnvObs
        if isinstance(self.inner_space, (spaces.Dict, spaces.Tuple)):
            flat = [flatten_structure(obs, self.inner_space) for obs in policy]
            stacked = {key: np.stack([f[key] for f in flat]) for key in flat[0]}
        else:
            stacked = np.stack([np.asarray(obs) for obs in policy])
        if not self.group.agent_id:
            return stacked, masks
        ids = self.eye[[self.index[agent] for agent in agents]]
        if self.flat_box:
            assert isinstance(stacked, np.ndarray)  # a flat Box space: no fields
            return np.concatenate([stacked.astype(np.float32, copy=False), ids], axis=1), masks
        if not isinstance(stacked, dict):
            stacked = {"observation": stacked}
        return {**stacked, AGENT_ID_KEY: ids}, masks

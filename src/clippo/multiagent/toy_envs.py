"""Tiny PettingZoo envs for tests and examples: each steps in microseconds and has a known answer.

- :class:`Rendezvous` (Parallel, cooperative): every agent sees the same target among ``k``
  choices; each agent's reward is the fraction of agents that chose it (the team's reward is
  shared). Has a global ``state()``. A learner goes from ~1/k to ~1.
- :class:`LeaveJoin` (Parallel): agents with different lives in 4-step episodes: ``a0``
  terminates after its 2nd action, ``a1`` is truncated after its 4th, ``a2`` joins at step 2
  and is truncated with ``a1``. Rewards do not depend on actions (1, 2, 3 per step), and the
  observation ``[t / 4, one-hot agent]`` tells the time, so values are easy to hand-compute.
  No ``state()``.
- :class:`TwoKinds` (Parallel): a ``speaker`` and a ``listener`` with different observation and
  action spaces (separate policies); the listener is rewarded for echoing the speaker's
  previous action.
- :class:`TakeAway` (AEC, two players, action masks): a pile of ``stones``; players alternately
  take 1 or 2; whoever takes the last stone wins (+1, the other -1). Taking 2 from a pile of 1
  is masked out, and raises if played. ``max_moves`` truncates a game (a draw).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv


class Rendezvous(ParallelEnv):
    metadata: dict[str, Any] = {"name": "rendezvous_v0", "render_modes": []}  # noqa: RUF012 (an instance attribute of pettingzoo's ParallelEnv)

    def __init__(self, n_agents: int = 3, choices: int = 4, length: int = 5) -> None:
        self.possible_agents = [f"agent_{i}" for i in range(n_agents)]
        self.choices, self.length = choices, length
        self._obs = spaces.Box(0.0, 1.0, (choices,), np.float32)
        self._act = spaces.Discrete(choices)
        self.state_space = spaces.Box(0.0, 1.0, (choices + 1,), np.float32)
        self.rng = np.random.default_rng()

    def observation_space(self, agent):
        return self._obs

    def action_space(self, agent):
        return self._act

    def _observe(self):
        obs = np.zeros(self.choices, np.float32)
        obs[self.target] = 1.0
        return {agent: obs.copy() for agent in self.agents}

    def state(self):
        return np.concatenate([np.eye(self.choices, dtype=np.float32)[self.target], [self.t / self.length]]).astype(
            np.float32
        )

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.t = 0
        self.target = int(self.rng.integers(self.choices))
        return self._observe(), {agent: {} for agent in self.agents}

    def step(self, actions):
        hits = np.mean([int(actions[agent]) == self.target for agent in self.agents])
        rewards = {agent: float(hits) for agent in self.agents}
        self.t += 1
        self.target = int(self.rng.integers(self.choices))
        obs = self._observe()
        truncated = self.t >= self.length
        truncations = {agent: truncated for agent in self.agents}
        terminations = {agent: False for agent in self.agents}
        infos: dict[str, dict[str, Any]] = {agent: {} for agent in self.agents}
        if truncated:
            self.agents = []
        return obs, rewards, terminations, truncations, infos


class LeaveJoin(ParallelEnv):
    metadata: dict[str, Any] = {"name": "leave_join_v0", "render_modes": []}  # noqa: RUF012 (an instance attribute of pettingzoo's ParallelEnv)
    LENGTH = 4
    REWARDS: ClassVar[dict[str, float]] = {"a0": 1.0, "a1": 2.0, "a2": 3.0}

    def __init__(self) -> None:
        self.possible_agents = ["a0", "a1", "a2"]
        self._obs = spaces.Box(0.0, 1.0, (4,), np.float32)
        self._act = spaces.Discrete(2)

    def observation_space(self, agent):
        return self._obs

    def action_space(self, agent):
        return self._act

    def _obs_of(self, agent):
        obs = np.zeros(4, np.float32)
        obs[0] = self.t / self.LENGTH
        obs[1 + self.possible_agents.index(agent)] = 1.0
        return obs

    def reset(self, seed=None, options=None):
        self.t = 0
        self.agents = ["a0", "a1"]
        self.actions_taken = {agent: 0 for agent in self.possible_agents}
        return {agent: self._obs_of(agent) for agent in self.agents}, {agent: {} for agent in self.agents}

    def step(self, actions):
        if set(actions) != set(self.agents):
            raise ValueError(f"actions for {sorted(actions)}, but the live agents are {sorted(self.agents)}")
        self.t += 1
        rewards, terminations, truncations = {}, {}, {}
        for agent in self.agents:
            self.actions_taken[agent] += 1
            rewards[agent] = self.REWARDS[agent]
            terminations[agent] = agent == "a0" and self.actions_taken[agent] == 2
            truncations[agent] = self.t >= self.LENGTH
        obs = {agent: self._obs_of(agent) for agent in self.agents}
        self.agents = [agent for agent in self.agents if not (terminations[agent] or truncations[agent])]
        if self.t == 2:
            self.agents.append("a2")
            obs["a2"] = self._obs_of("a2")
        return obs, rewards, terminations, truncations, {agent: {} for agent in obs}


class TwoKinds(ParallelEnv):
    metadata: dict[str, Any] = {"name": "two_kinds_v0", "render_modes": []}  # noqa: RUF012 (an instance attribute of pettingzoo's ParallelEnv)

    def __init__(self, length: int = 6) -> None:
        self.possible_agents = ["speaker", "listener"]
        self.length = length
        self._spaces = {
            "speaker": (spaces.Box(0.0, 1.0, (2,), np.float32), spaces.Discrete(3)),
            "listener": (spaces.Box(0.0, 1.0, (3,), np.float32), spaces.Discrete(2)),
        }

    def observation_space(self, agent):
        return self._spaces[agent][0]

    def action_space(self, agent):
        return self._spaces[agent][1]

    def _observe(self):
        listener = np.zeros(3, np.float32)
        listener[self.said] = 1.0
        return {"speaker": np.array([self.t / self.length, 1.0], np.float32), "listener": listener}

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.t, self.said = 0, 0
        return self._observe(), {agent: {} for agent in self.agents}

    def step(self, actions):
        reward = 1.0 if int(actions["listener"]) == self.said % 2 else 0.0
        self.said = int(actions["speaker"])
        self.t += 1
        done = self.t >= self.length
        obs = self._observe()
        if done:
            self.agents = []
        return (obs, {a: reward for a in obs}, {a: False for a in obs}, {a: done for a in obs}, {a: {} for a in obs})


class TakeAway(AECEnv):
    metadata: dict[str, Any] = {"name": "take_away_v0", "render_modes": [], "is_parallelizable": False}  # noqa: RUF012 (an instance attribute of pettingzoo's AECEnv)

    def __init__(self, stones: int = 5, max_moves: int | None = None) -> None:
        super().__init__()
        self.possible_agents = ["player_0", "player_1"]
        self.stones = stones
        self.max_moves = max_moves
        self._obs = spaces.Dict(
            {
                "observation": spaces.Box(0.0, 1.0, (stones + 1,), np.float32),
                "action_mask": spaces.Box(0, 1, (2,), np.int8),
            }
        )
        self._act = spaces.Discrete(2)  # take action + 1 stones

    def observation_space(self, agent):
        return self._obs

    def action_space(self, agent):
        return self._act

    def observe(self, agent):
        board = np.zeros(self.stones + 1, np.float32)
        board[self.pile] = 1.0
        mask = np.array([self.pile >= 1, self.pile >= 2], np.int8)
        return {"observation": board, "action_mask": mask}

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.pile = self.stones
        self.moves = 0
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        self.agent_selection = self.agents[0]

    def step(self, action):
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        if not self.observe(agent)["action_mask"][int(action)]:
            raise ValueError(f"illegal move: {agent} takes {int(action) + 1} from a pile of {self.pile}")
        self._cumulative_rewards[agent] = 0.0
        self.pile -= int(action) + 1
        self.moves += 1
        other = self.agents[1 - self.agents.index(agent)]
        self.rewards = {a: 0.0 for a in self.agents}
        if self.pile == 0:
            self.rewards[agent], self.rewards[other] = 1.0, -1.0
            self.terminations = {a: True for a in self.agents}
        elif self.max_moves is not None and self.moves >= self.max_moves:
            self.truncations = {a: True for a in self.agents}
        self.agent_selection = other
        self._accumulate_rewards()

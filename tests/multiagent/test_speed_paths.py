"""The direct stepping of converted AEC envs (clippo.multiagent.pettingzoo.DirectParallelAdapter)
is pinned to PettingZoo's own ``aec_to_parallel`` wrapper: the same outcomes, agents due and
episode ends, step by step, and the same refusals of bad actions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("pettingzoo")

from pettingzoo import AECEnv
from pettingzoo.utils import AgentSelector, wrappers
from pettingzoo.utils.conversions import aec_to_parallel

from clippo import PPO
from clippo.core.errors import EnvStepError
from clippo.multiagent.pettingzoo import DirectParallelAdapter, ParallelAdapter, make_adapter

SMALL = dict(num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2, tensorboard=False, seed=0)


class Cycle(AECEnv):
    """Three agents move in turn; the world moves at the end of each cycle (as MPE's does).
    ``a0`` is also rewarded in the middle of a cycle (the conversion sums a step's rewards),
    ``a2`` terminates after the 2nd cycle while the others go on (a dead step mid-episode), and
    episodes are truncated after ``length`` cycles. Observations carry seeded noise."""

    metadata: dict[str, Any] = {"name": "cycle_v0", "render_modes": [], "is_parallelizable": True}  # noqa: RUF012 (an instance attribute of pettingzoo's AECEnv)

    def __init__(self, length: int = 4) -> None:
        super().__init__()
        self.possible_agents = ["a0", "a1", "a2"]
        self.length = length
        self._obs = spaces.Box(-1.0, 2.0, (2,), np.float32)
        self._act = spaces.Discrete(3)
        self.rng = np.random.default_rng()
        self.render_mode = None

    def observation_space(self, agent):
        return self._obs

    def action_space(self, agent):
        return self._act

    def observe(self, agent):
        return np.array([self.cycles / self.length, self.last[agent] / 2 + self.noise], np.float32)

    def state(self):
        return np.array([self.cycles, self.noise, *self.last.values()], np.float32)

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        self.selector = AgentSelector(self.agents)
        self.agent_selection = self.selector.reset()
        self.cycles = 0
        self.pending: dict[str, int] = {}
        self.last = {a: 0 for a in self.agents}
        self.noise = float(self.rng.random())

    def step(self, action):
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            self.selector.reinit(self.agents)
            if self.agents:
                self.selector.next()  # in step with agent_selection (the cycle's first agent)
            return
        self._cumulative_rewards[agent] = 0.0
        self.pending[agent] = int(action)
        self._clear_rewards()
        if agent == "a1":
            self.rewards["a0"] = 0.5
        last = self.selector.is_last()
        self.agent_selection = self.selector.next()
        if last:
            self.cycles += 1
            for a in self.agents:
                self.rewards[a] = self.pending[a] - 1.0 + self.noise
                self.last[a] = self.pending[a]
            self.noise = float(self.rng.random())
            if self.cycles >= self.length:
                self.truncations = {a: True for a in self.agents}
            elif self.cycles == 2 and "a2" in self.agents:
                self.terminations["a2"] = True
                self._skip_agent_selection = self.agent_selection
                self.agent_selection = "a2"  # the dead agent steps first
        self._accumulate_rewards()


def make_cycle() -> Any:
    return aec_to_parallel(wrappers.OrderEnforcingWrapper(wrappers.AssertOutOfBoundsWrapper(Cycle())))


def trajectory(adapter, seed: int, steps: int) -> list:
    """Every step's (outcomes, agents due with their observations, episode over), random actions."""
    rng = np.random.default_rng(seed)
    acting = adapter.reset(seed)
    out: list = [sorted(acting)]
    for _ in range(steps):
        outcomes, acting, over = adapter.step({agent: int(rng.integers(3)) for agent in acting})
        out.append(
            (
                [(o.agent, o.reward, o.terminated, o.truncated, np.asarray(o.next_obs).tolist()) for o in outcomes],
                {agent: np.asarray(obs).tolist() for agent, obs in acting.items()},
                over,
                list(adapter.env.agents),
                adapter.state().tolist(),  # the centralized critic's input
            )
        )
        if over:
            acting = adapter.reset(None)
            out.append(sorted(acting))
    return out


@pytest.mark.parametrize("make_env", [make_cycle, "mpe2"])
def test_direct_stepping_gives_what_the_conversion_gives(make_env):
    if make_env == "mpe2":
        simple_spread = pytest.importorskip("mpe2.simple_spread_v3")
        make_env = lambda: simple_spread.parallel_env(N=3, max_cycles=5)  # noqa: E731
    direct, plain = make_adapter(make_env()), make_adapter(make_env(), direct=False)
    assert type(direct) is DirectParallelAdapter and type(plain) is ParallelAdapter
    got, expected = trajectory(direct, 3, 40), trajectory(plain, 3, 40)
    assert got == expected
    direct.detect_state()
    assert direct.has_state
    # the toy's episodes had an agent end mid-episode and rewards from the middle of a cycle
    if isinstance(direct.env.aec_env.env.env, Cycle):
        ended = [o for step in expected if isinstance(step, tuple) for o in step[0] if o[2]]
        assert ended and all(o[0] == "a2" for o in ended)


class Shifted(wrappers.BaseWrapper):
    """A wrapper that changes what an action does: it must still be stepped through."""

    def step(self, action):
        super().step(None if action is None else (action + 1) % 3)


def test_only_pure_checking_wrappers_are_stepped_beneath():
    make_shifted = lambda: aec_to_parallel(wrappers.OrderEnforcingWrapper(Shifted(Cycle())))  # noqa: E731
    adapter = make_adapter(make_shifted())
    assert type(adapter) is DirectParallelAdapter
    assert isinstance(adapter.inner, Shifted) and not adapter.checks_bounds
    assert trajectory(adapter, 5, 20) == trajectory(make_adapter(make_shifted(), direct=False), 5, 20)
    assert trajectory(adapter, 5, 20) != trajectory(make_adapter(make_cycle()), 5, 20)
    assert isinstance(make_adapter(make_cycle()).inner, Cycle)


@pytest.mark.parametrize("action", [3, -1, 1.0, "1"])
def test_an_action_outside_its_space_is_refused_as_the_wrapper_refuses_it(action):
    adapter = make_adapter(make_cycle())
    adapter.reset(0)
    with pytest.raises(AssertionError, match=r"action .* of agent 'a0' is not in its action space Discrete\(3\)"):
        adapter.step({"a0": action, "a1": 0, "a2": 0})
    with pytest.raises(AssertionError, match="not in action space"):  # the wrapper's own refusal
        plain = make_adapter(make_cycle(), direct=False)
        plain.reset(0)
        plain.step({"a0": action, "a1": 0, "a2": 0})


def test_numpy_integers_in_bounds_are_accepted():
    adapter = make_adapter(make_cycle())
    adapter.reset(0)
    outcomes, acting, _ = adapter.step({"a0": np.int64(2), "a1": 1, "a2": np.int32(0)})
    assert [o.agent for o in outcomes] == ["a0", "a1", "a2"] and sorted(acting) == ["a0", "a1", "a2"]


def test_ppo_steps_directly_unless_the_fast_path_is_off():
    for fast_path, kind in (("auto", DirectParallelAdapter), ("off", ParallelAdapter)):
        agent = PPO(make_cycle, fast_path=fast_path, **SMALL)
        runner = agent.env_runner()
        assert all(type(adapter) is kind for adapter in runner.adapters)
        assert runner.collect([learner.generator for learner in agent.learners]) > 0
        agent.close()


def test_a_bad_action_in_a_run_is_a_one_line_error(monkeypatch):
    agent = PPO(make_cycle, **SMALL)
    runner = agent.env_runner()
    step = DirectParallelAdapter.step
    monkeypatch.setattr(DirectParallelAdapter, "step", lambda self, actions: step(self, {**actions, "a1": 7}))
    with pytest.raises(EnvStepError) as info:
        runner.collect([learner.generator for learner in agent.learners])
    text = str(info.value)
    assert "\n" not in text and "action 7 of agent 'a1' is not in its action space Discrete(3)" in text
    agent.close()

"""PettingZoo envs: telling them from Gymnasium envs, importing them by module path, and one
adapter per API that the multi-agent runner steps in the same way.

Both adapters answer the runner's one question per env step: given the actions of the agents
that were due to act, which agents' transitions closed (reward, terminated, truncated, next
observation), and which agents are due to act next (with their observations)?

- Parallel API (simultaneous moves): every live agent acts at every step.
- AEC API (turn-based): one agent acts per step. The reward an agent gets while others move
  is accumulated by PettingZoo (``env.last()`` returns the agent's reward since its previous
  action), so an agent's transition closes only when it is selected again, or at its "dead
  step" once it is terminated or truncated (where ``env.step(None)`` is the only legal call).
"""

from __future__ import annotations

import importlib
import re
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clippo.core import safety
from clippo.core.errors import UntrustedCodeError

#: The one-line hint for a missing extra.
EXTRA_HINT = "pip install 'clippo[multiagent]'"

_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class UntrustedImportError(UntrustedCodeError):
    """A module path read from a file (run directory, checkpoint) that the user did not allow importing."""


def import_env_module(path: str, trusted: bool) -> types.ModuleType:
    """Import the env module ``path`` (e.g. ``mpe2.simple_spread_v3``): the ONE place where
    clippo's multi-agent code imports a module by name.

    ``trusted``: the user typed or passed the path themselves (command line, ``PPO("...")``),
    or opted in (``trust_code=True`` / ``--trust-code``). A path read from a file the user did
    not write (a checkpoint, a run directory's config) is refused: importing runs the module's
    code: refused in one line, as everything a file names (``clippo.core.safety``)."""
    if not trusted:
        try:
            safety.require_trust(
                "a checkpoint or run directory",
                "the env module",
                path,
                False,
                "env= in Python, or the module path on the command line",
            )
        except UntrustedCodeError as exc:
            raise UntrustedImportError(str(exc)) from None
    if not _MODULE_PATH.match(path):
        raise ValueError(
            f"env {path!r} is invalid: a PettingZoo env is named by its module path, e.g. mpe2.simple_spread_v3"
        )
    try:
        return importlib.import_module(path)
    except ImportError as exc:
        hint = f" (try: {EXTRA_HINT})" if path.split(".")[0] in ("pettingzoo", "mpe2") else ""
        raise ValueError(f"env module {path!r} does not import: {exc}{hint}") from None


def _pettingzoo_classes() -> tuple[type, type] | None:
    try:
        from pettingzoo.utils.env import AECEnv, ParallelEnv
    except ImportError:
        return None
    return ParallelEnv, AECEnv


def is_parallel_env(env: Any) -> bool:
    """Whether ``env`` is a PettingZoo Parallel API env (by class where PettingZoo is installed,
    else by its methods: ``possible_agents`` and ``step`` without the AEC API's ``last``)."""
    classes = _pettingzoo_classes()
    if classes is not None:
        return isinstance(env, classes[0])
    return (
        hasattr(env, "possible_agents")
        and callable(getattr(env, "step", None))
        and not callable(getattr(env, "last", None))
    )


def is_aec_env(env: Any) -> bool:
    """Whether ``env`` is a PettingZoo AEC (turn-based) env."""
    classes = _pettingzoo_classes()
    if classes is not None:
        return isinstance(env, classes[1])
    return (
        hasattr(env, "possible_agents")
        and callable(getattr(env, "last", None))
        and callable(getattr(env, "agent_iter", None))
    )


def is_pettingzoo_env(env: Any) -> bool:
    return is_parallel_env(env) or is_aec_env(env)


def _is_gym_env(env: Any) -> bool:
    import gymnasium as gym

    return isinstance(env, gym.Env)


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class EnvFactory:
    """How to make copies of a PettingZoo env: ``make()`` calls ``constructor(**kwargs)``.

    ``name`` is what the config records (a module path, or the factory's name). The env made
    while telling what ``source`` was (``probe``) is handed out by the first ``make()`` call
    instead of being thrown away."""

    constructor: Callable[..., Any]
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    probe: Any = None

    def make(self) -> Any:
        if self.probe is not None:
            env, self.probe = self.probe, None
            return env
        env = self.constructor(**self.kwargs)
        if not is_pettingzoo_env(env):
            raise TypeError(
                f"env factory {self.name!r} returned {_describe(env)}: expected a PettingZoo env like its first one"
            )
        return env


def module_constructor(module: types.ModuleType) -> Callable[..., Any]:
    """A PettingZoo env module's constructor: ``parallel_env()`` (simultaneous moves) where it
    has one, else ``env()`` (the AEC API; turn-based games have only this one)."""
    for name in ("parallel_env", "env"):
        constructor = getattr(module, name, None)
        if callable(constructor):
            return constructor
    raise ValueError(
        f"env module {module.__name__!r} has no parallel_env() or env() constructor: it is not a PettingZoo env module"
    )


def _looks_like_gym_id(text: str) -> bool:
    import gymnasium as gym

    return text in gym.registry or not _MODULE_PATH.match(text)


def multiagent_source(env: Any, env_kwargs: dict[str, Any] | None = None, trusted: bool = True) -> EnvFactory | None:
    """An :class:`EnvFactory` when ``env`` names or makes a PettingZoo env, None when it is a
    Gymnasium env (id or factory); a one-line error for anything else.

    ``env`` may be a module path (``"mpe2.simple_spread_v3"``: its ``parallel_env()`` /
    ``env()`` called with ``env_kwargs``), such a module itself, or a callable returning a
    PettingZoo env (called once here to see what it makes; that env is reused)."""
    factory, gym_env = probe_source(env, env_kwargs, trusted)
    if gym_env is not None:
        gym_env.close()
    return factory


def probe_source(
    env: Any, env_kwargs: dict[str, Any] | None = None, trusted: bool = True
) -> tuple[EnvFactory | None, Any]:
    """``multiagent_source``, and the env a Gymnasium factory made when called to tell what it
    makes (else None), for the caller to use as its first env rather than make one more (a
    factory may count its calls)."""
    kwargs = dict(env_kwargs or {})
    if isinstance(env, str):
        if _looks_like_gym_id(env):
            return None, None
        module = import_env_module(env, trusted)
        return EnvFactory(module_constructor(module), env, kwargs), None
    if isinstance(env, types.ModuleType):
        return EnvFactory(module_constructor(env), env.__name__, kwargs), None
    if _is_gym_env(env):  # a Gymnasium env instance: single-agent PPO takes it (as SB3 does)
        return None, None
    if is_pettingzoo_env(env):
        raise TypeError(
            "env must be an env id, a module path or a function returning a new env, got the env instance "
            f"{_describe(env)}: "
            "pass the function that makes it (e.g. simple_spread_v3.parallel_env)"
        )
    if callable(env):
        try:
            made = env(**kwargs)
        except TypeError as exc:
            if kwargs:
                raise TypeError(
                    f"env factory {getattr(env, '__name__', env)!r} does not take env_kwargs {kwargs}: {exc}"
                ) from None
            raise
        if is_pettingzoo_env(made):
            return EnvFactory(env, getattr(env, "__name__", "custom-env"), kwargs, probe=made), None
        if _is_gym_env(made):
            return None, made
        raise TypeError(
            f"env factory {getattr(env, '__name__', env)!r} returned {_describe(made)}: neither a gymnasium.Env nor "
            "a PettingZoo env"
        )
    raise TypeError(
        "env must be a Gymnasium env id, a PettingZoo module path, or a function returning a gymnasium.Env or "
        f"PettingZoo env, got {_describe(env)}"
    )


# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What closes one agent's transition: its reward since it acted, whether its episode ended
    (terminated: no bootstrap; truncated: bootstrap), and the observation that follows."""

    agent: str
    reward: float
    terminated: bool
    truncated: bool
    next_obs: Any


class Adapter:
    """The runner's view of one PettingZoo env (see the module docstring)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.possible_agents: list[str] = list(env.possible_agents)
        self.has_state = False
        #: what ``state()`` is asked of (DirectParallelAdapter: the AEC env beneath the checks)
        self.state_env = env
        #: agents whose transition is open (acted, outcome not yet seen)
        self.open: set[str] = set()

    def observation_space(self, agent: str):
        return self.env.observation_space(agent)

    def action_space(self, agent: str):
        return self.env.action_space(agent)

    def detect_state(self) -> None:
        """Whether the env gives a global ``state()`` (after a reset)."""
        try:
            state = self.state_env.state()
            self.has_state = state is not None and np.asarray(state).size > 0
        except (NotImplementedError, AttributeError):
            self.has_state = False

    def state(self) -> np.ndarray:
        return np.asarray(self.state_env.state(), dtype=np.float32).reshape(-1)

    def current_observations(self) -> dict[str, Any]:
        """Every live agent's latest observation (the centralized critic's fallback input)."""
        raise NotImplementedError

    def reset(self, seed: int | None) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, actions: dict[str, Any]) -> tuple[list[Outcome], dict[str, Any], bool]:
        """(closed transitions, agents due to act with their observations, whether the episode is over)."""
        raise NotImplementedError

    def close(self) -> None:
        self.env.close()


class ParallelAdapter(Adapter):
    """Simultaneous moves: every live agent acts at every step, and every transition closes at once."""

    kind = "parallel"

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.last_obs: dict[str, Any] = {}

    def reset(self, seed: int | None) -> dict[str, Any]:
        obs, _ = self.env.reset(seed=seed)
        self.last_obs = dict(obs)
        self.open.clear()
        return {agent: obs[agent] for agent in self.env.agents if agent in obs}

    def current_observations(self) -> dict[str, Any]:
        return self.last_obs

    def step(self, actions: dict[str, Any]) -> tuple[list[Outcome], dict[str, Any], bool]:
        obs, rewards, terminations, truncations, _ = self.env.step(actions)
        outcomes = []
        for agent in actions:
            terminated, truncated = bool(terminations.get(agent, False)), bool(truncations.get(agent, False))
            if agent not in obs and not (terminated or truncated):
                # An agent that vanished without an end flag has left: nothing follows its action,
                # so its transition ends there (terminal: there is no next state to bootstrap from).
                terminated = True
            # (a leaving agent without a final observation keeps its last one: only a truncation reads it)
            outcomes.append(Outcome(agent, float(rewards.get(agent, 0.0)), terminated, truncated and not terminated,
                                    obs.get(agent, self.last_obs.get(agent))))  # fmt: skip
        self.last_obs = dict(obs)
        live = self.env.agents
        acting = {
            agent: obs[agent]
            for agent in live
            if agent in obs and not (terminations.get(agent) or truncations.get(agent))
        }
        return outcomes, acting, not acting


class AECAdapter(Adapter):
    """Turn-based: one agent acts per step; dead steps (``step(None)`` for an agent that is
    terminated or truncated) are taken here, closing that agent's last transition."""

    kind = "aec"

    def reset(self, seed: int | None) -> dict[str, Any]:
        self.env.reset(seed=seed)
        self.open.clear()
        _outcomes, acting, _ = self._advance()
        return acting

    def current_observations(self) -> dict[str, Any]:
        return {agent: self.env.observe(agent) for agent in self.env.agents}

    def _advance(self) -> tuple[list[Outcome], dict[str, Any], bool]:
        """Walk to the next agent due to act, taking dead steps on the way."""
        outcomes = []
        env = self.env
        while env.agents:
            agent = env.agent_selection
            obs, reward, terminated, truncated, _ = env.last()
            if terminated or truncated:
                if agent in self.open:
                    outcomes.append(
                        Outcome(agent, float(reward), bool(terminated), bool(truncated and not terminated), obs)
                    )
                    self.open.discard(agent)
                env.step(None)
                continue
            if agent in self.open:
                outcomes.append(Outcome(agent, float(reward), False, False, obs))
                self.open.discard(agent)
            return outcomes, {agent: obs}, False
        return outcomes, {}, True

    def step(self, actions: dict[str, Any]) -> tuple[list[Outcome], dict[str, Any], bool]:
        ((agent, action),) = actions.items()
        self.env.step(action)
        self.open.add(agent)
        return self._advance()


class DirectParallelAdapter(ParallelAdapter):
    """A Parallel env that is PettingZoo's ``aec_to_parallel_wrapper`` over an AEC env (as most
    PettingZoo Parallel envs are, MPE's among them), stepped as that wrapper steps it, but from
    beneath the AEC wrappers that only check how the env is called.

    Per parallel step, the conversion calls through its AEC wrapper chain a few dozen times
    (``OrderEnforcingWrapper`` and ``BaseWrapper`` forward every attribute read through
    ``__getattr__``), and calls ``last()`` once per agent only to throw its result away (an
    observation computed for nothing). On ``mpe2.simple_spread_v3`` that is a third of the
    time of a step. This adapter does what ``aec_to_parallel_wrapper.step`` does, in the same
    order, on the first wrapper that is not one of :data:`CHECKING_WRAPPERS` (the env below
    them):

    - the same cycle check (each live agent must be the one selected, in turn), raising the
      conversion's ``AssertionError``; the same per-step reward sums, end flags, observations
      of the live agents, and dead steps (``step(None)``) for the agents that ended;
    - ``AssertOutOfBoundsWrapper``'s check, where that wrapper was stepped beneath: an action
      outside its agent's space is refused before the env sees it (``AssertionError`` naming
      the agent, the action and the space; a Discrete action is checked inline, any other by
      its space's ``contains``);
    - ``OrderEnforcingWrapper``'s checks hold by construction: the adapter resets (through the
      whole chain, so the wrappers know it) before it steps, and never steps an env whose
      agents are all done (the runner resets it first);
    - the discarded ``last()`` is not called: ``observe`` is a query (PettingZoo's API), so
      the observations, rewards and flags are the same (``tests/multiagent/test_speed_paths.py``
      pins them to the wrapper's, step by step).

    Used where the env is exactly ``aec_to_parallel_wrapper`` (a subclass may step otherwise);
    ``fast_path="off"`` steps through the wrapper as any Parallel env.
    """

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        inner = env.aec_env
        self.checks_bounds = False
        while type(inner) in CHECKING_WRAPPERS:
            self.checks_bounds = self.checks_bounds or type(inner).__name__ == "AssertOutOfBoundsWrapper"
            inner = inner.env
        self.inner = inner
        self.state_env = inner  # the conversion's state() is the AEC env's
        #: agent -> (start, n) of a Discrete action space, checked inline; others by ``contains``
        self.discrete: dict[str, tuple[int, int]] = {}
        if self.checks_bounds:
            from gymnasium import spaces

            for agent in self.possible_agents:
                space = env.action_space(agent)
                if type(space) is spaces.Discrete:
                    self.discrete[agent] = (int(space.start), int(space.n))

    def _check_action(self, agent: str, action: Any) -> None:
        bounds = self.discrete.get(agent)
        if bounds is not None and type(action) is int and bounds[0] <= action < bounds[0] + bounds[1]:
            return
        space = self.env.action_space(agent)
        if not space.contains(action):
            raise AssertionError(f"action {action!r} of agent {agent!r} is not in its action space {space}")

    def step(self, actions: dict[str, Any]) -> tuple[list[Outcome], dict[str, Any], bool]:
        env = self.inner
        rewards: dict[str, float] = {}
        for agent in env.agents:
            selected = env.agent_selection
            if agent != selected:
                if env.terminations[agent] or env.truncations[agent]:
                    raise AssertionError(
                        f"expected agent {agent} got termination or truncation agent {selected}: the Parallel "
                        "conversion expects agents to end only at the end of a cycle"
                    )
                raise AssertionError(f"expected agent {agent} got agent {selected}: the Parallel conversion expects "
                                     "agents to step in a cycle")  # fmt: skip
            action = actions[agent]
            if self.checks_bounds:
                self._check_action(agent, action)
            env.step(action)
            step_rewards = env.rewards
            for other in env.agents:
                rewards[other] = rewards.get(other, 0) + step_rewards[other]
        terminations, truncations = env.terminations, env.truncations
        live = env.agents
        obs = {agent: env.observe(agent) for agent in live}
        outcomes = []
        for agent in actions:
            terminated, truncated = bool(terminations.get(agent, False)), bool(truncations.get(agent, False))
            if agent not in obs and not (terminated or truncated):
                terminated = True  # as ParallelAdapter.step: an agent that left without an end flag
            outcomes.append(Outcome(agent, float(rewards.get(agent, 0.0)), terminated, truncated and not terminated,
                                    obs.get(agent, self.last_obs.get(agent))))  # fmt: skip
        acting = {agent: obs[agent] for agent in live if not (terminations.get(agent) or truncations.get(agent))}
        while env.agents and (env.terminations[env.agent_selection] or env.truncations[env.agent_selection]):
            env.step(None)  # the dead steps of the agents that ended, as the conversion takes them
        self.env.agents = env.agents
        self.last_obs = obs
        return outcomes, acting, not acting


def _checking_wrappers() -> tuple[type, ...]:
    try:
        from pettingzoo.utils.wrappers import AssertOutOfBoundsWrapper, OrderEnforcingWrapper
    except ImportError:
        return ()
    return (OrderEnforcingWrapper, AssertOutOfBoundsWrapper)


#: AEC wrappers that only check how the env is called (see DirectParallelAdapter)
CHECKING_WRAPPERS = _checking_wrappers()


def _is_converted_aec(env: Any) -> bool:
    try:
        from pettingzoo.utils.conversions import aec_to_parallel_wrapper
    except ImportError:
        return False
    return type(env) is aec_to_parallel_wrapper


def make_adapter(env: Any, direct: bool = True) -> Adapter:
    """The adapter for ``env``; ``direct``: a converted AEC env steps beneath its checking
    wrappers (:class:`DirectParallelAdapter`), else every Parallel env through its own ``step``."""
    if direct and _is_converted_aec(env):
        return DirectParallelAdapter(env)
    if is_parallel_env(env):
        return ParallelAdapter(env)
    if is_aec_env(env):
        return AECAdapter(env)
    raise TypeError(f"{_describe(env)} is not a PettingZoo env")

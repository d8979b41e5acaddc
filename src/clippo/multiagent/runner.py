"""The multi-agent rollout: several copies of a PettingZoo env stepped together, the agents due
to act batched per policy group (one forward pass per group and step), and each agent's
transitions stored in its own slot of its group's ``SlotBuffer``.

Per env step: (1) every group acts for its due agents, self-play opponents for theirs; (2) each
copy steps (``clippo.multiagent.pettingzoo`` adapters), returning closed transitions and the
agents due next; (3) the closed transitions are stored per group in one batch, then episode
ends, then the first observations of agents that (re)appear. A copy whose episode is over is
reset at once. An agent whose transition is still open when its episode ends without an
outcome for it has its action dropped (no transition without a reward); an episode that ends
under an agent due to act truncates its last transition.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clippo.core import observations
from clippo.core.errors import ActionMaskError, EnvStepError, NonFiniteError, first_line
from clippo.core.observations import Obs, map_obs
from clippo.fastpath.layout import FAST_PATH_ACTIVATIONS
from clippo.fastpath.sampling import NumpySampler, numpy_sampler
from clippo.multiagent.buffer import IDLE, OBSERVED, SlotBuffer, combine
from clippo.multiagent.critic import CentralInput, KeyedEncoder
from clippo.multiagent.groups import ObservationMaker
from clippo.multiagent.pettingzoo import Adapter, Outcome
from clippo.multiagent.selfplay import RANDOM, OpponentRef, SelfPlay, game_result
from clippo.networks.distributions import MASKED_LOGIT
from clippo.networks.encoders import MLPEncoder
from clippo.rollout.masking import component_starts, first_invalid_row
from clippo.training.checkpoint import describe_space

if TYPE_CHECKING:
    from clippo.fastpath.numpy_mlp import NumpyMLP

#: an agent queued to appear: (its slot, the agent, its raw observation, its copy's global vector or None)
Arrival = tuple[int, str, Any, "np.ndarray | None"]
#: a transition closing this step: (its slot, the outcome, its copy's global vector or None)
Closing = tuple[int, Outcome, "np.ndarray | None"]


@dataclass
class Episode:
    """A finished episode of one env copy: every agent's return, its team return (their sum),
    its length in env steps, and for self-play the learner's seat, opponent and result."""

    agent_returns: dict[str, float]
    length: int
    seat: str | None = None
    opponent: OpponentRef | None = None  # self-play: who the learner played
    result: str | None = None

    @property
    def team_return(self) -> float:
        return float(sum(self.agent_returns.values()))

    @property
    def score(self) -> float:
        """The return the run reports: the learner's seat's in self-play, else the team's."""
        return self.agent_returns.get(self.seat, 0.0) if self.seat is not None else self.team_return


def env_action_rows(distribution, actions: np.ndarray) -> list:
    """A batch of actions as one env action per row (plain ints for discrete actions)."""
    env = distribution.to_env(actions)
    if isinstance(env, dict):
        return [{key: value[i] for key, value in env.items()} for i in range(len(actions))]
    if isinstance(env, tuple):
        return [tuple(value[i] for value in env) for i in range(len(actions))]
    if env.ndim == 1 and np.issubdtype(env.dtype, np.integer):
        return env.tolist()
    return list(env)


class GroupActor:
    """Acting for one group: a numpy copy of the actor where the fast path's conditions hold
    (clippo.fastpath.numpy_mlp), else the torch model."""

    def __init__(self, learner) -> None:
        model = learner.model
        self.model = model
        self.distribution = model.distribution
        self.device = learner.device
        self.centralized = learner.centralized
        self.numpy: NumpyMLP | None = None  # set with sample and std where the fast path's conditions hold
        self.sample: NumpySampler | None = None
        self.std: np.ndarray | None = None
        encoder = model.actor_encoder if not model.shared else None
        inner = encoder.inner if isinstance(encoder, KeyedEncoder) else encoder
        from gymnasium import spaces

        space = learner.spec.policy_space
        flat_float = isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating) and len(space.shape) == 1
        if (
            flat_float
            and self.device.type == "cpu"
            and isinstance(inner, MLPEncoder)
            and inner.activation_name in FAST_PATH_ACTIVATIONS
            and not model.recurrent
            and not model.head_sizes
            and not self.distribution.feature_size
            and learner.config.fast_path == "auto"
            and model.compute_dtype is None  # fp32
            and numpy_sampler(self.distribution) is not None
        ):
            from clippo.fastpath.numpy_mlp import NumpyMLP

            self.numpy = NumpyMLP(inner.layers, model.actor_head, inner.activation)
            self.sample = numpy_sampler(self.distribution)
            log_std = getattr(model, "log_std", None)
            self.std = None if log_std is None else np.exp(log_std.detach().cpu().numpy())

    @torch.inference_mode()
    def step(self, obs: Obs, critic, masks, state: np.ndarray, starts: np.ndarray, generator: torch.Generator):
        """A recurrent policy's step: (actions, actor output, values, new state)."""
        n = observations.batch_size(obs)
        noise = self.distribution.noise((n,), generator, self.device)
        tensors = observations.to_tensor(combine(obs, critic, self.centralized), self.device)
        mask_tensor = None if masks is None else torch.from_numpy(np.ascontiguousarray(masks)).to(self.device)
        params, values, new_state = self.model.step(
            tensors, torch.from_numpy(state).to(self.device), torch.from_numpy(starts).to(self.device), mask_tensor
        )
        actions = self.distribution.sample(params, noise)
        return actions.cpu().numpy(), params.cpu().numpy(), values.cpu().numpy(), new_state.cpu().numpy()

    @torch.inference_mode()
    def value(self, obs: Obs, critic, state: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """A recurrent critic's values of observations, from the states before them."""
        tensors = observations.to_tensor(combine(obs, critic, self.centralized), self.device)
        _, values, _ = self.model.step(
            tensors, torch.from_numpy(state).to(self.device), torch.from_numpy(starts).to(self.device)
        )
        return values.cpu().numpy()

    @torch.inference_mode()
    def __call__(self, obs: Obs, masks: np.ndarray | None, generator: torch.Generator, deterministic: bool = False):
        """(actions ``[n, ...]``, the actor's output ``[n, param_size]``) for an observation batch."""
        n = observations.batch_size(obs)
        noise = None if deterministic else self.distribution.noise((n,), generator, self.device)
        if self.numpy is not None:
            params = self.numpy(np.asarray(obs, dtype=np.float32)).astype(np.float32, copy=False)
            if masks is not None:
                np.copyto(params, MASKED_LOGIT, where=~masks)
            if deterministic:
                actions = self.distribution.sample(torch.from_numpy(params), None).numpy()
            else:
                assert self.sample is not None and noise is not None  # set with self.numpy; drawn unless deterministic
                actions = self.sample(params, noise.cpu().numpy(), self.std)
            return actions, params
        tensors = observations.to_tensor(combine(obs, None, self.centralized), self.device)
        mask_tensor = None if masks is None else torch.from_numpy(np.ascontiguousarray(masks)).to(self.device)
        params = self.model.actor(tensors, mask_tensor)
        actions = self.distribution.sample(params, noise)
        return actions.cpu().numpy(), params.cpu().numpy()


def _item_owner(items: list[tuple[int, str, Any]], row: int) -> tuple[int, str]:
    """(env copy, agent) of an opponent's row ``row`` of ``items``."""
    return items[row][0], items[row][1]


class MultiAgentRunner:
    """The env copies, the groups' buffers and what carries over between rollouts."""

    def __init__(
        self,
        adapters: list[Adapter],
        learners: list,
        central: CentralInput | None,
        num_steps: int,
        selfplay: SelfPlay | None = None,
    ) -> None:
        self.adapters = adapters
        self.num_envs = len(adapters)
        self.learners = learners
        self.central = central
        self.selfplay = selfplay
        self.makers = [ObservationMaker(learner.spec) for learner in learners]
        self.group_of: dict[str, tuple[int, int]] = {}
        for gi, learner in enumerate(learners):
            for index, agent in enumerate(learner.spec.agents):
                self.group_of[agent] = (gi, index)
        # (copy, agent) -> (group, slot), looked up once per agent and step
        self.slots = {
            (c, agent): (gi, c * len(learners[gi].spec.agents) + index)
            for c in range(len(adapters))
            for agent, (gi, index) in self.group_of.items()
        }
        self.buffers = [
            SlotBuffer(
                num_steps,
                self.num_envs * len(learner.spec.agents),
                learner.spec.policy_space,
                None if central is None else central.space(learner.spec).shape[0],
                learner.model.distribution,
                self.makers[gi].masked,
                learner.device,
                learner.model.state_size,
            )
            for gi, learner in enumerate(learners)
        ]
        self.num_steps = num_steps
        self.returns: list[defaultdict[str, float]] = [defaultdict(float) for _ in adapters]
        self.lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.games = np.zeros(self.num_envs, dtype=np.int64)
        #: per copy: agent -> None (the learner acts) or the pool snapshot that acts for it
        self.controllers: list[dict[str, Any]] = [{} for _ in adapters]
        self.seats: list[str | None] = [None] * self.num_envs
        #: per copy: the opponent agents due to act, with their raw observations
        self.opponent_due: list[dict[str, Any]] = [{} for _ in adapters]
        self.finished: list[Episode] = []
        self.started = False
        self.step_count = 0

    # --- bookkeeping --------------------------------------------------------------------------
    def slot(self, copy_index: int, agent: str) -> tuple[int, int]:
        """(group index, slot) of ``agent`` in env copy ``copy_index``."""
        return self.slots[(copy_index, agent)]

    def _begin_game(self, c: int) -> None:
        if self.selfplay is None:
            return
        seat, opponent = self.selfplay.assign(c, int(self.games[c]))
        self.seats[c] = seat
        self.controllers[c] = {agent: (None if agent == seat else opponent) for agent in self.selfplay.agents}

    def _learner_acts(self, c: int, agent: str) -> bool:
        return self.selfplay is None or self.controllers[c].get(agent) is None

    def start(self, seed: int | None) -> None:
        """Reset every copy (copy i gets seed + i) and begin fresh episodes."""
        appears: list[list[Arrival]] = [[] for _ in self.learners]
        for c, adapter in enumerate(self.adapters):
            acting = adapter.reset(None if seed is None else seed + c)
            self._begin_game(c)
            self._arrivals(c, acting, appears, set())
        self._write_appears(appears)
        self.started = True

    def _arrivals(
        self,
        c: int,
        acting: dict[str, Any],
        appears: list[list[Arrival]],
        closing: set[tuple[int, int]],
        fresh: bool = False,
    ) -> None:
        """Agents due to act in copy ``c``: opponents noted, learner agents not already observed
        (by a transition closing this step) queued to appear; ``fresh``: the copy was just reset,
        every agent appears (this step's outcomes and episode ends are stored before)."""
        vector = None
        for agent, obs in acting.items():
            if agent not in self.group_of:
                raise ValueError(f"agent {agent!r} appeared mid-run: it is not among the env's possible_agents")
            if not self._learner_acts(c, agent):
                self.opponent_due[c][agent] = obs
                continue
            gi, slot = self.slot(c, agent)
            if not fresh and ((gi, slot) in closing or self.buffers[gi].status[slot] != IDLE):
                continue
            if self.central is not None and vector is None:
                vector = self.central.global_vector(self.adapters[c])
            appears[gi].append((slot, agent, obs, vector))

    def _processed(
        self, gi: int, agents: list[str], raw: list, vectors: list
    ) -> tuple[Obs, np.ndarray | None, np.ndarray | None]:
        """Raw observations of a group's agents as stored: actor batch (normalized), critic rows, masks;
        one-line errors for an observation that no longer fits its space or is not finite."""
        learner = self.learners[gi]
        try:
            obs, masks = self.makers[gi].batch(agents, raw)
            checked = observations.as_batch(obs, learner.spec.policy_space)[0]
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ValueError(
                f"an observation of group {learner.spec.name!r} (agents {', '.join(sorted(set(agents)))}) at env step "
                f"{self.step_count} does not fit its space {describe_space(learner.spec.observation_space)}: spaces "
                f"must not change mid-run ({first_line(exc)})"
            ) from None
        if learner.config.nonfinite == "stop":
            for array in checked.values() if isinstance(checked, dict) else [checked]:
                if array.dtype.kind == "f" and not np.isfinite(array).all():
                    bad = int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])
                    raise NonFiniteError(
                        f"non-finite observation of agent {agents[bad]!r} at env step {self.step_count}"
                    )
        if learner.obs_normalizer.enabled:
            obs = learner.obs_normalizer(obs, update=True)
        critic = None if self.central is None else self.central.rows(learner.spec, agents, vectors)
        return obs, critic, masks

    def _write_appears(self, appears: list[list[Arrival]]) -> None:
        for gi, items in enumerate(appears):
            if items:
                slots = np.array([item[0] for item in items])
                obs, critic, masks = self._processed(
                    gi, [i[1] for i in items], [i[2] for i in items], [i[3] for i in items]
                )
                self.buffers[gi].write_obs(slots, obs, critic, masks, starts=True)

    # --- collection ---------------------------------------------------------------------------
    def collect(self, generators: list[torch.Generator]) -> int:
        """Run ``num_steps`` env steps in every copy; returns the learner's agent steps (actions taken)."""
        actors = [GroupActor(learner) for learner in self.learners]
        taken = 0
        for _ in range(self.num_steps):
            taken += self.step(actors, generators)
        for actor, buffer in zip(actors, self.buffers, strict=False):
            if buffer.state_size:  # the bootstrap values at the cut, from the carried states
                slots = np.flatnonzero(buffer.status == OBSERVED)
                if len(slots):
                    obs, critic, _ = buffer.current(slots)
                    state, starts = buffer.acting_state(slots)
                    buffer.values[buffer.ptr[slots], slots] = actor.value(obs, critic, state, starts)
        if not taken:
            raise RuntimeError("a rollout in which no agent acted: the env copies have no agents due to act")
        return taken

    def step(self, actors: list[GroupActor], generators: list[torch.Generator]) -> int:
        """One env step in every copy; returns the learner's agent steps (actions taken)."""
        actions, taken = self._groups_act(actors, generators)
        if self.selfplay is not None:
            self._opponents_act(actions, generators[0])
        closes, ends, appears = self._step_copies(actions)
        for gi, items in enumerate(closes):
            if items:
                self._store_outcomes(gi, items, actors[gi])
        for gi, ended in enumerate(ends):
            if ended:
                self.buffers[gi].end_without_outcome(np.array(ended))
                self.learners[gi].reward_scaler.returns[ended] = 0.0
        self._write_appears(appears)
        self.step_count += 1
        return taken

    def _groups_act(
        self, actors: list[GroupActor], generators: list[torch.Generator]
    ) -> tuple[list[dict[str, Any]], int]:
        """Every group acts for its due agents (one batch per group): (per copy: agent -> env
        action, the number of actions taken); the actions are written to the groups' buffers."""
        actions: list[dict[str, Any]] = [{} for _ in self.adapters]
        taken = 0
        for gi, (actor, buffer) in enumerate(zip(actors, self.buffers, strict=False)):
            slots = buffer.due()
            if not len(slots):
                continue
            obs, critic, masks = buffer.current(slots)
            if masks is not None:
                self._check_masks(masks, actor.distribution, partial(self._slot_owner, gi, slots))
            if buffer.state_size:
                chosen, params, values, new_state = actor.step(
                    obs, critic, masks, *buffer.acting_state(slots), generators[gi]
                )
                buffer.write_actions(slots, chosen, params, values, new_state)
            else:
                chosen, params = actor(obs, masks, generators[gi])
                buffer.write_actions(slots, chosen, params)
            agents = self.learners[gi].spec.agents
            for slot, action in zip(slots.tolist(), env_action_rows(actor.distribution, chosen), strict=False):
                actions[slot // len(agents)][agents[slot % len(agents)]] = action
            taken += len(slots)
        return actions, taken

    def _step_copies(
        self, actions: list[dict[str, Any]]
    ) -> tuple[list[list[Closing]], list[list[int]], list[list[Arrival]]]:
        """Step every copy that has actions (a copy whose episode is over is reset at once): per
        group, (the transitions closing, the slots whose episode ended without an outcome, the
        agents that (re)appear)."""
        closes: list[list[Closing]] = [[] for _ in self.learners]
        closing: set[tuple[int, int]] = set()
        ends: list[list[int]] = [[] for _ in self.learners]
        appears: list[list[Arrival]] = [[] for _ in self.learners]
        for c, adapter in enumerate(self.adapters):
            if not actions[c]:
                continue
            try:
                outcomes, acting, over = adapter.step(actions[c])
            except Exception as exc:  # whatever the env raises, training cannot go on from here
                raise EnvStepError(
                    f"env copy {c} raised {type(exc).__name__} in step(): {first_line(exc, '')}"
                ) from exc
            self.lengths[c] += 1
            vector = None
            for outcome in outcomes:
                self.returns[c][outcome.agent] += outcome.reward
                if not self._learner_acts(c, outcome.agent):
                    continue
                if self.central is not None and vector is None:
                    vector = self.central.global_vector(adapter)
                gi, slot = self.slot(c, outcome.agent)
                closes[gi].append((slot, outcome, vector))
                closing.add((gi, slot))
            if over:
                self._end_episode(c, ends)
                acting = adapter.reset(None)
                self._begin_game(c)
            self._arrivals(c, acting, appears, closing, fresh=over)
        return closes, ends, appears

    def _store_outcomes(self, gi: int, items: list[Closing], actor: GroupActor) -> None:
        """Close group ``gi``'s transitions of this step in one batch: rewards (scaled where the
        group scales them), episode ends and the observations that follow."""
        slots = np.array([slot for slot, _, _ in items])
        outcomes = [outcome for _, outcome, _ in items]
        obs, critic, masks = self._processed(
            gi, [o.agent for o in outcomes], [o.next_obs for o in outcomes], [v for _, _, v in items]
        )
        rewards = np.array([o.reward for o in outcomes], dtype=np.float32)
        if not np.isfinite(rewards).all():
            bad = outcomes[int(np.flatnonzero(~np.isfinite(rewards))[0])].agent
            raise NonFiniteError(f"non-finite reward of agent {bad!r} at env step {self.step_count}")
        done = np.array([o.terminated or o.truncated for o in outcomes])
        buffer = self.buffers[gi]
        scaler = self.learners[gi].reward_scaler
        if scaler.enabled:  # the running discounted return per slot: clippo's RewardScaler over the slots
            full = np.zeros(buffer.slots, dtype=np.float32)
            full[slots] = rewards
            closing_now = np.zeros(buffer.slots, dtype=bool)
            closing_now[slots] = True
            ending = np.zeros(buffer.slots, dtype=bool)
            ending[slots[done]] = True
            rewards = scaler(full, ending, closing_now)[slots]
        buffer.close(
            slots,
            rewards,
            np.array([o.terminated for o in outcomes]),
            np.array([o.truncated for o in outcomes]),
            obs,
            critic,
            masks,
        )
        if buffer.state_size and done.any():
            self._bootstrap_final(buffer, actor, slots[done])

    @staticmethod
    def _bootstrap_final(buffer: SlotBuffer, actor: GroupActor, ended: np.ndarray) -> None:
        """A truncation bootstraps from the final observation's value: the recurrent critic's,
        from the state after the agent's last action (written over the values of ``ended``'s
        last rows)."""
        rows = buffer.ptr[ended] - 1
        final = map_obs(operator.itemgetter((rows, ended)), buffer.obs)
        values = actor.value(
            final,
            None if buffer.critic is None else buffer.critic[rows, ended],
            buffer.carried[ended],
            np.zeros(len(ended), dtype=bool),
        )
        buffer.values[rows, ended] = values

    def _end_episode(self, c: int, ends: list[list[int]]) -> None:
        """Copy ``c``'s episode is over: record it; learner agents still awaiting an outcome or
        an action are ended (after this step's outcomes are stored)."""
        seat = self.seats[c]
        opponent: OpponentRef | None = None
        result = None
        if self.selfplay is not None:
            assert seat is not None  # _begin_game gave every self-play game a seat
            opponent = OpponentRef.of(
                self.controllers[c].get(
                    self.selfplay.agents[0] if seat != self.selfplay.agents[0] else self.selfplay.agents[1]
                )
            )
            result = game_result(self.returns[c].get(seat, 0.0))  # (recorded after the rollout, every rank's)
        self.finished.append(Episode(dict(self.returns[c]), int(self.lengths[c]), seat, opponent, result))
        self.returns[c] = defaultdict(float)
        self.lengths[c] = 0
        self.games[c] += 1
        self.opponent_due[c] = {}
        for agent in self.group_of:
            gi, slot = self.slot(c, agent)
            if self.buffers[gi].status[slot] != IDLE:
                ends[gi].append(slot)

    def _check_masks(self, masks: np.ndarray, distribution, where: Callable[[int], tuple[int, str]]) -> None:
        """One line naming the agent (``where(row)``: its env copy and name) whose mask allows no action."""
        bad = first_invalid_row(masks, component_starts(distribution))
        if bad is not None:
            c, agent = where(bad)
            raise ActionMaskError(
                f"agent {agent!r} of env copy {c} has no valid action at env step {self.step_count}: its action "
                "mask is all false"
            )

    def _slot_owner(self, gi: int, slots: np.ndarray, row: int) -> tuple[int, str]:
        """(env copy, agent) of group ``gi``'s slot ``slots[row]``."""
        agents, slot = self.learners[gi].spec.agents, int(slots[row])
        return slot // len(agents), agents[slot % len(agents)]

    def _opponents_act(self, actions: list[dict[str, Any]], generator: torch.Generator) -> None:
        """Pool snapshots act for the opponents due (batched per snapshot), the random player
        with the self-play rng (copies in order, so runs are reproducible)."""
        by_snapshot: dict[int, list[tuple[int, str, Any]]] = defaultdict(list)
        snapshots = {}
        for c, due in enumerate(self.opponent_due):
            for agent, obs in due.items():
                snapshot = self.controllers[c][agent]
                snapshots[id(snapshot)] = snapshot
                by_snapshot[id(snapshot)].append((c, agent, obs))
            due.clear()
        assert self.selfplay is not None  # only self-play has opponents
        learner = self.learners[0]
        for key, items in by_snapshot.items():
            obs, masks = self.makers[0].batch([a for _, a, _ in items], [o for _, _, o in items])
            if snapshots[key] is RANDOM:
                assert masks is not None  # self-play games' observations carry action masks
                distribution = learner.model.distribution
                self._check_masks(masks, distribution, partial(_item_owner, items))
                chosen = self.selfplay.random_actions(masks)
            else:
                model = self.selfplay.opponent_model(snapshots[key], learner.model)
                distribution = model.distribution
                if learner.obs_normalizer.enabled:
                    obs = learner.obs_normalizer(obs, update=False)
                with torch.inference_mode():
                    tensors = observations.to_tensor(combine(obs, None, learner.centralized), learner.device)
                    mask_tensor = None if masks is None else torch.from_numpy(masks).to(learner.device)
                    noise = model.distribution.noise((len(items),), generator, learner.device)
                    chosen = model.distribution.sample(model.actor(tensors, mask_tensor), noise).cpu().numpy()
            for (c, agent, _), action in zip(items, env_action_rows(distribution, chosen), strict=False):
                actions[c][agent] = action

    def pop_finished(self) -> list[Episode]:
        finished, self.finished = self.finished, []
        return finished

    def close(self) -> None:
        for adapter in self.adapters:
            adapter.close()

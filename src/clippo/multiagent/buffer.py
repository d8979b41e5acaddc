"""Per-agent rollout storage of one policy group: each (env copy, agent) pair is a *slot*, a
column of its own, written at its own pace.

Agents act at different times (turn-based games), leave early or join late, so a slot's rows
are its own transitions in order, not env steps. The layout is that of
``clippo.rollout.runner.RolloutBuffer`` (and of Gymnasium's next-step autoreset), so that
``clippo.core.advantages.compute_gae`` applies unchanged: when an agent's episode ends, the row after
its last transition holds its *final* observation, marked invalid (not a transition), whose
value a truncation bootstraps from; its next episode starts on the row after that.

A slot's current row (``ptr``) is in one of three states: ``IDLE`` (nothing yet: the agent is
not in an episode), ``OBSERVED`` (its observation is stored: it is due to act) or ``ACTED``
(its action is stored: the transition waits for its outcome, e.g. the other player's move).
Only rows whose outcome arrived are ``valid``: no transition without its reward enters a batch.
At the end of a rollout the current row is the bootstrap of the row before it (cut there, as
the rollout cut of the single-agent buffer), and moves to row 0 of the next rollout, an open
transition with it.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from gymnasium import spaces

from clippo.core import observations
from clippo.core.advantages import compute_gae
from clippo.core.observations import Obs, map_obs
from clippo.networks.distributions import ActionDistribution
from clippo.rollout.buffer import CRITIC_CHUNK_ROWS, Batch, SequenceBatch

IDLE, OBSERVED, ACTED = 0, 1, 2


def combine(actor_obs: Obs, critic: np.ndarray | torch.Tensor | None, centralized: bool) -> Obs:
    """The model's observation: the actor's alone (local critic), or the centralized model's
    ``Dict(actor=..., critic=...)`` in flat-key form (``critic`` None: for acting, which reads
    only the actor's field)."""
    if not centralized:
        return actor_obs
    out = (
        {f"actor.{key}": value for key, value in actor_obs.items()}
        if isinstance(actor_obs, dict)
        else {"actor": actor_obs}
    )
    if critic is not None:
        out["critic"] = critic
    return out


class SlotBuffer:
    """``[rows, slots]`` arrays for one rollout of one group (see the module docstring).

    ``rows`` must hold a slot's busiest rollout: one carried row, then per env step at most one
    transition plus one final-observation row."""

    def __init__(
        self,
        num_steps: int,
        slots: int,
        actor_space: spaces.Space,
        critic_size: int | None,
        distribution: ActionDistribution,
        masked: bool,
        device: torch.device,
        state_size: int = 0,
    ) -> None:
        rows = 2 * num_steps + 2
        self.rows, self.slots = rows, slots
        self.device = device
        self.distribution = distribution
        shape = (rows, slots)
        self.obs = observations.allocate(actor_space, shape)
        self.critic = np.zeros((*shape, critic_size), dtype=np.float32) if critic_size is not None else None
        numpy_dtype = np.int64 if distribution.action_dtype == torch.int64 else np.float32
        self.actions = np.zeros(shape + tuple(distribution.action_shape), dtype=numpy_dtype)
        self.params = np.zeros((*shape, distribution.param_size), dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.valid = np.zeros(shape, dtype=bool)
        self.masks = np.ones((*shape, distribution.num_outputs), dtype=bool) if masked else None
        self.ptr = np.zeros(slots, dtype=np.int64)
        self.status = np.zeros(slots, dtype=np.int8)
        # A recurrent policy's: each row's state before acting on it and whether its observation
        # begins an episode; each slot's carried state (after its last action) and the state
        # before row 0 (where the update's replay of the slot's column starts).
        self.state_size = state_size
        if state_size:
            self.states = np.zeros((*shape, state_size), dtype=np.float32)
            self.starts = np.zeros(shape, dtype=bool)
            self.carried = np.zeros((slots, state_size), dtype=np.float32)
            self.initial_state = np.zeros((slots, state_size), dtype=np.float32)

    # --- writing --------------------------------------------------------------------------------
    def write_obs(
        self, slots: np.ndarray, obs: Obs, critic: np.ndarray | None, masks: np.ndarray | None, starts: bool = False
    ) -> None:
        """Store the observations the agents of ``slots`` are now due to act on (``starts``: the
        first of an episode, where a recurrent state is reset)."""
        rows = self.ptr[slots]
        if self.state_size:
            self.starts[rows, slots] = starts
        if rows.max(initial=0) >= self.rows:  # pragma: no cover - the row bound above rules it out
            raise RuntimeError("SlotBuffer overflow")
        map_obs(lambda store, value: store.__setitem__((rows, slots), value), self.obs, obs)
        if self.critic is not None:
            self.critic[rows, slots] = critic
        if self.masks is not None:
            self.masks[rows, slots] = masks
        self.status[slots] = OBSERVED

    def due(self) -> np.ndarray:
        """The slots whose agent is due to act."""
        return np.flatnonzero(self.status == OBSERVED)

    def current(self, slots: np.ndarray) -> tuple[Obs, np.ndarray | None, np.ndarray | None]:
        """(actor observations, critic inputs, masks) of the current rows of ``slots``."""
        rows = self.ptr[slots]
        obs = map_obs(lambda store: store[rows, slots], self.obs)
        critic = None if self.critic is None else self.critic[rows, slots]
        masks = None if self.masks is None else self.masks[rows, slots]
        return obs, critic, masks

    def write_actions(
        self, slots: np.ndarray, actions: np.ndarray, params: np.ndarray, values: np.ndarray | None = None,
        new_state: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """Store the actions taken (a recurrent policy: with the values it gave and its new state)."""
        rows = self.ptr[slots]
        self.actions[rows, slots] = actions
        self.params[rows, slots] = params
        if self.state_size:
            self.values[rows, slots] = values
            self.states[rows, slots] = self.carried[slots]
            self.carried[slots] = new_state
        self.status[slots] = ACTED

    def acting_state(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A recurrent policy's (state before, episode-start flags) for the current rows of ``slots``."""
        return self.carried[slots], self.starts[self.ptr[slots], slots]

    def close(
        self,
        slots: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: Obs,
        critic: np.ndarray | None,
        masks: np.ndarray | None,
    ) -> None:
        """The outcomes of the agents of ``slots``: their transitions become valid, and the next
        observation is stored (due to act on it, or as the final observation of an ended episode)."""
        if np.any(self.status[slots] != ACTED):  # pragma: no cover - the runner's bookkeeping rules it out
            raise RuntimeError("an outcome for an agent that has not acted")
        rows = self.ptr[slots]
        self.rewards[rows, slots] = rewards
        self.terminated[rows, slots] = terminated
        self.truncated[rows, slots] = truncated
        self.valid[rows, slots] = True
        self.ptr[slots] += 1
        done = terminated | truncated
        if masks is not None and done.any():
            masks = masks.copy()
            masks[done] = True  # a final state's mask (all false in a finished game) is never acted on
        self.write_obs(slots, next_obs, critic, masks, starts=False)
        ended = slots[done]
        self.ptr[ended] += 1  # the final observation's row stays invalid
        self.status[ended] = IDLE

    # --- after the rollout ----------------------------------------------------------------------
    def used_rows(self) -> int:
        return int(self.ptr.max(initial=0)) + 1

    def model_obs(self, rows: slice | np.ndarray, slots=slice(None)) -> Obs:
        actor = map_obs(lambda store: store[rows, slots], self.obs)
        return combine(actor, None if self.critic is None else self.critic[rows, slots], self.critic is not None)

    @torch.no_grad()
    def estimate_values(self, value_fn) -> None:
        """The critic's value of every stored observation (``value_fn``: the model's ``value``)."""
        used = self.used_rows()
        flat = map_obs(lambda a: a.reshape(-1, *a.shape[2:]), self.model_obs(slice(0, used)))
        total = used * self.slots
        values = np.empty(total, dtype=np.float32)
        for start in range(0, total, CRITIC_CHUNK_ROWS):
            rows = slice(start, start + CRITIC_CHUNK_ROWS)
            chunk = map_obs(operator.itemgetter(rows), flat)
            values[rows] = value_fn(observations.to_tensor(chunk, self.device)).cpu().numpy()
        self.values[:used] = values.reshape(used, self.slots)
        self.values[used:] = 0.0

    def sequence_batch(self, advantages: torch.Tensor, returns: torch.Tensor) -> SequenceBatch:
        """A recurrent policy's batch: every slot's column a sequence, replayed from the state
        before its row 0 (``clippo.rollout.runner.SequenceBatch``; rows that are not transitions stay in
        place, ``valid`` False, so that time stays aligned)."""
        used = self.used_rows()
        device = self.device
        # copies: the buffer's arrays are reused (carry_over) before the update reads the batch
        tensor = lambda a: torch.from_numpy(a[:used].copy()).to(device)  # noqa: E731
        with torch.no_grad():
            logprobs = self.distribution.log_prob(
                tensor(self.params).reshape(used * self.slots, -1),
                tensor(self.actions).reshape(used * self.slots, *self.actions.shape[2:]),
            ).reshape(used, self.slots)
        return SequenceBatch(
            obs=map_obs(lambda a: torch.from_numpy(a.copy()).to(device), self.model_obs(slice(0, used))),
            actions=tensor(self.actions),
            logprobs=logprobs,
            values=tensor(self.values),
            advantages=advantages[:used].to(device),
            returns=returns[:used].to(device),
            masks=None if self.masks is None else tensor(self.masks),
            starts=tensor(self.starts),
            valid=tensor(self.valid),
            initial_state=torch.from_numpy(self.initial_state.copy()).to(device),
        )

    def cut(self) -> np.ndarray:
        """Where the rollout cuts a slot's episode: the last transition before a current row
        that is not IDLE (it bootstraps from that row's value; nothing flows back past it)."""
        cut = np.zeros_like(self.valid)
        live = np.flatnonzero((self.status != IDLE) & (self.ptr > 0))
        before = self.ptr[live] - 1
        keep = self.valid[before, live] & ~(self.terminated[before, live] | self.truncated[before, live])
        cut[before[keep], live[keep]] = True
        return cut

    def advantages(self, gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over each slot's column (``compute_gae``, unchanged): truncations and the rollout
        cut bootstrap, terminations do not; invalid rows give meaningless values, dropped later."""
        tensor = lambda a: torch.from_numpy(a)  # noqa: E731
        return compute_gae(
            tensor(self.rewards), tensor(self.values), tensor(self.terminated), tensor(self.truncated | self.cut()),
            torch.zeros(self.slots), gamma=gamma, gae_lambda=gae_lambda,
        )  # fmt: skip

    def transitions(self) -> int:
        return int(self.valid.sum())

    def flatten(self, advantages: torch.Tensor, returns: torch.Tensor) -> Batch:
        """The valid transitions as one flat batch (slot-major: each agent's in time order); for a
        recurrent policy, the slots' columns as sequences."""
        if self.state_size:
            return self.sequence_batch(advantages, returns)
        rows, slots = np.nonzero(self.valid.T)[::-1]  # slot-major order
        device = self.device
        obs = map_obs(lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device), self.model_obs(rows, slots))
        actions = torch.from_numpy(self.actions[rows, slots]).to(device)
        params = torch.from_numpy(self.params[rows, slots]).to(device)
        with torch.no_grad():
            logprobs = self.distribution.log_prob(params, actions)
        index = torch.from_numpy(rows * self.slots + slots)
        return Batch(
            obs=obs,
            actions=actions,
            logprobs=logprobs,
            values=torch.from_numpy(self.values[rows, slots]).to(device),
            advantages=advantages.reshape(-1)[index].to(device),
            returns=returns.reshape(-1)[index].to(device),
            masks=None if self.masks is None else torch.from_numpy(self.masks[rows, slots]).to(device),
        )

    def end_without_outcome(self, slots: np.ndarray) -> None:
        """The episode of the agents of ``slots`` ended without an outcome for their current row
        (an open action is dropped: no transition without its reward); their last transition,
        if it did not end the episode, is truncated there, bootstrapping from that row."""
        slots = slots[self.status[slots] != IDLE]
        later = slots[self.ptr[slots] > 0]
        before = self.ptr[later] - 1
        keep = self.valid[before, later] & ~(self.terminated[before, later] | self.truncated[before, later])
        self.truncated[before[keep], later[keep]] = True
        self.ptr[slots] += 1
        self.status[slots] = IDLE

    def carry_over(self) -> None:
        """Start the next rollout: each slot's current row (observed, or acted and awaiting its
        outcome) becomes row 0; everything else is cleared."""
        live = np.flatnonzero(self.status != IDLE)
        rows = self.ptr[live]
        arrays = [self.actions, self.params]
        if self.critic is not None:
            arrays.append(self.critic)
        if self.masks is not None:
            arrays.append(self.masks)
        if self.state_size:
            # the state before row 0: before the open action for an acted row, the carried one
            # for an observed row (zeros for idle slots: their next row starts an episode)
            acted = self.status[live] == ACTED
            self.initial_state[:] = 0.0
            self.initial_state[live] = np.where(acted[:, None], self.states[rows, live], self.carried[live])
            arrays += [self.states, self.starts, self.values]  # (values come from acting, with the state)
        for array in arrays:
            array[0, live] = array[rows, live]
        map_obs(lambda store: store.__setitem__((0, live), store[rows, live]), self.obs)
        self.valid[:] = False
        self.rewards[:] = 0.0
        self.terminated[:] = False
        self.truncated[:] = False
        self.ptr[:] = 0

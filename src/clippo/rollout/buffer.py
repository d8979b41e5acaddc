"""Rollout storage: one rollout's transitions, then the batch the update trains on.

``RolloutBuffer`` keeps what the env returns in its own dtype (uint8 frames stay uint8 until the
encoder divides by 255), the actions, log-probabilities, values and done flags of every step; the
critic's values and GAE follow once per rollout. ``Batch`` is a rollout flattened for minibatch
steps; ``SequenceBatch`` keeps whole env sequences in time order for recurrent policies.
``clippo.fastpath.rollout.FlatRolloutBuffer`` is this buffer for flat observations on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from clippo.core import observations
from clippo.core.observations import Obs, map_obs
from clippo.networks.distributions import ActionDistribution
from clippo.networks.policy import ActorCritic, Sequences

#: The critic runs over a rollout's observations in chunks of this many rows (bounded memory for
#: image encoders, whose activations are large).
CRITIC_CHUNK_ROWS = 1024


@dataclass
class Batch:
    """A rollout flattened to ``[batch]`` with autoreset steps dropped: what the update trains on.
    ``obs`` is a tensor, or a dict of tensors for Dict/Tuple observation spaces; ``masks`` the
    action masks each action was chosen under (None for envs without masks)."""

    obs: Obs
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.actions.shape[0]

    def __getitem__(self, index: torch.Tensor | slice) -> Batch:
        # Field by field, written out: a PPO update indexes every minibatch, and at a hundred rows a
        # generic walk over the fields cost as much as the indexing itself (issue #36).
        obs = self.obs[index] if isinstance(self.obs, torch.Tensor) else map_obs(lambda v: v[index], self.obs)
        masks = None if self.masks is None else self.masks[index]
        return Batch(
            obs,
            self.actions[index],
            self.logprobs[index],
            self.values[index],
            self.advantages[index],
            self.returns[index],
            masks,
        )

    def samples(self, name: str, index: torch.Tensor | None = None) -> torch.Tensor:
        """One per-sample field (``logprobs``, ``values``, ``advantages``, ``returns``) as a flat
        vector of the transitions, of ``self[index]`` where given."""
        value = getattr(self, name)
        return value if index is None else value[index]


@dataclass(kw_only=True)  # (keyword-only: Batch's last field has a default, these three have none)
class SequenceBatch(Batch):
    """A rollout cut into ``[length, num_seq]`` time-major sequences for a recurrent policy
    (``length``: the rollout's or the BPTT chunk's; sequence ``k * num_envs + i`` is chunk ``k``
    of env ``i``), autoreset steps kept in place (``valid`` False) so that time stays aligned.
    Indexing picks sequences; ``initial_state`` is each sequence's stored state before its step 0."""

    starts: torch.Tensor
    valid: torch.Tensor
    initial_state: torch.Tensor

    def __len__(self) -> int:
        return self.starts.shape[1]

    def __getitem__(self, index: torch.Tensor | slice) -> SequenceBatch:
        values: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is not None:
                value = value[index] if name == "initial_state" else map_obs(lambda v: v[:, index], value)
            values[name] = value
        return SequenceBatch(**values)

    def samples(self, name: str, index: torch.Tensor | None = None) -> torch.Tensor:
        value, valid = getattr(self, name), self.valid
        if index is not None:
            value, valid = value[:, index], valid[:, index]
        return value[valid]

    @property
    def sequences(self) -> Sequences:
        return Sequences(self.starts, self.initial_state, self.valid)


def step_rows(storage: Obs, t: int) -> Obs:
    """Row ``t`` (one step, every env) of ``[steps, envs, ...]`` storage, as views."""
    return map_obs(lambda array: array[t], storage)


class RolloutBuffer:
    """Preallocated ``[num_steps, num_envs, ...]`` arrays for one rollout (``values`` are filled
    afterwards by ``estimate_values`` unless the runner stored them while acting).

    Stored as numpy arrays (writing a row costs a fraction of a torch indexed copy), viewed as
    tensors for the advantage computation and the update. ``valid[t, i]`` is False where step
    ``t`` of env ``i`` was an autoreset step: the env ignored the action and returned the first
    observation of a new episode, so it is not a transition. ``terminated`` is what the
    advantages treat as terminal: the env's terminations, and lost lives with ``episodic_life``.

    ``all_obs`` holds ``num_steps + 1`` rows of observations in their own dtypes (uint8 frames
    stay uint8), the last one the observation after the last step (the bootstrap at the cut).
    With ``masked``, ``all_masks`` holds the action mask of each of those observations in the
    same layout (``masks``: the first ``num_steps``, those the actions were chosen under).
    ``actions`` are stored flat in ``distribution.action_dtype`` (``action_shape`` each).

    For a recurrent policy (``state_size`` > 0), ``states[t]`` is the state the policy held
    before step ``t`` and ``starts[t]`` whether observation ``t`` began an episode (the state was
    zeroed there); ``flatten`` then cuts the rollout into sequences of ``sequence_length`` steps
    (the whole rollout by default), each replayed from its stored state.
    """

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        observation_space: spaces.Space,
        distribution: ActionDistribution,
        device,
        masked: bool = False,
        state_size: int = 0,
        sequence_length: int | None = None,
    ) -> None:
        shape = (num_steps, num_envs)
        self.device = torch.device(device)
        self.all_obs = observations.allocate(observation_space, (num_steps + 1, num_envs))
        self.obs = map_obs(lambda array: array[:-1], self.all_obs)
        numpy_dtype = np.int64 if distribution.action_dtype == torch.int64 else np.float32
        self.actions = np.zeros(shape + tuple(distribution.action_shape), dtype=numpy_dtype)
        self.logprobs = np.zeros(shape, dtype=np.float32)
        self.params = np.zeros((*shape, distribution.param_size), dtype=np.float32)  # the actor's logits or means
        self.values = np.zeros(shape, dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.raw_rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.life_lost = np.zeros(shape, dtype=bool)
        self.valid = np.ones(shape, dtype=bool)
        self.all_masks = np.ones((num_steps + 1, num_envs, distribution.num_outputs), dtype=bool) if masked else None
        self.masks = None if self.all_masks is None else self.all_masks[:-1]
        self.last_value = np.zeros(num_envs, dtype=np.float32)
        #: set by a runner that stored ``values`` while acting (a shared encoder computes both at once)
        self.values_stored = False
        #: set by a runner that stored ``last_value`` too (a recurrent critic needs the carried state)
        self.bootstrap_stored = False
        self.states = np.zeros((*shape, state_size), dtype=np.float32) if state_size else None
        self.starts = np.zeros(shape, dtype=bool) if state_size else None
        self.sequence_length = sequence_length or num_steps
        if num_steps % self.sequence_length:
            raise ValueError(f"sequence_length={sequence_length} is invalid: it must divide num_steps={num_steps}")

    @property
    def nbytes(self) -> int:
        """Memory held by this buffer's arrays."""
        arrays = list(self.all_obs.values()) if isinstance(self.all_obs, dict) else []
        arrays += [v for v in vars(self).values() if isinstance(v, np.ndarray) and v.base is None]
        return sum(a.nbytes for a in arrays)

    @torch.no_grad()
    def estimate_values(self, policy: ActorCritic) -> None:
        """Fill ``values`` (unless stored while acting) and ``last_value`` with the critic's
        estimates: acting needs only the actor, so the critic runs here once per rollout on
        every stored observation plus the bootstrap one, in large batches."""
        if self.bootstrap_stored:
            return
        _num_steps, num_envs = self.values.shape
        rows = self.all_obs if not self.values_stored else map_obs(lambda a: a[-1:], self.all_obs)
        flat = map_obs(lambda a: a.reshape(-1, *a.shape[2:]), rows)
        total = observations.batch_size(flat)
        values = np.empty(total, dtype=np.float32)
        for start in range(0, total, CRITIC_CHUNK_ROWS):
            rows_here = slice(start, start + CRITIC_CHUNK_ROWS)
            chunk = map_obs(lambda a, rows_here=rows_here: a[rows_here], flat)
            values[start : start + CRITIC_CHUNK_ROWS] = (
                policy.value(observations.to_tensor(chunk, self.device)).cpu().numpy()
            )
        if not self.values_stored:
            self.values[:] = values[:-num_envs].reshape(self.values.shape)
        self.last_value[:] = values[-num_envs:]

    @torch.no_grad()
    def fill_logprobs(self, distribution: ActionDistribution) -> None:
        """Fill ``logprobs`` with the log-probabilities of the stored actions under the stored
        actor outputs (what the rollout acted on): one batched call instead of one per step."""
        logprobs = distribution.log_prob(
            self.tensor("params").reshape(-1, self.params.shape[-1]),
            self.tensor("actions").reshape(-1, *self.actions.shape[2:]),
        )
        self.logprobs[:] = logprobs.reshape(self.logprobs.shape).cpu().numpy()

    def tensor(self, name: str) -> torch.Tensor:
        """One stored array as a tensor on the training device (no copy on the CPU)."""
        return torch.from_numpy(getattr(self, name)).to(self.device)

    def flatten(self, advantages: torch.Tensor, returns: torch.Tensor) -> Batch:
        """The valid transitions as one flat batch (time-major order); for a recurrent policy,
        the rollout as sequences (``SequenceBatch``)."""
        if self.states is not None:
            return self.sequence_batch(advantages, returns)
        valid = self.valid.reshape(-1)
        if self.device.type == "cpu":
            # numpy's boolean indexing: a fraction of torch's on a rollout's few hundred rows (issue #36)
            def take(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(a.reshape(-1, *a.shape[2:])[valid])

            def take_tensor(t: torch.Tensor) -> torch.Tensor:
                return take(t.numpy())
        else:
            mask = torch.from_numpy(valid).to(self.device)

            def take(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(a).to(self.device).reshape(-1, *a.shape[2:])[mask]

            def take_tensor(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(-1, *t.shape[2:])[mask]

        return Batch(
            obs=map_obs(take, self.obs),
            actions=take(self.actions),
            logprobs=take(self.logprobs),
            values=take(self.values),
            advantages=take_tensor(advantages),
            returns=take_tensor(returns),
            masks=None if self.masks is None else take(self.masks),
        )

    def sequence_batch(self, advantages: torch.Tensor, returns: torch.Tensor) -> SequenceBatch:
        """The rollout as ``[sequence_length, (num_steps / sequence_length) * num_envs]`` sequences."""
        num_steps, num_envs = self.values.shape
        length = self.sequence_length
        chunks = num_steps // length

        def cut(value: torch.Tensor) -> torch.Tensor:  # [steps, envs, ...] -> [length, chunks * envs, ...]
            rest = value.shape[2:]
            return (
                value.reshape(chunks, length, num_envs, *rest).transpose(0, 1).reshape(length, chunks * num_envs, *rest)
            )

        tensors = {name: self.tensor(name) for name in ("actions", "logprobs", "values", "starts", "valid")}
        return SequenceBatch(
            obs=map_obs(lambda a: cut(torch.from_numpy(a).to(self.device)), self.obs),
            actions=cut(tensors["actions"]),
            logprobs=cut(tensors["logprobs"]),
            values=cut(tensors["values"]),
            advantages=cut(advantages),
            returns=cut(returns),
            masks=None if self.masks is None else cut(self.tensor("masks")),
            starts=cut(tensors["starts"]),
            valid=cut(tensors["valid"]),
            initial_state=self.tensor("states")[::length].reshape(chunks * num_envs, -1),
        )

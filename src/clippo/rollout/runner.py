"""Rollout storage and collection: run the current policy in the vector env and store transitions.

This is the general path, for every encoder, observation space and device: observations are
stored as the env returns them (each field in its own dtype), and the torch policy acts on
them. ``clippo.fastpath`` replaces both pieces for flat observations and MLPs on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from clippo.core import observations
from clippo.core.errors import EnvStepError, NonFiniteError, first_line
from clippo.core.observations import Obs, map_obs
from clippo.envs.make import restore_env_state, snapshot_env_state
from clippo.networks.distributions import ActionDistribution
from clippo.networks.policy import ActorCritic, Sequences
from clippo.rollout.masking import MaskSource, policy_observation_space
from clippo.rollout.normalization import ObservationNormalizer, RewardScaler

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
        fields = (getattr(self, name) for name in self.__dataclass_fields__)
        return Batch(*(None if value is None else map_obs(lambda v: v[index], value) for value in fields))

    def samples(self, name: str, index: torch.Tensor | None = None) -> torch.Tensor:
        """One per-sample field (``logprobs``, ``values``, ``advantages``, ``returns``) as a flat
        vector of the transitions, of ``self[index]`` where given."""
        value = getattr(self, name)
        return value if index is None else value[index]


@dataclass
class SequenceBatch(Batch):
    """A rollout cut into ``[length, num_seq]`` time-major sequences for a recurrent policy
    (``length``: the rollout's or the BPTT chunk's; sequence ``k * num_envs + i`` is chunk ``k``
    of env ``i``), autoreset steps kept in place (``valid`` False) so that time stays aligned.
    Indexing picks sequences; ``initial_state`` is each sequence's stored state before its step 0."""

    starts: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    initial_state: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.starts.shape[1]

    def __getitem__(self, index: torch.Tensor | slice) -> SequenceBatch:
        values = {}
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
        self.masks = self.all_masks[:-1] if masked else None
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
            chunk = map_obs(lambda a: a[start : start + CRITIC_CHUNK_ROWS], flat)
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
        mask = self.tensor("valid").reshape(-1)
        obs = map_obs(lambda a: torch.from_numpy(a).to(self.device).reshape(-1, *a.shape[2:])[mask], self.obs)
        return Batch(
            obs=obs,
            actions=self.tensor("actions").reshape(-1, *self.actions.shape[2:])[mask],
            logprobs=self.tensor("logprobs").reshape(-1)[mask],
            values=self.tensor("values").reshape(-1)[mask],
            advantages=advantages.reshape(-1)[mask],
            returns=returns.reshape(-1)[mask],
            masks=None if self.masks is None else self.tensor("masks").reshape(-1, self.masks.shape[-1])[mask],
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


def float_sum(obs: Obs) -> float:
    """The sum of an observation batch's floating-point fields: finite exactly when they all
    are (or it overflowed); integer fields cannot hold NaN."""
    total = 0.0
    for array in obs.values() if isinstance(obs, dict) else [obs]:
        if array.dtype.kind == "f":
            total += float(array.sum(dtype=np.float64))
    return total


def nonfinite_rows(obs: Obs) -> np.ndarray:
    """Per env: whether any floating-point value of its observation is NaN or infinite."""
    arrays = [a for a in (obs.values() if isinstance(obs, dict) else [obs]) if a.dtype.kind == "f"]
    bad = np.zeros(observations.batch_size(obs), dtype=bool)
    for array in arrays:
        bad |= ~np.isfinite(array).reshape(len(array), -1).all(axis=1)
    return bad


class EnvRunner:
    """The vector env plus what carries over between rollouts.

    That is the latest observation (and its action mask, with ``action_masks``: where the env's
    masks come from, see ``clippo.rollout.masking``), which envs are due an autoreset step, each env's
    lives (with ``episodic_life``), the running return and length of each env's current
    episode (in raw, unscaled rewards: the game score, whatever the learner is trained on), and
    for a recurrent policy its state and which envs' latest observation begins an episode.
    """

    def __init__(
        self,
        envs: VectorEnv,
        obs_normalizer: ObservationNormalizer,
        reward_scaler: RewardScaler,
        nonfinite: str = "stop",
        reward_sign: bool = False,
        episodic_life: bool = False,
        action_masks: MaskSource | None = None,
    ) -> None:
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite={nonfinite!r} is invalid: choose one of stop, skip")
        self.envs = envs
        self.action_masks = action_masks
        # what the policy observes: an observation's "action_mask" key is split off as the mask
        self.observation_space = policy_observation_space(envs.single_observation_space)
        self.nonfinite = nonfinite
        self.reward_sign = reward_sign
        self.episodic_life = episodic_life
        self.poisoned = False
        self.poison_message = ""
        self.num_envs = envs.num_envs
        self.obs_normalizer = obs_normalizer
        self.reward_scaler = reward_scaler
        self.autoreset = np.zeros(self.num_envs, dtype=bool)
        self.lives = np.zeros(self.num_envs, dtype=np.int64)
        self.episode_returns = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.next_obs: Obs | None = None
        self.next_masks: np.ndarray | None = None
        self.state: torch.Tensor | None = None  # a recurrent policy's (None: zeros at the first step)
        self.episode_start = np.ones(self.num_envs, dtype=bool)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []

    def start(self, seed: int | None, reset: tuple[Any, dict[str, Any]] | None = None) -> None:
        """Reset every env (env i gets seed + i) and begin fresh episodes. ``reset``: what a
        ``reset(seed=seed)`` of the envs just returned (then they are not reset again)."""
        raw_obs, info = reset if reset is not None else self.envs.reset(seed=seed)
        if self.action_masks is not None:
            raw_obs, self.next_masks = self.action_masks.read(
                raw_obs, info, np.zeros(self.num_envs, bool), "the first step"
            )
        self.next_obs = self._normalized(observations.flatten_structure(raw_obs, self.observation_space))
        if self.episodic_life:
            self.lives = self._lives(info)
        self.autoreset[:] = False
        self.episode_start[:] = True
        self.state = None
        self.episode_returns[:] = 0.0
        self.episode_lengths[:] = 0

    def _normalized(self, obs: Obs, update: bool = True) -> Obs:
        return self.obs_normalizer(obs, update=update) if self.obs_normalizer.enabled else obs

    def _lives(self, info: dict[str, Any]) -> np.ndarray:
        if "lives" not in info:
            raise ValueError(
                "episodic_life=True is invalid for this env: its step() info has no 'lives' entry (Atari envs have one)"
            )
        return np.asarray(info["lives"], dtype=np.int64).copy()

    def _step(self, env_actions: np.ndarray) -> tuple:
        try:
            return self.envs.step(env_actions)
        except Exception as exc:  # whatever the env raises, training cannot go on from here
            raise EnvStepError(f"the environment raised {type(exc).__name__} in step(): {first_line(exc, '')}") from exc

    def begin_rollout(self, buffer: RolloutBuffer) -> None:
        """What every collection starts from, in row 0 of ``buffer`` (the observation aside):
        which envs' first step is an autoreset step, and the carried-over action mask."""
        if self.next_obs is None:
            raise RuntimeError("EnvRunner.collect() before start(): call start(seed) or load_state_dict() first")
        self.poisoned = False
        buffer.valid[0] = ~self.autoreset
        if self.action_masks is not None:
            buffer.all_masks[0] = self.next_masks

    @torch.inference_mode()
    def collect(self, policy: ActorCritic, buffer: RolloutBuffer, generator: torch.Generator) -> None:
        """Run the policy for ``num_steps`` steps in every env, storing each step into ``buffer``."""
        self.begin_rollout(buffer)
        distribution = policy.distribution
        num_steps = buffer.actions.shape[0]
        device = buffer.device
        noise = distribution.noise((num_steps, self.num_envs), generator, device)
        # A shared encoder gives the values with the actions at no extra cost.
        buffer.values_stored = policy.shared
        observations.write(step_rows(buffer.all_obs, 0), self.next_obs)
        masks = self.action_masks
        step_masks = None
        recurrent = policy.recurrent is not None
        if recurrent:
            # A recurrent critic needs the carried state: values are taken while acting.
            buffer.values_stored = buffer.bootstrap_stored = True
            state = self.state.to(device) if self.state is not None else policy.initial_state(self.num_envs, device)
            starts, autoreset = self.episode_start.copy(), self.autoreset.copy()
        for t in range(num_steps):
            obs = observations.to_tensor(step_rows(buffer.all_obs, t), device)
            if masks is not None:
                step_masks = torch.from_numpy(buffer.all_masks[t]).to(device)
            if recurrent:
                buffer.states[t] = state.cpu().numpy()
                buffer.starts[t] = starts
                params, values, state = policy.step(obs, state, torch.from_numpy(starts).to(device), step_masks)
                buffer.values[t] = values.cpu().numpy()
            elif policy.shared:
                params, values = policy(obs, step_masks)
                buffer.values[t] = values.cpu().numpy()
            else:
                params = policy.actor(obs, step_masks)
            actions = distribution.sample(params, noise[t]).cpu().numpy()
            buffer.params[t] = params.cpu().numpy()  # (masked: the log-probabilities follow from them)
            buffer.actions[t] = actions

            raw_obs, rewards, terminated, truncated, info = self._step(distribution.to_env(actions))
            if masks is not None:  # the mask of the returned observation, used at the next step
                raw_obs, _ = masks.read(
                    raw_obs, info, terminated | truncated, f"rollout step {t + 1}", buffer.all_masks[t + 1]
                )
            raw_obs = observations.flatten_structure(raw_obs, self.observation_space)
            if not math.isfinite(float_sum(raw_obs) + float(np.sum(rewards, dtype=np.float64))):
                raw_obs, rewards = self._handle_nonfinite(raw_obs, rewards)
            observations.write(step_rows(buffer.all_obs, t + 1), self._normalized(raw_obs))
            buffer.raw_rewards[t] = rewards
            buffer.terminated[t] = terminated
            buffer.truncated[t] = truncated
            if self.episodic_life:
                lives = self._lives(info)
                buffer.life_lost[t] = lives < self.lives
                self.lives = lives
            learned = np.sign(rewards) if self.reward_sign else rewards
            if self.reward_scaler.enabled:  # the running return needs to know, step by step, which envs are mid-episode
                dones = terminated | truncated
                buffer.rewards[t] = self.reward_scaler(learned, dones, ~self.autoreset)
                self.autoreset = dones
            else:
                buffer.rewards[t] = learned
            if recurrent:  # after an autoreset step, the observation begins an episode
                starts, autoreset = autoreset, terminated | truncated
        self.next_obs = map_obs(np.copy, step_rows(buffer.all_obs, num_steps))
        if recurrent:
            # The bootstrap value at the cut, from the state carried into the next rollout.
            obs = observations.to_tensor(self.next_obs, device)
            next_masks = None if masks is None else torch.from_numpy(buffer.all_masks[num_steps]).to(device)
            _, last_value, _ = policy.step(obs, state, torch.from_numpy(starts).to(device), next_masks)
            buffer.last_value[:] = last_value.cpu().numpy()
            self.state, self.episode_start = state, starts
        if masks is not None:
            self.next_masks = buffer.all_masks[num_steps].copy()
        self.finish_rollout(buffer, distribution)

    def finish_rollout(self, buffer: RolloutBuffer, distribution: ActionDistribution) -> None:
        """After the steps: valid flags, the autoreset state carried over, finished episodes,
        lost lives made terminal for learning, and the stored actions' log-probabilities."""
        # An env's step is an autoreset step (not a transition) after its episode ended.
        dones = buffer.terminated | buffer.truncated
        np.logical_not(dones[:-1], out=buffer.valid[1:])
        self.autoreset = dones[-1].copy()
        self._track_episodes(buffer)
        if self.episodic_life:
            # A lost life ends the learner's episode (no bootstrap across it); the game goes on.
            buffer.terminated |= buffer.life_lost
        buffer.fill_logprobs(distribution)

    def _handle_nonfinite(self, raw_obs: Obs, rewards: np.ndarray) -> tuple[Obs, np.ndarray]:
        bad_obs = nonfinite_rows(raw_obs)
        bad_rewards = ~np.isfinite(rewards)
        if not (bad_obs.any() or bad_rewards.any()):  # only the sum overflowed
            return raw_obs, rewards
        what = "observation" if bad_obs.any() else "reward"
        env_index = int(np.flatnonzero(bad_obs | bad_rewards)[0])
        message = f"non-finite {what} from env {env_index} (of {self.num_envs})"
        if self.nonfinite == "stop":
            raise NonFiniteError(message)
        # skip: zero the bad values so the statistics stay finite; the trainer drops this rollout.
        self.poisoned = True
        self.poison_message = message
        clean = map_obs(
            lambda a: np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0) if a.dtype.kind == "f" else a, raw_obs
        )
        return clean, np.nan_to_num(rewards, nan=0.0, posinf=0.0, neginf=0.0)

    def _track_episodes(self, buffer: RolloutBuffer) -> None:
        """Record the returns and lengths (raw rewards) of the episodes that ended in this rollout.

        Done once per rollout on whole arrays: running totals per env, carried over from the
        previous rollout, read off where episodes end.
        """
        valid = buffer.valid
        totals = np.cumsum(buffer.raw_rewards * valid, axis=0) + self.episode_returns
        steps = np.cumsum(valid, axis=0) + self.episode_lengths
        ends_t, ends_env = np.nonzero((buffer.terminated | buffer.truncated).T)[::-1]  # env-major, time-sorted
        end_totals, end_steps = totals[ends_t, ends_env], steps[ends_t, ends_env]
        # An env's episode after the first is the difference to its previous episode's end.
        same_env = np.concatenate([[False], ends_env[1:] == ends_env[:-1]])
        previous_totals = np.where(same_env, np.concatenate([[0.0], end_totals[:-1]]), 0.0)
        previous_steps = np.where(same_env, np.concatenate([[0], end_steps[:-1]]), 0)
        self.finished_returns.extend((end_totals - previous_totals).tolist())
        self.finished_lengths.extend((end_steps - previous_steps).tolist())
        # What the episodes still running have gathered so far.
        last_total = np.zeros(self.num_envs)
        last_steps = np.zeros(self.num_envs, dtype=np.int64)
        last_total[ends_env] = end_totals  # fancy assignment keeps the last (latest) end per env
        last_steps[ends_env] = end_steps
        self.episode_returns = totals[-1] - last_total
        self.episode_lengths = steps[-1] - last_steps

    def state_dict(self) -> dict:
        """What carries over to the next rollout, including the envs' own state where it can be
        captured exactly (see clippo.envs.make.snapshot_env_state)."""
        return {
            "next_obs": map_obs(lambda a: torch.from_numpy(np.array(a)), self.next_obs),
            "autoreset": torch.from_numpy(self.autoreset.copy()),
            "lives": torch.from_numpy(self.lives.copy()),
            "episode_returns": torch.from_numpy(self.episode_returns.copy()),
            "episode_lengths": torch.from_numpy(self.episode_lengths.copy()),
            "envs": snapshot_env_state(self.envs),
            "next_masks": None if self.next_masks is None else torch.from_numpy(self.next_masks.copy()),
            "recurrent_state": None if self.state is None else self.state.cpu().clone(),
            "episode_start": torch.from_numpy(self.episode_start.copy()),
        }

    def load_state_dict(self, state: dict) -> bool:
        """Continue from a saved state; False (envs left freshly reset) where the envs cannot be restored."""
        next_obs = state.get("next_obs")
        if state.get("envs") is None or next_obs is None or observations.batch_size(next_obs) != self.num_envs:
            return False
        if self.action_masks is not None and state.get("next_masks") is None:
            return False
        if not restore_env_state(self.envs, state["envs"]):
            return False
        self.next_obs = map_obs(lambda t: t.numpy().copy(), next_obs)
        self.autoreset = state["autoreset"].numpy().copy()
        if "lives" in state:
            self.lives = state["lives"].numpy().copy()
        self.episode_returns = state["episode_returns"].numpy().copy()
        self.episode_lengths = state["episode_lengths"].numpy().copy()
        if self.action_masks is not None:
            self.next_masks = state["next_masks"].numpy().copy()
        self.state = state.get("recurrent_state")
        if "episode_start" in state:
            self.episode_start = state["episode_start"].numpy().copy()
        return True

    def pop_finished_episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes finished since the last call."""
        finished = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return finished

    def close(self) -> None:
        self.envs.close()

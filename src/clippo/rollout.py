"""Rollout storage and collection: run the current policy in the vector env and store transitions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from clippo.distributions import ActionDistribution
from clippo.envs import restore_env_state, snapshot_env_state
from clippo.errors import EnvStepError, NonFiniteError
from clippo.networks import ActorCritic
from clippo.normalization import ObservationNormalizer, RewardScaler


@dataclass
class Batch:
    """A rollout flattened to ``[batch]`` with autoreset steps dropped: what the update trains on."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.obs.shape[0]

    def __getitem__(self, index: torch.Tensor | slice) -> Batch:
        return Batch(*(getattr(self, name)[index] for name in self.__dataclass_fields__))


class RolloutBuffer:
    """Preallocated ``[num_steps, num_envs, ...]`` arrays for one rollout (``values`` are filled
    afterwards by ``estimate_values``).

    Stored as numpy arrays (writing a row costs a fraction of a torch indexed copy, and the rollout
    loop writes several per step), viewed as tensors for the advantage computation and the update.
    ``valid[t, i]`` is False where step ``t`` of env ``i`` was an autoreset step: the env ignored
    the action and returned the first observation of a new episode, so it is not a transition.

    Observations are kept as the networks read them, ``[obs, 1]`` (see ``NumpyMLP``), in
    ``network_inputs``: ``num_steps + 1`` rows, the last one the observation after the last step
    (the bootstrap at the rollout cut). The actor acts on a row and the critic evaluates them all
    without copying.
    """

    def __init__(
        self, num_steps: int, num_envs: int, obs_size: int, action_shape, action_dtype, num_outputs: int, device
    ) -> None:
        shape = (num_steps, num_envs)
        numpy_dtype = np.int64 if action_dtype == torch.int64 else np.float32
        self.device = torch.device(device)
        self.network_inputs = np.ones((num_steps + 1, num_envs, obs_size + 1), dtype=np.float32)
        self.all_obs = self.network_inputs[..., :-1]  # [num_steps + 1, num_envs, obs_size] views
        self.obs = self.all_obs[:-1]
        self.actions = np.zeros(shape + tuple(action_shape), dtype=numpy_dtype)
        self.logprobs = np.zeros(shape, dtype=np.float32)
        self.params = np.zeros(shape + (num_outputs,), dtype=np.float32)  # the actor's logits or means
        self.values = np.zeros(shape, dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.raw_rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.valid = np.ones(shape, dtype=bool)
        self.last_value = np.zeros(num_envs, dtype=np.float32)
        self.critic_workspace: list = []  # see NumpyMLP.__call__

    @torch.no_grad()
    def estimate_values(self, policy: ActorCritic) -> None:
        """Fill ``values`` and ``last_value`` with the critic's estimates.

        Acting needs only the actor, so the critic is evaluated here, once per rollout on every
        stored observation plus the one after the last step (the bootstrap at the rollout cut):
        one large batch instead of a small one per step. On the CPU with the numpy copy of the
        critic (about 60% of the torch pass's time at these sizes).
        """
        if self.device.type == "cpu":
            inputs = self.network_inputs.reshape(-1, self.network_inputs.shape[-1])
            values = policy.numpy_critic().with_ones_column(inputs, self.critic_workspace)[:, 0]
        else:
            obs = self.all_obs.reshape(-1, self.all_obs.shape[-1])
            values = policy.value(torch.from_numpy(obs).to(self.device)).cpu().numpy()
        num_envs = self.last_value.shape[0]
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
        """The valid transitions as one flat batch (time-major order)."""
        mask = self.tensor("valid").reshape(-1)
        obs_size = self.obs.shape[-1]
        action_shape = self.actions.shape[2:]
        return Batch(
            obs=self.tensor("obs").reshape(-1, obs_size)[mask],
            actions=self.tensor("actions").reshape(-1, *action_shape)[mask],
            logprobs=self.tensor("logprobs").reshape(-1)[mask],
            values=self.tensor("values").reshape(-1)[mask],
            advantages=advantages.reshape(-1)[mask],
            returns=returns.reshape(-1)[mask],
        )


class EnvRunner:
    """The vector env plus what carries over between rollouts.

    That is the latest observation, which envs are due an autoreset step, and the running return
    and length of each env's current episode (in raw, unscaled rewards).
    """

    def __init__(
        self,
        envs: VectorEnv,
        obs_normalizer: ObservationNormalizer,
        reward_scaler: RewardScaler,
        nonfinite: str = "stop",
    ) -> None:
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite={nonfinite!r} is invalid: choose one of stop, skip")
        self.envs = envs
        self.nonfinite = nonfinite
        self.poisoned = False
        self.poison_message = ""
        self.num_envs = envs.num_envs
        self.obs_normalizer = obs_normalizer
        self.reward_scaler = reward_scaler
        self.autoreset = np.zeros(self.num_envs, dtype=bool)
        self.episode_returns = np.zeros(self.num_envs, dtype=np.float64)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.next_obs = np.zeros(0, dtype=np.float32)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []

    def start(self, seed: int | None) -> None:
        """Reset every env (env i gets seed + i) and begin fresh episodes."""
        raw_obs, _ = self.envs.reset(seed=seed)
        self.next_obs = self.obs_normalizer(raw_obs, update=True)
        self.autoreset[:] = False
        self.episode_returns[:] = 0.0
        self.episode_lengths[:] = 0

    @torch.inference_mode()
    def collect(self, policy: ActorCritic, buffer: RolloutBuffer, generator: torch.Generator) -> None:
        """Run the policy for ``num_steps`` steps in every env, storing each step into ``buffer``."""
        if self.next_obs.shape[0] != self.num_envs:
            raise RuntimeError("EnvRunner.collect() before start(): call start(seed) or load_state_dict() first")
        distribution = policy.distribution
        num_steps = buffer.obs.shape[0]
        self.poisoned = False
        noise = distribution.noise((num_steps, self.num_envs), generator, buffer.device).cpu().numpy()
        actor = policy.numpy_actor()
        scale_rewards = self.reward_scaler.enabled
        # A NaN or inf must never reach the normalizers' running statistics, nor (as an action) the
        # env: with either normalizer on, or continuous actions, each step is checked as it comes.
        # Otherwise nothing carries it forward (the argmax of any logits is a valid action) and one
        # check of the whole rollout after the loop finds the same first bad value.
        normalize_obs = self.obs_normalizer.enabled
        check_each_step = normalize_obs or scale_rewards or not distribution.discrete
        policy.numpy_input(self.next_obs, out=buffer.all_obs[0])
        buffer.valid[0] = ~self.autoreset  # the envs whose first step here is an autoreset step
        act, sample, std, step = actor.for_rows(self.num_envs), distribution.sample_numpy, actor.std, self.envs.step
        # Step t's rows of the buffer (views), walked together: cheaper than indexing each per step.
        rows = zip(
            buffer.network_inputs, buffer.params, noise, buffer.actions,
            buffer.all_obs[1:], buffer.raw_rewards, buffer.terminated, buffer.truncated, buffer.rewards,
        )  # fmt: skip
        for inputs, params, step_noise, actions_t, next_obs_t, rewards_t, terminated_t, truncated_t, scaled_t in rows:
            act(inputs, params)
            actions = sample(params, step_noise, std)
            actions_t[...] = actions

            try:
                raw_obs, rewards, terminated, truncated, _ = step(distribution.to_env(actions))
            except Exception as exc:  # whatever the env raises, training cannot go on from here
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise EnvStepError(f"the environment raised {type(exc).__name__} in step(): {detail}") from exc
            # One sum is finite exactly when all its terms are (or it overflowed: checked in detail).
            if check_each_step and not math.isfinite(raw_obs.sum() + rewards.sum()):
                raw_obs, rewards = self._handle_nonfinite(raw_obs, rewards)
            obs = self.obs_normalizer(raw_obs, update=True) if normalize_obs else raw_obs
            policy.numpy_input(obs, out=next_obs_t)
            rewards_t[...] = rewards
            terminated_t[...] = terminated
            truncated_t[...] = truncated
            if scale_rewards:  # the running return needs to know, step by step, which envs are mid-episode
                dones = terminated | truncated
                scaled_t[...] = self.reward_scaler(rewards, dones, ~self.autoreset)
                self.autoreset = dones
        self.next_obs = obs if normalize_obs else self.obs_normalizer(obs)  # (float32 either way)
        # An env's step is an autoreset step (not a transition) after its episode ended.
        dones = buffer.terminated | buffer.truncated
        np.logical_not(dones[:-1], out=buffer.valid[1:])
        self.autoreset = dones[-1].copy()
        if not scale_rewards:
            buffer.rewards[:] = buffer.raw_rewards
        if not check_each_step:
            self._check_rollout(buffer)
        self._track_episodes(buffer)
        buffer.fill_logprobs(distribution)

    def _check_rollout(self, buffer: RolloutBuffer) -> None:
        """The per-step non-finite check for a whole rollout at once: the first bad step (in time
        order) is reported or, with nonfinite="skip", zeroed as a step's check would have."""
        returned_obs = buffer.all_obs[1:]
        if math.isfinite(returned_obs.sum(dtype=np.float64) + buffer.raw_rewards.sum(dtype=np.float64)):
            return
        bad = ~np.isfinite(returned_obs).all(axis=2) | ~np.isfinite(buffer.raw_rewards)
        if not bad.any():  # only the sum overflowed
            return
        t = int(np.flatnonzero(bad.any(axis=1))[0])
        self._handle_nonfinite(returned_obs[t], buffer.raw_rewards[t])  # raises, or poisons the rollout
        for array in (buffer.all_obs, buffer.raw_rewards, buffer.rewards):
            np.nan_to_num(array, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        self.next_obs = np.nan_to_num(self.next_obs, nan=0.0, posinf=0.0, neginf=0.0)

    def _handle_nonfinite(self, raw_obs: np.ndarray, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bad_obs = ~np.isfinite(raw_obs).reshape(self.num_envs, -1).all(axis=1)
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
        return np.nan_to_num(raw_obs, nan=0.0, posinf=0.0, neginf=0.0), np.nan_to_num(rewards, nan=0.0, posinf=0.0, neginf=0.0)

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
        captured exactly (see clippo.envs.snapshot_env_state)."""
        return {
            "next_obs": torch.from_numpy(self.next_obs.copy()),
            "autoreset": torch.from_numpy(self.autoreset.copy()),
            "episode_returns": torch.from_numpy(self.episode_returns.copy()),
            "episode_lengths": torch.from_numpy(self.episode_lengths.copy()),
            "envs": snapshot_env_state(self.envs),
        }

    def load_state_dict(self, state: dict) -> bool:
        """Continue from a saved state; False (envs left freshly reset) where the envs cannot be restored."""
        if state.get("envs") is None or state["next_obs"].shape[0] != self.num_envs:
            return False
        if not restore_env_state(self.envs, state["envs"]):
            return False
        self.next_obs = state["next_obs"].numpy().copy()
        self.autoreset = state["autoreset"].numpy().copy()
        self.episode_returns = state["episode_returns"].numpy().copy()
        self.episode_lengths = state["episode_lengths"].numpy().copy()
        return True


    def pop_finished_episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes finished since the last call."""
        finished = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return finished

    def close(self) -> None:
        self.envs.close()

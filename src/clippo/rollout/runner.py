"""Rollout collection: run the current policy in the vector env and store its transitions.

This is the general path, for every encoder, observation space and device: observations are
stored as the env returns them (each field in its own dtype), and the torch policy acts on
them. ``clippo.fastpath`` replaces both pieces for flat observations and MLPs on a CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from clippo.core import observations
from clippo.core.errors import EnvStepError, NonFiniteError, first_line
from clippo.core.observations import EnvObs, Obs, map_obs
from clippo.envs.snapshots import restore_env_state, snapshot_env_state
from clippo.networks.distributions import ActionDistribution
from clippo.networks.policy import ActorCritic
from clippo.rollout.buffer import RolloutBuffer, step_rows
from clippo.rollout.masking import MaskSource, policy_observation_space
from clippo.rollout.normalization import ObservationNormalizer, RewardScaler
from clippo.rollout.watchdog import EnvWatch


def float_sum(obs: EnvObs) -> float:
    """The sum of an observation batch's floating-point fields: finite exactly when they all
    are (or it overflowed); integer fields cannot hold NaN."""
    total = 0.0
    for array in obs.values() if isinstance(obs, dict) else [obs]:
        if array.dtype.kind == "f":
            total += float(array.sum(dtype=np.float64))
    return total


def nonfinite_rows(obs: EnvObs) -> np.ndarray:
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
        #: the env call under way and its time limit (the agent sets one with the run's env_timeout)
        self.watch = EnvWatch(envs, None)
        #: an env call ran past its time limit: the envs are closed without waiting for it
        self.timed_out = False
        #: how the envs were built (clippo.envs.snapshots.env_identity, taken before their first reset)
        self.env_identity: dict[str, Any] | None = None
        #: why the last load_state_dict left the envs freshly reset (None: it restored them, or none was tried)
        self.restore_failure: str | None = None

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

    def _normalized(self, obs: EnvObs, update: bool = True) -> EnvObs:
        if not self.obs_normalizer.enabled:
            return obs
        assert isinstance(obs, np.ndarray)  # it is enabled for (flat) Box observations only
        return self.obs_normalizer(obs, update=update)

    def _lives(self, info: dict[str, Any]) -> np.ndarray:
        if "lives" not in info:
            raise ValueError(
                "episodic_life=True is invalid for this env: its step() info has no 'lives' entry (Atari envs have one)"
            )
        return np.asarray(info["lives"], dtype=np.int64).copy()

    def _step(self, env_actions: np.ndarray) -> tuple:
        try:
            return self.watch.step(env_actions)
        except EnvStepError:  # (the time limit)
            self.timed_out = True
            raise
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
            assert buffer.all_masks is not None  # a runner with masks fills a masked buffer
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
        assert self.next_obs is not None  # begin_rollout checked
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
                assert buffer.all_masks is not None  # begin_rollout checked
                step_masks = torch.from_numpy(buffer.all_masks[t]).to(device)
            if recurrent:
                assert buffer.states is not None and buffer.starts is not None  # a recurrent policy's buffer
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
            if masks is not None:
                raw_obs = self._read_masks(raw_obs, info, terminated, truncated, t, buffer)
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
            buffer.rewards[t] = self._scaled(learned, terminated, truncated) if self.reward_scaler.enabled else learned
            if recurrent:  # after an autoreset step, the observation begins an episode
                starts, autoreset = autoreset, terminated | truncated
        self.next_obs = map_obs(np.copy, step_rows(buffer.all_obs, num_steps))
        if masks is not None:
            assert buffer.all_masks is not None  # begin_rollout checked
            self.next_masks = buffer.all_masks[num_steps].copy()
        if recurrent:
            # The bootstrap value at the cut, from the state carried into the next rollout.
            obs = observations.to_tensor(self.next_obs, device)
            next_masks = None if self.next_masks is None else torch.from_numpy(self.next_masks).to(device)
            _, last_value, _ = policy.step(obs, state, torch.from_numpy(starts).to(device), next_masks)
            buffer.last_value[:] = last_value.cpu().numpy()
            self.state, self.episode_start = state, starts
        self.finish_rollout(buffer, distribution)

    def _read_masks(
        self,
        raw_obs: Obs,
        info: dict[str, Any],
        terminated: np.ndarray,
        truncated: np.ndarray,
        t: int,
        buffer: RolloutBuffer,
    ) -> Obs:
        """The mask of step ``t``'s returned observation (used at the next step), written to the
        buffer's row ``t + 1``; the observation without its mask."""
        assert self.action_masks is not None
        assert buffer.all_masks is not None  # begin_rollout checked
        where = f"rollout step {t + 1}"
        raw_obs, _ = self.action_masks.read(raw_obs, info, terminated | truncated, where, buffer.all_masks[t + 1])
        return raw_obs

    def _scaled(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> np.ndarray:
        """One step's rewards scaled by the running return's std (``RewardScaler``): the running
        return needs to know, step by step, which envs are mid-episode."""
        dones = terminated | truncated
        scaled = self.reward_scaler(rewards, dones, ~self.autoreset)
        self.autoreset = dones
        return scaled

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

    def _handle_nonfinite(self, raw_obs: EnvObs, rewards: np.ndarray) -> tuple[Obs, np.ndarray]:
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
        captured exactly (see clippo.envs.snapshots.snapshot_env_state)."""
        assert self.next_obs is not None, "EnvRunner.state_dict() before start()"
        return {
            "next_obs": map_obs(lambda a: torch.from_numpy(np.array(a)), self.next_obs),
            "autoreset": torch.from_numpy(self.autoreset.copy()),
            "lives": torch.from_numpy(self.lives.copy()),
            "episode_returns": torch.from_numpy(self.episode_returns.copy()),
            "episode_lengths": torch.from_numpy(self.episode_lengths.copy()),
            "envs": snapshot_env_state(self.envs, self.env_identity),
            "next_masks": None if self.next_masks is None else torch.from_numpy(self.next_masks.copy()),
            "recurrent_state": None if self.state is None else self.state.cpu().clone(),
            "episode_start": torch.from_numpy(self.episode_start.copy()),
        }

    def load_state_dict(self, state: dict) -> bool:
        """Continue from a saved state; False (envs left freshly reset) where the envs cannot be
        restored, or the saved state does not fit these envs (it is data from a file: every part
        is checked before any is used)."""
        self.restore_failure = "the checkpoint's runner state does not fit these envs"
        if not isinstance(state, dict) or not self._fits(state):
            return False
        next_obs = state.get("next_obs")
        if state.get("envs") is None:
            self.restore_failure = "the checkpoint holds no env state (they were not plain data, or had failed)"
            return False
        if next_obs is None or observations.batch_size(next_obs) != self.num_envs:
            return False
        if self.action_masks is not None and state.get("next_masks") is None:
            return False
        self.restore_failure = restore_env_state(self.envs, state["envs"], self.env_identity)
        if self.restore_failure is not None:
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

    def _fits(self, state: dict) -> bool:
        """Whether a saved runner state has this runner's layout: tensors with one row per env
        (per-env counters of exactly ``[num_envs]``), the observation's fields."""
        n = self.num_envs

        def rows(value: Any, exact: bool = False) -> bool:
            return (
                isinstance(value, torch.Tensor)
                and value.dim() >= 1
                and value.shape[0] == n
                and (not exact or value.dim() == 1)
            )

        for key in ("autoreset", "lives", "episode_returns", "episode_lengths", "episode_start"):
            if key in state and not rows(state[key], exact=True):
                return False
        if not all(key in state for key in ("autoreset", "episode_returns", "episode_lengths")):
            return False
        next_obs = state.get("next_obs")
        template = observations.allocate(self.observation_space, (1,))
        if isinstance(template, dict):
            if (
                not isinstance(next_obs, dict)
                or set(next_obs) != set(template)
                or not all(map(rows, next_obs.values()))
            ):
                return False
        elif next_obs is not None and not rows(next_obs):
            return False
        for key in ("next_masks", "recurrent_state"):
            if state.get(key) is not None and not rows(state[key]):
                return False
        return True

    def pop_finished_episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes finished since the last call."""
        finished = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return finished

    def close(self) -> None:
        self.watch.close()
        if self.timed_out and self.watch.asynchronous:  # (a plain close would wait for the hung worker)
            self.envs.close(terminate=True)
        else:
            self.envs.close()

"""The PPO training loop (Schulman et al., 2017), top to bottom.

Each update: (1) run the current policy for ``num_steps`` steps in every env and store the
trajectories; (2) the critic's values, then rewards-to-go and GAE advantages; (3) several epochs
of shuffled minibatch Adam steps on one combined loss (clipped surrogate + value error - entropy
bonus), stopped early when the approximate KL to the rollout policy exceeds ``target_kl``.

The agent (``clippo.agent.PPO``) owns the state; this module only drives it. Across
``torch.distributed`` ranks there are two exchanges: one after each rollout
(``exchange_after_rollout``) and one per minibatch step (the gradient, in ``update_policy``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn, Protocol

import numpy as np
import torch

from clippo.core.advantages import compute_gae
from clippo.core.errors import EnvStepError, NonFiniteError, RankFailedError, TrainingInterrupted
from clippo.core.losses import explained_variance
from clippo.networks.policy import ActorCritic
from clippo.rollout.buffer import Batch, RolloutBuffer
from clippo.rollout.normalization import ObservationNormalizer, RewardScaler
from clippo.rollout.runner import EnvRunner
from clippo.training.callbacks import as_callback, with_config_evaluation
from clippo.training.checkpoint import FINAL_NAME, run_dir_lock
from clippo.training.distributed import World, all_gather, pool_statistics, pooled_moments, statistics_sums
from clippo.training.logger import RunLogger
from clippo.training.optim import FlatAdam
from clippo.training.update import Learner, UpdatePlan, advantage_sums, set_moments


@dataclasses.dataclass
class StopRequest:
    """Why training should end early, as the loop and whoever asks (a signal handler, a callback,
    another rank) see it."""

    #: a signal or ``request_stop``: checkpoint at the next update boundary, then raise TrainingInterrupted
    requested: bool = False
    #: the signal that asked, if one did (re-raised by the command line after the checkpoint)
    signal: int | None = None
    #: across ranks: some rank was asked (agreed in the after-rollout exchange)
    agreed: bool = False
    #: a callback on this rank returned False (across ranks, agreed in the next exchange)
    callback_asked: bool = False
    #: training ended because a callback returned False
    by_callback: bool = False


class Stoppable:
    """What an agent class offers about stopping: ``request_stop`` and what it and the loop leave in
    ``stopping`` (``clippo.agent.PPO`` and ``clippo.multiagent``'s agent share it)."""

    stopping: StopRequest

    def request_stop(self, signum: int | None = None) -> None:
        """Ask ``learn`` to stop at the next update boundary, checkpoint, and raise TrainingInterrupted
        (``signum``: the signal that asked, if one did)."""
        self.stopping.requested = True
        self.stopping.signal = signum

    @property
    def stop_requested(self) -> bool:
        """Whether ``request_stop`` asked the current ``learn`` call to stop."""
        return self.stopping.requested

    @property
    def stopped_by_callback(self) -> bool:
        """Whether the last ``learn`` call ended because a callback returned False."""
        return self.stopping.by_callback


class Scheduled(Protocol):
    """What the annealing schedules read: the config and where the current ``learn`` call stands."""

    config: Any
    global_step: int
    schedule_start: int
    schedule_end: int


class Interruptible(Scheduled, Protocol):
    """What a stop at an update boundary needs: the run directory, a checkpoint, the hint."""

    run_dir: Path | None
    update: int
    stopping: StopRequest

    @property
    def resume_hint(self) -> str: ...
    def save_checkpoint(self, include_runner: bool = True) -> Path: ...


class Trainee(Interruptible, Protocol):
    """What the loop trains: the agent's state and the parts it built (``clippo.agent.PPO``)."""

    model: ActorCritic
    optimizer: FlatAdam
    learner: Learner
    generator: torch.Generator
    obs_normalizer: ObservationNormalizer
    reward_scaler: RewardScaler
    world: World
    train_time: float
    recent_returns: list[float]

    @property
    def finished(self) -> bool: ...
    @property
    def global_batch_size(self) -> int: ...
    def env_runner(self) -> EnvRunner: ...
    def new_rollout_buffer(self) -> RolloutBuffer: ...
    def save(self, path: str | Path, include_runner: bool = True) -> Path: ...
    def close(self) -> None: ...


def train(agent: Trainee, progress: bool | None = None, callback=None) -> None:
    """Run updates until the agent's current ``learn`` call reaches its end (or a callback, a
    signal, an env error or a non-finite value stops it), then write the final checkpoint. The
    run directory is held for this process meanwhile (``checkpoint.run_dir_lock``)."""
    with run_dir_lock(agent.run_dir, create=True) if agent.run_dir is not None else contextlib.nullcontext():
        _train(agent, progress, callback)


def _train(agent: Trainee, progress: bool | None, callback) -> None:
    cfg = agent.config
    callback = with_config_evaluation(as_callback(callback), cfg)
    stopping = agent.stopping
    stopping.by_callback = stopping.callback_asked = stopping.requested = stopping.agreed = False
    runner = agent.env_runner()
    buffer = agent.new_rollout_buffer()
    updates_left = math.ceil((agent.schedule_end - agent.global_step) / agent.global_batch_size)
    end_step = agent.global_step + updates_left * agent.global_batch_size
    if end_step != agent.schedule_end and agent.world.is_main:  # (said once, on one line: no silent extra steps)
        print(
            f"clippo: {agent.schedule_end - agent.global_step} steps rounded up to {end_step - agent.global_step}: "
            f"training runs whole rollouts of num_envs x num_steps = {agent.global_batch_size} steps",
            file=sys.stderr,
            flush=True,
        )
    logger = RunLogger(agent.run_dir, end_step, agent.global_step, progress, cfg.tensorboard)
    start_time, start_step, time_before = time.perf_counter(), agent.global_step, agent.train_time
    try:
        while not (agent.finished or stopping.by_callback):
            if stopping.agreed if agent.world.distributed else stopping.requested:
                stop_interrupted(agent)
            boundary = boundary_state(agent)
            learning_rate = annealed_learning_rate(agent)
            agent.optimizer.lr = learning_rate
            agent.learner.clip_epsilon = annealed_clip_epsilon(agent)

            # 1. Run the current policy and store the trajectories.
            rollout_start = time.perf_counter()
            try:
                runner.collect(agent.model, buffer, agent.generator)
            except (EnvStepError, NonFiniteError) as exc:
                stop_with_checkpoint(agent, exc, boundary)
            agent.global_step += agent.global_batch_size
            agent.update += 1

            # 2. The critic's values, then rewards-to-go and advantages (bootstrapped on
            #    truncation and at the rollout cut).
            buffer.estimate_values(agent.model)
            advantages, returns = compute_gae(
                buffer.tensor("rewards"),
                buffer.tensor("values"),
                buffer.tensor("terminated"),
                buffer.tensor("truncated"),
                buffer.tensor("last_value"),
                gamma=cfg.gamma,
                gae_lambda=cfg.gae_lambda,
            )
            batch = buffer.flatten(advantages, returns)
            if callback.on_rollout(agent) is False:
                request_callback_stop(agent)
            plan = agent.learner.plan_update(len(batch))
            episodes = runner.pop_finished_episodes()
            exchange_start = time.perf_counter()
            try:
                poisoned, (episode_returns, episode_lengths) = exchange_after_rollout(
                    agent, runner.poisoned, batch, plan, episodes
                )
            except RankFailedError as exc:
                stop_with_checkpoint(agent, exc, boundary)
            update_start = time.perf_counter()

            # 3. Several epochs of minibatch steps on the combined PPO loss.
            if poisoned:  # nonfinite="skip": a rollout with NaN/inf data teaches nothing
                warnings.warn(
                    f"skipped update {agent.update}: {runner.poison_message or 'on another rank'}", stacklevel=2
                )
                stats = {
                    name: float("nan")
                    for name in ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl")
                }
                stats.update(epochs_run=0.0, early_stopped=0, skipped_steps=0)
            else:
                try:
                    stats = agent.learner.update_policy(batch, plan)
                except NonFiniteError as exc:
                    stop_with_checkpoint(agent, NonFiniteError(f"update {agent.update}: {exc}"), boundary)
                except RankFailedError as exc:
                    stop_with_checkpoint(agent, exc, boundary)

            agent.recent_returns = (agent.recent_returns + episode_returns)[-100:]
            update_end = time.perf_counter()
            agent.train_time = time_before + update_end - start_time
            metrics = {
                "global_step": agent.global_step,
                "update": agent.update,
                "wall_time": agent.train_time,
                "sps": (agent.global_step - start_step) / max(agent.train_time - time_before, 1e-9),
                "episode_return": float(np.mean(episode_returns)) if episode_returns else float("nan"),
                "episode_length": float(np.mean(episode_lengths)) if episode_lengths else float("nan"),
                "episodes": len(episode_returns),
                "recent_return": float(np.mean(agent.recent_returns)) if agent.recent_returns else float("nan"),
                "learning_rate": learning_rate,
                "explained_variance": explained_variance(batch.samples("values"), batch.samples("returns")),
                "final": agent.finished,
                "rollout_time": exchange_start - rollout_start,
                "exchange_time": update_start - exchange_start,
                "update_time": update_end - update_start,
                **stats,
            }
            if callback.on_update(agent, metrics) is False:
                request_callback_stop(agent)
            logger.log(metrics)
            checkpoint_if_due(agent)
    finally:
        logger.close()
    if agent.run_dir is not None:
        agent.save(agent.run_dir / FINAL_NAME)


def checkpoint_if_due(agent: Interruptible) -> None:
    """A periodic checkpoint after every ``checkpoint_every``-th update (with a run directory)."""
    every = agent.config.checkpoint_every
    if agent.run_dir is not None and every and agent.update % every == 0:
        agent.save_checkpoint()


def stop_interrupted(agent: Interruptible) -> NoReturn:
    path = agent.save_checkpoint() if agent.run_dir is not None else None
    where = f"checkpoint written to {path}; " if path else ""
    error = TrainingInterrupted(
        f"interrupted at step {agent.global_step} (update {agent.update}); {where}{agent.resume_hint}",
        str(path) if path else None,
        agent.stopping.signal,
    )
    raise error


def boundary_state(agent: Trainee) -> dict[str, Any]:
    """What an update changes, as of its start: the state a failed update is rolled back to."""
    return {
        "counters": (agent.global_step, agent.update, agent.train_time),
        "params": agent.optimizer.flat.clone(),
        "optimizer": agent.optimizer.state_dict(),
        "generator": agent.generator.get_state(),
        "obs_normalizer": agent.obs_normalizer.state_dict(),
        "reward_scaler": agent.reward_scaler.state_dict(),
    }


def stop_with_checkpoint(
    agent: Trainee, exc: EnvStepError | NonFiniteError | RankFailedError, boundary: dict[str, Any]
) -> NoReturn:
    """End training on an env error, a non-finite value or a failed rank, checkpointing the last
    good update (rank 0 writes it; the other ranks write nothing).

    Everything is rolled back to the end of the last good update; the envs are not
    trustworthy, so the checkpoint leaves them out, they are closed, and a resumed run starts
    them afresh.
    """
    agent.global_step, agent.update, agent.train_time = boundary["counters"]
    agent.optimizer.flat.copy_(boundary["params"])
    agent.optimizer.load_state_dict(boundary["optimizer"])
    agent.generator.set_state(boundary["generator"])
    agent.obs_normalizer.load_state_dict(boundary["obs_normalizer"])
    agent.reward_scaler.load_state_dict(boundary["reward_scaler"])
    agent.close()  # (a crashed env that fails to close as well is discarded all the same)
    if agent.run_dir is None:
        hint = agent.resume_hint if agent.world.is_main else "rank 0 writes the checkpoints"
        raise type(exc)(f"{exc}; {hint}") from exc
    path = agent.save_checkpoint(include_runner=False)
    raise type(exc)(f"{exc}; the last good update is checkpointed at {path}; {agent.resume_hint}") from exc


def schedule_left(agent: Scheduled) -> float:
    """The fraction of this ``learn`` call's steps still ahead: 1 at its start, near 0 at its last update."""
    span = max(agent.schedule_end - agent.schedule_start, 1)
    return 1.0 - (agent.global_step - agent.schedule_start) / span


def annealed_learning_rate(agent: Scheduled) -> float:
    cfg = agent.config
    return cfg.learning_rate * schedule_left(agent) if cfg.anneal_lr else cfg.learning_rate


def annealed_clip_epsilon(agent: Scheduled) -> float:
    """The clip range of this update: ``clip_epsilon``, decayed like the learning rate with
    ``anneal_clip`` (the PPO paper's Atari recipe anneals both)."""
    cfg = agent.config
    return cfg.clip_epsilon * schedule_left(agent) if cfg.anneal_clip else cfg.clip_epsilon


def request_callback_stop(agent: Trainee) -> None:
    """A callback returned False: stop after this update in one process; across ranks, after the
    update in which every rank learns of it (the next after-rollout exchange)."""
    if agent.world.distributed:
        agent.stopping.callback_asked = True
    else:
        agent.stopping.by_callback = True


def exchange_after_rollout(
    agent: Trainee, poisoned: bool, batch: Batch, plan: UpdatePlan, episodes: tuple[list[float], list[int]]
) -> tuple[bool, tuple[list[float], list[int]]]:
    """Across ranks, in one exchange: pool the normalization statistics so that every rank
    holds the same, pool the advantage statistics of each planned minibatch (stored in
    ``plan``), gather the finished episodes (in rank order), and agree on whether any rank's
    rollout was poisoned and whether any rank was asked to stop, by a signal or a callback (it
    stops after this update).

    One exchange instead of one per purpose: on a small machine each costs about as much as
    a minibatch step. Returns the agreed ``poisoned`` and every rank's episodes."""
    if not agent.world.distributed:
        return poisoned, episodes
    stats = [agent.obs_normalizer.stats, agent.reward_scaler.stats]
    stopping = agent.stopping
    sums = advantage_sums(batch, plan) if agent.config.normalize_advantages else None
    every = all_gather(
        (poisoned, stopping.requested, statistics_sums(stats), sums, episodes, stopping.callback_asked), agent.world
    )
    pool_statistics(stats, [rank[2] for rank in every], agent.world.size)
    if sums is not None:
        set_moments(plan, pooled_moments([rank[3] for rank in every]))
    stopping.agreed = any(rank[1] for rank in every)
    # a callback's stop on any rank ends training after this update, on every rank
    stopping.by_callback = any(rank[5] for rank in every)
    returns = [value for rank in every for value in rank[4][0]]
    lengths = [value for rank in every for value in rank[4][1]]
    return any(rank[0] for rank in every), (returns, lengths)

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
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clippo.core.advantages import compute_gae
from clippo.core.errors import EnvStepError, NonFiniteError, TrainingInterrupted
from clippo.core.losses import explained_variance, normalize_advantages
from clippo.rollout.runner import Batch
from clippo.training.callbacks import as_callback, with_config_evaluation
from clippo.training.checkpoint import FINAL_NAME, run_dir_lock
from clippo.training.distributed import (
    all_gather,
    all_reduce_mean_,
    moment_sums,
    pool_statistics,
    pooled_moments,
    statistics_sums,
)
from clippo.training.logger import RunLogger
import itertools

if TYPE_CHECKING:
    from clippo.agent import PPO

#: What each minibatch step reports (averaged over the update's steps in the logged metrics).
MINIBATCH_STATS = ("approx_kl", "policy_loss", "value_loss", "entropy", "clip_fraction")


@dataclasses.dataclass
class UpdatePlan:
    """The minibatches of one update, drawn before it starts.

    ``epochs``: per epoch, the shuffled sample indices split into minibatches, or ``None`` for the
    whole batch (one minibatch per epoch). ``moments``: across ranks, the pooled advantage
    (mean, std) of each of those minibatches, per epoch; ``None`` when each minibatch is
    normalized with its own statistics (a single process).
    """

    epochs: list[list[torch.Tensor] | None]
    moments: list[list[tuple[float, float]]] | None = None


def train(agent: PPO, progress: bool | None = None, callback=None) -> None:
    """Run updates until the agent's current ``learn`` call reaches its end (or a callback, a
    signal, an env error or a non-finite value stops it), then write the final checkpoint. The
    run directory is held for this process meanwhile (``checkpoint.run_dir_lock``)."""
    with run_dir_lock(agent.run_dir, create=True) if agent.run_dir is not None else contextlib.nullcontext():
        _train(agent, progress, callback)


def _train(agent: PPO, progress: bool | None, callback) -> None:
    cfg = agent.config
    callback = with_config_evaluation(as_callback(callback), cfg)
    agent.stopped_by_callback = agent._callback_asked = False
    runner = agent.env_runner()
    buffer = agent.new_rollout_buffer()
    updates_left = math.ceil((agent.schedule_end - agent.global_step) / agent.global_batch_size)
    end_step = agent.global_step + updates_left * agent.global_batch_size
    logger = RunLogger(agent.run_dir, end_step, agent.global_step, progress, cfg.tensorboard)
    start_time, start_step, time_before = time.perf_counter(), agent.global_step, agent.train_time
    agent.stop_requested = agent._stop_agreed = False
    try:
        while not (agent.finished or agent.stopped_by_callback):
            if agent.stop_requested if not agent.world.distributed else agent._stop_agreed:
                stop_interrupted(agent)
            boundary = boundary_state(agent)
            learning_rate = annealed_learning_rate(agent)
            agent.optimizer.lr = learning_rate
            agent.clip_epsilon = annealed_clip_epsilon(agent)

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
                *(buffer.tensor(name) for name in ("rewards", "values", "terminated", "truncated", "last_value")),
                gamma=cfg.gamma,
                gae_lambda=cfg.gae_lambda,
            )
            batch = buffer.flatten(advantages, returns)
            if callback.on_rollout(agent) is False:
                request_callback_stop(agent)
            plan = plan_update(agent, len(batch))
            episodes = runner.pop_finished_episodes()
            exchange_start = time.perf_counter()
            poisoned, (episode_returns, episode_lengths) = exchange_after_rollout(
                agent, runner.poisoned, batch, plan, episodes
            )
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
                    stats = agent.update_policy(batch, plan)
                except NonFiniteError as exc:
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
            if agent.run_dir is not None and cfg.checkpoint_every and agent.update % cfg.checkpoint_every == 0:
                agent._save_periodic()
    finally:
        logger.close()
    if agent.run_dir is not None:
        agent.save(agent.run_dir / FINAL_NAME)


def stop_interrupted(agent) -> None:
    path = agent._save_periodic() if agent.run_dir is not None else None
    where = f"checkpoint written to {path}; " if path else ""
    error = TrainingInterrupted(
        f"interrupted at step {agent.global_step} (update {agent.update}); {where}{agent._resume_hint()}",
        str(path) if path else None,
    )
    error.signum = getattr(agent, "stop_signal", None)
    raise error


def boundary_state(agent) -> dict[str, Any]:
    """What an update changes, as of its start: the state a failed update is rolled back to."""
    return {
        "counters": (agent.global_step, agent.update, agent.train_time),
        "params": agent.optimizer.flat.clone(),
        "optimizer": agent.optimizer.state_dict(),
        "generator": agent.generator.get_state(),
        "obs_normalizer": agent.obs_normalizer.state_dict(),
        "reward_scaler": agent.reward_scaler.state_dict(),
    }


def stop_with_checkpoint(agent, exc: EnvStepError | NonFiniteError, boundary: dict[str, Any]) -> None:
    """End training on an env error or a non-finite value, checkpointing the last good update.

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
    try:
        agent.close()
    except Exception:  # a crashed env may fail to close as well; it is discarded either way
        agent._runner = agent._envs = None
    if agent.run_dir is None:
        raise type(exc)(f"{exc}; {agent._resume_hint()}") from exc
    path = agent._save_periodic(include_runner=False)
    raise type(exc)(f"{exc}; the last good update is checkpointed at {path}; {agent._resume_hint()}") from exc


def schedule_left(agent) -> float:
    """The fraction of this ``learn`` call's steps still ahead: 1 at its start, near 0 at its last update."""
    span = max(agent.schedule_end - agent.schedule_start, 1)
    return 1.0 - (agent.global_step - agent.schedule_start) / span


def annealed_learning_rate(agent) -> float:
    cfg = agent.config
    return cfg.learning_rate * schedule_left(agent) if cfg.anneal_lr else cfg.learning_rate


def annealed_clip_epsilon(agent) -> float:
    """The clip range of this update: ``clip_epsilon``, decayed like the learning rate with
    ``anneal_clip`` (the PPO paper's Atari recipe anneals both)."""
    cfg = agent.config
    return cfg.clip_epsilon * schedule_left(agent) if cfg.anneal_clip else cfg.clip_epsilon


def request_callback_stop(agent) -> None:
    """A callback returned False: stop after this update in one process; across ranks, after the
    update in which every rank learns of it (the next after-rollout exchange)."""
    if agent.world.distributed:
        agent._callback_asked = True
    else:
        agent.stopped_by_callback = True


def exchange_after_rollout(
    agent, poisoned: bool, batch: Batch, plan: UpdatePlan, episodes: tuple[list[float], list[int]]
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
    sums = advantage_sums(agent, batch, plan) if agent.config.normalize_advantages else None
    every = all_gather(
        (poisoned, agent.stop_requested, statistics_sums(stats), sums, episodes, agent._callback_asked), agent.world
    )
    pool_statistics(stats, [rank[2] for rank in every], agent.world.size)
    if sums is not None:
        set_moments(plan, pooled_moments([rank[3] for rank in every]))
    agent._stop_agreed = any(rank[1] for rank in every)
    # a callback's stop on any rank ends training after this update, on every rank
    agent.stopped_by_callback = any(rank[5] for rank in every)
    episodes = tuple([value for rank in every for value in rank[4][i]] for i in range(2))
    return any(rank[0] for rank in every), episodes


def plan_update(agent, batch_size: int) -> UpdatePlan:
    """Draw every epoch's minibatches for an update of ``batch_size`` samples."""
    cfg = agent.config
    if cfg.num_minibatches == 1:
        return UpdatePlan([None] * cfg.update_epochs)
    epochs = []
    for _ in range(cfg.update_epochs):
        order = torch.randperm(batch_size, generator=agent.generator, device=agent.device)
        epochs.append([indices for indices in order.tensor_split(cfg.num_minibatches) if len(indices)])
    return UpdatePlan(epochs)


def advantage_sums(agent, batch: Batch, plan: UpdatePlan) -> np.ndarray:
    """This rank's count, sum and sum of squares of the advantages of each planned minibatch
    (of the whole batch, normalized once, when there is one minibatch per epoch)."""
    if plan.epochs[0] is None:
        return moment_sums([batch.samples("advantages").cpu().numpy()])
    return moment_sums(
        [batch.samples("advantages", indices).cpu().numpy() for epoch in plan.epochs for indices in epoch]
    )


def set_moments(plan: UpdatePlan, moments: list[tuple[float, float]]) -> None:
    if plan.epochs[0] is None:
        plan.moments = [moments]
        return
    sizes = [len(epoch) for epoch in plan.epochs]
    starts = np.cumsum([0, *sizes])
    plan.moments = [moments[start : start + size] for start, size in zip(starts, sizes, strict=False)]


def normalized_advantages(agent, advantages: torch.Tensor, plan: UpdatePlan, epoch: int, index: int) -> torch.Tensor:
    """Zero mean, unit std: with this minibatch's own statistics in a single process, with
    the pooled statistics of every rank's minibatch of the same index across ranks."""
    return normalize_advantages(advantages, moments=None if plan.moments is None else plan.moments[epoch][index])


def shuffled_minibatches(batch: Batch, indices: list[torch.Tensor]) -> list[Batch]:
    """``[batch[i] for i in indices]``, gathered as one shuffled copy of the batch cut into
    consecutive slices: one indexing per field and epoch instead of one per minibatch."""
    shuffled = batch[torch.cat(indices)]
    bounds = np.cumsum([0] + [len(i) for i in indices]).tolist()
    return [shuffled[start:stop] for start, stop in itertools.pairwise(bounds)]


def update_policy(agent, batch: Batch, plan: UpdatePlan | None = None) -> dict[str, float]:
    """The PPO update: ``update_epochs`` passes of shuffled minibatches, one Adam step each,
    stopped as soon as a minibatch's approximate KL to the rollout policy exceeds target_kl.

    ``plan`` (from ``plan_update``) fixes the minibatches; drawn here when not given."""
    cfg = agent.config
    if plan is None:
        plan = plan_update(agent, len(batch))
        if agent.world.distributed and cfg.normalize_advantages:
            set_moments(plan, pooled_moments(all_gather(advantage_sums(agent, batch, plan), agent.world)))
    single_minibatch = cfg.num_minibatches == 1
    whole_batch_advantages = None
    if single_minibatch and cfg.normalize_advantages:
        # The one minibatch is the whole batch in every epoch: normalize its advantages once.
        whole_batch_advantages = normalized_advantages(agent, batch.samples("advantages"), plan, 0, 0)
    normalize_each = cfg.normalize_advantages and not single_minibatch
    # Each step's statistics travel in the exchange buffer after the gradient, so across
    # ranks they are averaged by the same all-reduce.
    exchange = agent.optimizer.extra
    history: list[list[float]] = []
    kl = 0.0
    early_stopped = False
    skipped = 0
    for epoch, indices in enumerate(plan.epochs):
        # the order of samples in a mean does not matter: the one minibatch is left unshuffled
        minibatches = [batch] if indices is None else shuffled_minibatches(batch, indices)
        for index, minibatch in enumerate(minibatches):
            advantages = minibatch.samples("advantages") if whole_batch_advantages is None else whole_batch_advantages
            if normalize_each:
                advantages = normalized_advantages(agent, advantages, plan, epoch, index)
            terms = agent.loss_and_gradient(minibatch, advantages)
            step_stats = [terms.approx_kl, terms.policy_loss, terms.value_loss, terms.entropy, terms.clip_fraction]
            if agent.world.distributed:
                # The one exchange per step: gradient, KL and statistics averaged over the ranks.
                exchange.copy_(torch.tensor(step_stats, dtype=exchange.dtype))
                all_reduce_mean_(agent.optimizer.exchange, agent.world)
                step_stats = exchange.tolist()
            kl = step_stats[0]
            if cfg.target_kl is not None and kl > cfg.target_kl:
                early_stopped = True  # this minibatch's step would move the policy too far
                break
            grad_norm = agent.optimizer.clip_grad_norm(cfg.max_grad_norm)
            if not (math.isfinite(grad_norm) and math.isfinite(terms.loss)):
                what = "gradient" if math.isfinite(terms.loss) else "loss"
                message = (
                    f"non-finite {what} at update {agent.update}, minibatch step {len(history) + 1} "
                    f"(policy loss {terms.policy_loss:.4g}, value loss {terms.value_loss:.4g}, gradient norm "
                    f"{grad_norm:.4g})"
                )
                if cfg.nonfinite == "stop":
                    raise NonFiniteError(message)
                skipped += 1
                continue
            agent.optimizer.step()
            history.append(step_stats[1:])
        if early_stopped:
            break
    steps_taken = len(history)
    means = np.mean(history, axis=0).tolist() if history else [float("nan")] * (len(MINIBATCH_STATS) - 1)
    stats = dict(zip(MINIBATCH_STATS[1:], means, strict=False))
    stats["approx_kl"] = kl
    stats["epochs_run"] = steps_taken / cfg.num_minibatches
    stats["early_stopped"] = int(early_stopped)
    stats["skipped_steps"] = skipped
    return stats

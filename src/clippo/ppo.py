"""The ``PPO`` agent: construction, the training loop, acting, evaluation, save and load.

The loop in ``learn`` follows the paper: collect a rollout with the current policy, compute
returns and GAE advantages, then take several epochs of minibatch Adam steps on one combined
loss (clipped surrogate + value error - entropy bonus), stopping early when the KL to the
rollout policy exceeds ``target_kl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from clippo import __version__
from clippo.advantages import compute_gae
from clippo.checkpoint import (
    FINAL_NAME,
    FORMAT,
    FORMAT_VERSION,
    latest_checkpoint,
    periodic_checkpoint_path,
    prune_checkpoints,
    read_checkpoint,
    describe_space,
    space_from_dict,
    space_to_dict,
    write_atomic,
)
from clippo.callbacks import as_callback
from clippo.config import PPOConfig, config_from_dict, resolve_config
from clippo.envs import EnvSource, make_vector_env
from clippo.errors import CheckpointError, EnvStepError, NonFiniteError, TrainingInterrupted
from clippo.distributed import (
    all_gather,
    all_reduce_mean_,
    broadcast_,
    group_sums,
    init_world,
    pool_statistics,
    pooled_moments,
    statistics_sums,
)
from clippo.evaluation import run_episodes
from clippo.gradients import AnalyticGradient, LossTerms
from clippo.gradients import supports as supports_analytic_gradient
from clippo.logger import METRICS_FILE, RunLogger
from clippo.losses import (
    approx_kl,
    clip_fraction,
    clipped_surrogate_loss,
    entropy_bonus,
    explained_variance,
    normalize_advantages,
    ppo_loss,
    value_loss,
)
from clippo.networks import ActorCritic
from clippo.optim import FlatAdam
from clippo.normalization import ObservationNormalizer, RewardScaler
from clippo.rollout import Batch, EnvRunner, RolloutBuffer


def global_rng_states() -> dict[str, Any]:
    """The process-wide Python, numpy and torch RNG states, as checkpoint-safe plain data."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def set_global_rng_states(states: dict[str, Any]) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in states["python"]))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is invalid here: no CUDA GPU is available (use cpu or auto)")
    return torch.device(name)



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


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> None:
    """Put a saved generator state back; across CPU and GPU (different generators, different state
    formats) seed the new one from the saved state instead: the run goes on with its own
    reproducible stream, not the saved one (the math on another device differs anyway)."""
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
    else:
        digest = hashlib.sha256(state.cpu().numpy().tobytes()).digest()
        generator.manual_seed(int.from_bytes(digest[:8], "little"))


class PPO:
    """Proximal Policy Optimization agent.

    >>> agent = PPO("CartPole-v1", seed=0, num_envs=8)
    >>> agent.learn(total_steps=100_000)
    >>> agent.evaluate(episodes=20)["mean_return"]

    Args:
        env: a Gymnasium env id, or a callable returning a ``gymnasium.Env``.
        preset: a named hyperparameter preset (see ``clippo.config.PRESETS``); by default the env's
            built-in tuned preset if it has one, else ``default``.
        config_file: a YAML/TOML/JSON file of hyperparameters.
        run_dir: where metrics, TensorBoard logs and checkpoints go; None writes nothing.
        **hyperparameters: any field of :class:`clippo.config.PPOConfig`.
    """

    def __init__(
        self,
        env: EnvSource = "CartPole-v1",
        *,
        preset: str | None = None,
        config_file: str | Path | None = None,
        run_dir: str | Path | None = None,
        **hyperparameters: Any,
    ) -> None:
        if isinstance(env, str):
            env_id = env
        elif callable(env):
            env_id = hyperparameters.pop("env_id", getattr(env, "__name__", "custom-env"))
        else:
            raise TypeError(f"env must be a Gymnasium env id (str) or a callable returning a gymnasium.Env, got {env!r}")
        config = resolve_config(env_id, preset, config_file, hyperparameters)
        if run_dir is not None and (Path(run_dir) / METRICS_FILE).exists():
            raise ValueError(
                f"run directory {str(run_dir)!r} already holds a run: choose another run_dir, "
                f"or continue it with: clippo resume {run_dir}"
            )
        self.env_source: EnvSource = env
        envs = make_vector_env(env, config.num_envs, config.vector_env)
        self._setup(config, envs.single_observation_space, envs.single_action_space, run_dir)
        self._envs = envs

    # ------------------------------------------------------------------------------------------
    # construction shared by __init__ and load
    # ------------------------------------------------------------------------------------------
    def _setup(
        self,
        config: PPOConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        run_dir: str | Path | None,
    ) -> None:
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.world = init_world(config.device)
        # Only the main rank writes logs, metrics and checkpoints.
        self.run_dir = Path(run_dir) if run_dir is not None and self.world.is_main else None
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        torch.set_num_threads(config.torch_threads)
        # Seed the global RNG only for the weight init; everything after draws from our generator.
        torch.manual_seed(config.seed)
        self.model = ActorCritic(
            observation_space,
            action_space,
            config.hidden_sizes,
            config.activation,
            config.network,
            config.init_log_std,
        ).to(self.device)
        # Extra slots carry each minibatch's approximate KL and loss statistics along with the
        # gradient (averaged across ranks in the same exchange).
        self.optimizer = FlatAdam(
            self.model.paired_parameters(), lr=config.learning_rate, eps=1e-5, extra_slots=len(MINIBATCH_STATS)
        )
        broadcast_(self.optimizer.flat, self.world)  # every rank starts from rank 0's weights
        # The loss gradient by hand where it is covered (faster on a CPU), else autograd.
        self.analytic_gradient = (
            AnalyticGradient(self.model, config.clip_epsilon, config.vf_coef, config.ent_coef)
            if supports_analytic_gradient(self.model, self.device)
            else None
        )
        # Each rank samples its own actions (and shuffles its own minibatches).
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1_000_003 * self.world.rank)
        # Discrete observations are one-hot encoded: there is nothing to normalize.
        is_box = isinstance(observation_space, spaces.Box)
        self.obs_normalizer = ObservationNormalizer(
            observation_space.shape if is_box else (), config.obs_clip, config.normalize_observations and is_box
        )
        self.reward_scaler = RewardScaler(config.num_envs, config.gamma, config.reward_clip, config.normalize_rewards)
        self.global_step = 0
        self.update = 0
        # One learn() call runs from schedule_start to schedule_end (global env steps); the
        # learning rate anneals over that span.
        self.schedule_start = 0
        self.schedule_end = 0
        self.train_time = 0.0
        self.stop_requested = False
        self._stop_agreed = False
        self.envs_restored = False
        self._envs = None
        self._runner: EnvRunner | None = None
        self._pending_runner_state: dict | None = None

    @property
    def batch_size(self) -> int:
        """Env steps per update on this process."""
        return self.config.num_envs * self.config.num_steps

    @property
    def global_batch_size(self) -> int:
        """Env steps per update over all ranks."""
        return self.batch_size * self.world.size

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------
    def learn(self, total_steps: int | None = None, progress: bool | None = None, callback=None) -> PPO:
        """Train for ``total_steps`` more environment steps (default: the config's), rounded up to
        whole rollouts. The learning rate anneals to zero over this call.

        ``callback``: a :class:`clippo.callbacks.Callback`, a function ``f(agent, metrics)`` run
        after each update, or a list of them; one returning False stops training cleanly."""
        steps = self.config.total_steps if total_steps is None else total_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"total_steps={steps!r} is invalid: it must be an integer >= 1")
        self.schedule_start = self.global_step
        self.schedule_end = self.global_step + steps
        return self._train(progress, callback)

    def resume(self, progress: bool | None = None, callback=None) -> PPO:
        """Continue a loaded checkpoint's interrupted ``learn`` call to its original end."""
        if self.finished:
            raise ValueError(f"the run is already complete ({self.global_step} of {self.schedule_end} steps)")
        return self._train(progress, callback)

    @property
    def finished(self) -> bool:
        """Whether the current learn() call has reached its end."""
        return self.global_step >= self.schedule_end

    def request_stop(self) -> None:
        """Ask ``learn`` to stop at the next update boundary, checkpoint, and raise TrainingInterrupted."""
        self.stop_requested = True

    def _train(self, progress: bool | None, callback=None) -> PPO:
        cfg = self.config
        callback = as_callback(callback)
        self.stopped_by_callback = False
        runner = self.env_runner()
        buffer = self.new_rollout_buffer()
        updates_left = math.ceil((self.schedule_end - self.global_step) / self.global_batch_size)
        end_step = self.global_step + updates_left * self.global_batch_size
        logger = RunLogger(self.run_dir, end_step, self.global_step, progress, cfg.tensorboard)
        recent_returns: list[float] = []
        start_time, start_step, time_before = time.perf_counter(), self.global_step, self.train_time
        self.stop_requested = self._stop_agreed = False
        try:
            while not (self.finished or self.stopped_by_callback):
                if self.stop_requested if not self.world.distributed else self._stop_agreed:
                    self._stop_interrupted()
                boundary = self._boundary_state()
                learning_rate = self._annealed_learning_rate()
                self.optimizer.lr = learning_rate

                # 1. Run the current policy and store the trajectories.
                rollout_start = time.perf_counter()
                try:
                    runner.collect(self.model, buffer, self.generator)
                except (EnvStepError, NonFiniteError) as exc:
                    self._stop_with_checkpoint(exc, boundary)
                self.global_step += self.global_batch_size
                self.update += 1

                # 2. The critic's values, then rewards-to-go and advantages (bootstrapped on
                #    truncation and at the rollout cut).
                buffer.estimate_values(self.model)
                advantages, returns = compute_gae(
                    *(buffer.tensor(name) for name in ("rewards", "values", "terminated", "truncated", "last_value")),
                    gamma=cfg.gamma,
                    gae_lambda=cfg.gae_lambda,
                )
                batch = buffer.flatten(advantages, returns)
                if callback.on_rollout(self) is False:
                    self.stopped_by_callback = True
                plan = self.plan_update(len(batch))
                episodes = runner.pop_finished_episodes()
                exchange_start = time.perf_counter()
                poisoned, (episode_returns, episode_lengths) = self._exchange_after_rollout(
                    runner.poisoned, batch, plan, episodes
                )
                update_start = time.perf_counter()

                # 3. Several epochs of minibatch steps on the combined PPO loss.
                if poisoned:  # nonfinite="skip": a rollout with NaN/inf data teaches nothing
                    warnings.warn(f"skipped update {self.update}: {runner.poison_message or 'on another rank'}", stacklevel=2)
                    stats = {name: float("nan") for name in ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl")}
                    stats.update(epochs_run=0.0, early_stopped=0, skipped_steps=0)
                else:
                    try:
                        stats = self.update_policy(batch, plan)
                    except NonFiniteError as exc:
                        self._stop_with_checkpoint(exc, boundary)

                recent_returns = (recent_returns + episode_returns)[-100:]
                update_end = time.perf_counter()
                self.train_time = time_before + update_end - start_time
                metrics = {
                        "global_step": self.global_step,
                        "update": self.update,
                        "wall_time": self.train_time,
                        "sps": (self.global_step - start_step) / max(self.train_time - time_before, 1e-9),
                        "episode_return": float(np.mean(episode_returns)) if episode_returns else float("nan"),
                        "episode_length": float(np.mean(episode_lengths)) if episode_lengths else float("nan"),
                        "episodes": len(episode_returns),
                        "recent_return": float(np.mean(recent_returns)) if recent_returns else float("nan"),
                        "learning_rate": learning_rate,
                        "explained_variance": explained_variance(batch.values, batch.returns),
                        "final": self.finished,
                        "rollout_time": exchange_start - rollout_start,
                        "exchange_time": update_start - exchange_start,
                        "update_time": update_end - update_start,
                        **stats,
                }
                if callback.on_update(self, metrics) is False:
                    self.stopped_by_callback = True
                logger.log(metrics)
                if self.run_dir is not None and cfg.checkpoint_every and self.update % cfg.checkpoint_every == 0:
                    self._save_periodic()
        finally:
            logger.close()
        if self.run_dir is not None:
            self.save(self.run_dir / FINAL_NAME)
        return self

    def _save_periodic(self, include_runner: bool = True) -> Path:
        path = self.save(periodic_checkpoint_path(self.run_dir, self.global_step), include_runner=include_runner)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    def _resume_hint(self) -> str:
        return f"resume with: clippo resume {self.run_dir}" if self.run_dir is not None else "nothing was saved (no run_dir)"

    def _stop_interrupted(self) -> None:
        path = self._save_periodic() if self.run_dir is not None else None
        where = f"checkpoint written to {path}; " if path else ""
        error = TrainingInterrupted(
            f"interrupted at step {self.global_step} (update {self.update}); {where}{self._resume_hint()}",
            str(path) if path else None,
        )
        error.signum = getattr(self, "stop_signal", None)
        raise error

    def _boundary_state(self) -> dict[str, Any]:
        """What an update changes, as of its start: the state a failed update is rolled back to."""
        return {
            "counters": (self.global_step, self.update, self.train_time),
            "params": self.optimizer.flat.clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
        }

    def _stop_with_checkpoint(self, exc: EnvStepError | NonFiniteError, boundary: dict[str, Any]) -> None:
        """End training on an env error or a non-finite value, checkpointing the last good update.

        Everything is rolled back to the end of the last good update; the envs are not
        trustworthy, so the checkpoint leaves them out, they are closed, and a resumed run starts
        them afresh.
        """
        self.global_step, self.update, self.train_time = boundary["counters"]
        self.optimizer.flat.copy_(boundary["params"])
        self.optimizer.load_state_dict(boundary["optimizer"])
        self.generator.set_state(boundary["generator"])
        self.obs_normalizer.load_state_dict(boundary["obs_normalizer"])
        self.reward_scaler.load_state_dict(boundary["reward_scaler"])
        try:
            self.close()
        except Exception:  # a crashed env may fail to close as well; it is discarded either way
            self._runner = self._envs = None
        if self.run_dir is None:
            raise type(exc)(f"{exc}; {self._resume_hint()}") from exc
        path = self._save_periodic(include_runner=False)
        raise type(exc)(f"{exc}; the last good update is checkpointed at {path}; {self._resume_hint()}") from exc

    def _annealed_learning_rate(self) -> float:
        if not self.config.anneal_lr:
            return self.config.learning_rate
        span = max(self.schedule_end - self.schedule_start, 1)
        return self.config.learning_rate * (1.0 - (self.global_step - self.schedule_start) / span)

    def _exchange_after_rollout(
        self, poisoned: bool, batch: Batch, plan: UpdatePlan, episodes: tuple[list[float], list[int]]
    ) -> tuple[bool, tuple[list[float], list[int]]]:
        """Across ranks, in one exchange: pool the normalization statistics so that every rank
        holds the same, pool the advantage statistics of each planned minibatch (stored in
        ``plan``), gather the finished episodes (in rank order), and agree on whether any rank's
        rollout was poisoned and whether any rank was asked to stop (it stops after this update).

        One exchange instead of one per purpose: on a small machine each costs about as much as
        a minibatch step. Returns the agreed ``poisoned`` and every rank's episodes."""
        if not self.world.distributed:
            return poisoned, episodes
        stats = [self.obs_normalizer.stats, self.reward_scaler.stats]
        sums = self._advantage_sums(batch, plan) if self.config.normalize_advantages else None
        every = all_gather((poisoned, self.stop_requested, statistics_sums(stats), sums, episodes), self.world)
        pool_statistics(stats, [rank[2] for rank in every], self.world.size)
        if sums is not None:
            self._set_moments(plan, pooled_moments([rank[3] for rank in every]))
        self._stop_agreed = any(rank[1] for rank in every)
        episodes = tuple([value for rank in every for value in rank[4][i]] for i in range(2))
        return any(rank[0] for rank in every), episodes

    def plan_update(self, batch_size: int) -> UpdatePlan:
        """Draw every epoch's minibatches for an update of ``batch_size`` samples."""
        cfg = self.config
        if cfg.num_minibatches == 1:
            return UpdatePlan([None] * cfg.update_epochs)
        epochs = []
        for _ in range(cfg.update_epochs):
            order = torch.randperm(batch_size, generator=self.generator, device=self.device)
            epochs.append([indices for indices in order.tensor_split(cfg.num_minibatches) if len(indices)])
        return UpdatePlan(epochs)

    def _advantage_sums(self, batch: Batch, plan: UpdatePlan) -> np.ndarray:
        """This rank's count, sum and sum of squares of the advantages of each planned minibatch
        (of the whole batch, normalized once, when there is one minibatch per epoch)."""
        advantages = batch.advantages.cpu().numpy()
        if plan.epochs[0] is None:
            return group_sums(advantages, [np.arange(len(advantages))])
        return group_sums(advantages, [indices.cpu().numpy() for epoch in plan.epochs for indices in epoch])

    @staticmethod
    def _set_moments(plan: UpdatePlan, moments: list[tuple[float, float]]) -> None:
        if plan.epochs[0] is None:
            plan.moments = [moments]
            return
        sizes = [len(epoch) for epoch in plan.epochs]
        starts = np.cumsum([0, *sizes])
        plan.moments = [moments[start : start + size] for start, size in zip(starts, sizes)]

    def _normalized_advantages(self, advantages: torch.Tensor, plan: UpdatePlan, epoch: int, index: int) -> torch.Tensor:
        """Zero mean, unit std: with this minibatch's own statistics in a single process, with
        the pooled statistics of every rank's minibatch of the same index across ranks."""
        return normalize_advantages(advantages, moments=None if plan.moments is None else plan.moments[epoch][index])

    @staticmethod
    def _shuffled_minibatches(batch: Batch, indices: list[torch.Tensor]) -> list[Batch]:
        """``[batch[i] for i in indices]``, gathered as one shuffled copy of the batch cut into
        consecutive slices: one indexing per field and epoch instead of one per minibatch."""
        shuffled = batch[torch.cat(indices)]
        bounds = np.cumsum([0] + [len(i) for i in indices]).tolist()
        return [shuffled[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]

    def _loss_and_gradient(self, minibatch: Batch, advantages: torch.Tensor) -> LossTerms:
        """The combined PPO loss on one minibatch, its gradient left in ``self.optimizer.grad``:
        worked out by hand where ``clippo.gradients`` covers the model, by autograd otherwise."""
        cfg = self.config
        old_values = minibatch.values if cfg.clip_value_loss else None
        if self.analytic_gradient is not None:
            return self.analytic_gradient(
                minibatch.obs, minibatch.actions, minibatch.logprobs, advantages, minibatch.returns, old_values
            )
        # With no entropy bonus, the entropy is only logged: keep it out of the graph.
        logprobs, entropy, values = self.model.evaluate_actions(
            minibatch.obs, minibatch.actions, entropy_grad=cfg.ent_coef > 0
        )
        logratio = logprobs - minibatch.logprobs
        pg_loss, ratio = clipped_surrogate_loss(logratio, advantages, cfg.clip_epsilon)
        v_loss = value_loss(values, minibatch.returns, old_values, cfg.clip_epsilon)
        entropy_mean = entropy_bonus(entropy)
        loss = ppo_loss(pg_loss, v_loss, entropy_mean, cfg.vf_coef, cfg.ent_coef)
        self.optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():  # one transfer from the device for all six numbers
            numbers = torch.stack(
                [loss, pg_loss, v_loss, entropy_mean, approx_kl(logratio, ratio), clip_fraction(ratio, cfg.clip_epsilon)]
            ).tolist()
        return LossTerms(*numbers, logratio.detach())

    def update_policy(self, batch: Batch, plan: UpdatePlan | None = None) -> dict[str, float]:
        """The PPO update: ``update_epochs`` passes of shuffled minibatches, one Adam step each,
        stopped as soon as a minibatch's approximate KL to the rollout policy exceeds target_kl.

        ``plan`` (from ``plan_update``) fixes the minibatches; drawn here when not given."""
        cfg = self.config
        if plan is None:
            plan = self.plan_update(len(batch))
            if self.world.distributed and cfg.normalize_advantages:
                self._set_moments(plan, pooled_moments(all_gather(self._advantage_sums(batch, plan), self.world)))
        single_minibatch = cfg.num_minibatches == 1
        if single_minibatch and cfg.normalize_advantages:
            # The one minibatch is the whole batch in every epoch: normalize its advantages once.
            batch = dataclasses.replace(batch, advantages=self._normalized_advantages(batch.advantages, plan, 0, 0))
        normalize_each = cfg.normalize_advantages and not single_minibatch
        # Each step's statistics travel in the exchange buffer after the gradient, so across
        # ranks they are averaged by the same all-reduce.
        exchange = self.optimizer.extra
        history: list[list[float]] = []
        kl = 0.0
        early_stopped = False
        skipped = 0
        for epoch, indices in enumerate(plan.epochs):
            # the order of samples in a mean does not matter: the one minibatch is left unshuffled
            minibatches = [batch] if indices is None else self._shuffled_minibatches(batch, indices)
            for index, minibatch in enumerate(minibatches):
                advantages = minibatch.advantages
                if normalize_each:
                    advantages = self._normalized_advantages(advantages, plan, epoch, index)
                terms = self._loss_and_gradient(minibatch, advantages)
                step_stats = [terms.approx_kl, terms.policy_loss, terms.value_loss, terms.entropy, terms.clip_fraction]
                if self.world.distributed:
                    # The one exchange per step: gradient, KL and statistics averaged over the ranks.
                    exchange.copy_(torch.tensor(step_stats, dtype=exchange.dtype))
                    all_reduce_mean_(self.optimizer.exchange, self.world)
                    step_stats = exchange.tolist()
                kl = step_stats[0]
                if cfg.target_kl is not None and kl > cfg.target_kl:
                    early_stopped = True  # this minibatch's step would move the policy too far
                    break
                grad_norm = self.optimizer.clip_grad_norm(cfg.max_grad_norm)
                if not (math.isfinite(grad_norm) and math.isfinite(terms.loss)):
                    what = "gradient" if math.isfinite(terms.loss) else "loss"
                    message = (
                        f"non-finite {what} at update {self.update}, minibatch step {len(history) + 1} "
                        f"(policy loss {terms.policy_loss:.4g}, value loss {terms.value_loss:.4g}, gradient norm {grad_norm:.4g})"
                    )
                    if cfg.nonfinite == "stop":
                        raise NonFiniteError(message)
                    skipped += 1
                    continue
                self.optimizer.step()
                history.append(step_stats[1:])
            if early_stopped:
                break
        steps_taken = len(history)
        means = np.mean(history, axis=0).tolist() if history else [float("nan")] * (len(MINIBATCH_STATS) - 1)
        stats = dict(zip(MINIBATCH_STATS[1:], means))
        stats["approx_kl"] = kl
        stats["epochs_run"] = steps_taken / cfg.num_minibatches
        stats["early_stopped"] = int(early_stopped)
        stats["skipped_steps"] = skipped
        return stats

    def new_rollout_buffer(self) -> RolloutBuffer:
        """Empty storage for one rollout of this agent's shape."""
        distribution = self.model.distribution
        return RolloutBuffer(
            self.config.num_steps,
            self.config.num_envs,
            self.model.obs_size,
            distribution.action_shape,
            distribution.action_dtype,
            distribution.num_outputs,
            self.device,
        )

    def env_runner(self) -> EnvRunner:
        """The training envs and their carried-over state (created, and started, on first use)."""
        if self._runner is None:
            if self._envs is None:
                self._envs = make_vector_env(self.env_source, self.config.num_envs, self.config.vector_env)
                self._check_spaces(self._envs)
            pending, self._pending_runner_state = self._pending_runner_state, None
            # Ranks get disjoint env seeds; a run resumed without its envs' state restarts them
            # from seeds of their own.
            seed = self.config.seed + self.world.rank * self.config.num_envs
            if self.update:
                seed += 7919 * self.update
            self._runner = EnvRunner(self._envs, self.obs_normalizer, self.reward_scaler, self.config.nonfinite)
            # Saved env state is rank 0's: other ranks start their envs afresh.
            self.envs_restored = pending is not None and self.world.is_main and self._runner.load_state_dict(pending)
            if not self.envs_restored:
                self._runner.start(seed)
        return self._runner

    def _check_spaces(self, envs) -> None:
        for name in ("observation_space", "action_space"):
            mine, theirs = getattr(self, name), getattr(envs, f"single_{name}")
            if mine != theirs:
                envs.close()
                raise ValueError(
                    f"the env's {name} {describe_space(theirs)} does not match the agent's {describe_space(mine)}"
                )

    # ------------------------------------------------------------------------------------------
    # acting and evaluation
    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """Action(s) for one observation or a batch of them, valid for the env's action space.

        Observations are raw env observations: the agent applies its own (frozen) normalization.
        """
        obs = np.asarray(obs)
        single_shape = self.observation_space.shape if isinstance(self.observation_space, spaces.Box) else ()
        single = obs.shape == tuple(single_shape)
        if not single and obs.shape[1:] != tuple(single_shape):
            raise ValueError(
                f"observation of shape {obs.shape} does not fit the observation space {self.observation_space}: "
                f"expected {tuple(single_shape)} or (batch, *{tuple(single_shape)})"
            )
        obs = self.model.preprocess(self.obs_normalizer(obs[None] if single else obs))
        noise = None if deterministic else self.model.distribution.noise((len(obs),), self.generator, self.device)
        actions, _ = self.model.act(obs, noise)
        env_actions = self.model.distribution.to_env(actions.cpu().numpy())
        return env_actions[0] if single else env_actions

    def predict(self, obs: Any, deterministic: bool = False) -> tuple[np.ndarray, None]:
        """Stable-Baselines3-style alias of :meth:`act` returning ``(action, None)``."""
        return self.act(obs, deterministic), None

    def evaluate(
        self,
        episodes: int = 10,
        seed: int | None = None,
        deterministic: bool = True,
        env: EnvSource | None = None,
        num_envs: int | None = None,
    ) -> dict[str, Any]:
        """Run whole episodes with the (by default deterministic) policy; raw env returns."""
        if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"episodes={episodes!r} is invalid: it must be an integer >= 1")
        source = env if env is not None else self.env_source
        count = num_envs or min(episodes, self.config.num_envs)
        envs = make_vector_env(source, count, self.config.vector_env)
        try:
            self._check_spaces(envs)
            returns, lengths = run_episodes(envs, lambda obs: self.act(obs, deterministic), episodes, seed)
        finally:
            envs.close()
        return {
            "mean_return": float(np.mean(returns)),
            "std_return": float(np.std(returns)),
            "episodes": len(returns),
            "mean_length": float(np.mean(lengths)),
            "returns": returns,
        }

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to act as trained and to continue training (tensors and plain data)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "clippo_version": __version__,
            "config": self.config.to_dict(),
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "global_step": self.global_step,
            "update": self.update,
            "schedule": [self.schedule_start, self.schedule_end],
            "generator": self.generator.get_state(),
            "global_rngs": global_rng_states(),
            "train_time": self.train_time,
            "runner": None,
        }

    def save(self, path: str | Path, include_runner: bool = True) -> Path:
        """Write a checkpoint atomically (temporary file, fsync, rename).

        With a training env running, its state goes in too so that training can resume exactly.
        A model with non-finite parameters is never written.
        """
        if not torch.isfinite(self.optimizer.flat).all():
            raise NonFiniteError(f"refusing to write {path}: the model has non-finite parameters")
        state = self.state_dict()
        if include_runner and self._runner is not None:
            state["runner"] = self._runner.state_dict()
        return write_atomic(state, path)

    @classmethod
    def load(
        cls, path: str | Path, env: EnvSource | None = None, run_dir: str | Path | None = None, device: str | None = None
    ) -> PPO:
        """Load a checkpoint file or a run directory's final checkpoint.

        ``env`` is needed only when the agent was trained on an env factory rather than an id.
        """
        return cls._from_payload(read_checkpoint(path), path, env, run_dir, device)

    @classmethod
    def from_run(cls, run_dir: str | Path, env: EnvSource | None = None) -> PPO:
        """The newest checkpoint of a run directory, set to log and checkpoint there (to resume)."""
        path, payload = latest_checkpoint(run_dir)
        agent = cls._from_payload(payload, path, env, run_dir, None)
        if payload.get("global_rngs") is not None:
            # clippo draws from its own generator, but env or user code may use the global ones.
            set_global_rng_states(payload["global_rngs"])
        return agent

    @classmethod
    def _from_payload(
        cls, payload: dict[str, Any], path, env: EnvSource | None, run_dir: str | Path | None, device: str | None
    ) -> PPO:
        try:
            values = dict(payload["config"])
            if device is not None:
                values["device"] = device
            config = config_from_dict(values)
            agent = cls.__new__(cls)
            agent._setup(
                config,
                space_from_dict(payload["observation_space"]),
                space_from_dict(payload["action_space"]),
                run_dir,
            )
            agent.model.load_state_dict(payload["model"])
            # (checkpoints written before the optimizer recorded its layout used the model's order)
            agent.optimizer.load_state_dict(
                payload["optimizer"], saved_names=[name for name, _ in agent.model.named_parameters()]
            )
            agent.obs_normalizer.load_state_dict(payload["obs_normalizer"])
            agent.reward_scaler.load_state_dict(payload["reward_scaler"])
            agent.global_step = int(payload["global_step"])
            agent.update = int(payload["update"])
            agent.schedule_start, agent.schedule_end = (int(v) for v in payload["schedule"])
            restore_generator(agent.generator, payload["generator"])
            agent.train_time = float(payload.get("train_time", 0.0))
            agent._pending_runner_state = payload.get("runner")
        except Exception as exc:  # a damaged payload can fail anywhere in reconstruction
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this clippo: {first[:200]}") from None
        agent.env_source = env if env is not None else config.env_id
        return agent

    def close(self) -> None:
        """Close the training environments."""
        if self._runner is not None:
            self._runner.close()
        elif self._envs is not None:
            self._envs.close()
        self._runner = None
        self._envs = None

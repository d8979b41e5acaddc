"""Multi-agent PPO on PettingZoo envs: what ``PPO(make_env)`` becomes when ``make_env`` makes a
PettingZoo env (``from clippo import PPO`` stays the one entry point).

Each policy group (``clippo.multiagent.groups``) is trained by a :class:`GroupLearner`: clippo's
own single-agent :class:`~clippo.agent.PPO` for the group's spaces, without envs of its own,
so that its actor-critic, optimizer, loss (the fast path's hand-written gradient where it
applies), minibatch update, normalizer and generator are exactly the single-agent ones. The
multi-agent runner collects every group's transitions; each update then computes GAE per agent
slot (``clippo.core.advantages.compute_gae``) and runs each group's ``clippo.training.update.Learner.update_policy``.

Steps: ``total_steps`` counts agent steps (one per action of an agent the learner controls, as
SuperSuit-based setups count them); ``num_steps`` is env steps per env copy and rollout, and the
logs show env steps too (``env_steps``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from clippo import fastpath
from clippo.agent import PPO, global_rng_states, restore_generator, set_global_rng_states
from clippo.config.ppo_config import PPOConfig, config_from_dict, resolve_config
from clippo.core import precision, safety
from clippo.core.errors import ActionMaskError, CheckpointError, ConfigError, NonFiniteError, first_line
from clippo.core.losses import AutogradLoss, explained_variance
from clippo.core.observations import to_tensor
from clippo.core.version import __version__
from clippo.envs.preprocessing import Preprocessing
from clippo.multiagent import evaluation
from clippo.multiagent.buffer import combine
from clippo.multiagent.critic import CentralInput, centralize
from clippo.multiagent.groups import GroupSpec, ObservationMaker, build_groups
from clippo.multiagent.pettingzoo import EnvFactory, UntrustedImportError, make_adapter, multiagent_source
from clippo.multiagent.resume import restore_runner, runner_state
from clippo.multiagent.runner import MultiAgentRunner, env_action_rows
from clippo.multiagent.selfplay import SelfPlay
from clippo.rollout.masking import MASK_KEY, component_starts, first_invalid_row
from clippo.rollout.normalization import RewardScaler
from clippo.training.callbacks import as_callback, with_config_evaluation
from clippo.training.checkpoint import (
    FINAL_NAME,
    FORMAT,
    FORMAT_VERSION,
    describe_space,
    latest_checkpoint,
    periodic_checkpoint_path,
    prune_checkpoints,
    read_checkpoint,
    run_dir_lock,
    space_from_dict,
    space_to_dict,
    write_atomic,
)
from clippo.training.distributed import all_gather, broadcast_, init_world, pool_statistics, statistics_sums
from clippo.training.logger import COLUMNS, METRICS_FILE, RunLogger
from clippo.training.loop import (
    Stoppable,
    StopRequest,
    annealed_clip_epsilon,
    annealed_learning_rate,
    checkpoint_if_due,
    stop_interrupted,
)
from clippo.training.update import LossFunction

#: metrics.csv of a multi-agent run: the single-agent columns, then env steps and self-play's.
MULTIAGENT_COLUMNS = [
    *COLUMNS,
    "env_steps",
    "env_sps",
    "selfplay/win_vs_pool",
    "selfplay/draw_vs_pool",
    "selfplay/loss_vs_pool",
    "selfplay/games_vs_pool",
    "selfplay/win_vs_latest",
    "selfplay/draw_vs_latest",
    "selfplay/loss_vs_latest",
    "selfplay/win_vs_random",
    "selfplay/draw_vs_random",
    "selfplay/loss_vs_random",
    "selfplay/games_vs_random",
    "selfplay/elo",
    "selfplay/pool_size",
    "selfplay/pool_mean_elo",
    "vs_random/win",
    "vs_random/draw",
    "vs_random/loss",
]


#: what metrics.csv shows per group when there are several (``group/<name>/<statistic>``;
#: ``transitions``: the group's transitions in the update's batch)
GROUP_STATS = ("policy_loss", "value_loss", "entropy", "approx_kl", "explained_variance", "transitions")


#: env seeds of rank r start r * RANK_SEED_STRIDE after rank 0's (each rank its own episodes)
RANK_SEED_STRIDE = 104_729


class GroupLearner(PPO):
    """The single-agent PPO machinery for one policy group (no envs of its own).

    ``critic_space``: the centralized critic's input space (None: a local critic)."""

    def __init__(
        self,
        spec: GroupSpec,
        config: PPOConfig,
        critic_space: spaces.Box | None,
        masked: bool,
        index: int,
        loaded: bool = False,
    ) -> None:
        self.spec = spec
        self.critic_space = critic_space
        self.centralized = critic_space is not None
        self.masked = masked
        # Groups of the same shape should not start from the same weights.
        group_config = dataclasses.replace(config, seed=(config.seed + 7919 * index) % 2**32)
        self._setup(group_config, spec.policy_space, spec.action_space, None, loaded=loaded)

    def _build_model(self, config, policy_space, action_space, encoder):
        model = super()._build_model(config, policy_space, action_space, encoder)
        if self.critic_space is not None:
            recurrent = None if config.recurrent == "none" else config.recurrent
            centralize(
                model,
                policy_space,
                self.critic_space,
                config.hidden_sizes,
                config.activation,
                recurrent,
                config.recurrent_hidden_size,
            )
        return model

    def _choose_paths(self) -> LossFunction:
        """The loss: the fast path's hand-written gradient where it covers the model and the
        stored observations are flat floats (the multi-agent buffer stores Discrete
        observations as indices), else autograd. (The rollout is the multi-agent runner's: the
        single-agent runner_class and buffer_class are never set.)"""
        space = self.model.observation_space
        cfg = self.config
        if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
            return fastpath.make_loss(cfg, self.model, self.device, self.optimizer.zero_grad, self.masked)
        return AutogradLoss(self.model, cfg.clip_epsilon, cfg.vf_coef, cfg.ent_coef, self.optimizer.zero_grad)

    def group_state(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_group_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(
            state["optimizer"], saved_names=[name for name, _ in self.model.named_parameters()]
        )
        self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        restore_generator(self.generator, state["generator"])


@dataclasses.dataclass
class EnvInfo:
    """What a multi-agent agent knows of its env without making one (saved in checkpoints)."""

    kind: str  # "parallel" or "aec"
    possible_agents: list[str]
    observation_spaces: dict[str, spaces.Space]
    action_spaces: dict[str, spaces.Space]
    state_size: int | None  # the size of env.state(), None where the env gives none

    @classmethod
    def of(cls, adapter, seed: int) -> EnvInfo:
        adapter.reset(seed)
        adapter.detect_state()
        agents = adapter.possible_agents
        return cls(
            adapter.kind,
            list(agents),
            {a: adapter.observation_space(a) for a in agents},
            {a: adapter.action_space(a) for a in agents},
            adapter.state().size if adapter.has_state else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "possible_agents": list(self.possible_agents),
            "observation_spaces": [space_to_dict(self.observation_spaces[a]) for a in self.possible_agents],
            "action_spaces": [space_to_dict(self.action_spaces[a]) for a in self.possible_agents],
            "state_size": self.state_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvInfo:
        agents = list(data["possible_agents"])
        return cls(
            data["kind"],
            agents,
            {a: space_from_dict(s) for a, s in zip(agents, data["observation_spaces"], strict=False)},
            {a: space_from_dict(s) for a, s in zip(agents, data["action_spaces"], strict=False)},
            data["state_size"],
        )

    def check(self, adapter, name: str) -> None:
        """A one-line error when a new copy of the env does not have the same agents and spaces."""
        if list(adapter.possible_agents) != self.possible_agents:
            raise ValueError(
                f"env {name!r} has agents {adapter.possible_agents}, but this agent was made for {self.possible_agents}"
            )
        for agent in self.possible_agents:
            for what, table, method in (("observation", self.observation_spaces, adapter.observation_space),
                                        ("action", self.action_spaces, adapter.action_space)):  # fmt: skip
                if method(agent) != table[agent]:
                    raise ValueError(
                        f"env {name!r} gives agent {agent!r} the {what} space {describe_space(method(agent))}, "
                        f"but this agent was made for {describe_space(table[agent])}"
                    )


def _check_supported(config: PPOConfig) -> None:
    """One-line errors for what multi-agent runs do not take (yet)."""
    unsupported = {
        "use_sde": config.use_sde,
        "reward_sign": config.reward_sign,
        "episodic_life": config.episodic_life,
    }
    for name, used in unsupported.items():
        if used:
            raise ConfigError(
                f"{name}={getattr(config, name)!r} is not supported for multi-agent (PettingZoo) envs yet"
            )
    preprocessing = Preprocessing.from_config(config)
    if preprocessing.active:
        raise ConfigError(
            f"{preprocessing} is not supported for multi-agent (PettingZoo) envs yet: wrap the env yourself (e.g. "
            "SuperSuit)"
        )


def _check_mask_space(spec: GroupSpec, distribution) -> None:
    """One-line errors for an ``action_mask`` that clippo cannot apply to the group's actions."""
    if not distribution.maskable:
        raise ValueError(
            f"the observations of {', '.join(spec.agents)} carry an {MASK_KEY!r}, but clippo masks only Discrete and "
            f"MultiDiscrete action spaces, not {describe_space(spec.action_space)}"
        )
    space = spec.observation_space
    assert isinstance(space, spaces.Dict)  # called for masked groups: a Dict with an action_mask field
    mask_space = space.spaces[MASK_KEY]
    shape = mask_space.shape
    # (a mask field of no shape, e.g. a Dict, fits no action space: a one-line error too, not a TypeError)
    if shape is None or int(np.prod(shape)) != distribution.num_outputs:
        what = f"has shape {shape}" if shape is not None else f"is {describe_space(mask_space)}"
        raise ValueError(
            f"the {MASK_KEY!r} of {', '.join(spec.agents)} {what}, but the action space "
            f"{describe_space(spec.action_space)} needs {distribution.num_outputs} values"
        )


class MultiAgentPPO(Stoppable):
    """PPO for PettingZoo envs (made by ``PPO(...)``; see the module docstring)."""

    #: the columns of this kind of run's metrics.csv
    metrics_columns = MULTIAGENT_COLUMNS

    def __init__(
        self,
        source: EnvFactory,
        *,
        preset: str | None = None,
        config_file: str | Path | None = None,
        run_dir: str | Path | None = None,
        trust_code: bool = False,
        **hyperparameters: Any,
    ) -> None:
        hyperparameters.pop("env_id", None)
        config = resolve_config(source.name, preset, config_file, hyperparameters, trust_code)
        if source.probe is None:
            source.kwargs = dict(config.env_kwargs)
        if run_dir is not None:
            safety.check_run_dir(run_dir)
        if run_dir is not None and (Path(run_dir) / METRICS_FILE).exists():
            raise ValueError(
                f"run directory {str(run_dir)!r} already holds a run: choose another run_dir, "
                f"or continue it with: clippo resume {run_dir}"
            )
        self.env_source: EnvFactory | None = source
        adapter = make_adapter(source.make(), direct=config.fast_path == "auto")
        try:
            info = EnvInfo.of(adapter, config.seed)
            self._setup(config, info, run_dir)
        except BaseException:
            adapter.close()
            raise
        self._spare_adapters = [adapter]

    # ------------------------------------------------------------------------------------------
    def _setup(self, config: PPOConfig, info: EnvInfo, run_dir: str | Path | None, loaded: bool = False) -> None:
        """``loaded``: from a checkpoint (its bf16 runs in fp32 on hardware without bf16)."""
        _check_supported(config)
        self.config = config
        self.env_info = info
        # Across torch.distributed ranks (--nproc, torchrun): each rank steps its own env copies;
        # every group's learner all-reduces its gradients (clippo.training.update), and
        # _exchange_after_rollout agrees on the rest. Only rank 0 writes.
        self.world = init_world(config.device)
        self.run_dir = Path(run_dir) if run_dir is not None and self.world.is_main else None
        self.specs = build_groups(
            info.possible_agents,
            info.observation_spaces,
            info.action_spaces,
            config.policy_groups,
            config.agent_id_feature,
        )
        self.central = (
            CentralInput(info.possible_agents, self.specs, info.state_size) if config.critic == "centralized" else None
        )
        if len(self.specs) > 1:
            self.metrics_columns = MULTIAGENT_COLUMNS + [
                f"group/{spec.name}/{name}" for spec in self.specs for name in GROUP_STATS
            ]
        self.makers = {}
        self.learners: list[GroupLearner] = []
        for index, spec in enumerate(self.specs):
            maker = ObservationMaker(spec)
            critic_space = None if self.central is None else self.central.space(spec)
            learner = GroupLearner(spec, config, critic_space, maker.masked, index, loaded)
            # reward scaling runs over the group's agent slots (env copies x agents)
            learner.reward_scaler = RewardScaler(
                config.num_envs * len(spec.agents), config.gamma, config.reward_clip, config.normalize_rewards
            )
            if maker.masked:
                _check_mask_space(spec, learner.model.distribution)
            self.learners.append(learner)
            for agent in spec.agents:
                self.makers[agent] = (index, maker)
        self.device = self.learners[0].device
        self.selfplay = self._make_selfplay(config, info)
        self.global_step = 0
        self.env_steps = 0
        self.update = 0
        self.global_batch_size = 0  # agent steps of the last update (what EvalCallback reads)
        self.schedule_start = self.schedule_end = 0
        self.train_time = 0.0
        self.recent_returns: list[float] = []
        #: why training should end early (a signal, a callback): set by request_stop and the loop
        self.stopping = StopRequest()
        self.envs_restored = False
        #: a loaded checkpoint's runner state, restored when the env copies are made (clippo.multiagent.resume)
        self._pending_runner_state: Any = None
        #: why a resumed run's envs start fresh (a multi-agent run does not save its env copies)
        self.envs_fresh_reason: str | None = None
        #: the precision a loaded checkpoint trained in (``auto`` may resolve otherwise here)
        self.saved_precision: str | None = None
        self._runner: MultiAgentRunner | None = None
        self._spare_adapters = []
        self._untrusted_env: str | None = None

    def _make_selfplay(self, config: PPOConfig, info: EnvInfo) -> SelfPlay | None:
        """Self-play for two-player turn-based games with masks (``selfplay``: auto, on, off)."""
        masked = all(isinstance(s, spaces.Dict) and MASK_KEY in s.spaces for s in info.observation_spaces.values())
        fits = info.kind == "aec" and len(info.possible_agents) == 2 and len(self.specs) == 1 and masked
        if config.selfplay == "off" or (config.selfplay == "auto" and not fits):
            return None
        if config.recurrent != "none":
            raise ConfigError(
                f"recurrent={config.recurrent!r} is not supported with self-play yet: set selfplay='off', or "
                "recurrent='none'"
            )
        if not fits:
            raise ConfigError(
                f"selfplay='on' is invalid for {config.env_id!r}: self-play needs a two-player turn-based (AEC) game "
                "whose "
                "players share one policy and whose observations carry an 'action_mask'"
            )
        return SelfPlay(
            info.possible_agents,
            config.selfplay_pool_size,
            config.selfplay_latest_prob,
            config.selfplay_sampling,
            config.seed + 31,
            config.selfplay_random_prob,
        )

    @property
    def groups(self) -> dict[str, GroupLearner]:
        """The policy groups' learners by name (``agent.groups["shared"].model`` is its actor-critic)."""
        return {learner.spec.name: learner for learner in self.learners}

    @property
    def precision(self) -> str:
        """``bf16`` where any group's networks run in bf16 (``precision=auto`` resolves per group: a
        group on the numpy fast path stays fp32), else ``fp32``."""
        return "bf16" if any(learner.precision == "bf16" for learner in self.learners) else "fp32"

    @property
    def finished(self) -> bool:
        return self.global_step >= self.schedule_end

    # ------------------------------------------------------------------------------------------
    # envs
    # ------------------------------------------------------------------------------------------
    def new_adapter(self):
        """A new adapter around a fresh copy of the env (evaluation and the training env copies)."""
        if self.env_source is None:
            raise UntrustedImportError(
                f"this agent's env {self._untrusted_env or self.config.env_id!r} is named by its checkpoint, and "
                "importing it runs its code: pass the env yourself (env= in Python: a module path or env function), "
                f"or trust the file ({safety.TRUST_ARGUMENT} in Python, {safety.TRUST_FLAG} on the command line)"
            )
        adapter = make_adapter(self.env_source.make(), direct=self.config.fast_path == "auto")
        try:
            self.env_info.check(adapter, self.env_source.name)
        except BaseException:
            adapter.close()
            raise
        return adapter

    def env_runner(self) -> MultiAgentRunner:
        """The training env copies (made and reset on first use)."""
        if self._runner is None:
            adapters = self._spare_adapters[: self.config.num_envs]
            self._spare_adapters = []
            while len(adapters) < self.config.num_envs:
                adapters.append(self.new_adapter())
            for adapter in adapters:
                adapter.has_state = self.env_info.state_size is not None
            self._runner = MultiAgentRunner(adapters, self.learners, self.central, self.config.num_steps, self.selfplay)
            seed = self.config.seed + (7919 * self.update if self.update else 0) + RANK_SEED_STRIDE * self.world.rank
            pending, self._pending_runner_state = self._pending_runner_state, None
            self.envs_restored, self.envs_fresh_reason = False, None
            if pending is not None:
                self._restore_runner(pending, seed)
            if not self.envs_restored:
                self._runner.start(seed)
        return self._runner

    def _restore_runner(self, pending: Any, seed: int) -> None:
        """Continue from a checkpoint's runner state (``clippo.multiagent.resume``): the env copies
        are reset first (so that every attribute the state names exists), then overwritten."""
        assert self._runner is not None
        if self.world.distributed:
            self.envs_fresh_reason = "saved env state is rank 0's"
            return
        for c, adapter in enumerate(self._runner.adapters):
            adapter.reset(seed + c)
        self.envs_fresh_reason = restore_runner(self._runner, pending)
        self.envs_restored = self.envs_fresh_reason is None
        self._runner.started = self.envs_restored

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
        for adapter in self._spare_adapters:
            adapter.close()
        self._runner = None
        self._spare_adapters = []

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------
    def learn(self, total_steps: int | None = None, progress: bool | None = None, callback=None) -> MultiAgentPPO:
        """Train for ``total_steps`` more agent steps (default: the config's), rounded up to whole rollouts."""
        steps = self.config.total_steps if total_steps is None else total_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"total_steps={steps!r} is invalid: it must be an integer >= 1")
        self.schedule_start = self.global_step
        self.schedule_end = self.global_step + steps
        self._train(progress, callback)
        return self

    def resume(self, progress: bool | None = None, callback=None) -> MultiAgentPPO:
        if self.finished:
            raise ValueError(f"the run is already complete ({self.global_step} of {self.schedule_end} steps)")
        self._train(progress, callback)
        return self

    def _train(self, progress: bool | None, callback) -> None:
        lock = run_dir_lock(self.run_dir, create=True) if self.run_dir is not None else contextlib.nullcontext()
        with lock:
            self._train_locked(progress, callback)

    def _train_locked(self, progress: bool | None, callback) -> None:
        cfg = self.config
        callback = with_config_evaluation(as_callback(callback), cfg)
        stopping = self.stopping
        stopping.by_callback = stopping.requested = False
        stopping.agreed = stopping.callback_asked = False
        runner = self.env_runner()
        distributed = self.world.distributed
        logger = RunLogger(
            self.run_dir,
            self.schedule_end,
            self.global_step,
            progress if self.world.is_main else False,
            cfg.tensorboard,
            columns=self.metrics_columns,
        )
        start_time, start_step, start_env_steps, time_before = (
            time.perf_counter(),
            self.global_step,
            self.env_steps,
            self.train_time,
        )
        try:
            while not (self.finished or stopping.by_callback):
                if stopping.agreed if distributed else stopping.requested:
                    stop_interrupted(self)
                learning_rate = annealed_learning_rate(self)
                clip = annealed_clip_epsilon(self)
                for learner in self.learners:
                    learner.optimizer.lr = learning_rate
                    learner.clip_epsilon = clip

                # 1. Every env copy for num_steps env steps; each agent's transitions in its slot.
                rollout_start = time.perf_counter()
                taken = runner.collect([learner.generator for learner in self.learners])
                episodes = runner.pop_finished()
                counts = [buffer.transitions() for buffer in runner.buffers]
                if distributed:
                    taken, counts, episodes = self._exchange_after_rollout(taken, counts, episodes)
                if self.selfplay is not None:
                    for episode in episodes:
                        assert episode.opponent is not None and episode.result is not None  # a self-play game's
                        self.selfplay.record(episode.opponent, episode.result)
                self.global_step += taken
                self.global_batch_size = taken
                self.env_steps += cfg.num_envs * cfg.num_steps * self.world.size
                self.update += 1

                # 2. Values, then GAE per agent slot; the batches; the next rollout's starting rows.
                batches = []
                for learner, buffer, count in zip(self.learners, runner.buffers, counts, strict=True):
                    if count:
                        if not buffer.state_size:  # (a recurrent critic's values come from acting)
                            buffer.estimate_values(learner.model.value)
                        advantages, returns = buffer.advantages(cfg.gamma, cfg.gae_lambda)
                        batches.append((learner, buffer.flatten(advantages, returns)))
                    buffer.carry_over()
                if callback.on_rollout(self) is False:
                    self._callback_stop()
                update_start = time.perf_counter()

                # 3. The PPO update of each group on its own agents' transitions.
                stats = self._update_groups(batches)
                update_end = time.perf_counter()
                extra = self._selfplay_step()
                scores = [episode.score for episode in episodes]
                self.recent_returns = (self.recent_returns + scores)[-100:]
                self.train_time = time_before + time.perf_counter() - start_time
                elapsed = max(self.train_time - time_before, 1e-9)
                metrics = {
                    "global_step": self.global_step,
                    "update": self.update,
                    "wall_time": self.train_time,
                    "sps": (self.global_step - start_step) / elapsed,
                    "env_steps": self.env_steps,
                    "env_sps": (self.env_steps - start_env_steps) / elapsed,
                    "episode_return": float(np.mean(scores)) if scores else float("nan"),
                    "episode_length": float(np.mean([e.length for e in episodes])) if episodes else float("nan"),
                    "episodes": len(episodes),
                    "recent_return": float(np.mean(self.recent_returns)) if self.recent_returns else float("nan"),
                    "learning_rate": learning_rate,
                    "final": self.finished,
                    "rollout_time": update_start - rollout_start,
                    "exchange_time": 0.0,
                    "update_time": update_end - update_start,
                    **stats,
                    **extra,
                }
                if callback.on_update(self, metrics) is False:
                    self._callback_stop()
                logger.log(metrics)
                checkpoint_if_due(self)
        finally:
            logger.close()
        if self.run_dir is not None:
            self.save(self.run_dir / FINAL_NAME)

    def _callback_stop(self) -> None:
        """A callback returned False: stop after this update (across ranks, after the update in
        which every rank learns of it: the next after-rollout exchange)."""
        if self.world.distributed:
            self.stopping.callback_asked = True
        else:
            self.stopping.by_callback = True

    def _exchange_after_rollout(self, taken: int, counts: list[int], episodes: list) -> tuple[int, list[int], list]:
        """Across ranks, in one exchange after each rollout: the agent steps taken (summed), each
        group's transitions (a group learns only where every rank has at least one minibatch of
        them: its minibatch steps all-reduce their gradients, so all ranks must take them), the
        groups' normalization statistics (pooled, so that every rank holds the same), the
        finished episodes (every rank's, in rank order) and whether a rank was asked to stop."""
        stats = [s for learner in self.learners for s in (learner.obs_normalizer.stats, learner.reward_scaler.stats)]
        stopping = self.stopping
        every = all_gather(
            (taken, counts, statistics_sums(stats), episodes, stopping.requested, stopping.callback_asked), self.world
        )
        pool_statistics(stats, [rank[2] for rank in every], self.world.size)
        stopping.agreed = any(rank[4] for rank in every)
        stopping.by_callback = any(rank[5] for rank in every)
        least = self.config.num_minibatches
        counts = [count if all(rank[1][g] >= least for rank in every) else 0 for g, count in enumerate(counts)]
        return sum(rank[0] for rank in every), counts, [episode for rank in every for episode in rank[3]]

    def _update_groups(self, batches: list) -> dict[str, float]:
        """Each group's ``Learner.update_policy`` on its batch; the statistics averaged over the groups
        weighted by their transitions, and with several groups each group's own as
        ``group/<name>/<statistic>`` (metrics.csv and TensorBoard)."""
        names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "epochs_run")
        if not batches:
            out = {name: float("nan") for name in names}
            out.update(explained_variance=float("nan"), early_stopped=0, skipped_steps=0)
            return out
        totals = {name: 0.0 for name in names}
        weights = 0
        early = skipped = 0
        values, returns = [], []
        group_stats: dict[str, float] = {}
        for learner, batch in batches:
            stats = learner.learner.update_policy(batch)
            size = batch.samples("values").numel()  # transitions (a recurrent batch's len counts sequences)
            weights += size
            if len(self.learners) > 1:
                own = {name: stats[name] for name in GROUP_STATS[:4]}
                own["explained_variance"] = explained_variance(batch.samples("values"), batch.samples("returns"))
                own["transitions"] = size
                group_stats.update({f"group/{learner.spec.name}/{name}": value for name, value in own.items()})
            for name in names:
                totals[name] += stats[name] * size
            early += stats["early_stopped"]
            skipped += stats["skipped_steps"]
            values.append(batch.samples("values"))
            returns.append(batch.samples("returns"))
        out = {name: total / weights for name, total in totals.items()}
        out["explained_variance"] = explained_variance(torch.cat(values), torch.cat(returns))
        out["early_stopped"] = early
        out["skipped_steps"] = skipped
        out.update(group_stats)
        return out

    def _selfplay_step(self) -> dict[str, float]:
        """Self-play's bookkeeping after an update: a snapshot into the pool when due, the
        periodic games against a random player, and the update's metrics."""
        if self.selfplay is None:
            return {}
        cfg = self.config
        if self.update % cfg.selfplay_snapshot_every == 0:
            self.selfplay.add_snapshot(self.learners[0].model, self.update)
        stats = self.selfplay.pop_stats()
        if cfg.selfplay_eval_every and self.update % cfg.selfplay_eval_every == 0:
            if self.world.is_main:
                result = self.play_random(cfg.selfplay_eval_games, seed=cfg.seed + 20_000 + self.update)
                for outcome in ("win", "draw", "loss"):
                    stats[f"vs_random/{outcome}"] = result[outcome]
            if self.world.distributed:  # rank 0 played the games: every rank takes its rating
                rating = torch.tensor([self.selfplay.rating], dtype=torch.float64)
                self.selfplay.rating = float(broadcast_(rating, self.world)[0])
            stats["selfplay/elo"] = self.selfplay.rating
        return stats

    # ------------------------------------------------------------------------------------------
    # acting and evaluation
    # ------------------------------------------------------------------------------------------
    @property
    def recurrent(self) -> bool:
        return self.learners[0].model.recurrent is not None

    def act(self, observations: dict[str, Any], deterministic: bool = False) -> dict[str, Any]:
        """``{agent: action}`` for ``{agent: observation}`` exactly as the env returns them (masks
        read from an observation's ``action_mask``; an invalid action is never returned)."""
        if self.recurrent:
            raise ValueError(
                f"act() is invalid for this recurrent ({self.config.recurrent}) agent: it acts with a carried state; "
                "use "
                "actions, state = agent.predict(obs, state=state, episode_start=episode_start)"
            )
        items = self._items(observations)
        return dict(zip((agent for agent, _ in items), self.act_batch(items, deterministic)[0], strict=False))

    @staticmethod
    def _items(observations: Any) -> list[tuple[str, Any]]:
        if not isinstance(observations, dict):
            raise TypeError(
                f"observations must be a dict {{agent: observation}} as the env returns them, got "
                f"{type(observations).__name__}"
            )
        return list(observations.items())

    def predict(
        self,
        observations: dict[str, Any],
        state: dict[str, Any] | None = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
        """SB3's contract, per agent: ``actions, state = predict(obs, state, episode_start)``.

        A recurrent agent's ``state`` is the dict the previous call returned (``{agent: state}``;
        None or a missing agent: an episode start, zeros), ``episode_start`` True (every agent),
        or ``{agent: bool}``, where an agent's episode begins (its state is reset). A
        feed-forward agent returns ``(act(obs), None)``."""
        if not self.recurrent:
            return self.act(observations, deterministic), None
        items = self._items(observations)
        state = dict(state or {})
        starts = {
            agent: episode_start if isinstance(episode_start, bool) else bool((episode_start or {}).get(agent, False))
            for agent, _ in items
        }
        states = [None if starts[agent] else state.get(agent) for agent, _ in items]
        actions, new_states = self.act_batch(items, deterministic, states)
        return dict(zip((a for a, _ in items), actions, strict=False)), dict(
            zip((a for a, _ in items), new_states, strict=False)
        )

    @torch.inference_mode()
    def act_batch(
        self, items: list[tuple[str, Any]], deterministic: bool, states: list | None = None
    ) -> tuple[list[Any], list]:
        """Actions for ``(agent, raw observation)`` pairs, batched per group; a recurrent policy
        steps from ``states`` (aligned with ``items``; None: an episode start) and the new states
        come back too."""
        out: list[Any] = [None] * len(items)
        new_states: list = [None] * len(items)
        by_group: dict[int, list[int]] = {}
        for i, (agent, _) in enumerate(items):
            if agent not in self.makers:
                raise ValueError(
                    f"unknown agent {agent!r}: this agent's env has {', '.join(self.env_info.possible_agents)}"
                )
            by_group.setdefault(self.makers[agent][0], []).append(i)
        for gi, indices in by_group.items():
            learner = self.learners[gi]
            maker = self.makers[items[indices[0]][0]][1]
            agents = [items[i][0] for i in indices]
            try:
                obs, masks = maker.batch(agents, [items[i][1] for i in indices])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"observation of agent {agents[0]!r} does not fit its space "
                    f"{describe_space(learner.spec.observation_space)}: {first_line(exc)}"
                ) from None
            if masks is not None:
                bad = first_invalid_row(masks, component_starts(learner.model.distribution))
                if bad is not None:
                    raise ActionMaskError(f"agent {agents[bad]!r} has no valid action: its action mask is all false")
            if learner.obs_normalizer.enabled:
                assert isinstance(obs, np.ndarray)  # normalization is on only for Box policy spaces
                obs = learner.obs_normalizer(obs)
            model = learner.model
            mask_tensor = None if masks is None else torch.from_numpy(masks).to(learner.device)
            distribution = model.distribution
            noise = None if deterministic else distribution.noise((len(indices),), learner.generator, learner.device)
            if model.recurrent:
                # (a centralized critic's core steps on zeros: acting reads only the actor's state)
                critic = (
                    None
                    if learner.critic_space is None
                    else np.zeros((len(indices), learner.critic_space.shape[0]), np.float32)
                )
                tensors = to_tensor(combine(obs, critic, learner.centralized), learner.device)
                size = model.state_size
                given = [None if states is None else states[i] for i in indices]
                before = np.stack(
                    [
                        np.zeros(size, np.float32) if s is None else np.asarray(s, np.float32).reshape(size)
                        for s in given
                    ]
                )
                starts = torch.from_numpy(np.array([s is None for s in given]))
                params, _, after = model.step(
                    tensors, torch.from_numpy(before).to(learner.device), starts.to(learner.device), mask_tensor
                )
                actions = distribution.sample(params, noise)
                for i, row in zip(indices, after.cpu().numpy(), strict=False):
                    new_states[i] = row
            else:
                tensors = to_tensor(combine(obs, None, learner.centralized), learner.device)
                actions, _ = model.act(tensors, noise, mask_tensor)
            for i, action in zip(indices, env_action_rows(distribution, actions.cpu().numpy()), strict=False):
                out[i] = action
        return out, new_states

    def evaluate(
        self, episodes: int = 10, seed: int | None = None, deterministic: bool = True, num_envs: int | None = None
    ) -> dict[str, Any]:
        """Whole episodes with every agent acting by its (by default deterministic) policy: the
        mean team return (the sum of all agents' rewards per episode) and each agent's mean
        return. For a self-play game, games against a uniformly random player in both seats
        instead (``win``/``draw``/``loss`` rates; ``mean_return`` is the learner's). See
        ``clippo.multiagent.evaluation``."""
        if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"episodes={episodes!r} is invalid: it must be an integer >= 1")
        if self.selfplay is not None:
            return self.play_random(episodes, seed, deterministic, num_envs)
        return evaluation.evaluate_team(self, episodes, seed, deterministic, num_envs)

    def play_random(
        self, games: int, seed: int | None = None, deterministic: bool = True, num_envs: int | None = None
    ) -> dict[str, Any]:
        """Games against a uniformly random player, seats alternating (``clippo.multiagent.evaluation``)."""
        if self.selfplay is None:
            raise ValueError(f"play_random is for two-player self-play games; {self.config.env_id!r} is not one")
        return evaluation.play_random(self, games, seed, deterministic, num_envs)

    def play_against(self, opponent: MultiAgentPPO | str | Path, games: int, seed: int | None = None,
                     deterministic: bool = True, num_envs: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Games against another trained agent of the same game (an agent, a checkpoint or a run
        directory), seats alternating: win/draw/loss rates, overall and per seat."""
        if self.selfplay is None:
            raise ValueError(f"play_against is for two-player self-play games; {self.config.env_id!r} is not one")
        name = str(opponent) if not isinstance(opponent, MultiAgentPPO) else "the given agent"
        if isinstance(opponent, MultiAgentPPO):
            other = opponent
        else:
            from clippo.agent import PPO

            loaded = PPO.load(opponent)  # (acting needs no env: nothing is imported)
            if not isinstance(loaded, MultiAgentPPO):
                raise ValueError(
                    f"opponent {name!r} is a single-agent (Gymnasium) checkpoint, not a player of "
                    f"{self.config.env_id!r}"
                )
            other = loaded
        evaluation.check_same_game(self, other, name)
        return evaluation.play_random(self, games, seed, deterministic, num_envs, opponent=other)

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every group's weights, optimizer, normalizer and generator, the self-play pool, the
        counters: tensors and plain data only (loads with ``weights_only=True``)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "clippo_version": __version__,
            "config": self.config.to_dict(),
            "multiagent": {
                "env": self.env_info.to_dict(),
                "groups": [learner.group_state() for learner in self.learners],
                "selfplay": None if self.selfplay is None else self.selfplay.state_dict(),
                "env_steps": self.env_steps,
                # a rollout is num_envs x num_steps env steps per rank: a resume runs in the same world
                "world_size": self.world.size,
            },
            "global_step": self.global_step,
            "update": self.update,
            "schedule": [self.schedule_start, self.schedule_end],
            "global_rngs": global_rng_states(),
            "train_time": self.train_time,
            "recent_returns": [float(r) for r in self.recent_returns],
            "precision": self.precision,  # (resolved: config.precision may say auto)
            "runner": None,
        }

    def save(self, path: str | Path, include_runner: bool = True) -> Path:
        """Write a checkpoint atomically; with ``include_runner``, the env copies' state and what
        the runner carries into the next rollout, where they can be saved exactly
        (``clippo.multiagent.resume``), so that a resumed run continues as if never stopped."""
        for learner in self.learners:
            if not torch.isfinite(learner.optimizer.flat).all():
                raise NonFiniteError(f"refusing to write {path}: group {learner.spec.name!r} has non-finite parameters")
        state = self.state_dict()
        if include_runner and self._runner is not None and self._runner.started:
            # (a marker where the env copies cannot be saved: the resume then says why it starts them afresh)
            state["runner"] = runner_state(self._runner) or {"unavailable": True}
        return write_atomic(state, path)

    def save_checkpoint(self, include_runner: bool = True) -> Path:
        """Write a periodic checkpoint into the run directory (keeping ``keep_checkpoints`` of them)."""
        if self.run_dir is None:
            raise ValueError("save_checkpoint() needs a run directory: this agent has none (use save(path))")
        path = self.save(periodic_checkpoint_path(self.run_dir, self.global_step))
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    @property
    def resume_hint(self) -> str:
        """How to continue this run, for error messages."""
        return (
            f"resume with: clippo resume {self.run_dir}"
            if self.run_dir is not None
            else "nothing was saved (no run_dir)"
        )

    @classmethod
    def load(cls, path: str | Path, env: Any = None, run_dir: str | Path | None = None, device: str | None = None,
             trust_code: bool = False) -> MultiAgentPPO:  # fmt: skip
        """Load a checkpoint. Its env is named by the checkpoint: it is imported only with
        ``trust_code=True``, or give ``env`` yourself; acting (``act``) needs neither."""
        overrides = {} if device is None else {"device": device}
        return cls._from_payload(read_checkpoint(path), path, env, run_dir, overrides, trust_code)

    @classmethod
    def from_run(cls, run_dir: str | Path, env: Any = None, trust_code: bool = False) -> MultiAgentPPO:
        path, payload = latest_checkpoint(run_dir)
        agent = cls._from_payload(payload, path, env, run_dir, {}, trust_code)
        saved = payload["multiagent"].get("world_size", 1)
        if not isinstance(saved, int) or isinstance(saved, bool) or saved < 1:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this clippo: world_size {safety.clean(saved, 20)}"
            )
        if saved != agent.world.size:
            raise CheckpointError(
                f"run {str(run_dir)!r} trained on {saved} processes, this is {agent.world.size}: resume it with: "
                f"clippo resume {run_dir}" + (f" --nproc {saved}" if saved != 1 else "")
            )
        if payload.get("global_rngs") is not None:
            set_global_rng_states(payload["global_rngs"])
        return agent

    @classmethod
    def _from_payload(
        cls, payload, path, env, run_dir, overrides: dict[str, Any], trust_code: bool = False
    ) -> MultiAgentPPO:
        try:
            values = {**payload["config"], **overrides}
            config = config_from_dict(values)
            data = payload["multiagent"]
            agent = cls.__new__(cls)
            agent._setup(config, EnvInfo.from_dict(data["env"]), run_dir, loaded=True)
            if len(data["groups"]) != len(agent.learners):
                raise CheckpointError(
                    f"it holds {len(data['groups'])} policy groups, its config makes {len(agent.learners)}"
                )
            for learner, state in zip(agent.learners, data["groups"], strict=False):
                learner.load_group_state(state)
            if agent.selfplay is not None and data.get("selfplay") is not None:
                agent.selfplay.load_state_dict(data["selfplay"])
            agent.env_steps = int(data["env_steps"])
            agent.global_step = int(payload["global_step"])
            agent.update = int(payload["update"])
            agent.schedule_start, agent.schedule_end = (int(v) for v in payload["schedule"])
            agent.train_time = float(payload.get("train_time", 0.0))
            agent.recent_returns = [float(r) for r in payload.get("recent_returns", [])]
            agent.saved_precision = precision.recorded(payload.get("precision"))
            agent._pending_runner_state = payload.get("runner")
        except Exception as exc:  # a damaged payload can fail anywhere in reconstruction
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this clippo: {first_line(exc)[:200]}"
            ) from None
        if env is not None:
            agent.env_source = multiagent_source(env, config.env_kwargs)
            if agent.env_source is None:
                raise TypeError(
                    f"env {env!r} makes a Gymnasium env, but this checkpoint's agent is multi-agent (PettingZoo)"
                )
        else:
            try:
                agent.env_source = multiagent_source(config.env_id, config.env_kwargs, trusted=trust_code)
            except UntrustedImportError:
                agent.env_source = None
                agent._untrusted_env = config.env_id
        return agent

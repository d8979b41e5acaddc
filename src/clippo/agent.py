"""The ``PPO`` agent's public API: construct, learn, act, predict, evaluate, save and load.

The training loop itself is ``clippo.training.loop``; the agent holds what it trains and checkpoints
(model, optimizer, normalizers, generator, counters) and the pieces it runs, picked once in
``_setup`` (``clippo.fastpath`` decides between the numpy fast path and the torch path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from clippo import fastpath
from clippo.config.ppo_config import PPOConfig, config_from_dict, resolve_config
from clippo.core import observations, precision, safety
from clippo.core.errors import CheckpointError, NonFiniteError, first_line
from clippo.core.losses import LossTerms
from clippo.core.version import __version__
from clippo.envs.checks import check_env_contract, check_env_source
from clippo.envs.make import EnvSource, FirstEnvMade, InstanceSource, make_run_envs
from clippo.envs.snapshots import env_identity, restorable
from clippo.networks.encoders import encoder_name, import_encoder, is_image
from clippo.networks.policy import ActorCritic, upgrade_v1_names
from clippo.rollout import masking
from clippo.rollout.buffer import Batch, RolloutBuffer
from clippo.rollout.evaluation import run_episodes
from clippo.rollout.normalization import ObservationNormalizer, RewardScaler
from clippo.rollout.runner import EnvRunner, nonfinite_rows
from clippo.rollout.watchdog import EnvWatch, effective_timeout
from clippo.training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    describe_space,
    latest_checkpoint,
    newest_checkpoint_path,
    periodic_checkpoint_path,
    prune_checkpoints,
    read_checkpoint,
    space_from_dict,
    space_to_dict,
    write_atomic,
)
from clippo.training.distributed import broadcast_, init_world
from clippo.training.logger import METRICS_FILE
from clippo.training.loop import Stoppable, StopRequest, train
from clippo.training.optim import FlatAdam
from clippo.training.update import MINIBATCH_STATS, Learner, LossFunction, UpdatePlan


def global_rng_states() -> dict[str, Any]:
    """The process-wide Python, numpy and torch RNG states, as checkpoint-safe plain data."""
    state = np.random.get_state()
    assert isinstance(state, tuple)  # the legacy form, the default
    kind, keys, position, has_gauss, cached = state
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }


def set_global_rng_states(states: dict[str, Any]) -> None:
    """Put saved global RNG states back, each checked as data first (a checkpoint is a file from
    anyone): Python's (version, 625 ints, gauss), numpy's legacy MT19937 and torch's byte state."""
    version, internal, gauss = states["python"]
    if not (isinstance(internal, (list, tuple)) and len(internal) == 625 and all(type(v) is int for v in internal)):
        raise ValueError("its Python RNG state is not 625 integers")
    random.setstate((int(version), tuple(internal), None if gauss is None else float(gauss)))
    kind, keys, position, has_gauss, cached = states["numpy"]
    if kind != "MT19937" or not isinstance(keys, torch.Tensor) or keys.shape != (624,):
        raise ValueError("its numpy RNG state is not MT19937's 624 keys")
    np.random.set_state((kind, keys.numpy(), int(position), int(has_gauss), float(cached)))
    state = states["torch"]
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.shape != torch.get_rng_state().shape:
        raise ValueError("its torch RNG state is not the CPU generator's byte tensor")
    torch.set_rng_state(state)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' is invalid here: no CUDA GPU is available (use cpu or auto)")
    return torch.device(name)


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> None:
    """Put a saved generator state back; across CPU and GPU (different generators, different state
    formats) seed the new one from the saved state instead: the run goes on with its own
    reproducible stream, not the saved one (the math on another device differs anyway)."""
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
    else:
        digest = hashlib.sha256(state.cpu().numpy().tobytes()).digest()
        generator.manual_seed(int.from_bytes(digest[:8], "little"))


def build_model(
    config: PPOConfig, policy_space: spaces.Space, action_space: spaces.Space, encoder: Any = None
) -> ActorCritic:
    """The actor-critic a config describes (on the current default device)."""
    return ActorCritic(
        policy_space,
        action_space,
        config.hidden_sizes,
        config.activation,
        config.network,
        config.init_log_std,
        encoder if encoder is not None else config.encoder,
        config.encoder_kwargs,
        None if config.recurrent == "none" else config.recurrent,
        config.recurrent_hidden_size,
        config.sde_sample_freq if config.use_sde else None,
        config.orthogonal_init,
        config.head_sizes,
    )


def check_model_tensors(config: PPOConfig, policy_space, action_space, encoder: Any, model: Any) -> None:
    """Check a checkpoint's model tensors against what its config builds, before building it:
    every width the config asks for must appear in the file's tensors (a 145 KB file cannot ask
    for 8192-unit layers), and with clippo's own encoders the whole layout (names and shapes) is
    compared on the meta device, where nothing is allocated."""
    if not isinstance(model, dict) or not model or not all(isinstance(t, torch.Tensor) for t in model.values()):
        raise CheckpointError("its model is not a mapping of names to tensors")
    user_encoder = encoder is not None and not isinstance(encoder, str)
    largest = max((max(t.shape) for t in model.values() if t.dim()), default=0)
    # (hidden_sizes shape clippo's own encoders only; the heads and the recurrent core are always clippo's)
    widths = [*([] if user_encoder else config.hidden_sizes), *config.head_sizes]
    widths += [config.recurrent_hidden_size] if config.recurrent != "none" else []
    too_wide = [w for w in widths if w > largest]
    if too_wide:
        raise CheckpointError(
            f"its config asks for layers of {too_wide[0]} units, but its largest tensor dimension is {largest}"
        )
    if user_encoder:
        return  # a user's encoder (passed, or trusted): built as its author wrote it
    with torch.device("meta"):
        expected = build_model(config, policy_space, action_space, encoder).state_dict()
    for name, tensor in expected.items():
        if name not in model:
            raise CheckpointError(f"its model lacks the tensor {name!r}")
        if tuple(model[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"its tensor {name!r} has shape {list(model[name].shape)}, its config builds {list(tensor.shape)}"
            )
    unknown = sorted(set(model) - set(expected))
    if unknown:
        raise CheckpointError(f"its model holds a tensor its config does not build: {safety.clean(unknown[0])!r}")


def _upgrade_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint (MLP-only clippo) with today's parameter names."""
    payload = dict(payload)
    model = payload["model"]
    payload["model"] = dict(zip(upgrade_v1_names(list(model)), model.values(), strict=False))
    if "names" in payload.get("optimizer", {}):
        payload["optimizer"] = {**payload["optimizer"], "names": upgrade_v1_names(payload["optimizer"]["names"])}
    return payload


def _env_source(env: Any, hyperparameters: dict[str, Any]) -> EnvSource:
    """``env`` as clippo makes envs from it: an id or a factory; an instance (as SB3 takes it) becomes
    a one-env source (``num_envs`` set to 1); anything else a one-line TypeError."""
    if isinstance(env, gym.Env):  # trained as a one-env vector
        asked = hyperparameters.get("num_envs", 1)
        if asked != 1:
            raise ValueError(
                f"num_envs={asked} is invalid with an env instance: clippo steps that one env; for {asked} envs "
                "pass a callable that makes one, e.g. PPO(lambda: gym.make(...), num_envs=...)"
            )
        if hyperparameters.get("vector_env") == "async":  # (a worker process would step a copy of it)
            raise ValueError(
                "vector_env='async' is invalid with an env instance: it is stepped in this process; for worker "
                "processes pass a callable that makes the env, e.g. PPO(lambda: gym.make(...), vector_env='async')"
            )
        hyperparameters["num_envs"] = 1
        return InstanceSource(env)
    if isinstance(env, str) or callable(env):
        return env
    raise TypeError(
        "env must be a Gymnasium env id (str), a callable returning a gymnasium.Env, or a gymnasium.Env, "
        f"got {safety.clean(repr(env))}"
    )


def _training_envs(env: EnvSource, config: PPOConfig, checked: gym.Env | None) -> VectorEnv:
    """The run's vector env; ``checked``, an env of a factory made already (by the start-up checks or
    to tell the env's kind), is its first env, so that the factory is called as often as without it."""
    if checked is not None and (config.vector_env == "async" or config.env_kwargs or restorable(checked)):
        # worker processes make their own envs; env_kwargs are refused for a factory; and an env whose
        # state checkpoints hold is made afresh, as on resume (its build is recorded before any reset)
        checked.close()
        checked = None
    try:
        source = FirstEnvMade(checked, env) if checked is not None and callable(env) else env
        return make_run_envs(source, config.num_envs, config)
    except BaseException:
        if checked is not None:
            checked.close()
        raise


def reject_multiagent_settings(config: PPOConfig) -> None:
    """One-line error for a multi-agent knob set on a (single-agent) Gymnasium env."""
    defaults = PPOConfig()
    for name in ("critic", "agent_id_feature", "policy_groups"):
        if getattr(config, name) != getattr(defaults, name):
            raise ValueError(
                f"{name}={getattr(config, name)!r} is invalid for the Gymnasium env {config.env_id!r}: it is for "
                "multi-agent (PettingZoo) envs"
            )
    if config.selfplay == "on":
        raise ValueError(
            f"selfplay='on' is invalid for the Gymnasium env {config.env_id!r}: self-play is for two-player "
            "PettingZoo games"
        )


@dataclasses.dataclass(frozen=True)
class AgentKind:
    """Another kind of agent that ``PPO`` hands its sources and checkpoints to (``clippo.multiagent``
    registers one, so that ``PPO`` stays the one entry point while this module imports nothing of it)."""

    #: ``probe(env, env_kwargs) -> (source, made)``: the source this kind takes (None: not of this
    #: kind) and the Gymnasium env a factory made when called to find out (else None)
    probe: Callable[[Any, dict[str, Any] | None], tuple[Any, Any]]
    #: built as ``agent(source, *args, **kwargs)``; reads its checkpoints with ``from_payload``
    agent: Callable[..., Any]
    #: ``from_payload(payload, path, env, run_dir, overrides, trust_code)``; ``from_run(run_dir, env, trust_code)``
    from_payload: Callable[..., Any]
    from_run: Callable[..., Any]
    #: the key its checkpoints carry
    checkpoint_key: str


_AGENT_KINDS: list[AgentKind] = []


def register_agent_kind(kind: AgentKind) -> None:
    """Let ``PPO(...)``, ``PPO.load`` and ``PPO.from_run`` hand sources and checkpoints of ``kind`` to its agent."""
    if all(existing.checkpoint_key != kind.checkpoint_key for existing in _AGENT_KINDS):
        _AGENT_KINDS.append(kind)


def _kind_of(payload: dict[str, Any]) -> AgentKind | None:
    return next((kind for kind in _AGENT_KINDS if kind.checkpoint_key in payload), None)


def _saved_world(value: Any) -> dict[str, Any] | None:
    """A checkpoint's record of its world (size, each rank's env count), checked as data; None
    for a checkpoint written before clippo recorded it."""
    if value is None:
        return None
    size = value.get("size") if isinstance(value, dict) else None
    counts = value.get("num_envs") if isinstance(value, dict) else None
    if (
        not isinstance(size, int)
        or isinstance(size, bool)
        or not 1 <= size <= 1 << 16
        or not isinstance(counts, list)
        or len(counts) != size
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts)
    ):
        raise CheckpointError("its record of the processes it trained on is malformed")
    return {"size": size, "num_envs": counts}


class PPO(Stoppable):
    """Proximal Policy Optimization agent.

    >>> agent = PPO("CartPole-v1", seed=0, num_envs=8)
    >>> agent.learn(total_steps=100_000)
    >>> agent.evaluate(episodes=20)["mean_return"]

    Args:
        env: a Gymnasium env id, or a callable returning a ``gymnasium.Env``.
        preset: a named hyperparameter preset (see ``clippo.config.ppo_config.PRESETS``); by default the env's
            built-in tuned preset if it has one, else ``default``.
        config_file: a YAML/TOML/JSON file of hyperparameters.
        trust_code: import the ``module:Class`` encoder ``config_file`` names, if any (a file is
            data: what it names is imported only when you opt in; see docs/trust.md).
        run_dir: where metrics, TensorBoard logs and checkpoints go; None writes nothing.
        **hyperparameters: any field of :class:`clippo.config.ppo_config.PPOConfig`. Among them ``encoder``,
            the observation encoder: ``"auto"`` (from the observation space), ``"mlp"``,
            ``"cnn"``, an importable ``"module:Class"``, or a class, factory or ``torch.nn.Module``
            (called as ``f(observation_space, **encoder_kwargs)``; an instance is deep-copied for
            a separate critic). Checkpoints record its ``module:Class`` name, never the object.
    """

    def __new__(cls, env: EnvSource = "CartPole-v1", *args: Any, **kwargs: Any):
        """A PettingZoo env (a module path like ``"mpe2.simple_spread_v3"``, such a module, or a
        function returning a PettingZoo env) hands off to ``clippo.multiagent``'s PPO: the
        user-facing entry point stays ``PPO``."""
        if cls is PPO:
            made = None
            for kind in _AGENT_KINDS:
                source, made = kind.probe(env, kwargs.get("env_kwargs"))
                if source is not None:
                    return kind.agent(source, *args, **kwargs)
            agent = super().__new__(cls)
            agent._probe_env = made  # a factory's env made to tell its kind: the first training env
            return agent
        return super().__new__(cls)

    def __init__(
        self,
        env: EnvSource = "CartPole-v1",
        *,
        preset: str | None = None,
        config_file: str | Path | None = None,
        run_dir: str | Path | None = None,
        trust_code: bool = False,
        **hyperparameters: Any,
    ) -> None:
        env = _env_source(env, hyperparameters)
        if isinstance(env, str):
            env_id = env
        else:
            env_id = hyperparameters.pop("env_id", getattr(env, "__name__", "custom-env"))
        encoder = hyperparameters.get("encoder")
        if encoder is not None and not isinstance(encoder, str):  # a user's class, factory or module
            hyperparameters["encoder"] = encoder_name(encoder) or f"{type(encoder).__module__}:<unnamed>"
        else:
            encoder = None
        # a factory's env made already (by PPO() to tell the env's kind): the first training env
        probe, self._probe_env = getattr(self, "_probe_env", None), None
        try:
            config = resolve_config(env_id, preset, config_file, hyperparameters, trust_code)
            reject_multiagent_settings(config)
            if run_dir is not None:
                safety.check_run_dir(run_dir)
                if (Path(run_dir) / METRICS_FILE).exists():
                    raise ValueError(
                        f"run directory {str(run_dir)!r} already holds a run: choose another run_dir, "
                        f"or continue it with: clippo resume {run_dir}"
                    )
            # Gymnasium's contract, checked on one env before anything trains (one line naming the env and method)
            if probe is not None:
                check_env_contract(probe, env_id)
            checked = probe if probe is not None else check_env_source(env, config.env_modules, env_id)
        except BaseException:
            if probe is not None:
                probe.close()
            raise
        self.env_source: EnvSource = env
        envs = _training_envs(env, config, checked)
        try:
            self._setup(config, envs.single_observation_space, envs.single_action_space, run_dir, encoder)
        except BaseException:
            envs.close()
            raise
        self._envs: VectorEnv | None = envs

    # ------------------------------------------------------------------------------------------
    # construction shared by __init__ and load
    # ------------------------------------------------------------------------------------------
    def _setup(
        self,
        config: PPOConfig,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        run_dir: str | Path | None,
        encoder: Any = None,
        loaded: bool = False,
    ) -> None:
        """``loaded``: from a checkpoint, whose bf16 runs in fp32 on hardware without bf16."""
        self.config = config
        # The env's spaces (what act() takes and gives); the model observes observation_space
        # without an "action_mask" key (clippo.rollout.masking.policy_observation_space).
        self.observation_space = observation_space
        self.action_space = action_space
        policy_space = masking.policy_observation_space(observation_space)
        self.world = init_world(config.device)
        # Only the main rank writes logs, metrics and checkpoints.
        self.run_dir = Path(run_dir) if run_dir is not None and self.world.is_main else None
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        torch.set_num_threads(config.torch_threads)
        # Seed the global RNG only for the weight init; everything after draws from our generator.
        torch.manual_seed(config.seed)
        self.model = self._build_model(config, policy_space, action_space, encoder).to(self.device)
        # (``auto`` resolves to fp32 where the numpy fast path covers the agent: asked before the dtype is set)
        masked = masking.observation_has_mask(observation_space)
        fast = fastpath.rollout_applies(config, self.model, self.device, masked)
        self.model.compute_dtype = precision.compute_dtype(config.precision, self.device, fast, fallback=loaded)
        # Extra slots carry each minibatch's approximate KL and loss statistics along with the
        # gradient (averaged across ranks in the same exchange).
        self.optimizer = FlatAdam(
            fastpath.paired_parameters(self.model), lr=config.learning_rate, eps=1e-5, extra_slots=len(MINIBATCH_STATS)
        )
        broadcast_(self.optimizer.flat, self.world)  # every rank starts from rank 0's weights
        #: where the training envs' action masks come from (clippo.rollout.masking), set with the runner
        self.action_masks: masking.MaskSource | None = None
        # Each rank samples its own actions (and shuffles its own minibatches).
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed + 1_000_003 * self.world.rank)
        self.learner = Learner(config, self.optimizer, self._choose_paths(), self.generator, self.device, self.world)
        # Discrete observations are one-hot encoded: there is nothing to normalize.
        is_box = isinstance(policy_space, spaces.Box)
        if config.normalize_observations and not isinstance(policy_space, spaces.Discrete):
            if not is_box or is_image(policy_space):
                raise ValueError(
                    f"normalize_observations=True is invalid for observation space {describe_space(policy_space)}: "
                    "it normalizes flat Box observations (image encoders scale uint8 pixels by 1/255 themselves)"
                )
        self.obs_normalizer = ObservationNormalizer(
            policy_space.shape if isinstance(policy_space, spaces.Box) else (),
            config.obs_clip,
            config.normalize_observations and is_box,
        )
        self.reward_scaler = RewardScaler(config.num_envs, config.gamma, config.reward_clip, config.normalize_rewards)
        self.global_step = 0
        self.update = 0
        # One learn() call runs from schedule_start to schedule_end (global env steps); the
        # learning rate anneals over that span.
        self.schedule_start = 0
        self.schedule_end = 0
        self.train_time = 0.0
        #: the returns of the last 100 finished episodes (the logged recent_return), kept across resumes
        self.recent_returns: list[float] = []
        #: why training should end early (a signal, a callback, another rank): set by request_stop and the loop
        self.stopping = StopRequest()
        self.envs_restored = False
        #: why a resumed run's envs restarted fresh instead (None: restored, or nothing to restore)
        self.envs_fresh_reason: str | None = None
        #: the world a loaded checkpoint was trained in: its size and each rank's env count
        self.saved_world: dict[str, Any] | None = None
        #: the precision a loaded checkpoint trained in (``auto`` may resolve otherwise here)
        self.saved_precision: str | None = None
        self._envs = None
        self._runner: EnvRunner | None = None
        self._pending_runner_state: dict | None = None

    def _build_model(
        self, config: PPOConfig, policy_space: spaces.Space, action_space: spaces.Space, encoder: Any
    ) -> ActorCritic:
        """The actor-critic for these spaces (``clippo.multiagent`` overrides it for a centralized critic)."""
        return build_model(config, policy_space, action_space, encoder)

    def _choose_paths(self) -> LossFunction:
        """The rollout and loss implementations (``clippo.fastpath`` decides, the numpy fast path
        where it applies: flat observations, MLPs, a CPU; else torch): chosen at
        construction, and again if the training envs turn out to give action masks."""
        masked = self.action_masks is not None or masking.observation_has_mask(self.observation_space)
        self.runner_class, self.buffer_class = fastpath.make_rollout(self.config, self.model, self.device, masked)
        return fastpath.make_loss(self.config, self.model, self.device, self.optimizer.zero_grad, masked)

    @property
    def precision(self) -> str:
        """The precision the networks run in, ``fp32`` or ``bf16`` (``config.precision`` resolved:
        ``auto`` depends on the device, ``clippo.core.precision``)."""
        return "fp32" if self.model.compute_dtype is None else "bf16"

    @property
    def clip_epsilon(self) -> float:
        """The clip range the update uses now (``config.clip_epsilon``, or annealed by the loop)."""
        return self.learner.clip_epsilon

    @clip_epsilon.setter
    def clip_epsilon(self, value: float) -> None:
        self.learner.clip_epsilon = value

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

        ``callback``: a :class:`clippo.training.callbacks.Callback`, a function ``f(agent, metrics)`` run
        after each update, or a list of them; one returning False stops training cleanly."""
        steps = self.config.total_steps if total_steps is None else total_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"total_steps={steps!r} is invalid: it must be an integer >= 1")
        self.schedule_start = self.global_step
        self.schedule_end = self.global_step + steps
        train(self, progress, callback)
        return self

    def resume(self, progress: bool | None = None, callback=None) -> PPO:
        """Continue a loaded checkpoint's interrupted ``learn`` call to its original end."""
        if self.finished:
            raise ValueError(f"the run is already complete ({self.global_step} of {self.schedule_end} steps)")
        train(self, progress, callback)
        return self

    @property
    def finished(self) -> bool:
        """Whether the current learn() call has reached its end."""
        return self.global_step >= self.schedule_end

    def save_checkpoint(self, include_runner: bool = True) -> Path:
        """Write a periodic checkpoint into the run directory (keeping ``keep_checkpoints`` of them)."""
        if self.run_dir is None:
            raise ValueError("save_checkpoint() needs a run directory, and this agent has none: use save(path)")
        path = self.save(periodic_checkpoint_path(self.run_dir, self.global_step), include_runner=include_runner)
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    @property
    def resume_hint(self) -> str:
        """How to continue this run, for error messages."""
        nproc = f" --nproc {self.world.size}" if self.world.distributed else ""
        return (
            f"resume with: clippo resume {self.run_dir}{nproc}"
            if self.run_dir is not None
            else "nothing was saved (no run_dir)"
        )

    def exit_hint(self) -> str:
        """What a forced exit leaves behind (the newest checkpoint, how to resume), for its message."""
        if self.run_dir is None:
            return "this process writes no checkpoint" if not self.world.is_main else "nothing was saved (no run_dir)"
        newest = newest_checkpoint_path(self.run_dir)
        if newest is None:
            return f"no checkpoint was written yet in {self.run_dir}"
        return f"the last checkpoint {newest} is intact; {self.resume_hint}"

    def update_policy(self, batch: Batch, plan: UpdatePlan | None = None) -> dict[str, float]:
        """The PPO update on one rollout's batch (``clippo.training.update.Learner.update_policy``)."""
        return self.learner.update_policy(batch, plan)

    def plan_update(self, batch_size: int) -> UpdatePlan:
        """Draw every epoch's minibatches for an update of ``batch_size`` samples."""
        return self.learner.plan_update(batch_size)

    def loss_and_gradient(self, minibatch: Batch, advantages: torch.Tensor) -> LossTerms:
        """The combined PPO loss on one minibatch, its gradient left in ``self.optimizer.grad``."""
        return self.learner.loss_and_gradient(minibatch, advantages)

    def new_rollout_buffer(self) -> RolloutBuffer:
        """Empty storage for one rollout of this agent's shape (with room for action masks when
        the training envs give them)."""
        cfg = self.config
        return self.buffer_class(
            cfg.num_steps, cfg.num_envs, self.model.observation_space, self.model.distribution, self.device,
            masked=self.action_masks is not None, state_size=self.model.state_size, sequence_length=cfg.bptt_length,
        )  # fmt: skip

    def env_runner(self) -> EnvRunner:
        """The training envs and their carried-over state (created, and started, on first use)."""
        if self._runner is None:
            if self._envs is None:
                self._envs = make_run_envs(self.env_source, self.config.num_envs, self.config)
                self._check_spaces(self._envs)
            pending, self._pending_runner_state = self._pending_runner_state, None
            # Ranks get disjoint env seeds; a run resumed without its envs' state restarts them
            # from seeds of their own.
            seed = self.config.seed + self.world.rank * self.config.num_envs
            if self.update:
                seed += 7919 * self.update
            cfg = self.config
            identity = env_identity(self._envs)  # (as built: before the first reset)
            watch = EnvWatch(self._envs, effective_timeout(self._envs, cfg.env_timeout))
            watch.exit_hint = self.exit_hint
            try:
                reset = watch.reset(seed)  # (restoring saved env state below overwrites it)
            except BaseException:
                watch.close()
                self._envs.close(**({"terminate": True} if watch.asynchronous else {}))
                self._envs = None
                raise
            # Whether, and how, the envs give action masks: decided once per run, from the envs.
            self.action_masks = masking.detect_mask_source(self._envs, self.model.distribution, reset[1])
            if self.action_masks is not None:
                self.learner.loss = self._choose_paths()
            self._runner = self.runner_class(
                self._envs, self.obs_normalizer, self.reward_scaler, cfg.nonfinite, cfg.reward_sign, cfg.episodic_life,
                self.action_masks,
            )  # fmt: skip
            self._runner.watch, self._runner.env_identity = watch, identity
            # Saved env state is rank 0's: other ranks start their envs afresh.
            self.envs_restored = pending is not None and self.world.is_main and self._runner.load_state_dict(pending)
            self.envs_fresh_reason = None
            if pending is not None and not self.envs_restored:
                self.envs_fresh_reason = (
                    self._runner.restore_failure if self.world.is_main else "saved env state is rank 0's"
                )
            if not self.envs_restored:
                self._runner.start(seed, reset)
        return self._runner

    @property
    def env_watch(self) -> EnvWatch | None:
        """The training envs' call under way and its time limit (None before the envs start)."""
        return self._runner.watch if self._runner is not None else None

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
    def act(self, obs: Any, deterministic: bool = False, action_masks: Any = None) -> Any:
        """Action(s) for one observation or a batch of them, valid for the env's action space
        (for Tuple/Dict spaces a tuple/dict of arrays).

        Observations are raw env observations: the agent applies its own (frozen) normalization.
        ``action_masks``: booleans, False for invalid actions (``[num_outputs]`` for one
        observation, ``[batch, num_outputs]`` for a batch; see ``clippo.rollout.masking``), as in
        MaskablePPO's ``predict``; by default the observation's own ``"action_mask"`` key, if
        it has one. Invalid actions are never returned; a mask with none valid is an error.
        A recurrent agent acts with its memory: use :meth:`predict` with a state.
        """
        if self.model.recurrent:
            raise ValueError(
                f"act() is invalid for this recurrent ({self.model.recurrent}) agent: it acts with a carried state; "
                "use "
                "action, state = agent.predict(obs, state=state, episode_start=episode_start)"
            )
        obs, masks, single, noise = self._acting_inputs(obs, deterministic, action_masks)
        sampled, _ = self.model.act(obs, noise, masks)
        actions = sampled.cpu().numpy()
        return self.model.distribution.to_env(actions[0] if single else actions)

    def _acting_inputs(self, obs: Any, deterministic: bool, action_masks: Any):
        """Raw observations as a normalized tensor batch, their masks, whether it was one
        observation, and the sampling noise (None: deterministic)."""
        if isinstance(obs, dict) and masking.MASK_KEY in obs and masking.observation_has_mask(self.observation_space):
            obs, own_masks = masking.split_observation(obs, self.observation_space)
            action_masks = own_masks if action_masks is None else action_masks
        obs, single = observations.as_batch(obs, self.model.observation_space)
        bad = nonfinite_rows(obs)
        if bad.any():
            row = int(np.argmax(bad))
            where = "the observation" if single else f"observation row {row} (of {len(bad)})"
            raise ValueError(f"{where} holds NaN or infinity: act() and predict() need finite observations")
        if self.obs_normalizer.enabled:
            obs = self.obs_normalizer(obs)
        count = observations.batch_size(obs)
        obs = observations.to_tensor(obs, self.device)
        masks = None if action_masks is None else self._checked_masks(action_masks, count)
        noise = None if deterministic else self.model.distribution.noise((count,), self.generator, self.device)
        return obs, masks, single, noise

    def _checked_masks(self, action_masks: Any, count: int) -> torch.Tensor:
        """``act``'s ``action_masks`` as a bool tensor, or a one-line ValueError."""
        distribution = self.model.distribution
        if not distribution.maskable:
            raise ValueError(
                f"action_masks are invalid for action space {describe_space(self.action_space)}: "
                "clippo masks Discrete and MultiDiscrete action spaces"
            )
        masks = masking.as_masks(action_masks, count, distribution, "action_masks")
        bad = masking.first_invalid_row(masks, masking.component_starts(distribution))
        if bad is not None:
            raise ValueError(f"action_masks row {bad} (of {count}) has no valid action: it is all false")
        return torch.from_numpy(masks).to(self.device)

    def predict(
        self,
        obs: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[Any, np.ndarray | None]:
        """Stable-Baselines3's prediction contract: ``action, state = predict(obs, state,
        episode_start, deterministic)``, as RecurrentPPO's (``action_masks`` as MaskablePPO's).

        For a recurrent agent, ``state`` is what the previous call returned (None at the start:
        zeros) and ``episode_start`` a bool per observation, True where it is an episode's first
        (the state is reset there; None: no resets); the new state comes back, ``[batch,
        state_size]`` (``[state_size]`` for one observation). A feed-forward agent returns
        ``(action, None)``, as :meth:`act`."""
        if not self.model.recurrent:
            return self.act(obs, deterministic, action_masks), None
        return self._predict_recurrent(obs, state, episode_start, deterministic, action_masks)

    @torch.inference_mode()
    def _predict_recurrent(self, obs, state, episode_start, deterministic, action_masks) -> tuple[Any, np.ndarray]:
        obs, masks, single, noise = self._acting_inputs(obs, deterministic, action_masks)
        count, size = observations.batch_size(obs), self.model.state_size
        if state is None:
            state = self.model.initial_state(count, self.device)
        else:
            array = np.asarray(state.cpu() if isinstance(state, torch.Tensor) else state, dtype=np.float32)
            if array.shape != ((size,) if single else (count, size)):
                expected = f"[{size}]" if single else f"[{count}, {size}]"
                raise ValueError(
                    f"state of shape {list(array.shape)} is invalid: this agent's state for this input is {expected}"
                )
            state = torch.from_numpy(array.reshape(count, size)).to(self.device)
        starts = (
            np.zeros(count, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool).reshape(-1)
        )
        if starts.shape != (count,):
            raise ValueError(
                f"episode_start of shape {list(np.shape(episode_start))} is invalid: give one bool per observation "
                f"({count})"
            )
        params, _, state = self.model.step(obs, state, torch.from_numpy(starts).to(self.device), masks)
        sampled, _ = self.model.distribution.sample_with_log_prob(params, noise)
        actions, state = sampled.cpu().numpy(), state.cpu().numpy()
        return self.model.distribution.to_env(actions[0] if single else actions), (state[0] if single else state)

    def acting_policy(self, deterministic: bool = True):
        """``policy(obs, masks=None, episode_start=None) -> actions`` for a batch of observations
        of a vector env, as :func:`clippo.rollout.evaluation.run_episodes` calls it; a recurrent agent's
        carries its state from call to call (reset where ``episode_start``)."""
        if not self.model.recurrent:
            return lambda obs, masks=None, episode_start=None: self.act(obs, deterministic, masks)
        carried: dict[str, np.ndarray | None] = {"state": None}

        def policy(obs, masks=None, episode_start=None):
            actions, carried["state"] = self.predict(obs, carried["state"], episode_start, deterministic, masks)
            return actions

        # What run_episodes reads (with getattr); mypy does not follow attributes set on a function.
        policy.recurrent = True  # type: ignore[attr-defined]
        return policy

    def evaluate(
        self,
        episodes: int = 10,
        seed: int | None = None,
        deterministic: bool = True,
        env: EnvSource | None = None,
        num_envs: int | None = None,
    ) -> dict[str, Any]:
        """Run whole episodes with the (by default deterministic) policy; raw env returns. Envs
        that give action masks are played with them."""
        if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"episodes={episodes!r} is invalid: it must be an integer >= 1")
        source = env if env is not None else self.env_source
        count = num_envs or min(episodes, self.config.num_envs)
        envs = make_run_envs(source, count, self.config)
        try:
            self._check_spaces(envs)
            returns, lengths = run_episodes(envs, self.acting_policy(deterministic), episodes, seed)
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
            "recent_returns": [float(r) for r in self.recent_returns],
            "precision": self.precision,  # (resolved: config.precision may say auto)
            # the global batch is num_envs * num_steps * size: a resume must run in the same world
            "world": {"size": self.world.size, "num_envs": [self.config.num_envs] * self.world.size},
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
        cls,
        path: str | Path,
        env: EnvSource | None = None,
        run_dir: str | Path | None = None,
        device: str | None = None,
        encoder: Any = None,
        trust_code: bool = False,
        precision: str | None = None,
        env_modules: list[str] | tuple[str, ...] = (),
    ) -> PPO:
        """Load a checkpoint file or a run directory's final checkpoint.

        ``env`` is needed only when the agent was trained on an env factory rather than an id;
        ``encoder`` only for a user encoder (its class). A checkpoint is data: a user encoder or
        an env module it names is imported only with ``trust_code=True`` (docs/trust.md), or when
        you name that module yourself in ``env_modules`` (imported before the env is made).
        ``device`` and ``precision`` (``fp32``, ``bf16`` or ``auto``) replace the run's own: checkpoints hold
        fp32 parameters, which load in either precision. A run that trained in bf16 loads in fp32 on
        hardware without bf16 (``agent.precision`` says which one runs).
        """
        if run_dir is not None:  # (it will be written: no links where clippo writes)
            safety.check_run_dir(run_dir)
        overrides = {name: value for name, value in (("device", device), ("precision", precision)) if value is not None}
        payload = read_checkpoint(path)
        kind = _kind_of(payload)
        if kind is not None:  # e.g. a multi-agent checkpoint (clippo.multiagent)
            return kind.from_payload(payload, path, env, run_dir, overrides, trust_code)
        return cls._from_payload(payload, path, env, run_dir, overrides, encoder, trust_code, tuple(env_modules))

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        env: EnvSource | None = None,
        encoder: Any = None,
        trust_code: bool = False,
        env_modules: list[str] | tuple[str, ...] = (),
    ) -> PPO:
        """The newest checkpoint of a run directory, set to log and checkpoint there (to resume).
        ``encoder``, ``trust_code`` and ``env_modules`` as for :meth:`load`."""
        safety.check_run_dir(run_dir)
        path, payload = latest_checkpoint(run_dir)
        kind = _kind_of(payload)
        if kind is not None:
            return kind.from_run(run_dir, env, trust_code)
        agent = cls._from_payload(payload, path, env, run_dir, {}, encoder, trust_code, tuple(env_modules))
        agent._check_world(run_dir)
        if payload.get("global_rngs") is not None:
            # clippo draws from its own generator, but env or user code may use the global ones.
            try:
                set_global_rng_states(payload["global_rngs"])
            except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:  # (any malformed state)
                raise CheckpointError(
                    f"checkpoint {str(path)!r} does not fit this clippo: {safety.clean(first_line(exc), 200)}"
                ) from None
        return agent

    def _check_world(self, run_dir: str | Path) -> None:
        """A run continues in the world it trained in: another number of processes would change
        the global batch (num_envs * num_steps per process) under the same config, silently."""
        saved = self.saved_world
        if saved is None or (saved["size"] == self.world.size and saved["num_envs"][0] == self.config.num_envs):
            return
        cfg, size = self.config, saved["size"]
        batch = sum(saved["num_envs"]) * cfg.num_steps
        self.close()
        raise CheckpointError(
            f"run {str(run_dir)!r} trained on {size} process{'es' if size > 1 else ''} (global batch {batch} = "
            f"{' + '.join(map(str, saved['num_envs']))} envs x {cfg.num_steps} steps) and this resume runs "
            f"{self.world.size}: resume it with: clippo resume {run_dir}" + (f" --nproc {size}" if size > 1 else "")
        )

    @classmethod
    def _from_payload(
        cls,
        payload: dict[str, Any],
        path,
        env: EnvSource | None,
        run_dir: str | Path | None,
        overrides: dict[str, Any],
        encoder: Any = None,
        trust_code: bool = False,
        env_modules: tuple[str, ...] = (),
    ) -> PPO:
        if payload.get("format_version") == 1:
            payload = _upgrade_v1(payload)
        source = f"checkpoint {str(path)!r}"
        try:
            values = payload["config"]
            if not isinstance(values, dict):
                raise CheckpointError(f"its config is a {type(values).__name__}, not a mapping")
            values = {**values, **overrides}
            config = config_from_dict(values)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{source} does not fit this clippo: {safety.clean(first_line(exc), 200)}") from None
        # What the file names that would import code: only with the user's opt-in (clippo.core.safety).
        if env is None and safety.env_id_needs_import(config.env_id):
            safety.check_env_id_from_file(config.env_id, source, trust_code, env_modules)
        if env is None and config.env_modules:
            safety.check_env_modules_from_file(config.env_modules, source, trust_code, env_modules)
        # the modules the user names now are theirs to import (added to the run's own, which are kept only
        # when checked above: with an env passed in, the file's modules are never imported)
        kept = config.env_modules if env is None or trust_code else []
        config.env_modules = list(dict.fromkeys([*kept, *env_modules]))
        if encoder is None and safety.encoder_needs_import(config.encoder):
            safety.check_encoder_name(config.encoder, source, trust_code)
            encoder = config.encoder
        try:
            if isinstance(encoder, str):  # resolved to a torch.nn.Module subclass, or a one-line error
                encoder = import_encoder(encoder) if safety.encoder_needs_import(encoder) else None
            observation_space = space_from_dict(payload["observation_space"])
            action_space = space_from_dict(payload["action_space"])
            check_model_tensors(
                config, masking.policy_observation_space(observation_space), action_space, encoder, payload["model"]
            )
            agent = cls.__new__(cls)
            # (a precision passed now is the user's: refused where it cannot run; the file's own falls back)
            agent._setup(config, observation_space, action_space, run_dir, encoder, loaded="precision" not in overrides)
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
            if agent.world.rank:  # (the saved generator is rank 0's: the others draw their own samples)
                agent.generator.manual_seed(config.seed + 1_000_003 * agent.world.rank + 7919 * agent.update)
            agent.train_time = float(payload.get("train_time", 0.0))
            agent.recent_returns = [float(r) for r in payload.get("recent_returns", [])]
            agent.saved_precision = precision.recorded(payload.get("precision"))
            agent._pending_runner_state = payload.get("runner")
            agent.saved_world = _saved_world(payload.get("world"))
        except Exception as exc:  # a damaged payload can fail anywhere in reconstruction
            hint = "; pass encoder= to PPO.load" if "encoder=" in str(exc) else ""
            raise CheckpointError(
                f"{source} does not fit this clippo: {safety.clean(first_line(exc), 200)}{hint}"
            ) from None
        agent.env_source = env if env is not None else config.env_id
        return agent

    def close(self) -> None:
        """Close the training environments (discarded all the same if closing fails: a crashed
        env may fail to close as well)."""
        runner, envs, self._runner, self._envs = self._runner, self._envs, None, None
        with contextlib.suppress(Exception):
            if runner is not None:
                runner.close()
            elif envs is not None:
                envs.close()

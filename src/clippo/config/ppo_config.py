"""Hyperparameters: one typed dataclass, the presets, and their validation.

Precedence, lowest to highest: the ``default`` preset, the env's built-in tuned
preset (if any, and if no ``--preset`` was named), the named preset, a config
file, explicit keyword arguments / command-line flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from clippo.config.preset_sources import ENV_PRESET_SOURCES, PRESET_SOURCES, PresetSource
from clippo.core import safety
from clippo.core.errors import ConfigError, first_line
from clippo.envs.families import check_module_name, family
from clippo.envs.preprocessing import Preprocessing

#: the widest layer and the most layers a config may ask for (a file's config is checked against
#: its tensors too: clippo.agent)
MAX_WIDTH = 65_536
MAX_LAYERS = 32
#: the most samples one update may hold (num_envs * num_steps): 256x the largest preset's
MAX_BATCH = 1 << 24


def knob(help: str, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its help text (shown by ``clippo train --help``)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help})


@dataclass
class PPOConfig:
    """Every knob of a clippo run. Field names are the CLI flag names with '_' for '-'."""

    env_id: str = knob(
        "Gymnasium environment id (only informative when the env is given as a callable); module:EnvId imports "
        "module first (Gymnasium's form, for your own envs).",
        "CartPole-v1",
    )
    env_modules: list[str] = knob(
        "Python modules imported before env_id is looked up (each registers envs of your own with Gymnasium; "
        "--env-module M, repeatable). A run's config records them, so eval, enjoy, export and resume import them "
        "again; a module named by a file is imported only with --trust-code (docs/trust.md).",
        default_factory=list,
    )
    total_steps: int = knob("Environment steps to train for, summed over all environments (and all ranks).", 500_000)
    seed: int = knob("Seed of the network init, the action sampling, the minibatch shuffling and the envs.", 0)
    num_envs: int = knob("Environments stepped together.", 8)
    num_steps: int = knob("Steps per environment per rollout; the batch is num_envs * num_steps.", 128)
    vector_env: str = knob(
        "sync, async, native, ale, envpool or auto: Gymnasium's synchronous or multi-process vector env, the env's "
        "own vectorized implementation (CartPole has one), ale-py's C++ vector env or EnvPool (Atari ids only), "
        "or auto: native when it exists else sync, ale for Atari ids.",
        "auto",
    )
    env_timeout: float | None = knob(
        "Seconds an env's step or reset may take before the run stops, naming the env (none: the default, 300 for "
        "an async vector env, no limit for a sync or native one; a sync env's step runs in the training process and "
        "cannot be interrupted: past the limit a watchdog ends the process, the last checkpoint intact).",
        None,
    )
    stop_grace: float = knob(
        "Seconds between a first SIGINT/SIGTERM and the end of the process if training has not reached an update "
        "boundary by then (an env or another rank hangs); the last checkpoint stays intact.",
        10.0,
    )
    num_minibatches: int = knob("Minibatches per epoch; 1 means full-batch updates.", 4)
    update_epochs: int = knob("Passes over the batch per update (fewer if the KL early stop triggers).", 4)
    learning_rate: float = knob("Adam step size (start value when annealed).", 3e-4)
    anneal_lr: bool = knob("Decay the learning rate linearly to 0 over the run.", True)
    gamma: float = knob("Discount factor.", 0.99)
    gae_lambda: float = knob("GAE lambda; 1.0 gives rewards-to-go minus critic values.", 0.95)
    clip_epsilon: float = knob("Clip range of the probability ratio in the surrogate objective.", 0.2)
    anneal_clip: bool = knob(
        "Decay the clip range linearly to 0 over the run, as anneal_lr does the learning rate (the PPO paper anneals "
        "both on Atari).",
        False,
    )
    clip_value_loss: bool = knob("Clip the value prediction around the old value by clip_epsilon (PPO2 style).", False)
    ent_coef: float = knob("Weight of the entropy bonus.", 0.0)
    vf_coef: float = knob("Weight of the value loss.", 0.5)
    max_grad_norm: float | None = knob("Global gradient-norm clip; None disables it.", 0.5)
    target_kl: float | None = knob(
        "Stop the update's epochs when the approximate KL exceeds this; None disables it.", None
    )
    normalize_advantages: bool = knob("Normalize advantages to zero mean, unit std within each minibatch.", True)
    network: str = knob("separate or shared: two MLPs, or one trunk with an actor head and a critic head.", "separate")
    hidden_sizes: list[int] = knob("Hidden layer widths of the MLP(s).", default_factory=lambda: [64, 64])
    head_sizes: list[int] = knob(
        "Hidden layer widths of each head (actor and critic), between the encoder's features (or recurrent core) and "
        "the output layers: SB3's net_arch pi/vf after a CNN features extractor. With gSDE the actor head's last "
        "hidden layer is the exploration's features. Empty: the output layers read the features directly.",
        default_factory=list,
    )
    activation: str = knob(
        "tanh, relu or gelu: the activation of the MLP encoder's and the heads' hidden layers (the CNNs keep ReLU). "
        "The fast path computes tanh and relu; gelu takes the general torch path.",
        "tanh",
    )
    encoder: str = knob(
        "Observation encoder: auto (from the observation space: MLP for vectors, Nature CNN for images, a small CNN "
        "for small grids, one encoder per field for Dict/Tuple), mlp, cnn, or an importable module:Class built "
        "as Class(observation_space, **encoder_kwargs).",
        "auto",
    )
    encoder_kwargs: dict = knob(
        "Keyword arguments of a module:Class encoder, or the built-in CNN's size (small grids: channels, features; "
        "Nature CNN: features); a mapping, e.g. '{channels: 64, features: 256}'.",
        default_factory=dict,
    )
    recurrent: str = knob(
        "none, lstm or gru: a recurrent core after each encoder, for partially observed tasks (the policy carries a "
        "state, reset at episode starts; minibatches are whole env sequences).",
        "none",
    )
    recurrent_hidden_size: int = knob("Units of the recurrent core (LSTM or GRU).", 128)
    bptt_length: int = knob(
        "Recurrent policies: the update replays sequences of this many steps from their stored states (truncated "
        "backpropagation through time); 0: whole rollouts (num_steps). Must divide num_steps.",
        0,
    )
    fast_path: str = knob(
        "auto or off: the numpy rollout and hand-written gradient where they apply (flat observations, MLP, CPU), and "
        "PettingZoo envs converted from AEC stepped beneath their checking wrappers; or always the general torch path "
        "and each env's own step().",
        "auto",
    )
    precision: str = knob(
        "fp32, bf16 or auto: bf16 runs the networks' passes in bfloat16 mixed precision (autocast; parameters, "
        "optimizer, losses and statistics stay fp32) on CPUs with AVX512-BF16 or AMX and on bf16 GPUs; it takes the "
        "general torch path (the numpy fast path is fp32). auto: bf16 where the device computes it natively, except "
        "where the fast path applies; fp32 elsewhere.",
        "fp32",
    )
    reward_sign: bool = knob(
        "Train on the sign of each reward (Atari's reward clipping); episode returns are still logged in raw rewards.",
        False,
    )
    episodic_life: bool = knob(
        "Treat a lost life (from the env's info['lives']) as the end of an episode for learning; the game goes on "
        "and its whole score is logged (Atari).",
        False,
    )
    frame_skip: int = knob(
        "Repeat each action this many env steps, summing their rewards and keeping the last observation (stops early "
        "at an episode's end); the first of the image preprocessing steps for envs other than Atari and MinAtar "
        "(which have their own), as RL-Zoo's FrameSkip.",
        1,
    )
    resize: list[int] = knob(
        "HEIGHT WIDTH: resize uint8 image observations to this size (after frame_skip); empty: keep their size.",
        default_factory=list,
    )
    grayscale: bool = knob(
        "Convert uint8 RGB image observations (H, W, 3) to one grayscale plane (H, W) (after resize).", False
    )
    frame_stack: int = knob(
        "Stack the last this many observations along a new first axis (zeros before an episode's first): (H, W) "
        "grayscale frames become (frame_stack, H, W) images for the CNN.",
        1,
    )
    init_log_std: float = knob("Initial log standard deviation of the Gaussian policy (continuous actions).", 0.0)
    orthogonal_init: bool = knob(
        "Orthogonal weights (gain sqrt 2 in the encoders, 0.01 on the policy head, 1 on the value head) and zero "
        "biases; false: PyTorch's default init for the heads and built-in encoders (RL-Zoo's ortho_init=False).",
        True,
    )
    use_sde: bool = knob(
        "Box actions: generalized state-dependent exploration (gSDE): noise that is a linear function of the actor's "
        "features, held for sde_sample_freq steps, instead of independent noise at every step; init_log_std then "
        "initializes its [features, actions] log-std matrix. General torch path only.",
        False,
    )
    sde_sample_freq: int = knob(
        "With use_sde: draw new exploration noise every this many steps of a rollout; -1: once per rollout.", -1
    )
    normalize_observations: bool = knob("Running mean/std observation normalization (clipped to +-obs_clip).", False)
    normalize_rewards: bool = knob("Scale rewards by the running std of the discounted return (no mean shift).", False)
    obs_clip: float = knob("Clip of normalized observations.", 10.0)
    reward_clip: float = knob("Clip of scaled rewards.", 10.0)
    device: str = knob("cpu, cuda or auto (cuda when available).", "cpu")
    torch_threads: int = knob("torch intra-op threads; small MLPs run fastest on one.", 1)
    tensorboard: bool = knob(
        "Write TensorBoard event files in the run directory (metrics.csv is always written).", True
    )
    checkpoint_every: int = knob(
        "Write a checkpoint every this many updates (0: only at the end and on interruption).", 50
    )
    keep_checkpoints: int = knob("How many periodic checkpoints to keep.", 3)
    nonfinite: str = knob(
        "stop or skip: on a NaN/inf observation, reward, loss or gradient, stop the run (after checkpointing the "
        "last good update) or skip the poisoned update.",
        "stop",
    )
    eval_episodes: int = knob(
        "Episodes of each deterministic evaluation: the periodic ones (eval_every) and the one at the end of `clippo "
        "train` (0: none at the end).",
        10,
    )
    eval_every: int = knob(
        "Evaluate the deterministic policy on separate envs every this many environment steps (counted like "
        "total_steps; at the first update at or after each multiple, and after the last update), logging "
        "eval/mean_return and keeping the best policy in best.pt (0: off).",
        0,
    )
    stop_at_return: float | None = knob(
        "End training once a periodic evaluation's mean return reaches this (needs eval_every); none: train for "
        "total_steps.",
        None,
    )
    # Multi-agent (PettingZoo) runs: clippo.multiagent. For them total_steps counts agent steps
    # (one per agent action) and num_steps env steps per env copy and rollout.
    env_kwargs: dict = knob(
        "Keyword arguments of the env's constructor: a PettingZoo module's parallel_env()/env() (e.g. {N: 3}), or "
        "gymnasium.make for an env id.",
        default_factory=dict,
    )
    critic: str = knob(
        "Multi-agent envs: local (independent PPO: each agent's value from its own observation) or centralized "
        "(MAPPO: the value sees the env's state(), else all agents' observations; actors still act on their "
        "own).",
        "local",
    )
    agent_id_feature: bool = knob(
        "Multi-agent envs: add a one-hot of the agent's index in its group to the observations of a policy shared by "
        "several agents.",
        False,
    )
    policy_groups: dict = knob(
        "Multi-agent envs: named policy groups, {group: [agent, ...]}, every agent in one; empty: agents with the "
        "same observation and action spaces share one policy.",
        default_factory=dict,
    )
    selfplay: str = knob(
        "Two-player turn-based games with action masks: auto (self-play for such games), on, or off.", "auto"
    )
    selfplay_pool_size: int = knob("Self-play: how many past snapshots of the policy the opponent pool keeps.", 50)
    selfplay_snapshot_every: int = knob(
        "Self-play: add a snapshot of the policy to the pool every this many updates.", 10
    )
    selfplay_latest_prob: float = knob(
        "Self-play: the fraction of games played against the current policy (the rest against pool snapshots and "
        "the random player, see selfplay_random_prob).",
        0.25,
    )
    selfplay_random_prob: float = knob(
        "Self-play: the fraction of games played against a uniformly random legal-move player (only the learner's "
        "side is learned from); selfplay_latest_prob + selfplay_random_prob <= 1, the rest against pool snapshots.",
        0.25,
    )
    selfplay_sampling: str = knob(
        "Self-play: how opponents are drawn from the pool: uniform, or recent (weights growing with recency).",
        "uniform",
    )
    selfplay_eval_every: int = knob(
        "Self-play: play selfplay_eval_games games against a uniformly random player every this many updates (0: "
        "never).",
        10,
    )
    selfplay_eval_games: int = knob(
        "Self-play: games of each evaluation against the random player (seats alternate).", 50
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> PPOConfig:
        """Raise ConfigError naming the first bad value and what is allowed; return self."""
        _check_types(self)
        for check in _CHECKS:
            check(self)
        return self


def _check_counts_and_rates(config: PPOConfig) -> None:
    """Counts >= 1 and rates, coefficients and probabilities in their ranges."""
    positive_ints = [
        "total_steps",
        "num_envs",
        "num_steps",
        "num_minibatches",
        "update_epochs",
        "frame_skip",
        "frame_stack",
    ]
    for name in positive_ints:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}={getattr(config, name)} is invalid: it must be an integer >= 1")
    for name in ["learning_rate", "clip_epsilon", "obs_clip", "reward_clip", "stop_grace"]:
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name}={value} is invalid: it must be a finite number > 0")
    for name in ["ent_coef", "vf_coef"]:
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name}={value} is invalid: it must be a finite number >= 0")
    for name in ["max_grad_norm", "target_kl", "env_timeout"]:
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name}={value} is invalid: it must be a number > 0, or none to disable it")
    if not 0.0 <= config.gamma <= 1.0:
        raise ConfigError(f"gamma={config.gamma} is invalid: it must be in [0, 1]")
    if not 0.0 <= config.gae_lambda <= 1.0:
        raise ConfigError(f"gae_lambda={config.gae_lambda} is invalid: it must be in [0, 1]")
    if not math.isfinite(config.init_log_std):
        raise ConfigError(f"init_log_std={config.init_log_std} is invalid: it must be a finite number")
    if config.sde_sample_freq == 0 or config.sde_sample_freq < -1:
        raise ConfigError(
            f"sde_sample_freq={config.sde_sample_freq} is invalid: use -1 (once per rollout) or a number of steps >= 1"
        )


def _check_choices_and_names(config: PPOConfig) -> None:
    """Fields that take a name, and the strings a config file may carry (capped: clippo.core.safety)."""
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"{name}={getattr(config, name)!r} is invalid: choose one of {', '.join(allowed)}")
    if config.encoder not in ("auto", "mlp", "cnn") and ":" not in config.encoder:
        raise ConfigError(
            f"encoder={config.encoder!r} is invalid: choose auto, mlp, cnn, or an importable 'module:Class'"
        )
    # Strings and sizes are capped: a config may come from a file someone else wrote (clippo.core.safety).
    safety.check_text(config.encoder, "encoder")
    safety.check_text(config.env_id, "env_id")
    _check_env_modules(config.env_modules)
    safety.check_flat_kwargs(config.encoder_kwargs)
    safety.check_flat_kwargs(config.env_kwargs, "env_kwargs")
    safety.check_flat_kwargs(config.policy_groups, "policy_groups")


def _check_sizes(config: PPOConfig) -> None:
    """Layer widths, image sizes and the batch, bounded (a config may come from a file)."""
    if not config.hidden_sizes or any(h < 1 for h in config.hidden_sizes):
        raise ConfigError(f"hidden_sizes={config.hidden_sizes} is invalid: give one or more widths >= 1")
    if any(h < 1 for h in config.head_sizes):
        raise ConfigError(
            f"head_sizes={config.head_sizes} is invalid: give widths >= 1, or none for heads without hidden layers"
        )
    for name in ("hidden_sizes", "head_sizes"):
        widths = getattr(config, name)
        if len(widths) > MAX_LAYERS or any(h > MAX_WIDTH for h in widths):
            raise ConfigError(f"{name}={widths} is invalid: at most {MAX_LAYERS} layers of at most {MAX_WIDTH} units")
    if config.num_envs * config.num_steps > MAX_BATCH:
        raise ConfigError(
            f"num_envs * num_steps = {config.num_envs * config.num_steps} is invalid: at most {MAX_BATCH} samples "
            "per update"
        )
    if any(side > MAX_WIDTH for side in config.resize):
        raise ConfigError(f"resize={config.resize} is invalid: at most {MAX_WIDTH} pixels a side")
    if config.recurrent_hidden_size > MAX_WIDTH:
        raise ConfigError(f"recurrent_hidden_size={config.recurrent_hidden_size} is invalid: at most {MAX_WIDTH} units")
    if config.resize and (len(config.resize) != 2 or min(config.resize) < 1):
        raise ConfigError(
            f"resize={config.resize} is invalid: give two sizes >= 1, HEIGHT WIDTH, or none to keep the size"
        )


def _check_combinations(config: PPOConfig) -> None:
    """Values that must fit each other: preprocessing and the env family, minibatches and the batch, BPTT."""
    preprocessing = Preprocessing.from_config(config)
    if preprocessing.active and family_preset(config.env_id):
        raise ConfigError(
            f"{preprocessing} is invalid for {config.env_id!r}: Atari and MinAtar ids have their own preprocessing "
            "(clippo.envs.atari)"
        )
    batch = config.num_envs * config.num_steps
    if config.num_minibatches > batch:
        raise ConfigError(
            f"num_minibatches={config.num_minibatches} is invalid: it must be at most the batch size "
            f"num_envs * num_steps = {batch}"
        )
    if config.recurrent_hidden_size < 1:
        raise ConfigError(
            f"recurrent_hidden_size={config.recurrent_hidden_size} is invalid: it must be an integer >= 1"
        )
    if config.bptt_length < 0 or (config.bptt_length and config.num_steps % config.bptt_length):
        raise ConfigError(
            f"bptt_length={config.bptt_length} is invalid: it must divide num_steps={config.num_steps} (0: whole "
            "rollouts)"
        )
    if config.recurrent != "none":
        sequences = config.num_envs * (config.num_steps // (config.bptt_length or config.num_steps))
        if config.num_minibatches > sequences:
            raise ConfigError(
                f"num_minibatches={config.num_minibatches} is invalid for a recurrent policy: minibatches are whole "
                f"sequences, and there are num_envs * num_steps / bptt_length = {sequences} of them"
            )


def _check_run_settings(config: PPOConfig) -> None:
    """Seeds, threads, checkpoints, periodic evaluation."""
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"seed={config.seed} is invalid: it must be an integer in [0, 2**32)")
    if not 1 <= config.torch_threads <= 256:  # torch crashes outright on absurd thread counts
        raise ConfigError(f"torch_threads={config.torch_threads} is invalid: it must be an integer in [1, 256]")
    for name in ["checkpoint_every", "eval_episodes", "eval_every"]:
        if getattr(config, name) < 0:
            raise ConfigError(f"{name}={getattr(config, name)} is invalid: it must be an integer >= 0")
    if config.eval_every and not config.eval_episodes:
        raise ConfigError(
            f"eval_every={config.eval_every} is invalid with eval_episodes=0: each evaluation needs eval_episodes >= 1"
        )
    if config.stop_at_return is not None:
        if not math.isfinite(config.stop_at_return):
            raise ConfigError(
                f"stop_at_return={config.stop_at_return} is invalid: it must be a finite number, or none to disable it"
            )
        if not config.eval_every:
            raise ConfigError(
                f"stop_at_return={config.stop_at_return} is invalid without periodic evaluations: "
                "set eval_every to a number of environment steps >= 1"
            )
    if config.keep_checkpoints < 1:
        raise ConfigError(f"keep_checkpoints={config.keep_checkpoints} is invalid: it must be an integer >= 1")


def _check_selfplay(config: PPOConfig) -> None:
    """Self-play's pool and evaluation settings (multi-agent games)."""
    for name in ["selfplay_pool_size", "selfplay_snapshot_every", "selfplay_eval_games"]:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}={getattr(config, name)} is invalid: it must be an integer >= 1")
    if config.selfplay_eval_every < 0:
        raise ConfigError(
            f"selfplay_eval_every={config.selfplay_eval_every} is invalid: it must be an integer >= 0 (0: never)"
        )
    if not 0.0 <= config.selfplay_latest_prob <= 1.0:
        raise ConfigError(f"selfplay_latest_prob={config.selfplay_latest_prob} is invalid: it must be in [0, 1]")
    if not 0.0 <= config.selfplay_random_prob <= 1.0:
        raise ConfigError(f"selfplay_random_prob={config.selfplay_random_prob} is invalid: it must be in [0, 1]")
    if config.selfplay_latest_prob + config.selfplay_random_prob > 1.0 + 1e-9:
        raise ConfigError(
            f"selfplay_random_prob={config.selfplay_random_prob} is invalid with selfplay_latest_prob="
            f"{config.selfplay_latest_prob}: their sum must be <= 1 (the rest of the games are against pool snapshots)"
        )


#: every check of ``PPOConfig.validate``, in order
_CHECKS = (
    _check_counts_and_rates,
    _check_choices_and_names,
    _check_sizes,
    _check_combinations,
    _check_run_settings,
    _check_selfplay,
)


FIELD_NAMES = tuple(f.name for f in fields(PPOConfig))

#: Fields that do not change what is learned, only where and how it runs and is recorded: runs
#: that differ in them alone are runs of one config (plots, reports and tuning treat them so).
BOOKKEEPING_KEYS = frozenset(
    {"device", "torch_threads", "tensorboard", "checkpoint_every", "keep_checkpoints", "eval_episodes", "eval_every"}
)

# The allowed values of the fields that take a name (also the CLI's argparse choices).
CHOICES: dict[str, tuple[str, ...]] = {
    "network": ("separate", "shared"),
    "activation": ("tanh", "relu", "gelu"),
    "vector_env": ("auto", "sync", "async", "native", "ale", "envpool"),
    "device": ("cpu", "cuda", "auto"),
    "nonfinite": ("stop", "skip"),
    "fast_path": ("auto", "off"),
    "precision": ("fp32", "bf16", "auto"),
    "recurrent": ("none", "lstm", "gru"),
    "critic": ("local", "centralized"),
    "selfplay": ("auto", "on", "off"),
    "selfplay_sampling": ("uniform", "recent"),
}

# ---------------------------------------------------------------------------------------------
# Presets. Values not named fall back to the dataclass defaults above (the ``default`` preset).
# Where each one comes from and what was measured with it: preset_sources.py (every preset has
# an entry there; docs/presets.md shows both).
# ---------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "spinningup": {
        "num_envs": 1,
        "num_steps": 4000,
        "num_minibatches": 1,
        "update_epochs": 80,
        "learning_rate": 3e-4,
        "anneal_lr": False,
        "gamma": 0.99,
        "gae_lambda": 0.97,
        "clip_epsilon": 0.2,
        "target_kl": 0.01,
        "ent_coef": 0.0,
        "max_grad_norm": None,
        "vector_env": "sync",
    },
    "atari": {
        "total_steps": 10_000_000,
        "num_envs": 8,
        "num_steps": 128,
        "num_minibatches": 4,
        "update_epochs": 4,
        "learning_rate": 2.5e-4,
        "anneal_lr": True,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_epsilon": 0.1,
        "ent_coef": 0.01,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "network": "shared",
        "reward_sign": True,
        "episodic_life": True,
        "precision": "auto",
        "checkpoint_every": 100,
    },
    "minatar": {
        "total_steps": 10_000_000,
        "num_envs": 64,
        "num_steps": 128,
        "num_minibatches": 8,
        "update_epochs": 4,
        "learning_rate": 5e-4,
        "anneal_lr": False,
        "gamma": 0.999,
        "gae_lambda": 0.95,
        "clip_epsilon": 0.2,
        "ent_coef": 0.03,  # not gymnax's 0.01: with it the entropy collapsed and Breakout plateaued
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "encoder": "mlp",  # the small MinAtar CNN plateaued on Breakout
        "hidden_sizes": [256, 256],
        "activation": "relu",
        "network": "separate",
        "precision": "auto",  # (bool observations: the MLP runs on the torch path, where bf16 applies)
        "checkpoint_every": 100,
    },
    "mujoco": {
        "total_steps": 1_000_000,
        "num_envs": 1,
        "num_steps": 2048,
        "num_minibatches": 32,
        "update_epochs": 10,
        "learning_rate": 3e-4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "normalize_observations": True,
        "normalize_rewards": True,
        "vector_env": "sync",
    },
}

# Tuned hyperparameters used by ``clippo train ENV_ID`` when no --preset is given (sources and
# measurements: ENV_PRESET_SOURCES in preset_sources.py).
ENV_PRESETS: dict[str, dict[str, Any]] = {
    # Tuned for wall-clock time to solve: many cheap (natively vectorized) envs, few large minibatches.
    "CartPole-v1": {
        "total_steps": 100_000,
        "num_envs": 64,
        "num_steps": 32,
        "num_minibatches": 4,
        "update_epochs": 8,
        "learning_rate": 2e-3,
        "gamma": 0.99,  # with 0.98 the cart drifted off the track on some seeds
        "gae_lambda": 0.8,
        "ent_coef": 0.0,
    },
    "Acrobot-v1": {
        "total_steps": 300_000,
        "num_envs": 16,
        "num_steps": 256,
        "num_minibatches": 16,
        "update_epochs": 4,
        "gamma": 0.99,
        "gae_lambda": 0.94,
        "normalize_observations": True,
        "normalize_rewards": True,  # without it 2 of 5 seeds never reached the goal
    },
    # annealing the learning rate keeps the last updates from undoing a swing-up on rare starts
    "Pendulum-v1": {
        "total_steps": 100_000,
        "num_envs": 4,
        "num_steps": 1024,
        "num_minibatches": 64,
        "update_epochs": 10,
        "learning_rate": 1e-3,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "ent_coef": 0.0,
        "use_sde": True,
        "sde_sample_freq": 4,
    },
    "LunarLander-v3": {
        "total_steps": 1_000_000,
        "num_envs": 16,
        "num_steps": 1024,
        "num_minibatches": 256,
        "update_epochs": 4,
        "learning_rate": 3e-4,
        "anneal_lr": False,
        "gamma": 0.999,
        "gae_lambda": 0.98,
        "ent_coef": 0.01,
    },
    # RL-Zoo's values but 10 epochs and gamma 0.999: with its 4 and 0.99 the policies needed an extra swing.
    "MountainCar-v0": {
        "total_steps": 1_000_000,
        "num_envs": 16,
        "num_steps": 16,
        "num_minibatches": 4,
        "update_epochs": 10,
        "learning_rate": 3e-4,
        "anneal_lr": False,
        "gamma": 0.999,
        "gae_lambda": 0.98,
        "ent_coef": 0.0,
        "normalize_observations": True,
        "normalize_rewards": True,
    },
    "MountainCarContinuous-v0": {
        "total_steps": 20_000,
        "num_envs": 1,
        "num_steps": 8,
        "num_minibatches": 1,
        "update_epochs": 10,
        "learning_rate": 7.77e-5,
        "anneal_lr": False,
        "gamma": 0.9999,
        "gae_lambda": 0.9,
        "clip_epsilon": 0.1,
        "ent_coef": 0.00429,
        "vf_coef": 0.19,
        "max_grad_norm": 5.0,
        "use_sde": True,  # white noise at every step does not rock the car up the hill
        "init_log_std": -3.29,
        "orthogonal_init": False,  # with it 2 of 3 seeds stood still after reaching the flag
        "normalize_observations": True,
        "normalize_rewards": True,
    },
    "BipedalWalker-v3": {
        "total_steps": 5_000_000,
        "num_envs": 32,
        "num_steps": 2048,
        "num_minibatches": 1024,
        "update_epochs": 10,
        "learning_rate": 3e-4,
        "anneal_lr": False,
        "clip_epsilon": 0.18,
        "gamma": 0.999,
        "gae_lambda": 0.95,
        "ent_coef": 0.0,
        "normalize_observations": True,
        "normalize_rewards": True,
    },
    "CarRacing-v3": {
        "total_steps": 4_000_000,
        "num_envs": 8,
        "num_steps": 512,
        "num_minibatches": 32,  # minibatch 128
        "update_epochs": 10,
        "learning_rate": 1e-4,
        "anneal_lr": True,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_epsilon": 0.2,
        "ent_coef": 0.0,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "frame_skip": 2,
        "resize": [64, 64],
        "grayscale": True,
        "frame_stack": 2,
        "network": "shared",
        "head_sizes": [256],
        "activation": "gelu",
        "use_sde": True,
        "sde_sample_freq": 4,
        "init_log_std": -2.0,
        "orthogonal_init": False,
        "normalize_rewards": True,
    },
    # Partially observed tasks (velocities hidden): an LSTM core.
    "clippo/CartPoleNoVel-v1": {
        "total_steps": 100_000,
        "num_envs": 8,
        "num_steps": 32,
        "num_minibatches": 1,
        "update_epochs": 20,
        "learning_rate": 1e-3,
        "gamma": 0.995,  # with RL-Zoo's 0.98 the cart drifted off the track on some seeds
        "gae_lambda": 0.8,
        "target_kl": 0.02,  # without it policies that had solved the task fell back
        "normalize_observations": True,
        "normalize_rewards": True,
        "hidden_sizes": [64],
        "activation": "relu",
        "recurrent": "lstm",
        "recurrent_hidden_size": 64,
    },
    "clippo/PendulumNoVel-v1": {
        "total_steps": 100_000,
        "num_envs": 4,
        "num_steps": 1024,
        "bptt_length": 32,
        "num_minibatches": 32,
        "update_epochs": 10,
        "learning_rate": 1e-3,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "normalize_observations": True,
        "normalize_rewards": True,
        "hidden_sizes": [64],
        "recurrent": "lstm",
        "recurrent_hidden_size": 64,
    },
    # Contextual bandits: a short horizon changes no optimum and only cuts the advantages' variance.
    "clippo/ToolAmount-v0": {"total_steps": 200_000, "gamma": 0.5, "gae_lambda": 0.5, "init_log_std": -1.0},
    "clippo/Bits-v0": {"total_steps": 100_000, "gamma": 0.5, "gae_lambda": 0.5},
    # MuJoCo v5: RL-Zoo's values for the v3 envs, on top of the "mujoco" preset.
    "HalfCheetah-v5": {
        "preset": "mujoco",
        "num_steps": 512,
        "num_minibatches": 8,  # minibatch 64
        "update_epochs": 20,
        "learning_rate": 2.0633e-5,
        "anneal_lr": False,
        "gamma": 0.98,
        "gae_lambda": 0.92,
        "clip_epsilon": 0.1,
        "ent_coef": 0.000401762,
        "vf_coef": 0.58096,
        "max_grad_norm": 0.8,
        "hidden_sizes": [256, 256],
        "activation": "relu",
        "init_log_std": -2.0,
    },
    # RL-Zoo's Hopper and Walker2d values did worse here than the generic recipe with a smaller std.
    "Hopper-v5": {"preset": "mujoco", "init_log_std": -0.5},
    "Walker2d-v5": {"preset": "mujoco", "init_log_std": -0.5},
    "Humanoid-v5": {
        "preset": "mujoco",
        "total_steps": 10_000_000,  # PPO needs ~10M steps to walk here
        "num_steps": 512,
        "num_minibatches": 2,  # minibatch 256
        "update_epochs": 5,
        "learning_rate": 3.56987e-5,
        "anneal_lr": False,
        "gamma": 0.95,
        "gae_lambda": 0.9,
        "clip_epsilon": 0.3,
        "ent_coef": 0.00238306,
        "vf_coef": 0.431892,
        "max_grad_norm": 2.0,
        "hidden_sizes": [256, 256],
        "activation": "relu",
        "init_log_std": -2.0,
    },
    "InvertedPendulum-v5": {
        "preset": "mujoco",
        "total_steps": 200_000,  # reaches the 1000 cap well before this
        "num_steps": 32,
        "num_minibatches": 1,
        "update_epochs": 5,
        "learning_rate": 2.22425e-4,
        "anneal_lr": False,
        "gamma": 0.999,
        "gae_lambda": 0.9,
        "clip_epsilon": 0.4,
        "ent_coef": 0.0,
        "vf_coef": 0.19816,
        "max_grad_norm": 0.3,
    },
    "InvertedDoublePendulum-v5": {
        "preset": "mujoco",
        "num_steps": 128,
        "num_minibatches": 1,
        "update_epochs": 10,
        "learning_rate": 1.55454e-4,
        "anneal_lr": False,
        "gamma": 0.98,
        "gae_lambda": 0.8,
        "clip_epsilon": 0.4,
        "ent_coef": 0.0,
        "vf_coef": 0.695929,
        "max_grad_norm": 0.5,
    },
    "Reacher-v5": {
        "preset": "mujoco",
        "num_steps": 512,
        "num_minibatches": 16,
        "update_epochs": 5,
        "learning_rate": 1.04019e-4,
        "anneal_lr": False,
        "gamma": 0.9,
        "gae_lambda": 1.0,
        "clip_epsilon": 0.3,
        "ent_coef": 0.0,
        "vf_coef": 0.950368,
        "max_grad_norm": 0.9,
    },
    # Swimmer's reward comes from slow forward progress: discount almost nothing away.
    "Swimmer-v5": {"preset": "mujoco", "gamma": 0.9999},
    "Ant-v5": {"preset": "mujoco"},
}
# RL-Zoo tunes the continuous-action lander with the same values.
ENV_PRESETS["LunarLanderContinuous-v3"] = dict(ENV_PRESETS["LunarLander-v3"])

# Multi-agent envs (clippo.multiagent), named by module path. total_steps counts agent steps.
# simple_spread: issue #33's speed recipe (8 env copies x 128 steps = 3072 agent steps per
# update for 3 agents, 4 epochs of minibatches of 512 rows, lr 3e-4, entropy 0.01), one policy
# shared by the 3 identical agents; 1M agent steps, measured (preset_sources.py). The board games:
# not yet tuned or measured.
ENV_PRESETS["mpe2.simple_spread_v3"] = {
    "total_steps": 1_000_000,
    "env_kwargs": {"N": 3, "max_cycles": 25, "continuous_actions": False},
    "num_envs": 8,
    "num_steps": 128,
    "num_minibatches": 6,
    "update_epochs": 4,
    "learning_rate": 3e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_epsilon": 0.2,
    "ent_coef": 0.01,
    "critic": "local",
}
# Two-player board games (self-play): see preset_sources for why these values
ENV_PRESETS["pettingzoo.classic.connect_four_v3"] = {
    "total_steps": 2_500_000,
    "num_envs": 16,
    "num_steps": 128,
    "num_minibatches": 8,
    "update_epochs": 4,
    "learning_rate": 3e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "ent_coef": 0.05,
    "encoder": "cnn",
    "encoder_kwargs": {"channels": 64, "features": 256},  # 16 and 128 stalled at ~35-38% against lookahead
    "normalize_advantages": False,
    "selfplay_snapshot_every": 10,
}
ENV_PRESETS["pettingzoo.classic.tictactoe_v3"] = {
    "total_steps": 2_000_000,
    "num_envs": 16,
    "num_steps": 64,
    "num_minibatches": 4,
    "update_epochs": 4,
    "learning_rate": 1e-3,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "ent_coef": 0.05,
    "encoder": "mlp",
    "hidden_sizes": [256, 256],  # with 128-128 one seed in two still lost a game in 1000 to random
    "normalize_advantages": False,  # the +-1 outcomes set the scale; normalizing blew noise up to it
    "selfplay_snapshot_every": 5,
}


def _check_env_modules(modules: list[str]) -> None:
    """``env_modules``: at most ``safety.MAX_LIST`` dotted module paths."""
    if len(modules) > safety.MAX_LIST:
        raise ConfigError(f"env_modules=[...] is invalid: {len(modules)} modules, at most {safety.MAX_LIST}")
    for module in modules:
        try:
            check_module_name(module)
        except ValueError:  # (named by the field, as every config error is)
            raise ConfigError(
                f"env_modules={safety.shown(modules)} is invalid: {safety.shown(module)} is not an importable "
                "Python module path such as mypackage.envs"
            ) from None


def _check_types(config: PPOConfig) -> None:
    """Reject values of the wrong type (a string for a number, a float for a count) by name."""
    for f in fields(config):
        value = getattr(config, f.name)
        kind = f.type
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                setattr(config, f.name, float(value))
        elif kind == "float | None":
            ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
            if ok and value is not None:
                setattr(config, f.name, float(value))
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "str":
            ok = isinstance(value, str)
        elif kind == "dict":
            ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        elif kind == "list[str]":
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            if ok:
                setattr(config, f.name, list(value))
        elif kind == "list[int]":
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            if ok:
                setattr(config, f.name, list(value))
        else:  # pragma: no cover - a new field type without a check is a programming error
            raise TypeError(f"no type check for field {f.name}: {kind}")
        if not ok:  # (the value shown is bounded: it may come from a file)
            raise ConfigError(f"{f.name}={safety.shown(value)} is invalid: it must be of type {kind}")


#: Stable-Baselines3's names for clippo's knobs (a user coming from SB3 types these first)
SB3_NAMES = {
    "lr": "learning_rate",
    "n_steps": "num_steps",
    "n_epochs": "update_epochs",
    "n_envs": "num_envs",
    "clip_range": "clip_epsilon",
    "total_timesteps": "total_steps",
    "normalize_advantage": "normalize_advantages",
    "batch_size": "num_minibatches",  # (a count of minibatches, not their size)
    "tensorboard_log": "tensorboard",
    "sde_sample_frequency": "sde_sample_freq",
}


def check_names(overrides: dict[str, Any], where: str = "hyperparameter") -> None:
    """Raise ConfigError for a key that is not a PPOConfig field, suggesting the closest one (or
    clippo's name for a Stable-Baselines3 one)."""
    for key in overrides:
        if key not in FIELD_NAMES:
            close = [SB3_NAMES[key]] if key in SB3_NAMES else difflib.get_close_matches(key, FIELD_NAMES, n=1)
            if not close:  # (short names: a prefix or a part is the better guess)
                close = [name for name in FIELD_NAMES if str(key) and str(key) in name][:1]
            note = (
                " (clippo counts minibatches: num_minibatches = num_envs * num_steps / batch_size)"
                if key == "batch_size"
                else ""
            )
            hint = f"; did you mean {close[0]!r}?{note}" if close else f"; known names: {', '.join(FIELD_NAMES)}"
            raise ConfigError(f"unknown {where} {safety.shown(key)}{hint}")


def preset_values(name: str) -> dict[str, Any]:
    """The overrides of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r} is invalid: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def family_preset(env_id: str) -> str | None:
    """The named preset of a family of envs without a preset of their own (Atari, MinAtar)."""
    return family(env_id)


def env_preset_values(env_id: str) -> dict[str, Any]:
    """The built-in tuned overrides for an env id (empty when it has none); an Atari or MinAtar
    id without values of its own gets its family's preset."""
    family = family_preset(env_id)
    values = dict(ENV_PRESETS.get(env_id, {"preset": family} if family else {}))
    base = values.pop("preset", None)
    return {**(preset_values(base) if base else {}), **values}


def load_config_file(
    path: str | Path, trust_code: bool = False, passed_modules: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Read a YAML, TOML or JSON file of hyperparameters (a flat mapping of field names).

    The file is data (it may come from someone else): at most ``safety.MAX_CONFIG_BYTES``, YAML
    without anchors or aliases, and an encoder it names other than a built-in is imported only
    with ``trust_code`` (``clippo.core.safety``), as are the ``env_modules`` it names other than
    ``passed_modules`` (those the user named themselves)."""
    path = Path(path)
    source = f"config file {str(path)!r}"
    try:
        text = safety.read_capped_text(path, what="config file")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    if path.suffix in (".toml", ".json"):
        try:
            if path.suffix == ".toml":
                if sys.version_info >= (3, 11):
                    import tomllib

                    data = tomllib.loads(text)
                else:  # tomllib is new in Python 3.11, and clippo supports 3.10
                    raise ValueError("reading TOML needs Python >= 3.11 (tomllib): use a YAML or JSON file")
            else:
                data = json.loads(text)
        except Exception as exc:  # every parser has its own error class; all mean "not parseable"
            first = first_line(exc)
            raise ConfigError(f"cannot parse config file {str(path)!r}: {first}") from None
    else:
        data = safety.load_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of hyperparameter names to values")
    check_names(data, where=f"key in config file {str(path)!r}:")
    if "encoder" in data:
        safety.check_encoder_name(data["encoder"], source, trust_code)
    if "env_id" in data:
        safety.check_env_id_text(data["env_id"], source)
    if data.get("env_modules"):
        safety.check_env_modules_from_file(data["env_modules"], source, trust_code, passed=passed_modules)
    return data


def resolve_config(
    env_id: str,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    trust_code: bool = False,
) -> PPOConfig:
    """Merge defaults, env preset (or named preset), config file and explicit overrides; validate.
    ``trust_code``: import an encoder the config file names (``load_config_file``)."""
    overrides = dict(overrides or {})
    check_names(overrides)
    values: dict[str, Any] = {}
    values.update(preset_values(preset) if preset is not None else env_preset_values(env_id))
    if config_file is not None:
        # an encoder given explicitly replaces the file's: the file's name is then never imported
        passed = overrides.get("env_modules") or ()
        values.update(load_config_file(config_file, trust_code or "encoder" in overrides, passed))
    values.update(overrides)
    values["env_id"] = env_id
    return PPOConfig(**values).validate()


def save_config(config: PPOConfig, path: str | Path) -> None:
    """Write the resolved config as human-readable YAML (atomically, never through a link)."""
    safety.write_file(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _preset_section(name: str, values: dict[str, Any], source: PresetSource) -> list[str]:
    """One preset's part of docs/presets.md: its values, source, note and result files."""
    shown = ", ".join(f"`{k}={v}`" for k, v in values.items()) or "the defaults above"
    lines = ["", f"### {name}", "", f"- values: {shown}", f"- source: {source.source}"]
    if source.note:
        lines.append(f"- notes: {source.note}")
    if source.results:
        links = ", ".join(f"[{path.removeprefix('benchmarks/results/')}](../{path})" for path in source.results)
        lines.append(f"- results: {links}")
    return lines


def presets_markdown() -> str:
    """The table of every preset's values, as committed in docs/presets.md (a test keeps them equal)."""
    defaults = PPOConfig().to_dict()
    lines = [
        "# Presets",
        "",
        "Generated from `src/clippo/config/ppo_config.py` (values) and `preset_sources.py` (their sources) by",
        "`clippo presets > docs/presets.md`.",
        "",
        "`clippo train ENV_ID` uses the env's built-in values below when it has them and no `--preset`",
        "is given; `--preset NAME` picks a named set instead. Values not listed are the defaults.",
        "Explicit flags and `--config` files override both.",
        "",
        "## Defaults",
        "",
        "| hyperparameter | value | meaning |",
        "| --- | --- | --- |",
    ]
    for f in fields(PPOConfig):
        lines.append(f"| `{f.name}` | `{defaults[f.name]}` | {f.metadata['help']} |")
    lines += [
        "",
        "## Named presets (`--preset NAME`)",
        "",
        "Each preset's values, where they come from, and what was measured with them (seeds, numbers,",
        "result files). Sources are kept as data in `src/clippo/config/preset_sources.py`.",
    ]
    for name, values in PRESETS.items():
        lines += _preset_section(name, values, PRESET_SOURCES[name])
    lines += ["", "## Built-in values per environment"]
    for env_id, values in ENV_PRESETS.items():
        lines += _preset_section(env_id, values, ENV_PRESET_SOURCES[env_id])
    lines += [
        "",
        "Atari ids (`ALE/<Game>-v5`, `<Game>NoFrameskip-v4`) without values of their own use the `atari`",
        "preset, MinAtar ids (`MinAtar/<Game>-v1`) the `minatar` preset.",
        "",
        "## How results are reported",
        "",
        "- Every learning figure names its seeds. Most presets were tuned on seeds 1-3 (some 1-5); their figures on",
        "  those seeds show what the tuning found, not what a user's seed gets.",
        "- Each preset is also measured on seeds no tuning run used: 1000-1009 (1000-1004 for MinAtar Breakout at",
        "  2M steps and Hopper-v5), by `benchmarks/seed_robustness.py`, one plain `clippo train ENV --seed S` per",
        "  seed ([table](../benchmarks/results/seed_robustness/results.md)). The goal: at least 9 of 10 (4 of 5).",
        "- A seed's result is the deterministic evaluation of the final policy that `clippo train` writes to",
        "  `eval.json` (20 episodes in that benchmark), never the best point of a curve.",
        "- A seed succeeds when that return reaches the task's reference: Gymnasium's `reward_threshold` where",
        "  the env has one (CartPole-v1 475, Acrobot-v1 -100, MountainCar-v0 -110, MountainCarContinuous-v0 90,",
        "  the landers 200), else the figure the table names with its source (a published result such as",
        "  RecurrentPPO's -218 on PendulumNoVel, -200 on Pendulum-v1, 97.5% of a toy task's known optimum).",
        "- Over seeds: the success count, the median, the worst seed, and the interquartile mean (the mean of",
        "  the middle half of the seeds) with a 95% percentile-bootstrap confidence interval, as Agarwal et al.",
        "  (2021, rliable) recommend. `clippo report RUN_DIR RUN_DIR ... --threshold X` prints the same for",
        "  your own runs of one config.",
    ]
    return "\n".join(lines) + "\n"


def config_from_dict(values: dict[str, Any]) -> PPOConfig:
    """Rebuild a config saved by clippo (checkpoint or config.yaml), validated as data (names
    imported only after ``clippo.core.safety``'s trust decision, by the caller)."""
    if not isinstance(values, dict):
        raise ConfigError(
            f"a saved config must be a mapping of hyperparameter names to values, not {type(values).__name__}"
        )
    check_names(values, where="config key")
    return PPOConfig(**values).validate()

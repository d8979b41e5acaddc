#!/usr/bin/env python
"""Side-by-side speed and learning benchmark: clippo PPO against Stable-Baselines3 PPO.

For every env in --envs and every seed in --seeds, both libraries train with the same
hyperparameters (the recipe in RECIPES below), each run in its own child process
(single-threaded), alternating clippo / SB3 / clippo / SB3 ... in seed-major order. Each child
reports the wall time of learn(), steps/second, the final deterministic evaluation return and the
training curve. Before the training runs, the "limits" are measured per env: the random-action
step rate of the vectorized env alone, and the rollout (collection) rate of each library.

    python benchmarks/bench_sb3.py --envs CartPole-v1 --seeds 1 2 3 --throughput-envs 64

writes results.md, results.json and return_vs_time_<env>.png into --out (benchmarks/results/).
Run ``--list-recipes`` to see the hyperparameters. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    child_env,
    command_line,
    emit_result,
    finite_or_none,
    fmt,
    fmt_pm,
    machine_info,
    machine_markdown,
    md_table,
    mean_std,
    median,
    now,
    parse_child_output,
    ratio,
    write_json,
)

LIBS = ("clippo", "sb3")
LIB_NAMES = {"clippo": "clippo", "sb3": "SB3"}
LIB_COLORS = {"clippo": "tab:blue", "sb3": "tab:orange"}

# ---------------------------------------------------------------------------------------------
# Hyperparameter recipes, in SB3's vocabulary. Shared by both libraries, always: separate actor
# and critic MLPs (64-64 tanh unless the recipe says otherwise), orthogonal init (policy head
# gain 0.01, value head 1), Adam eps 1e-5, per-minibatch advantage normalization, no value
# clipping, no KL early stop, obs/reward clip 10. The MuJoCo recipes are clippo's own built-in
# presets for those envs, translated (``recipe_from_clippo_preset``).
# ---------------------------------------------------------------------------------------------
COMMON = {
    "clip_range": 0.2,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
    "normalize_obs": False,
    "normalize_reward": False,
    "net_arch": [64, 64],
    "activation": "tanh",
    "log_std_init": 0.0,
    "anneal_lr": True,
    "ortho_init": True,  # orthogonal init; False: PyTorch's default (both libraries)
    "use_sde": False,  # gSDE exploration (both libraries' Box actions)
    "sde_sample_freq": -1,
    "vector_env": "auto",  # clippo only: its native vectorized env when the env has one, else sync
}

RECIPES: dict[str, dict[str, Any]] = {
    # RL-Baselines3-Zoo's CartPole-v1 recipe (the Zoo also anneals clip_range linearly from 0.2;
    # clippo has no clip schedule, so both use a constant 0.2 here).
    "CartPole-v1": {
        **COMMON,
        "n_envs": 8,
        "n_steps": 32,
        "batch_size": 256,
        "n_epochs": 20,
        "learning_rate": 1e-3,
        "gamma": 0.98,
        "gae_lambda": 0.8,
        "total_steps": 100_000,
        "source": "RL-Zoo (clip annealing dropped)",
    },
    # Zoo-like (16 x 256, lambda 0.94, 4 epochs, normalized observations) with clippo's
    # 256-sample minibatches and 300k steps.
    "Acrobot-v1": {
        **COMMON,
        "n_envs": 16,
        "n_steps": 256,
        "batch_size": 256,
        "n_epochs": 4,
        "learning_rate": 3e-4,
        "gamma": 0.99,
        "gae_lambda": 0.94,
        "normalize_obs": True,
        "total_steps": 300_000,
        "source": "RL-Zoo-like (batch 256, obs normalization only, 300k steps)",
    },
    # Zoo-like (4 envs, gamma 0.9, lr 1e-3, 10 epochs, obs+reward normalization) without gSDE,
    # which clippo does not have.
    "Pendulum-v1": {
        **COMMON,
        "n_envs": 4,
        "n_steps": 512,
        "batch_size": 64,
        "n_epochs": 10,
        "learning_rate": 1e-3,
        "gamma": 0.9,
        "gae_lambda": 0.95,
        "normalize_obs": True,
        "normalize_reward": True,
        "total_steps": 200_000,
        "source": "RL-Zoo-like (no gSDE, 4 x 512 steps, 200k steps)",
    },
}


def recipe_from_clippo_preset(env_id: str) -> dict[str, Any]:
    """clippo's built-in preset for ``env_id`` in the recipe vocabulary, so that SB3 runs exactly
    the hyperparameters that ``clippo train ENV_ID`` uses."""
    from clippo.config.ppo_config import resolve_config

    c = resolve_config(env_id)
    batch = c.num_envs * c.num_steps
    untranslated = (
        c.head_sizes or c.frame_skip != 1 or c.resize or c.grayscale or c.frame_stack != 1
    )  # (env wrappers, CNN heads)
    if (
        c.network != "separate"
        or c.target_kl is not None
        or c.clip_value_loss
        or not c.normalize_advantages
        or untranslated
    ):
        raise ValueError(f"{env_id}: its clippo preset uses a feature this harness does not translate to SB3")
    return {
        **COMMON,
        "n_envs": c.num_envs,
        "n_steps": c.num_steps,
        "batch_size": batch // c.num_minibatches,
        "n_epochs": c.update_epochs,
        "learning_rate": c.learning_rate,
        "anneal_lr": c.anneal_lr,
        "gamma": c.gamma,
        "gae_lambda": c.gae_lambda,
        "clip_range": c.clip_epsilon,
        "ent_coef": c.ent_coef,
        "vf_coef": c.vf_coef,
        "max_grad_norm": c.max_grad_norm,
        "normalize_obs": c.normalize_observations,
        "normalize_reward": c.normalize_rewards,
        "net_arch": list(c.hidden_sizes),
        "activation": c.activation,
        "log_std_init": c.init_log_std,
        "ortho_init": c.orthogonal_init,
        "use_sde": c.use_sde,
        "sde_sample_freq": c.sde_sample_freq,
        "vector_env": c.vector_env,
        "total_steps": c.total_steps,
        "source": "clippo's built-in preset",
    }


# The MuJoCo presets are clippo's own; the Box2D and MountainCar presets are RL-Zoo's tuned PPO
# values, so these recipes are "SB3 with RL-Zoo's hyperparameters" for those tasks.
for _env_id in (
    "Hopper-v5",
    "HalfCheetah-v5",
    "Walker2d-v5",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "BipedalWalker-v3",
):
    RECIPES[_env_id] = recipe_from_clippo_preset(_env_id)

RECIPE_KEYS = [
    "n_envs",
    "n_steps",
    "batch_size",
    "n_epochs",
    "learning_rate",
    "gamma",
    "gae_lambda",
    "clip_range",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "normalize_obs",
    "normalize_reward",
    "total_steps",
    "vector_env",
    "net_arch",
    "activation",
    "log_std_init",
    "anneal_lr",
    "ortho_init",
    "use_sde",
    "sde_sample_freq",
]


def sb3_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--sb3-set`` values (``KEY=VALUE``, VALUE read as YAML: 4, 0.99, true) for recipe keys."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in RECIPE_KEYS:
            raise SystemExit(f"--sb3-set {pair!r} is invalid: use KEY=VALUE with KEY one of {', '.join(RECIPE_KEYS)}")
        out[key] = yaml.safe_load(value)
    return out


def recipe_for(env_id: str, total_steps: int | None) -> dict[str, Any]:
    recipe = dict(RECIPES[env_id])
    if total_steps is not None:
        recipe["total_steps"] = total_steps
    batch = recipe["n_envs"] * recipe["n_steps"]
    if batch % recipe["batch_size"]:
        raise ValueError(f"{env_id}: n_envs * n_steps = {batch} is not a multiple of batch_size {recipe['batch_size']}")
    return recipe


def clippo_hyperparameters(recipe: dict[str, Any], seed: int) -> dict[str, Any]:
    """The recipe as clippo PPO keywords (every knob that matters named, so no preset leaks in)."""
    batch = recipe["n_envs"] * recipe["n_steps"]
    return {
        "seed": seed,
        "total_steps": recipe["total_steps"],
        "num_envs": recipe["n_envs"],
        "num_steps": recipe["n_steps"],
        "vector_env": recipe["vector_env"],
        "num_minibatches": max(1, batch // recipe["batch_size"]),
        "update_epochs": recipe["n_epochs"],
        "learning_rate": recipe["learning_rate"],
        "anneal_lr": recipe["anneal_lr"],
        "gamma": recipe["gamma"],
        "gae_lambda": recipe["gae_lambda"],
        "clip_epsilon": recipe["clip_range"],
        "clip_value_loss": False,
        "ent_coef": recipe["ent_coef"],
        "vf_coef": recipe["vf_coef"],
        "max_grad_norm": recipe["max_grad_norm"],
        "target_kl": None,
        "normalize_advantages": True,
        "network": "separate",
        "hidden_sizes": list(recipe["net_arch"]),
        "activation": recipe["activation"],
        "init_log_std": recipe["log_std_init"],
        "orthogonal_init": recipe.get("ortho_init", True),
        "use_sde": recipe["use_sde"],
        "sde_sample_freq": recipe["sde_sample_freq"],
        "normalize_observations": recipe["normalize_obs"],
        "normalize_rewards": recipe["normalize_reward"],
        "obs_clip": 10.0,
        "reward_clip": 10.0,
        "device": "cpu",
        "torch_threads": 1,
        "checkpoint_every": 0,
        "tensorboard": False,
    }


def sb3_kwargs(recipe: dict[str, Any], seed: int) -> dict[str, Any]:
    """The recipe as stable_baselines3.PPO keywords (imports torch: call in a child only)."""
    import torch

    lr = recipe["learning_rate"]

    def linear_schedule(progress_remaining: float) -> float:
        return lr * progress_remaining

    return {
        "learning_rate": linear_schedule if recipe["anneal_lr"] else lr,
        "n_steps": recipe["n_steps"],
        "batch_size": min(recipe["batch_size"], recipe["n_envs"] * recipe["n_steps"]),
        "n_epochs": recipe["n_epochs"],
        "gamma": recipe["gamma"],
        "gae_lambda": recipe["gae_lambda"],
        "clip_range": recipe["clip_range"],
        "clip_range_vf": None,
        "normalize_advantage": True,
        "ent_coef": recipe["ent_coef"],
        "vf_coef": recipe["vf_coef"],
        "max_grad_norm": recipe["max_grad_norm"],
        "target_kl": None,
        "use_sde": recipe["use_sde"],
        "sde_sample_freq": recipe["sde_sample_freq"],
        "policy_kwargs": {
            "net_arch": {"pi": list(recipe["net_arch"]), "vf": list(recipe["net_arch"])},
            "activation_fn": {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[recipe["activation"]],
            "ortho_init": recipe.get("ortho_init", True),
            "log_std_init": recipe["log_std_init"],
        },
        "seed": seed,
        "device": "cpu",
        "verbose": 0,
    }


# ---------------------------------------------------------------------------------------------
# Training curves: both libraries give per-update rows (seconds since learn() started, global
# step, sum and count of the episode returns finished during that update); the curve's return is
# the mean over the most recent rows holding at least `window` episodes.
# ---------------------------------------------------------------------------------------------
def recent_return_curve(rows: list[tuple[float, int, float, int]], window: int) -> list[list[Any]]:
    points: list[list[Any]] = []
    for i, (wall, step, _, _) in enumerate(rows):
        total, count = 0.0, 0
        for _, _, ep_sum, ep_count in reversed(rows[: i + 1]):
            total += ep_sum
            count += ep_count
            if count >= window:
                break
        points.append([round(wall, 4), int(step), (total / count) if count else None])
    return points


def clippo_metric_rows(metrics_csv: Path) -> list[tuple[float, int, float, int]]:
    rows = []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            mean = float(row["episode_return"]) if row.get("episode_return") not in (None, "") else float("nan")
            count = (
                int(float(row["episodes"])) if row.get("episodes") not in (None, "") else (0 if math.isnan(mean) else 1)
            )
            if math.isnan(mean):
                count = 0
            rows.append(
                (float(row["wall_time"]), int(float(row["global_step"])), mean * count if count else 0.0, count)
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------
def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def make_sb3_env(env_id: str, n_envs: int, seed: int, recipe: dict[str, Any], frozen_from=None):
    """SB3's vectorized env for the recipe: DummyVecEnv of Monitor-wrapped envs, plus VecNormalize
    when the recipe normalizes (frozen, with copied statistics and raw rewards, for evaluation)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    if not (recipe["normalize_obs"] or recipe["normalize_reward"]):
        return venv
    if frozen_from is None:
        return VecNormalize(
            venv,
            training=True,
            norm_obs=recipe["normalize_obs"],
            norm_reward=recipe["normalize_reward"],
            clip_obs=10.0,
            clip_reward=10.0,
            gamma=recipe["gamma"],
            epsilon=1e-8,
        )
    frozen = VecNormalize(
        venv,
        training=False,
        norm_obs=recipe["normalize_obs"],
        norm_reward=False,
        clip_obs=10.0,
        gamma=recipe["gamma"],
        epsilon=1e-8,
    )
    frozen.obs_rms = copy.deepcopy(frozen_from.obs_rms)
    return frozen


def child_train_clippo(spec: dict[str, Any]) -> dict[str, Any]:
    _single_thread()
    # SB3 imports TensorBoard's SummaryWriter when it is imported; clippo imports it lazily inside
    # learn() when given a run_dir. Import it here so that neither learn() timing pays for it.
    import torch.utils.tensorboard  # noqa: F401

    from clippo import PPO

    recipe, seed = spec["recipe"], spec["seed"]
    run_dir = Path(spec["run_dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run directory for every run
    t = time.perf_counter()
    agent = PPO(spec["env_id"], preset="default", run_dir=run_dir, **clippo_hyperparameters(recipe, seed))
    setup_s = time.perf_counter() - t

    t0 = time.perf_counter()
    agent.learn(progress=False)
    learn_s = time.perf_counter() - t0
    steps = int(agent.global_step)

    t = time.perf_counter()
    result = agent.evaluate(episodes=spec["eval_episodes"], seed=spec["eval_seed"], deterministic=True)
    eval_s = time.perf_counter() - t
    agent.close()

    rows = clippo_metric_rows(run_dir / "metrics.csv")
    return {
        "setup_s": setup_s,
        "learn_s": learn_s,
        "loop_s": rows[-1][0] if rows else None,  # clippo's own timer: the update loop only
        "steps": steps,
        "updates": len(rows),
        "eval_s": eval_s,
        "eval_returns": [float(r) for r in result["returns"]],
        "curve": recent_return_curve(rows, spec["curve_window"]),
    }


def child_train_sb3(spec: dict[str, Any]) -> dict[str, Any]:
    _single_thread()
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    class CurveCallback(BaseCallback):
        """Per-update rows like clippo's metrics.csv: returns of the episodes that the Monitor
        wrappers reported during a rollout, stamped after the update that follows it."""

        def __init__(self) -> None:
            super().__init__(verbose=0)
            self.t0 = time.perf_counter()
            self.rows: list[tuple[float, int, float, int]] = []
            self.ep_sum, self.ep_count = 0.0, 0

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                episode = info.get("episode")
                if episode is not None:
                    self.ep_sum += float(episode["r"])
                    self.ep_count += 1
            return True

        def _flush(self) -> None:
            self.rows.append((time.perf_counter() - self.t0, int(self.num_timesteps), self.ep_sum, self.ep_count))
            self.ep_sum, self.ep_count = 0.0, 0

        def _on_rollout_start(self) -> None:
            if self.num_timesteps > 0:  # the previous rollout's update has just finished
                self._flush()

        def _on_training_end(self) -> None:
            self._flush()

    recipe, seed, env_id = spec["recipe"], spec["seed"], spec["env_id"]
    t = time.perf_counter()
    venv = make_sb3_env(env_id, recipe["n_envs"], seed, recipe)
    model = PPO("MlpPolicy", venv, **sb3_kwargs(recipe, seed))
    callback = CurveCallback()
    setup_s = time.perf_counter() - t

    t0 = time.perf_counter()
    callback.t0 = t0
    model.learn(total_timesteps=recipe["total_steps"], callback=callback)
    learn_s = time.perf_counter() - t0
    steps = int(model.num_timesteps)

    t = time.perf_counter()
    eval_env = make_sb3_env(env_id, 1, spec["eval_seed"], recipe, frozen_from=venv)
    returns, _ = evaluate_policy(
        model, eval_env, n_eval_episodes=spec["eval_episodes"], deterministic=True, return_episode_rewards=True
    )
    eval_s = time.perf_counter() - t
    eval_env.close()
    venv.close()
    return {
        "setup_s": setup_s,
        "learn_s": learn_s,
        "loop_s": None,
        "steps": steps,
        "updates": len(callback.rows),
        "eval_s": eval_s,
        "eval_returns": [float(r) for r in returns],
        "curve": recent_return_curve(callback.rows, spec["curve_window"]),
    }


def _round_count(spec: dict[str, Any]) -> int:
    batch = spec["num_envs"] * spec["num_steps"]
    return max(spec["min_rollouts"], math.ceil(spec["collect_steps"] / batch), math.ceil(spec["env_steps"] / batch))


def _time_interleaved(step, sample, collect, spec: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Seconds per env-only block (one rollout's worth of vector steps with random actions) and per
    rollout of ``collect()``, alternated round by round after one warm-up of each: the machine's
    speed drifts by tens of percent within minutes, and both sides should see the same drift."""

    def env_block() -> None:
        for _ in range(spec["num_steps"]):
            step(sample())

    env_block()
    collect()
    env_times, rollout_times = [], []
    for _ in range(_round_count(spec)):
        t = time.perf_counter()
        env_block()
        env_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        collect()
        rollout_times.append(time.perf_counter() - t)
    return env_times, rollout_times


def _limits_result(spec: dict[str, Any], env_type: str, env_times: list[float], times: list[float]) -> dict[str, Any]:
    batch = spec["num_envs"] * spec["num_steps"]
    return {
        "env_type": env_type,
        "rounds": len(times),
        "env_transitions": len(env_times) * batch,
        "env_s": sum(env_times),
        "env_sps": len(env_times) * batch / sum(env_times),
        "rollouts": len(times),
        "rollout_s": sum(times),
        "rollout_sps": len(times) * batch / sum(times),
        "rollout_best_sps": batch / min(times),
        # the same fraction round by round: how much it moves with the machine's drift
        "fraction_per_round_median": statistics.median(e / r for e, r in zip(env_times, times, strict=False)),
    }


def child_limits_clippo(spec: dict[str, Any]) -> dict[str, Any]:
    _single_thread()
    from clippo import PPO
    from clippo.core.advantages import compute_gae
    from clippo.envs.make import make_vector_env

    env_id, n, num_steps, seed = spec["env_id"], spec["num_envs"], spec["num_steps"], spec["seed"]
    recipe = {**spec["recipe"], "n_envs": n, "n_steps": num_steps}
    hp = clippo_hyperparameters(recipe, seed)

    # 1. The vectorized env alone, random actions.
    envs = make_vector_env(env_id, n, hp["vector_env"])
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    env_type = type(envs).__name__

    # 2. clippo's rollout collection with an untrained policy, built as PPO._train builds it, up to
    #    the same point as SB3's collect_rollouts: actions, log-probabilities, values and GAE.
    agent = PPO(env_id, preset="default", **hp)
    runner = agent.env_runner()
    buffer = agent.new_rollout_buffer()

    def collect() -> None:
        runner.collect(agent.model, buffer, agent.generator)
        buffer.estimate_values(agent.model)
        compute_gae(
            *(buffer.tensor(name) for name in ("rewards", "values", "terminated", "truncated", "last_value")),
            gamma=hp["gamma"],
            gae_lambda=hp["gae_lambda"],
        )

    env_times, times = _time_interleaved(envs.step, envs.action_space.sample, collect, spec)
    envs.close()
    agent.close()
    return _limits_result(spec, env_type, env_times, times)


def child_limits_sb3(spec: dict[str, Any]) -> dict[str, Any]:
    _single_thread()
    import numpy as np
    from stable_baselines3 import PPO

    env_id, n, num_steps, seed = spec["env_id"], spec["num_envs"], spec["num_steps"], spec["seed"]
    recipe = {**spec["recipe"], "n_envs": n, "n_steps": num_steps}

    # 1. SB3's vectorized env alone (DummyVecEnv + Monitor [+ VecNormalize]), random actions.
    venv = make_sb3_env(env_id, n, seed, recipe)
    venv.reset()
    space = venv.action_space
    space.seed(seed)
    env_type = type(venv).__name__

    # 2. SB3's rollout collection (collect_rollouts includes its GAE computation) with an
    #    untrained policy, set up as learn() sets it up.
    model = PPO("MlpPolicy", make_sb3_env(env_id, n, seed, recipe), **sb3_kwargs(recipe, seed))
    _, callback = model._setup_learn(10**12, None)
    callback.on_training_start(locals(), globals())
    env_times, times = _time_interleaved(
        venv.step,
        lambda: np.stack([space.sample() for _ in range(n)]),
        lambda: model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps),
        spec,
    )
    venv.close()
    model.env.close()
    return _limits_result(spec, env_type, env_times, times)


CHILDREN = {
    ("train", "clippo"): child_train_clippo,
    ("train", "sb3"): child_train_sb3,
    ("limits", "clippo"): child_limits_clippo,
    ("limits", "sb3"): child_limits_sb3,
}


def run_as_child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    result = CHILDREN[(spec["mode"], spec["lib"])](spec)
    emit_result({k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in result.items()})
    return 0


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------
def run_child(spec: dict[str, Any], log_path: Path, timeout: float | None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its output goes to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(spec)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = (
            exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        ) + f"\ntimed out after {timeout} s"
        code = None
    process_s = time.perf_counter() - start
    log_path.write_text(
        f"$ {' '.join(cmd[:3])} '<spec>'\nspec: {json.dumps(spec)}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    )
    parsed = parse_child_output(stdout) if code == 0 else None
    base = {k: spec[k] for k in ("mode", "lib", "env_id", "seed", "num_envs", "num_steps", "tag") if k in spec}
    base["process_s"] = process_s
    base["log"] = str(log_path)
    if parsed is None:
        tail = "\n".join((stderr or stdout).strip().splitlines()[-3:])
        return {**base, "ok": False, "error": f"exit status {code}: {tail}"}
    return {**base, "ok": True, **parsed}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for env_id in results["envs"]:
        per_lib: dict[str, Any] = {}
        for lib in results["libs"]:
            runs = [r for r in results["runs"] if r["env_id"] == env_id and r["lib"] == lib and r["ok"]]
            evals = [mean_std(r["eval_returns"])[0] for r in runs]
            eval_mean, eval_std = mean_std(evals)
            per_lib[lib] = {
                "runs": len(runs),
                "failed": len(
                    [r for r in results["runs"] if r["env_id"] == env_id and r["lib"] == lib and not r["ok"]]
                ),
                "median_learn_s": median(r["learn_s"] for r in runs),
                "median_sps": median(r["steps"] / r["learn_s"] for r in runs),
                "median_steps": median(r["steps"] for r in runs),
                "eval_mean_over_seeds": eval_mean,
                "eval_std_over_seeds": eval_std,
            }
        limits = {
            lib: next(
                (
                    r
                    for r in results["limits"]
                    if r["env_id"] == env_id and r["lib"] == lib and r.get("tag") == "recipe" and r["ok"]
                ),
                None,
            )
            for lib in LIBS
        }
        summary[env_id] = {
            **per_lib,
            "speedup_sb3_over_clippo": ratio(
                per_lib.get("sb3", {}).get("median_learn_s"), per_lib.get("clippo", {}).get("median_learn_s")
            ),
            "limits": {
                lib: None
                if lim is None
                else {
                    "env_sps": lim["env_sps"],
                    "rollout_sps": lim["rollout_sps"],
                    "rollout_fraction_of_env": ratio(lim["rollout_sps"], lim["env_sps"]),
                    "env_type": lim["env_type"],
                }
                for lib, lim in limits.items()
            },
        }
    return summary


def write_markdown(results: dict[str, Any], path: Path) -> None:
    meta, summary = results["meta"], results["summary"]
    libs = results["libs"]
    lines = ["# clippo vs Stable-Baselines3 PPO: speed and learning", ""]
    lines += machine_markdown(meta)
    lines += [
        f"- seeds {results['seeds']}, deterministic evaluation over {results['eval_episodes']} episodes with eval seed "
        f"{results['eval_seed']}; run order: seed-major, alternating " + " / ".join(LIB_NAMES[lib] for lib in libs),
        "",
        "## Summary (median over seeds)",
        "",
    ]
    rows = []
    for env_id, s in summary.items():
        c, b = s.get("clippo", {}), s.get("sb3", {})
        rows.append(
            [
                env_id,
                fmt(results["recipes"][env_id]["total_steps"]),
                fmt(c.get("median_learn_s"), 1, " s"),
                fmt(b.get("median_learn_s"), 1, " s"),
                fmt(s["speedup_sb3_over_clippo"], 2, "x"),
                fmt(c.get("median_sps"), 0),
                fmt(b.get("median_sps"), 0),
                fmt_pm(c.get("eval_mean_over_seeds"), c.get("eval_std_over_seeds")),
                fmt_pm(b.get("eval_mean_over_seeds"), b.get("eval_std_over_seeds")),
                f"{c.get('runs', 0)}/{b.get('runs', 0)}"
                + (
                    f" ({c.get('failed', 0) + b.get('failed', 0)} failed)"
                    if c.get("failed", 0) + b.get("failed", 0)
                    else ""
                ),
            ]
        )
    lines += md_table(
        [
            "env",
            "steps",
            "clippo learn()",
            "SB3 learn()",
            "speed-up (SB3 time / clippo time)",
            "clippo steps/s",
            "SB3 steps/s",
            "clippo eval return (mean ± sd over seeds)",
            "SB3 eval return",
            "runs clippo/SB3",
        ],
        rows,
    )

    lines += ["", "## Limits: env-only and rollout (collection) throughput, untrained policy", ""]
    rows = []
    for lim in _limit_pairs(results):
        c, b = lim["clippo"], lim["sb3"]
        rows.append(
            [
                lim["env_id"],
                f"{lim['num_envs']} x {lim['num_steps']}",
                _lim(c, "env_sps") + (f" ({c['env_type']})" if c and c.get("ok") else ""),
                _lim(c, "rollout_sps"),
                fmt(ratio(_get(c, "rollout_sps"), _get(c, "env_sps")), 2),
                _lim(b, "env_sps") + (f" ({b['env_type']})" if b and b.get("ok") else ""),
                _lim(b, "rollout_sps"),
                fmt(ratio(_get(b, "rollout_sps"), _get(b, "env_sps")), 2),
            ]
        )
    if rows:
        lines += md_table(
            [
                "env",
                "envs x steps",
                "env-only steps/s (clippo's vector env)",
                "clippo rollout steps/s",
                "clippo rollout / env-only",
                "SB3 env-only steps/s",
                "SB3 rollout steps/s",
                "SB3 rollout / env-only",
            ],
            rows,
        )
        lines += [
            "",
            'env-only: `envs.step(envs.action_space.sample())` on `clippo.envs.make.make_vector_env(env, n, "auto")` '
            "(SB3: `make_vec_env` DummyVecEnv with Monitor, plus VecNormalize when the recipe normalizes). "
            "Rollout, the same work for both: actions, log-probabilities, critic values and GAE advantages "
            "for a whole rollout. clippo: "
            "`EnvRunner.collect` into a `RolloutBuffer` (acting with a numpy copy of the actor; "
            "log-probabilities of the stored actor outputs in one call after the loop), "
            "`RolloutBuffer.estimate_values` (numpy copy of the critic, "
            "one batch) and `compute_gae`, as `PPO._train` does them; SB3: "
            "`collect_rollouts` (critic evaluated at every step, GAE at the end). "
            "Timed in rounds after one warm-up of each: one rollout's worth of env-only vector steps, "
            "then one rollout, alternated (the machine's speed drifts); rates are totals over the rounds.",
        ]
    else:
        lines += ["(not measured)"]

    lines += ["", "## Per-seed runs", ""]
    rows = []
    for env_id in results["envs"] if results["runs"] else []:
        for seed in results["seeds"]:
            c = _find_run(results, env_id, seed, "clippo")
            b = _find_run(results, env_id, seed, "sb3")
            rows.append(
                [
                    env_id,
                    seed,
                    _run_cell(c, "learn_s", 2, " s"),
                    _run_cell(b, "learn_s", 2, " s"),
                    fmt(ratio(_get(b, "learn_s"), _get(c, "learn_s")), 2, "x"),
                    fmt(_sps(c), 0),
                    fmt(_sps(b), 0),
                    _eval_cell(c),
                    _eval_cell(b),
                    _run_cell(c, "loop_s", 2, " s"),
                ]
            )
    if not rows:
        lines += ["(no training runs)"]
    lines += (
        []
        if not rows
        else md_table(
            [
                "env",
                "seed",
                "clippo learn()",
                "SB3 learn()",
                "SB3 / clippo",
                "clippo steps/s",
                "SB3 steps/s",
                "clippo eval return",
                "SB3 eval return",
                "clippo update loop (metrics.csv)",
            ],
            rows,
        )
    )
    failures = [r for r in results["runs"] + results["limits"] if not r["ok"]]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [
            f"- {r['mode']} {r['lib']} {r['env_id']} seed {r.get('seed')}: {r['error']} (log: {r['log']})"
            for r in failures
        ]

    differs = results.get("sb3_set") or {}
    title = (
        "## Hyperparameters (the same for both libraries)"
        if not differs
        else "## Hyperparameters (clippo's; SB3's differ as below)"
    )
    lines += ["", title, ""]
    lines += md_table(
        ["", *results["envs"]],
        [[k, *(str(results["recipes"][e][k]) for e in results["envs"])] for k in [*RECIPE_KEYS, "source"]],
    )
    if differs:
        lines += [
            "",
            "SB3 ran with these values instead (`--sb3-set`): "
            + ", ".join(f"`{k}={v}`" for k, v in differs.items())
            + ". The speed-up then compares two recipes.",
        ]
    lines += [
        "",
        "Both: separate actor and critic MLPs of the recipe's `net_arch` and `activation`, orthogonal init, Adam eps "
        "1e-5, learning rate annealed linearly to 0 when `anneal_lr`, advantages normalized per minibatch, no value "
        "clipping, no KL early stop. clippo: "
        "`num_minibatches = n_envs * n_steps // batch_size`; SB3: `VecNormalize` (clip 10, same gamma) when the "
        "recipe normalizes. Evaluation: clippo `agent.evaluate(episodes, seed)` (frozen normalizer); SB3 "
        "`evaluate_policy` on a fresh env with frozen VecNormalize statistics and raw rewards.",
        "",
        "## Notes on what is timed",
        "",
        "- `learn()` wall time only (construction and evaluation excluded); steps/s = env steps trained / that time.",
        "- clippo runs with a `run_dir` and `tensorboard=False` (its curve comes from `metrics.csv`), so its `learn()` "
        "also writes a CSV row each update and a final checkpoint; SB3 runs with `verbose=0` and no TensorBoard log. "
        "The last column of the per-seed table is clippo's own timer of the update loop, without that setup and the "
        "final save.",
        '- SB3 records its curve with a callback that reads `info["episode"]["r"]` each step (a small cost).',
        f"- Curves: mean return of the most recent updates' finished episodes (at least {results['curve_window']} "
        "episodes), against seconds since `learn()` started.",
        "",
        "## Plots",
        "",
    ]
    lines += [f"- [{p}]({p})" for p in results.get("plots", [])]
    path.write_text("\n".join(lines) + "\n")


def _get(entry: dict[str, Any] | None, key: str) -> Any:
    return entry.get(key) if entry and entry.get("ok") else None


def _lim(entry: dict[str, Any] | None, key: str) -> str:
    if entry is None:
        return "n/a"
    if not entry.get("ok"):
        return "failed"
    return fmt(entry[key], 0)


def _sps(run: dict[str, Any] | None) -> float | None:
    return run["steps"] / run["learn_s"] if run and run.get("ok") and run.get("learn_s") else None


def _run_cell(run: dict[str, Any] | None, key: str, digits: int, suffix: str) -> str:
    if run is None:
        return "n/a"
    if not run.get("ok"):
        return "failed"
    return fmt(run.get(key), digits, suffix)


def _eval_cell(run: dict[str, Any] | None) -> str:
    if run is None:
        return "n/a"
    if not run.get("ok"):
        return "failed"
    return fmt_pm(*mean_std(run["eval_returns"]))


def _find_run(results: dict[str, Any], env_id: str, seed: int, lib: str) -> dict[str, Any] | None:
    return next((r for r in results["runs"] if r["env_id"] == env_id and r["seed"] == seed and r["lib"] == lib), None)


def _limit_pairs(results: dict[str, Any]) -> list[dict[str, Any]]:
    pairs: dict[tuple, dict[str, Any]] = {}
    for r in results["limits"]:
        key = (r["env_id"], r["num_envs"], r["num_steps"])
        pairs.setdefault(key, {"env_id": key[0], "num_envs": key[1], "num_steps": key[2], "clippo": None, "sb3": None})
        pairs[key][r["lib"]] = r
    return list(pairs.values())


def plot_curves(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for env_id in results["envs"]:
        runs = [r for r in results["runs"] if r["env_id"] == env_id and r["ok"] and r.get("curve")]
        if not runs:
            continue
        fig, (ax_time, ax_step) = plt.subplots(1, 2, figsize=(12, 4.5))
        labelled = set()
        for r in runs:
            pts = [p for p in r["curve"] if p[2] is not None]
            if not pts:
                continue
            label = LIB_NAMES[r["lib"]] if r["lib"] not in labelled else None
            labelled.add(r["lib"])
            style = {
                "color": LIB_COLORS[r["lib"]],
                "alpha": 0.85,
                "linewidth": 1.4,
                "label": label,
                "marker": "o" if len(pts) < 3 else None,
            }
            ax_time.plot([p[0] for p in pts], [p[2] for p in pts], **style)
            ax_step.plot([p[1] for p in pts], [p[2] for p in pts], **{**style, "label": None})
        ax_time.set_xlabel("wall time since learn() started (s)")
        ax_step.set_xlabel("environment steps")
        for ax in (ax_time, ax_step):
            ax.set_ylabel(f"mean return (last >= {results['curve_window']} episodes)")
            ax.grid(alpha=0.3)
        ax_time.legend(loc="best")
        recipe = results["recipes"][env_id]
        fig.suptitle(
            f"{env_id}: {recipe['n_envs']} x {recipe['n_steps']} steps, {recipe['total_steps']:,} total, "
            f"seeds {results['seeds']} (one line per run)"
        )
        fig.tight_layout()
        name = f"return_vs_time_{env_id}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Side-by-side benchmark of clippo PPO and Stable-Baselines3 PPO (same hyperparameters).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--envs",
        nargs="+",
        default=["CartPole-v1"],
        choices=list(RECIPES),
        metavar="ENV",
        help=f"environments, from: {', '.join(RECIPES)}",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="training seeds")
    parser.add_argument("--libs", nargs="+", default=list(LIBS), choices=LIBS, help="libraries to run")
    parser.add_argument("--total-steps", type=int, default=None, help="override every recipe's total env steps")
    parser.add_argument("--eval-episodes", type=int, default=20, help="deterministic evaluation episodes per run")
    parser.add_argument(
        "--eval-seed", type=int, default=10_000, help="seed of the evaluation env (the same for every run)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--throughput-envs",
        type=int,
        default=None,
        metavar="N",
        help="also measure the limits for each env of --envs with N envs x --throughput-steps steps",
    )
    parser.add_argument(
        "--throughput-steps", type=int, default=128, help="num_steps of the --throughput-envs measurement"
    )
    parser.add_argument(
        "--limit-env-steps",
        type=int,
        default=100_000,
        help="transitions (summed over envs), at least, for the env-only rate "
        "(measured in rounds alternating with the rollouts)",
    )
    parser.add_argument(
        "--limit-collect-steps", type=int, default=50_000, help="transitions (at least) for the rollout rate"
    )
    parser.add_argument("--limit-min-rollouts", type=int, default=5, help="rollouts (at least) for the rollout rate")
    parser.add_argument(
        "--sb3-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="recipe values for SB3's runs only (e.g. n_epochs=4 gamma=0.99: RL-Zoo's values where "
        "clippo's preset differs from them); the results then compare different recipes",
    )
    parser.add_argument("--no-limits", action="store_true", help="skip the env-only/rollout throughput measurements")
    parser.add_argument("--no-train", action="store_true", help="skip the training runs")
    parser.add_argument("--curve-window", type=int, default=100, help="episodes averaged per curve point (at least)")
    parser.add_argument("--child-timeout", type=float, default=None, help="seconds before a child run is killed")
    parser.add_argument("--list-recipes", action="store_true", help="print the recipes as JSON and exit")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._child is not None:
        return run_as_child(args._child)
    if args.list_recipes:
        print(json.dumps({env: recipe_for(env, args.total_steps) for env in RECIPES}, indent=2))
        return 0
    if args.eval_episodes < 1:
        raise SystemExit("--eval-episodes must be >= 1")

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "runs"  # clippo run dirs and child logs (git-ignored: runs/)
    envs = list(dict.fromkeys(args.envs))
    results: dict[str, Any] = {
        "meta": {"command": command_line(), "date": now(), "machine": machine_info()},
        "envs": envs,
        "seeds": args.seeds,
        "libs": [lib for lib in LIBS if lib in args.libs],
        "eval_episodes": args.eval_episodes,
        "eval_seed": args.eval_seed,
        "curve_window": args.curve_window,
        "recipes": {env: recipe_for(env, args.total_steps) for env in envs},
        "sb3_set": sb3_overrides(args.sb3_set),
        "limits": [],
        "runs": [],
        "summary": {},
        "plots": [],
    }
    libs = results["libs"]

    def save() -> None:
        results["summary"] = summarize(results)
        write_json(out / "results.json", results)
        write_markdown(results, out / "results.md")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if not args.no_limits:
        jobs = [
            (
                env,
                results["recipes"][env],
                results["recipes"][env]["n_envs"],
                results["recipes"][env]["n_steps"],
                "recipe",
            )
            for env in envs
        ]
        if args.throughput_envs:
            jobs += [
                (env, results["recipes"][env], args.throughput_envs, args.throughput_steps, "throughput")
                for env in envs
            ]
        for env_id, recipe, n, num_steps, tag in jobs:
            for lib in libs:
                spec = {
                    "mode": "limits",
                    "lib": lib,
                    "env_id": env_id,
                    "seed": 0,
                    "recipe": recipe,
                    "num_envs": n,
                    "num_steps": num_steps,
                    "tag": tag,
                    "env_steps": args.limit_env_steps,
                    "collect_steps": args.limit_collect_steps,
                    "min_rollouts": args.limit_min_rollouts,
                }
                r = run_child(spec, scratch / "logs" / f"limits-{env_id}-{n}x{num_steps}-{lib}.log", args.child_timeout)
                results["limits"].append(r)
                if r["ok"]:
                    log(
                        f"limits {LIB_NAMES[lib]:6} {env_id} {n}x{num_steps}: env-only {r['env_sps']:,.0f} steps/s, "
                        f"rollout {r['rollout_sps']:,.0f} steps/s ({r['rollout_sps'] / r['env_sps']:.2f})"
                    )
                else:
                    log(f"limits {LIB_NAMES[lib]:6} {env_id} {n}x{num_steps}: FAILED {r['error']}")
                save()

    if not args.no_train:
        order = [(seed, env, lib) for seed in args.seeds for env in envs for lib in libs]
        for i, (seed, env_id, lib) in enumerate(order, 1):
            recipe = results["recipes"][env_id]
            if lib == "sb3" and results["sb3_set"]:
                recipe = {**recipe, **results["sb3_set"]}
            spec = {
                "mode": "train",
                "lib": lib,
                "env_id": env_id,
                "seed": seed,
                "recipe": recipe,
                "eval_episodes": args.eval_episodes,
                "eval_seed": args.eval_seed,
                "curve_window": args.curve_window,
                "run_dir": str(scratch / env_id / f"clippo-seed{seed}"),
            }
            r = run_child(spec, scratch / "logs" / f"train-{env_id}-seed{seed}-{lib}.log", args.child_timeout)
            r["order"] = i
            results["runs"].append(r)
            if r["ok"]:
                log(
                    f"[{i}/{len(order)}] {LIB_NAMES[lib]:6} {env_id} seed {seed}: learn {r['learn_s']:.2f} s, "
                    f"{r['steps'] / r['learn_s']:,.0f} steps/s, eval {fmt_pm(*mean_std(r['eval_returns']))}"
                )
            else:
                log(f"[{i}/{len(order)}] {LIB_NAMES[lib]:6} {env_id} seed {seed}: FAILED {r['error']}")
            save()

    results["meta"]["finished"] = now()
    results["plots"] = plot_curves(results, out)
    save()
    log(f"wrote {out / 'results.md'}, {out / 'results.json'}" + "".join(f", {out / p}" for p in results["plots"]))
    return 0 if all(r["ok"] for r in results["runs"] + results["limits"]) else 1


if __name__ == "__main__":
    sys.exit(main())

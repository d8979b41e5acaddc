"""Callbacks: user code run inside ``PPO.learn`` after each rollout and after each update.

A callback is a :class:`Callback` (override ``on_rollout`` and/or ``on_update``) or a plain
function ``f(agent, metrics)``, called after each update. Returning ``False`` from either hook
stops training cleanly: the update finishes, a checkpoint is written, and ``learn`` returns.
Keys a callback adds to ``metrics`` in ``on_update`` are logged with the update's row.

:class:`EvalCallback` (what ``clippo train --eval-every N`` uses) is one such callback: periodic
evaluation on separate envs, ``best.pt``, and ``stop_at_return``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from clippo.core.errors import first_line


class Callback:
    """Hooks into the training loop; every hook may return False to stop training."""

    def on_rollout(self, agent: Any) -> bool | None:
        """After the rollout is collected (its advantages computed), before the update."""
        return None

    def on_update(self, agent: Any, metrics: dict[str, Any]) -> bool | None:
        """After the update, with that update's metrics (keys added here are logged too)."""
        return None


class FunctionCallback(Callback):
    """A plain function ``f(agent, metrics)`` run after each update."""

    def __init__(self, function: Callable[[Any, dict[str, Any]], bool | None]) -> None:
        self.function = function

    def on_update(self, agent: Any, metrics: dict[str, Any]) -> bool | None:
        return self.function(agent, metrics)


class CallbackList(Callback):
    """Several callbacks in order; training stops if any of them asks to."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_rollout(self, agent: Any) -> bool | None:
        return False if [cb.on_rollout(agent) for cb in self.callbacks].count(False) else None

    def on_update(self, agent: Any, metrics: dict[str, Any]) -> bool | None:
        return False if [cb.on_update(agent, metrics) for cb in self.callbacks].count(False) else None


def as_callback(callback: Callback | Callable | Iterable | None) -> Callback:
    """One ``Callback`` for what ``learn(callback=...)`` accepts: None, a Callback, a function
    ``f(agent, metrics)``, or a list of these."""
    if callback is None:
        return Callback()
    if isinstance(callback, Callback):
        return callback
    if callable(callback):
        return FunctionCallback(callback)
    if isinstance(callback, (list, tuple)):
        return CallbackList(as_callback(cb) for cb in callback)
    raise TypeError(
        f"callback={callback!r} is invalid: give a clippo.training.callbacks.Callback, a function f(agent, metrics), "
        "or a list of them"
    )


def with_config_evaluation(callback: Callback, config: Any) -> Callback:
    """``callback`` plus the periodic evaluation the config asks for (``eval_every``), first, so
    that ``PPO(env, eval_every=N).learn()`` evaluates as ``clippo train --eval-every N`` does;
    unchanged when ``eval_every`` is 0 or ``callback`` already holds an :class:`EvalCallback`."""

    def holds(cb: Callback) -> bool:
        return isinstance(cb, EvalCallback) or (isinstance(cb, CallbackList) and any(map(holds, cb.callbacks)))

    evaluation = None if holds(callback) else EvalCallback.from_config(config)
    return callback if evaluation is None else CallbackList([evaluation, callback])


# ---------------------------------------------------------------------------------------------
# Evaluation during training
# ---------------------------------------------------------------------------------------------
#: Periodic evaluations reset their envs with seed ``config.seed + EVAL_SEED_OFFSET`` (env i gets
#: that + i): far from the training envs' seeds (``config.seed + rank * num_envs + i``) and from
#: the end-of-training evaluation's (``config.seed + 10_000``) in ``clippo train``.
EVAL_SEED_OFFSET = 1_000_000
#: What the evaluation adds to an update's metrics (columns of metrics.csv, TensorBoard tags).
EVAL_MEAN, EVAL_STD = "eval/mean_return", "eval/std_return"
BEST_NAME = "best.pt"
#: Beside best.pt: the evaluation it scored and when, as JSON (read back by ``clippo resume``).
BEST_RECORD = "best.json"


class EvalCallback(Callback):
    """Evaluate the deterministic policy during training, keep the best one, optionally stop.

    *When:* at the first update boundary at or after each multiple of ``every`` environment steps
    (counted like ``total_steps``: over all envs and processes), so runs with different batch
    sizes are evaluated at the same points; and, with ``at_end``, after the last update of a
    ``learn`` call, so that the final policy is a candidate for ``best.pt`` too.

    *How:* ``agent.evaluate(episodes, seed)``: whole episodes on envs of its own, made for each
    evaluation and reset with the same ``seed`` every time (default ``config.seed +
    EVAL_SEED_OFFSET``), so successive evaluations differ only by the policy. Observation
    normalization is frozen there (acting never updates it) and a deterministic policy draws no
    random numbers, so the training envs and generators are untouched: training goes on exactly
    as it would without evaluations.

    *What it writes:* ``eval/mean_return`` and ``eval/std_return`` into that update's metrics
    (so into metrics.csv and TensorBoard). With a run directory, ``best.pt`` (a checkpoint without
    the training envs' state) and ``best.json`` (its evaluation and step) whenever an evaluation
    beats the best so far, strictly. ``best.json`` is read back at the first hook, so the best so
    far survives ``clippo resume``: ``best.pt`` is only ever replaced by a better evaluation.

    *Stopping:* returns False, ending training after this update, once an evaluation's mean
    return reaches ``stop_at_return``; ``reached`` then holds that evaluation.

    Only the main process evaluates and writes. ``history`` lists this callback's evaluations.
    """

    def __init__(
        self,
        every: int,
        episodes: int = 10,
        stop_at_return: float | None = None,
        seed: int | None = None,
        at_end: bool = True,
        num_envs: int | None = None,
    ) -> None:
        for name, value in (("every", every), ("episodes", episodes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= 1")
        if stop_at_return is not None and not (
            isinstance(stop_at_return, (int, float)) and math.isfinite(stop_at_return)
        ):
            raise ValueError(f"stop_at_return={stop_at_return!r} is invalid: it must be a finite number, or None")
        self.every = every
        self.episodes = episodes
        self.stop_at_return = stop_at_return
        self.seed = seed
        self.at_end = at_end
        self.num_envs = num_envs
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.reached: dict[str, Any] | None = None
        self._restored = False

    @classmethod
    def from_config(cls, config: Any) -> EvalCallback | None:
        """The evaluation a config asks for (``eval_every``, ``eval_episodes``,
        ``stop_at_return``), or None when ``eval_every`` is 0."""
        if not config.eval_every:
            return None
        return cls(config.eval_every, config.eval_episodes, config.stop_at_return)

    @property
    def best_mean_return(self) -> float:
        return self.best["mean_return"] if self.best is not None else -math.inf

    def due(self, agent: Any) -> bool:
        """Whether this update crossed a multiple of ``every`` steps (or ended the learn call)."""
        step = agent.global_step
        previous = step - agent.global_batch_size
        return step // self.every > previous // self.every or (self.at_end and agent.finished)

    def on_update(self, agent: Any, metrics: dict[str, Any]) -> bool | None:
        if not agent.world.is_main:
            return None
        if not self._restored:
            self._restored = True
            self._restore_best(agent.run_dir)
        if not self.due(agent):
            return None
        seed = self.seed if self.seed is not None else agent.config.seed + EVAL_SEED_OFFSET
        result = agent.evaluate(episodes=self.episodes, seed=seed, num_envs=self.num_envs)
        record = {
            "global_step": agent.global_step,
            "update": agent.update,
            "mean_return": result["mean_return"],
            "std_return": result["std_return"],
            "episodes": result["episodes"],
            "seed": seed,
        }
        self.history.append(record)
        metrics[EVAL_MEAN] = record["mean_return"]
        metrics[EVAL_STD] = record["std_return"]
        if record["mean_return"] > self.best_mean_return:
            self.best = record
            if agent.run_dir is not None:
                agent.save(Path(agent.run_dir) / BEST_NAME, include_runner=False)
                write_json_atomic(record, Path(agent.run_dir) / BEST_RECORD)
        if self.stop_at_return is not None and record["mean_return"] >= self.stop_at_return:
            self.reached = record
            return False
        return None

    def _restore_best(self, run_dir: Path | None) -> None:
        record = read_best_record(run_dir) if run_dir is not None else None
        if record is not None and record["mean_return"] > self.best_mean_return:
            self.best = record


def read_best_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The evaluation ``best.pt`` scored (``best.json``), or None when there is none yet."""
    path = Path(run_dir) / BEST_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        float(record["mean_return"]), int(record["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"cannot read {str(path)!r}: {first_line(exc)} (delete it to start the best-so-far afresh)"
        ) from None
    return record


def stop_reached(run_dir: str | Path, config: Any, global_step: int) -> dict[str, Any] | None:
    """The evaluation that already ended this run through ``stop_at_return`` at or before
    ``global_step`` (so a resume has nothing left to do), or None."""
    if config.stop_at_return is None or not config.eval_every:
        return None
    record = read_best_record(run_dir)
    if record is None or record["global_step"] > global_step or record["mean_return"] < config.stop_at_return:
        return None
    return record


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)

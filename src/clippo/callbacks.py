"""Callbacks: user code run inside ``PPO.learn`` after each rollout and after each update.

A callback is a :class:`Callback` (override ``on_rollout`` and/or ``on_update``) or a plain
function ``f(agent, metrics)``, called after each update. Returning ``False`` from either hook
stops training cleanly: the update finishes, a checkpoint is written, and ``learn`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


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
    raise TypeError(f"callback={callback!r} is invalid: give a clippo.callbacks.Callback, a function f(agent, metrics), or a list of them")

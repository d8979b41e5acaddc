"""Hung envs: what the training envs are doing now, a time limit on each call, and a watchdog.

The runner marks every call into its vector env (``EnvWatch.call``), so that whoever must give up
on a hung env (the step timeout, the signal handler's grace period, the watchdog) can say which
env hangs, in which method, and for how long. An async vector env's workers are separate
processes: its ``step_wait``/``reset_wait`` take the timeout and the hung worker is terminated. A
sync (or native) vector env steps inside the training process, where a hung call cannot be
interrupted safely (an exception raised into arbitrary env code could land anywhere): past the
limit the watchdog thread ends the process with one line instead, and the checkpoints written
so far (atomically, at update boundaries) stay intact.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym

from clippo.core.errors import EnvStepError

#: env_timeout's default for an async vector env (none is used for a sync or native one)
ASYNC_DEFAULT_TIMEOUT = 300.0
#: the exit status of a process ended by the watchdog (as timeout(1) reports a time limit)
TIMEOUT_EXIT_STATUS = 124


def effective_timeout(envs: Any, env_timeout: float | None) -> float | None:
    """The step/reset time limit for ``envs``: ``env_timeout`` if set, else the async default (a
    sync or native env gets none by default: its calls run in this process)."""
    if env_timeout is not None:
        return env_timeout
    return ASYNC_DEFAULT_TIMEOUT if isinstance(envs, gym.vector.AsyncVectorEnv) else None


class EnvWatch:
    """The vector env call under way, if any: its method, since when, and in which thread."""

    def __init__(self, envs: Any, timeout: float | None) -> None:
        self.envs = envs
        self.timeout = timeout
        self.method: str | None = None
        self.since = 0.0
        self.thread_id: int | None = None
        #: set by the agent: the sentence a forced exit ends with (the last checkpoint, how to resume)
        self.exit_hint: Callable[[], str] = lambda: "nothing was saved since the last checkpoint"
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def asynchronous(self) -> bool:
        return isinstance(self.envs, gym.vector.AsyncVectorEnv)

    @contextlib.contextmanager
    def call(self, method: str) -> Iterator[None]:
        """Mark a call into the vector env (``step`` or ``reset``) for as long as it runs."""
        self.thread_id, self.since, self.method = threading.get_ident(), time.monotonic(), method
        try:
            yield
        finally:
            self.method = None

    def step(self, actions: Any) -> tuple:
        """``envs.step(actions)`` within the time limit (the limit itself for an async env; the
        watchdog's for the others)."""
        if self.timeout is None or not self.asynchronous:
            # ``call("step")`` written out: this runs once per vector step, and at a few envs the
            # generator-based context manager costs a noticeable share of a step (issue #36).
            self.thread_id, self.since, self.method = threading.get_ident(), time.monotonic(), "step"
            try:
                return self.envs.step(actions)
            finally:
                self.method = None
        with self.call("step"):
            self.envs.step_async(actions)
            try:
                return self.envs.step_wait(timeout=self.timeout)
            except multiprocessing.TimeoutError:
                raise EnvStepError(self._timeout_message("step")) from None

    def reset(self, seed: int | None) -> tuple:
        """``envs.reset(seed=seed)`` within the time limit, as :meth:`step`."""
        self.start_watchdog()
        with self.call("reset"):
            if self.timeout is None or not self.asynchronous:
                return self.envs.reset(seed=seed)
            self.envs.reset_async(seed=seed)
            try:
                return self.envs.reset_wait(timeout=self.timeout)
            except multiprocessing.TimeoutError:
                raise EnvStepError(self._timeout_message("reset")) from None

    def _timeout_message(self, method: str) -> str:
        which = self.pending_envs()
        who = f"env {', '.join(map(str, which))} of {self.envs.num_envs}" if which else "an env"
        return f"{who} did not return from {method}() within env_timeout={self.timeout:g} s (--env-timeout)"

    def pending_envs(self) -> list[int]:
        """An async vector env's workers that have not answered (those with nothing to read)."""
        pipes = getattr(self.envs, "parent_pipes", None)
        if not pipes:
            return []
        pending = []
        for index, pipe in enumerate(pipes):
            with contextlib.suppress(OSError, ValueError, EOFError):
                if not pipe.poll():
                    pending.append(index)
        return pending

    def hung(self) -> str | None:
        """The call under way, in words (``env 2 of 4 in step() for 12 s``), or None."""
        method, since = self.method, self.since
        if method is None:
            return None
        seconds = time.monotonic() - since
        index, inner = self._sync_env_index()
        if self.asynchronous:
            which = self.pending_envs()
            who = f"env {', '.join(map(str, which))} of {self.envs.num_envs}" if which else "the async vector env"
        elif index is not None:
            who = f"env {index} of {self.envs.num_envs}"
            method = inner or method
        else:
            who = f"the vector env ({type(self.envs).__name__})"
        return f"{who} in {method}() for {seconds:.0f} s"

    def _sync_env_index(self) -> tuple[int | None, str | None]:
        """Which env a sync vector env is stepping, read from the stepping thread's stack: its
        ``step``/``reset`` loop holds the index in ``i``; the frame it called names the method."""
        if not isinstance(self.envs, gym.vector.SyncVectorEnv) or self.thread_id is None:
            return None, None
        frame = sys._current_frames().get(self.thread_id)
        callee = None
        while frame is not None:
            if frame.f_locals.get("self") is self.envs and isinstance(frame.f_locals.get("i"), int):
                return frame.f_locals["i"], (callee.f_code.co_name if callee is not None else None)
            callee, frame = frame, frame.f_back
        return None, None

    def start_watchdog(self) -> None:
        """For a sync or native env with a time limit: a daemon thread that ends the process once
        a call has run past it (nothing else can get out of a hung in-process call)."""
        if self.timeout is None or self.asynchronous or self._watchdog is not None:
            return
        self._watchdog = threading.Thread(target=self._watch, name="clippo-env-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        assert self.timeout is not None
        while not self._closed.wait(min(self.timeout / 4, 1.0)):
            if self.method is not None and time.monotonic() - self.since > self.timeout:
                what = self.hung()
                if self.method is None:  # (it returned meanwhile)
                    continue
                print(
                    f"clippo: error: {what}: past env_timeout={self.timeout:g} s (--env-timeout); a call inside "
                    f"the training process cannot be interrupted, so it ends here; {self.exit_hint()}",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(TIMEOUT_EXIT_STATUS)

    def end_workers(self) -> None:
        """Terminate an async vector env's worker processes (before this process exits without
        closing its envs: a hung worker would outlive it)."""
        for process in getattr(self.envs, "processes", None) or []:
            with contextlib.suppress(Exception):
                if process.is_alive():
                    process.terminate()

    def close(self) -> None:
        self._closed.set()

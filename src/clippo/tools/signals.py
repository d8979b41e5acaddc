"""SIGINT and SIGTERM during ``clippo train`` and ``clippo resume``: stop at the next update
boundary, and get out anyway when training cannot get there.

The first signal asks the agent to stop at the next update boundary (where it checkpoints and
raises ``TrainingInterrupted``). If that boundary is not reached within the run's
``stop_grace`` seconds (an env hangs in ``step``, another rank hangs in an exchange), the process
exits with one line naming what hangs: checkpoints are only written at update boundaries,
atomically, so the newest one is intact (a write under way is waited for). A second signal ends
the process at once.

Python runs a signal handler in the main thread, between bytecodes: a main thread blocked inside
a C call that retries on interruption (an env deadlocked in its simulator, say) would never run
it. So the signal is also read by a watcher thread from ``signal.set_wakeup_fd``, which the
interpreter's C-level handler writes to whatever the main thread is doing; that thread starts the
grace period and acts on a second signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

#: the signals that stop training
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _SignalWatcher:
    """What the stop signals have done so far, for one training block."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.grace = float(agent.config.stop_grace)
        self.active = threading.Event()
        self.active.set()
        self.received = 0
        self.lock = threading.Lock()

    def on_signal(self, signum: int) -> None:
        """A stop signal arrived (seen by the watcher thread, whatever the main thread does)."""
        with self.lock:
            self.received += 1
            first = self.received == 1
        name = signal.Signals(signum).name
        if first:
            print(f"clippo: {name}: stopping after this update (send it again to quit at once)", file=sys.stderr)
            sys.stderr.flush()
            timer = threading.Timer(self.grace, self.give_up, args=(signum,))
            timer.daemon = True
            timer.start()
        elif self.active.is_set():  # (normally the default action has ended the process already)
            print(f"clippo: {name} again: quitting at once; {self.agent.exit_hint()}", file=sys.stderr)
            sys.stderr.flush()
            self._end_workers()
            os._exit(128 + signum)

    def give_up(self, signum: int) -> None:
        """The grace period is over: exit unless training got out meanwhile."""
        from clippo.training.checkpoint import writes_in_progress

        deadline = time.monotonic() + 600
        while writes_in_progress() and self.active.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.active.is_set():
            return
        watch = self.agent.env_watch
        what = watch.hung() if watch is not None else None
        within = f"training did not reach an update boundary within stop_grace={self.grace:g} s"
        reason = (
            f"{what}: {within}"
            if what
            else f"{within} (no training env call is under way: an evaluation, or an exchange with another "
            "process, hangs?)"
        )
        print(f"clippo: {signal.Signals(signum).name}: {reason}; exiting; {self.agent.exit_hint()}", file=sys.stderr)
        sys.stderr.flush()
        self._end_workers()
        os._exit(128 + signum)

    def _end_workers(self) -> None:
        watch = self.agent.env_watch
        if watch is not None:  # (an async env's hung worker would outlive this process)
            watch.end_workers()


@contextlib.contextmanager
def stop_on_signals(agent: Any) -> Iterator[None]:
    """Within this block SIGINT/SIGTERM stop ``agent``'s training as the module says."""
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return
    watcher = _SignalWatcher(agent)

    def handler(signum, frame) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second one: the default action, at once
        agent.request_stop(signum)

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        old_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):  # pragma: no cover - (not the main thread of the main interpreter)
        old_wakeup = None
    thread = threading.Thread(target=_read_signals, args=(reader, watcher), name="clippo-signals", daemon=True)
    thread.start()
    try:
        yield
    finally:
        watcher.active.clear()
        if old_wakeup is not None:
            signal.set_wakeup_fd(old_wakeup)
        for sig, old in previous.items():
            signal.signal(sig, old)
        writer.close()  # (the watcher thread reads the end, and stops)
        thread.join(1.0)
        reader.close()


def _read_signals(reader: socket.socket, watcher: _SignalWatcher) -> None:
    """The watcher thread: each byte is the number of a signal the process received."""
    while True:
        try:
            data = reader.recv(64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum in STOP_SIGNALS and watcher.active.is_set():
                watcher.on_signal(signum)

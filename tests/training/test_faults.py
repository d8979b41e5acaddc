"""Faults at runtime (issue #35): hung envs, dead ranks, clashing runs, envs changed between save
and resume, a full disk, non-finite observations given to ``act``.

The process-level tests start ``python -m clippo`` as a real subprocess: signals, a watchdog's
exit, a killed rank and two processes racing for one run directory only mean something there.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces

from clippo import PPO
from clippo.core.errors import CheckpointError, CheckpointWriteError, EnvStepError
from clippo.envs import snapshots
from clippo.rollout.watchdog import ASYNC_DEFAULT_TIMEOUT, EnvWatch, effective_timeout
from clippo.tools.cli import claim_run_dir, default_run_dir
from clippo.training.checkpoint import latest_checkpoint, read_checkpoint, write_atomic
from tests.helpers import run_cli

TINY = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=1, hidden_sizes=[16], seed=0)


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a clippo subprocess that imports (and so registers) the test env
    modules in ``tmp_path``: every rank of a ``--nproc`` job does, through a sitecustomize."""
    modules = sorted(path.stem for path in tmp_path.glob("*env.py"))
    (tmp_path / "sitecustomize.py").write_text("".join(f"import {name}\n" for name in modules))
    paths = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(paths),
        **extra,
    }


def assert_one_line(message: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message


# ------------------------------------------------------------------------------------------------
# 1. hung envs: the step timeout, the watchdog, signals with a grace period
# ------------------------------------------------------------------------------------------------
class HangingEnv(gym.Env):
    """Steps normally until its ``at``-th step() call, then never returns (a Python-level hang:
    signal handlers still run in it). Only the env whose first reset seed is ``seed`` hangs."""

    metadata: ClassVar[dict[str, Any]] = {}

    def __init__(self, at: int = 100, seed: int = 1) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.at, self.hang_seed, self.calls, self.first_seed = at, seed, 0, None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.first_seed is None:
            self.first_seed = seed
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        self.calls += 1
        if self.calls >= self.at and self.first_seed == self.hang_seed:
            while True:
                time.sleep(0.05)
        return np.zeros(2, dtype=np.float32), 1.0, self.calls % 20 == 0, False, {}


def test_async_vector_envs_get_a_default_timeout_sync_ones_none():
    sync = gym.vector.SyncVectorEnv([HangingEnv])
    try:
        assert effective_timeout(sync, None) is None and effective_timeout(sync, 2.5) == 2.5
    finally:
        sync.close()
    assert ASYNC_DEFAULT_TIMEOUT == 300.0


def test_the_watch_names_the_hung_env_of_a_sync_vector_env():
    release = threading.Event()

    class Blocking(HangingEnv):
        def step(self, action):
            if self.first_seed == 1:
                release.wait(10)
            return super().step(action)

    envs = gym.vector.SyncVectorEnv([lambda: Blocking(at=10**9)] * 3)
    watch = EnvWatch(envs, None)
    try:
        watch.reset(seed=0)
        stepping = threading.Thread(target=watch.step, args=(np.zeros(3, dtype=np.int64),))
        stepping.start()
        deadline = time.monotonic() + 5
        while watch.hung() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.hung() is not None and watch.hung().startswith("env 1 of 3 in step() for ")
        release.set()
        stepping.join(5)
        assert watch.hung() is None
    finally:
        release.set()
        envs.close()


@pytest.mark.slow
def test_a_hung_async_env_times_out_naming_it_and_checkpoints_the_last_good_update(tmp_path):
    run_dir = tmp_path / "run"
    # env 1 hangs in the second rollout (32 steps per rollout)
    agent = PPO(functools.partial(HangingEnv, at=40), **TINY, vector_env="async", env_timeout=1.0, run_dir=run_dir)
    started = time.monotonic()
    with pytest.raises(EnvStepError) as info:
        agent.learn(total_steps=agent.batch_size * 4)
    agent.close()
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert_one_line(message)
    assert "env 1 of 2 did not return from step() within env_timeout=1 s" in message
    path, payload = latest_checkpoint(run_dir)
    assert payload["global_step"] == agent.batch_size and str(path) in message


HANG_MODULE = textwrap.dedent(
    """
    import os, time
    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces


    class Hang(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self):
            self.observation_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
            self.action_space = spaces.Discrete(2)
            self.calls, self.first_seed = 0, None

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            if self.first_seed is None:
                self.first_seed = seed
            return np.zeros(2, dtype=np.float32), {}

        def step(self, action):
            self.calls += 1
            if self.calls >= int(os.environ["HANG_AT"]) and self.first_seed == 1:
                open(os.environ["HANG_MARKER"], "w").close()
                if os.environ.get("HANG_HOW") == "c":  # blocked in C: Python's signal handlers never run
                    import ctypes

                    libc = ctypes.CDLL(None)
                    mutex = ctypes.create_string_buffer(64)
                    libc.pthread_mutex_init(mutex, None)
                    libc.pthread_mutex_lock(mutex)
                    libc.pthread_mutex_lock(mutex)  # (a normal mutex locked again by its owner: deadlock)
                while True:
                    time.sleep(0.05)
            return np.zeros(2, dtype=np.float32), 1.0, self.calls % 20 == 0, False, {}


    gym.register(id="ClippoHang-v0", entry_point=Hang)
    """
)

HANG_ARGS = [
    "--vector-env",
    "sync",
    "--num-envs",
    "2",
    "--num-steps",
    "32",
    "--num-minibatches",
    "1",
    "--update-epochs",
    "1",
    "--hidden-sizes",
    "8",
    "--total-steps",
    "6400",
    "--checkpoint-every",
    "1",
    "--eval-episodes",
    "0",
    "--no-tensorboard",
]


def start_hanging_run(tmp_path: Path, *extra: str, how: str = "python") -> tuple[subprocess.Popen, Path, Path]:
    (tmp_path / "hangenv.py").write_text(HANG_MODULE)
    run_dir, marker = tmp_path / "run", tmp_path / "hanging"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clippo",
            "train",
            "ClippoHang-v0",
            "--run-dir",
            str(run_dir),
            *HANG_ARGS,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(tmp_path, HANG_AT="100", HANG_MARKER=str(marker), HANG_HOW=how),
        cwd=tmp_path,
    )
    return process, run_dir, marker


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > end:
            process.kill()
            raise AssertionError(f"{path.name} never appeared: {process.communicate()[1]}")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["python", "c"])
def test_sigterm_gets_out_of_a_hung_sync_env_after_the_grace_period(tmp_path, how):
    """A hang in Python code (signal handlers run in it) or blocked in a C call (they never run:
    the signal reaches a watcher thread through the wakeup fd)."""
    process, run_dir, marker = start_hanging_run(tmp_path, "--stop-grace", "1", how=how)
    try:
        wait_for(marker, process)
        time.sleep(0.3)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert time.monotonic() - sent < 10
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("clippo: SIGTERM: stopping after this update")
    assert len(lines) == 2, err  # the stop request, then one line on the way out
    assert "env 1 of 2 in step() for " in lines[1] and "stop_grace=1 s" in lines[1]
    newest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    assert f"the last checkpoint {newest} is intact" in lines[1] and f"clippo resume {run_dir}" in lines[1]
    assert read_checkpoint(newest)["global_step"] == 192  # env 1's 100th step() is in the fourth rollout


@pytest.mark.slow
def test_the_watchdog_ends_a_sync_run_whose_env_hangs_past_env_timeout(tmp_path):
    process, run_dir, _marker = start_hanging_run(tmp_path, "--env-timeout", "1")
    try:
        _out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 124, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "env 1 of 2 in step() for" in lines[0] and "env_timeout=1 s" in lines[0]
    assert "the last checkpoint" in lines[0] and "is intact" in lines[0]
    assert read_checkpoint(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1])["global_step"] == 192


def test_env_timeout_and_stop_grace_are_validated():
    for flag, value in (("--env-timeout", "0"), ("--env-timeout", "-1"), ("--stop-grace", "0")):
        code, _, err = run_cli(["train", "CartPole-v1", flag, value, "--total-steps", "64"])
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert flag[2:].replace("-", "_") in err


# ------------------------------------------------------------------------------------------------
# 2. dead ranks
# ------------------------------------------------------------------------------------------------
KILL_MODULE = textwrap.dedent(
    """
    import os, signal
    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces


    class Killer(gym.Env):
        '''Rank 1's first env SIGKILLs its own process at its 100th step, once (a marker file).'''
        metadata = {"render_modes": []}

        def __init__(self):
            self.observation_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
            self.action_space = spaces.Discrete(2)
            self.calls = 0

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(2, dtype=np.float32), {}

        def step(self, action):
            self.calls += 1
            marker = os.environ["KILL_MARKER"]
            if os.environ.get("RANK") == "1" and self.calls == 100 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return np.zeros(2, dtype=np.float32), 1.0, self.calls % 20 == 0, False, {}


    gym.register(id="ClippoKiller-v0", entry_point=Killer)
    """
)


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_in_one_line_per_process_and_resume_needs_the_same_world(tmp_path):
    (tmp_path / "killenv.py").write_text(KILL_MODULE)
    run_dir = tmp_path / "run"
    env = subprocess_env(tmp_path, KILL_MARKER=str(tmp_path / "killed"))
    args = [*HANG_ARGS, "--num-envs", "1", "--num-steps", "32", "--total-steps", "512"]
    train = subprocess.run(
        [sys.executable, "-m", "clippo", "train", "ClippoKiller-v0", "--run-dir", str(run_dir), "--nproc", "2", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    err = train.stderr
    assert train.returncode != 0, err
    assert "Traceback" not in err and "gloo" not in err.lower(), err
    lines = [line for line in err.strip().splitlines() if line]
    assert any(line.startswith("clippo: rank 1 (pid ") and "SIGKILL (the first to fail)" in line for line in lines), err
    assert any(line.startswith("clippo: rank 0 (pid ") for line in lines), err
    # rank 0 says what happened, and checkpointed the last good update (2 ranks x 32 steps each)
    rank0 = [line for line in lines if line.startswith("clippo: error: rank 0: ")]
    assert len(rank0) == 1 and "clippo resume" in rank0[0] and "--nproc 2" in rank0[0], err
    assert len(lines) == 3, err  # one line per process, and rank 0's own
    path, payload = latest_checkpoint(run_dir)
    assert payload["world"] == {"size": 2, "num_envs": [1, 1]} and str(path) in rank0[0]
    assert payload["global_step"] % 64 == 0 and 0 < payload["global_step"] < 512

    # one process would halve the global batch: refused, saying how to resume
    alone = subprocess.run(
        [sys.executable, "-m", "clippo", "resume", str(run_dir)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    err = alone.stderr
    assert alone.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert f"clippo resume {run_dir} --nproc 2" in err and "global batch 64" in err

    resume = subprocess.run(
        [sys.executable, "-m", "clippo", "resume", str(run_dir), "--nproc", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )
    assert resume.returncode == 0, resume.stderr
    assert f"at step {payload['global_step']} on 2 processes" in resume.stdout
    final = read_checkpoint(run_dir / "agent.pt")
    assert final["global_step"] == 512 and final["world"]["size"] == 2


def interrupted_run(tmp_path: Path, env: Any = "CartPole-v1", **config: Any) -> Path:
    """A tiny run stopped (checkpointed) after its second update."""
    run_dir = tmp_path / "run"
    agent = PPO(env, **{**TINY, "vector_env": "sync", **config}, run_dir=run_dir)

    def stop(agent, metrics):
        if metrics["update"] == 2:
            agent.request_stop()

    with pytest.raises(Exception, match="interrupted at step"):
        agent.learn(total_steps=agent.batch_size * 6, callback=stop)
    agent.close()
    return run_dir


def test_checkpoints_record_the_world_and_another_world_size_is_refused(tmp_path):
    run_dir = interrupted_run(tmp_path)
    path, payload = latest_checkpoint(run_dir)
    assert payload["world"] == {"size": 1, "num_envs": [2]}
    payload["world"] = {"size": 2, "num_envs": [2, 2]}
    write_atomic(payload, path)
    with pytest.raises(CheckpointError) as info:
        PPO.from_run(run_dir)
    message = str(info.value)
    assert_one_line(message)
    assert "trained on 2 processes (global batch 128 = 2 + 2 envs x 32 steps)" in message
    assert f"clippo resume {run_dir} --nproc 2" in message
    payload["world"] = {"size": "two"}
    write_atomic(payload, path)
    with pytest.raises(CheckpointError, match="malformed"):
        PPO.from_run(run_dir)


# ------------------------------------------------------------------------------------------------
# 3. clashing runs
# ------------------------------------------------------------------------------------------------
def test_default_run_names_do_not_collide(tmp_path, monkeypatch):
    names = {default_run_dir("CartPole-v1", 0) for _ in range(50)}
    assert len(names) == 50  # the same second, all different
    monkeypatch.chdir(tmp_path)
    first = default_run_dir("CartPole-v1", 0)
    first.mkdir(parents=True)
    with claim_run_dir(first, default=True) as claimed:  # (a name already taken: another is drawn)
        assert claimed != first and claimed.parent == first.parent and claimed.is_dir()
        assert claimed.name.rsplit("-", 1)[0] == first.name.rsplit("-", 1)[0]


def test_clippo_train_without_run_dir_claims_a_suffixed_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "CartPole-v1",
        "--num-envs",
        "2",
        "--num-steps",
        "32",
        "--total-steps",
        "64",
        "--eval-episodes",
        "0",
    ]
    code, out, err = run_cli([*args, "--no-tensorboard"])
    assert code == 0, err
    (run,) = [path for path in (tmp_path / "runs").iterdir() if path.name != "latest"]
    assert re.fullmatch(r"CartPole-v1-seed0-\d{8}-\d{6}-[0-9a-f]{6}", run.name), run.name
    assert (tmp_path / "runs" / "latest").resolve() == run.resolve() and (run / "config.yaml").is_file()
    assert f"run directory: runs/{run.name}" in out


def test_a_given_run_dir_holding_a_run_is_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("learning_rate: 0.001\n")
    code, _, err = run_cli(["train", "CartPole-v1", "--run-dir", str(run_dir), "--learning-rate", "1e-6"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "already holds a run (config.yaml)" in err
    assert (run_dir / "config.yaml").read_text() == "learning_rate: 0.001\n"


@pytest.mark.slow
def test_two_runs_started_together_in_one_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    common = ["--num-envs", "2", "--num-steps", "64", "--total-steps", "4096", "--eval-episodes", "0"]
    rates = ["0.001", "1e-06"]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clippo",
                "train",
                "CartPole-v1",
                "--run-dir",
                str(run_dir),
                *common,
                "--learning-rate",
                rate,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(tmp_path),
            cwd=tmp_path,
        )
        for rate in rates
    ]
    results = [(process.wait(120), *process.communicate()) for process in processes]
    codes = [code for code, _, _ in results]
    assert sorted(codes) == [0, 2], results
    winner = codes.index(0)
    loser_err = results[1 - winner][2]
    assert len(loser_err.strip().splitlines()) == 1 and "Traceback" not in loser_err, loser_err
    assert "in use by another clippo process" in loser_err or "already holds a run" in loser_err
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["learning_rate"] == float(rates[winner]), config  # the config of the run that trained


# ------------------------------------------------------------------------------------------------
# 5. envs changed between save and resume
# ------------------------------------------------------------------------------------------------
def normal_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def harder_cartpole() -> gym.Env:
    env = gym.make("CartPole-v1", max_episode_steps=50)
    env.unwrapped.gravity = 20.0
    return env


def heavier_cartpole() -> gym.Env:
    env = gym.make("CartPole-v1")
    env.unwrapped.gravity = 20.0
    return env


def time_limit(env: gym.Env) -> int:
    while not isinstance(env, gym.wrappers.TimeLimit):
        env = env.env
    return env._max_episode_steps


@pytest.mark.parametrize(
    "factory, reason",
    [
        (harder_cartpole, "TimeLimit._max_episode_steps is 50 now, 500 when the checkpoint was written"),
        (heavier_cartpole, "CartPoleEnv.gravity is 20.0 now, 9.8 when the checkpoint was written"),
    ],
)
def test_an_env_changed_between_save_and_resume_restarts_fresh_saying_why(tmp_path, factory, reason):
    run_dir = interrupted_run(tmp_path, normal_cartpole, env_id="CartPole-v1")
    same = PPO.from_run(run_dir, env=normal_cartpole)
    same.env_runner()
    assert same.envs_restored and same.envs_fresh_reason is None  # (the check can pass)
    same.close()

    agent = PPO.from_run(run_dir, env=factory)
    runner = agent.env_runner()
    try:
        assert not agent.envs_restored
        assert reason in agent.envs_fresh_reason
        assert_one_line(agent.envs_fresh_reason)
        for env in runner.envs.envs:  # the new settings, not the checkpoint's
            assert time_limit(env) == (50 if factory is harder_cartpole else 500)
            assert env.unwrapped.gravity == 20.0
    finally:
        agent.close()


def test_snapshots_hold_dynamic_state_only():
    envs = gym.vector.SyncVectorEnv([normal_cartpole] * 2)
    try:
        identity = snapshots.env_identity(envs)
        envs.reset(seed=0)
        envs.step(np.zeros(2, dtype=np.int64))
        snapshot = snapshots.snapshot_env_state(envs, identity)
        saved = {name for state in snapshot["state"] for name in state}
        assert {"state", "_elapsed_steps", "_np_random"} <= saved
        assert not {"gravity", "masscart", "_max_episode_steps", "tau", "x_threshold"} & saved
    finally:
        envs.close()


class EntropySeededEnv(HangingEnv):
    """An env with an RNG of its own seeded from entropy when built: state, not a setting."""

    def __init__(self) -> None:
        super().__init__(at=10**9)
        self.noise = np.random.default_rng()


def test_an_rng_made_from_entropy_at_construction_does_not_count_as_a_changed_env(monkeypatch):
    monkeypatch.setattr(snapshots, "_SNAPSHOT_MODULES", (*snapshots._SNAPSHOT_MODULES, EntropySeededEnv.__module__))
    saved = gym.vector.SyncVectorEnv([EntropySeededEnv] * 2)
    identity = snapshots.env_identity(saved)
    saved.reset(seed=0)
    saved.step(np.zeros(2, dtype=np.int64))
    snapshot = snapshots.snapshot_env_state(saved, identity)
    fresh = gym.vector.SyncVectorEnv([EntropySeededEnv] * 2)
    try:
        now = snapshots.env_identity(fresh)
        fresh.reset(seed=5)
        assert snapshots.restore_env_state(fresh, snapshot, now) is None
        for a, b in zip(saved.envs, fresh.envs, strict=True):
            assert a.unwrapped.noise.random() == b.unwrapped.noise.random() and a.unwrapped.calls == b.unwrapped.calls
    finally:
        saved.close()
        fresh.close()


def test_an_env_package_upgrade_restarts_fresh_and_resume_says_why(tmp_path, monkeypatch):
    run_dir = interrupted_run(tmp_path)
    real = snapshots._version
    monkeypatch.setattr(snapshots, "_version", lambda name: "99.0" if name == "gymnasium" else real(name))
    code, out, err = run_cli(["resume", str(run_dir)])
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("resuming"))
    assert f"with freshly reset envs: gymnasium is 99.0 now, {gym.__version__} when the checkpoint was written" in line


# ------------------------------------------------------------------------------------------------
# 6. a full disk; non-finite observations given to act/predict
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["torch", "os"])
def test_a_full_disk_is_one_line_and_older_checkpoints_stay_intact(tmp_path, monkeypatch, how):
    run_dir = tmp_path / "run"
    agent = PPO("CartPole-v1", **TINY, run_dir=run_dir, checkpoint_every=1, tensorboard=False)

    def fill_the_disk(agent, metrics):
        if metrics["update"] != 2:
            return
        if how == "torch":  # torch.save reports a failed write as a RuntimeError

            def save(payload, f):
                f.write(b"PK\x03\x04partial")
                raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing")

            monkeypatch.setattr(torch, "save", save)
            full = shutil.disk_usage(run_dir)._replace(free=0)
            monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
        else:

            def fsync(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(os, "fsync", fsync)

    with pytest.raises(CheckpointWriteError) as info:
        agent.learn(total_steps=agent.batch_size * 4, callback=fill_the_disk)
    agent.close()
    monkeypatch.undo()
    message = str(info.value)
    assert_one_line(message)
    assert "no space left on device" in message and "the checkpoints written before it are intact" in message
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert files == ["step_000000000064.pt"]  # no temporary file left behind
    assert read_checkpoint(run_dir / "checkpoints" / files[0])["global_step"] == 64


def test_a_full_disk_under_metrics_csv_is_one_line_naming_it(tmp_path, monkeypatch):
    from clippo.core import safety

    full = []
    real_open = safety.open_append

    class FillingFile:
        def __init__(self, file) -> None:
            self.file, self.name = file, file.name

        def write(self, text):
            return self.file.write(text)

        def flush(self):
            if full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.file.flush()

        def close(self):
            self.file.close()

    monkeypatch.setattr(safety, "open_append", lambda *a, **k: FillingFile(real_open(*a, **k)))
    run_dir = tmp_path / "run"
    agent = PPO("CartPole-v1", **TINY, run_dir=run_dir, checkpoint_every=1, tensorboard=False)
    with pytest.raises(CheckpointWriteError) as info:
        agent.learn(
            total_steps=agent.batch_size * 4, callback=lambda agent, m: full.append(1) if m["update"] == 2 else None
        )
    agent.close()
    message = str(info.value)
    assert_one_line(message)
    assert f"cannot write metrics file {run_dir / 'metrics.csv'}: no space left on device" in message
    assert read_checkpoint(run_dir / "checkpoints" / "step_000000000064.pt")["global_step"] == 64


def test_a_failed_write_on_a_disk_with_room_is_not_called_a_full_disk(tmp_path, monkeypatch):
    write_atomic({"a": 1}, tmp_path / "old.pt")

    def save(payload, f):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointWriteError) as info:
        write_atomic({"a": 2}, tmp_path / "old.pt")
    message = str(info.value)
    assert_one_line(message)
    assert "no space" not in message and "PytorchStreamWriter failed writing" in message
    monkeypatch.undo()
    assert torch.load(tmp_path / "old.pt", weights_only=True) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"]


def test_a_full_disk_via_the_cli_is_one_line(tmp_path, monkeypatch):
    def save(payload, f):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", save)
    full = shutil.disk_usage(tmp_path)._replace(free=0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    run_dir = tmp_path / "run"
    args = ["--num-envs", "2", "--num-steps", "32", "--total-steps", "64", "--no-tensorboard"]
    code, _, err = run_cli(["train", "CartPole-v1", "--run-dir", str(run_dir), *args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("clippo: error: cannot write checkpoint") and "no space left on device" in err


def test_non_finite_observations_given_to_act_are_an_error():
    agent = PPO("CartPole-v1", **TINY)
    try:
        with pytest.raises(ValueError, match="the observation holds NaN or infinity") as info:
            agent.act(np.array([0.0, np.nan, 0.0, 0.0], dtype=np.float32))
        assert_one_line(str(info.value))
        batch = np.zeros((3, 4), dtype=np.float32)
        batch[2, 0] = np.inf
        with pytest.raises(ValueError, match=r"observation row 2 \(of 3\) holds NaN or infinity"):
            agent.predict(batch, deterministic=True)
        assert agent.act(np.zeros(4, dtype=np.float32)) in (0, 1)
    finally:
        agent.close()

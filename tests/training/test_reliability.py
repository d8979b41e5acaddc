"""Trust: exact resume, crashes and signals mid-run, poisoned data, exploding envs, hostile files.

Each test is a tiny run (a few updates of a few dozen steps). The process-level tests start
``python -m clippo`` (or a small script) as a real subprocess, because signals, ``kill -9`` and exit
codes only mean something for a real process.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo import PPO
from clippo.core.errors import CheckpointError, EnvStepError, NonFiniteError, RunDirInUseError, TrainingInterrupted
from clippo.training.checkpoint import latest_checkpoint, read_checkpoint, write_atomic
from clippo.training.update import Learner
from tests.helpers import run_cli

SMALL = dict(num_envs=3, num_steps=48, num_minibatches=2, update_epochs=2, hidden_sizes=[16, 16], seed=3)
TINY = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2, hidden_sizes=[16, 16], seed=0)

# Metrics that depend only on the computation (not on the clock): equal between an uninterrupted run
# and an interrupted-and-resumed one when the resume is exact.
DETERMINISTIC_COLUMNS = [
    "global_step",
    "update",
    "episode_return",
    "episode_length",
    "episodes",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "epochs_run",
    "early_stopped",
    "skipped_steps",
    "learning_rate",
    "recent_return",
]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def assert_one_line_error(code, stderr: str, exit_code: int | None = 2) -> str:
    assert code not in (0, None), stderr
    if exit_code is not None:
        assert code == exit_code, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert "error" in lines[0]
    return lines[0]


def assert_one_line(message: str) -> None:
    assert message.strip(), "empty error message"
    assert len(message.strip().splitlines()) == 1, message


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def global_steps(run_dir: Path) -> list[int]:
    """metrics.csv's global_step column; every row must be complete and parseable."""
    rows = read_metrics(run_dir)
    steps = []
    for row in rows:
        assert None not in row and all(value is not None for value in row.values()), f"malformed metrics row {row}"
        steps.append(int(float(row["global_step"])))
    return steps


def assert_unique_increasing(steps: list[int]) -> None:
    assert steps, "metrics.csv has no rows"
    assert all(b > a for a, b in itertools.pairwise(steps)), f"global_step not strictly increasing: {steps}"


def stop_at(agent: PPO, updates: set[int]) -> None:
    """Make ``agent`` request a stop right after the policy update of each update number in ``updates``."""
    original = agent.learner.update_policy

    def wrapper(batch, plan=None):
        stats = original(batch, plan)
        if agent.update in updates:
            agent.request_stop()
        return stats

    agent.learner.update_policy = wrapper


def flat_params(agent: PPO) -> torch.Tensor:
    return agent.optimizer.flat.detach().clone()


def checkpoint_files(run_dir: Path) -> list[Path]:
    files = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    if (run_dir / "agent.pt").exists():
        files.append(run_dir / "agent.pt")
    return files


class ScriptedEnv(gym.Env):
    """Box(3) observations, two actions, episodes of 20 steps; misbehaves from its ``at``-th step() on.

    ``mode``: "nan_obs" (the observation becomes NaN), "inf_reward" (the reward becomes +inf), or
    "raise" (step raises RuntimeError("boom")). ``at=None`` behaves forever.
    """

    metadata: ClassVar[dict[str, Any]] = {}

    def __init__(self, mode: str = "raise", at: int | None = None, length: int = 20) -> None:
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.mode, self.at, self.length = mode, at, length
        self.t = 0
        self.calls = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.length, 1.0, self.np_random.uniform(-1, 1)], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.calls += 1
        self.t += 1
        obs, reward = self._obs(), float(action == 1)
        if self.at is not None and self.calls >= self.at:
            if self.mode == "raise":
                raise RuntimeError("boom")
            if self.mode == "nan_obs":
                obs[1] = np.nan
            if self.mode == "inf_reward":
                reward = float("inf")
        return obs, reward, self.t >= self.length, False, {}


class ScriptedEnvFactory:
    """Env factory: the ``bad_index``-th env it makes (all of them if None) misbehaves as ScriptedEnv."""

    def __init__(self, mode: str, at: int | None, bad_index: int | None = None) -> None:
        self.mode, self.at, self.bad_index = mode, at, bad_index
        self.made = 0

    def __call__(self) -> gym.Env:
        index, self.made = self.made, self.made + 1
        bad = self.bad_index is None or index == self.bad_index
        return ScriptedEnv(self.mode, self.at if bad else None)


def healthy_env() -> gym.Env:
    return ScriptedEnv(at=None)


# ------------------------------------------------------------------------------------------------
# 1. exact resume
# ------------------------------------------------------------------------------------------------
EXACT_CASES = {
    "cartpole-native": ("CartPole-v1", dict(vector_env="native")),
    "cartpole-sync": ("CartPole-v1", dict(vector_env="sync")),
    # Pendulum's 200-step time limit falls after the interruption: the TimeLimit counters must come back too.
    "pendulum-sync-normalized": (
        "Pendulum-v1",
        dict(vector_env="sync", normalize_observations=True, normalize_rewards=True),
    ),
    # A recurrent policy's carried state and episode starts come back with the envs.
    "cartpole-novel-lstm": (
        "clippo/CartPoleNoVel-v1",
        dict(vector_env="sync", recurrent="lstm", recurrent_hidden_size=8),
    ),
    "pendulum-novel-gru-bptt": (
        "clippo/PendulumNoVel-v1",
        dict(vector_env="sync", recurrent="gru", recurrent_hidden_size=8, bptt_length=16, normalize_observations=True),
    ),
    # Action masks (read from the envs each step, carried over between rollouts) and hybrid actions.
    "slots-masked": ("clippo/Slots-v0", dict(vector_env="sync")),
    "toolamount-hybrid": ("clippo/ToolAmount-v0", dict(vector_env="sync")),
    # bf16 mixed precision (the general torch path): the same computation again after a resume.
    "cartpole-bf16": ("CartPole-v1", dict(vector_env="sync", precision="bf16")),
    # gSDE: the noise drawn for each rollout comes from the restored generator.
    "pendulum-sde": ("Pendulum-v1", dict(vector_env="sync", use_sde=True, sde_sample_freq=8, init_log_std=-1.0)),
}
TOTAL_UPDATES = 5


def uninterrupted(env_id: str, options: dict, run_dir: Path) -> PPO:
    agent = PPO(env_id, **SMALL, **options, run_dir=run_dir)
    agent.learn(total_steps=agent.batch_size * TOTAL_UPDATES)
    agent.close()
    return agent


@pytest.mark.parametrize(
    "case, stops, how",
    [
        ("cartpole-native", (2,), "load"),
        ("cartpole-native", (1, 3), "from_run"),
        ("cartpole-sync", (2,), "from_run"),
        ("pendulum-sync-normalized", (2,), "load"),
        ("pendulum-sync-normalized", (1, 4), "from_run"),
        ("cartpole-novel-lstm", (2,), "load"),
        ("pendulum-novel-gru-bptt", (1, 3), "from_run"),
        ("slots-masked", (1, 3), "from_run"),
        ("toolamount-hybrid", (2,), "load"),
        ("cartpole-bf16", (1, 3), "from_run"),
        ("pendulum-sde", (1, 3), "from_run"),
    ],
)
def test_interrupted_run_resumes_bit_identically(tmp_path, case, stops, how):
    env_id, options = EXACT_CASES[case]
    reference = uninterrupted(env_id, options, tmp_path / "reference")

    run_dir = tmp_path / "interrupted"
    agent = PPO(env_id, **SMALL, **options, run_dir=run_dir)
    stop_at(agent, set(stops))
    with pytest.raises(TrainingInterrupted) as info:
        agent.learn(total_steps=agent.batch_size * TOTAL_UPDATES)
    agent.close()
    assert "clippo resume" in str(info.value)
    assert_one_line(str(info.value))
    checkpoint, remaining = info.value.checkpoint, sorted(stops)
    while True:
        stop = remaining.pop(0)
        assert checkpoint is not None and Path(checkpoint).is_file()
        assert read_checkpoint(checkpoint)["update"] == stop
        resumed = PPO.load(checkpoint, run_dir=run_dir) if how == "load" else PPO.from_run(run_dir)
        assert resumed.update == stop and resumed.global_step == stop * resumed.batch_size
        stop_at(resumed, set(remaining))
        try:
            resumed.resume()
        except TrainingInterrupted as exc:
            assert "clippo resume" in str(exc)
            assert_one_line(str(exc))
            checkpoint = exc.checkpoint
            continue
        finally:
            resumed.close()
        break
    assert resumed.envs_restored, "classic-control envs in a sync or native vector env restore exactly"
    assert not remaining

    assert resumed.update == TOTAL_UPDATES and resumed.global_step == reference.global_step
    assert torch.equal(flat_params(resumed), flat_params(reference))
    assert torch.equal(resumed.generator.get_state(), reference.generator.get_state())
    np.testing.assert_array_equal(resumed.obs_normalizer.stats.mean, reference.obs_normalizer.stats.mean)
    # The logged curve is the uninterrupted one, row for row (the clock columns aside).
    got, expected = read_metrics(run_dir), read_metrics(tmp_path / "reference")
    assert [row["global_step"] for row in got] == [row["global_step"] for row in expected]
    for row_got, row_expected in zip(got, expected, strict=False):
        assert {k: row_got[k] for k in DETERMINISTIC_COLUMNS} == {k: row_expected[k] for k in DETERMINISTIC_COLUMNS}
    # and the final checkpoint is the same model
    assert torch.equal(PPO.load(run_dir / "agent.pt").optimizer.flat, reference.optimizer.flat)


def test_interrupt_without_run_dir_raises_without_checkpoint():
    agent = PPO("CartPole-v1", **TINY)
    stop_at(agent, {1})
    with pytest.raises(TrainingInterrupted) as info:
        agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    assert info.value.checkpoint is None
    assert agent.update == 1
    assert_one_line(str(info.value))


def test_interrupted_by_a_signal_names_it_on_the_exception():
    agent = PPO("CartPole-v1", **TINY)
    original = agent.learner.update_policy

    def update_then_signal(batch, plan=None):  # as the command line's SIGTERM handler asks, mid-update
        stats = original(batch, plan)
        agent.request_stop(signal.SIGTERM)
        return stats

    agent.learner.update_policy = update_then_signal
    with pytest.raises(TrainingInterrupted) as info:
        agent.learn(total_steps=agent.batch_size * 2)
    agent.close()
    assert info.value.signum == signal.SIGTERM  # (what the command line's exit status, 143, is read from)
    assert TrainingInterrupted("stopped").signum is None


def test_async_vector_env_run_resumes_with_fresh_envs(tmp_path):
    run_dir = tmp_path / "async"
    agent = PPO("CartPole-v1", **TINY, vector_env="async", run_dir=run_dir)
    stop_at(agent, {2})
    with pytest.raises(TrainingInterrupted) as info:
        agent.learn(total_steps=agent.batch_size * 4)
    agent.close()
    assert read_checkpoint(info.value.checkpoint)["global_step"] == 2 * agent.batch_size

    resumed = PPO.from_run(run_dir)
    try:
        resumed.resume()
    finally:
        resumed.close()
    assert resumed.envs_restored is False  # worker processes' env state cannot be captured
    assert resumed.global_step == 4 * agent.batch_size and resumed.update == 4
    assert torch.isfinite(resumed.optimizer.flat).all()
    assert global_steps(run_dir) == [agent.batch_size * i for i in range(1, 5)]
    assert read_checkpoint(run_dir / "agent.pt")["global_step"] == 4 * agent.batch_size


def test_resume_of_a_complete_run_is_refused(tmp_path):
    run_dir = tmp_path / "done"
    agent = PPO("CartPole-v1", **TINY, run_dir=run_dir)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    loaded = PPO.from_run(run_dir)
    with pytest.raises(ValueError, match="already complete") as info:
        loaded.resume()
    assert_one_line(str(info.value))
    code, _, err = run_cli(["resume", str(run_dir)])
    assert_one_line_error(code, err)
    assert "already complete" in err


# ------------------------------------------------------------------------------------------------
# 2. kill -9 at random moments, including in the middle of a checkpoint write
# ------------------------------------------------------------------------------------------------
# Long enough that no round finishes the run before its SIGKILL (rounds are killed 0.2-0.6 s in): at
# 200 updates a fast machine (~4 ms per update with its checkpoint) sometimes completed the run inside
# a round, leaving the final `clippo resume` nothing to do.
KILL_TOTAL_UPDATES = 1000
KILL_TRAIN_ARGS = [
    "train",
    "CartPole-v1",
    "--num-envs",
    "2",
    "--num-steps",
    "16",
    "--num-minibatches",
    "1",
    "--update-epochs",
    "1",
    "--hidden-sizes",
    "8",
    "--checkpoint-every",
    "1",
    "--keep-checkpoints",
    "3",
    "--eval-episodes",
    "0",
    "--total-steps",
    str(32 * KILL_TOTAL_UPDATES),
]

# One process (torch imported once) forks one training process per round and SIGKILLs it: round 0
# trains, the others resume. One round stalls its third checkpoint write halfway (half the bytes
# written and fsynced) and is killed there; the others are killed at random moments.
KILL_SCRIPT = textwrap.dedent(
    """
    import io, json, os, random, signal, sys, time, traceback
    import torch
    import torch.utils.tensorboard  # imported once here, not in every round
    import clippo.agent
    from clippo.tools.cli import main

    run_dir, seed, train_args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    total_steps = int(train_args[train_args.index("--total-steps") + 1])
    rng = random.Random(seed)
    stall_marker = os.path.join(os.path.dirname(run_dir), "stalled")
    STALL_ROUND = 2


    def child(args, stall):
        fd = os.open(os.path.join(os.path.dirname(run_dir), "round.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if stall:
            real_save, calls = torch.save, [0]

            def stalling_save(obj, f, *a, **k):
                calls[0] += 1
                if calls[0] != 3:
                    return real_save(obj, f, *a, **k)
                buffer = io.BytesIO()
                real_save(obj, buffer, *a, **k)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                with open(stall_marker, "w") as marker:  # which temporary file holds the half
                    marker.write(os.readlink(f"/proc/self/fd/{f.fileno()}"))
                time.sleep(600)

            torch.save = stalling_save
        try:
            code = main(args)
        except BaseException:
            traceback.print_exc()
            code = 99
        os._exit(code)  # never return into the parent's loop


    def wait_for(condition, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return True
            time.sleep(0.005)
        return False


    def newest_step():
        folder = os.path.join(run_dir, "checkpoints")
        steps = [int(n[5:-3]) for n in os.listdir(folder) if n.startswith("step_")] if os.path.isdir(folder) else []
        return max(steps, default=0)


    log = []
    for round_ in range(6):
        if round_ > STALL_ROUND and newest_step() > total_steps * 0.6:  # leave the rest to the final resume
            break
        args = train_args + ["--run-dir", run_dir] if round_ == 0 else ["resume", run_dir]
        stall = round_ == STALL_ROUND
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            child(args, stall)
        if round_ == 0:
            assert wait_for(lambda: newest_step() > 0), "no checkpoint was ever written"
            delay = rng.uniform(0.0, 0.3)
        elif stall:
            assert wait_for(lambda: os.path.exists(stall_marker)), "the stalled write never started"
            delay = 0.0
        else:
            delay = rng.uniform(0.2, 0.6)
        time.sleep(delay)
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            log.append({"round": round_, "exited_by_itself": os.waitstatus_to_exitcode(status)})
            break
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        log.append({"round": round_, "killed_after": round(time.monotonic() - started, 3), "stall": stall})
    print(json.dumps(log))
    """
)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run killed with SIGKILL three to six times (once mid-write), then `clippo resume`d to completion."""
    root = tmp_path_factory.mktemp("kill9")
    run_dir = root / "run"
    script = root / "kill_loop.py"
    script.write_text(KILL_SCRIPT)
    seed = random.SystemRandom().randrange(2**31)
    loop = subprocess.run(
        [sys.executable, str(script), str(run_dir), str(seed), json.dumps(KILL_TRAIN_ARGS)],
        capture_output=True,
        text=True,
        timeout=240,
        env=subprocess_env(),
        cwd=root,
    )
    rounds = (root / "round.log").read_text() if (root / "round.log").exists() else ""
    assert loop.returncode == 0, f"kill loop failed (seed {seed}):\n{loop.stderr}\n{rounds}"
    log = json.loads(loop.stdout.strip().splitlines()[-1])
    readable = {}
    for path in checkpoint_files(run_dir):
        try:
            readable[path.name] = read_checkpoint(path)["global_step"]
        except CheckpointError as exc:
            readable[path.name] = str(exc)
    stalled = Path((root / "stalled").read_text()) if (root / "stalled").exists() else None
    after_kills = {
        "checkpoints": readable,
        "temporary": sorted(p.name for p in (run_dir / "checkpoints").glob("*.tmp")),
        "stalled_file": stalled,
        "latest": latest_checkpoint(run_dir)[0].name,
    }
    if stalled is not None and stalled.exists():
        try:
            read_checkpoint(stalled)
            after_kills["stalled_file_readable"] = True
        except CheckpointError:
            after_kills["stalled_file_readable"] = False
    resume = subprocess.run(
        [sys.executable, "-m", "clippo", "resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        env=subprocess_env(),
        cwd=root,
    )
    return {"run_dir": run_dir, "seed": seed, "log": log, "after_kills": after_kills, "resume": resume}


@pytest.mark.slow
def test_kill9_leaves_only_readable_checkpoints(killed_run):
    info = killed_run["after_kills"]
    context = f"seed {killed_run['seed']}, rounds {killed_run['log']}"
    assert sum("killed_after" in entry for entry in killed_run["log"]) >= 3, context
    assert any(entry.get("stall") for entry in killed_run["log"]), context
    assert info["checkpoints"], context
    for name, result in info["checkpoints"].items():
        assert isinstance(result, int) and result > 0, f"{name}: {result} ({context})"


@pytest.mark.slow
def test_kill9_partial_file_is_never_taken_as_a_checkpoint(killed_run):
    info = killed_run["after_kills"]
    # The stalled write was killed with half the bytes on disk: that file lies under a temporary
    # name that neither loading nor resuming considers; it is unreadable if still there (a later
    # checkpoint write clears leftovers away).
    stalled = info["stalled_file"]
    assert stalled is not None and stalled.name.endswith(".tmp")
    if "stalled_file_readable" in info:
        assert stalled.name in info["temporary"]
        assert info["stalled_file_readable"] is False
    assert all(not name.startswith("step_") and name != "agent.pt" for name in info["temporary"])
    assert info["latest"].startswith("step_") and info["latest"].endswith(".pt")
    assert info["latest"] in info["checkpoints"]


@pytest.mark.slow
def test_kill9_then_clippo_resume_completes(killed_run):
    resume, run_dir = killed_run["resume"], killed_run["run_dir"]
    assert resume.returncode == 0, f"seed {killed_run['seed']}: {resume.stderr}"
    assert "Traceback" not in resume.stderr
    assert "resuming CartPole-v1" in resume.stdout
    final = read_checkpoint(run_dir / "agent.pt")
    assert final["global_step"] == 32 * KILL_TOTAL_UPDATES and final["update"] == KILL_TOTAL_UPDATES
    steps = global_steps(run_dir)
    assert_unique_increasing(steps)
    assert steps[-1] == 32 * KILL_TOTAL_UPDATES
    assert all(step % 32 == 0 for step in steps)


@pytest.mark.slow
def test_kill9_then_resume_metrics_have_one_row_per_update(killed_run):
    """Every update the final model went through has its metrics row, exactly once."""
    run_dir = killed_run["run_dir"]
    assert killed_run["resume"].returncode == 0
    steps = global_steps(run_dir)
    missing = sorted(set(range(32, 32 * KILL_TOTAL_UPDATES + 1, 32)) - set(steps))
    assert not missing, (
        f"{len(missing)} updates have no metrics row after kill -9 + resume (first missing: {missing[:5]}; "
        f"seed {killed_run['seed']})"
    )
    assert len(steps) == KILL_TOTAL_UPDATES


# ------------------------------------------------------------------------------------------------
# 3. SIGINT and SIGTERM
# ------------------------------------------------------------------------------------------------
SIGNAL_UPDATES = 40
SIGNAL_TRAIN_ARGS = [
    "--num-envs",
    "4",
    "--num-steps",
    "32",
    "--num-minibatches",
    "1",
    "--update-epochs",
    "2",
    "--hidden-sizes",
    "16",
    "--eval-episodes",
    "0",
    "--checkpoint-every",
    "1000",
]


def start_training(run_dir: Path, extra: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clippo", "train", "CartPole-v1", "--run-dir", str(run_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=cwd,
    )


def wait_for_line(process: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """Read stdout until a line starting with ``prefix`` (the process must still be running)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line
    process.kill()
    _out, err = process.communicate()
    raise AssertionError(f"no stdout line starting with {prefix!r}; stderr:\n{err}")


@pytest.mark.slow
@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_at_update_boundary_then_resume_completes(tmp_path, signum, exit_code):
    run_dir = tmp_path / "run"
    total = 128 * SIGNAL_UPDATES
    process = start_training(run_dir, [*SIGNAL_TRAIN_ARGS, "--total-steps", str(total)], tmp_path)
    wait_for_line(process, "step ")  # the first update is done: training is under way
    process.send_signal(signum)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == exit_code, err
    assert "Traceback" not in err
    assert f"clippo resume {run_dir}" in err
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    assert checkpoints, "the interrupted run wrote no checkpoint"
    payload = read_checkpoint(checkpoints[-1])
    stopped_at = payload["global_step"]
    assert 0 < stopped_at < total, "the run was not interrupted before its end"
    assert not (run_dir / "agent.pt").exists()
    assert global_steps(run_dir) == list(range(128, stopped_at + 1, 128))

    code, out, err = run_cli(["resume", str(run_dir)])
    assert code == 0, err
    assert "resuming CartPole-v1 at step" in out and "exactly" in out
    final = read_checkpoint(run_dir / "agent.pt")
    assert final["global_step"] == total
    assert global_steps(run_dir) == list(range(128, total + 1, 128))

    # the interrupted-and-resumed run ends with the very model of an uninterrupted one
    reference_dir = tmp_path / "reference"
    code, _, err = run_cli(
        ["train", "CartPole-v1", "--run-dir", str(reference_dir), *SIGNAL_TRAIN_ARGS, "--total-steps", str(total)]
    )
    assert code == 0, err
    expected = read_checkpoint(reference_dir / "agent.pt")
    assert all(torch.equal(final["model"][k], expected["model"][k]) for k in expected["model"])


@pytest.mark.slow
def test_second_sigint_quits_at_once(tmp_path):
    # One env stepping 20000 times per rollout: a single update takes seconds, so only the second
    # signal (not the update boundary) can explain a prompt exit.
    process = start_training(
        tmp_path / "run",
        [
            "--num-envs",
            "1",
            "--vector-env",
            "sync",
            "--num-steps",
            "20000",
            "--total-steps",
            "100000",
            "--num-minibatches",
            "1",
            "--update-epochs",
            "1",
            "--eval-episodes",
            "0",
        ],
        tmp_path,
    )
    wait_for_line(process, "training ")  # (printed once the signal handlers are installed)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    finally:
        process.kill()
        _, err = process.communicate()
    elapsed = time.monotonic() - sent
    assert process.returncode != 0, err
    assert process.returncode in (-signal.SIGINT, 130), (process.returncode, err)
    assert elapsed < 2.0, f"the second SIGINT took {elapsed:.1f}s to end the process"
    assert "stopping after this update" in err


# ------------------------------------------------------------------------------------------------
# 4. NaN and infinity
# ------------------------------------------------------------------------------------------------
POISON_AT = 40  # env step() calls: the second rollout (32 vector steps per rollout)


@pytest.mark.parametrize("mode, what", [("nan_obs", "observation"), ("inf_reward", "reward")])
def test_nonfinite_stop_names_what_and_which_env(mode, what):
    agent = PPO(ScriptedEnvFactory(mode, POISON_AT, bad_index=1), **TINY, nonfinite="stop")
    with pytest.raises(NonFiniteError) as info:
        agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    message = str(info.value)
    assert_one_line(message)
    assert what in message and "env 1" in message, message
    assert agent.update == 1  # the first rollout was clean and trained on


@pytest.mark.parametrize("mode", ["nan_obs", "inf_reward"])
def test_nonfinite_stop_checkpoints_the_last_good_update(tmp_path, mode):
    """nonfinite='stop' is documented as stopping 'after checkpointing the last good update'."""
    run_dir = tmp_path / "run"
    agent = PPO(ScriptedEnvFactory(mode, POISON_AT, bad_index=1), **TINY, nonfinite="stop", run_dir=run_dir)
    with pytest.raises(NonFiniteError):
        agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    path, payload = latest_checkpoint(run_dir)  # CheckpointError here: nothing was checkpointed
    assert payload["global_step"] == agent.batch_size and payload["update"] == 1
    assert torch.isfinite(PPO.load(path).optimizer.flat).all()


@pytest.mark.parametrize("with_run_dir", [False, True], ids=["no-run-dir", "run-dir"])
@pytest.mark.parametrize("mode", ["nan_obs", "inf_reward"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])  # checked per step / per rollout
def test_nonfinite_skip_completes_with_finite_parameters(tmp_path, mode, with_run_dir, normalize):
    run_dir = tmp_path / "run" if with_run_dir else None
    agent = PPO(
        ScriptedEnvFactory(mode, POISON_AT, bad_index=1),
        **TINY,
        nonfinite="skip",
        normalize_observations=normalize,
        normalize_rewards=normalize,
        run_dir=run_dir,
    )
    with pytest.warns(
        UserWarning, match=f"skipped update 2: non-finite {mode.split('_')[1].replace('obs', 'observation')} from env 1"
    ):
        agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    assert agent.global_step == agent.batch_size * 3
    assert torch.isfinite(agent.optimizer.flat).all()
    assert np.isfinite(agent.obs_normalizer.stats.mean).all() and np.isfinite(agent.obs_normalizer.stats.var).all()
    assert np.isfinite(agent.reward_scaler.stats.var).all()
    assert np.isfinite(agent.env_runner().next_obs).all()
    if run_dir is not None:
        rows = read_metrics(run_dir)
        assert float(rows[0]["epochs_run"]) > 0
        assert all(float(row["epochs_run"]) == 0 for row in rows[1:])  # every later rollout held poisoned steps
        assert torch.isfinite(PPO.load(run_dir / "agent.pt").optimizer.flat).all()


def poison_loss_at(patch, call: int) -> None:
    """Make the value loss (and so the loss and its gradient) of the ``call``-th minibatch step of
    the run NaN, as an overflowing critic would; on either gradient path."""
    calls = [0]
    original = Learner.loss_and_gradient

    def poisoned(self, minibatch, advantages):
        calls[0] += 1
        terms = original(self, minibatch, advantages)
        if calls[0] == call:
            nan = float("nan")
            terms = dataclasses.replace(terms, loss=terms.loss * nan, value_loss=terms.value_loss * nan)
            self.optimizer.grad.mul_(nan)
        return terms

    patch.setattr(Learner, "loss_and_gradient", poisoned)


def nan_value_loss_once(monkeypatch):
    """Make the first value loss of the run NaN."""
    poison_loss_at(monkeypatch, 1)


def test_nonfinite_loss_stop_raises(monkeypatch):
    nan_value_loss_once(monkeypatch)
    agent = PPO("CartPole-v1", **TINY, nonfinite="stop")
    before = flat_params(agent)
    with pytest.raises(NonFiniteError, match="update 1: non-finite loss at minibatch step 1") as info:
        agent.learn(total_steps=agent.batch_size * 2)
    agent.close()
    assert_one_line(str(info.value))
    assert torch.equal(flat_params(agent), before)  # the poisoned step was not taken


def test_nonfinite_loss_skip_skips_the_step(monkeypatch):
    nan_value_loss_once(monkeypatch)
    agent = PPO("CartPole-v1", **TINY, nonfinite="skip")
    stats = []
    original = agent.learner.update_policy
    agent.learner.update_policy = lambda batch, plan=None: stats.append(original(batch, plan)) or stats[-1]
    agent.learn(total_steps=agent.batch_size * 2)
    agent.close()
    assert [s["skipped_steps"] for s in stats] == [1, 0]
    assert stats[0]["epochs_run"] == (TINY["update_epochs"] * TINY["num_minibatches"] - 1) / TINY["num_minibatches"]
    assert torch.isfinite(agent.optimizer.flat).all()


def test_nonfinite_stop_hint_points_at_an_existing_checkpoint(tmp_path, monkeypatch):
    """A NonFiniteError that tells the user to `clippo resume` must leave something to resume from."""
    run_dir = tmp_path / "run"
    poison_loss_at(monkeypatch, 2 * TINY["update_epochs"] * TINY["num_minibatches"] + 1)  # in update 3
    agent = PPO("CartPole-v1", **TINY, nonfinite="stop", run_dir=run_dir)  # checkpoint_every: default 50
    with pytest.raises(NonFiniteError) as info:
        agent.learn(total_steps=agent.batch_size * 5)
    agent.close()
    if "clippo resume" in str(info.value):
        path, payload = latest_checkpoint(run_dir)
        assert payload["global_step"] <= 2 * agent.batch_size
        assert torch.isfinite(PPO.load(path).optimizer.flat).all()


def test_resume_drops_metrics_rows_logged_after_the_checkpoint(tmp_path, monkeypatch):
    """A run stopped by a NaN loss at update 4 logged updates 1-3; resumed from the periodic
    checkpoint of update 2, `clippo resume` must not log update 3 twice."""
    run_dir = tmp_path / "run"
    per_update = TINY["update_epochs"] * TINY["num_minibatches"]
    with monkeypatch.context() as patch:
        poison_loss_at(patch, 3 * per_update + 1)  # in update 4
        agent = PPO("CartPole-v1", **TINY, nonfinite="stop", checkpoint_every=2, eval_episodes=0, run_dir=run_dir)
        with pytest.raises(NonFiniteError, match="update 4"):
            agent.learn(total_steps=agent.batch_size * 6)
        agent.close()
    batch = agent.batch_size
    assert global_steps(run_dir) == [batch, 2 * batch, 3 * batch]
    # The stop checkpointed the last good update (3); without that file (as after a kill -9) the
    # newest checkpoint is the periodic one of update 2, older than the last metrics row.
    latest_path, latest = latest_checkpoint(run_dir)
    assert latest["global_step"] == 3 * batch
    latest_path.unlink()
    assert latest_checkpoint(run_dir)[1]["global_step"] == 2 * batch

    code, out, err = run_cli(["resume", str(run_dir)])
    assert code == 0, err
    assert f"at step {2 * batch} " in out
    assert global_steps(run_dir) == [batch * i for i in range(1, 7)]


def test_poisoned_model_is_never_saved(tmp_path):
    agent = PPO("CartPole-v1", **TINY)
    agent.close()
    with torch.no_grad():
        next(agent.model.parameters()).view(-1)[0] = float("nan")
    path = tmp_path / "ckpt" / "agent.pt"
    with pytest.raises(NonFiniteError) as info:
        agent.save(path)
    assert_one_line(str(info.value))
    assert not path.exists()
    assert not path.parent.exists() or not any(path.parent.iterdir())  # no temporary file either
    # nor is an infinity
    with torch.no_grad():
        next(agent.model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError):
        agent.save(path)
    assert not path.exists()


def test_poisoned_model_does_not_overwrite_a_good_checkpoint(tmp_path):
    agent = PPO("CartPole-v1", **TINY)
    agent.close()
    path = agent.save(tmp_path / "agent.pt")
    good = path.read_bytes()
    with torch.no_grad():
        agent.optimizer.flat[3] = float("nan")
    with pytest.raises(NonFiniteError):
        agent.save(path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.pt"]


# ------------------------------------------------------------------------------------------------
# 5. an env that raises in step()
# ------------------------------------------------------------------------------------------------
# (Gymnasium reports the worker's traceback as warnings: expected here)
@pytest.mark.filterwarnings("ignore:.*ERROR:")
@pytest.mark.parametrize("vector_env", ["sync", "async"])
def test_exploding_env_raises_env_step_error(vector_env):
    agent = PPO(ScriptedEnvFactory("raise", POISON_AT), **TINY, vector_env=vector_env)
    with pytest.raises(EnvStepError, match="boom") as info:
        agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    assert_one_line(str(info.value))
    assert "RuntimeError" in str(info.value)
    assert agent.update == 1 and agent.global_step == agent.batch_size


# (Gymnasium reports the worker's traceback as warnings: expected here)
@pytest.mark.filterwarnings("ignore:.*ERROR:")
@pytest.mark.parametrize("vector_env", ["sync", "async"])
def test_exploding_env_checkpoints_the_last_good_update(tmp_path, vector_env):
    run_dir = tmp_path / "run"
    agent = PPO(ScriptedEnvFactory("raise", POISON_AT), **TINY, vector_env=vector_env, run_dir=run_dir)
    reference = None
    original = agent.learner.update_policy

    def remember(batch, plan=None):
        nonlocal reference
        stats = original(batch, plan)
        reference = flat_params(agent)
        return stats

    agent.learner.update_policy = remember
    with pytest.raises(EnvStepError) as info:
        agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    message = str(info.value)
    assert_one_line(message)
    assert "boom" in message and "clippo resume" in message
    path, payload = latest_checkpoint(run_dir)
    assert str(path) in message
    assert payload["global_step"] == agent.batch_size and payload["update"] == 1
    loaded = PPO.load(path, env=healthy_env)
    assert torch.equal(loaded.optimizer.flat, reference)  # exactly the last good update

    # the run continues from there with a working env
    resumed = PPO.from_run(run_dir, env=healthy_env)
    try:
        resumed.resume()
    finally:
        resumed.close()
    assert resumed.global_step == 3 * agent.batch_size
    assert read_checkpoint(run_dir / "agent.pt")["global_step"] == 3 * agent.batch_size
    assert global_steps(run_dir) == [agent.batch_size * i for i in (1, 2, 3)]


EXPLODING_MODULE = textwrap.dedent(
    """
    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces


    class ExplodingEnv(gym.Env):
        metadata = {"render_modes": []}

        def __init__(self, at=40):
            self.observation_space = spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32)
            self.action_space = spaces.Discrete(2)
            self.at, self.calls, self.t = at, 0, 0

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros(3, dtype=np.float32), {}

        def step(self, action):
            self.calls += 1
            self.t += 1
            if self.calls >= self.at:
                raise RuntimeError("boom")
            return np.full(3, self.t / 20, dtype=np.float32), 1.0, self.t >= 20, False, {}
    """
)
EXPLODING_CLI = textwrap.dedent(
    """
    import sys
    import gymnasium
    gymnasium.register(id="ClippoTest/Exploding-v0", entry_point="explodingenv:ExplodingEnv")
    from clippo.tools.cli import main
    raise SystemExit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("vector_env", ["sync", "async"])
def test_exploding_env_via_the_cli(tmp_path, vector_env):
    (tmp_path / "explodingenv.py").write_text(EXPLODING_MODULE)
    (tmp_path / "clippo_with_test_envs.py").write_text(EXPLODING_CLI)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "clippo_with_test_envs.py",
            "train",
            "ClippoTest/Exploding-v0",
            "--run-dir",
            str(run_dir),
            "--vector-env",
            vector_env,
            "--num-envs",
            "2",
            "--num-steps",
            "32",
            "--num-minibatches",
            "2",
            "--update-epochs",
            "1",
            "--total-steps",
            "192",
            "--eval-episodes",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=subprocess_env(PYTHONPATH=str(tmp_path)),
    )
    line = assert_one_line_error(result.returncode, result.stderr)
    assert line.startswith("clippo: error:") and "boom" in line
    path, payload = latest_checkpoint(run_dir)
    assert str(path) in line and f"clippo resume {run_dir}" in line
    assert payload["global_step"] == 64


# ------------------------------------------------------------------------------------------------
# 6. checkpoints that would run code
# ------------------------------------------------------------------------------------------------
class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_evil(kind: str, path: Path, marker: Path) -> None:
    evil = Evil(marker)
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps(evil))
    elif kind == "torch-zip":
        torch.save({"x": evil}, path)
    elif kind == "torch-legacy":
        torch.save({"x": evil}, path, _use_new_zipfile_serialization=False)
    elif kind == "inside-a-real-checkpoint":
        agent = PPO("CartPole-v1", **TINY)
        agent.close()
        payload = agent.state_dict()
        payload["config"]["hidden_sizes"] = evil
        torch.save(payload, path)
    else:  # pragma: no cover
        raise AssertionError(kind)


EVIL_KINDS = ["raw-pickle", "torch-zip", "torch-legacy", "inside-a-real-checkpoint"]


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_malicious_pickle_is_refused_by_load(tmp_path, kind):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    write_evil(kind, path, marker)
    with pytest.raises(CheckpointError) as info:
        PPO.load(path)
    message = str(info.value)
    assert_one_line(message)
    assert "refusing to load" in message and "tensors and plain data" in message, message
    for loader in (read_checkpoint, lambda p: PPO.load(p, env="CartPole-v1")):
        with pytest.raises(CheckpointError):
            loader(path)
    assert not marker.exists(), "loading the checkpoint ran the pickled code"


# A user's terminal shows warnings too: the one-line error must be all that escapes.
@pytest.mark.filterwarnings("error:Detected pickle protocol")
@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_malicious_pickle_is_refused_by_the_cli(tmp_path, kind):
    marker = tmp_path / "MARKER"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_evil(kind, run_dir / "agent.pt", marker)
    for args in (["eval", str(run_dir)], ["eval", str(run_dir / "agent.pt")], ["resume", str(run_dir)]):
        code, out, err = run_cli(args)
        line = assert_one_line_error(code, err)
        assert "tensors and plain data" in line, (args, line)
        assert out == ""
    assert not marker.exists(), "the CLI ran the pickled code"


def test_malicious_checkpoint_among_good_ones_is_passed_over(tmp_path):
    marker = tmp_path / "MARKER"
    run_dir = tmp_path / "run"
    agent = PPO("CartPole-v1", **TINY, run_dir=run_dir, checkpoint_every=1)
    stop_at(agent, {2})
    with pytest.raises(TrainingInterrupted):
        agent.learn(total_steps=agent.batch_size * 4)
    agent.close()
    # a newer-looking "checkpoint" planted in the run directory
    write_evil("torch-zip", run_dir / "checkpoints" / "step_999999999999.pt", marker)
    path, payload = latest_checkpoint(run_dir)
    assert payload["global_step"] == 2 * agent.batch_size and "999999999999" not in path.name
    resumed = PPO.from_run(run_dir)
    try:
        resumed.resume()
    finally:
        resumed.close()
    assert resumed.global_step == 4 * agent.batch_size
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# 7. damaged, foreign, future and mismatched checkpoints
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def good_checkpoint(tmp_path) -> Path:
    agent = PPO("CartPole-v1", **TINY)
    agent.learn(total_steps=agent.batch_size)
    agent.close()
    return agent.save(tmp_path / "good" / "agent.pt")


def damage(kind: str, good: Path, path: Path) -> None:
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-to-a-few-bytes":
        path.write_bytes(data[:7])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    elif kind == "bit-flips":
        corrupted = bytearray(data)
        for i in range(len(corrupted) // 3, len(corrupted), 97):
            corrupted[i] ^= 0xFF
        path.write_bytes(bytes(corrupted))
    elif kind == "foreign-torch-file":
        torch.save({"weights": torch.zeros(3), "step": 5}, path)
    elif kind == "foreign-tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "format-version":
        payload = torch.load(good, weights_only=True)
        payload["format_version"] = 99
        torch.save(payload, path)
    else:  # pragma: no cover
        raise AssertionError(kind)


DAMAGE_KINDS = [
    "truncated",
    "truncated-to-a-few-bytes",
    "empty",
    "random-bytes",
    "bit-flips",
    "foreign-torch-file",
    "foreign-tensor",
    "format-version",
]


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_damaged_checkpoint_gives_one_line_checkpoint_error(tmp_path, good_checkpoint, kind):
    path = tmp_path / "damaged.pt"
    damage(kind, good_checkpoint, path)
    with pytest.raises(CheckpointError) as info:
        PPO.load(path)
    assert_one_line(str(info.value))
    assert str(path) in str(info.value)
    if kind == "format-version":
        assert "format version 99" in str(info.value)


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_damaged_checkpoint_via_the_cli(tmp_path, good_checkpoint, kind):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    damage(kind, good_checkpoint, run_dir / "agent.pt")
    code, out, err = run_cli(["eval", str(run_dir)])
    assert_one_line_error(code, err)
    assert out == ""
    # resume finds no readable checkpoint either (the damaged file is the only candidate)
    code, out, err = run_cli(["resume", str(run_dir)])
    line = assert_one_line_error(code, err)
    assert "no readable checkpoint" in line


def test_damaged_newest_checkpoint_is_passed_over_by_resume(tmp_path, good_checkpoint):
    run_dir = tmp_path / "run"
    agent = PPO("CartPole-v1", **TINY, run_dir=run_dir, checkpoint_every=1)
    stop_at(agent, {2})
    with pytest.raises(TrainingInterrupted):
        agent.learn(total_steps=agent.batch_size * 3)
    agent.close()
    newest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    damage("truncated", newest, newest)
    code, out, err = run_cli(["resume", str(run_dir)])
    assert code == 0, err
    assert f"at step {agent.batch_size} " in out  # from the older, intact checkpoint
    assert read_checkpoint(run_dir / "agent.pt")["global_step"] == 3 * agent.batch_size
    assert global_steps(run_dir) == [agent.batch_size * i for i in (1, 2, 3)]


BROKEN_PAYLOADS = {
    "missing-model": lambda p: p.pop("model"),
    "model-wrong-shape": lambda p: p["model"].__setitem__(next(iter(p["model"])), torch.zeros(1)),
    "config-not-a-mapping": lambda p: p.__setitem__("config", "CartPole-v1"),
    "config-bad-value": lambda p: p["config"].__setitem__("num_envs", 0),
    "space-low-not-a-tensor": lambda p: p["observation_space"].__setitem__("low", [0.0, 0.0, 0.0, 0.0]),
    "space-unknown-type": lambda p: p["action_space"].__setitem__("type", "Graph"),
    "global-step-not-a-number": lambda p: p.__setitem__("global_step", "many"),
    "optimizer-empty": lambda p: p.__setitem__("optimizer", {}),
}


@pytest.mark.parametrize("kind", list(BROKEN_PAYLOADS))
def test_structurally_broken_checkpoint_gives_one_line_error(tmp_path, good_checkpoint, kind):
    """A file that is a clippo checkpoint on the outside but has broken contents: a ValueError
    (normally CheckpointError) with one line, and one stderr line from the CLI."""
    payload = read_checkpoint(good_checkpoint)
    BROKEN_PAYLOADS[kind](payload)
    path = write_atomic(payload, tmp_path / "broken" / "agent.pt")
    with pytest.raises(ValueError) as info:
        PPO.load(path)
    assert_one_line(str(info.value))
    code, _, err = run_cli(["eval", str(path)])
    assert_one_line_error(code, err)


@pytest.mark.parametrize("other_env", ["Pendulum-v1", "Acrobot-v1"])
def test_checkpoint_used_on_a_different_env(good_checkpoint, other_env):
    agent = PPO.load(good_checkpoint)
    with pytest.raises(ValueError) as info:
        agent.evaluate(episodes=1, env=other_env)
    message = str(info.value)
    assert_one_line(message)
    assert "does not match" in message
    mismatched = PPO.load(good_checkpoint, env=other_env)
    with pytest.raises(ValueError, match="does not match") as info:
        mismatched.learn(total_steps=64)
    mismatched.close()
    assert_one_line(str(info.value))


def test_checkpoint_used_on_an_env_with_another_action_space(good_checkpoint):
    def three_actions() -> gym.Env:
        env = gym.make("CartPole-v1")
        env.action_space = spaces.Discrete(3)
        return env

    agent = PPO.load(good_checkpoint, env=three_actions)
    with pytest.raises(ValueError, match="action_space") as info:
        agent.learn(total_steps=64)
    agent.close()
    assert_one_line(str(info.value))


def test_mismatch_error_with_a_wide_observation_space_is_one_line(good_checkpoint):
    """The space mismatch message must stay on one line for any space, not only 4-dimensional ones."""

    def wide() -> gym.Env:
        env = ScriptedEnv(at=None)
        env.observation_space = spaces.Box(-np.arange(1.0, 41.0), np.arange(1.0, 41.0), dtype=np.float64)
        return env

    agent = PPO.load(good_checkpoint)
    with pytest.raises(ValueError) as info:
        agent.evaluate(episodes=1, env=wide)
    assert_one_line(str(info.value))


def test_resume_restores_the_global_python_numpy_and_torch_rngs(tmp_path):
    """clippo draws from its own generator, but env or user code may use the global RNGs: a
    checkpoint carries their states and resuming puts them back."""
    import random

    import numpy as np

    agent = PPO("CartPole-v1", num_envs=2, num_steps=32, run_dir=tmp_path / "run")
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    agent.learn(total_steps=128, progress=False)
    agent.close()
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    PPO.from_run(tmp_path / "run").close()
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


# ------------------------------------------------------------------------------------------------
# one process per run directory
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_directory_in_use_is_refused_by_a_second_process(tmp_path):
    """While one process trains in a run directory, ``clippo resume`` of it from another process
    is refused with a one-line error, and nothing of the running one's files is touched."""
    run_dir = tmp_path / "run"
    first = PPO("CartPole-v1", **SMALL, run_dir=run_dir, checkpoint_every=1)
    first.learn(total_steps=first.batch_size)  # a checkpoint to resume from, and metrics
    first.close()
    metrics_before = (run_dir / "metrics.csv").read_text()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from clippo.training.checkpoint import run_dir_lock\n"
         "with run_dir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(run_dir)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        result = subprocess.run(
            [sys.executable, "-m", "clippo", "resume", str(run_dir)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode != 0
        message = result.stderr.strip()
        assert f"in use by another clippo process (pid {holder.pid})" in message and "\n" not in message
        assert (run_dir / "metrics.csv").read_text() == metrics_before
        agent = PPO.from_run(run_dir)
        with pytest.raises(RunDirInUseError, match="in use by another clippo process"):
            agent.learn(total_steps=agent.batch_size)
        agent.close()
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with the process that held it (killed here): the run resumes
    resumed = PPO.from_run(run_dir)
    resumed.learn(total_steps=resumed.batch_size)
    resumed.close()
    assert resumed.update == 2

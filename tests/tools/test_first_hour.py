"""The first hour of a new user (issue #32): their own env from the command line (and the trust
rule for a module a file names), SB3 habits, visible training, and the traps of the first runs."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

from clippo import PPO
from clippo.core.errors import CheckpointError, UntrustedCodeError
from clippo.envs.families import check_env_id, split_env_id
from clippo.tools.playback import upscale_frame
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--num-envs", "2", "--num-steps", "32", "--no-tensorboard", "--eval-episodes", "1"]

ENV_MODULE = """
import pathlib

import gymnasium as gym
import numpy as np
from gymnasium import spaces

pathlib.Path(__file__).with_suffix(".imported").write_text("imported")


class Reach(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.position = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = float(self.np_random.uniform(-0.5, 0.5))
        return np.array([self.position, 0.0], np.float32), {}

    def step(self, action):
        self.position += 0.1 if action == 1 else -0.1
        done = self.position >= 0.9
        return np.array([min(self.position, 1.0), 0.0], np.float32), float(done), bool(done), False, {}


gym.register("ENV_ID", entry_point=Reach, max_episode_steps=20)
"""


def write_env_module(folder: Path) -> tuple[str, str]:
    """A module of the user's own (a fresh name: never imported before) that registers an env id
    and leaves a marker file when imported; (module, id)."""
    tag = uuid.uuid4().hex[:8]
    module, env_id = f"userenv_{tag}", f"FirstHourReach{tag}-v0"
    (folder / f"{module}.py").write_text(ENV_MODULE.replace("ENV_ID", env_id))
    return module, env_id


def imported(folder: Path, module: str) -> bool:
    return (folder / f"{module}.imported").exists()


def forget(folder: Path, module: str, env_id: str) -> None:
    """As a new process would find it: the module not imported, its id not registered."""
    sys.modules.pop(module, None)
    gym.registry.pop(env_id, None)
    (folder / f"{module}.imported").unlink(missing_ok=True)


@pytest.fixture
def user_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module, env_id = write_env_module(tmp_path)
    yield tmp_path, module, env_id
    sys.modules.pop(module, None)
    gym.registry.pop(env_id, None)


# ------------------------------------------------------------------------------------------------
# 1. your own env everywhere
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_module_env_id_trains_and_is_recorded_for_the_commands_on_the_run(user_env):
    folder, module, env_id = user_env
    run = folder / "run"
    code, out, err = run_cli(["train", f"{module}:{env_id}", "--total-steps", "128", "--run-dir", str(run), *TINY])
    assert code == 0, err
    assert imported(folder, module) and "evaluation over 1 episodes" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["env_id"] == f"{module}:{env_id}"

    forget(folder, module, env_id)  # a later command, in a process of its own, on a run it reads as data
    code, _, err = run_cli(["eval", str(run), "--episodes", "1"])
    assert code == 2 and err.count("\n") == 1 and not imported(folder, module)
    assert f"wants clippo to import the environment module '{module}'" in err and "--env-module" in err
    code, out, err = run_cli(["eval", str(run), "--episodes", "1", "--trust-code"])
    assert code == 0 and imported(folder, module) and "mean return" in out, err

    forget(folder, module, env_id)
    code, out, err = run_cli(["eval", str(run), "--episodes", "1", "--env-module", module])  # named again: theirs
    assert code == 0 and imported(folder, module), err
    code, out, err = run_cli(["enjoy", str(run), "--episodes", "1", "--env-module", module])
    assert code == 0 and "episode 1: return" in out, err
    code, out, err = run_cli(["resume", str(run), "--total-steps", "256", "--env-module", module])
    assert code == 0 and "resuming" in out, err
    assert PPO.load(run / "agent.pt", env_modules=[module]).global_step == 256
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):  # (the export extra)
        code, out, err = run_cli(["export", str(run), "--env-module", module, "--check-steps", "16"])
        assert code == 0 and (run / "policy.onnx").is_file(), err
    if importlib.util.find_spec("matplotlib"):  # (the plot extra)
        code, out, err = run_cli(["report", str(run), "--env-module", module])
        assert code == 0 and "wrote" in out, err
        code, out, err = run_cli(["plot", str(run), "-o", str(folder / "curves.png")])
        assert code == 0, err


def test_env_module_flag_is_recorded_and_a_file_naming_it_needs_trust(user_env):
    folder, module, env_id = user_env
    run = folder / "run"
    code, _, err = run_cli(
        ["train", env_id, "--env-module", module, "--total-steps", "64", "--run-dir", str(run), *TINY]
    )
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["env_modules"] == [module]

    forget(folder, module, env_id)
    with pytest.raises(UntrustedCodeError, match=f"the environment module '{module}'"):
        PPO.load(run)
    assert not imported(folder, module)
    agent = PPO.load(run, trust_code=True)
    assert agent.evaluate(episodes=1)["episodes"] == 1 and imported(folder, module)

    # a config file naming the module: data unless trusted, or unless the user names it too
    forget(folder, module, env_id)
    config = folder / "mine.yaml"
    config.write_text(yaml.safe_dump({"env_modules": [module], "num_envs": 2}))
    code, _, err = run_cli(["train", "CartPole-v1", "--config", str(config), "--total-steps", "64", *TINY])
    assert code == 2 and "config file" in err and "--trust-code" in err and not imported(folder, module)
    assert not (folder / "runs").exists()
    code, _, err = run_cli(["train", "CartPole-v1", "--config", str(config), "--total-steps", "64", "--trust-code"])
    assert code == 0 and imported(folder, module), err


def test_an_unknown_id_points_at_the_module_forms_and_a_bad_module_is_one_line(user_env):
    _folder, module, env_id = user_env
    with pytest.raises(ValueError, match=rf"unknown environment id '{env_id}'.*mymodule:{env_id}.*--env-module"):
        check_env_id(env_id)
    check_env_id(env_id, [module])  # the module registers it
    code, _, err = run_cli(["train", "no_such_module_xyz:Thing-v0", "--total-steps", "64"])
    assert code == 2 and err.count("\n") == 1
    assert "cannot import env module 'no_such_module_xyz'" in err and "ModuleNotFoundError" in err
    code, _, err = run_cli(["train", "CartPole-v1", "--env-module", "not a module", "--total-steps", "64"])
    assert code == 2 and err.count("\n") == 1
    assert "env_modules=['not a module'] is invalid: 'not a module' is not" in err
    assert split_env_id("pkg.envs:Reach-v0") == ("pkg.envs", "Reach-v0")
    assert split_env_id("ALE/Pong-v5") == (None, "ALE/Pong-v5")


@pytest.mark.slow
def test_nproc_trains_a_module_env_with_output_as_clean_as_one_process(tmp_path):
    module, env_id = write_env_module(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "clippo", "train", f"{module}:{env_id}", "--nproc", "2", "--total-steps", "256",
         "--run-dir", "run", *TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr and "OMP_NUM_THREADS" not in result.stderr, result.stderr
    assert result.stdout.count("training ") == 1 and "on 2 processes" in result.stdout


# ------------------------------------------------------------------------------------------------
# 3. SB3 habits
# ------------------------------------------------------------------------------------------------
def test_an_env_instance_trains_as_one_env_and_more_envs_ask_for_a_callable():
    env = gym.make("CartPole-v1")
    agent = PPO(env, num_steps=32)
    assert agent.config.num_envs == 1 and agent.config.env_id == "CartPole-v1"
    agent.learn(64, progress=False)
    assert agent.env_runner().envs.envs[0] is env  # trained on that very env
    assert agent.evaluate(episodes=1)["episodes"] == 1  # on a copy: the training env is left alone
    with pytest.raises(ValueError, match=r"num_envs=4 is invalid with an env instance.*PPO\(lambda: gym.make"):
        PPO(gym.make("CartPole-v1"), num_envs=4)
    with pytest.raises(ValueError, match=r"vector_env='async' is invalid with an env instance"):
        PPO(gym.make("CartPole-v1"), vector_env="async")
    factory = PPO(lambda: gym.make("CartPole-v1"), vector_env="async", num_envs=2, num_steps=32)
    factory.learn(64, progress=False)  # (a factory in worker processes: the checked env is not carried over)
    factory.close()


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("lr", "learning_rate"),
        ("n_steps", "num_steps"),
        ("n_epochs", "update_epochs"),
        ("learnin_rate", "learning_rate"),
    ],
)
def test_unknown_keywords_get_did_you_mean(name, suggestion):
    with pytest.raises(ValueError, match=rf"unknown hyperparameter '{name}'; did you mean '{suggestion}'\?"):
        PPO("CartPole-v1", **{name: 1})


def test_integer_and_list_flags_accept_the_usual_spellings(tmp_path):
    from clippo.tools.cli import build_parser

    parser = build_parser()
    for text, value in (("1e5", 100_000), ("100_000", 100_000), ("2048", 2048)):
        assert parser.parse_args(["train", "CartPole-v1", "--total-steps", text]).total_steps == value
    for words in (["64,64"], ["64", "64"], ["64,", "64"]):
        assert parser.parse_args(["train", "CartPole-v1", "--hidden-sizes", *words]).hidden_sizes == [64, 64]
    code, _, err = run_cli(["train", "CartPole-v1", "--total-steps", "2.5e-1"])
    assert code == 2 and "invalid integer '2.5e-1'" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", "CartPole-v1", "--total-step", "100"])
    assert code == 2 and "--total-step (did you mean --total-steps?)" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", "CartPole-v1", "--lr", "0.1"])  # no abbreviation is taken for a flag
    assert code == 2 and "unrecognized arguments: --lr" in err


def test_version_flag():
    from clippo import __version__

    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.strip() == f"clippo {__version__}"


# ------------------------------------------------------------------------------------------------
# 4. visible Python training
# ------------------------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_learn_shows_progress_on_a_terminal_only(terminal, monkeypatch):
    stream = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    PPO("CartPole-v1", num_envs=2, num_steps=32, tensorboard=False).learn(128)
    assert ("128/128" in stream.getvalue()) == terminal, stream.getvalue()


# ------------------------------------------------------------------------------------------------
# 5. no traps
# ------------------------------------------------------------------------------------------------
def test_a_run_refused_at_start_leaves_no_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "CartPole-v1", "--preset", "atari", "--total-steps", "100"])
    assert code == 2 and "episodic_life=True is invalid" in err
    assert not (tmp_path / "runs").exists()


def test_resume_total_steps_extends_a_finished_run(tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "CartPole-v1", "--total-steps", "64", "--run-dir", str(run), *TINY])
    assert code == 0, err
    code, _, err = run_cli(["resume", str(run)])
    assert code == 2 and "already complete" in err and "--total-steps N" in err
    code, _, err = run_cli(["resume", str(run), "--total-steps", "64"])
    assert code == 2 and "--total-steps=64 is invalid" in err and "already at step 64" in err
    code, _, err = run_cli(["resume", str(run), "--total-steps", "192"])
    assert code == 0, err
    assert PPO.load(run).global_step == 192
    assert yaml.safe_load((run / "config.yaml").read_text())["total_steps"] == 192


def test_a_budget_rounded_up_is_announced(capsys):
    agent = PPO("CartPole-v1", num_envs=2, num_steps=32, tensorboard=False)
    agent.learn(100, progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "100 steps rounded up to 128" in err and "num_envs x num_steps = 64" in err
    agent.learn(64, progress=False)
    assert "rounded" not in capsys.readouterr().err
    assert agent.global_step == 192


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    onnx = tmp_path / "policy.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch")  # an ONNX protobuf starts with its ir_version field
    with pytest.raises(CheckpointError, match=r"is not a clippo checkpoint: it is an ONNX graph"):
        PPO.load(onnx)
    config = tmp_path / "config.yaml"
    config.write_text("total_steps: 10\n")
    with pytest.raises(CheckpointError, match=r"not a clippo checkpoint: it is a YAML file"):
        PPO.load(config)


def test_small_video_frames_are_scaled_up():
    frame = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    big = upscale_frame(frame)
    assert big.shape == (260, 260, 3) and (big[::26, ::26] == frame).all()
    odd = upscale_frame(np.zeros((7, 9, 3), np.uint8))
    assert min(odd.shape[:2]) >= 256 and odd.shape[0] % 2 == 0 and odd.shape[1] % 2 == 0
    large = np.zeros((300, 400, 3), np.uint8)
    assert upscale_frame(large) is large
    minatar = upscale_frame(np.full((10, 10, 3), 0.5))  # MinAtar renders floats in [0, 1]
    assert minatar.dtype == np.uint8 and minatar.shape == (260, 260, 3) and (minatar == 128).all()


@pytest.mark.slow
def test_minatar_video_is_scaled_up_to_a_watchable_size(tmp_path):
    pytest.importorskip("minatar")
    moviepy = pytest.importorskip("moviepy")
    from clippo.tools.playback import play

    agent = PPO("MinAtar/Breakout-v1", num_envs=2, num_steps=16, num_minibatches=1, update_epochs=1)
    agent.save(tmp_path / "agent.pt")
    result = play(tmp_path / "agent.pt", episodes=1, seed=0, video=tmp_path / "breakout.mp4")
    clip = moviepy.VideoFileClip(str(result.video_path))
    try:
        width, height = clip.size
        frame = clip.get_frame(0)
    finally:
        clip.close()
    assert (width, height) == (260, 260) and frame.max() > 100  # scaled up, and not a black float frame


@pytest.mark.slow
def test_a_module_in_the_working_directory_is_found_as_the_console_script_runs(tmp_path):
    """The ``clippo`` console script has no working directory on ``sys.path`` (``python -m`` has):
    the user's module beside them is found all the same, also by async vector env workers."""
    module, env_id = write_env_module(tmp_path)
    script = (
        "import os, sys\n"
        "sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]\n"
        "from clippo.tools.cli import main\n"
        f"sys.exit(main(['train', '{env_id}', '--env-module', '{module}', '--vector-env', 'async', "
        "'--total-steps', '128', '--run-dir', 'run', '--num-envs', '2', '--num-steps', '32', '--no-tensorboard', "
        "'--eval-episodes', '1']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert imported(tmp_path, module) and "evaluation over 1 episodes" in result.stdout

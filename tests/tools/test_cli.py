"""The command line: train and eval end to end, the run directory, one-line errors, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clippo import PPO, PPOConfig
from clippo.config.ppo_config import ENV_PRESETS
from clippo.tools.cli import main
from tests.helpers import run_cli

TRAIN_ARGS = ["--total-steps", "2048", "--num-envs", "4", "--num-steps", "64", "--eval-episodes", "2"]


def assert_one_line_error(code, stderr):
    assert code not in (0, None)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert "error" in lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "tmp"
    code, out, err = run_cli(["train", "CartPole-v1", "--run-dir", str(run_dir), *TRAIN_ARGS])
    return run_dir, code, out, err


# ------------------------------------------------------------------------------------------------
# train and eval
# ------------------------------------------------------------------------------------------------
def test_train_succeeds_and_reports(trained_run):
    run_dir, code, out, err = trained_run
    assert code == 0, err
    assert "Traceback" not in err
    assert "CartPole-v1" in out and str(run_dir) in out
    assert "evaluation over 2 episodes" in out


def test_run_dir_contents(trained_run):
    run_dir, code, _, _ = trained_run
    assert code == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["env_id"] == "CartPole-v1"
    assert config["total_steps"] == 2048 and config["num_envs"] == 4 and config["num_steps"] == 64
    assert config["eval_episodes"] == 2
    # the CartPole preset still applies to what the flags did not set
    assert config["update_epochs"] == ENV_PRESETS["CartPole-v1"]["update_epochs"]
    assert config["learning_rate"] == ENV_PRESETS["CartPole-v1"]["learning_rate"]

    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert len(metrics) == 2048 // (4 * 64)  # one row per update
    assert metrics["update"].tolist() == list(range(1, 9))
    assert metrics["global_step"].tolist() == [256 * i for i in range(1, 9)]
    for column in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "learning_rate", "sps"):
        assert column in metrics.columns
        assert metrics[column].notna().all(), column
    assert metrics["episodes"].sum() > 0
    # where the time went: the three phases account for the training time between rows
    phases = metrics[["rollout_time", "exchange_time", "update_time"]]
    assert (phases >= 0).all().all() and (metrics["rollout_time"] > 0).all() and (metrics["update_time"] > 0).all()
    between_rows = metrics["wall_time"].diff().iloc[1:]
    assert (phases.sum(axis=1).iloc[1:] <= between_rows + 1e-6).all()

    tensorboard = run_dir / "tensorboard"
    assert tensorboard.is_dir()
    events = list(tensorboard.rglob("events.out.tfevents*"))
    assert events and all(e.stat().st_size > 0 for e in events)

    assert (run_dir / "agent.pt").is_file()
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["episodes"] == 2


def test_eval_json_prints_exactly_one_json_object(trained_run):
    run_dir, code, _, _ = trained_run
    assert code == 0
    code, out, err = run_cli(["eval", str(run_dir), "--episodes", "3", "--json"])
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    assert isinstance(result, dict)
    assert result["episodes"] == 3
    assert isinstance(result["mean_return"], float) and isinstance(result["std_return"], float)
    assert len(result["returns"]) == 3
    assert result["mean_return"] == pytest.approx(sum(result["returns"]) / 3)


def test_eval_matches_the_python_api(trained_run):
    run_dir, code, _, _ = trained_run
    assert code == 0
    code, out, _ = run_cli(["eval", str(run_dir / "agent.pt"), "--episodes", "4", "--seed", "5", "--json"])
    assert code == 0
    expected = PPO.load(run_dir).evaluate(episodes=4, seed=5)
    result = json.loads(out)
    assert result["mean_return"] == expected["mean_return"]
    assert result["returns"] == expected["returns"]


def test_eval_human_readable_and_stochastic(trained_run):
    run_dir, code, _, _ = trained_run
    assert code == 0
    code, out, _ = run_cli(["eval", str(run_dir), "--episodes", "2", "--stochastic"])
    assert code == 0
    assert "CartPole-v1" in out and "2 episodes" in out and "stochastic" in out


def test_train_refuses_an_existing_run_dir(trained_run):
    run_dir, code, _, _ = trained_run
    assert code == 0
    before = (run_dir / "metrics.csv").read_text()
    code, _, err = run_cli(["train", "CartPole-v1", "--run-dir", str(run_dir), *TRAIN_ARGS])
    assert_one_line_error(code, err)
    assert "already holds a run" in err
    assert (run_dir / "metrics.csv").read_text() == before


def test_train_pendulum_with_its_builtin_preset(tmp_path):
    """Pendulum-v1's preset normalizes observations and rewards; the run must still save agent.pt."""
    run_dir = tmp_path / "pendulum"
    code, _, err = run_cli(
        [
            "train",
            "Pendulum-v1",
            "--run-dir",
            str(run_dir),
            "--total-steps",
            "128",
            "--num-envs",
            "2",
            "--num-steps",
            "64",
            "--num-minibatches",
            "2",
            "--update-epochs",
            "1",
            "--eval-episodes",
            "1",
        ]
    )
    assert code == 0, err
    assert (run_dir / "agent.pt").is_file()
    loaded = PPO.load(run_dir)
    # the preset's own values (RL-Zoo's gSDE recipe), with the flags on top
    assert loaded.config.use_sde and loaded.config.sde_sample_freq == 4 and loaded.config.gamma == 0.9
    assert loaded.config.num_envs == 2


def test_train_with_config_file_and_flags(tmp_path):
    config_file = tmp_path / "hp.yaml"
    config_file.write_text("learning_rate: 0.002\nupdate_epochs: 2\nhidden_sizes: [8]\n")
    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "CartPole-v1",
            "--config",
            str(config_file),
            "--update-epochs",
            "3",
            "--run-dir",
            str(run_dir),
            "--total-steps",
            "64",
            "--num-envs",
            "2",
            "--num-steps",
            "32",
            "--eval-episodes",
            "0",
            "--no-anneal-lr",
            "--target-kl",
            "none",
            "--hidden-sizes",
            "8",
            "8",
        ]
    )
    assert code == 0, err
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["learning_rate"] == 0.002
    assert config["update_epochs"] == 3
    assert config["anneal_lr"] is False
    assert config["target_kl"] is None
    assert config["hidden_sizes"] == [8, 8]
    assert not (run_dir / "eval.json").exists()  # --eval-episodes 0: no evaluation


# ------------------------------------------------------------------------------------------------
# bad input: exactly one line on stderr, no traceback, non-zero exit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["train", "CartPole-v1", "--learning-rate", "-1"], "learning_rate"),
        (["train", "CartPole-v1", "--learning-rate", "abc"], "abc"),
        (["train", "CartPole-v1", "--network", "foo"], "foo"),
        (["train", "CartPole-v1", "--num-envs", "2", "--num-steps", "2", "--num-minibatches", "5"], "num_minibatches"),
        (["train", "CartPole-v1", "--gamma", "1.5"], "gamma"),
        (["train", "CartPole-v1", "--learnin-rate", "0.1"], "--learnin-rate"),
        (["train", "CartPole-v1", "--num-envs", "2.5"], "2.5"),
        (["train", "CartPole-v1", "--preset", "nope"], "nope"),
        (["train", "CartPole-v1", "--config", "missing.yaml"], "missing.yaml"),
        (["train"], "ENV_ID"),
        (["eval", "no/such/run"], "no/such/run"),
        (["eval", "."], "no checkpoint"),
        (["frobnicate"], "frobnicate"),
        ([], "command"),
    ],
)
def test_bad_input_gives_one_line_error(args, fragment):
    code, _out, err = run_cli(args)
    assert_one_line_error(code, err)
    assert fragment in err
    assert not Path("runs").exists()  # nothing was written for a run that never started


def test_config_file_with_unknown_key(tmp_path):
    config_file = tmp_path / "hp.yaml"
    config_file.write_text("learning_rate: 0.001\nbogus_knob: 3\n")
    code, _, err = run_cli(["train", "CartPole-v1", "--config", str(config_file)])
    assert_one_line_error(code, err)
    assert "bogus_knob" in err


def test_eval_of_a_garbage_file_gives_one_line_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_text("this is not a checkpoint\n")
    code, _, err = run_cli(["eval", str(path)])
    assert_one_line_error(code, err)


def test_eval_rejects_zero_episodes(trained_run):
    run_dir, _, _, _ = trained_run
    code, _, err = run_cli(["eval", str(run_dir), "--episodes", "0"])
    assert_one_line_error(code, err)
    assert "episodes" in err


def test_train_help_mentions_every_hyperparameter_flag():
    code, out, _ = run_cli(["train", "--help"])
    assert code == 0
    for f in fields(PPOConfig):
        if f.name == "env_id":
            continue
        flag = "--env-module" if f.name == "env_modules" else "--" + f.name.replace("_", "-")  # (repeatable)
        assert flag in out, flag
    for extra in ("--preset", "--config", "--run-dir"):
        assert extra in out


def test_eval_help():
    code, out, _ = run_cli(["eval", "--help"])
    assert code == 0
    for flag in ("--episodes", "--seed", "--json", "--stochastic"):
        assert flag in out


# ------------------------------------------------------------------------------------------------
# as a real process: python -m clippo
# ------------------------------------------------------------------------------------------------
def run_process(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "clippo", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_subprocess_bad_input_exit_code_and_stderr():
    result = run_process(["train", "NoSuchEnv-v0", "--total-steps", "64"])
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("clippo: error:") and "NoSuchEnv-v0" in lines[0]
    assert result.stdout == ""


@pytest.mark.slow
def test_subprocess_eval_json(trained_run):
    run_dir, code, _, _ = trained_run
    assert code == 0
    result = run_process(["eval", str(run_dir), "--episodes", "3", "--json"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    data = json.loads(result.stdout)
    assert data["episodes"] == 3 and {"mean_return", "std_return"} <= set(data)


# ------------------------------------------------------------------------------------------------
# bad input, every class: one stderr line from the CLI, the same message from the Python API
# ------------------------------------------------------------------------------------------------
# (flags, the PPO keyword arguments they amount to); validation must name the field.
def one_line_error(code, stderr: str) -> str:
    assert_one_line_error(code, stderr)
    return stderr.strip()


INVALID_HYPERPARAMETERS = [
    (["--total-steps", "0"], {"total_steps": 0}),
    (["--total-steps", "-100"], {"total_steps": -100}),
    (["--num-envs", "0"], {"num_envs": 0}),
    (["--num-steps", "-1"], {"num_steps": -1}),
    (["--num-minibatches", "0"], {"num_minibatches": 0}),
    (["--update-epochs", "0"], {"update_epochs": 0}),
    (["--learning-rate", "0"], {"learning_rate": 0.0}),
    (["--learning-rate", "-0.001"], {"learning_rate": -0.001}),
    (["--learning-rate", "nan"], {"learning_rate": float("nan")}),
    (["--learning-rate", "inf"], {"learning_rate": float("inf")}),
    (["--gamma", "1.01"], {"gamma": 1.01}),
    (["--gamma", "nan"], {"gamma": float("nan")}),
    (["--gae-lambda", "-0.5"], {"gae_lambda": -0.5}),
    (["--clip-epsilon", "0"], {"clip_epsilon": 0.0}),
    (["--ent-coef", "-0.01"], {"ent_coef": -0.01}),
    (["--vf-coef", "nan"], {"vf_coef": float("nan")}),
    (["--max-grad-norm", "0"], {"max_grad_norm": 0.0}),
    (["--max-grad-norm=-inf"], {"max_grad_norm": float("-inf")}),  # (argparse takes a bare -inf for a flag)
    (["--target-kl", "-1"], {"target_kl": -1.0}),
    (["--target-kl", "nan"], {"target_kl": float("nan")}),
    (["--hidden-sizes", "64", "0"], {"hidden_sizes": [64, 0]}),
    (["--hidden-sizes", "-8"], {"hidden_sizes": [-8]}),
    (["--init-log-std", "inf"], {"init_log_std": float("inf")}),
    (["--obs-clip", "-1"], {"obs_clip": -1.0}),
    (["--reward-clip", "0"], {"reward_clip": 0.0}),
    (["--torch-threads", "0"], {"torch_threads": 0}),
    (["--checkpoint-every", "-1"], {"checkpoint_every": -1}),
    (["--keep-checkpoints", "0"], {"keep_checkpoints": 0}),
    (["--eval-episodes", "-1"], {"eval_episodes": -1}),
    (["--eval-every", "-1"], {"eval_every": -1}),
    (["--stop-at-return", "400"], {"stop_at_return": 400.0}),  # without --eval-every
    # contradictory settings
    (
        ["--num-envs", "2", "--num-steps", "4", "--num-minibatches", "9"],
        {"num_envs": 2, "num_steps": 4, "num_minibatches": 9},
    ),
]


@pytest.mark.parametrize(
    "flags, kwargs", INVALID_HYPERPARAMETERS, ids=[" ".join(f) for f, _ in INVALID_HYPERPARAMETERS]
)
def test_invalid_value_same_message_from_cli_and_api(flags, kwargs):
    code, out, err = run_cli(["train", "CartPole-v1", *flags])
    assert_one_line_error(code, err)
    assert code == 2 and out == ""
    with pytest.raises(ValueError) as info:
        PPO("CartPole-v1", **kwargs)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert err.strip() == f"clippo: error: {message}"
    field = next(iter(kwargs)) if len(kwargs) == 1 else "num_minibatches"
    assert message.startswith(f"{field}=")
    assert not Path("runs").exists()


# argparse rejects these before clippo sees them: one "clippo train: error: ..." line naming the flag;
# the API rejects the same values by type or choice, naming the field.
WRONG_TYPES_AND_CHOICES = [
    (["--num-envs", "2.5"], "--num-envs", {"num_envs": 2.5}),
    (["--num-envs", "abc"], "--num-envs", {"num_envs": "abc"}),
    (["--num-steps", "1e-3"], "--num-steps", {"num_steps": "1e-3"}),  # (1e3 is accepted: 1000)
    (["--learning-rate", "fast"], "--learning-rate", {"learning_rate": "fast"}),
    (["--target-kl", "off-ish"], "--target-kl", {"target_kl": "off-ish"}),
    (["--hidden-sizes", "64", "x"], "--hidden-sizes", {"hidden_sizes": [64, "x"]}),
    (["--anneal-lr", "maybe"], "maybe", {"anneal_lr": "maybe"}),
    (["--network", "cnn"], "--network", {"network": "cnn"}),
    (["--activation", "silu"], "--activation", {"activation": "silu"}),
    (["--vector-env", "threads"], "--vector-env", {"vector_env": "threads"}),
    (["--device", "tpu"], "--device", {"device": "tpu"}),
    (["--nonfinite", "ignore"], "--nonfinite", {"nonfinite": "ignore"}),
    (["--seed", "zero"], "--seed", {"seed": "zero"}),
    (["--num-envs"], "--num-envs", None),
    (["--preset", "fastest"], "--preset", None),
]


@pytest.mark.parametrize(
    "flags, fragment, kwargs", WRONG_TYPES_AND_CHOICES, ids=[" ".join(f) for f, _, _ in WRONG_TYPES_AND_CHOICES]
)
def test_wrong_type_or_choice(flags, fragment, kwargs):
    code, out, err = run_cli(["train", "CartPole-v1", *flags])
    line = one_line_error(code, err)
    assert code == 2 and out == ""
    assert fragment in line
    assert line.startswith("clippo")
    if kwargs is not None:
        (name,) = kwargs
        with pytest.raises((ValueError, TypeError)) as info:
            PPO("CartPole-v1", **kwargs)
        assert len(str(info.value).splitlines()) == 1
        assert str(info.value).startswith(f"{name}=")


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_out_of_range_seed(tmp_path, seed):
    """A seed the envs cannot take is either rejected up front by name, or works: never a traceback."""
    run_dir = tmp_path / "run"
    code, _out, err = run_cli(
        [
            "train",
            "CartPole-v1",
            "--seed",
            seed,
            "--run-dir",
            str(run_dir),
            *TRAIN_ARGS[:6],
            "--total-steps",
            "256",
            "--eval-episodes",
            "0",
        ]
    )
    assert "Traceback" not in err
    if code != 0:
        line = one_line_error(code, err)
        assert "seed" in line, line
        assert not (run_dir / "metrics.csv").exists()
        with pytest.raises(ValueError, match="seed") as info:
            PPO("CartPole-v1", seed=int(seed), num_envs=2, num_steps=32).learn(total_steps=64)
        assert err.strip() == f"clippo: error: {info.value}"


def test_unknown_env_id_same_message_from_cli_and_api():
    code, _, err = run_cli(["train", "NoSuchEnv-v0", "--total-steps", "64"])
    assert_one_line_error(code, err)
    with pytest.raises(ValueError) as info:
        PPO("NoSuchEnv-v0")
    assert err.strip() == f"clippo: error: {info.value}"
    assert "NoSuchEnv-v0" in str(info.value)


def test_native_vector_env_without_native_implementation():
    code, _, err = run_cli(["train", "Pendulum-v1", "--vector-env", "native", "--total-steps", "64"])
    assert_one_line_error(code, err)
    with pytest.raises(ValueError) as info:
        PPO("Pendulum-v1", vector_env="native")
    assert err.strip() == f"clippo: error: {info.value}"
    assert "native" in str(info.value) and "Pendulum-v1" in str(info.value)
    assert not Path("runs").exists()


def _bad_config_file(kind: str, tmp_path: Path) -> tuple[Path, str]:
    if kind == "directory":
        path = tmp_path / "conf.yaml"
        path.mkdir()
        return path, "cannot read"
    if kind == "missing":
        return tmp_path / "nope.yaml", "cannot read"
    contents = {
        "invalid-yaml": ("conf.yaml", "learning_rate: [0.1\nnum_envs: 4\n", "cannot parse"),
        "invalid-json": ("conf.json", "{learning_rate: 0.1", "cannot parse"),
        "invalid-toml": ("conf.toml", "learning_rate = = 0.1", "cannot parse"),
        "binary": ("conf.yaml", "\x00\x01\x02\x9f binary", "conf.yaml"),
        "not-a-mapping": ("conf.yaml", "- 1\n- 2\n", "mapping"),
        "unknown-key": ("conf.yaml", "learning_rate: 0.001\nlearnin_rate: 0.1\n", "learnin_rate"),
        "wrong-type": ("conf.yaml", "num_envs: four\n", "num_envs"),
        "bad-value": ("conf.json", '{"gamma": 2}', "gamma"),
        "null-value": ("conf.yaml", "learning_rate: null\n", "learning_rate"),
    }
    name, text, fragment = contents[kind]
    path = tmp_path / name
    path.write_text(text)
    return path, fragment


@pytest.mark.parametrize(
    "kind",
    [
        "directory",
        "missing",
        "invalid-yaml",
        "invalid-json",
        "invalid-toml",
        "binary",
        "not-a-mapping",
        "unknown-key",
        "wrong-type",
        "bad-value",
        "null-value",
    ],
)
def test_bad_config_file_same_message_from_cli_and_api(tmp_path, kind):
    path, fragment = _bad_config_file(kind, tmp_path)
    code, out, err = run_cli(["train", "CartPole-v1", "--config", str(path)])
    line = one_line_error(code, err)
    assert code == 2 and out == ""
    assert fragment in line
    with pytest.raises(ValueError) as info:
        PPO("CartPole-v1", config_file=path)
    assert err.strip() == f"clippo: error: {info.value}"
    assert not Path("runs").exists()


def test_missing_run_dir_for_eval_and_resume(tmp_path):
    missing = tmp_path / "no" / "such" / "run"
    code, _out, err = run_cli(["eval", str(missing)])
    assert_one_line_error(code, err)
    with pytest.raises(ValueError) as info:
        PPO.load(missing)
    assert err.strip() == f"clippo: error: {info.value}"

    code, _out, err = run_cli(["resume", str(missing)])
    assert_one_line_error(code, err)
    with pytest.raises(ValueError) as info:
        PPO.from_run(missing)
    assert err.strip() == f"clippo: error: {info.value}"
    assert str(missing) in err


def test_run_dir_without_checkpoints_for_eval_and_resume(tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "metrics.csv").write_text("global_step\n")
    for args, load in ((["eval", str(empty)], PPO.load), (["resume", str(empty)], PPO.from_run)):
        code, _out, err = run_cli(args)
        assert_one_line_error(code, err)
        with pytest.raises(ValueError) as info:
            load(empty)
        assert err.strip() == f"clippo: error: {info.value}"
        assert "no" in err and "checkpoint" in err


@pytest.mark.parametrize(
    "args",
    [
        ["resume"],
        ["resume", "a", "b"],
        ["eval"],
        ["eval", ".", "--episodes", "x"],
        ["eval", ".", "--episodes", "-3"],
        ["resume", ".", "--total-steps", "10"],
    ],
)
def test_bad_eval_and_resume_arguments(args):
    code, _, err = run_cli(args)
    assert_one_line_error(code, err)


@pytest.mark.parametrize(
    "args",
    [
        ["--debug", "eval", "no/such/run"],
        ["eval", "no/such/run", "--debug"],
        ["train", "CartPole-v1", "--gamma", "2", "--debug"],
    ],
)
def test_debug_lets_the_exception_through(args):
    """With --debug the error is raised out of main (Python then prints the whole traceback)."""
    with pytest.raises(ValueError):
        main(args)


def test_absurd_thread_count_is_rejected_by_validation():
    """torch.set_num_threads(100_000) kills the interpreter with SIGSEGV at the first matrix product
    (checked by hand: `clippo train CartPole-v1 --torch-threads 100000` exits -11 with no message), so
    validation must refuse thread counts far beyond any machine before torch sees them."""
    # (not through run_cli: if validation lets it through, the in-process run would take pytest down)
    with pytest.raises(ValueError, match=r"^torch_threads="):
        PPOConfig(torch_threads=100_000).validate()

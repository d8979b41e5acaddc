"""Files from someone else (a checkpoint, a run directory, a config file, an Optuna study) are data:
nothing they name is imported or called without the user's opt-in, everything else is validated,
clippo never writes through a link in a run directory, and nothing in them can exhaust memory
(issue #30; docs/trust.md). Each reproduction of the issue is a test here: nothing runs (a marker
file is not created), nothing outside the run directory changes, and the refusal is one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import tracemalloc
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo import PPO
from clippo.core import safety
from clippo.core.errors import CheckpointError, UnsafePathError, UntrustedCodeError
from clippo.training.checkpoint import read_checkpoint, space_to_dict, write_atomic
from tests.helpers import run_cli
from tests.toy_envs import SpotImageEnv, TinyEncoder

TINY = {"num_envs": 2, "num_steps": 32, "num_minibatches": 2, "update_epochs": 1, "hidden_sizes": [16, 16], "seed": 0}
TINY_FLAGS = [
    "--num-envs",
    "2",
    "--num-steps",
    "32",
    "--num-minibatches",
    "2",
    "--update-epochs",
    "1",
    "--hidden-sizes",
    "16",
    "16",
    "--no-tensorboard",
    "--no-progress",
]


def one_line_error(code, err: str) -> str:
    """The CLI failed with exactly one line on stderr, no traceback."""
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("clippo: error:"), lines[0]
    return lines[0]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text.strip() and len(text.strip().splitlines()) == 1, text
    return text


# ---------------------------------------------------------------------------------------------
# fixtures: a finished run (CLI: config.yaml, metrics.csv, agent.pt, eval.json) and a run
# stopped after its first update (to resume), each copied fresh for every test
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    code, _, err = run_cli(
        ["train", "CartPole-v1", "--run-dir", str(run), "--total-steps", "128", "--eval-episodes", "1", *TINY_FLAGS]
    )
    assert code == 0, err
    return run


@pytest.fixture(scope="module")
def _stopped_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stopped") / "run"
    agent = PPO("CartPole-v1", run_dir=run, vector_env="sync", eval_episodes=1, **TINY)
    agent.learn(total_steps=256, progress=False, callback=lambda a, m: False)  # stops (and checkpoints) after update 1
    agent.close()
    assert not agent.finished
    return run


@pytest.fixture
def run(tmp_path, _finished_run) -> Path:
    return Path(shutil.copytree(_finished_run, tmp_path / "run"))


@pytest.fixture
def stopped(tmp_path, _stopped_run) -> Path:
    return Path(shutil.copytree(_stopped_run, tmp_path / "stopped"))


def rewrite(path: Path, change) -> Path:
    """Load a real checkpoint's payload, let ``change`` edit it, write it back (as torch.save does)."""
    payload = read_checkpoint(path)
    change(payload)
    return write_atomic(payload, path)


def edit_run_checkpoints(run_dir: Path, change) -> None:
    for path in [run_dir / "agent.pt", *(run_dir / "checkpoints").glob("step_*.pt")]:
        if path.is_file():
            rewrite(path, change)


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """A module on sys.path that creates a marker file when imported: (module name, marker path)."""
    name = f"clippo_trust_probe_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / f"{name}.imported"
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    monkeypatch.syspath_prepend(str(folder))
    yield name, marker
    sys.modules.pop(name, None)


# ---------------------------------------------------------------------------------------------
# 1. code execution through a recorded encoder
# ---------------------------------------------------------------------------------------------
def popen_encoder(payload: dict) -> None:
    """The issue's checkpoint: encoder subprocess:Popen with executable /bin/sh, and a Dict
    observation space whose keys (iterated by Popen as argv) are '-', '-c', 'touch PWNED'."""
    box = space_to_dict(spaces.Box(-1.0, 1.0, (4,), np.float32))
    payload["config"]["encoder"] = "subprocess:Popen"
    payload["config"]["encoder_kwargs"] = {"executable": "/bin/sh"}
    payload["observation_space"] = {"type": "Dict", "keys": ["-", "-c", "touch PWNED"], "spaces": [box, box, box]}


@pytest.mark.parametrize("trust", [False, True], ids=["untrusted", "trusted"])
def test_a_checkpoint_naming_subprocess_popen_runs_nothing_in_ppo_load(tmp_path, run, monkeypatch, trust):
    monkeypatch.chdir(tmp_path)
    rewrite(run / "agent.pt", popen_encoder)
    with pytest.raises(ValueError) as info:
        PPO.load(run / "agent.pt", trust_code=trust)
    message = one_line(info.value)
    assert "subprocess:Popen" in message
    if trust:  # opted in, the name still has to be a torch.nn.Module class before anything is called
        assert isinstance(info.value, CheckpointError) and "torch.nn.Module" in message
    else:
        assert isinstance(info.value, UntrustedCodeError)
        assert "trust_code=True" in message and "--trust-code" in message and "encoder=" in message
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "command, target",
    [
        (command, target)
        for command in ("eval", "enjoy", "export", "resume")
        for target in ("run-dir", "checkpoint-file")
        if (command, target) != ("resume", "checkpoint-file")  # (resume takes a run directory only)
    ],
)
def test_a_checkpoint_naming_subprocess_popen_runs_nothing_in_the_cli(tmp_path, run, monkeypatch, command, target):
    monkeypatch.chdir(tmp_path)
    edit_run_checkpoints(run, popen_encoder)
    path = run if target == "run-dir" else run / "agent.pt"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    for extra in ([], ["--trust-code"]):
        code, _, err = run_cli([command, str(path), *extra])
        line = one_line_error(code, err)
        assert "subprocess:Popen" in line and ("--trust-code" in line if not extra else "torch.nn.Module" in line), line
    assert not (tmp_path / "PWNED").exists()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before  # nothing written


def test_a_config_file_naming_torch_save_overwrites_nothing(tmp_path, monkeypatch):
    """The issue's hp.yaml: encoder torch:save with f: notes.txt, on `train --config`, `tune --config`
    and ``PPO(config_file=...)``; trusted, torch.save is no Module class and is not called either."""
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    config = tmp_path / "hp.yaml"
    config.write_text("learning_rate: 0.001\nencoder: torch:save\nencoder_kwargs: {f: notes.txt}\n")
    for extra in ([], ["--trust-code"]):
        code, _, err = run_cli(
            ["train", "CartPole-v1", "--config", str(config), "--run-dir", str(tmp_path / "r"), *TINY_FLAGS, *extra]
        )
        line = one_line_error(code, err)
        assert "torch:save" in line and ("--trust-code" in line if not extra else "torch.nn.Module" in line), line
    code, _, err = run_cli(["train", "CartPole-v1", "--config", str(config), *TINY_FLAGS])  # no --run-dir
    assert "torch:save" in one_line_error(code, err) and not (tmp_path / "runs").exists()
    if __import__("importlib").util.find_spec("optuna") is not None:
        code, _, err = run_cli(
            ["tune", "CartPole-v1", "--trials", "1", "--config", str(config), "--out", str(tmp_path / "t")]
        )
        assert "torch:save" in one_line_error(code, err)
    with pytest.raises(UntrustedCodeError, match="torch:save"):
        PPO("CartPole-v1", config_file=config)
    assert notes.read_text() == "my notes\n"
    assert not (tmp_path / "t").exists()


def test_a_study_whose_best_config_names_an_encoder_needs_the_opt_in(tmp_path):
    """best_config.yaml copies the study's stored config: a name in it is written only when trusted."""
    from clippo.config.ppo_config import PPOConfig
    from clippo.tools.tuning import TuneSettings, best_config_yaml

    stored = {**PPOConfig().to_dict(), "encoder": "subprocess:Popen", "encoder_kwargs": {"executable": "/bin/sh"}}
    best = SimpleNamespace(user_attrs={"config": stored}, number=3, value=1.0)
    settings = TuneSettings(
        "CartPole-v1",
        trials=1,
        steps_per_trial=1000,
        eval_every=100,
        storage="sqlite:///x.db",
        study_name="s",
        out=str(tmp_path),
    )
    with pytest.raises(UntrustedCodeError, match="subprocess:Popen") as info:
        best_config_yaml(best, None, settings)
    one_line(info.value)
    assert "encoder: subprocess:Popen" in best_config_yaml(
        best, None, TuneSettings(**{**vars(settings), "trust_code": True})
    )
    stored["encoder_kwargs"] = {"nested": {"deep": [1]}}
    with pytest.raises(ValueError, match="encoder_kwargs"):
        best_config_yaml(best, None, settings)


# --- the opt-in paths: a legitimate user encoder loads and acts as before ------------------------
@pytest.fixture(scope="module")
def _user_encoder_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("user-encoder") / "run"
    agent = PPO(SpotImageEnv, encoder=TinyEncoder, encoder_kwargs={"width": 8}, run_dir=run_dir, **TINY)
    agent.learn(64, progress=False)
    agent.close()
    return run_dir


def test_a_user_encoder_loads_with_trust_code_or_when_passed(_user_encoder_run):
    obs = np.stack([SpotImageEnv().reset(seed=s)[0] for s in range(4)])
    with pytest.raises(UntrustedCodeError, match=r"tests\.toy_envs:TinyEncoder") as info:
        PPO.load(_user_encoder_run, env=SpotImageEnv)
    one_line(info.value)
    trusted = PPO.load(_user_encoder_run, env=SpotImageEnv, trust_code=True)
    passed = PPO.load(_user_encoder_run, env=SpotImageEnv, encoder=TinyEncoder)
    assert isinstance(trusted.model.actor_encoder, TinyEncoder) and isinstance(passed.model.actor_encoder, TinyEncoder)
    assert np.array_equal(trusted.act(obs, deterministic=True), passed.act(obs, deterministic=True))
    resumed = PPO.from_run(_user_encoder_run, env=SpotImageEnv, trust_code=True)
    assert resumed.global_step == trusted.global_step


def test_hidden_sizes_a_user_encoder_never_uses_do_not_block_its_checkpoint(tmp_path, _user_encoder_run):
    run_dir = Path(shutil.copytree(_user_encoder_run, tmp_path / "run"))
    edit_run_checkpoints(run_dir, lambda p: p["config"].__setitem__("hidden_sizes", [4096]))
    assert PPO.load(run_dir, env=SpotImageEnv, encoder=TinyEncoder).config.hidden_sizes == [4096]


def test_a_user_encoder_in_a_config_file_trains_with_trust_code_or_an_explicit_encoder(tmp_path):
    config = tmp_path / "hp.yaml"
    config.write_text("encoder: tests.toy_envs:TinyEncoder\nencoder_kwargs: {width: 4}\n")
    agent = PPO(SpotImageEnv, config_file=config, trust_code=True, **TINY)
    assert isinstance(agent.model.actor_encoder, TinyEncoder) and agent.model.actor_encoder.net[1].out_features == 4
    agent.close()
    # an encoder given explicitly replaces the file's, whose name is then never imported
    agent = PPO(SpotImageEnv, config_file=config, encoder="mlp", **TINY)
    assert agent.config.encoder == "mlp"
    agent.close()


def test_the_cli_loads_a_user_encoder_with_trust_code_or_encoder(tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "MinAtar/Breakout-v1",
            "--encoder",
            "tests.toy_envs:TinyEncoder",
            "--run-dir",
            str(run_dir),
            "--total-steps",
            "64",
            "--eval-episodes",
            "1",
            *TINY_FLAGS,
        ]
    )
    if code != 0 and "minatar" in err.lower() and "pip install" in err:
        pytest.skip("MinAtar is not installed")
    assert code == 0, err
    code, _, err = run_cli(["eval", str(run_dir), "--episodes", "1"])
    assert "--trust-code" in one_line_error(code, err)
    for extra in (["--trust-code"], ["--encoder", "tests.toy_envs:TinyEncoder"]):
        code, out, err = run_cli(["eval", str(run_dir), "--episodes", "1", "--json", *extra])
        assert code == 0, err
        assert json.loads(out)["episodes"] == 1
    code, out, err = run_cli(["enjoy", str(run_dir), "--episodes", "1", "--trust-code"])
    assert code == 0, err
    code, out, err = run_cli(["export", str(run_dir), "--check-steps", "8", "--trust-code"])
    assert code == 0, err
    assert (run_dir / "policy.onnx").is_file()
    code, out, err = run_cli(["resume", str(run_dir), "--trust-code"])  # loaded as before: the run is complete
    assert "already complete" in one_line_error(code, err)


def test_an_encoder_name_resolves_only_to_a_module_class():
    from clippo.networks.encoders import import_encoder

    assert import_encoder("tests.toy_envs:TinyEncoder") is TinyEncoder
    for name in ("subprocess:Popen", "torch:save", "os:system", "builtins:print"):
        with pytest.raises(ValueError, match=r"not a torch\.nn\.Module subclass"):
            import_encoder(name)


# ---------------------------------------------------------------------------------------------
# 2. the env snapshot: no lookup by name, only existing attributes of the same type
# ---------------------------------------------------------------------------------------------
def test_an_env_snapshot_naming_np_random_test_calls_nothing_on_resume(tmp_path, stopped, monkeypatch):
    called = []
    monkeypatch.setattr(np.random, "test", lambda *a, **k: called.append(1), raising=False)

    def poison(payload):
        envs = payload["runner"]["envs"]["state"]
        envs[0]["np_random_probe"] = {"rng": {"bit_generator": "test"}}  # an attribute the env does not have
        for state in envs:  # and every real RNG renamed
            for value in state.values():
                if isinstance(value, dict) and "rng" in value:
                    value["rng"]["bit_generator"] = "test"

    edit_run_checkpoints(stopped, poison)
    code, out, err = run_cli(["resume", str(stopped)])
    assert code == 0, err
    assert "freshly reset envs" in out  # the snapshot did not fit: nothing of it was set
    assert not called


def test_a_runner_state_of_another_shape_resumes_with_fresh_envs(stopped):
    edit_run_checkpoints(stopped, lambda p: p["runner"].__setitem__("episode_returns", torch.zeros(99)))
    code, out, err = run_cli(["resume", str(stopped)])
    assert code == 0, err
    assert "freshly reset envs" in out


def test_restore_env_state_sets_only_existing_attributes_of_the_same_type():
    from clippo.envs.make import make_vector_env
    from clippo.envs.snapshots import env_identity, restore_env_state, snapshot_env_state

    envs = make_vector_env("CartPole-v1", 2, "sync")
    identity = env_identity(envs)
    envs.reset(seed=0)
    snapshot = snapshot_env_state(envs, identity)
    target = envs.envs[0].unwrapped
    before = target.state.copy()
    for bad in (
        {"evil": 1},
        {"state": "a string"},
        {"state": {"ndarray": torch.zeros(7)}},
        {"np_random": {"rng": {"bit_generator": "test"}}},
        {"__class__": None},
    ):
        states = [dict(s) for s in snapshot["state"]]
        states[-1] = {**states[-1], **bad}
        reason = restore_env_state(envs, {**snapshot, "state": states}, identity)
        assert isinstance(reason, str) and "\n" not in reason, bad
        assert np.array_equal(target.state, before) and not hasattr(target, "evil")
    assert restore_env_state(envs, snapshot, identity) is None
    envs.close()


def test_only_numpys_own_bit_generators_are_named():
    assert set(safety.BIT_GENERATORS) == {"PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"}
    for name in ("test", "RandomState", "__init__", "Generator", 3):
        with pytest.raises(ValueError, match="bit generator"):
            safety.bit_generator(name)


# ---------------------------------------------------------------------------------------------
# 3. symbolic links in a run directory are never followed
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "bashrc"
    path.write_text("export PATH=$PATH\n")
    return path


def test_a_lock_linked_to_a_user_file_is_refused_not_truncated(stopped, user_file):
    (stopped / ".lock").unlink(missing_ok=True)
    (stopped / ".lock").symlink_to(user_file)
    code, _, err = run_cli(["resume", str(stopped)])
    assert "symbolic link" in one_line_error(code, err)
    assert user_file.read_text() == "export PATH=$PATH\n"


def test_a_lock_that_is_a_hard_link_or_not_clippos_is_refused(stopped, user_file):
    (stopped / ".lock").unlink(missing_ok=True)
    os.link(user_file, stopped / ".lock")
    code, _, err = run_cli(["resume", str(stopped)])
    assert "lock" in one_line_error(code, err)
    assert user_file.read_text() == "export PATH=$PATH\n"
    (stopped / ".lock").unlink()
    (stopped / ".lock").write_text("x" * 100)  # a file clippo never wrote
    code, _, err = run_cli(["resume", str(stopped)])
    assert "lock" in one_line_error(code, err)
    assert (stopped / ".lock").read_text() == "x" * 100


@pytest.mark.parametrize("name", ["eval.json", "metrics.csv", "config.yaml", "agent.pt", "best.json", "checkpoints"])
def test_a_run_directory_with_a_link_where_clippo_writes_is_refused(stopped, user_file, name):
    target = stopped / name
    if target.is_dir():
        shutil.rmtree(target)
    target.unlink(missing_ok=True)
    target.symlink_to(user_file)
    code, _, err = run_cli(["resume", str(stopped)])
    assert "symbolic link" in one_line_error(code, err)
    assert user_file.read_text() == "export PATH=$PATH\n"


def test_train_into_a_directory_with_a_linked_eval_json_is_refused(tmp_path, user_file):
    run_dir = tmp_path / "new"
    run_dir.mkdir()
    (run_dir / "eval.json").symlink_to(user_file)
    code, _, err = run_cli(["train", "CartPole-v1", "--run-dir", str(run_dir), "--total-steps", "64", *TINY_FLAGS])
    assert "symbolic link" in one_line_error(code, err)
    assert user_file.read_text() == "export PATH=$PATH\n" and not (run_dir / "metrics.csv").exists()


@pytest.mark.parametrize("name", ["report.md", "report.png"])
def test_report_never_writes_through_a_link(run, user_file, name):
    (run / name).symlink_to(user_file)
    code, _, err = run_cli(["report", str(run)])
    assert "symbolic link" in one_line_error(code, err)
    assert user_file.read_text() == "export PATH=$PATH\n"


def test_report_html_plot_export_and_video_outputs_never_write_through_a_link(tmp_path, run, user_file):
    for args in (
        ["report", str(run), "-o", str(tmp_path / "r.html")],
        ["plot", str(run), "-o", str(tmp_path / "c.png")],
        ["export", str(run), "-o", str(tmp_path / "p.onnx"), "--check-steps", "4"],
        ["enjoy", str(run), "--episodes", "1", "--video", str(tmp_path / "v.mp4")],
    ):
        Path(args[-1] if args[0] != "export" else args[3]).symlink_to(user_file)
        code, _, err = run_cli(args)
        assert "symbolic link" in one_line_error(code, err), args
    assert user_file.read_text() == "export PATH=$PATH\n"


def test_write_file_replaces_a_hard_link_instead_of_writing_into_it(tmp_path, user_file):
    os.link(user_file, tmp_path / "eval.json")
    safety.write_file(tmp_path / "eval.json", "{}\n")
    assert (tmp_path / "eval.json").read_text() == "{}\n" and user_file.read_text() == "export PATH=$PATH\n"
    (tmp_path / "link").symlink_to(user_file)
    with pytest.raises(UnsafePathError):
        safety.write_file(tmp_path / "link", "x")
    with pytest.raises(UnsafePathError):
        safety.open_append(tmp_path / "link")
    os.link(user_file, tmp_path / "metrics.csv")
    with pytest.raises(UnsafePathError, match="hard link"):
        safety.open_append(tmp_path / "metrics.csv")
    assert user_file.read_text() == "export PATH=$PATH\n"


def test_the_lock_is_written_in_place_not_truncated(tmp_path):
    from clippo.training.checkpoint import run_dir_lock

    with run_dir_lock(tmp_path, create=True):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert len((tmp_path / ".lock").read_bytes()) == safety.LOCK_SIZE


@pytest.mark.slow
def test_a_run_dir_that_is_itself_a_link_is_the_users_choice(tmp_path, run):
    """runs/latest is a link clippo makes itself: the directory given may be one."""
    (tmp_path / "latest").symlink_to(run)
    code, _, err = run_cli(["report", str(tmp_path / "latest")])
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# 4. env ids naming a module: imported only with the opt-in
# ---------------------------------------------------------------------------------------------
def set_config_yaml(run_dir: Path, **values) -> None:
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config.update(values)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
def test_report_imports_no_env_module_named_by_config_yaml(run, marker_module):
    """Without a checkpoint, report asks Gymnasium for the env's action space (gym.make, which
    imports the module before a colon): only with --trust-code."""
    name, marker = marker_module
    set_config_yaml(run, env_id=f"{name}:CartPole-v1")
    (run / "agent.pt").unlink()
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    code, _, err = run_cli(["report", str(run)])
    assert code == 0, err
    assert not marker.exists()
    code, _, err = run_cli(["plot", str(run), "-o", str(run / "curves.png")])
    assert code == 0, err
    assert not marker.exists()
    code, _, err = run_cli(["report", str(run), "--trust-code"])  # opted in: Gymnasium imports it
    assert code == 0, err
    assert marker.exists()


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_checkpoint_env_id_naming_a_module_needs_the_opt_in(stopped, marker_module, command):
    name, marker = marker_module
    edit_run_checkpoints(stopped, lambda p: p["config"].__setitem__("env_id", f"{name}:CartPole-v1"))
    code, _, err = run_cli([command, str(stopped), *(["--episodes", "1"] if command == "eval" else [])])
    line = one_line_error(code, err)
    assert name in line and "--trust-code" in line and "env=" in line
    assert not marker.exists()
    with pytest.raises(UntrustedCodeError):
        PPO.load(stopped)
    agent = PPO.load(stopped, env="CartPole-v1")  # the env passed by the user: the file's id is not used
    assert agent.evaluate(episodes=1)["episodes"] == 1 and not marker.exists()
    # opted in, it loads as before (the env id is then Gymnasium's to resolve when envs are made)
    assert PPO.load(stopped, trust_code=True).config.env_id == f"{name}:CartPole-v1"


def test_env_ids_from_files_are_checked_against_gymnasiums_pattern():
    for bad in ("CartPole-v1\ntouch pwned #", "a b", "x" * 300, "", 3, "CartPole-v1\x1b[2J"):
        with pytest.raises(ValueError):
            safety.check_env_id_text(bad, "config.yaml")
    for good in ("CartPole-v1", "ALE/Breakout-v5", "MinAtar/Breakout-v1", "clippo/Slots-v0", "mod.sub:Env-v0"):
        assert safety.check_env_id_text(good, "config.yaml") == good


# ---------------------------------------------------------------------------------------------
# 5. resource bombs: refused quickly, in bounded memory
# ---------------------------------------------------------------------------------------------
BILLION_LAUGHS = (
    "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 40)
    )
    + "encoder_kwargs: {x: *a39}\n"
)


def raised(kind: type[BaseException], call, *args) -> BaseException:
    """The ``kind`` exception that ``call(*args)`` raises (the test fails if it raises none)."""
    with pytest.raises(kind) as info:
        call(*args)
    return info.value


def bounded(call):
    """Run ``call``; return its result, the seconds and the peak of Python allocations (bytes)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = call()
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, seconds, peak


@pytest.mark.parametrize("command", ["report", "plot", "train"])
def test_a_billion_laughs_config_is_refused_at_once(tmp_path, run, command):
    (run / "config.yaml").write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 4096
    args = {
        "report": ["report", str(run)],
        "plot": ["plot", str(run), "-o", str(tmp_path / "c.png")],
        "train": ["train", "CartPole-v1", "--config", str(run / "config.yaml"), "--run-dir", str(tmp_path / "t")],
    }
    (code, _, err), seconds, peak = bounded(lambda: run_cli(args[command]))
    assert "aliases" in one_line_error(code, err)
    assert seconds < 5 and peak < 20e6, (seconds, peak)


def test_a_config_file_over_the_size_cap_is_refused_unparsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (safety.MAX_CONFIG_BYTES + 10) + "\n")
    code, _, err = run_cli(["train", "CartPole-v1", "--config", str(path)])
    assert "larger than" in one_line_error(code, err)


def test_shared_references_in_a_checkpoints_encoder_kwargs_are_refused(stopped):
    """The pickle form of the billion laughs: one list referenced 10 times per level, 40 levels."""

    def nest(payload):
        value = ["lol"] * 10
        for _ in range(40):
            value = [value] * 10
        payload["config"]["encoder_kwargs"] = {"x": value}

    edit_run_checkpoints(stopped, nest)
    assert (stopped / "agent.pt").stat().st_size < 1_000_000
    (code, _, err), seconds, peak = bounded(lambda: run_cli(["resume", str(stopped)]))
    assert "encoder_kwargs" in one_line_error(code, err)
    assert seconds < 10 and peak < 50e6, (seconds, peak)
    for command in ("report", "plot"):  # no config.yaml: they read the checkpoint's config
        code, _, err = run_cli([command, str(stopped)])
        assert "encoder_kwargs" in one_line_error(code, err)


def deflated_checkpoint(good: Path, path: Path, zero_bytes: int) -> None:
    """The issue's zip bomb: a real checkpoint plus a large zero tensor under an unknown key, with
    every entry deflate-compressed (as zipfile writes it, so the file stays small)."""
    payload = read_checkpoint(good)
    payload["junk"] = torch.zeros(zero_bytes, dtype=torch.uint8)
    stored = path.with_suffix(".stored")
    torch.save(payload, stored)
    del payload
    with zipfile.ZipFile(stored) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            with source.open(entry) as reader, target.open(entry.filename, "w", force_zip64=True) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
    stored.unlink()


def test_a_deflated_zip_checkpoint_is_refused_before_torch_reads_it(tmp_path, run, monkeypatch):
    evil = tmp_path / "evil.pt"
    deflated_checkpoint(run / "agent.pt", evil, 64 << 20)  # 64 MB of zeros in a file of a few hundred KB
    assert evil.stat().st_size < 2_000_000

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load was called on a compressed archive")

    monkeypatch.setattr(torch, "load", no_torch_load)
    (exc, seconds, peak) = bounded(lambda: raised(CheckpointError, PPO.load, evil))
    assert "compressed" in one_line(exc)
    assert seconds < 2 and peak < 10e6, (seconds, peak)
    code, _, err = run_cli(["eval", str(evil)])
    assert "compressed" in one_line_error(code, err)


def test_zip_entries_torch_save_never_writes_are_refused(tmp_path, run):
    evil = tmp_path / "extra.pt"
    shutil.copy(run / "agent.pt", evil)
    with zipfile.ZipFile(evil, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/payload.sh", "touch PWNED\n")
    with pytest.raises(CheckpointError, match="does not write"):
        PPO.load(evil)


def test_hidden_sizes_larger_than_the_files_tensors_are_refused_before_building(run):
    rewrite(run / "agent.pt", lambda p: p["config"].__setitem__("hidden_sizes", [8192, 8192]))
    (exc, seconds, _) = bounded(lambda: raised(CheckpointError, PPO.load, run / "agent.pt"))
    assert "8192" in one_line(exc) and seconds < 2, seconds


def test_tensors_of_the_wrong_shape_or_unknown_names_are_refused_before_building(run):
    def grow(payload):
        name = next(iter(payload["model"]))
        payload["model"][name] = torch.zeros(16, 5)

    rewrite(run / "agent.pt", grow)
    with pytest.raises(CheckpointError, match="shape"):
        PPO.load(run / "agent.pt")


@pytest.mark.parametrize(
    "space, match",
    [
        (
            {
                "type": "Dict",
                "keys": ["-", "-c", "touch PWNED"],
                "spaces": [{"type": "Discrete", "n": 2, "start": 0}] * 3,
            },
            "plain identifier",
        ),
        ({"type": "Box", "low": torch.zeros(4), "high": torch.ones(4), "dtype": "object"}, "dtype"),
        ({"type": "Discrete", "n": 10**12, "start": 0}, "allowed"),
        ({"type": "MultiBinary", "n": [1 << 20, 1 << 20]}, "entries"),
        ({"type": "Tuple", "spaces": "abc"}, "list"),
    ],
)
def test_spaces_in_a_checkpoint_are_checked_as_data(run, space, match):
    rewrite(run / "agent.pt", lambda p: p.__setitem__("observation_space", space))
    with pytest.raises(CheckpointError, match=match) as info:
        PPO.load(run / "agent.pt")
    one_line(info.value)


def test_global_rng_states_are_checked_as_data(stopped):
    edit_run_checkpoints(stopped, lambda p: p["global_rngs"].__setitem__("numpy", ["PCG64", torch.zeros(3), 0, 0, 0.0]))
    with pytest.raises(CheckpointError, match="MT19937"):
        PPO.from_run(stopped)


# ---------------------------------------------------------------------------------------------
# 6. reports escape what they take from run files
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reports_escape_html_from_config_strings(tmp_path, run):
    set_config_yaml(
        run,
        env_id="<script>alert(1)</script>",
        encoder="<svg onload=alert(1)>:X",
        encoder_kwargs={"a": "<iframe src=x>", "b": "`|[link](javascript:x)"},
    )
    code, _, err = run_cli(["report", str(run)])
    assert code == 0, err
    code, _, err = run_cli(["report", str(run), "-o", str(tmp_path / "report.html")])
    assert code == 0, err
    for text in ((run / "report.md").read_text(), (tmp_path / "report.html").read_text()):
        for raw in ("<script", "<svg", "<iframe"):
            assert raw not in text
        assert "&lt;script&gt;" in text
    markdown = (run / "report.md").read_text()
    outside_code = re.sub(r"`[^`]*`", "", markdown)  # (inside a code span nothing is a link)
    assert "](javascript" not in outside_code and "[link]" not in outside_code


def test_control_characters_in_config_yaml_are_refused(run):
    set_config_yaml(run, env_id="CartPole-v1\ntouch pwned #")
    for command in ("report", "plot"):
        code, _, err = run_cli([command, str(run)])
        assert "control characters" in one_line_error(code, err)
    assert not (run / "report.md").exists()


# ---------------------------------------------------------------------------------------------
# 7. --nproc on one machine: a private file store, nothing listening on the network
# ---------------------------------------------------------------------------------------------
def test_nproc_meets_in_a_private_file_store_on_the_loopback(monkeypatch):
    import subprocess

    from clippo.training import distributed

    launched = []

    class FakeProcess:
        def __init__(self, command, env, **kwargs):
            launched.append((command, env))
            folder = Path(env[distributed.STORE_FILE_VARIABLE]).parent
            assert folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700

        returncode = 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setattr(sys, "argv", ["clippo", "train", "CartPole-v1", "--nproc", "2"])
    code, _, err = run_cli(["train", "CartPole-v1", "--nproc", "2"])
    assert code == 0, err
    assert [env["RANK"] for _, env in launched] == ["0", "1"]
    for command, env in launched:
        assert "torch.distributed.run" not in command and "--nproc" not in command
        assert env["WORLD_SIZE"] == "2" and env["GLOO_SOCKET_IFNAME"] in ("lo", "lo0")
    assert not Path(launched[0][1][distributed.STORE_FILE_VARIABLE]).parent.exists()  # removed afterwards


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net")
def test_a_two_process_run_listens_on_no_outside_interface(tmp_path):
    """A real 2-rank run: every listening TCP socket its processes open is on 127.0.0.1."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clippo",
            "train",
            "CartPole-v1",
            "--nproc",
            "2",
            "--run-dir",
            str(tmp_path / "run"),
            "--total-steps",
            "30000",
            "--eval-episodes",
            "1",
            *TINY_FLAGS,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[str] = set()
    while process.poll() is None:
        seen |= listening_addresses(family_pids(process.pid))
        time.sleep(0.2)
    _, err = process.communicate()
    assert process.returncode == 0, err[-2000:]
    assert seen, "no listening socket was seen (the ranks' gloo connections listen while training)"
    assert all(address in ("0100007F", "00000000000000000000000001000000") for address in seen), seen


def family_pids(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return family


def listening_addresses(pids: set[int]) -> set[str]:
    """The local addresses (hex, as /proc/net shows them) of the TCP sockets in LISTEN state held by ``pids``."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.add(fields[1].split(":")[0])
    return addresses


# ---------------------------------------------------------------------------------------------
# the shared mechanism
# ---------------------------------------------------------------------------------------------
def test_yaml_anchors_and_aliases_are_refused_and_plain_yaml_reads():
    assert safety.load_yaml("a: 1\nb: [1, 2]\n", "x") == {"a": 1, "b": [1, 2]}
    for text in ("a: &x 1\nb: *x\n", "a: &x [1]\n"):
        with pytest.raises(ValueError, match="aliases"):
            safety.load_yaml(text, "x")


def test_encoder_kwargs_must_be_flat_scalars():
    assert safety.check_flat_kwargs({"width": 8, "name": "a", "sizes": [1, 2], "on": True, "none": None})
    for bad in (
        {"x": {"y": 1}},
        {"x": [[1]]},
        {"x": object()},
        {f"k{i}": 1 for i in range(40)},
        {"-c": 1},
        {"x": "a\nb"},
        {"x": list(range(100))},
    ):
        with pytest.raises(ValueError):
            safety.check_flat_kwargs(bad)


def test_the_refusal_names_the_import_and_both_ways_on():
    with pytest.raises(UntrustedCodeError) as info:
        safety.check_encoder_name("evil.mod:Thing", "checkpoint 'a.pt'", trust_code=False)
    message = one_line(info.value)
    for part in (
        "checkpoint 'a.pt'",
        "evil.mod:Thing",
        "encoder=MyEncoder",
        "--encoder",
        "trust_code=True",
        "--trust-code",
    ):
        assert part in message, part
    safety.check_encoder_name("evil.mod:Thing", "x", trust_code=True)  # opted in: allowed through
    for builtin in ("auto", "mlp", "cnn"):
        safety.check_encoder_name(builtin, "x", trust_code=False)
    with pytest.raises(ValueError, match="invalid"):
        safety.check_encoder_name("os.system('x'):y", "x", trust_code=True)


def test_every_command_that_reads_a_run_or_config_takes_trust_code():
    from clippo.tools.cli import TRUST_COMMANDS, build_parser

    parser = build_parser()
    assert set(TRUST_COMMANDS) == {"train", "eval", "resume", "report", "plot", "enjoy", "tune", "export", "play"}
    for command in TRUST_COMMANDS:
        assert any(
            "--trust-code" in a.option_strings for a in parser._subparsers._group_actions[0].choices[command]._actions
        )

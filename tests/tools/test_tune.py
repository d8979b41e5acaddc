"""clippo tune: a tiny study writes a config that clippo train accepts, the same command continues
the study without losing finished trials, parallel jobs share one storage, and bad arguments give
one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from clippo.config.ppo_config import FIELD_NAMES, resolve_config  # noqa: E402
from clippo.tools.tuning import SEARCH_SPACE, TuneSettings, decode, num_steps_choices, suggest  # noqa: E402
from tests.helpers import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# 2 envs, 4 evaluations of 2 episodes over 256 steps, and (fixed, so not searched) few minibatch
# steps: a trial takes a fraction of a second.
TINY = ["--steps-per-trial", "256", "--eval-every", "64", "--eval-episodes", "2"]
#: the default study's folder in --out
STUDY = "clippo-CartPole-v1"
FIXED = {"num_envs": 2, "update_epochs": 2, "num_minibatches": 2}


@pytest.fixture
def base_config(tmp_path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(FIXED))
    return path


def tune(tmp_path, base_config, trials: int, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        [
            "tune",
            "CartPole-v1",
            "--trials",
            str(trials),
            *TINY,
            "--config",
            str(base_config),
            "--out",
            str(tmp_path / "out"),
            *(extra or ["--no-plots"]),
        ]
    )


def finished(tmp_path) -> dict[int, float | None]:
    """Trial number -> value of the finished trials in the study's default storage."""
    study = optuna.load_study(study_name="clippo-CartPole-v1", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    return {t.number: t.value for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")}


@pytest.mark.slow
def test_a_study_writes_a_config_that_train_accepts_and_a_summary(tmp_path, base_config):
    code, out, err = tune(tmp_path, base_config, 3, "--plots")
    assert code == 0, err
    assert "best_config.yaml: the best trial's hyperparameters, without the trials' budget" in out
    assert len(finished(tmp_path)) == 3
    best = tmp_path / "out" / STUDY / "best_config.yaml"
    values = yaml.safe_load(best.read_text())
    assert set(values) <= set(FIELD_NAMES) and set(SEARCH_SPACE) <= set(values)
    assert "total_steps" not in values and "seed" not in values  # (the trials' budget is not the run's)
    assert {k: values[k] for k in FIXED} == FIXED
    searched = best.read_text().split("# Fixed")[0]
    assert "learning_rate:" in searched and "update_epochs:" not in searched  # the --config file's are fixed
    config = resolve_config("CartPole-v1", config_file=best)
    assert config.learning_rate == values["learning_rate"] and config.hidden_sizes == values["hidden_sizes"]
    summary = (tmp_path / "out" / STUDY / "summary.md").read_text()
    assert "| trial | value | state | evaluations | params |" in summary
    assert summary.count("| complete |") + summary.count("| pruned |") == 3
    assert "learning_rate=" in summary and "Objective: the mean deterministic evaluation return" in summary
    assert (tmp_path / "out" / STUDY / "optimization_history.png").is_file()
    trial_dir = tmp_path / "out" / STUDY / "trials" / "trial-0000"
    assert (trial_dir / "metrics.csv").is_file() and (trial_dir / "config.yaml").is_file()

    code, _, err = run_cli(
        [
            "train",
            "CartPole-v1",
            "--config",
            str(best),
            "--run-dir",
            str(tmp_path / "run"),
            "--eval-episodes",
            "1",
            "--total-steps",
            "64",
        ]
    )
    assert code == 0, err


@pytest.mark.slow
def test_the_same_storage_keeps_finished_trials_and_adds_new_ones(tmp_path, base_config):
    code, _, err = tune(tmp_path, base_config, 2)
    assert code == 0, err
    first = finished(tmp_path)
    assert len(first) == 2
    code, out, err = tune(tmp_path, base_config, 2)  # already there: nothing to run
    assert code == 0, err
    assert "2 of 2 trials finished" in out and finished(tmp_path) == first
    code, out, err = tune(tmp_path, base_config, 4)
    assert code == 0, err
    second = finished(tmp_path)
    assert len(second) == 4 and {n: second[n] for n in first} == first
    assert "trial 2" in out and "trial 0:" not in out


@pytest.mark.slow
def test_parallel_jobs_share_one_storage(tmp_path, base_config, capfd):
    code, _out, err = tune(tmp_path, base_config, 3, "--jobs", "2", "--no-plots")
    assert code == 0, err
    assert len(finished(tmp_path)) in (3, 4)  # two workers may both start the last trial
    workers = capfd.readouterr().out  # the worker processes print to the real stdout
    assert "(worker " in workers
    assert (tmp_path / "out" / STUDY / "best_config.yaml").is_file()


@pytest.mark.slow
def test_two_studies_in_one_folder_keep_their_own_files(tmp_path, base_config):
    """Issue #35: a second study (--study-name b) with the same --out deleted the first one's
    trials/trial-0000 and overwrote its best_config.yaml."""
    code, _, err = tune(tmp_path, base_config, 1)
    assert code == 0, err
    first_trial = tmp_path / "out" / STUDY / "trials" / "trial-0000"
    first_best = tmp_path / "out" / STUDY / "best_config.yaml"
    files = {path: path.read_bytes() for path in [*first_trial.rglob("*"), first_best] if path.is_file()}
    assert first_trial / "metrics.csv" in files
    code, _, err = tune(tmp_path, base_config, 1, "--study-name", "b", "--no-plots")
    assert code == 0, err
    assert {path: path.read_bytes() for path in files} == files  # nothing of study 1 touched
    assert (tmp_path / "out" / "b" / "trials" / "trial-0000" / "metrics.csv").is_file()
    assert "study 'b'" in (tmp_path / "out" / "b" / "best_config.yaml").read_text()


def test_trial_directories_are_never_reused_or_deleted(tmp_path):
    from clippo.tools.tuning import claim_trial_dir, study_folder_name

    old = tmp_path / "trials" / "trial-0000"
    old.mkdir(parents=True)
    (old / "metrics.csv").write_text("kept")
    new = claim_trial_dir(tmp_path / "trials", 0)
    assert new.name == "trial-0000-1" and (old / "metrics.csv").read_text() == "kept"
    assert claim_trial_dir(tmp_path / "trials", 1).name == "trial-0001"
    assert study_folder_name("clippo-clippo/Bandit-v0") == "clippo-clippo_Bandit-v0"
    assert study_folder_name("..") == "_.."


@pytest.mark.slow
def test_continuing_with_other_settings_is_refused(tmp_path, base_config):
    code, _, err = tune(tmp_path, base_config, 1)
    assert code == 0, err
    code, _out, err = run_cli(
        [
            "tune",
            "CartPole-v1",
            "--trials",
            "2",
            "--steps-per-trial",
            "512",
            "--eval-every",
            "64",
            "--eval-episodes",
            "2",
            "--config",
            str(base_config),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert_one_line_error(code, err, "steps_per_trial=256", "--study-name")


def assert_one_line_error(code, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("clippo")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["CartPole-v1"], "--trials"),
        (["CartPole-v1", "--trials", "0"], "--trials=0"),
        (["CartPole-v1", "--trials", "two"], "--trials"),
        (["CartPole-v1", "--trials", "2", "--jobs", "0"], "--jobs=0"),
        (["CartPole-v1", "--trials", "2", "--steps-per-trial", "0"], "--steps-per-trial=0"),
        (["CartPole-v1", "--trials", "2", "--steps-per-trial", "100", "--eval-every", "200"], "--eval-every=200"),
        (["CartPole-v1", "--trials", "2", "--eval-episodes", "0"], "--eval-episodes=0"),
        (["CartPole-v1", "--trials", "2", "--steps-per-trial", "1000", "--eval-every", "100"], "num_envs=64"),
        (["NoSuchEnv-v0", "--trials", "2"], "NoSuchEnv-v0"),
        (["CartPole-v1", "--trials", "2", "--storage", "nosuchdb://x"], "nosuchdb://x"),
        (["CartPole-v1", "--trials", "2", "--config", "missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, fragment):
    code, _out, err = run_cli(["tune", *args])
    assert_one_line_error(code, err, fragment)


def test_missing_optuna_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    code, _, err = run_cli(["tune", "CartPole-v1", "--trials", "2", "--out", str(tmp_path / "out")])
    assert_one_line_error(code, err, "pip install 'clippo[tune]'")


def test_search_space_respects_the_batch_and_decodes_to_config_values():
    assert num_steps_choices(64, 4096) == [8, 16, 32, 64]
    study = optuna.create_study(direction="maximize")
    for _ in range(20):
        trial = study.ask()
        params = suggest(trial, SEARCH_SPACE, {"num_envs": 1, "num_steps": 128, "num_minibatches": 4}, eval_every=64)
        assert params["num_minibatches"] <= params["num_steps"] <= 64
        assert isinstance(params["hidden_sizes"], list)
        study.tell(trial, 0.0)
    assert decode({"hidden_sizes": "128x128"}) == {"hidden_sizes": [128, 128]}


def test_search_space_is_documented():
    docs = (ROOT / "docs" / "tuning.md").read_text()
    for name in SEARCH_SPACE:
        assert f"| `{name}` |" in docs.split("## Hyperparameter search")[1], name


def test_settings_defaults(tmp_path):
    settings = TuneSettings("CartPole-v1", trials=2).resolved()
    assert settings.steps_per_trial == resolve_config("CartPole-v1").total_steps
    assert settings.eval_every == settings.steps_per_trial // 10
    assert settings.storage == "sqlite:///" + str(Path("tune") / "CartPole-v1" / "study.db")
    assert settings.study_name == "clippo-CartPole-v1"

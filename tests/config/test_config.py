"""Hyperparameter validation, names, presets and their precedence, config files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from clippo import PPO, PPOConfig
from clippo.config.ppo_config import (
    ENV_PRESETS,
    FIELD_NAMES,
    PRESETS,
    ConfigError,
    config_from_dict,
    env_preset_values,
    load_config_file,
    resolve_config,
    save_config,
)
from clippo.config.preset_sources import ENV_PRESET_SOURCES, PRESET_SOURCES

DEFAULTS = PPOConfig()


# ------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------
def test_unknown_hyperparameter_name_raises_with_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'learning_rat'.*did you mean 'learning_rate'"):
        PPO("CartPole-v1", learning_rat=1e-3)
    with pytest.raises(ValueError, match=r"did you mean 'gae_lambda'"):
        resolve_config("CartPole-v1", overrides={"gae_lambdaa": 0.9})


def test_unknown_name_without_close_match_lists_known_names():
    with pytest.raises(ConfigError, match="known names") as info:
        resolve_config("CartPole-v1", overrides={"zzzzqqqq": 1})
    assert "learning_rate" in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"learning_rate": 0.0}, r"learning_rate=0\.0"),
        ({"learning_rate": -1e-3}, r"learning_rate=-0\.001"),
        ({"learning_rate": float("nan")}, r"learning_rate=nan"),
        ({"clip_epsilon": 0.0}, r"clip_epsilon=0\.0"),
        ({"clip_epsilon": -0.2}, r"clip_epsilon=-0\.2"),
        ({"num_envs": 2, "num_steps": 4, "num_minibatches": 9}, r"num_minibatches=9"),
        ({"gamma": 1.5}, r"gamma=1\.5"),
        ({"gamma": -0.1}, r"gamma=-0\.1"),
        ({"gae_lambda": 1.01}, r"gae_lambda=1\.01"),
        ({"network": "foo"}, r"network='foo'"),
        ({"activation": "sigmoid"}, r"activation='sigmoid'"),
        ({"vector_env": "threads"}, r"vector_env='threads'"),
        ({"num_envs": 0}, r"num_envs=0"),
        ({"num_steps": -5}, r"num_steps=-5"),
        ({"update_epochs": 0}, r"update_epochs=0"),
        ({"total_steps": 0}, r"total_steps=0"),
        ({"ent_coef": -0.01}, r"ent_coef=-0\.01"),
        ({"vf_coef": float("inf")}, r"vf_coef=inf"),
        ({"max_grad_norm": 0.0}, r"max_grad_norm=0\.0"),
        ({"target_kl": -0.01}, r"target_kl=-0\.01"),
        ({"hidden_sizes": []}, r"hidden_sizes=\[\]"),
        ({"hidden_sizes": [64, 0]}, r"hidden_sizes=\[64, 0\]"),
        ({"torch_threads": 0}, r"torch_threads=0"),
        ({"obs_clip": 0.0}, r"obs_clip=0\.0"),
        ({"eval_episodes": -1}, r"eval_episodes=-1"),
        ({"keep_checkpoints": 0}, r"keep_checkpoints=0"),
        # wrong types
        ({"learning_rate": "abc"}, r"learning_rate='abc'"),
        ({"num_envs": 2.5}, r"num_envs=2\.5"),
        ({"num_envs": "4"}, r"num_envs='4'"),
        ({"num_steps": True}, r"num_steps=True"),
        ({"anneal_lr": "yes"}, r"anneal_lr='yes'"),
        ({"anneal_lr": 1}, r"anneal_lr=1"),
        ({"hidden_sizes": [64, 1.5]}, r"hidden_sizes=\[64, 1\.5\]"),
        ({"hidden_sizes": 64}, r"hidden_sizes=64"),
        ({"network": 3}, r"network=3"),
        ({"target_kl": "small"}, r"target_kl='small'"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_value(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_config("CartPole-v1", overrides=overrides)


def test_invalid_value_via_ppo_constructor():
    with pytest.raises(ValueError, match=r"learning_rate=-1\.0 is invalid"):
        PPO("CartPole-v1", learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"num_minibatches=65"):
        PPO("CartPole-v1", num_envs=2, num_steps=32, num_minibatches=65)


@pytest.mark.parametrize(
    "overrides",
    [
        {"gamma": 1.0},
        {"gamma": 0.0},
        {"gae_lambda": 1.0},
        {"num_envs": 2, "num_steps": 4, "num_minibatches": 8},
        {"target_kl": None, "max_grad_norm": None},
        {"learning_rate": 1},  # an int for a float field is fine (converted)
        {"hidden_sizes": (8, 8)},  # a tuple for the list is fine
    ],
)
def test_boundary_values_are_accepted(overrides):
    config = resolve_config("CartPole-v1", overrides=overrides)
    for name, value in overrides.items():
        got = getattr(config, name)
        assert got == (list(value) if isinstance(value, tuple) else value)


def test_numeric_fields_are_normalized_to_float():
    config = resolve_config("CartPole-v1", overrides={"learning_rate": 1, "target_kl": 1})
    assert type(config.learning_rate) is float and type(config.target_kl) is float
    assert config.hidden_sizes == [64, 64] and isinstance(config.hidden_sizes, list)


# ------------------------------------------------------------------------------------------------
# presets and precedence
# ------------------------------------------------------------------------------------------------
def test_env_preset_is_applied_by_default():
    agent = PPO("CartPole-v1")
    try:
        preset = ENV_PRESETS["CartPole-v1"]
        assert preset  # CartPole has a built-in tuned preset
        for name, value in preset.items():
            assert getattr(agent.config, name) == value, name
        # the preset actually differs from the generic defaults, so this checks something
        assert any(getattr(DEFAULTS, name) != value for name, value in preset.items())
        # values the preset does not name stay at the defaults
        for name in FIELD_NAMES:
            if name not in preset and name != "env_id":
                assert getattr(agent.config, name) == getattr(DEFAULTS, name), name
        assert agent.config.env_id == "CartPole-v1"
    finally:
        agent.close()


def test_explicit_keyword_beats_env_preset():
    preset = ENV_PRESETS["CartPole-v1"]
    lr = preset["learning_rate"] * 0.5
    agent = PPO("CartPole-v1", learning_rate=lr, num_envs=2)
    try:
        assert agent.config.learning_rate == lr
        assert agent.config.num_envs == 2
        assert agent.config.update_epochs == preset["update_epochs"]  # the rest of the preset still applies
    finally:
        agent.close()


def test_named_preset_replaces_env_preset():
    agent = PPO("CartPole-v1", preset="spinningup")
    try:
        spinningup = PRESETS["spinningup"]
        for name, value in spinningup.items():
            assert getattr(agent.config, name) == value, name
        # CartPole's own values not in the named preset fall back to the defaults, not the env preset
        for name in ENV_PRESETS["CartPole-v1"]:
            if name not in spinningup:
                assert getattr(agent.config, name) == getattr(DEFAULTS, name), name
        assert agent.config.gae_lambda != ENV_PRESETS["CartPole-v1"]["gae_lambda"]
    finally:
        agent.close()


def test_named_preset_then_keyword():
    config = resolve_config("CartPole-v1", preset="spinningup", overrides={"update_epochs": 7})
    assert config.update_epochs == 7
    assert config.target_kl == PRESETS["spinningup"]["target_kl"]


def test_env_without_preset_gets_defaults():
    config = resolve_config("Pusher-v5")
    expected = PPOConfig(env_id="Pusher-v5")
    assert config == expected


def test_env_preset_referencing_a_named_preset():
    values = env_preset_values("Ant-v5")
    for name, value in PRESETS["mujoco"].items():
        assert values[name] == value
    assert "preset" not in values
    # An env's own values override the named preset's, which fills in the rest.
    cheetah = env_preset_values("HalfCheetah-v5")
    assert cheetah["num_steps"] == 512 and PRESETS["mujoco"]["num_steps"] != 512
    assert cheetah["normalize_observations"] is True and cheetah["total_steps"] == 1_000_000


@pytest.mark.parametrize(
    "presets, sources", [(PRESETS, PRESET_SOURCES), (ENV_PRESETS, ENV_PRESET_SOURCES)], ids=["named", "per-env"]
)
def test_every_preset_names_its_source(presets, sources):
    """A preset without a source entry (or a source for a preset that is gone) fails here:
    add it to clippo/config/preset_sources.py and regenerate docs/presets.md."""
    assert sorted(set(presets) - set(sources)) == [], "presets without a source entry"
    assert sorted(set(sources) - set(presets)) == [], "source entries of presets that do not exist"
    root = Path(__file__).resolve().parents[2]
    for name, source in sources.items():
        assert source.source.strip() and "\n" not in source.source, name
        for path in source.results:
            assert (root / path).is_file(), f"{name}: result file {path} does not exist"


def test_unknown_preset_name():
    with pytest.raises(ValueError, match="preset='nope'"):
        resolve_config("CartPole-v1", preset="nope")


def test_config_file_precedence(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text("learning_rate: 0.002\nnum_envs: 3\nhidden_sizes: [16, 8]\nclip_value_loss: true\n")
    config = resolve_config("CartPole-v1", config_file=path, overrides={"num_envs": 5})
    assert config.learning_rate == 0.002  # the file beats the env preset
    assert config.num_envs == 5  # an explicit keyword beats the file
    assert config.hidden_sizes == [16, 8]
    assert config.clip_value_loss is True
    assert config.update_epochs == ENV_PRESETS["CartPole-v1"]["update_epochs"]  # preset still below the file
    agent = PPO("CartPole-v1", config_file=path, num_envs=2)
    try:
        assert agent.config.learning_rate == 0.002 and agent.config.num_envs == 2
    finally:
        agent.close()


def test_config_file_with_unknown_key_raises(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text("learning_rate: 0.001\nlearnig_rate_decay: 0.5\n")
    with pytest.raises(ValueError, match="learnig_rate_decay"):
        resolve_config("CartPole-v1", config_file=path)
    with pytest.raises(ValueError, match="learnig_rate_decay"):
        PPO("CartPole-v1", config_file=path)


def test_config_file_with_invalid_value_raises(tmp_path):
    path = tmp_path / "hp.yaml"
    path.write_text("gamma: 2.0\n")
    with pytest.raises(ValueError, match=r"gamma=2\.0"):
        resolve_config("CartPole-v1", config_file=path)


@pytest.mark.parametrize(
    "suffix, text",
    [
        (".toml", 'learning_rate = 0.005\nnetwork = "shared"\n'),
        (".json", json.dumps({"learning_rate": 0.005, "network": "shared"})),
        (".yml", "learning_rate: 0.005\nnetwork: shared\n"),
    ],
)
def test_config_file_formats(tmp_path, suffix, text):
    path = tmp_path / f"hp{suffix}"
    path.write_text(text)
    assert load_config_file(path) == {"learning_rate": 0.005, "network": "shared"}


def test_toml_config_file_on_python_3_10_is_a_one_line_error(tmp_path, monkeypatch):
    path = tmp_path / "hp.toml"
    path.write_text("learning_rate = 0.005\n")
    monkeypatch.setattr(sys, "version_info", (3, 10, 14, "final", 0))  # tomllib is new in 3.11
    with pytest.raises(ValueError, match=r"cannot parse config file .*reading TOML needs Python >= 3\.11") as info:
        load_config_file(path)
    monkeypatch.undo()
    assert "\n" not in str(info.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse config file"):
        load_config_file(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config_file(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config_file(empty) == {}


def test_save_config_round_trip(tmp_path):
    config = resolve_config("Pendulum-v1", overrides={"target_kl": 0.02, "hidden_sizes": [32]})
    path = tmp_path / "config.yaml"
    save_config(config, path)
    data = yaml.safe_load(path.read_text())
    assert set(data) == set(FIELD_NAMES)
    assert config_from_dict(data) == config


def test_config_from_dict_rejects_unknown_keys():
    data = PPOConfig().to_dict()
    data["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        config_from_dict(data)


@pytest.mark.parametrize("field", ["env_kwargs", "policy_groups", "encoder_kwargs"])
def test_mappings_a_file_may_carry_are_flat_and_bounded(field):
    """Constructor kwargs and policy groups may come from someone else's config file: flat data only."""
    with pytest.raises(ConfigError, match=rf"^{field}"):
        PPOConfig(**{field: {"nested": {"deeper": [1, 2]}}}).validate()
    with pytest.raises(ConfigError, match=rf"^{field}"):
        PPOConfig(**{field: {f"k{i}": 1 for i in range(100)}}).validate()
    PPOConfig(**{field: {"n": 3, "names": ["a", "b"]}}).validate()

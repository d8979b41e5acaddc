"""Encoders chosen from the observation space, uint8 storage, Dict observations, user encoders,
and a tiny image-env training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo import PPO
from clippo.core.errors import ConfigError
from clippo.networks.encoders import CombinedEncoder, MinAtarCNN, MLPEncoder, NatureCNN, make_encoder
from tests.toy_envs import DictGoalEnv, SpotImageEnv, TinyEncoder

TINY = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, seed=0)


@pytest.mark.parametrize(
    "space, expected",
    [
        (spaces.Box(-1, 1, (4,), np.float32), MLPEncoder),
        (spaces.Box(-1, 1, (2, 3), np.float32), MLPEncoder),  # a float 3-D-less box: a vector
        (spaces.Discrete(5), MLPEncoder),
        (spaces.MultiDiscrete([3, 4]), MLPEncoder),
        (spaces.MultiBinary(6), MLPEncoder),
        (spaces.Box(0, 255, (84, 84, 4), np.uint8), NatureCNN),
        (spaces.Box(0, 255, (4, 84, 84), np.uint8), NatureCNN),
        (spaces.Box(0, 255, (210, 160, 3), np.uint8), NatureCNN),
        (spaces.Box(0, 1, (10, 10, 4), bool), MinAtarCNN),
        (spaces.Box(0, 255, (7, 7, 3), np.uint8), MinAtarCNN),
        (spaces.Dict({"a": spaces.Box(-1, 1, (3,)), "b": spaces.Discrete(2)}), CombinedEncoder),
        (spaces.Tuple((spaces.Box(-1, 1, (3,)), spaces.Box(0, 255, (10, 10, 3), np.uint8))), CombinedEncoder),
    ],
)
def test_auto_encoder_follows_the_observation_space(space, expected):
    encoder = make_encoder(space, "auto", [32, 32])
    assert type(encoder) is expected
    batch = (
        torch.as_tensor(np.stack([space.sample() for _ in range(3)]))
        if not isinstance(space, (spaces.Dict, spaces.Tuple))
        else None
    )
    if batch is not None:
        assert encoder(batch).shape == (3, encoder.output_size)


def test_image_layout_is_detected_from_the_shape():
    hwc = NatureCNN(spaces.Box(0, 255, (84, 84, 4), np.uint8))
    chw = NatureCNN(spaces.Box(0, 255, (4, 84, 84), np.uint8))
    assert hwc.hwc and not chw.hwc and hwc.chw == chw.chw == (4, 84, 84)
    chw.load_state_dict(hwc.state_dict())
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    assert torch.allclose(hwc(frames.permute(0, 2, 3, 1)), chw(frames), atol=1e-5)


def test_nature_cnn_has_the_papers_layers():
    cnn = NatureCNN(spaces.Box(0, 255, (4, 84, 84), np.uint8))
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    linear = [m for m in cnn.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linear] == [(64 * 7 * 7, 512)]
    assert cnn.output_size == 512


def test_uint8_pixels_are_scaled_by_1_over_255_inside_the_encoder():
    as_uint8 = MinAtarCNN(spaces.Box(0, 255, (10, 10, 3), np.uint8))
    as_float = MinAtarCNN(spaces.Box(0.0, 1.0, (10, 10, 3), np.float32))
    as_float.load_state_dict(as_uint8.state_dict())
    pixels = torch.randint(0, 256, (5, 10, 10, 3), dtype=torch.uint8)
    assert torch.allclose(as_uint8(pixels), as_float(pixels.float() / 255.0), atol=1e-6)


def test_explicit_cnn_and_mlp_override_the_choice():
    assert type(make_encoder(spaces.Box(0.0, 1.0, (10, 10, 2), np.float32), "cnn")) is MinAtarCNN
    assert type(make_encoder(spaces.Box(0, 255, (84, 84, 4), np.uint8), "mlp", [16])) is MLPEncoder


def test_encoder_kwargs_size_the_built_in_cnn_and_unknown_ones_are_refused():
    small = spaces.Box(0.0, 1.0, (6, 7, 2), np.float32)
    cnn = make_encoder(small, "cnn", encoder_kwargs={"channels": 8, "features": 32})
    assert type(cnn) is MinAtarCNN and cnn.output_size == 32 and cnn.net[0][0].out_channels == 8
    big = make_encoder(spaces.Box(0, 255, (84, 84, 4), np.uint8), "auto", encoder_kwargs={"features": 64})
    assert type(big) is NatureCNN and big.output_size == 64
    with pytest.raises(ValueError, match="key 'chanels' is invalid for the built-in MinAtarCNN: it takes channels, "):
        make_encoder(small, "cnn", encoder_kwargs={"chanels": 8})


def test_encoder_kwargs_size_the_cnn_of_each_image_field_of_a_dict_space():
    space = spaces.Dict(
        {"frame": spaces.Box(0, 255, (6, 7, 2), np.uint8), "speed": spaces.Box(-1.0, 1.0, (3,), np.float32)}
    )
    encoder = make_encoder(space, "auto", [16], encoder_kwargs={"channels": 8, "features": 32})
    assert isinstance(encoder, CombinedEncoder)
    cnn = encoder.cnns["frame"]
    assert type(cnn) is MinAtarCNN and cnn.output_size == 32 and cnn.net[0][0].out_channels == 8
    assert encoder.layers[0].in_features == 32 + 3
    with pytest.raises(ValueError, match="key 'chanels' is invalid for the built-in MinAtarCNN"):
        make_encoder(space, "auto", [16], encoder_kwargs={"chanels": 8})


@pytest.mark.parametrize(
    "space, kind, words",
    [
        (spaces.Box(-1, 1, (4,)), "cnn", "encoder='cnn' is invalid"),
        (spaces.Text(5), "auto", "is not supported"),
        (spaces.Box(-1, 1, (4,)), "nosuchmodule_xyz:Thing", "cannot be imported"),
    ],
)
def test_bad_encoder_choices_give_one_line_errors(space, kind, words):
    with pytest.raises(ValueError) as info:
        make_encoder(space, kind)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_combined_encoder_refuses_a_plain_space_in_one_line():
    with pytest.raises(ValueError, match="CombinedEncoder is for Dict and Tuple observation spaces") as info:
        CombinedEncoder(spaces.Box(-1.0, 1.0, (3,)), [16])
    assert "\n" not in str(info.value)


def test_bad_encoder_name_in_the_config_is_a_config_error():
    with pytest.raises(ConfigError, match="encoder='resnet' is invalid"):
        PPO("CartPole-v1", encoder="resnet")


def test_image_observations_stay_uint8_in_the_rollout_and_the_batch():
    agent = PPO(SpotImageEnv, **TINY)
    runner, buffer = agent.env_runner(), agent.new_rollout_buffer()
    runner.collect(agent.model, buffer, agent.generator)
    assert buffer.all_obs.dtype == np.uint8 and buffer.all_obs.shape == (17, 4, 10, 10, 1)
    assert buffer.all_obs.max() == 255
    buffer.estimate_values(agent.model)
    batch = buffer.flatten(torch.zeros(16, 4), torch.zeros(16, 4))
    assert batch.obs.dtype == torch.uint8
    agent.close()


def test_act_takes_raw_uint8_frames_single_and_batched():
    agent = PPO(SpotImageEnv, **TINY)
    env = SpotImageEnv()
    obs, _ = env.reset(seed=0)
    assert agent.act(obs) in (0, 1)
    assert agent.act(np.stack([obs, obs, obs])).shape == (3,)
    with pytest.raises(ValueError, match="does not fit the observation space"):
        agent.act(obs[:5])
    agent.close()


def test_dict_observations_are_stored_per_field_in_their_own_dtype():
    agent = PPO(DictGoalEnv, **TINY)
    assert isinstance(agent.model.actor_encoder, CombinedEncoder)
    runner, buffer = agent.env_runner(), agent.new_rollout_buffer()
    runner.collect(agent.model, buffer, agent.generator)
    assert set(buffer.all_obs) == {"position", "goal"}
    assert buffer.all_obs["position"].dtype == np.float32 and buffer.all_obs["position"].shape == (17, 4, 2)
    assert buffer.all_obs["goal"].dtype == np.int64 and buffer.all_obs["goal"].shape == (17, 4)
    action = agent.act({"position": np.zeros(2, np.float32), "goal": 1})
    assert action in (0, 1, 2)
    agent.close()


def test_dict_observations_refuse_normalization_in_one_line():
    with pytest.raises(ValueError, match="normalize_observations=True is invalid"):
        PPO(DictGoalEnv, normalize_observations=True, **TINY)


def test_a_user_encoder_trains_saves_by_name_and_loads(tmp_path):
    agent = PPO(SpotImageEnv, encoder=TinyEncoder, encoder_kwargs={"width": 8}, **TINY)
    assert agent.config.encoder == "tests.toy_envs:TinyEncoder"
    assert isinstance(agent.model.actor_encoder, TinyEncoder) and agent.model.actor_encoder.net[1].out_features == 8
    assert agent.model.actor_encoder is not agent.model.critic_encoder
    agent.learn(128, progress=False)
    path = agent.save(tmp_path / "agent.pt")
    with pytest.raises(ValueError, match=r"toy_envs:TinyEncoder.*trust_code=True"):
        PPO.load(path)  # a checkpoint is data: the encoder it names is imported only on the user's opt-in
    loaded = PPO.load(path, trust_code=True)  # rebuilt from the recorded name: nothing was pickled
    obs = np.stack([SpotImageEnv().reset(seed=s)[0] for s in range(6)])
    assert np.array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    for (name, p), (_, q) in zip(agent.model.named_parameters(), loaded.model.named_parameters(), strict=False):
        assert torch.equal(p, q), name
    agent.close()


def test_a_user_encoder_instance_from_python():
    agent = PPO(SpotImageEnv, encoder=TinyEncoder(SpotImageEnv().observation_space, width=4), network="shared", **TINY)
    assert agent.model.encoder.output_size == 4  # measured on one observation
    agent.learn(64, progress=False)
    agent.close()


def test_a_user_encoder_that_returns_the_wrong_shape_is_named():
    class Bad(torch.nn.Module):
        def forward(self, obs):
            return obs.float()

    with pytest.raises(ValueError, match="it must return \\[batch, features\\]"):
        PPO(SpotImageEnv, encoder=Bad(), **TINY)


@pytest.mark.slow
def test_tiny_image_env_learns():
    agent = PPO(SpotImageEnv, seed=0, num_envs=8, num_steps=32, total_steps=8192, learning_rate=1e-3, ent_coef=0.01)
    agent.learn(progress=False)
    assert agent.evaluate(episodes=16)["mean_return"] >= 7.0  # random: 4 of 8
    agent.close()


@pytest.mark.slow
def test_dict_env_learns_from_both_fields():
    agent = PPO(DictGoalEnv, seed=0, num_envs=8, num_steps=32, total_steps=16384, learning_rate=1e-3, ent_coef=0.01)
    agent.learn(progress=False)
    assert agent.evaluate(episodes=40)["mean_return"] >= 6.0  # one field alone: at most 4 of 8
    agent.close()


def test_dict_agent_checkpoints_resume_and_act_identically(tmp_path):
    agent = PPO(DictGoalEnv, run_dir=tmp_path / "run", **TINY)
    agent.learn(128, progress=False)
    agent.close()
    loaded = PPO.load(tmp_path / "run")
    assert loaded.observation_space == agent.observation_space
    obs = {"position": np.array([[0.5, -0.2], [-0.3, 0.1]], np.float32), "goal": np.array([0, 2])}
    assert np.array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    loaded.close()


def test_a_tuple_and_multibinary_observation_space_round_trips_through_a_checkpoint():
    from clippo.training.checkpoint import space_from_dict, space_to_dict

    space = spaces.Tuple((spaces.MultiBinary(5), spaces.Dict({"x": spaces.Box(0, 255, (10, 10, 3), np.uint8)})))
    assert space_from_dict(space_to_dict(space)) == space


@pytest.mark.slow
def test_an_image_agent_through_the_cli_train_eval_enjoy_plot_report(tmp_path):
    from tests.helpers import run_cli

    run = tmp_path / "run"
    code, _out, err = run_cli(
        [
            "train",
            "MinAtar/Breakout-v1",
            "--encoder",
            "cnn",
            "--network",
            "shared",
            "--total-steps",
            "512",
            "--num-envs",
            "4",
            "--num-steps",
            "64",
            "--eval-episodes",
            "2",
            "--run-dir",
            str(run),
            "--no-tensorboard",
            "--no-progress",
        ]
    )
    assert code == 0, err
    loaded = PPO.load(run)
    assert isinstance(loaded.model.encoder, MinAtarCNN) and loaded.observation_space.dtype == np.bool_
    for args in (
        ["eval", str(run), "--episodes", "2"],
        ["enjoy", str(run), "--episodes", "1"],
        ["plot", str(run), "-o", str(tmp_path / "curves.png")],
        ["report", str(run)],
    ):
        code, _out, err = run_cli(args)
        assert code == 0, (args, err)
    assert (tmp_path / "curves.png").exists() and (run / "report.md").exists()

"""Image preprocessing for envs other than Atari/MinAtar (frame_skip, resize, grayscale,
frame_stack: clippo.envs.preprocessing), head hidden layers (head_sizes), the gelu activation, and
the CarRacing-v3 preset (RL-Zoo's recipe) built from them."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from clippo import PPO
from clippo.config.ppo_config import ENV_PRESETS, PPOConfig, config_from_dict, resolve_config, save_config
from clippo.core.errors import ConfigError
from clippo.envs.make import make_run_envs
from clippo.envs.preprocessing import Preprocessing
from clippo.networks.distributions import StateDependentGaussian
from clippo.networks.encoders import ACTIVATIONS, MLPEncoder, NatureCNN
from clippo.networks.policy import ActorCritic
from clippo.rollout.runner import EnvRunner
from tests.toy_envs import SpotImageEnv


class CountingEnv(gym.Env):
    """Step t (from 1) observes t and earns t; the episode terminates at step ``length``."""

    metadata: dict = {}

    def __init__(self, length: int = 7) -> None:
        self.length = length
        self.observation_space = spaces.Box(0.0, 100.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(1, self.t, np.float32), float(self.t), self.t >= self.length, False, {}


# ---------------------------------------------------------------------------------------------
# the knobs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, message",
    [
        (dict(frame_skip=0), r"^frame_skip=0 is invalid: it must be an integer >= 1$"),
        (dict(frame_stack=-1), r"^frame_stack=-1 is invalid: it must be an integer >= 1$"),
        (dict(resize=[64]), r"^resize=\[64\] is invalid: give two sizes >= 1, HEIGHT WIDTH, or none"),
        (dict(resize=[64, 0]), r"^resize=\[64, 0\] is invalid: give two sizes >= 1"),
        (dict(resize=[64.5, 64]), r"^resize=\[64.5, 64\] is invalid: it must be of type list\[int\]$"),
        (dict(grayscale="yes"), r"^grayscale='yes' is invalid: it must be of type bool$"),
        (dict(head_sizes=[256, 0]), r"^head_sizes=\[256, 0\] is invalid: give widths >= 1"),
        (dict(activation="silu"), r"^activation='silu' is invalid: choose one of tanh, relu, gelu$"),
        (
            dict(env_id="ALE/Pong-v5", frame_stack=2),
            r"^frame_stack=2 is invalid for 'ALE/Pong-v5': Atari and MinAtar ids",
        ),
        (dict(env_id="MinAtar/Breakout-v1", grayscale=True), r"^grayscale=True is invalid for 'MinAtar/Breakout-v1'"),
    ],
)
def test_bad_knob_values_are_one_line_errors_naming_them(values, message):
    with pytest.raises(ConfigError, match=message) as info:
        PPOConfig(**values).validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "env, values, message",
    [
        (
            "CartPole-v1",
            dict(resize=[8, 8]),
            r"^resize=\[8, 8\] is invalid for observation space Box\(.*\): it applies to uint8 images",
        ),
        (
            "CartPole-v1",
            dict(grayscale=True),
            r"^grayscale=True is invalid for observation space Box\(.*\): it applies to uint8 RGB",
        ),
        (
            SpotImageEnv,
            dict(grayscale=True),
            r"^grayscale=True is invalid for observation space Box\(0, 255, \(10, 10, 1\)",
        ),
        (
            SpotImageEnv,
            dict(frame_stack=2),
            r"^frame_stack=2 is invalid for observation space Box\(0, 255, \(10, 10, 1\), uint8\): stacked",
        ),
        (
            "CartPole-v1",
            dict(frame_skip=2, vector_env="native"),
            r"^vector_env='native' is invalid with frame_skip=2: ",
        ),
    ],
)
def test_preprocessing_that_does_not_fit_the_observations_is_a_one_line_error(env, values, message):
    with pytest.raises(ValueError, match=message) as info:
        PPO(env, num_envs=1, tensorboard=False, **values)
    assert "\n" not in str(info.value)


def test_no_knobs_leave_the_envs_as_they_are():
    assert not Preprocessing.from_config(PPOConfig()).active
    envs = make_run_envs("CartPole-v1", 2, PPOConfig())
    assert type(envs).__module__.startswith("gymnasium.envs.classic_control")  # still CartPole's native vector env
    envs.close()
    assert str(Preprocessing(frame_skip=2, resize=(64, 64))) == "frame_skip=2, resize=[64, 64]"


def test_frame_skip_repeats_the_action_sums_the_rewards_and_stops_at_the_end():
    env = Preprocessing(frame_skip=3)(CountingEnv(length=7))
    env.reset(seed=0)
    steps = [env.step(0) for _ in range(3)]
    assert [(float(obs[0]), reward, terminated) for obs, reward, terminated, _, _ in steps] == [
        (3.0, 1.0 + 2.0 + 3.0, False),
        (6.0, 4.0 + 5.0 + 6.0, False),
        (7.0, 7.0, True),  # stopped early: the episode ended on the first repeat
    ]


def test_evaluation_sees_the_training_preprocessing():
    """agent.evaluate makes its envs from the config too: 7 env steps are 3 agent steps."""
    agent = PPO(CountingEnv, frame_skip=3, num_envs=2, num_steps=8, tensorboard=False)
    result = agent.evaluate(episodes=2, seed=0)
    assert result["mean_return"] == sum(range(1, 8)) and result["mean_length"] == 3
    agent.close()


def test_frame_stack_of_vectors_keeps_the_fast_path():
    agent = PPO("CartPole-v1", num_envs=2, frame_stack=3, tensorboard=False)
    assert agent.observation_space.shape == (3, 4)
    assert agent.model.actor_encoder.input_size == 12  # flattened by the MLP encoder
    agent.close()


# ---------------------------------------------------------------------------------------------
# head layers and gelu
# ---------------------------------------------------------------------------------------------
OBS = spaces.Box(-1.0, 1.0, (5,), np.float32)
BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("network", ["separate", "shared"])
def test_head_layers_sit_between_the_features_and_the_outputs(network):
    torch.manual_seed(0)
    model = ActorCritic(OBS, BOX, [16], "gelu", network, sde_sample_freq=4, head_sizes=[12, 8])
    assert (
        [layer.out_features for layer in model.actor_hidden]
        == [12, 8]
        == [layer.out_features for layer in model.critic_hidden]
    )
    assert (
        model.actor_hidden[0].in_features == 16
        and model.actor_head.in_features == 8
        and model.critic_head.in_features == 8
    )
    assert isinstance(model.distribution, StateDependentGaussian)
    assert model.distribution.feature_size == 8 and model.log_std.shape == (8 * 2,)  # gSDE reads the last head layer
    encoders = (1 if network == "shared" else 2) * (5 * 16 + 16)
    heads = 2 * ((16 * 12 + 12) + (12 * 8 + 8)) + (8 * 2 + 2) + (8 + 1) + 8 * 2  # hidden, outputs, gSDE's log-std
    assert param_count(model) == encoders + heads
    obs = torch.randn(6, 5)
    features = model.actor_features(obs)
    for layer in model.actor_hidden:
        features = F.gelu(layer(features))
    params = model.actor(obs)
    torch.testing.assert_close(params[:, :2], model.actor_head(features))
    torch.testing.assert_close(params[:, 2:], features)  # the detached features gSDE's noise multiplies
    values = model.value(obs)
    critic = model.critic_features(obs)
    for layer in model.critic_hidden:
        critic = F.gelu(layer(critic))
    torch.testing.assert_close(values, model.critic_head(critic).squeeze(-1))


def test_no_head_layers_keep_the_parameters_and_their_names():
    torch.manual_seed(0)
    names = list(ActorCritic(OBS, BOX, [16]).state_dict())
    assert names == list(ActorCritic(OBS, BOX, [16], head_sizes=[]).state_dict())
    assert not any("hidden" in name for name in names)  # older checkpoints load unchanged


def test_head_layers_are_orthogonal_by_default_and_pytorch_default_without_orthogonal_init():
    torch.manual_seed(0)
    orthogonal = ActorCritic(OBS, BOX, [64], head_sizes=[32])
    default = ActorCritic(OBS, BOX, [64], head_sizes=[32], orthogonal_init=False)
    for layers in (orthogonal.actor_hidden, orthogonal.critic_hidden):
        w = layers[0].weight.detach().double()
        torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(32, dtype=torch.float64), atol=1e-5, rtol=0)
        assert not layers[0].bias.any()
    for layers in (default.actor_hidden, default.critic_hidden):  # kaiming-uniform weights and biases in +-1/sqrt(64)
        assert layers[0].weight.abs().max() <= 1 / math.sqrt(64) and layers[0].bias.abs().max() > 0


def test_gelu_is_torchs_exact_gelu_in_the_mlp_encoder():
    assert ACTIVATIONS["gelu"] is F.gelu
    x = torch.linspace(-4, 4, 50)
    torch.testing.assert_close(ACTIVATIONS["gelu"](x), nn.GELU()(x))  # SB3's activation_fn=nn.GELU
    torch.manual_seed(0)
    encoder = MLPEncoder(OBS, [8], "gelu")
    obs = torch.randn(3, 5)
    torch.testing.assert_close(encoder(obs), F.gelu(encoder.layers[0](obs)))


# ---------------------------------------------------------------------------------------------
# CarRacing-v3 with the preset
# ---------------------------------------------------------------------------------------------
def test_resolve_config_gives_the_carracing_preset():
    config = resolve_config("CarRacing-v3")
    assert {key: getattr(config, key) for key in ENV_PRESETS["CarRacing-v3"]} == ENV_PRESETS["CarRacing-v3"]
    assert config.num_envs * config.num_steps // config.num_minibatches == 128  # RL-Zoo's batch_size
    assert (config.frame_skip, config.resize, config.grayscale, config.frame_stack) == (2, [64, 64], True, 2)
    assert (config.network, config.head_sizes, config.activation) == ("shared", [256], "gelu")
    assert (config.use_sde, config.sde_sample_freq, config.init_log_std, config.orthogonal_init) == (
        True,
        4,
        -2.0,
        False,
    )
    assert config.normalize_rewards and not config.normalize_observations


def test_carracing_observations_are_two_stacked_64x64_grayscale_frames():
    envs = make_run_envs("CarRacing-v3", 1, resolve_config("CarRacing-v3"))
    try:
        assert envs.single_observation_space == spaces.Box(0, 255, (2, 64, 64), np.uint8)
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (1, 2, 64, 64) and obs.dtype == np.uint8
        assert not obs[0, 0].any() and obs[0, 1].any()  # zeros before the episode's first frame
        obs, *_ = envs.step(np.zeros((1, 3), np.float32))
        assert obs[0, 0].any()
    finally:
        envs.close()


def test_carracing_preset_trains_saves_loads_and_acts_identically(tmp_path):
    agent = PPO("CarRacing-v3", total_steps=32, num_envs=2, num_steps=16, num_minibatches=2, update_epochs=1,
                run_dir=tmp_path, tensorboard=False)  # fmt: skip
    model = agent.model
    assert agent.observation_space.shape == (2, 64, 64) and isinstance(model.encoder, NatureCNN)
    assert model.encoder.chw == (2, 64, 64)  # read as channels first
    assert model.actor_head.in_features == 256 and model.distribution.feature_size == 256
    cnn = (2 * 32 * 64 + 32) + (32 * 64 * 16 + 64) + (64 * 64 * 9 + 64) + (1024 * 512 + 512)
    heads = 2 * (512 * 256 + 256) + (256 * 3 + 3) + (256 + 1) + 256 * 3  # SB3's CnnPolicy, net_arch pi/vf [256]
    assert param_count(model) == cnn + heads
    assert agent.runner_class is EnvRunner
    before = agent.optimizer.flat.clone()
    agent.learn(progress=False)
    assert agent.update == 1 and not torch.equal(agent.optimizer.flat, before)
    obs = np.random.default_rng(0).integers(0, 256, (3, 2, 64, 64), dtype=np.uint8)
    actions = agent.act(obs, deterministic=True)
    path = agent.save(tmp_path / "agent.pt")
    agent.close()
    loaded = PPO.load(path)
    assert loaded.config == agent.config
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), actions)
    loaded.close()
    save_config(agent.config, tmp_path / "config.yaml")  # (what clippo train writes)
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == agent.config

"""Invalid-action masks end to end: detection of each source, storage in the rollout, their use in
the update (the first ratio is 1), all-false masks, act/predict/evaluate with masks, checkpoints,
and which path (fast or general) runs. The masks' math is in tests/networks/test_distributions.py."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from clippo import PPO
from clippo.core.errors import ActionMaskError, EnvStepError
from clippo.core.losses import AutogradLoss
from clippo.envs.toy import SlotsEnv, SlotsMethodEnv
from clippo.rollout.masking import policy_observation_space
from clippo.rollout.runner import EnvRunner, RolloutBuffer
from tests.toy_envs import MaskedGridEnv
from tests.training.test_ppo import record_first_logratios, record_logratios

TINY = dict(num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2, hidden_sizes=[16, 16], tensorboard=False)


def slots(mask_in: str):
    return SlotsMethodEnv if mask_in == "method" else (lambda: SlotsEnv(mask_in=mask_in))


def collected(agent: PPO) -> RolloutBuffer:
    runner = agent.env_runner()  # (first: the envs decide whether the buffer holds masks)
    buffer = agent.new_rollout_buffer()
    runner.collect(agent.model, buffer, agent.generator)
    return buffer


# ------------------------------------------------------------------------------------------------
# sources, storage, and the path taken
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_in", ["method", "observation", "info"])
def test_each_mask_source_is_detected_stored_with_its_observation_and_obeyed(mask_in):
    agent = PPO(slots(mask_in), seed=1, **TINY)
    buffer = collected(agent)  # SlotsEnv.step raises on a filled slot: no invalid action was taken
    assert agent.action_masks.kind == mask_in
    # the mask of each stored observation is its "not filled" part; an episode's final state
    # (every slot filled: an all-false mask) is never acted on (its step is an autoreset step)
    filled = buffer.obs[..., 6:] > 0.5
    valid = buffer.valid
    assert np.array_equal(buffer.masks[valid], ~filled[valid])
    assert buffer.masks[~valid].all()
    assert (buffer.terminated.sum() > 0) and (~valid).sum() > 0
    chosen = np.take_along_axis(buffer.masks, buffer.actions[..., None], axis=-1)[..., 0]
    assert chosen[valid].all()
    # the Batch carries the masks of its transitions
    batch = buffer.flatten(torch.zeros(buffer.rewards.shape), torch.zeros(buffer.rewards.shape))
    assert batch.masks.dtype == torch.bool and batch.masks.shape == (len(batch), 6)
    assert torch.equal(batch[torch.arange(3)].masks, batch.masks[:3])
    agent.close()


def test_dict_observations_lose_their_action_mask_key_for_the_encoder():
    space = SlotsEnv(mask_in="observation").observation_space
    assert policy_observation_space(space) == space["observation"]  # one key left: that space itself
    two = spaces.Dict({"a": spaces.Box(-1, 1, (2,)), "b": spaces.Discrete(3), "action_mask": spaces.MultiBinary(4)})
    assert policy_observation_space(two) == spaces.Dict({"a": two["a"], "b": two["b"]})
    agent = PPO(slots("observation"), seed=0, **TINY)
    assert agent.observation_space == space and agent.model.observation_space == space["observation"]
    assert agent.model.actor_encoder.input_size == 12
    agent.close()


def test_masks_come_through_an_env_id_whose_info_clippo_otherwise_drops():
    agent = PPO("clippo/SlotsInfo-v0", seed=0, **TINY)
    collected(agent)
    assert agent.action_masks.kind == "info"
    agent.close()


def test_multidiscrete_masks_from_info_are_obeyed():
    agent = PPO(MaskedGridEnv, seed=0, **TINY)
    buffer = collected(agent)  # MaskedGridEnv.step raises on a masked choice
    assert agent.action_masks.kind == "info" and buffer.masks.shape == (32, 2, 7)
    agent.learn(64)
    agent.close()


def test_fast_path_takes_masks_but_not_the_new_action_spaces():
    from clippo.envs.toy import BitsEnv, ToolAmountEnv
    from clippo.fastpath.gradient import AnalyticGradient
    from clippo.fastpath.rollout import FastEnvRunner, FlatRolloutBuffer

    for source in ("CartPole-v1", SlotsMethodEnv):  # flat Box observations, separate MLPs, a CPU
        agent = PPO(source, seed=0, **TINY)
        agent.env_runner()
        assert (agent.action_masks is None) == (source == "CartPole-v1")
        assert type(agent._runner) is FastEnvRunner and agent.buffer_class is FlatRolloutBuffer, source
        assert type(agent._loss) is AnalyticGradient, source
        agent.close()
    for source in (ToolAmountEnv, BitsEnv):  # Dict (hybrid) and MultiBinary actions
        agent = PPO(source, seed=0, **TINY)
        agent.env_runner()
        assert type(agent._runner) is EnvRunner and agent.buffer_class is RolloutBuffer, source
        assert isinstance(agent._loss, AutogradLoss), source
        agent.close()


def test_masks_for_an_unmaskable_action_space_are_a_one_line_error():
    class BoxWithMasks(gym.Env):
        observation_space = spaces.Box(-1, 1, (2,))
        action_space = spaces.Box(-1, 1, (2,))

        def reset(self, *, seed=None, options=None):
            return np.zeros(2, np.float32), {"action_mask": np.ones(2, bool)}

    agent = PPO(BoxWithMasks, seed=0, **TINY)
    with pytest.raises(ValueError, match="masks only Discrete and MultiDiscrete") as info:
        agent.env_runner()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# the update
# ------------------------------------------------------------------------------------------------
def test_first_ratio_is_one_with_masks_and_far_from_one_without_them():
    agent = PPO(SlotsMethodEnv, seed=3, num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2,
                learning_rate=1e-2, hidden_sizes=[16, 16], tensorboard=False)  # fmt: skip
    firsts = record_first_logratios(agent)
    stats = []
    agent.learn(3 * 64, callback=lambda _, metrics: stats.append(metrics))
    assert len(firsts) == 3
    for logratio in firsts:
        assert logratio.abs().max().item() < 1e-5, logratio
    # the update's log-probabilities are those of the masked policy: without the masks, the
    # same batch scores far off (the masked actions' share of probability is put back)
    buffer = collected(agent)
    batch = buffer.flatten(torch.zeros(buffer.rewards.shape), torch.zeros(buffer.rewards.shape))
    with torch.no_grad():
        masked, _, _ = agent.model.evaluate_actions(batch.obs, batch.actions, masks=batch.masks)
        unmasked, _, _ = agent.model.evaluate_actions(batch.obs, batch.actions)
    torch.testing.assert_close(masked, batch.logprobs, atol=1e-5, rtol=0)
    assert (masked - unmasked).max().item() > 0.5
    agent.close()


def test_the_update_never_moves_probability_onto_masked_actions():
    agent = PPO(SlotsMethodEnv, seed=0, ent_coef=0.05, **TINY)
    calls = record_logratios(agent)
    agent.learn(256)
    assert calls and all(torch.isfinite(c).all() for c in calls)
    buffer = collected(agent)
    probs = torch.softmax(torch.from_numpy(buffer.params), dim=-1)
    assert torch.equal(probs[torch.from_numpy(~buffer.masks)], torch.zeros(int((~buffer.masks).sum())))
    agent.close()


# ------------------------------------------------------------------------------------------------
# all-false masks
# ------------------------------------------------------------------------------------------------
def test_an_all_false_mask_during_training_names_the_env_and_step():
    agent = PPO(lambda: MaskedGridEnv(length=9, dead_end_at=3), seed=0, **TINY)
    with pytest.raises(
        ActionMaskError, match=r"env 0 \(of 2\) has no valid action at rollout step 3: its action mask is all false"
    ) as info:
        agent.learn(64)
    assert isinstance(info.value, EnvStepError) and "\n" not in str(info.value)


def test_act_with_an_all_false_mask_raises_naming_the_row():
    agent = PPO(SlotsMethodEnv, seed=0, **TINY)
    obs = np.zeros((3, 12), np.float32)
    masks = np.ones((3, 6), bool)
    masks[1] = False
    with pytest.raises(ValueError, match=r"action_masks row 1 \(of 3\) has no valid action"):
        agent.act(obs, action_masks=masks)
    with pytest.raises(ValueError, match="expected 3 x 6"):
        agent.act(obs, action_masks=np.ones((3, 5), bool))
    agent.close()


# ------------------------------------------------------------------------------------------------
# act, predict, evaluate, checkpoints
# ------------------------------------------------------------------------------------------------
def test_act_and_predict_take_action_masks():
    agent = PPO(SlotsMethodEnv, seed=0, **TINY)
    obs = np.random.default_rng(0).random((50, 12), dtype=np.float32)
    only = np.zeros((50, 6), bool)
    only[np.arange(50), np.arange(50) % 6] = True
    for deterministic in (True, False):
        assert np.array_equal(agent.act(obs, deterministic, action_masks=only), np.arange(50) % 6)
    two = only | np.roll(only, 1, axis=1)
    actions, state = agent.predict(obs, deterministic=False, action_masks=two)
    assert state is None and two[np.arange(50), actions].all()
    single, _ = agent.predict(obs[0], action_masks=np.eye(6, dtype=bool)[4])
    assert int(single) == 4
    agent.close()


def test_act_reads_the_mask_from_a_dict_observation():
    agent = PPO(slots("observation"), seed=0, **TINY)
    obs = {"observation": np.zeros(12, np.float32), "action_mask": np.eye(6, dtype=np.int8)[2]}
    assert all(int(agent.act(obs, deterministic=False)) == 2 for _ in range(20))
    agent.close()


@pytest.mark.parametrize("mask_in", ["method", "observation"])
def test_evaluate_plays_with_the_envs_masks(mask_in):
    agent = PPO(slots(mask_in), seed=0, **TINY)
    # an untrained deterministic policy picks the same slot again without masks: SlotsEnv would raise
    result = agent.evaluate(episodes=3, seed=0)
    assert result["episodes"] == 3 and result["mean_length"] == 6
    agent.close()


def test_a_masked_agent_saves_loads_and_acts_identically(tmp_path):
    agent = PPO(slots("observation"), seed=2, **TINY)
    agent.learn(64)
    agent.save(tmp_path / "agent.pt")
    loaded = PPO.load(tmp_path / "agent.pt", env=slots("observation"))
    assert loaded.observation_space == agent.observation_space
    rng = np.random.default_rng(1)
    obs = {"observation": rng.random((20, 12), dtype=np.float32), "action_mask": rng.random((20, 6)) < 0.5}
    obs["action_mask"][:, 0] = True
    assert np.array_equal(agent.act(obs, deterministic=True), loaded.act(obs, deterministic=True))
    assert np.array_equal(agent.act(obs), loaded.act(obs))  # the generator is restored too
    assert loaded.evaluate(episodes=2, seed=0)["episodes"] == 2
    agent.close()
    loaded.close()


def test_a_mask_of_the_wrong_size_is_a_one_line_error():
    class WrongMask(SlotsMethodEnv):
        def action_masks(self):
            return np.ones(5, bool)  # the action space has 6 actions

    agent = PPO(WrongMask, seed=0, **TINY)
    with pytest.raises(ActionMaskError, match=r"has shape \(2, 5\): expected 2 x 6 booleans"):
        agent.learn(64)

"""ONNX export: the graph's actions against ``agent.act(obs, deterministic=True)`` for each kind of
observation and action, normalization folded in, the ``clippo export`` command and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnxruntime = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from clippo import PPO  # noqa: E402
from clippo.core import precision  # noqa: E402
from clippo.core.errors import ExportCheckError  # noqa: E402
from clippo.tools.export import export_onnx  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.toy_envs import DictGoalEnv, SpotImageEnv  # noqa: E402

TINY = dict(num_envs=2, num_steps=16, num_minibatches=2, seed=0)
CHECK = dict(check_steps=24, check_envs=2)


@pytest.fixture
def make_agent():
    agents = []

    def make(env, **kwargs):
        agents.append(PPO(env, **{**TINY, **kwargs}))
        return agents[-1]

    yield make
    for agent in agents:
        agent.close()


def run_graph(path, feed):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, session.run(None, feed)


def test_discrete_actions_are_identical(make_agent, tmp_path):
    agent = make_agent("CartPole-v1")
    result = export_onnx(agent, tmp_path / "policy.onnx", **CHECK)
    assert result.check.passed and result.check.identical == result.check.observations == 48
    assert result.check.max_difference is None
    assert [(p.name, p.dtype, p.shape) for p in result.inputs] == [("obs", "float32", (4,))]
    assert [(p.name, p.dtype, p.shape) for p in result.outputs] == [("action", "int64", ())]
    # fresh observations, batches of 1 and of 7 (the batch axis is dynamic)
    obs = np.random.default_rng(1).uniform(-2, 2, (7, 4)).astype(np.float32)
    for batch in (obs[:1], obs):
        _, (actions,) = run_graph(result.path, {"obs": batch})
        np.testing.assert_array_equal(actions, agent.act(batch, deterministic=True))


def test_continuous_actions_with_normalization_folded_in(make_agent, tmp_path):
    agent = make_agent("Pendulum-v1", normalize_observations=True, obs_clip=2.0)
    stats = agent.obs_normalizer.stats  # statistics a run would have gathered, some observations clipped
    stats.mean, stats.var = np.array([0.3, -0.2, 1.5]), np.array([0.04, 0.5, 2.0])
    result = export_onnx(agent, tmp_path / "policy.onnx", **CHECK)
    assert result.check.passed and result.check.identical is None
    assert result.check.max_difference <= 1e-5
    assert [(p.name, p.dtype, p.shape) for p in result.outputs] == [("action", "float32", (1,))]
    obs = np.random.default_rng(2).uniform(-8, 8, (64, 3)).astype(np.float32)
    _, (actions,) = run_graph(result.path, {"obs": obs})
    np.testing.assert_allclose(actions, agent.act(obs, deterministic=True), atol=1e-5, rtol=0)
    assert np.all(np.abs(actions) <= 2.0)  # clipped to Pendulum's bounds
    # the normalization is in the graph: without it the same observations give other actions
    stats.mean, stats.var = np.zeros(3), np.ones(3)
    assert np.max(np.abs(actions - agent.act(obs, deterministic=True))) > 1e-4


def test_gsde_agent_exports_its_mean_action(make_agent, tmp_path):
    agent = make_agent("Pendulum-v1", use_sde=True, init_log_std=-1.0)
    result = export_onnx(agent, tmp_path / "policy.onnx", **CHECK)
    assert result.check.passed and result.check.max_difference <= 1e-5
    assert [(p.name, p.dtype, p.shape) for p in result.outputs] == [("action", "float32", (1,))]


def test_image_agent_takes_uint8_frames(make_agent, tmp_path):
    agent = make_agent(SpotImageEnv)
    result = export_onnx(agent, tmp_path / "policy.onnx", **CHECK)
    assert result.check.passed
    assert [(p.name, p.dtype, p.shape) for p in result.inputs] == [("obs", "uint8", (10, 10, 1))]
    frames = np.stack([SpotImageEnv().reset(seed=s)[0] for s in range(5)])
    session, (actions,) = run_graph(result.path, {"obs": frames})
    assert session.get_inputs()[0].type == "tensor(uint8)"
    np.testing.assert_array_equal(actions, agent.act(frames, deterministic=True))


def test_dict_observations_one_input_per_field(make_agent, tmp_path):
    agent = make_agent(DictGoalEnv)
    result = export_onnx(agent, tmp_path / "policy.onnx", **CHECK)
    assert result.check.passed
    assert {(p.name, p.dtype, p.shape) for p in result.inputs} == {("position", "float32", (2,)), ("goal", "int64", ())}
    obs = {"position": np.array([[0.5, -0.1], [-0.7, 0.2]], np.float32), "goal": np.array([2, 0])}
    _, (actions,) = run_graph(result.path, obs)
    np.testing.assert_array_equal(actions, agent.act(obs, deterministic=True))


@pytest.mark.parametrize(
    "env_id, inputs, outputs",
    [
        ("clippo/SlotsDict-v0", {"observation", "action_mask"}, ["action"]),  # mask in the observation
        ("clippo/Slots-v0", {"obs", "action_mask"}, ["action"]),  # mask from an action_masks() method
        ("clippo/ToolAmount-v0", {"obs"}, ["action.amount", "action.tool"]),  # hybrid Dict action
        ("clippo/Bits-v0", {"obs"}, ["action"]),  # MultiBinary
    ],
)
def test_masks_and_other_action_spaces(make_agent, tmp_path, env_id, inputs, outputs):
    agent = make_agent(env_id)
    result = export_onnx(agent, tmp_path / "policy.onnx", **CHECK)
    assert result.check.passed
    assert {p.name for p in result.inputs} == inputs
    assert [p.name for p in result.outputs] == outputs


@pytest.mark.parametrize(
    "kind, network, env_id",
    [("lstm", "separate", "clippo/CartPoleNoVel-v1"), ("gru", "shared", "clippo/PendulumNoVel-v1")],
)
def test_recurrent_policy_exports_its_state_as_an_input_and_an_output(make_agent, tmp_path, kind, network, env_id):
    agent = make_agent(
        env_id,
        recurrent=kind,
        network=network,
        recurrent_hidden_size=8,
        num_minibatches=2,
        bptt_length=8,
        normalize_observations=True,
    )
    agent.learn(total_steps=64, progress=False)
    size = agent.model.state_size
    result = export_onnx(agent, tmp_path / "policy.onnx", **CHECK)
    assert result.check.passed and result.check.max_difference <= 1e-5
    assert [p.name for p in result.inputs] == ["obs", "state_in"] and result.inputs[1].shape == (size,)
    assert [p.name for p in result.outputs] == ["action", "state_out"] and result.outputs[1].shape == (size,)
    # an episode played through the graph, its state fed back, acts as predict does
    env = __import__("gymnasium").make(env_id)
    obs, _ = env.reset(seed=4)
    graph_state, state = np.zeros((1, size), dtype=np.float32), None
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for t in range(20):
        action, graph_state = session.run(None, {"obs": obs[None], "state_in": graph_state})
        expected, state = agent.predict(obs, state, episode_start=np.array(t == 0), deterministic=True)
        np.testing.assert_allclose(action[0], expected, atol=1e-5)
        np.testing.assert_allclose(graph_state[0], state, atol=1e-5)
        obs, _, terminated, truncated, _ = env.step(expected)
        if terminated or truncated:
            break
    env.close()


def test_given_check_observations(make_agent, tmp_path):
    agent = make_agent("CartPole-v1")
    obs = np.random.default_rng(3).uniform(-1, 1, (10, 4)).astype(np.float32)
    result = export_onnx(agent, tmp_path / "policy.onnx", check_observations=obs)
    assert result.check.observations == 10 and result.check.source == "given observations"


def test_failed_check_writes_nothing(make_agent, tmp_path):
    agent = make_agent("Pendulum-v1")
    target = tmp_path / "policy.onnx"
    target.write_bytes(b"previous")
    act = agent.act
    agent.act = lambda obs, deterministic=False, action_masks=None: act(obs, deterministic, action_masks) + 1e-3
    with pytest.raises(ExportCheckError, match=r"export check failed: .*differ by at most 1\.00e-03") as info:
        export_onnx(agent, target, **CHECK)
    assert "\n" not in str(info.value)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx"]  # no temporary file left


def test_missing_onnxruntime_names_the_extra(make_agent, tmp_path, monkeypatch):
    agent = make_agent("CartPole-v1")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError, match=r"onnxruntime.*pip install 'clippo\[export\]'"):
        export_onnx(agent, tmp_path / "policy.onnx")
    code, _out, err = run_cli(["export", str(tmp_path), "-o", str(tmp_path / "policy.onnx")])
    assert code == 2 and err.count("\n") == 1 and "pip install 'clippo[export]'" in err


def test_docs_deployment_example_runs_without_torch(make_agent, tmp_path):
    """docs/export.md's example of running the graph, run as written (torch made unimportable)
    on an exported CartPole policy."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "export.md").read_text()
    blocks = [block.split("```", 1)[0] for block in page.split("```python\n")[1:]]
    example = next(block for block in blocks if "import onnxruntime" in block and "clippo" not in block)
    export_onnx(make_agent("CartPole-v1"), tmp_path / "policy.onnx", **CHECK)
    script = "import sys; sys.modules['torch'] = None\n" + example + "print('steps ran')\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "steps ran" in done.stdout, done.stderr


# ------------------------------------------------------------------------------------------------
# clippo export
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    agent = PPO("CartPole-v1", **TINY)
    agent.save(run_dir / "agent.pt")
    agent.close()
    return run_dir


def assert_one_line_error(code, err, fragment):
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("clippo: error: ") and fragment in err, err


def test_cli_writes_the_file_and_prints_the_check(run_dir, tmp_path):
    out_path = tmp_path / "cartpole.onnx"
    code, out, err = run_cli(["export", str(run_dir), "-o", str(out_path), "--check-steps", "16", "--check-envs", "2"])
    assert code == 0, err
    assert out_path.stat().st_size > 0
    assert f"wrote {out_path}" in out and "inputs obs float32 [batch, 4]; outputs action int64 [batch]" in out
    assert (
        "check passed" in out and "32/32 discrete actions identical" in out and "CartPole-v1, 2 envs x 16 steps" in out
    )


def test_cli_default_output_and_json(run_dir):
    code, out, err = run_cli(["export", str(run_dir), "--json", "--check-steps", "8", "--check-envs", "2"])
    assert code == 0, err
    report = json.loads(out)
    assert report["path"] == str(run_dir / "policy.onnx") and (run_dir / "policy.onnx").is_file()
    assert report["passed"] and report["agreement"] == 1.0 and report["observations"] == 16


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["export", "no/such/run"], "no such checkpoint file or run directory"),
        (["export", "{run_dir}", "-o", "{tmp}/missing/policy.onnx"], "does not exist"),
        (["export", "{run_dir}", "-o", "{tmp}"], "is a directory"),
        (["export", "{run_dir}", "--check-steps", "0"], "--check-steps=0 is invalid"),
    ],
)
def test_cli_bad_input_one_line_error(run_dir, tmp_path, args, fragment):
    args = [a.format(run_dir=run_dir, tmp=tmp_path) for a in args]
    code, _out, err = run_cli(args)
    assert_one_line_error(code, err, fragment)


def test_cli_run_dir_without_checkpoint(tmp_path):
    code, _out, err = run_cli(["export", str(tmp_path)])
    assert_one_line_error(code, err, "no checkpoint in run directory")


@pytest.mark.skipif(not precision.cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_a_bf16_agent_exports_its_fp32_policy(make_agent, tmp_path):
    """ONNX graphs hold the fp32 weights (runtimes run fp32): a bf16 agent's export is traced and
    checked in fp32, and the agent goes on in bf16."""
    agent = make_agent(lambda: SpotImageEnv(size=12), precision="bf16")
    agent.learn(agent.batch_size, progress=False)
    result = export_onnx(agent, tmp_path / "policy.onnx", **CHECK)
    assert result.check.passed and agent.precision == "bf16" and agent.model.compute_dtype is torch.bfloat16
    graph = onnx.load(str(tmp_path / "policy.onnx"))
    assert onnx.TensorProto.BFLOAT16 not in {init.data_type for init in graph.graph.initializer}
    assert not [n for n in graph.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.BFLOAT16]

"""Deployment: the trained policy as an ONNX graph that runs without PyTorch (``clippo export``).

The graph is the deterministic policy, from what the env returns to what the env takes:

- inputs: the raw observation batch, in the dtype the observation space stores (float32 vectors,
  uint8 images, int64 ``Discrete`` indices), named ``obs`` for a plain space and by field for
  ``Dict``/``Tuple`` observations (flat keys, as in ``clippo.core.observations``: ``"goal"``,
  ``"sensors.lidar"``, ``"0"``); an env that gives action masks outside its observation (an
  ``action_masks()`` method or ``info["action_mask"]``) adds a bool ``action_mask`` input;
- inside: the frozen observation normalization (``clip((obs - mean) / sqrt(var + eps))``, in
  float64 as the agent computes it), the encoder and actor head, and the mode of the action
  distribution;
- outputs: the env action, named ``action`` (``action.KEY`` per part of a ``Dict``/``Tuple``
  action space): an int64 index (offset by the space's ``start``) for ``Discrete``, int64 indices
  for ``MultiDiscrete``, the Gaussian mean clipped to the bounds and in the space's shape for
  ``Box``, bits in the space's dtype for ``MultiBinary``.

Every input and output has a dynamic batch axis first. The graph is made by torch's TorchScript-
based exporter (``torch.onnx.export(..., dynamo=False)``): the newer exporter needs onnxscript,
and these graphs (linear layers, convolutions, argmax) are what the older one was built for.
Before the file is written, onnxruntime runs it on observations from the run's own env and
its actions are compared with ``agent.act(obs, deterministic=True)``: discrete actions must be
identical and continuous ones within ``TOLERANCE``; otherwise nothing is written.

A recurrent policy's state is explicit: a float32 input ``state_in`` ``[batch, state_size]``
after the observation's (zeros at an episode's first observation) and an output ``state_out``
after the action's, to feed back at the next step (what ``agent.predict`` returns as its state).
The check threads the state through each env's consecutive steps, as ``predict`` does, and
compares ``state_out`` too (within ``TOLERANCE``).
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from clippo.core import observations, precision
from clippo.core.errors import ExportCheckError, first_line
from clippo.networks.distributions import (
    ActionDistribution,
    Bernoulli,
    Categorical,
    Composite,
    DiagGaussian,
    MultiCategorical,
)
from clippo.rollout import masking

#: Largest difference allowed between the graph's continuous actions and ``agent.act``'s.
TOLERANCE = 1e-5
#: ONNX opset of the exported graph (onnxruntime has run opset 17 since 1.14).
OPSET = 17
#: Env steps, and envs stepped side by side, of the check at export time (1,024 observations).
CHECK_STEPS = 256
CHECK_ENVS = 4
#: Fraction of the check's steps taken with random actions (unless the env masks actions), so
#: that the observations also cover states the deterministic policy does not visit.
RANDOM_STEP_FRACTION = 0.25

_INSTALL_HINT = "pip install 'clippo[export]'"
#: A recurrent policy's state: fed in (zeros at an episode start) and returned for the next step.
STATE_IN, STATE_OUT = "state_in", "state_out"


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, dtype and shape after the batch axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.name} {self.dtype} [{', '.join(['batch', *map(str, self.shape)])}]"


@dataclass(frozen=True)
class ParityCheck:
    """The graph's actions (run by onnxruntime) against ``agent.act(obs, deterministic=True)``."""

    #: observations compared
    observations: int
    #: where they came from, e.g. "CartPole-v1, 4 envs x 256 steps, seed 0"
    source: str
    #: observations whose discrete actions (every integer output) are identical; None without any
    identical: int | None
    #: largest absolute difference over the continuous (float) outputs; None without any
    max_difference: float | None
    tolerance: float

    @property
    def agreement(self) -> float | None:
        """Fraction of observations with identical discrete actions."""
        return None if self.identical is None else self.identical / self.observations

    @property
    def passed(self) -> bool:
        discrete_ok = self.identical is None or self.identical == self.observations
        continuous_ok = self.max_difference is None or self.max_difference <= self.tolerance
        return discrete_ok and continuous_ok

    def summary(self) -> str:
        parts = []
        if self.identical is not None:
            parts.append(f"{self.identical}/{self.observations} discrete actions identical")
        if self.max_difference is not None:
            parts.append(
                f"continuous actions differ by at most {self.max_difference:.2e} (tolerance {self.tolerance:g})"
            )
        return (
            f"onnxruntime vs the agent's deterministic policy on {self.observations} observations ({self.source}): "
            + "; ".join(parts)
        )


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote and how its check went."""

    path: Path
    inputs: list[Port]
    outputs: list[Port]
    check: ParityCheck
    opset: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``clippo export --json``."""
        return {
            "path": str(self.path),
            "opset": self.opset,
            "inputs": [asdict(port) for port in self.inputs],
            "outputs": [asdict(port) for port in self.outputs],
            "observations": self.check.observations,
            "source": self.check.source,
            "identical": self.check.identical,
            "agreement": self.check.agreement,
            "max_difference": self.check.max_difference,
            "tolerance": self.check.tolerance,
            "passed": self.check.passed,
        }


# ---------------------------------------------------------------------------------------------
# the graph's interface
# ---------------------------------------------------------------------------------------------
def graph_inputs(agent, mask_input: bool) -> list[Port]:
    """The graph's inputs, in order: the raw observation's fields (``obs`` for a plain space),
    then ``action_mask`` when the env gives masks outside its observation (``mask_input``)."""
    space = agent.observation_space
    parts = observations.fields(space)
    if parts is None:
        ports = [_port("obs", space)]
    else:
        ports = [_port(key, sub) for key, sub in parts.items()]
    if mask_input:
        ports.append(Port(masking.MASK_KEY, "bool", (agent.model.distribution.num_outputs,)))
    if agent.model.recurrent:
        ports.append(Port(STATE_IN, "float32", (agent.model.state_size,)))
    return ports


def policy_outputs(agent) -> list[Port]:
    """The graph's outputs: the env action's, then a recurrent policy's new state."""
    ports = graph_outputs(agent.model.distribution)
    if agent.model.recurrent:
        ports.append(Port(STATE_OUT, "float32", (agent.model.state_size,)))
    return ports


def graph_outputs(distribution: ActionDistribution, name: str = "action") -> list[Port]:
    """The graph's outputs: the env action (one per part of a Tuple/Dict action space)."""
    if isinstance(distribution, Composite):
        return [
            port
            for key, part in zip(distribution.keys, distribution.parts, strict=False)
            for port in graph_outputs(part, f"{name}.{key}")
        ]
    if isinstance(distribution, Categorical):
        return [Port(name, "int64", ())]
    if isinstance(distribution, MultiCategorical):
        return [Port(name, "int64", (len(distribution.sizes),))]
    if isinstance(distribution, DiagGaussian):
        return [Port(name, "float32", tuple(distribution.shape))]
    if isinstance(distribution, Bernoulli):
        return [Port(name, np.dtype(distribution.dtype).name, tuple(distribution.shape))]
    raise ValueError(f"{type(distribution).__name__} actions cannot be exported to ONNX yet")


def _port(name: str, space: spaces.Space) -> Port:
    return Port(name, observations.storage_dtype(space).name, observations.field_shape(space))


def _policy_input_names(agent) -> str | dict[str, str]:
    """Which graph input feeds the policy's observation: one name for a plain policy space, else
    the input name of each of its flat keys. (Only the ``action_mask`` key of a raw observation
    is not the policy's: ``clippo.rollout.masking.policy_observation_space``.)"""
    raw = agent.observation_space
    raw_fields = observations.fields(raw)
    policy_fields = observations.fields(agent.model.observation_space)
    if raw_fields is None:
        return "obs"
    rest = [key for key in raw.spaces if key != masking.MASK_KEY] if masking.observation_has_mask(raw) else []
    if policy_fields is None:  # a masked Dict whose one other key is a plain space
        return rest[0]
    prefix = f"{rest[0]}." if len(rest) == 1 else ""  # a masked Dict whose one other key is a Dict
    return {key: prefix + key for key in policy_fields}


class DeterministicPolicy(nn.Module):
    """The agent's deterministic policy from raw observations to env actions, as one module:
    what ``export_onnx`` traces. ``forward`` takes the tensors of ``graph_inputs`` in order and
    returns those of ``graph_outputs``."""

    def __init__(self, agent, mask_input: bool) -> None:
        super().__init__()
        self.model = copy.deepcopy(agent.model).cpu().eval()  # the agent's own model stays as it is
        self.distribution = self.model.distribution
        self.input_names = [port.name for port in graph_inputs(agent, mask_input)]
        self.policy_inputs = _policy_input_names(agent)
        self.masked = mask_input or masking.observation_has_mask(agent.observation_space)
        critic_space = getattr(agent, "critic_space", None)  # a multi-agent group's centralized critic input
        self.centralized = critic_space is not None
        self.critic_size = int(critic_space.shape[0]) if critic_space is not None else 0
        normalizer = agent.obs_normalizer
        self.normalize = bool(normalizer.enabled)
        if self.normalize:
            # float64 as in ObservationNormalizer: the same roundings, so the same normalized input
            stats = normalizer.stats
            self.register_buffer("obs_mean", torch.from_numpy(np.asarray(stats.mean, dtype=np.float64).copy()))
            self.register_buffer(
                "obs_std", torch.from_numpy(np.sqrt(np.asarray(stats.var, dtype=np.float64) + normalizer.epsilon))
            )
            self.obs_clip = float(normalizer.clip)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs, strict=False))
        masks = None
        if self.masked:
            mask = named[masking.MASK_KEY]
            masks = mask.reshape(mask.shape[0], -1).bool()
        if isinstance(self.policy_inputs, str):
            obs: Any = named[self.policy_inputs]
            if self.normalize:
                obs = (
                    ((obs.float().double() - self.obs_mean) / self.obs_std).clamp(-self.obs_clip, self.obs_clip).float()
                )
        else:
            obs = {key: named[name] for key, name in self.policy_inputs.items()}
        if self.centralized:
            # a multi-agent group's model with a centralized critic reads Dict(actor=..., critic=...)
            obs = {f"actor.{key}": value for key, value in obs.items()} if isinstance(obs, dict) else {"actor": obs}
        if not self.model.recurrent:
            return tuple(env_actions(self.distribution, self.model.actor(obs, masks)))
        state = named[STATE_IN]
        if self.centralized:  # (its critic core steps on zeros, as acting does: the actions read only the actor's)
            obs["critic"] = torch.zeros_like(state[:, :1]).expand(-1, self.critic_size)
        params, _, state = self.model.step(obs, state, torch.zeros_like(state[:, 0], dtype=torch.bool), masks)
        return (*env_actions(self.distribution, params), state)


def env_actions(distribution: ActionDistribution, params: torch.Tensor) -> list[torch.Tensor]:
    """The deterministic env action(s) for the actor's output: the distribution's mode
    (``sample(params, None)``, what ``agent.act`` takes) as ``to_env`` gives it to the env, in
    torch; one tensor per output of ``graph_outputs``."""
    if isinstance(distribution, Composite):
        chunks = params.split(distribution.output_sizes, dim=-1)
        return [
            action
            for part, chunk in zip(distribution.parts, chunks, strict=False)
            for action in env_actions(part, chunk)
        ]
    return [_to_env(distribution, distribution.sample(params, None))]


def _to_env(distribution: ActionDistribution, actions: torch.Tensor) -> torch.Tensor:
    """``distribution.to_env`` in torch (the env's offsets, bounds, shape and dtype)."""
    if isinstance(distribution, Categorical):
        return actions + distribution.start if distribution.start else actions
    if isinstance(distribution, MultiCategorical):
        return (
            actions + torch.as_tensor(distribution.start, dtype=torch.int64) if np.any(distribution.start) else actions
        )
    if isinstance(distribution, DiagGaussian):
        if distribution.bounded:
            actions = torch.minimum(
                torch.maximum(actions, torch.from_numpy(distribution.low)), torch.from_numpy(distribution.high)
            )
        return actions.reshape(-1, *distribution.shape)
    if isinstance(distribution, Bernoulli):
        dtype = torch.from_numpy(np.zeros(0, dtype=distribution.dtype)).dtype  # the space's dtype, in torch
        return actions.to(dtype).reshape(-1, *distribution.shape)
    raise ValueError(f"{type(distribution).__name__} actions cannot be exported to ONNX yet")


def flat_actions(distribution: ActionDistribution, action: Any) -> list[np.ndarray]:
    """``agent.act``'s action batch as arrays in the order of ``graph_outputs``."""
    if isinstance(distribution, Composite):
        items = [action[key] for key in distribution.keys] if distribution.is_dict else list(action)
        return [
            array for part, item in zip(distribution.parts, items, strict=False) for array in flat_actions(part, item)
        ]
    return [np.asarray(action)]


# ---------------------------------------------------------------------------------------------
# check observations
# ---------------------------------------------------------------------------------------------
@dataclass
class CheckData:
    """Observations to check the graph on, as graph inputs (flat, batch axis first), with the
    actions ``agent.act(obs, deterministic=True)`` gave for them (in output order)."""

    feed: dict[str, np.ndarray]
    expected: list[np.ndarray]
    source: str
    mask_input: bool


def collect_check_data(agent, steps: int = CHECK_STEPS, num_envs: int = CHECK_ENVS, seed: int = 0) -> CheckData:
    """Step ``num_envs`` copies of the agent's env for ``steps`` steps with its deterministic
    policy (a random action at a ``RANDOM_STEP_FRACTION`` of the steps, unless the env masks
    actions), keeping each observation, in time order, and the action ``agent.act`` chose for it."""
    from clippo.envs.make import make_run_envs

    source = agent.env_source
    name = source if isinstance(source, str) else getattr(source, "__name__", "the env factory")
    try:
        envs = make_run_envs(source, num_envs, agent.config)
    except ValueError as exc:
        raise ValueError(
            f"cannot make the run's env {name!r} for the export check ({first_line(exc)}); "
            "from Python, pass check_observations= or load the agent with PPO.load(path, env=...)"
        ) from None
    distribution = agent.model.distribution
    try:
        if envs.single_observation_space != agent.observation_space or envs.single_action_space != agent.action_space:
            raise ValueError(f"the env {name!r} does not have the agent's observation and action spaces")
        obs, info = envs.reset(seed=seed)
        envs.action_space.seed(seed)
        mask_source = masking.detect_mask_source(envs, distribution, info)
        rng = np.random.default_rng(seed)
        autoreset = np.zeros(num_envs, dtype=bool)
        feeds, masks_seen, expected = [], [], []
        state: Any = None  # (a recurrent policy's: what agent.predict returns)
        starts = np.ones(num_envs, dtype=bool)
        for step in range(steps):
            masks = None
            if mask_source is not None:
                _, masks = mask_source.read(obs, info, autoreset, f"export check step {step}")
            feed = _as_feed(agent, obs)
            if agent.model.recurrent:
                feed[STATE_IN] = _state_before(agent, state, starts)
                action, state = agent.predict(obs, state, starts, deterministic=True, action_masks=masks)
                starts = autoreset  # the observation after an autoreset step begins an episode
            else:
                action = agent.act(obs, deterministic=True, action_masks=masks)
            if mask_source is not None and mask_source.kind == "observation":
                # the envs about to autoreset act on an all-true mask, not on their final state's
                assert masks is not None  # (read above)
                feed[masking.MASK_KEY] = masks.astype(feed[masking.MASK_KEY].dtype).reshape(
                    feed[masking.MASK_KEY].shape
                )
            elif masks is not None:
                masks_seen.append(masks.copy())
            feeds.append(feed)
            expected.append(
                [a.copy() for a in flat_actions(distribution, action)]
                + ([state.copy()] if agent.model.recurrent else [])
            )
            if mask_source is None and rng.random() < RANDOM_STEP_FRACTION:
                action = envs.action_space.sample()
            obs, _, terminated, truncated, info = envs.step(action)
            autoreset = np.logical_or(terminated, truncated)
    finally:
        envs.close()
    feed = {key: np.concatenate([f[key] for f in feeds]) for key in feeds[0]}
    if masks_seen:
        feed[masking.MASK_KEY] = np.concatenate(masks_seen)
    return CheckData(
        feed=feed,
        expected=[np.concatenate(column) for column in zip(*expected, strict=False)],
        source=f"{name}, {num_envs} envs x {steps} steps, seed {seed}",
        mask_input=bool(masks_seen),
    )


def check_data_from(agent, check_observations: Any, check_masks: Any = None) -> CheckData:
    """``CheckData`` for observations given by the caller (a batch, in the env's structure), with
    masks for an env that gives them outside its observation."""
    feed = _as_feed(agent, check_observations)
    count = len(next(iter(feed.values())))
    states = []
    if agent.model.recurrent:  # each observation as an episode's first
        starts = np.ones(count, dtype=bool)
        feed[STATE_IN] = _state_before(agent, None, starts)
        expected, state = agent.predict(check_observations, None, starts, deterministic=True, action_masks=check_masks)
        states = [state.reshape(count, -1)]
    else:
        expected = agent.act(check_observations, deterministic=True, action_masks=check_masks)
    if check_masks is not None:
        feed[masking.MASK_KEY] = masking.as_masks(check_masks, count, agent.model.distribution, "check_masks")
    return CheckData(
        feed, flat_actions(agent.model.distribution, expected) + states, "given observations", check_masks is not None
    )


def _state_before(agent, state: np.ndarray | None, starts: np.ndarray) -> np.ndarray:
    """The state ``predict`` starts from, as the graph's ``state_in``: zeros where an episode starts."""
    count = len(starts)
    state = np.zeros((count, agent.model.state_size), dtype=np.float32) if state is None else state.copy()
    state[starts] = 0.0
    return state


def _as_feed(agent, obs: Any) -> dict[str, np.ndarray]:
    """Raw observations as the graph's observation inputs (a batch: one observation gets one)."""
    batch, _ = observations.as_batch(obs, agent.observation_space)
    ports = graph_inputs(agent, mask_input=False)
    if not isinstance(batch, dict):
        return {"obs": np.ascontiguousarray(batch, dtype=ports[0].dtype)}
    return {port.name: np.ascontiguousarray(batch[port.name], dtype=port.dtype) for port in ports}


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def require_onnx() -> tuple[Any, Any]:
    """The ``onnx`` and ``onnxruntime`` modules, or a one-line error naming the extra."""
    modules = []
    for name in ("onnx", "onnxruntime"):
        try:
            modules.append(__import__(name))
        except ImportError:
            raise ValueError(f"exporting needs {name}, which is not installed: {_INSTALL_HINT}") from None
    return modules[0], modules[1]


def export_onnx(
    agent,
    path: str | os.PathLike,
    *,
    check_observations: Any = None,
    check_masks: Any = None,
    check_steps: int = CHECK_STEPS,
    check_envs: int = CHECK_ENVS,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    opset: int = OPSET,
) -> ExportResult:
    """Write ``agent``'s deterministic policy, observation normalization included, as an ONNX
    graph at ``path``, after checking it with onnxruntime against ``agent.act(obs, deterministic=True)``.

    The check runs on ``check_observations`` (a batch of raw observations as the env returns them,
    with ``check_masks`` if the env gives action masks outside its observation), or by default on
    ``check_envs`` copies of the agent's env stepped ``check_steps`` times from ``seed``. Discrete
    actions must be identical and continuous ones within ``tolerance``; otherwise
    ``ExportCheckError`` is raised and nothing is written (an existing file is left as it was).
    """
    if hasattr(agent, "learners"):  # (clippo.multiagent's agent: a graph per policy group)
        raise ValueError("a multi-agent agent has a policy per group: export it with export_policies(agent, path)")
    onnx, onnxruntime = require_onnx()
    path = _checked_output_path(path)
    for label, value in (("check_steps", check_steps), ("check_envs", check_envs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label}={value!r} is invalid: it must be an integer >= 1")
    with precision.fp32_passes(agent.model):  # (ONNX graphs are fp32, whatever the agent trains in)
        if check_observations is None:
            data = collect_check_data(agent, check_steps, check_envs, seed)
        else:
            data = check_data_from(agent, check_observations, check_masks)
        inputs = graph_inputs(agent, data.mask_input)
        outputs = policy_outputs(agent)
        policy = DeterministicPolicy(agent, data.mask_input)
        example = tuple(torch.from_numpy(np.ascontiguousarray(data.feed[port.name][:2])) for port in inputs)
        # a new file of its own (mkstemp: created exclusively, never through a link), renamed into place
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _trace(policy, example, tmp, inputs, outputs, opset)
            onnx.checker.check_model(str(tmp))
            check = check_parity(onnxruntime, tmp, data, outputs, tolerance)
            if not check.passed:
                raise ExportCheckError(f"export check failed: {check.summary()}; {path} was not written")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return ExportResult(path, inputs, outputs, check, opset)


def _checked_output_path(path: str | os.PathLike) -> Path:
    """``path`` if a file can be written there; a one-line error before any work otherwise."""
    from clippo.core.safety import refuse_symlink

    path = refuse_symlink(path)  # never written through a link (clippo.core.safety)
    if path.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: it is a directory (give a file name such as policy.onnx)")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: the directory {str(path.parent)!r} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"cannot write {str(path)!r}: the directory {str(path.parent)!r} is not writable")
    return path


def _trace(policy: nn.Module, example: tuple, path: Path, inputs: list[Port], outputs: list[Port], opset: int) -> None:
    names = [port.name for port in inputs + outputs]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript-based exporter is deprecated in favour of the one that needs onnxscript;
            # tracer warnings are about constants (bounds, sizes) that are constants indeed
            warnings.simplefilter("ignore")
            torch.onnx.export(
                policy,
                example,
                str(path),
                dynamo=False,
                input_names=[port.name for port in inputs],
                output_names=[port.name for port in outputs],
                dynamic_axes={name: {0: "batch"} for name in names},
                opset_version=opset,
            )
    except Exception as exc:  # an encoder op without an ONNX counterpart, most likely
        raise ValueError(f"the policy could not be exported to ONNX: {first_line(exc)[:300]}") from None


def check_parity(onnxruntime, path: Path, data: CheckData, outputs: list[Port], tolerance: float) -> ParityCheck:
    """Run the graph with onnxruntime on the check data (as one batch, and its first observation
    alone, which exercises the dynamic batch axis) and compare with ``agent.act``'s actions."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, data.feed)
    first = session.run(None, {name: value[:1] for name, value in data.feed.items()})
    count = len(data.expected[0])
    same = np.ones(count, dtype=bool)
    largest, discrete = None, False
    for port, actual, single, wanted in zip(outputs, got, first, data.expected, strict=False):
        if actual.shape != wanted.shape or single.shape != wanted[:1].shape:
            raise ExportCheckError(
                f"export check failed: output {port.name!r} has shape {actual.shape}, agent.act gave {wanted.shape}"
            )
        if np.issubdtype(np.dtype(port.dtype), np.floating):
            difference = max(
                float(np.max(np.abs(actual - wanted), initial=0.0)), float(np.max(np.abs(single - wanted[:1])))
            )
            largest = difference if largest is None else max(largest, difference)
        else:
            discrete = True
            same &= (actual == wanted).reshape(count, -1).all(axis=1)
            same[0] &= bool(np.array_equal(single, wanted[:1]))
    return ParityCheck(count, data.source, int(same.sum()) if discrete else None, largest, tolerance)


def describe(result: ExportResult) -> str:
    """Two lines for ``clippo export``: what was written, and the check."""
    return (
        f"wrote {result.path} (ONNX opset {result.opset}): inputs {', '.join(p.describe() for p in result.inputs)}; "
        f"outputs {', '.join(p.describe() for p in result.outputs)}\n"
        f"check passed: {result.check.summary()}"
    )


# ---------------------------------------------------------------------------------------------
# multi-agent runs: one graph per policy group
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupView:
    """What the graph of one policy group of a multi-agent agent is built from, in the shape the
    single-agent functions above read (``graph_inputs``, ``DeterministicPolicy``): the group's
    policy observation (its action mask split off into an ``action_mask`` input, the agent
    one-hot of ``agent_id_feature`` included), its model and its frozen normalization."""

    observation_space: spaces.Space
    model: nn.Module
    obs_normalizer: Any
    #: a centralized critic's input space (the graph steps its recurrent core on zeros); None: local
    critic_space: spaces.Box | None

    @classmethod
    def of(cls, learner) -> GroupView:
        return cls(learner.spec.policy_space, learner.model, learner.obs_normalizer, learner.critic_space)


class _CheckDone(Exception):
    """Ends the check's episodes once it has its observations."""


def _random_action(space: spaces.Space, mask: np.ndarray | None, rng: np.random.Generator) -> Any:
    """A uniformly random action (a legal one where the observation carries a mask)."""
    if mask is not None and isinstance(space, spaces.Discrete):
        return int(rng.choice(np.flatnonzero(mask.reshape(-1)))) + int(space.start)
    return space.sample()


def _stack_actions(actions: list) -> Any:
    """Per-agent env actions as one batch in the action space's structure (what ``flat_actions`` reads)."""
    first = actions[0]
    if isinstance(first, dict):
        return {key: _stack_actions([a[key] for a in actions]) for key in first}
    if isinstance(first, tuple):
        return tuple(_stack_actions([a[i] for a in actions]) for i in range(len(first)))
    return np.stack([np.asarray(a) for a in actions])


def collect_group_check_data(
    agent, steps: int = CHECK_STEPS, num_envs: int = CHECK_ENVS, seed: int = 0
) -> dict[str, CheckData]:
    """Step ``num_envs`` copies of a multi-agent agent's env for ``steps`` env steps, every agent
    choosing by ``agent.act_batch`` (deterministic; a random legal action is played instead at a
    ``RANDOM_STEP_FRACTION`` of the moves, so that the observations also cover states the
    policies do not visit), keeping each observation with the action and (recurrent) state the
    agent gave for it: ``CheckData`` per policy group."""
    from clippo.multiagent.evaluation import play_episodes

    rng = np.random.default_rng(seed)
    for space in agent.env_info.action_spaces.values():
        space.seed(seed)
    rows: dict[int, list[tuple[str, Any, Any, Any, Any]]] = {gi: [] for gi in range(len(agent.learners))}
    carried: dict[tuple[int, str], Any] = {}
    calls = [0]

    def choose(due, seats):
        if calls[0] >= steps:
            raise _CheckDone
        calls[0] += 1
        before = [carried.get((c, name)) for c, name, _ in due]
        actions, states = agent.act_batch(
            [(name, obs) for _, name, obs in due], True, before if agent.recurrent else None
        )
        played = []
        for (c, name, obs), action, old, new in zip(due, actions, before, states, strict=True):
            gi, maker = agent.makers[name]
            rows[gi].append((name, obs, action, old, new))
            carried[(c, name)] = new
            if rng.random() < RANDOM_STEP_FRACTION:
                action = _random_action(agent.env_info.action_spaces[name], maker.split(obs)[1], rng)
            played.append(action)
        return played

    def episode_over(c):
        for key in [key for key in carried if key[0] == c]:
            del carried[key]

    try:
        play_episodes(agent, steps * num_envs, seed, choose, num_envs, on_episode_end=episode_over)
    except _CheckDone:
        pass
    source = f"{agent.config.env_id}, {num_envs} env copies x {steps} steps, seed {seed}"
    return {
        learner.spec.name: _group_check_data(agent, gi, rows[gi], source) for gi, learner in enumerate(agent.learners)
    }


def _group_check_data(agent, gi: int, rows: list, source: str) -> CheckData:
    learner = agent.learners[gi]
    if not rows:
        raise ValueError(
            f"the export check saw no move of policy group {learner.spec.name!r} (agents "
            f"{', '.join(learner.spec.agents)}): raise --check-steps"
        )
    maker = agent.makers[rows[0][0]][1]
    obs, masks = maker.batch([row[0] for row in rows], [row[1] for row in rows])
    view = GroupView.of(learner)
    ports = graph_inputs(view, mask_input=masks is not None)
    if isinstance(obs, dict):
        feed = {port.name: np.ascontiguousarray(obs[port.name], dtype=port.dtype) for port in ports if port.name in obs}
    else:
        feed = {"obs": np.ascontiguousarray(obs, dtype=ports[0].dtype)}
    if masks is not None:
        feed[masking.MASK_KEY] = np.ascontiguousarray(masks.reshape(len(rows), -1), dtype=bool)
    expected = flat_actions(learner.model.distribution, _stack_actions([row[2] for row in rows]))
    if learner.model.recurrent:
        size = learner.model.state_size
        feed[STATE_IN] = np.stack(
            [
                np.zeros(size, np.float32) if row[3] is None else np.asarray(row[3], np.float32).reshape(size)
                for row in rows
            ]
        )
        expected.append(np.stack([np.asarray(row[4], np.float32).reshape(size) for row in rows]))
    return CheckData(feed, expected, source, masks is not None)


def group_file(path: str | os.PathLike, group: str) -> Path:
    """Where ``export_policies`` writes a group's graph: ``policy.onnx`` -> ``policy_<group>.onnx``."""
    path = Path(path)
    safe = re.sub(r"[^\w.-]", "_", group)  # (a group name a user chose may hold a path separator)
    return path.with_name(f"{path.stem}_{safe}{path.suffix or '.onnx'}")


def export_policies(
    agent,
    path: str | os.PathLike,
    *,
    check_steps: int = CHECK_STEPS,
    check_envs: int = CHECK_ENVS,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    opset: int = OPSET,
) -> dict[str, ExportResult]:
    """Write each policy group of a multi-agent (PettingZoo) agent as its own ONNX graph, at
    ``group_file(path, group)`` (``policy.onnx`` -> ``policy_shared.onnx``,
    ``policy_speaker.onnx``...), after checking every graph with onnxruntime against
    ``agent.act`` on ``check_envs`` env copies stepped ``check_steps`` times from ``seed``.

    A graph's inputs are its group's policy observation (``obs``, or one input per field of a
    Dict), a bool ``action_mask`` where the env's observations carry one, and ``state_in`` for a
    recurrent policy; its outputs are those of a single-agent graph. If any group's check fails,
    ``ExportCheckError`` is raised and no file is written."""
    onnx, onnxruntime = require_onnx()
    for label, value in (("check_steps", check_steps), ("check_envs", check_envs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label}={value!r} is invalid: it must be an integer >= 1")
    targets = {
        learner.spec.name: _checked_output_path(group_file(path, learner.spec.name)) for learner in agent.learners
    }
    if len(set(targets.values())) < len(targets):
        raise ValueError(f"the policy groups {', '.join(targets)} would share a file name: rename the groups")
    with precision.fp32_passes(*(learner.model for learner in agent.learners)):
        datas = collect_group_check_data(agent, check_steps, check_envs, seed)
        results: dict[str, ExportResult] = {}
        temporary: list[tuple[Path, Path]] = []
        try:
            for learner in agent.learners:
                name, target, data = learner.spec.name, targets[learner.spec.name], datas[learner.spec.name]
                view = GroupView.of(learner)
                inputs = graph_inputs(view, data.mask_input)
                outputs = policy_outputs(view)
                fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
                os.close(fd)
                temporary.append((Path(tmp_name), target))
                example = tuple(torch.from_numpy(np.ascontiguousarray(data.feed[port.name][:2])) for port in inputs)
                _trace(DeterministicPolicy(view, data.mask_input), example, Path(tmp_name), inputs, outputs, opset)
                onnx.checker.check_model(tmp_name)
                check = check_parity(onnxruntime, Path(tmp_name), data, outputs, tolerance)
                if not check.passed:
                    raise ExportCheckError(
                        f"export check of policy group {name!r} failed: {check.summary()}; no file was written"
                    )
                results[name] = ExportResult(target, inputs, outputs, check, opset)
            for tmp, target in temporary:  # (every group passed: only now is any file replaced)
                os.replace(tmp, target)
        finally:
            for tmp, _ in temporary:
                tmp.unlink(missing_ok=True)
        return results

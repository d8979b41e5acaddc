"""Observation encoders: the network part that turns an observation batch into features.

Chosen from the observation space (``make_encoder``):

- ``MLPEncoder``: vectors (``Box``, one-hot ``Discrete``/``MultiDiscrete``, ``MultiBinary``),
  flattened, through tanh, ReLU or GELU hidden layers;
- ``NatureCNN`` (Mnih et al. 2015): images of 36 pixels a side or more (Atari's 84x84 frames);
- ``MinAtarCNN`` (Young & Tian 2019): small grids such as MinAtar's 10x10xC or MiniGrid's 7x7x3;
- ``CombinedEncoder``: ``Dict``/``Tuple`` observations, one encoder per field (a CNN for image
  fields, flattening for the rest), concatenated, then an MLP;
- a user's ``torch.nn.Module``, built as ``Class(observation_space, **encoder_kwargs)`` from an
  importable ``"module:Class"`` name (or given as a class, factory or instance from Python).

An image is a 3-D ``Box`` of uint8 or bool; its channels are the first axis when that is the
smaller of the first and last (``(4, 84, 84)``), the last axis otherwise (``(84, 84, 3)``,
``(10, 10, 4)``). uint8 pixels are scaled by 1/255 inside the encoder, so buffers keep uint8.
Every encoder has ``output_size``, the width of its features.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Iterable
from typing import Any, TypeGuard, cast

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.nn import functional as F

from clippo.core import observations
from clippo.core.errors import first_line

#: the MLP hidden layers' activations by name (GELU, exact erf form as torch.nn.GELU: RL-Zoo's CarRacing heads)
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": F.gelu}
#: names ``make_encoder`` takes besides ``"module:Class"``
ENCODER_KINDS = ("auto", "mlp", "cnn")
#: an image this small on its short side goes to ``MinAtarCNN`` (Nature CNN needs at least 36)
NATURE_CNN_MIN_SIDE = 36


def layer(in_features: int, out_features: int, gain: float) -> nn.Linear:
    """A linear layer with orthogonal weights of the given gain and zero bias (PPO's usual init)."""
    linear = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


def conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    """A convolution with orthogonal weights (gain sqrt(2), for ReLU) and zero bias."""
    module = nn.Conv2d(in_channels, out_channels, kernel, stride)
    nn.init.orthogonal_(module.weight, math.sqrt(2))
    assert module.bias is not None  # nn.Conv2d has a bias unless told bias=False
    nn.init.zeros_(module.bias)
    return module


def is_image(space: spaces.Space) -> TypeGuard[spaces.Box]:
    """A 3-D Box of uint8 or bool values: a picture or a grid of feature planes."""
    return isinstance(space, spaces.Box) and len(space.shape) == 3 and space.dtype in (np.uint8, np.bool_)


def channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 3-D image shape is HWC (channels the smaller of the first and last axis)."""
    return shape[-1] <= shape[0]


def flat_size(space: spaces.Space) -> int:
    """Width of a plain space's flattened, one-hot encoded input."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    assert space.shape is not None  # Box and MultiBinary have one
    return int(np.prod(space.shape))


def flatten_input(x: torch.Tensor, space: spaces.Space) -> torch.Tensor:
    """A plain space's batch as float32 rows: Box and MultiBinary flattened, Discrete and
    MultiDiscrete one-hot (a Discrete space's ``start`` subtracted). A Discrete batch given as
    float rows (2-D: its indices are 1-D) is one-hot already, as the fast path stores it."""
    if isinstance(space, spaces.Discrete):
        if x.dim() == 2 and x.is_floating_point():
            return x
        index = x.long() - int(space.start) if space.start else x.long()
        # The rows of F.one_hot(index).float(), scattered into zeros: one kernel instead of
        # one_hot's range-check reductions and the cast (3-5 us less per call at rollout sizes).
        return torch.zeros((index.shape[0], int(space.n)), device=x.device).scatter_(1, index.reshape(-1, 1), 1.0)
    if isinstance(space, spaces.MultiDiscrete):
        x = x.reshape(x.shape[0], -1).long() - torch.as_tensor(space.start.reshape(-1), device=x.device)
        return torch.cat([F.one_hot(x[:, i], int(n)) for i, n in enumerate(space.nvec.reshape(-1))], dim=1).float()
    return x.reshape(x.shape[0], -1).float()


def mlp_layers(in_features: int, hidden_sizes: list[int]) -> nn.ModuleList:
    """Hidden layers of an MLP, orthogonal init with gain sqrt(2)."""
    layers = nn.ModuleList()
    for width in hidden_sizes:
        layers.append(layer(in_features, width, math.sqrt(2)))
        in_features = width
    return layers


def run_layers(x: torch.Tensor, layers: nn.ModuleList, activation) -> torch.Tensor:
    """``activation(linear(x))`` through each layer, applied as functions: a module call costs a
    few microseconds of Python, as much as the product itself at PPO's MLP sizes."""
    for linear in cast("Iterable[nn.Linear]", layers):  # mlp_layers' nn.Linear layers
        x = activation(F.linear(x, linear.weight, linear.bias))
    return x


class MLPEncoder(nn.Module):
    """A plain space flattened (one-hot for discrete ones) through an MLP's hidden layers."""

    def __init__(self, space: spaces.Space, hidden_sizes: list[int], activation: str = "tanh") -> None:
        super().__init__()
        self.space = space
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]
        self.input_size = flat_size(space)
        self.layers = mlp_layers(self.input_size, hidden_sizes)
        self.output_size = hidden_sizes[-1]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return run_layers(flatten_input(obs, self.space), self.layers, self.activation)


class _ImageEncoder(nn.Module):
    """Shared by the CNNs: layout to NCHW and uint8 scaling, then ``self.net``."""

    net: nn.Module  # set by each subclass
    output_size: int

    def __init__(self, space: spaces.Box) -> None:
        super().__init__()
        if len(space.shape) != 3:
            raise ValueError(f"observation space {space} is not an image: a CNN encoder needs a 3-D Box (HWC or CHW)")
        self.hwc = channels_last(space.shape)
        self.chw = (space.shape[2], space.shape[0], space.shape[1]) if self.hwc else tuple(space.shape)
        self.scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0

    def _flat_width(self, features: nn.Module) -> int:
        with torch.no_grad():
            return int(features(torch.zeros(1, *self.chw)).shape[1])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # Channels-last memory (NHWC strides) is what oneDNN's CPU convolutions run fastest on:
        # an HWC batch viewed as NCHW already has it, a CHW one is converted (docs/fast-path.md).
        x = obs.permute(0, 3, 1, 2) if self.hwc else obs.contiguous(memory_format=torch.channels_last)
        x = x.float()
        if self.scale != 1.0:
            x = x.mul_(self.scale)  # (a fresh tensor: the float cast copied it)
        return self.net(x)


class NatureCNN(_ImageEncoder):
    """Mnih et al. (2015): 32 8x8 filters stride 4, 64 4x4 stride 2, 64 3x3 stride 1, 512 units."""

    def __init__(self, space: spaces.Box, features: int = 512) -> None:
        super().__init__(space)
        if min(self.chw[1:]) < NATURE_CNN_MIN_SIDE:
            raise ValueError(
                f"observation space {space} is too small for the Nature CNN (at least "
                f"{NATURE_CNN_MIN_SIDE}x{NATURE_CNN_MIN_SIDE}): use MinAtarCNN"
            )
        convs = nn.Sequential(
            conv(self.chw[0], 32, 8, 4),
            nn.ReLU(),
            conv(32, 64, 4, 2),
            nn.ReLU(),
            conv(64, 64, 3, 1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.net = nn.Sequential(convs, layer(self._flat_width(convs), features, math.sqrt(2)), nn.ReLU())
        self.output_size = features


class MinAtarCNN(_ImageEncoder):
    """Young & Tian (2019)'s MinAtar network: 16 3x3 filters stride 1, then 128 units."""

    def __init__(self, space: spaces.Box, channels: int = 16, features: int = 128) -> None:
        super().__init__(space)
        convs = nn.Sequential(conv(self.chw[0], channels, 3, 1), nn.ReLU(), nn.Flatten())
        self.net = nn.Sequential(convs, layer(self._flat_width(convs), features, math.sqrt(2)), nn.ReLU())
        self.output_size = features


def image_encoder(space: spaces.Box, **kwargs: Any) -> _ImageEncoder:
    """The built-in CNN for an image space's size; ``kwargs`` size it (MinAtarCNN: channels,
    features; NatureCNN: features)."""
    hwc = channels_last(space.shape)
    side = min(space.shape[:2] if hwc else space.shape[1:])
    cls = NatureCNN if side >= NATURE_CNN_MIN_SIDE else MinAtarCNN
    allowed = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "space")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"encoder_kwargs key {unknown[0]!r} is invalid for the built-in {cls.__name__}: it takes "
            f"{', '.join(allowed)}"
        )
    return cls(space, **kwargs)


class CombinedEncoder(nn.Module):
    """Dict/Tuple observations: a CNN per image field (``image_encoder``, sized by ``cnn_kwargs``:
    the run's encoder_kwargs), the other fields flattened, all concatenated (in the space's field
    order) and put through an MLP's hidden layers."""

    def __init__(
        self,
        space: spaces.Space,
        hidden_sizes: list[int],
        activation: str = "tanh",
        cnn: bool = True,
        cnn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        fields = observations.fields(space)
        if fields is None:
            raise ValueError(f"CombinedEncoder is for Dict and Tuple observation spaces, not {space}")
        self.fields = fields
        self.cnns = nn.ModuleDict()
        width = 0
        for key, sub in self.fields.items():
            if cnn and is_image(sub):
                encoder = image_encoder(sub, **(cnn_kwargs or {}))
                self.cnns[key.replace(".", "_")] = encoder
                width += encoder.output_size
            else:
                width += flat_size(sub)
        self.activation = ACTIVATIONS[activation]
        self.layers = mlp_layers(width, hidden_sizes)
        self.output_size = hidden_sizes[-1]

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for key, sub in self.fields.items():
            cnn = self.cnns[key.replace(".", "_")] if key.replace(".", "_") in self.cnns else None
            parts.append(cnn(obs[key]) if cnn is not None else flatten_input(obs[key], sub))
        return run_layers(torch.cat(parts, dim=1), self.layers, self.activation)


def import_encoder(name: str) -> type[nn.Module]:
    """The ``torch.nn.Module`` subclass named ``"module:Class"``; a one-line error when it cannot be
    found or is anything else (a function, ``subprocess:Popen``): a name is only ever resolved to
    a Module class before anything is called. Names read from files reach here only after
    ``clippo.core.safety``'s trust decision; factories are passed as objects from Python instead."""
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"encoder={name!r} cannot be imported ({type(exc).__name__}: {first_line(exc)})") from None
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise ValueError(
            f"encoder={name!r} is a {type(target).__name__}, not a torch.nn.Module subclass: a 'module:Class' name "
            "must name a Module class (pass a factory as an object from Python)"
        )
    return target


def encoder_name(encoder: Any) -> str | None:
    """The ``"module:Class"`` name that rebuilds a user encoder given as a class, factory or
    instance (what checkpoints record); None when it is not importable by name (a local class)."""
    target = encoder if isinstance(encoder, type) or not isinstance(encoder, nn.Module) else type(encoder)
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not module or "<locals>" in qualname or "<lambda>" in qualname:
        return None
    return f"{module}:{qualname}"


def output_size(encoder: nn.Module, space: spaces.Space) -> int:
    """An encoder's feature width: its ``output_size`` attribute, else measured on one observation."""
    size = getattr(encoder, "output_size", None)
    if isinstance(size, int) and size > 0:
        return size
    sample = observations.allocate(space, (1,))
    with torch.no_grad():
        features = encoder(observations.to_tensor(sample))
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != 1:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"encoder {type(encoder).__name__} returned {shape} for one observation: it must return [batch, features]"
        )
    width = int(features.shape[1])
    # Recorded on the user's module for later calls; nn.Module's stubs type such attributes Tensor | Module.
    encoder.output_size = width  # type: ignore[assignment]
    return width


def make_encoder(
    space: spaces.Space,
    kind: Any = "auto",
    hidden_sizes: list[int] | None = None,
    activation: str = "tanh",
    encoder_kwargs: dict[str, Any] | None = None,
    copy_of: nn.Module | None = None,
) -> nn.Module:
    """The encoder for ``space``: ``kind`` is auto, mlp, cnn, a ``"module:Class"`` name, or from
    Python a class/factory (called as ``f(space, **encoder_kwargs)``) or an ``nn.Module``
    (``copy_of`` gets a deep copy, for the second of two separate networks)."""
    hidden_sizes = hidden_sizes or [64, 64]
    if isinstance(kind, nn.Module):
        encoder = copy.deepcopy(kind) if copy_of is not None else kind
    elif isinstance(kind, str) and ":" in kind:
        encoder = import_encoder(kind)(space, **(encoder_kwargs or {}))
    elif callable(kind) and not isinstance(kind, str):
        encoder = kind(space, **(encoder_kwargs or {}))
    elif kind in ("auto", "cnn", "mlp"):
        return _builtin_encoder(space, kind, hidden_sizes, activation, encoder_kwargs or {})
    else:
        raise ValueError(f"encoder={kind!r} is invalid: choose auto, mlp, cnn, or an importable 'module:Class'")
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"encoder {kind!r} made a {type(encoder).__name__}: it must make a torch.nn.Module")
    output_size(encoder, space)
    return encoder


def _builtin_encoder(
    space: spaces.Space, kind: str, hidden_sizes: list[int], activation: str, kwargs: dict[str, Any]
) -> nn.Module:
    """A built-in encoder; ``kwargs`` (encoder_kwargs) size the built-in CNN of an image space, or
    of each image field of a Dict/Tuple space (the MLP's size is hidden_sizes: there they are
    unused, as when a config file's own encoder and its kwargs are replaced by an explicit
    ``encoder="mlp"``)."""
    parts = observations.fields(space)  # raises for unsupported spaces
    if parts is not None:
        return CombinedEncoder(space, hidden_sizes, activation, cnn=kind != "mlp", cnn_kwargs=kwargs)
    if kind == "cnn" or (kind == "auto" and is_image(space)):
        if not (isinstance(space, spaces.Box) and len(space.shape) == 3):
            raise ValueError(
                f"encoder='cnn' is invalid for observation space {space}: a CNN needs a 3-D Box (HWC or CHW)"
            )
        return image_encoder(space, **kwargs)
    return MLPEncoder(space, hidden_sizes, activation)

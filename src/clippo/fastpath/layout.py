"""What the fast path can copy, and how it wants the parameters laid out.

The fast path handles the built-in MLP encoders with nothing after them; these checks live here so
that the general network types (``clippo.networks``) know nothing of the fast path.
"""

from __future__ import annotations

from torch import nn

from clippo.networks.encoders import MLPEncoder
from clippo.networks.policy import ActorCritic

#: the activations the fast path's numpy MLP and hand-written gradient compute
FAST_PATH_ACTIVATIONS = ("tanh", "relu")


def is_plain_mlp(model: ActorCritic) -> bool:
    """Whether the encoders are the built-in MLP with nothing after them (no recurrent core, no
    head layers) and an activation of ``FAST_PATH_ACTIVATIONS``: what the fast path can copy."""
    return (
        not model.recurrent
        and not model.head_sizes
        and all(
            isinstance(encoder, MLPEncoder) and encoder.activation_name in FAST_PATH_ACTIVATIONS
            for encoder in (model.actor_features, model.critic_features)
        )
    )


def paired_parameters(model: ActorCritic) -> list[tuple[str, nn.Parameter]]:
    """Named parameters in the order ``FlatAdam`` lays them out in one vector. With two plain MLP
    encoders, each critic layer comes right after the same-shaped actor layer, so that both
    layers ``i`` form one ``[2, out, in]`` block (``clippo.fastpath.gradient``); any other model
    keeps ``named_parameters()``'s order."""
    named = dict(model.named_parameters())
    if model.shared or not is_plain_mlp(model):
        return list(named.items())
    order = []
    assert isinstance(model.actor_encoder, MLPEncoder)  # is_plain_mlp
    for i in range(len(model.actor_encoder.layers)):
        for kind in ("weight", "bias"):
            order += [f"actor_encoder.layers.{i}.{kind}", f"critic_encoder.layers.{i}.{kind}"]
    order += [name for name in named if name not in order]
    return [(name, named[name]) for name in order]

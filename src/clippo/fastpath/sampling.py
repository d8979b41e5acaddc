"""Action sampling on numpy arrays, for the fast rollout's numpy actor.

Each sampler is its distribution's ``sample`` (``clippo.networks.distributions``) on numpy arrays,
with the same noise: Gumbel noise for an argmax over logits, standard normal noise scaled by the
standard deviation for a Gaussian. ``tests/test_fastpath_numpy_mlp.py`` pins them to the torch ones.
The distributions listed here are exactly those the fast rollout takes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from clippo.networks.distributions import ActionDistribution, Categorical, DiagGaussian, MultiCategorical

#: ``sample(params, noise, std)``: actions from distribution parameters (noise None: the mode)
NumpySampler = Callable[[np.ndarray, "np.ndarray | None", "np.ndarray | None"], np.ndarray]


def _categorical(logits: np.ndarray, noise: np.ndarray | None, std: np.ndarray | None = None) -> np.ndarray:
    return (logits if noise is None else logits + noise).argmax(axis=-1)


def _multi_categorical(sizes: list[int]) -> NumpySampler:
    cuts = np.cumsum(sizes)[:-1]

    def sample(logits: np.ndarray, noise: np.ndarray | None, std: np.ndarray | None = None) -> np.ndarray:
        perturbed = logits if noise is None else logits + noise
        return np.stack([part.argmax(axis=-1) for part in np.split(perturbed, cuts, axis=-1)], axis=-1)

    return sample


def _gaussian(mean: np.ndarray, noise: np.ndarray | None, std: np.ndarray | None = None) -> np.ndarray:
    return mean if noise is None else mean + noise * std


def numpy_sampler(distribution: ActionDistribution) -> NumpySampler | None:
    """The numpy sampler of ``distribution``, or None if the fast rollout does not take it."""
    kind = type(distribution)
    if kind is Categorical:
        return _categorical
    if kind is MultiCategorical:
        assert isinstance(distribution, MultiCategorical)
        return _multi_categorical(distribution.sizes)
    if kind is DiagGaussian:
        return _gaussian
    return None

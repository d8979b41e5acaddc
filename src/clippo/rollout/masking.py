"""Invalid-action masks: where an env's masks come from, and reading and checking them each step.

An env gives the mask of its valid actions in one of three ways, looked for in this order:

- ``"observation"``: a Dict observation with an ``"action_mask"`` key (PettingZoo's convention).
  The key is not fed to the encoder: the policy sees the Dict without it or, when one key remains
  (PettingZoo's ``{"observation": ..., "action_mask": ...}``), that key's space itself
  (``policy_observation_space``), so a Box observation gets the MLP and an image the CNN;
- ``"method"``: an ``action_masks()`` method (sb3-contrib's MaskablePPO convention), reached
  through the vector env: a vector env's own ``action_masks()``, each sub-env's bound method for
  Gymnasium's sync vector env (looked up once), ``envs.call("action_masks")`` for the async one;
- ``"info"``: an ``"action_mask"`` entry in every step's and reset's info.

The source is detected once per run (``detect_mask_source``); an env with none of them gets no
mask, and clippo does nothing for masks at its steps. A mask holds one boolean per action of a
``Discrete(n)`` space, or per choice of each component of a ``MultiDiscrete(nvec)`` space,
concatenated (``sum(nvec)`` values), as in MaskablePPO; False marks an invalid action.

Which mask goes with which observation: a mask read after a step belongs to the observation that
step returned, and is used to act on it at the next step. With Gymnasium's next-step autoreset,
the step after an episode's end returns the new episode's first observation and mask (its action
is ignored and it is not a transition), so a final state's mask, which may well be all false
(a finished game), is never acted on: it is replaced by an all-true one, and an all-false mask is
an error only where the env will act on it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from clippo.core.errors import ActionMaskError
from clippo.networks.distributions import ActionDistribution

#: The Dict observation key (PettingZoo) and the info key holding a mask.
MASK_KEY = "action_mask"


def observation_has_mask(space: spaces.Space) -> bool:
    """Whether observations of ``space`` carry the action mask (a Dict with an ``action_mask`` key)."""
    return isinstance(space, spaces.Dict) and MASK_KEY in space.spaces


def policy_observation_space(space: spaces.Space) -> spaces.Space:
    """The observation space the encoder sees: ``space`` without its ``action_mask`` key (the one
    remaining key's space itself when only one remains)."""
    if not observation_has_mask(space):
        return space
    rest = {key: sub for key, sub in space.spaces.items() if key != MASK_KEY}
    if not rest:
        raise ValueError(
            f"observation space {space} holds only an {MASK_KEY!r}: there is nothing for the policy to observe"
        )
    return next(iter(rest.values())) if len(rest) == 1 else spaces.Dict(rest)


def split_observation(obs: Any, space: spaces.Space) -> tuple[Any, Any]:
    """An observation (or batch) of a space with an ``action_mask`` key, as (what the policy
    sees, the mask)."""
    rest = [key for key in space.spaces if key != MASK_KEY]
    policy_obs = obs[rest[0]] if len(rest) == 1 else {key: obs[key] for key in rest}
    return policy_obs, obs[MASK_KEY]


def first_invalid_row(masks: np.ndarray, starts: list[int]) -> int | None:
    """The first row of ``masks`` ``[rows, width]`` with no valid action (in some MultiDiscrete
    component, whose choices begin at ``starts``), or None."""
    if len(starts) == 1:
        ok = masks.any(axis=1)
    else:
        ok = np.logical_or.reduceat(masks, starts, axis=1).all(axis=1)
    if ok.all():
        return None
    return int(np.flatnonzero(~ok)[0])


def component_starts(distribution: ActionDistribution) -> list[int]:
    """Where each MultiDiscrete component's choices begin in a mask ([0] for Discrete)."""
    sizes = getattr(distribution, "sizes", [distribution.num_outputs])
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()


def as_masks(masks: Any, rows: int, distribution: ActionDistribution, what: str) -> np.ndarray:
    """``masks`` as a ``[rows, num_outputs]`` bool array; a one-line ValueError for a wrong size."""
    array = np.asarray(masks)
    width = distribution.num_outputs
    if array.size != rows * width:
        raise ValueError(
            f"{what} has shape {array.shape}: expected {rows} x {width} booleans "
            f"(one per action{', the components concatenated' if len(component_starts(distribution)) > 1 else ''})"
        )
    return array.reshape(rows, width).astype(bool, copy=False)


class MaskSource:
    """Reads a vector env's masks in the way ``kind`` says (see the module docstring)."""

    def __init__(
        self, kind: str, envs: VectorEnv, observation_space: spaces.Space, distribution: ActionDistribution
    ) -> None:
        self.kind = kind
        self.envs = envs
        self.num_envs = envs.num_envs
        self.observation_space = observation_space
        self.distribution = distribution
        self.starts = component_starts(distribution)
        self._read_method = None
        if kind == "method":
            if callable(getattr(envs, "action_masks", None)):
                self._read_method = envs.action_masks
            elif isinstance(envs, gym.vector.SyncVectorEnv):
                # Bound methods looked up once: get_wrapper_attr walks the wrapper chain each call.
                methods = [env.get_wrapper_attr("action_masks") for env in envs.envs]
                self._read_method = lambda: [method() for method in methods]
            else:
                self._read_method = lambda: envs.call("action_masks")

    def read(
        self, obs: Any, info: dict[str, Any], resetting: np.ndarray, where: str, out: np.ndarray | None = None
    ) -> tuple[Any, np.ndarray]:
        """(the observation batch the policy sees, the masks ``[num_envs, num_outputs]`` to act on
        it with) after a reset or a step, written into ``out`` if given (a rollout buffer's row).
        ``resetting``: the envs whose next step is an autoreset step (their masks are not used and
        may be all false). ``where`` names the step in errors."""
        if self.kind == "observation":
            obs, raw = split_observation(obs, self.observation_space)
        elif self.kind == "method":
            raw = self._read_method()
        else:
            if MASK_KEY not in info or not np.all(info.get(f"_{MASK_KEY}", True)):
                missing = np.flatnonzero(~np.asarray(info.get(f"_{MASK_KEY}", np.zeros(self.num_envs, bool))))
                env = f"env {int(missing[0])} (of {self.num_envs})" if len(missing) else "the env"
                raise ActionMaskError(f"{env} gave no info[{MASK_KEY!r}] at {where}, though it did at the start")
            raw = info[MASK_KEY]
        masks = np.empty((self.num_envs, self.distribution.num_outputs), dtype=bool) if out is None else out
        if isinstance(raw, np.ndarray) and raw.shape == masks.shape:
            masks[...] = raw  # (int8 masks are cast)
        else:  # lists from each env's method, or another shape of the right size
            try:
                masks[...] = as_masks(raw, self.num_envs, self.distribution, f"the env's action mask at {where}")
            except ValueError as exc:
                raise ActionMaskError(str(exc)) from None
        if resetting.any():
            masks[resetting] = True
        bad = first_invalid_row(masks, self.starts)
        if bad is not None:
            raise ActionMaskError(no_valid_action(bad, self.num_envs, where))
        return obs, masks


def no_valid_action(row: int, num_envs: int, where: str) -> str:
    """The one-line error for an all-false mask."""
    return f"env {row} (of {num_envs}) has no valid action at {where}: its action mask is all false"


def has_action_masks_method(envs: VectorEnv) -> bool:
    """Whether the vector env, or the envs in it, have an ``action_masks()`` method."""
    if callable(getattr(envs, "action_masks", None)):
        return True
    if isinstance(envs, gym.vector.SyncVectorEnv):
        env = envs.envs[0]
        return env.has_wrapper_attr("action_masks") and callable(env.get_wrapper_attr("action_masks"))
    if isinstance(envs, gym.vector.AsyncVectorEnv):
        return bool(envs.call("has_wrapper_attr", "action_masks")[0])
    return False


def detect_mask_source(
    envs: VectorEnv, distribution: ActionDistribution, reset_info: dict[str, Any]
) -> MaskSource | None:
    """How ``envs`` give action masks (``reset_info``: what their reset returned), or None when
    they give none. A one-line error when they give masks for an action space clippo cannot mask."""
    space = envs.single_observation_space
    if observation_has_mask(space):
        kind = "observation"
    elif has_action_masks_method(envs):
        kind = "method"
    elif MASK_KEY in reset_info:
        kind = "info"
    else:
        return None
    if not distribution.maskable:
        how = {"observation": f"an {MASK_KEY!r} observation key", "method": "an action_masks() method",
               "info": f"info[{MASK_KEY!r}]"}[kind]  # fmt: skip
        raise ValueError(
            f"the env gives action masks ({how}), but clippo masks only Discrete and MultiDiscrete action "
            f"spaces, not {' '.join(str(envs.single_action_space).split())}"
        )
    return MaskSource(kind, envs, space, distribution)

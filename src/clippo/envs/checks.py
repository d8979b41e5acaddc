"""Checks of a user's env against Gymnasium's contract before training, with one line naming the
env, the method and what was wrong (instead of a traceback from deep inside numpy or Gymnasium).

clippo's own checks come first (what it relies on: ``reset`` returns ``(obs, info)``, ``step``
returns five values, observations of their space's shape); Gymnasium's env checker
(``gymnasium.utils.env_checker.check_env``) follows for the rest of the contract.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from clippo.envs.families import check_env_id, family, split_env_id


class EnvContractError(ValueError):
    """An env breaks Gymnasium's contract (one line: the env, the method, what was wrong)."""


def check_env_source(
    source: str | Callable[[], gym.Env], env_modules: Iterable[str] = (), name: str = ""
) -> gym.Env | None:
    """Make one env of ``source`` (an id or a factory), reset and step it, and raise
    ``EnvContractError`` with one line where it breaks the contract. Atari and MinAtar ids are
    clippo's own pipelines and are not checked; an id whose env cannot be made is left to the
    vector env's construction, which reports it (a missing extra, say).

    Returns the env a factory made (open, to be used as the first training env: the factory is
    then called as often as without the check), or None."""
    if isinstance(source, str):
        bare = split_env_id(source)[1]
        if family(bare) is not None or bare.startswith("clippo/"):
            return None
        check_env_id(source, env_modules)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                env = gym.make(source, disable_env_checker=True)
        except Exception:  # (reported with its own line when the vector env is made)
            return None
        try:
            check_env_contract(env, name or source)
        finally:
            env.close()
        return None
    name = name or getattr(source, "__name__", "the env factory")
    if getattr(source, "shares_instance", False):  # (PPO(env): the instance is the training env itself)
        check_env_contract(source.instance, name)  # type: ignore[attr-defined]
        return None
    env = source()
    if not isinstance(env, gym.Env):
        raise EnvContractError(
            f"env {name!r}: the factory returned {type(env).__name__}, not a gymnasium.Env: it must return a new "
            "env, e.g. lambda: gymnasium.make('CartPole-v1')"
        )
    try:
        check_env_contract(env, name)
    except BaseException:
        env.close()
        raise
    return env


def check_env_contract(env: gym.Env, name: str) -> None:
    """clippo's checks, then Gymnasium's env checker, on one env (it is reset and stepped)."""
    for attribute in ("observation_space", "action_space"):
        if not isinstance(getattr(env, attribute, None), spaces.Space):
            raise EnvContractError(f"env {name!r}: {attribute} is not a gymnasium.spaces.Space")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Gymnasium's warnings about style; its assertions are the contract)
        result = _call(env.reset, name, "reset()", seed=0)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise EnvContractError(
                f"env {name!r}: reset() returned {_what(result)}: it must return a tuple (observation, info), "
                "e.g. return obs, {}"
            )
        obs, info = result
        _check_info(info, name, "reset()")
        check_observation(obs, env.observation_space, name, "reset()")
        try:
            result = env.step(env.action_space.sample())
        except Exception:
            # an env may refuse a random action (one its action mask rules out): training reports
            # what its step() raises with the env and step named (clippo.core.errors.EnvStepError)
            return
        if not (isinstance(result, tuple) and len(result) == 5):
            old = (
                " (the old Gym API: obs, reward, done, info)" if isinstance(result, tuple) and len(result) == 4 else ""
            )
            raise EnvContractError(
                f"env {name!r}: step() returned {_what(result)}{old}: it must return (observation, reward, "
                "terminated, truncated, info)"
            )
        obs, reward, terminated, truncated, info = result
        check_observation(obs, env.observation_space, name, "step()")
        if not np.isscalar(reward) or not isinstance(np.asarray(reward).item(), (int, float)):
            raise EnvContractError(f"env {name!r}: step() returned reward {_what(reward)}: it must be a number")
        for what, flag in (("terminated", terminated), ("truncated", truncated)):
            if not isinstance(flag, (bool, np.bool_)):
                raise EnvContractError(f"env {name!r}: step() returned {what}={_what(flag)}: it must be a bool")
        _check_info(info, name, "step()")
        from gymnasium.utils.env_checker import check_env

        try:
            check_env(env.unwrapped if env.unwrapped is not env else env, skip_render_check=True)
        except AssertionError as exc:
            if _raised_by_checker(exc):  # (not an assertion of the env's own, on a random action)
                message = " ".join(str(exc).split()) or "an assertion failed"
                raise EnvContractError(f"env {name!r}: Gymnasium's env checker: {message[:300]}") from None
        except Exception:  # (the env's own code refused the checker's random actions)
            pass
        env.reset(seed=0)  # (the checker leaves it mid-episode; the first user reset is ours anyway)


def _raised_by_checker(exc: BaseException) -> bool:
    """Whether an assertion failed in Gymnasium's checker itself rather than in the env's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "env_checker" in Path(frames[-1].filename).name


def _call(method: Callable[..., Any], name: str, what: str, *args: Any, **kwargs: Any) -> Any:
    try:
        return method(*args, **kwargs)
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise EnvContractError(f"env {name!r}: {what} raised {type(exc).__name__}: {detail[:200]}") from None


def _check_info(info: Any, name: str, what: str) -> None:
    if not isinstance(info, dict):
        raise EnvContractError(f"env {name!r}: {what} returned info {_what(info)}: it must be a dict (empty: {{}})")


def check_observation(obs: Any, space: spaces.Space, name: str, what: str, path: str = "observation") -> None:
    """An observation against its space's structure, shape and dtype kind (bounds are not
    checked: many envs leave them loose)."""
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, dict) or set(obs) != set(space.spaces):
            keys = sorted(obs) if isinstance(obs, dict) else _what(obs)
            raise EnvContractError(
                f"env {name!r}: {what} returned {path} {keys}: observation_space is a Dict of {sorted(space.spaces)}"
            )
        for key, sub in space.spaces.items():
            check_observation(obs[key], sub, name, what, f"{path}[{key!r}]")
        return
    if isinstance(space, spaces.Tuple):
        if not isinstance(obs, tuple) or len(obs) != len(space.spaces):
            raise EnvContractError(
                f"env {name!r}: {what} returned {path} {_what(obs)}: observation_space is a Tuple of "
                f"{len(space.spaces)}"
            )
        for index, sub in enumerate(space.spaces):
            check_observation(obs[index], sub, name, what, f"{path}[{index}]")
        return
    try:
        array = np.asarray(obs)
    except Exception:
        raise EnvContractError(f"env {name!r}: {what} returned {path} {_what(obs)}: not an array") from None
    if isinstance(space, spaces.Discrete):
        if array.shape != () or array.dtype.kind not in "iu":
            raise EnvContractError(
                f"env {name!r}: {what} returned {path} {_what(obs)}: a Discrete observation_space needs one integer"
            )
        return
    if space.shape is not None and array.shape != space.shape:
        raise EnvContractError(
            f"env {name!r}: {what} returned {path} of shape {array.shape}, but observation_space has shape "
            f"{space.shape}"
        )
    if space.dtype is not None and array.dtype.kind not in "biuf":
        raise EnvContractError(
            f"env {name!r}: {what} returned {path} of dtype {array.dtype}, observation_space's is {space.dtype}"
        )


def _what(value: Any) -> str:
    """A short description of a returned value for a message."""
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}" if len(text) <= 40 else type(value).__name__

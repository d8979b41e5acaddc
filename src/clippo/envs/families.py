"""Which family an env id belongs to, in one place: Atari, MinAtar, or a plain Gymnasium id.

The family decides an id's preprocessing (``clippo.envs.atari`` for Atari and MinAtar, the generic
knobs of ``clippo.envs.preprocessing`` for every other id), its preset (``clippo.config``) and
which optional package registers it. Every part of clippo asks ``family`` rather than matching
ids itself, so they cannot disagree.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable
from typing import Literal

import gymnasium as gym

#: Atari games with the standard pixel preprocessing: ``ALE/<Game>-v5`` and ``<Game>NoFrameskip-v4``.
#: Other ALE ids (``ALE/<Game>-ram-v5``, ``<Game>-v4``, ``<Game>Deterministic-v4``) are plain ids:
#: RAM observations or a frame skip of their own, so the pixel pipeline does not fit them.
_ATARI_ID = re.compile(r"^(ALE/[A-Za-z0-9]+-v5|[A-Za-z0-9]+NoFrameskip-v4)$")
#: Any id ale-py registers (needed to look such an id up at all).
_ALE_ID = re.compile(
    r"^(ALE/.+|[A-Za-z0-9]+(NoFrameskip|Deterministic)?-v[04]|[A-Za-z0-9]+-ram(NoFrameskip|Deterministic)?-v[04])$"
)
_MINATAR_ID = re.compile(r"^MinAtar/")

Family = Literal["atari", "minatar"]


def family(env_id: object) -> Family | None:
    """``"atari"`` or ``"minatar"`` for ids with a preprocessing and preset of their own, else None."""
    if not isinstance(env_id, str):
        return None
    if _ATARI_ID.match(env_id):
        return "atari"
    if _MINATAR_ID.match(env_id):
        return "minatar"
    return None


def is_atari(env_id: object) -> bool:
    """Whether ``env_id`` names an Atari game that gets the standard pixel preprocessing."""
    return family(env_id) == "atari"


def is_minatar(env_id: object) -> bool:
    """Whether ``env_id`` names a MinAtar game (``MinAtar/...``)."""
    return family(env_id) == "minatar"


def import_ale(env_id: str):
    """ale-py, its ids registered with Gymnasium; a one-line error naming the extra if missing."""
    try:
        import ale_py
    except ImportError:
        raise ValueError(f"environment {env_id!r} needs the atari extra: pip install 'clippo[atari]'") from None
    gym.register_envs(ale_py)
    return ale_py


#: a dotted Python module path (what ``--env-module`` and the ``module:`` prefix of an id name)
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def split_env_id(env_id: str) -> tuple[str | None, str]:
    """Gymnasium's ``module:EnvId`` form split into the module to import (None without a prefix)
    and the id Gymnasium registers."""
    module, colon, name = env_id.rpartition(":")
    return (module, name) if colon else (None, env_id)


def env_modules_of(env_id: str, env_modules: Iterable[str] = ()) -> list[str]:
    """Every module that must be imported before ``env_id`` can be made: ``env_modules``, then
    the id's own ``module:`` prefix (each once, in order)."""
    module = split_env_id(env_id)[0]
    names = [*env_modules, *([module] if module else [])]
    return list(dict.fromkeys(names))


def check_module_name(name: object, what: str = "env module") -> str:
    """A module name as the user or a file gives it: a dotted Python path; one-line ValueError
    otherwise."""
    if not isinstance(name, str) or len(name) > 256 or not _MODULE_PATH.fullmatch(name):
        raise ValueError(
            f"{what} {str(name)[:80]!r} is invalid: give an importable Python module path such as mypackage.envs"
        )
    return name


def import_env_modules(modules: Iterable[str], env_id: str | None = None) -> None:
    """Import each module (it registers its envs with Gymnasium when imported). The decision to
    import is the caller's: the user named them, or trusted the file that did (clippo.core.safety).
    A module in the working directory is found even when ``clippo`` runs as a console script,
    whose ``sys.path`` lacks the working directory, as ``python -m`` would have it."""
    for name in modules:
        check_module_name(name)
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name) or os.getcwd() in sys.path:
                _import_failed(name, env_id, exc)
            sys.path.append(os.getcwd())  # (appended: it never shadows an installed package)
            try:
                importlib.import_module(name)
            except Exception as again:
                _import_failed(name, env_id, again)
        except Exception as exc:
            _import_failed(name, env_id, exc)


def _import_failed(name: str, env_id: str | None, exc: BaseException) -> None:
    for_id = f" for environment {env_id!r}" if env_id else ""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise ValueError(
        f"cannot import env module {name!r}{for_id}: {type(exc).__name__}: {detail} (it must be importable from "
        "the working directory or an installed package)"
    ) from None


def ensure_registered(env_id: str, env_modules: Iterable[str] = ()) -> None:
    """Make ``env_id`` known to Gymnasium: import ``env_modules`` and the id's own ``module:``
    prefix (the user's own envs; the caller has made the trust decision), then register ale-py's,
    minatar's or clippo's own ids if ``env_id`` is one of theirs.

    Raises ValueError (one line, naming the id and the extra or module) if a package is missing;
    does nothing more for other ids.
    """
    import_env_modules(env_modules_of(env_id, env_modules), env_id)
    env_id = split_env_id(env_id)[1]
    if is_minatar(env_id):
        try:
            import minatar.gym
        except ImportError:
            raise ValueError(f"environment {env_id!r} needs the minatar extra: pip install 'clippo[minatar]'") from None
        if "MinAtar/Breakout-v1" not in gym.registry:  # registering twice warns about overriding
            minatar.gym.register_envs()
    elif env_id.startswith("clippo/"):
        import clippo.envs.toy  # noqa: F401  (registers them)
    elif _ALE_ID.match(env_id) and env_id not in gym.registry:
        try:
            import_ale(env_id)
        except ValueError:
            if is_atari(env_id):
                raise
            # a plain id that merely looks like an ALE one: gym.spec's own error follows


def check_env_id(env_id: str, env_modules: Iterable[str] = ()) -> None:
    """Raise ValueError with one line if Gymnasium does not know ``env_id`` (after importing the
    user's env modules and registering the ids of the package it belongs to, whose absence is a
    one-line error naming the extra)."""
    env_modules = list(env_modules)
    ensure_registered(env_id, env_modules)
    try:
        gym.spec(split_env_id(env_id)[1])
    except gym.error.Error as exc:
        missing = "doesn't exist" in str(exc) or "not found" in str(exc)  # (not a deprecated version)
        hint = (
            f" (an env of your own: name the module that registers it, as mymodule:{env_id} or with --env-module "
            "mymodule)"
            if missing and not env_modules and not split_env_id(env_id)[0]
            else ""
        )
        raise ValueError(f"unknown environment id {env_id!r}: {str(exc).splitlines()[0]}{hint}") from None

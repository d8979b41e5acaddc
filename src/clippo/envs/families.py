"""Which family an env id belongs to, in one place: Atari, MinAtar, or a plain Gymnasium id.

The family decides an id's preprocessing (``clippo.envs.atari`` for Atari and MinAtar, the generic
knobs of ``clippo.envs.preprocessing`` for every other id), its preset (``clippo.config``) and
which optional package registers it. Every part of clippo asks ``family`` rather than matching
ids itself, so they cannot disagree.
"""

from __future__ import annotations

import re
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


def ensure_registered(env_id: str) -> None:
    """Register ale-py's, minatar's or clippo's own ids with Gymnasium if ``env_id`` is one of theirs.

    Raises ValueError (one line, naming the id and the extra) if the package is missing; does
    nothing for other ids.
    """
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


def check_env_id(env_id: str) -> None:
    """Raise ValueError with one line if Gymnasium does not know ``env_id`` (after registering
    the ids of the package it belongs to, whose absence is a one-line error naming the extra)."""
    ensure_registered(env_id)
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"unknown environment id {env_id!r}: {str(exc).splitlines()[0]}") from None

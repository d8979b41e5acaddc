"""What clippo trusts in the files it is handed, and the one mechanism every command uses.

A checkpoint, a run directory, a config file or an Optuna study may come from someone else. They
are *data*: clippo reads numbers, strings, tensors and spaces from them and checks each before use.
What a file *names* that would import or call code (a user encoder ``module:Class``, an env id
with a ``module:`` prefix, and any later name of that kind) is only imported when the user opts in
(``trust_code=True`` in Python, ``--trust-code`` on the command line) or passes the object
themselves. Built-in names need no opt-in. See docs/trust.md for the full list.

This module holds the shared pieces: the trust decision and its one-line error, YAML without
aliases and with a size cap, checks of names and strings read from files, numpy's own bit
generators, and file writes that never follow a symbolic link.
"""

from __future__ import annotations

import os
import re
import reprlib
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from clippo.core.errors import ConfigError, UnsafePathError, UntrustedCodeError, first_line

#: what a user writes to opt in, in Python and on the command line
TRUST_ARGUMENT = "trust_code=True"
TRUST_FLAG = "--trust-code"
#: encoder names that are clippo's own (no import)
BUILTIN_ENCODERS = ("auto", "mlp", "cnn")
#: a config file or config.yaml larger than this is refused before parsing (a real one is ~3 KB)
MAX_CONFIG_BYTES = 256 * 1024
#: longest string value accepted from a file (env ids, encoder names, kwargs values)
MAX_STRING = 256
#: the most entries an ``encoder_kwargs`` mapping from a file may hold, and the longest list value
MAX_KWARGS = 32
MAX_LIST = 64
#: numpy's own bit generators: the only ones an env snapshot may name (never ``getattr(np.random, name)``)
BIT_GENERATORS = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}

# repr of values from files, bounded in depth and length (a shared-reference "billion laughs" list
# has a repr of 10**40 items)
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict, _SHORT_REPR.maxtuple = 3, 8, 8, 8
_SHORT_REPR.maxstring, _SHORT_REPR.maxother = 80, 80
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,99}")
# control characters, line and paragraph separators, and the invisible/bidirectional format
# characters that make text display as something else
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


# ---------------------------------------------------------------------------------------------
# the trust decision
# ---------------------------------------------------------------------------------------------
def require_trust(source: str, what: str, name: str, trust_code: bool, instead: str) -> None:
    """Raise ``UntrustedCodeError`` (one line) unless ``trust_code``: ``source`` (a file) names
    ``what`` (``name``), which would import code; ``instead`` says how to pass the object oneself."""
    if trust_code:
        return
    raise UntrustedCodeError(
        f"{source} wants clippo to import {what} {shown(name, MAX_STRING)}; clippo imports nothing a file names "
        "unless you opt in: "
        f"pass it yourself ({instead}), or trust the file ({TRUST_ARGUMENT} in Python, {TRUST_FLAG} on the command "
        "line)"
    )


def encoder_needs_import(name: str) -> bool:
    """Whether an encoder name from a file is a user's ``module:Class`` rather than a built-in."""
    return name not in BUILTIN_ENCODERS


def check_encoder_name(name: Any, source: str, trust_code: bool) -> None:
    """An encoder name read from a file: a built-in, or (opted in) a well-formed ``module:Class``."""
    if not isinstance(name, str) or (name not in BUILTIN_ENCODERS and not _is_import_path(name)):
        raise ConfigError(
            f"encoder={clean(name)!r} in {source} is invalid: choose auto, mlp, cnn, or a 'module:Class' name"
        )
    if encoder_needs_import(name):
        require_trust(
            source,
            "the encoder",
            name,
            trust_code,
            "PPO.load(path, encoder=MyEncoder) in Python, --encoder module:Class on the command line",
        )


def _is_import_path(name: str) -> bool:
    module, colon, attribute = name.partition(":")
    return (
        bool(colon)
        and len(name) <= MAX_STRING
        and bool(_MODULE_PATH.fullmatch(module))
        and bool(_MODULE_PATH.fullmatch(attribute))
    )


def env_id_needs_import(env_id: str) -> bool:
    """Whether Gymnasium would import a module to make ``env_id`` (``module:Name-v0``)."""
    return ":" in env_id


def check_env_id_text(env_id: Any, source: str) -> str:
    """An env id read from a file: a string of Gymnasium's id form, at most ``MAX_STRING`` long,
    without control characters; one-line ConfigError otherwise."""
    from gymnasium.envs.registration import ENV_ID_RE

    if (
        not isinstance(env_id, str)
        or not env_id
        or len(env_id) > MAX_STRING
        or _CONTROL.search(env_id)
        or not ENV_ID_RE.fullmatch(env_id)
    ):
        raise ConfigError(
            f"env_id={clean(env_id)!r} in {source} is invalid: it must be a Gymnasium id such as CartPole-v1 "
            "(letters, digits, '_', '-', '.', '/' and ':')"
        )
    return env_id


def check_env_id_from_file(env_id: Any, source: str, trust_code: bool, passed: list[str] | tuple[str, ...] = ()) -> str:
    """An env id from a file, checked as text; one that would import a module needs the opt-in,
    unless the user named that module themselves (``passed``)."""
    check_env_id_text(env_id, source)
    if env_id_needs_import(env_id) and env_id.rpartition(":")[0] not in passed:
        require_trust(
            source,
            "the environment module",
            env_id.rpartition(":")[0],
            trust_code,
            "PPO.load(path, env=...) or env_modules=[...] in Python, --env-module MODULE on the command line",
        )
    return env_id


def check_env_modules_from_file(
    modules: Any, source: str, trust_code: bool, passed: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """The ``env_modules`` a file names: a list of module paths; each one the user did not name
    themselves (``passed``: ``--env-module`` on this command line) needs the opt-in."""
    if not isinstance(modules, list) or len(modules) > MAX_LIST:
        raise ConfigError(f"env_modules={clean(modules)} in {source} is invalid: it must be a list of module names")
    for module in modules:
        if not isinstance(module, str) or len(module) > MAX_STRING or not _MODULE_PATH.fullmatch(module):
            raise ConfigError(f"env_modules entry {clean(module)!r} in {source} is invalid: it must be a module path")
        if module not in passed:
            require_trust(
                source,
                "the environment module",
                module,
                trust_code,
                "PPO.load(path, env=...) or env_modules=[...] in Python, --env-module MODULE on the command line",
            )
    return modules


# ---------------------------------------------------------------------------------------------
# data checks
# ---------------------------------------------------------------------------------------------
def clean(value: Any, limit: int = 80) -> str:
    """``value`` as text fit for a one-line message or a report: control characters replaced by
    '?', cut to ``limit`` characters."""
    text = value[: limit * 4] if isinstance(value, str) else _SHORT_REPR.repr(value)  # (bounded: never a full repr)
    text = _CONTROL.sub("?", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any, limit: int = 80) -> str:
    """``value`` as ``repr`` shows it (strings quoted), bounded and on one line: for messages."""
    return repr(clean(value, limit)) if isinstance(value, str) else clean(value, limit)


def check_text(value: str, what: str, limit: int = MAX_STRING) -> str:
    """A string from a file: at most ``limit`` characters and no control characters."""
    if len(value) > limit or _CONTROL.search(value):
        raise ConfigError(f"{what}={clean(value)!r} is invalid: at most {limit} characters, no control characters")
    return value


def check_key(key: Any, what: str) -> str:
    """A mapping key from a file (a Dict space's field, an encoder_kwargs name): a plain identifier
    (letters, digits, '_' and inner '-', starting with a letter or '_', at most 100 characters)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ConfigError(f"{what} {clean(key)!r} is invalid: it must be a plain identifier such as 'position'")
    return key


def check_flat_kwargs(kwargs: Any, what: str = "encoder_kwargs") -> dict[str, Any]:
    """``encoder_kwargs``: at most ``MAX_KWARGS`` identifier keys, each value a scalar (None, bool,
    int, float, short string) or a flat list of up to ``MAX_LIST`` of them."""
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{what}={clean(kwargs)} is invalid: it must be a mapping")
    if len(kwargs) > MAX_KWARGS:
        raise ConfigError(f"{what} is invalid: {len(kwargs)} entries, at most {MAX_KWARGS}")
    for key, value in kwargs.items():
        check_key(key, f"{what} key")
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > MAX_LIST:
            raise ConfigError(f"{what}[{key!r}] is invalid: a list of {len(value)} values, at most {MAX_LIST}")
        for item in items:
            if isinstance(item, str):
                check_text(item, f"{what}[{key!r}]")
            elif not (item is None or isinstance(item, (bool, int, float))):
                raise ConfigError(
                    f"{what}[{key!r}]={clean(value)} is invalid: values must be numbers, booleans, short strings, "
                    "none, or flat lists of them"
                )
    return kwargs


def bit_generator(name: Any) -> type:
    """numpy's bit generator class called ``name``; one of ``BIT_GENERATORS`` only."""
    if not isinstance(name, str) or name not in BIT_GENERATORS:
        raise ValueError(f"bit generator {clean(name)!r} is invalid: numpy's own are {', '.join(BIT_GENERATORS)}")
    return BIT_GENERATORS[name]


# ---------------------------------------------------------------------------------------------
# YAML and capped reads
# ---------------------------------------------------------------------------------------------
def read_capped_text(path: str | os.PathLike, limit: int = MAX_CONFIG_BYTES, what: str = "file") -> str:
    """A small text file (UTF-8), refused above ``limit`` bytes before anything is parsed."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{what} {str(path)!r} is larger than {limit // 1024} KB: it is not a clippo config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text: {first_line(exc)}") from None


def _no_alias_loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """PyYAML's safe loader refusing anchors and aliases: a few lines of aliases nested a few
        dozen deep expand to billions of nodes (the "billion laughs")."""

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise yaml.YAMLError("YAML anchors and aliases (&name, *name) are not accepted")
            return super().compose_node(parent, index)

    return NoAliasLoader


def load_yaml(text: str, source: str) -> Any:
    """YAML text parsed with the safe loader, without anchors or aliases, at most
    ``MAX_CONFIG_BYTES`` long; a one-line ConfigError naming ``source`` otherwise."""
    import yaml

    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_CONFIG_BYTES // 1024} KB: it is not a clippo config")
    try:
        return yaml.load(text, Loader=_no_alias_loader())  # (a SafeLoader subclass: plain data only)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {source}: {clean(first_line(exc), 200)}") from None


# ---------------------------------------------------------------------------------------------
# writing without following links
# ---------------------------------------------------------------------------------------------
def refuse_symlink(path: str | os.PathLike) -> Path:
    """``path``, unless it is a symbolic link: clippo writes files in place, never through a link
    (a run directory from someone else could point ``eval.json`` at ``~/.bashrc``)."""
    path = Path(path)
    if path.is_symlink():
        raise UnsafePathError(
            f"refusing to write {str(path)!r}: it is a symbolic link (to {clean(os.readlink(path), 120)!r}); "
            "clippo never writes through links: remove it, or use another directory"
        )
    return path


def check_run_dir(run_dir: str | os.PathLike, names: tuple[str, ...] = ()) -> None:
    """Refuse a run directory holding a symbolic link where clippo writes: ``names`` (default:
    every file and folder clippo writes there) and every entry of its checkpoints folder. The run
    directory itself may be a link (``runs/latest``): that is where the user pointed clippo."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for name in names or RUN_FILES:
        refuse_symlink(run_dir / name)
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        for entry in checkpoints.iterdir():
            refuse_symlink(entry)


#: what clippo writes inside a run directory (files and folders)
RUN_FILES = (
    ".lock",
    "config.yaml",
    "metrics.csv",
    "checkpoints",
    "tensorboard",
    "agent.pt",
    "eval.json",
    "best.pt",
    "best.json",
    "report.md",
    "report.png",
    "report.html",
    "policy.onnx",
    "curves.png",
)


def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically without following links: into a new temporary file
    beside it (created exclusively: ``O_EXCL`` never follows a link), then renamed over ``path``
    (a rename replaces a link, never its target); a symbolic link at ``path`` is refused."""
    path = refuse_symlink(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path) as f:
        f.write(payload)
    return path


class atomic_output:
    """``with atomic_output(path) as f:`` a binary file that becomes ``path`` (atomically, without
    following a link) when the block ends without an exception; removed otherwise."""

    def __init__(self, path: str | os.PathLike, suffix: str = ".tmp") -> None:
        self.path = refuse_symlink(path)
        self.suffix = suffix

    def __enter__(self) -> BinaryIO:
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=self.suffix, dir=self.path.parent)
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: object) -> None:
        try:
            if kind is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if kind is None:
                os.chmod(self.tmp, 0o644 & ~_umask())
                os.replace(self.tmp, self.path)
        finally:
            if os.path.lexists(self.tmp):
                os.unlink(self.tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_append(path: str | os.PathLike, newline: str | None = "") -> TextIO:
    """``path`` opened for appending text without following a link, and refused when it is not a
    regular file of its own (a hard link to another file, a device)."""
    path = refuse_symlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise UnsafePathError(f"refusing to write {str(path)!r}: it is not a regular file of its own (a hard link?)")
    return os.fdopen(fd, "a", newline=newline)


def open_lock(path: str | os.PathLike) -> int:
    """The lock file's descriptor: opened without following a link and refused unless it is a
    small regular file of its own (clippo writes its pid there and never truncates it)."""
    path = refuse_symlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1 or info.st_size > LOCK_SIZE:
        os.close(fd)
        raise UnsafePathError(
            f"refusing to use {str(path)!r} as the run's lock: it is not clippo's (a regular file of at most "
            f"{LOCK_SIZE} bytes); remove it"
        )
    return fd


#: the lock file holds the pid, space-padded to this width (overwritten in place, never truncated)
LOCK_SIZE = 32

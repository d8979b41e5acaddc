"""The errors clippo raises on purpose; each message is one line naming what is wrong."""

from __future__ import annotations


class ConfigError(ValueError):
    """A hyperparameter value, name or file that clippo cannot accept."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used."""


class RunDirInUseError(ValueError):
    """Another live process is training or resuming in the same run directory."""


class UntrustedCodeError(ValueError):
    """A file names code to import (an encoder, an env module) and the user has not opted in
    (``clippo.core.safety``)."""


class UnsafePathError(ValueError):
    """A place clippo would write is a symbolic link or not a plain file of its own (``clippo.core.safety``)."""


class EnvStepError(RuntimeError):
    """The environment raised inside ``step``; training stopped after checkpointing the last good update."""


class ActionMaskError(EnvStepError):
    """An env's action mask with no valid action, or of the wrong shape; training stopped as for ``EnvStepError``."""


class CheckpointWriteError(OSError):
    """A checkpoint or run file that could not be written (a full disk, say); the files written
    before it are intact."""


class ExportCheckError(ValueError):
    """An exported ONNX policy whose actions differ from ``agent.act``'s; nothing was written."""


class RankFailedError(RuntimeError):
    """Another process of a ``torch.distributed`` job ended or failed during an exchange; training
    stopped (rank 0 after checkpointing the last good update)."""


class NonFiniteError(RuntimeError):
    """A NaN or infinity in an observation, reward, loss or gradient (with nonfinite='stop')."""


class TrainingInterrupted(RuntimeError):
    """Training was stopped by a signal at an update boundary, after writing a checkpoint."""

    def __init__(self, message: str, checkpoint: str | None = None, signum: int | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        #: the signal that asked for the stop, if one did
        self.signum = signum


def first_line(exc: BaseException, default: str | None = None) -> str:
    """An exception's message cut to its first line, for one-line errors (``default``, else the
    exception's type name, when the message is empty)."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default

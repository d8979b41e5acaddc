"""Recurrent cores (LSTM, GRU): memory between the encoder and the heads, for partially observed tasks.

A core's state is one tensor ``[batch, state_size]`` (an LSTM's ``h`` and ``c`` side by side),
so that runners, buffers and checkpoints store it like any other array. It is reset to zeros
where an episode starts: ``starts[t, i]`` is True when observation ``t`` of env ``i`` is the first
of an episode.

Acting runs one step at a time (``RecurrentCore.step``). The update replays whole stored
sequences (``RecurrentCore.sequence``): each env's sequence is cut into pieces at episode starts,
the pieces are padded side by side and run in one fused ``nn.LSTM``/``nn.GRU`` call (the first
piece of each sequence from its stored initial state, the others from zeros), and the outputs
are put back in place. One fused call costs a few milliseconds however many episodes start
inside the sequences; stepping the cell through time, or one call per segment between starts,
costs several times more as soon as episodes are short (measurements: docs/recurrent.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: The recurrent cores clippo builds (``--recurrent``).
RECURRENT_KINDS = ("lstm", "gru")


@dataclass
class Pieces:
    """How ``[length, num_seq]`` steps are laid out as padded episode pieces ``[max_len, count]``.

    ``gather``: for each padded slot (time-major, ``[max_len * count]``), the flat step index
    (``t * num_seq + n``) it reads (padding reads step 0 and is never used); ``scatter``: for each
    flat step, its padded slot; ``first``: the piece each sequence's step 0 belongs to (it starts
    from the sequence's stored state, every other piece from zeros); ``reset_first``: the
    sequences whose step 0 starts an episode (their stored state is zeroed)."""

    gather: torch.Tensor
    scatter: torch.Tensor
    first: torch.Tensor
    reset_first: torch.Tensor
    max_len: int
    count: int


def episode_pieces(starts: np.ndarray, device: torch.device | str = "cpu") -> Pieces:
    """The piece layout of a ``[length, num_seq]`` array of episode starts."""
    length, num_seq = starts.shape
    begins = starts.copy()
    begins[0] = True  # every sequence's first step begins a piece
    seq, begin = np.nonzero(begins.T)  # ordered by sequence, then time
    next_begin = np.append(begin[1:], length)
    same_seq = np.append(seq[1:] == seq[:-1], False)
    lengths = np.where(same_seq, next_begin, length) - begin
    count, max_len = len(begin), int(lengths.max())
    offset = np.arange(max_len)[:, None]
    used = offset < lengths[None]
    flat = (begin[None] + offset) * num_seq + seq[None]
    scatter = np.empty(length * num_seq, dtype=np.int64)
    scatter[flat[used]] = (offset * count + np.arange(count)[None])[used]
    gather = np.where(used, flat, 0).reshape(-1)
    first = np.flatnonzero(begin == 0)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)  # noqa: E731
    reset_first = torch.from_numpy(starts[0].copy()).to(device)
    return Pieces(as_tensor(gather), as_tensor(scatter), as_tensor(first), reset_first, max_len, count)


class RecurrentCore(nn.Module):
    """An LSTM or GRU layer over encoder features. Orthogonal weights, zero biases (the LSTM's
    forget-gate bias too: the standard initialization of PPO's recurrent agents)."""

    def __init__(self, input_size: int, hidden_size: int, kind: str = "lstm") -> None:
        super().__init__()
        if kind not in RECURRENT_KINDS:
            raise ValueError(f"recurrent={kind!r} is invalid: choose one of {', '.join(RECURRENT_KINDS)}")
        self.kind = kind
        self.hidden_size = hidden_size
        self.output_size = hidden_size
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(input_size, hidden_size)
        for name, param in self.rnn.named_parameters():
            if name.startswith("weight"):
                nn.init.orthogonal_(param, 1.0)
            else:
                nn.init.zeros_(param)

    @property
    def state_size(self) -> int:
        """Width of this core's state: ``2 * hidden_size`` for an LSTM (h, c), ``hidden_size`` for a GRU."""
        return 2 * self.hidden_size if self.kind == "lstm" else self.hidden_size

    def _weights(self) -> tuple[torch.Tensor, ...]:
        rnn = self.rnn
        return rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0

    def step(
        self, features: torch.Tensor, state: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: outputs ``[batch, hidden]`` and the new state, the state first zeroed
        where ``starts`` (bool ``[batch]``). Runs the cell function on the layer's own weights
        (a fraction of a one-step ``nn.LSTM`` call)."""
        state = state.masked_fill(starts.unsqueeze(-1), 0.0)
        if self.kind == "lstm":
            h, c = torch.lstm_cell(features, tuple(state.split(self.hidden_size, dim=-1)), *self._weights())
            return h, torch.cat([h, c], dim=-1)
        h = torch.gru_cell(features, state, *self._weights())
        return h, h

    def sequence(self, features: torch.Tensor, initial_state: torch.Tensor, pieces: Pieces) -> torch.Tensor:
        """Outputs ``[length * num_seq, hidden]`` (flat, time-major) for features
        ``[length, num_seq, input]`` replayed from ``initial_state`` ``[num_seq, state_size]``,
        resetting at the episode starts that ``pieces`` was built from."""
        length, num_seq, width = features.shape
        padded = features.reshape(length * num_seq, width)[pieces.gather].reshape(pieces.max_len, pieces.count, width)
        state = initial_state.new_zeros(pieces.count, self.state_size)
        state = state.index_copy(0, pieces.first, initial_state.masked_fill(pieces.reset_first.unsqueeze(-1), 0.0))
        if self.kind == "lstm":
            h, c = state.split(self.hidden_size, dim=-1)
            out, _ = self.rnn(padded, (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
        else:
            out, _ = self.rnn(padded, state.unsqueeze(0).contiguous())
        return out.reshape(-1, self.hidden_size)[pieces.scatter]

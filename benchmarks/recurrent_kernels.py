#!/usr/bin/env python
"""Timings behind ``clippo.networks.recurrent``'s choices (docs/recurrent.md), one torch thread.

    python benchmarks/recurrent_kernels.py [--hidden 64] [--envs 8] [--repeats 50]

1. Acting, one step of ``envs`` observations: an ``nn.LSTM``/``nn.GRU`` call on a length-1
   sequence against the cell function (``torch.lstm_cell``/``torch.gru_cell``) on the layer's own
   weights, what ``RecurrentCore.step`` runs.
2. The update's replay of stored ``[length, envs]`` sequences with episode starts inside them,
   forward and backward: (a) clippo's one fused call on the episode pieces padded side by side
   (``RecurrentCore.sequence``), (b) the cell stepped through time with the state zeroed at
   starts (what a per-step loop costs), (c) one layer call per run of steps between starts
   (each env's segments in turn), (d) ``pack_padded_sequence`` of the pieces.
   Episodes are drawn with a mean length of ``short`` steps (many starts) and ``long`` (few).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import itertools

from clippo.networks.recurrent import RecurrentCore, episode_pieces

STRATEGIES = ("fused pieces (clippo)", "cell stepped", "one call per segment", "packed")


def timed(function, repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls (after two warm-up calls)."""
    function(), function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def random_starts(length: int, envs: int, mean_episode: float, rng: np.random.Generator) -> np.ndarray:
    return rng.random((length, envs)) < 1.0 / mean_episode


def replay_strategies(core: RecurrentCore, features: torch.Tensor, starts: np.ndarray, initial: torch.Tensor) -> dict:
    length, envs, _ = features.shape
    hidden = core.hidden_size
    pieces = episode_pieces(starts)

    def fused():
        core.sequence(features, initial, pieces).sum().backward()

    def stepped():
        state, outs = initial, []
        for t in range(length):
            out, state = core.step(features[t], state, torch.from_numpy(starts[t]))
            outs.append(out)
        torch.stack(outs).sum().backward()

    def split(state: torch.Tensor):
        return (state[:, :hidden], state[:, hidden:]) if core.kind == "lstm" else state

    def segments():
        total = 0.0
        for i in range(envs):
            bounds = [0, *np.flatnonzero(starts[1:, i]) + 1, length]
            state = initial[i : i + 1].masked_fill(torch.tensor(bool(starts[0, i])), 0.0)
            for begin, end in itertools.pairwise(bounds):
                if begin > 0:
                    state = torch.zeros_like(state)
                h0 = split(state)
                h0 = (
                    tuple(h.unsqueeze(0).contiguous() for h in h0)
                    if core.kind == "lstm"
                    else h0.unsqueeze(0).contiguous()
                )
                out, _ = core.rnn(features[begin:end, i : i + 1], h0)
                total = total + out.sum()
        total.backward()

    def packed():
        width = features.shape[-1]
        padded = features.reshape(length * envs, width)[pieces.gather].reshape(pieces.max_len, pieces.count, width)
        lengths = torch.zeros(pieces.count, dtype=torch.int64)
        slots = pieces.scatter % pieces.count
        lengths.scatter_add_(0, slots, torch.ones_like(slots))
        state = initial.new_zeros(pieces.count, core.state_size).index_copy(0, pieces.first, initial)
        sequence = pack_padded_sequence(padded, lengths, enforce_sorted=False)
        h0 = split(state)
        h0 = tuple(h.unsqueeze(0).contiguous() for h in h0) if core.kind == "lstm" else h0.unsqueeze(0).contiguous()
        out, _ = core.rnn(sequence, h0)
        out.data.sum().backward()

    return dict(zip(STRATEGIES, (fused, stepped, segments, packed), strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--short", type=float, default=10.0, help="mean episode length with many starts")
    parser.add_argument("--long", type=float, default=200.0, help="mean episode length with few starts")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(
        f"torch {torch.__version__}, 1 thread, hidden {args.hidden}, {args.envs} envs; "
        f"median ms of {args.repeats} calls\n"
    )

    print("| acting, one step | nn layer call | cell function (clippo) |\n| --- | --- | --- |")
    for kind in ("lstm", "gru"):
        core = RecurrentCore(args.hidden, args.hidden, kind)
        x, state = torch.randn(args.envs, args.hidden), torch.zeros(args.envs, core.state_size)
        starts = torch.zeros(args.envs, dtype=torch.bool)
        with torch.inference_mode():
            if kind == "lstm":
                h0 = (
                    state[:, : args.hidden].unsqueeze(0).contiguous(),
                    state[:, args.hidden :].unsqueeze(0).contiguous(),
                )
            else:
                h0 = state.unsqueeze(0).contiguous()
            layer = timed(lambda core=core, x=x, h0=h0: core.rnn(x.unsqueeze(0), h0), args.repeats * 10)
            cell = timed(
                lambda core=core, x=x, state=state, starts=starts: core.step(x, state, starts), args.repeats * 10
            )
        print(f"| {kind} | {layer * 1e3:.0f} µs | {cell * 1e3:.0f} µs |")

    print("\n| replay, forward + backward | length | mean episode | " + " | ".join(STRATEGIES) + " |")
    print("| --- " * (3 + len(STRATEGIES)) + "|")
    for kind in ("lstm", "gru"):
        for length in args.lengths:
            for episode in (args.short, args.long):
                core = RecurrentCore(args.hidden, args.hidden, kind)
                features = torch.randn(length, args.envs, args.hidden, requires_grad=True)
                initial = torch.randn(args.envs, core.state_size)
                starts = random_starts(length, args.envs, episode, rng)
                results = [timed(f, args.repeats) for f in replay_strategies(core, features, starts, initial).values()]
                print(f"| {kind} | {length} | {episode:.0f} | " + " | ".join(f"{r:.1f} ms" for r in results) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

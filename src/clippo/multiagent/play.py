"""``clippo play``: a person plays a two-player game against a trained agent in the terminal.

The board is printed from the person's observation: a ``(rows, columns, 2)`` board (PettingZoo's
classic games: plane 0 the observer's pieces, plane 1 the other's) as a grid of ``X`` (you) and
``O`` (the agent), anything else as its array; then the legal moves. A move is typed as its
action number; a move that is not a number or not legal is refused with a message and asked
again. The agent plays deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from clippo.multiagent.selfplay import game_result

if TYPE_CHECKING:
    from clippo.multiagent.agent import MultiAgentPPO


def board_text(observation: Any) -> str:
    """The board of a (policy part of an) observation as text."""
    board = np.asarray(observation)
    if board.ndim == 3 and board.shape[-1] == 2:
        rows = []
        for row in board:
            rows.append(" ".join("X" if cell[0] else "O" if cell[1] else "." for cell in row))
        return "\n".join(rows)
    return np.array2string(board, max_line_width=100)


def play_human(
    agent: MultiAgentPPO,
    human_seat: int = 0,
    seed: int | None = None,
    ask: Callable[[str], str] = input,
    show: Callable[[str], None] = print,
) -> str:
    """One game of the person (seat ``human_seat``: 0 moves first) against ``agent``; returns
    the person's result: win, draw or loss."""
    if agent.selfplay is None:
        raise ValueError(f"clippo play is for two-player games; {agent.config.env_id!r} is not one")
    seats = agent.selfplay.agents
    if human_seat not in (0, 1):
        raise ValueError(f"seat={human_seat} is invalid: choose 0 (moves first) or 1")
    human = seats[human_seat]
    maker = agent.makers[human][1]
    adapter = agent.new_adapter()
    returns = dict.fromkeys(seats, 0.0)
    try:
        acting = adapter.reset(seed)
        show(f"you are {human} (X); the agent is {seats[1 - human_seat]} (O)")
        over = False
        while not over:
            ((name, obs),) = acting.items()
            if name == human:
                board, mask = maker.split(obs)
                assert mask is not None  # self-play games carry action masks (MultiAgentPPO._make_selfplay)
                legal = np.flatnonzero(mask).tolist()
                show(board_text(board))
                action = _ask_move(legal, ask, show)
            else:
                action = agent.act({name: obs}, deterministic=True)[name]
                show(f"the agent plays {action}")
            outcomes, acting, over = adapter.step({name: action})
            for outcome in outcomes:
                returns[outcome.agent] += outcome.reward
                if outcome.agent == human and (outcome.terminated or outcome.truncated):
                    final, _ = maker.split(outcome.next_obs)
                    show(board_text(final))
    finally:
        adapter.close()
    result = game_result(returns[human])
    show({"win": "you win", "loss": "the agent wins", "draw": "a draw"}[result])
    return result


def _ask_move(legal: list[int], ask: Callable[[str], str], show: Callable[[str], None]) -> int:
    while True:
        text = ask(f"your move ({', '.join(map(str, legal))}): ").strip()
        try:
            move = int(text)
        except ValueError:
            show(f"{text!r} is not a move: type one of {', '.join(map(str, legal))}")
            continue
        if move in legal:
            return move
        show(f"move {move} is illegal here: type one of {', '.join(map(str, legal))}")

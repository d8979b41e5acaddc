"""A one-move-lookahead player for board games whose observations are two planes (the mover's
pieces, the opponent's) and an ``action_mask``, as PettingZoo's classic ``connect_four_v3`` and
``tictactoe_v3`` give them: it plays a winning move if one exists, else blocks a move with which
the opponent would win next, else a uniformly random legal move.

The board logic is rebuilt from the observation (PettingZoo envs cannot be copied to simulate a
move cheaply), so each game's rules are described here: its board shape, how an action picks a
cell (a column with gravity, or a cell index), and how many in a row win.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BoardRules:
    """A game on a ``rows x cols`` board where ``in_a_row`` pieces in a line win; ``gravity``:
    an action names a column and the piece falls to its lowest empty cell (connect four), else an
    action names a cell, row-major (tic-tac-toe)."""

    rows: int
    cols: int
    in_a_row: int
    gravity: bool

    def cell(self, occupied: np.ndarray, action: int) -> tuple[int, int] | None:
        """The cell ``action`` fills on a board whose filled cells are ``occupied``, None if it is full."""
        if self.gravity:
            empty = np.flatnonzero(~occupied[:, action])
            return (int(empty[-1]), action) if len(empty) else None  # row 0 is the top
        row, col = divmod(action, self.cols)
        return None if occupied[row, col] else (row, col)

    def wins(self, pieces: np.ndarray, row: int, col: int) -> bool:
        """Whether a piece at (row, col) added to ``pieces`` makes ``in_a_row`` in a line through it."""
        for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
            count = 1
            for sign in (1, -1):
                r, c = row + sign * dr, col + sign * dc
                while 0 <= r < self.rows and 0 <= c < self.cols and pieces[r, c]:
                    count += 1
                    r, c = r + sign * dr, c + sign * dc
            if count >= self.in_a_row:
                return True
        return False


#: the games the lookahead player knows, by the end of their env id
RULES = {
    "connect_four_v3": BoardRules(6, 7, 4, gravity=True),
    "tictactoe_v3": BoardRules(3, 3, 3, gravity=False),
}


def rules_for(env_id: str) -> BoardRules:
    """The rules of ``env_id`` (e.g. ``pettingzoo.classic.connect_four_v3``); a one-line error
    naming the games known otherwise."""
    name = env_id.rsplit(".", 1)[-1]
    if name not in RULES:
        raise ValueError(
            f"no one-move-lookahead player for {env_id!r}: it knows {', '.join(sorted(RULES))} (PettingZoo classic)"
        )
    return RULES[name]


class LookaheadPlayer:
    """Plays a winning move if one exists, else blocks the opponent's immediate win, else a
    uniformly random legal move (``rng``). Call it with an observation dict as the env gives it."""

    def __init__(self, rules: BoardRules, rng: np.random.Generator) -> None:
        self.rules = rules
        self.rng = rng

    def __call__(self, observation: dict) -> int:
        planes = np.asarray(observation["observation"]).astype(bool)
        mine, theirs = planes[..., 0], planes[..., 1]
        occupied = mine | theirs
        legal = np.flatnonzero(np.asarray(observation["action_mask"]))
        if not len(legal):
            raise ValueError("the lookahead player was asked to move with no legal action (its action mask is all 0)")
        cells = {int(a): self.rules.cell(occupied, int(a)) for a in legal}
        for pieces in (mine, theirs):  # win first, then block
            for action, cell in cells.items():
                if cell is not None and self.rules.wins(pieces, *cell):
                    return action
        return int(self.rng.choice(legal))

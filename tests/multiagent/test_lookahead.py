"""The one-move-lookahead player's board logic against the real PettingZoo games."""

from __future__ import annotations

import numpy as np
import pytest

from clippo.multiagent.lookahead import LookaheadPlayer, rules_for

pytest.importorskip("pettingzoo")


def _make(name: str):
    from pettingzoo.classic import connect_four_v3, tictactoe_v3

    return {"connect_four_v3": connect_four_v3, "tictactoe_v3": tictactoe_v3}[name].env()


@pytest.mark.parametrize(("name", "games"), [("connect_four_v3", 10), ("tictactoe_v3", 25)])
def test_predicted_wins_match_the_env(name, games):
    """For every legal move of random games, the rules say 'wins' exactly when the env, playing
    that move on a copy, rewards the mover with +1; the player takes a win whenever one exists."""
    rules = rules_for(f"pettingzoo.classic.{name}")
    rng = np.random.default_rng(0)
    player = LookaheadPlayer(rules, rng)
    checked_wins = 0
    for game in range(games):
        env = _make(name)
        env.reset(seed=game)
        moves: list[int] = []
        while True:
            obs, _, term, trunc, _ = env.last()
            if term or trunc:
                break
            mover = env.agent_selection
            planes = obs["observation"].astype(bool)
            legal = np.flatnonzero(obs["action_mask"])
            winning = set()
            for action in legal:
                trial = _make(name)  # (PettingZoo envs do not deep-copy: replay the game so far)
                trial.reset(seed=game)
                for move in [*moves, int(action)]:
                    trial.step(move)
                real = trial.rewards[mover] == 1
                trial.close()
                cell = rules.cell(planes[..., 0] | planes[..., 1], int(action))
                assert cell is not None
                assert rules.wins(planes[..., 0], *cell) == real, (game, action)
                if real:
                    winning.add(int(action))
            if winning:
                assert player(obs) in winning
                checked_wins += 1
            moves.append(int(rng.choice(legal)))
            env.step(moves[-1])
        env.close()
    assert checked_wins > 5  # the random games did offer wins to check


def test_blocks_the_opponents_win():
    rules = rules_for("pettingzoo.classic.connect_four_v3")
    planes = np.zeros((6, 7, 2), dtype=np.int8)
    planes[5, 0:3, 1] = 1  # the opponent has three in the bottom row; column 3 completes it
    planes[5, 6, 0] = planes[4, 6, 0] = 1
    obs = {"observation": planes, "action_mask": np.ones(7, dtype=np.int8)}
    assert all(LookaheadPlayer(rules, np.random.default_rng(s))(obs) == 3 for s in range(10))
    planes[3, 6, 0] = 1  # now the player itself has three in column 6: winning beats blocking
    assert LookaheadPlayer(rules, np.random.default_rng(0))(obs) == 6


def test_unknown_game_is_one_line():
    with pytest.raises(ValueError, match="no one-move-lookahead player for 'chess_v6': it knows connect_four_v3"):
        rules_for("chess_v6")

"""Evaluation of multi-agent policies: whole episodes on fresh env copies, every agent by its
policy (cooperative envs: the team return and each agent's), or, for two-player games, against
a uniformly random player with seats alternating (win/draw/loss, per seat too)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from clippo.multiagent.runner import Episode
from clippo.multiagent.selfplay import Tally, game_result, random_policy


class MultiAgentPPO(Protocol):
    """What evaluation reads of the agent (``clippo.multiagent.agent.MultiAgentPPO``)."""

    config: Any
    env_info: Any
    selfplay: Any
    makers: dict[str, Any]

    def new_adapter(self) -> Any: ...
    def act_batch(
        self, items: list[tuple[str, Any]], deterministic: bool, states: list | None = None
    ) -> tuple[list[Any], list]: ...


def play_episodes(
    agent: MultiAgentPPO,
    episodes: int,
    seed: int | None,
    choose: Callable,
    num_envs: int | None = None,
    assign: Callable | None = None,
    on_episode_end: Callable | None = None,
) -> list[Episode]:
    """Whole episodes on fresh env copies: ``choose(due, seats)`` gives the actions of
    ``due = [(copy, agent, observation)]``; ``assign(copy, game)`` the learner's seat of a game
    (for games against another player); ``on_episode_end(copy)`` is told when a copy's episode
    ends. Each copy has a fixed quota of episodes decided up front (counting whichever end
    first would favour short episodes)."""
    n = num_envs or min(episodes, agent.config.num_envs)
    possible = agent.env_info.possible_agents
    adapters = [agent.new_adapter() for _ in range(n)]
    for adapter in adapters:
        adapter.has_state = agent.env_info.state_size is not None
    quota = [episodes // n + (i < episodes % n) for i in range(n)]
    finished: list[Episode] = []
    try:
        acting = [adapter.reset(None if seed is None else seed + c) for c, adapter in enumerate(adapters)]
        returns = [dict.fromkeys(possible, 0.0) for _ in adapters]
        lengths = [0] * n
        games = [0] * n
        seats = [assign(c, 0) if assign else None for c in range(n)]
        while any(games[c] < quota[c] for c in range(n)):
            due = [(c, name, obs) for c in range(n) if games[c] < quota[c] for name, obs in acting[c].items()]
            actions = choose(due, seats)
            per_copy: list[dict[str, Any]] = [{} for _ in range(n)]
            for (c, name, _), action in zip(due, actions, strict=False):
                per_copy[c][name] = action
            for c in range(n):
                if not per_copy[c]:
                    continue
                outcomes, acting[c], over = adapters[c].step(per_copy[c])
                lengths[c] += 1
                for outcome in outcomes:
                    returns[c][outcome.agent] += outcome.reward
                if over:
                    seat = seats[c]
                    result = game_result(returns[c][seat]) if seat is not None else None
                    finished.append(Episode(returns[c], lengths[c], seat, None, result))
                    games[c] += 1
                    returns[c] = dict.fromkeys(possible, 0.0)
                    lengths[c] = 0
                    seats[c] = assign(c, games[c]) if assign else None
                    acting[c] = adapters[c].reset(None)
                    if on_episode_end is not None:
                        on_episode_end(c)
    finally:
        for adapter in adapters:
            adapter.close()
    return finished


def policy_chooser(agent: MultiAgentPPO, deterministic: bool) -> tuple[Any, Any]:
    """``(choose, episode_over)`` for ``play_episodes``: every due agent acts by its policy, a
    recurrent policy's state carried per (env copy, agent) and dropped when that copy's episode ends."""
    carried: dict[tuple[int, str], Any] = {}

    def choose(due, seats):
        actions, states = agent.act_batch(
            [(name, obs) for _, name, obs in due], deterministic, [carried.get((c, name)) for c, name, _ in due]
        )
        for (c, name, _), state in zip(due, states, strict=True):
            carried[(c, name)] = state
        return actions

    def episode_over(c):
        for key in [key for key in carried if key[0] == c]:
            del carried[key]

    return choose, episode_over


def evaluate_team(
    agent: MultiAgentPPO, episodes: int, seed: int | None, deterministic: bool, num_envs: int | None
) -> dict[str, Any]:
    """Every agent by its policy: the mean team return and each agent's mean return."""
    choose, episode_over = policy_chooser(agent, deterministic)
    played = play_episodes(agent, episodes, seed, choose, num_envs, on_episode_end=episode_over)
    returns = [e.team_return for e in played]
    return {
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "episodes": len(returns),
        "mean_length": float(np.mean([e.length for e in played])),
        "returns": returns,
        "agent_returns": {
            a: float(np.mean([e.agent_returns[a] for e in played])) for a in agent.env_info.possible_agents
        },
    }


def check_same_game(agent: MultiAgentPPO, opponent: MultiAgentPPO, name: str) -> None:
    """One-line error for an opponent trained on another game (other players or spaces)."""
    mine, theirs = agent.env_info, opponent.env_info
    if (mine.possible_agents, mine.observation_spaces, mine.action_spaces) != (
        theirs.possible_agents,
        theirs.observation_spaces,
        theirs.action_spaces,
    ):
        raise ValueError(
            f"opponent {name!r} was trained on {opponent.config.env_id!r} (players "
            f"{', '.join(theirs.possible_agents)}), "
            f"not on this agent's game {agent.config.env_id!r} (players {', '.join(mine.possible_agents)}) or with "
            "other spaces"
        )


def play_random(agent: MultiAgentPPO, games: int, seed: int | None, deterministic: bool, num_envs: int | None,
                opponent: MultiAgentPPO | None = None) -> dict[str, Any]:  # fmt: skip
    """Games against a uniformly random player (legal moves only), or against ``opponent`` (another
    trained agent of the same game, acting as deterministically), the learner's seat alternating
    from game to game: win/draw/loss rates, overall and per seat. Results against the random
    player also update the learner's Elo against the random anchor."""
    seats_of = agent.selfplay.agents
    rng = np.random.default_rng(seed)
    maker = agent.makers[seats_of[0]][1]

    def choose(due, seats):
        mine = [(i, name, obs) for i, (c, name, obs) in enumerate(due) if name == seats[c]]
        theirs = [(i, name, obs) for i, (c, name, obs) in enumerate(due) if name != seats[c]]
        out: list[Any] = [None] * len(due)
        for (i, _, _), action in zip(
            mine, agent.act_batch([(name, obs) for _, name, obs in mine], deterministic)[0], strict=False
        ):
            out[i] = action
        if opponent is not None:
            for (i, _, _), action in zip(
                theirs, opponent.act_batch([(name, obs) for _, name, obs in theirs], deterministic)[0], strict=False
            ):
                out[i] = action
        else:
            for i, _, obs in theirs:
                _, mask = maker.split(obs)
                out[i] = int(random_policy(mask[None], rng)[0])
        return out

    played = play_episodes(agent, games, seed, choose, num_envs, assign=lambda c, game: seats_of[(c + game) % 2])
    tally = Tally()
    per_seat = {name: Tally() for name in seats_of}
    for episode in played:
        assert episode.seat is not None and episode.result is not None  # assign gave every game a seat
        tally.add(episode.result)
        per_seat[episode.seat].add(episode.result)
        if opponent is None:
            agent.selfplay.record_random(episode.result)
    scores = [e.score for e in played]
    return {
        **tally.rates(),
        "games": tally.games,
        "per_seat": {name: t.rates() for name, t in per_seat.items()},
        "mean_return": float(np.mean(scores)),
        "std_return": float(np.std(scores)),
        "episodes": len(scores),
        "mean_length": float(np.mean([e.length for e in played])),
        "returns": scores,
    }

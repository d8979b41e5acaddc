"""Self-play for two-player zero-sum turn-based games (AEC envs whose observations carry an
``action_mask``).

Each game of each env copy, the learner takes one seat, alternating from game to game (and
between copies), against either its current policy (then both seats are the learner's and both
sides' transitions are learned from) or a snapshot from a pool of its past policies (only the
learner's seat is learned from; the snapshot acts with its own frozen weights, sampling, masks
respected). A snapshot joins the pool every ``selfplay_snapshot_every`` updates; the oldest
leaves when the pool is full. Snapshots are drawn uniformly, or with weights growing linearly
with their age rank (``recent``). A fraction ``selfplay_random_prob`` of games is played against a
uniformly random legal-move player (``RANDOM``; only the learner's seat is learned from): it
reaches positions that games among similar policies never do. Per game one draw ``u`` of the
self-play rng picks the opponent: ``u < random_prob`` the random player, else
``u < random_prob + latest_prob`` (or an empty pool) the current policy, else a snapshot.

Ratings: Elo (expected score ``1 / (1 + 10^((r_b - r_a) / 400))``, K = ``ELO_K``). The learner
starts at ``ELO_START``; a snapshot enters with the learner's rating at that time; each game
against a snapshot updates both. The uniformly random player is an anchor fixed at
``ELO_START``: games against it (training games and the periodic evaluation) update the learner
only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

ELO_START = 1000.0
ELO_K = 16.0
SAMPLINGS = ("uniform", "recent")


def expected_score(rating: float, other: float) -> float:
    return 1.0 / (1.0 + 10.0 ** ((other - rating) / 400.0))


def elo_update(rating: float, other: float, score: float, k: float = ELO_K) -> tuple[float, float]:
    """Both ratings after a game with ``score`` (1 win, 0.5 draw, 0 loss) for the first player."""
    change = k * (score - expected_score(rating, other))
    return rating + change, other - change


def game_result(learner_return: float) -> str:
    """A zero-sum game's result for the learner from its return: win, draw or loss."""
    return "win" if learner_return > 0 else "loss" if learner_return < 0 else "draw"


SCORES = {"win": 1.0, "draw": 0.5, "loss": 0.0}

#: the policy module type: an opponent's model has the learner's architecture
ModelT = TypeVar("ModelT", bound=torch.nn.Module)


class RandomOpponent:
    """The uniformly random legal-move opponent (one instance, ``RANDOM``): it acts with the
    self-play rng, so runs stay reproducible."""

    def __repr__(self) -> str:
        return "RANDOM"


RANDOM = RandomOpponent()


@dataclass
class Snapshot:
    """A past policy of the learner: its weights, the update it was taken at, and its rating."""

    weights: dict[str, torch.Tensor]
    update: int
    rating: float


@dataclass(frozen=True)
class OpponentRef:
    """Who a training game was played against, small enough to send between ranks: ``latest``
    (the current policy), ``random`` (the random player) or ``pool`` (the snapshot taken at
    ``update``, rated ``rating`` when the game began)."""

    kind: str
    update: int = -1
    rating: float = ELO_START

    @classmethod
    def of(cls, opponent: Snapshot | RandomOpponent | None) -> OpponentRef:
        if opponent is None:
            return cls("latest")
        if isinstance(opponent, RandomOpponent):
            return cls("random")
        return cls("pool", opponent.update, opponent.rating)


@dataclass
class Tally:
    """Win/draw/loss counts."""

    counts: dict[str, int] = field(default_factory=lambda: {"win": 0, "draw": 0, "loss": 0})

    def add(self, result: str) -> None:
        self.counts[result] += 1

    @property
    def games(self) -> int:
        return sum(self.counts.values())

    def rates(self) -> dict[str, float]:
        games = self.games
        return {k: (v / games if games else float("nan")) for k, v in self.counts.items()}


class SelfPlay:
    """The opponent pool, seat assignment and ratings of one self-play run."""

    def __init__(
        self,
        agents: list[str],
        pool_size: int,
        latest_prob: float,
        sampling: str,
        seed: int,
        random_prob: float = 0.0,
    ) -> None:
        if len(agents) != 2:
            raise ValueError(
                f"self-play needs a two-player game, this env has {len(agents)} agents: {', '.join(agents)}"
            )
        self.agents = list(agents)
        self.pool_size = pool_size
        self.latest_prob = latest_prob
        self.random_prob = random_prob
        self.sampling = sampling
        self.rng = np.random.default_rng(seed)
        self.pool: list[Snapshot] = []
        self.rating = ELO_START
        self.games_started = 0
        self._models: dict[int, Any] = {}  # id(snapshot) -> the model acting for it
        self.tally_pool = Tally()
        self.tally_latest = Tally()
        self.tally_random = Tally()

    # --- games ------------------------------------------------------------------------------------
    def assign(self, copy_index: int, game_index: int) -> tuple[str, Snapshot | RandomOpponent | None]:
        """(the learner's seat, the opponent: None for the current policy, ``RANDOM`` for the
        random player, else a pool snapshot) for game ``game_index`` of env copy ``copy_index``:
        seats alternate."""
        seat = self.agents[(copy_index + game_index) % 2]
        self.games_started += 1
        if self.random_prob > 0.0:
            draw = self.rng.random()
            if draw < self.random_prob:
                return seat, RANDOM
            if not self.pool or draw < self.random_prob + self.latest_prob:
                return seat, None
        # (without random games, the draws are those of runs before random_prob existed)
        elif not self.pool or self.rng.random() < self.latest_prob:
            return seat, None
        if self.sampling == "recent":
            weights = np.arange(1, len(self.pool) + 1, dtype=np.float64)
            index = int(self.rng.choice(len(self.pool), p=weights / weights.sum()))
        else:
            index = int(self.rng.integers(len(self.pool)))
        return seat, self.pool[index]

    def random_actions(self, masks: np.ndarray) -> np.ndarray:
        """The random opponent's moves: a uniformly random legal action per row of ``masks``."""
        return random_policy(masks, self.rng)

    def opponent_model(self, snapshot: Snapshot, template: ModelT) -> ModelT:
        """The model acting for ``snapshot`` (built on ``template``'s architecture once; a game
        begun against a snapshot that has since left the pool plays on against it)."""
        key = id(snapshot)
        if key not in self._models:
            model = copy.deepcopy(template)
            model.load_state_dict(snapshot.weights)
            model.eval()
            self._models[key] = model
        return self._models[key]

    def record(self, opponent: OpponentRef, result: str) -> None:
        """A finished game's result for the learner against ``opponent``. Under ``--nproc`` every
        rank records every rank's games in rank order, so ratings and tallies agree across ranks."""
        if opponent.kind == "latest":
            self.tally_latest.add(result)
            return
        if opponent.kind == "random":
            self.tally_random.add(result)
            self.record_random(result)
            return
        self.tally_pool.add(result)
        snapshot = next((s for s in self.pool if s.update == opponent.update), None)
        if snapshot is None:  # it left the pool while the game went on: only the learner is rated
            self.rating, _ = elo_update(self.rating, opponent.rating, SCORES[result])
        else:
            self.rating, snapshot.rating = elo_update(self.rating, snapshot.rating, SCORES[result])

    def record_random(self, result: str) -> None:
        """A game against the uniformly random anchor (fixed at ``ELO_START``)."""
        self.rating, _ = elo_update(self.rating, ELO_START, SCORES[result])

    def add_snapshot(self, model: torch.nn.Module, update: int) -> None:
        weights = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        self.pool.append(Snapshot(weights, update, self.rating))
        while len(self.pool) > self.pool_size:
            self.pool.pop(0)
        live = {id(snapshot) for snapshot in self.pool}
        # (a model of a snapshot that left is rebuilt if a running game still needs it)
        self._models = {key: model for key, model in self._models.items() if key in live}

    def pop_stats(self) -> dict[str, float]:
        """This update's metrics (the tallies restart)."""
        stats = {}
        for name, tally in (("pool", self.tally_pool), ("latest", self.tally_latest), ("random", self.tally_random)):
            for result, rate in tally.rates().items():
                stats[f"selfplay/{result}_vs_{name}"] = rate
            stats[f"selfplay/games_vs_{name}"] = tally.games
        stats["selfplay/elo"] = self.rating
        stats["selfplay/pool_size"] = len(self.pool)
        stats["selfplay/pool_mean_elo"] = float(np.mean([s.rating for s in self.pool])) if self.pool else float("nan")
        self.tally_pool, self.tally_latest, self.tally_random = Tally(), Tally(), Tally()
        return stats

    # --- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "pool": [{"weights": s.weights, "update": s.update, "rating": s.rating} for s in self.pool],
            "rating": self.rating,
            "games_started": self.games_started,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool = [Snapshot(dict(s["weights"]), int(s["update"]), float(s["rating"])) for s in state["pool"]]
        self._models.clear()
        self.rating = float(state["rating"])
        self.games_started = int(state["games_started"])
        self.rng.bit_generator.state = state["rng"]


def random_policy(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random legal action per row of ``masks``."""
    out = np.empty(len(masks), dtype=np.int64)
    for i, mask in enumerate(masks):
        out[i] = rng.choice(np.flatnonzero(mask))
    return out

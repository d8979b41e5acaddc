"""Self-play on PettingZoo's two-player board games (issue #33's target 3): each (game, seed) is
trained by ``clippo train ENV --seed S`` with the env's preset (nice -n 10, one torch thread),
then the final policy (``agent.pt``, acting deterministically) plays whole games against

- a uniformly random player (legal moves only), in each seat, and
- a one-move-lookahead player (``clippo.multiagent.lookahead``: a winning move if one exists,
  else blocks the opponent's immediate win, else a random legal move), in each seat;
- for tic-tac-toe, also every one of the game's 4,520 positions with its player to move, solved by
  minimax: the share where the policy's move keeps the position's value (an optimal player's 100%).

Game i of an (opponent, seat) pairing runs on env seed EVAL_SEED + i with the opponent's own
random generator seeded from (seed, opponent, seat). Targets: connect four wins >= 95% against
random in each seat and more than half of its games against the lookahead player; tic-tac-toe
never loses to random. Each run's training wall time (this machine, under whatever else runs on
it) is reported with the load average. Runs whose ``agent.pt`` and train record exist are not
retrained (``--retrain`` does); their games are replayed (``--no-train``: only those). Writes
``multiagent_selfplay.json``, ``.md``, one JSON per run (with its curve: win rate against random
and Elo over training, from the run's metrics.csv) and ``curves.png`` to ``--out``.

    python benchmarks/multiagent_selfplay.py --games connect_four tictactoe --seeds 1000 1001
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

GAMES = {"connect_four": "pettingzoo.classic.connect_four_v3", "tictactoe": "pettingzoo.classic.tictactoe_v3"}
#: the learner's seat: the first mover (possible_agents[0]) or the second
SEATS = ("first", "second")
EVAL_SEED = 20_000
REPO = Path(__file__).resolve().parent.parent


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95%) of a rate."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def train(game: str, seed: int, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    """``clippo train`` in a child process; its wall time and the load average around it."""
    if run_dir.exists():
        print(f"{run_dir}: an unfinished run, removed and retrained", flush=True)
        shutil.rmtree(run_dir)
    cmd = [
        "nice", "-n", "10", sys.executable, "-m", "clippo", "train", GAMES[game], "--seed", str(seed),
        "--run-dir", str(run_dir), "--no-progress", "--torch-threads", "1", "--no-tensorboard", *extra,
    ]  # fmt: skip
    env = _common.child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"training {game} seed {seed} failed (exit {proc.returncode}): {tail}")
    return {
        "command": " ".join(cmd[3:]),
        "train_wall_s": wall,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "date": _common.now(),
    }


def curve(run_dir: Path, points: int = 200) -> list[dict[str, float]]:
    """From metrics.csv: the rows with an evaluation against random (step, wall time, win/draw/loss, Elo)."""
    rows = []
    with open(run_dir / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("vs_random/win"):
                rows.append(
                    {
                        "step": int(float(row["global_step"])),
                        "wall_s": float(row["wall_time"]),
                        "win": float(row["vs_random/win"]),
                        "draw": float(row["vs_random/draw"]),
                        "loss": float(row["vs_random/loss"]),
                        "elo": float(row["selfplay/elo"]),
                    }
                )
    stride = max(1, math.ceil(len(rows) / points))
    return rows[::stride] + ([rows[-1]] if rows and (len(rows) - 1) % stride else [])


def play(game: str, agent, opponent, seat_index: int, games: int) -> dict[str, Any]:
    """``games`` whole games, the agent (deterministic) in seat ``seat_index`` (0: it moves
    first): win/draw/loss counts."""
    import importlib

    module = importlib.import_module(GAMES[game])
    counts = {"win": 0, "draw": 0, "loss": 0}
    env = module.env()
    seat = env.possible_agents[seat_index]
    for i in range(games):
        env.reset(seed=EVAL_SEED + i)
        total = 0.0
        for name in env.agent_iter():
            obs, reward, terminated, truncated, _ = env.last()
            if name == seat:
                total += reward  # (the reward accumulated since this agent's last move)
            if terminated or truncated:
                env.step(None)
                continue
            action = agent.act({name: obs}, deterministic=True)[name] if name == seat else opponent(obs)
            env.step(int(action))
        counts["win" if total > 0 else "loss" if total < 0 else "draw"] += 1
    env.close()
    low, high = wilson(counts["win"], games)
    return {**counts, "games": games, "win_rate": counts["win"] / games, "win_ci95": [low, high]}


# --- tic-tac-toe solved: how often the policy's move keeps the game's value -------------------------
LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


def ttt_winner(board: tuple[int, ...]) -> int:
    """1 or 2 if that player has three in a row on ``board`` (9 cells: 0 empty, 1, 2), else 0."""
    for a, b, c in LINES:
        if board[a] and board[a] == board[b] == board[c]:
            return board[a]
    return 0


def ttt_move_values(board: tuple[int, ...], player: int, memo: dict) -> dict[int, int]:
    """The minimax value (+1 win, 0 draw, -1 loss) for ``player`` of each legal move."""
    values = {}
    for cell in (i for i in range(9) if not board[i]):
        after = (*board[:cell], player, *board[cell + 1 :])
        if ttt_winner(after):
            values[cell] = 1
        elif all(after):
            values[cell] = 0
        else:
            values[cell] = -ttt_value(after, 3 - player, memo)
    return values


def ttt_value(board: tuple[int, ...], player: int, memo: dict) -> int:
    """The minimax value of ``board`` for ``player``, who moves next."""
    key = (board, player)
    if key not in memo:
        memo[key] = max(ttt_move_values(board, player, memo).values())
    return memo[key]


def ttt_optimality(agent) -> dict[str, Any]:
    """Every position reachable in tic-tac-toe with its player to move (4,520): the share where the
    agent's deterministic move keeps the position's minimax value, and where it takes an immediate
    win, or blocks the opponent's, when there is one (a policy that never loses must do both)."""
    import numpy as np

    memo: dict = {}
    positions: set[tuple[tuple[int, ...], int]] = set()

    def walk(board: tuple[int, ...], player: int) -> None:
        if ttt_winner(board) or all(board) or (board, player) in positions:
            return
        positions.add((board, player))
        for cell in (i for i in range(9) if not board[i]):
            walk((*board[:cell], player, *board[cell + 1 :]), 3 - player)

    walk((0,) * 9, 1)
    counts = {"positions": 0, "optimal": 0, "win_available": 0, "took_win": 0, "must_block": 0, "blocked": 0}
    for board, player in sorted(positions):
        grid = np.array(board).reshape(3, 3)
        planes = np.stack([grid == player, grid == 3 - player], axis=-1).astype(np.int8)
        mask = np.array([0 if x else 1 for x in board], dtype=np.int8)
        name = "player_1" if player == 1 else "player_2"
        move = int(agent.act({name: {"observation": planes, "action_mask": mask}}, deterministic=True)[name])
        values = ttt_move_values(board, player, memo)
        counts["positions"] += 1
        counts["optimal"] += values[move] == max(values.values())
        wins = [c for c in values if ttt_winner((*board[:c], player, *board[c + 1 :])) == player]
        threats = [c for c in values if ttt_winner((*board[:c], 3 - player, *board[c + 1 :])) == 3 - player]
        if wins:
            counts["win_available"] += 1
            counts["took_win"] += move in wins
        elif threats:
            counts["must_block"] += 1
            counts["blocked"] += move in threats
    return counts


def evaluate(game: str, seed: int, run_dir: Path, games_random: int, games_lookahead: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from clippo.multiagent.agent import MultiAgentPPO
    from clippo.multiagent.lookahead import LookaheadPlayer, rules_for

    torch.set_num_threads(1)
    agent = MultiAgentPPO.load(run_dir / "agent.pt")
    results: dict[str, Any] = {"global_step": agent.global_step, "train_time_s": agent.train_time}
    start = time.perf_counter()
    for kind, games in (("random", games_random), ("lookahead", games_lookahead)):
        for index, seat in enumerate(SEATS):
            rng = np.random.default_rng([seed, 0 if kind == "random" else 1, index])
            if kind == "random":

                def opponent(obs, rng=rng):
                    return int(rng.choice(np.flatnonzero(obs["action_mask"])))
            else:
                opponent = LookaheadPlayer(rules_for(GAMES[game]), rng)
            results[f"{kind}/{seat}"] = play(game, agent, opponent, index, games)
        both = [results[f"{kind}/{seat}"] for seat in SEATS]
        total = {k: sum(r[k] for r in both) for k in ("win", "draw", "loss", "games")}
        total["win_rate"] = total["win"] / total["games"]
        total["win_ci95"] = list(wilson(total["win"], total["games"]))
        results[f"{kind}/both"] = total
    if game == "tictactoe":
        results["optimality"] = ttt_optimality(agent)
    results["eval_wall_s"] = time.perf_counter() - start
    return results


def targets(game: str, ev: dict[str, Any]) -> dict[str, bool]:
    if game == "connect_four":
        return {
            "random_each_seat_>=95%": all(ev[f"random/{s}"]["win_rate"] >= 0.95 for s in SEATS),
            "lookahead_>50%": ev["lookahead/both"]["win_rate"] > 0.5,
        }
    return {"never_loses_to_random": ev["random/both"]["loss"] == 0}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = sorted({r["game"] for r in runs})
    fig, axes = plt.subplots(2, len(games), figsize=(6 * len(games), 7), squeeze=False)
    for col, game in enumerate(games):
        for run in (r for r in runs if r["game"] == game):
            points = run["curve"]
            steps = [p["step"] for p in points]
            axes[0][col].plot(steps, [p["win"] for p in points], label=f"seed {run['seed']}")
            axes[1][col].plot(steps, [p["elo"] for p in points], label=f"seed {run['seed']}")
        axes[0][col].set_title(f"{game}: win rate against random (logged evaluations)")
        axes[0][col].set_ylim(0, 1.02)
        axes[1][col].set_title(f"{game}: learner's Elo (random player = 1000)")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xlabel("agent steps")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def load(averages: list[float] | None) -> str:
    """The 1-minute load average, or n/a where it was not recorded."""
    return "n/a" if not averages or averages[0] is None else f"{averages[0]:.1f}"


def optimal_cell(ev: dict[str, Any]) -> str:
    """Tic-tac-toe: value-keeping moves, wins taken and blocks made, of the positions that have them."""
    o = ev.get("optimality")
    if not o:
        return "-"
    return (
        f"{pct(o['optimal'] / o['positions'])} of {o['positions']:,}; wins taken {o['took_win']}/{o['win_available']}, "
        f"blocks {o['blocked']}/{o['must_block']}"
    )


def write_summary(runs: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    summary: dict[str, Any] = {}
    for game in sorted({r["game"] for r in runs}):
        mine = [r for r in runs if r["game"] == game]
        summary[game] = {
            "seeds": [r["seed"] for r in mine],
            "all_targets_met": all(all(r["targets"].values()) for r in mine),
            "median_train_wall_s": _common.median(r["train"]["train_wall_s"] for r in mine),
        }
    data = {"meta": meta, "summary": summary, "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs]}
    _common.write_json(out / "multiagent_selfplay.json", data)
    lines = [
        "# Self-play on PettingZoo board games: the presets against random and one-move-lookahead players",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']} (finished {meta['finished']}); machine: {meta['machine']['nproc']} cores "
        f"(`{meta['machine']['cpu_model']}`), shared with other jobs (load averages below)",
        "- training: `clippo train ENV --seed S` with the env's preset, nice -n 10, one torch thread; the final "
        "policy acts deterministically; opponents: uniformly random legal moves, and one-move lookahead (win, else "
        f"block, else random); game i on env seed {EVAL_SEED}+i; rates with 95% Wilson intervals",
        "",
    ]
    headers = [
        "game", "seed", "agent steps", "train wall time", "load (before/after)", "vs random, moving first",
        "vs random, moving second", "vs lookahead, moving first", "vs lookahead, moving second", "vs lookahead (both)",
        "optimal moves (tic-tac-toe)", "targets",
    ]  # fmt: skip
    rows = []
    for r in runs:
        ev = r["eval"]

        def cell(key: str, ev: dict[str, Any] = ev) -> str:
            x = ev[key]
            low, high = x["win_ci95"]
            return f"W {pct(x['win_rate'])} [{pct(low)}, {pct(high)}] D {x['draw']} L {x['loss']} / {x['games']}"

        rows.append(
            [
                r["game"], r["seed"], f"{ev['global_step']:,}", f"{r['train']['train_wall_s'] / 60:.1f} min",
                f"{load(r['train']['load_before'])} / {load(r['train']['load_after'])}",
                cell("random/first"), cell("random/second"), cell("lookahead/first"),
                cell("lookahead/second"), cell("lookahead/both"), optimal_cell(ev),
                ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["targets"].items()),
            ]
        )  # fmt: skip
    lines += _common.md_table(headers, rows)
    lines += ["", "## Summary", ""]
    for game, s in summary.items():
        lines.append(
            f"- {game}: seeds {', '.join(map(str, s['seeds']))}: all targets met: "
            f"{'yes' if s['all_targets_met'] else 'NO'}; median training wall time "
            f"{s['median_train_wall_s'] / 60:.1f} min"
        )
    lines += ["", "![win rate against random and Elo over training](curves.png)", ""]
    (out / "multiagent_selfplay.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="+", choices=list(GAMES), default=list(GAMES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001])
    parser.add_argument("--games-random", type=int, default=1000, help="games against random, per seat")
    parser.add_argument("--games-lookahead", type=int, default=500, help="games against lookahead, per seat")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "multiagent_selfplay", help="run directories")
    parser.add_argument("--out", type=Path, default=_common.DEFAULT_OUT / "multiagent_selfplay")
    parser.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    parser.add_argument(
        "--no-train", action="store_true", help="only evaluate and summarize the finished runs (skip the others)"
    )
    parser.add_argument(
        "--train-args", default="", help="extra `clippo train` flags for every run (default: the preset as it is)"
    )
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, metavar="DIR",
        help="write one summary to --out from the per-run results of earlier invocations' --out DIRs (runs played "
        "in parallel), training and playing nothing",
    )  # fmt: skip
    args = parser.parse_args()
    extra = args.train_args.split()
    meta = {"command": _common.command_line(), "date": _common.now(), "machine": _common.machine_info()}
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    runs = []
    if args.merge:
        for path in sorted(p for d in args.merge for p in (d / "runs").glob("*.json")):
            run = json.loads(path.read_text())
            _common.write_json(args.out / "runs" / path.name, run)
            runs.append(run)
        runs.sort(key=lambda r: (r["game"], r["seed"]))
        meta["finished"] = _common.now()
        write_summary(runs, meta, args.out)
        plot(runs, args.out / "curves.png")
        return 0
    for game in args.games:
        for seed in args.seeds:
            run_dir = args.runs / f"{game}_s{seed}"
            record = run_dir / "train_record.json"
            finished = record.exists() and (run_dir / "agent.pt").exists()
            if args.no_train and not finished:
                print(f"{game} seed {seed}: no finished run in {run_dir}, skipped (--no-train)", flush=True)
                continue
            if args.retrain or not finished:
                print(f"training {game} seed {seed} ...", flush=True)
                info = train(game, seed, run_dir, extra)
                record.write_text(json.dumps(info, indent=2) + "\n")
            info = json.loads(record.read_text())
            print(f"{game} seed {seed}: trained in {info['train_wall_s'] / 60:.1f} min; playing ...", flush=True)
            ev = evaluate(game, seed, run_dir, args.games_random, args.games_lookahead)
            run = {"game": game, "env_id": GAMES[game], "seed": seed, "train": info, "eval": ev,
                   "targets": targets(game, ev), "curve": curve(run_dir)}  # fmt: skip
            _common.write_json(args.out / "runs" / f"{game}_s{seed}.json", run)
            print(
                f"{game} seed {seed}: random {pct(ev['random/first']['win_rate'])} / "
                f"{pct(ev['random/second']['win_rate'])} (losses {ev['random/both']['loss']}), lookahead "
                f"{pct(ev['lookahead/both']['win_rate'])}; targets {run['targets']}",
                flush=True,
            )
            runs.append(run)
            meta["finished"] = _common.now()  # (the summary so far: a long session can stop between runs)
            write_summary(runs, meta, args.out)
            plot(runs, args.out / "curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

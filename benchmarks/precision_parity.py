#!/usr/bin/env python
"""Learning parity of bf16 mixed precision against fp32 (issue #36): the same preset, seeds and
steps in both precisions, tabulated and drawn side by side from the runs' own metrics.csv.

Train (each run one core; ``preset_runs.py`` continues unfinished runs with the same command):

    python benchmarks/preset_runs.py run --envs MinAtar/Breakout-v1 --seeds 1 2 3 --jobs 1 \\
        --root RUNS/minatar_cnn_bf16 --stop-at-steps 2000000 --extra=--encoder=cnn \\
        --extra=--precision=bf16 --extra=--eval-every=500000 --extra=--eval-episodes=20
    (the same with fp32; Atari: --envs ALE/Breakout-v5 ALE/Pong-v5 --stop-at-steps 1000000
    --extra=--eval-every=250000 --extra=--eval-episodes=8)

then compare (run directories are found as ``ROOT/<anything>_<precision>/<Env>_s<seed>``):

    python benchmarks/precision_parity.py --root RUNS --out benchmarks/results/precision_parity

Per env and precision: each seed's mean training return over the last 100 episodes at the step
where the shortest run of the env stands (so unfinished runs compare at equal steps), and the
deterministic evaluations logged on the way. Parity: the two precisions' ranges over seeds
overlap (two-sided); reported beside it, whether bf16's worst seed is at least fp32's worst.
``--reference ENV:PRECISION:SEED=RETURN@STEPS`` adds a run known only by its return at STEPS (e.g.
an earlier run whose directory was not kept).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, fmt, machine_info, machine_markdown, md_table, now, write_json

PRECISIONS = ("fp32", "bf16")
RUN_NAME = re.compile(r"^(?P<env>.+)_s(?P<seed>\d+)$")


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv as rows of floats (empty cells as NaN)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def find_runs(root: Path) -> list[dict[str, Any]]:
    """Every ``ROOT/<group>_<precision>/<Env>_s<seed>`` run directory with a metrics.csv."""
    runs = []
    for group in sorted(p for p in root.iterdir() if p.is_dir()):
        precision = group.name.rsplit("_", 1)[-1]
        if precision not in PRECISIONS:
            continue
        for run_dir in sorted(p for p in group.iterdir() if (p / "metrics.csv").is_file()):
            match = RUN_NAME.match(run_dir.name)
            if match is None:
                continue
            env = match["env"].replace("-", "/", 1) if match["env"].startswith(("ALE-", "MinAtar-")) else match["env"]
            runs.append(
                {
                    "env": env,
                    "group": group.name,
                    "precision": precision,
                    "seed": int(match["seed"]),
                    "dir": str(run_dir),
                    "rows": read_metrics(run_dir),
                }
            )
    return runs


def return_at(rows: list[dict[str, float]], step: float) -> float:
    """The last-100-episode training return logged at the last update at or before ``step``."""
    before = [r for r in rows if r["global_step"] <= step and not math.isnan(r["recent_return"])]
    return before[-1]["recent_return"] if before else math.nan


def evaluations(rows: list[dict[str, float]]) -> list[tuple[int, float]]:
    return [(int(r["global_step"]), r["eval/mean_return"]) for r in rows if not math.isnan(r["eval/mean_return"])]


def compare(runs: list[dict[str, Any]], references: list[tuple[str, str, int, float, int]]) -> list[dict[str, Any]]:
    """One entry per env: the step compared at, each precision's per-seed returns, the verdict."""
    envs = sorted({r["env"] for r in runs} | {ref[0] for ref in references})
    out = []
    for env in envs:
        env_runs = [r for r in runs if r["env"] == env]
        env_references = [ref for ref in references if ref[0] == env]
        step = min((r["rows"][-1]["global_step"] for r in env_runs), default=math.nan)
        # a reference is a return at its own steps: compared there, once every run has got that far
        pending = any(ref[4] > step for ref in env_references) if env_runs else False
        if env_references and not pending:
            step = min(ref[4] for ref in env_references)
        by_precision: dict[str, list[dict[str, Any]]] = {p: [] for p in PRECISIONS}
        for r in env_runs:
            by_precision[r["precision"]].append(
                {
                    "seed": r["seed"],
                    "return": return_at(r["rows"], step),
                    "steps": int(r["rows"][-1]["global_step"]),
                    "evaluations": evaluations(r["rows"]),
                    "sps": r["rows"][-1]["sps"],
                    "source": r["dir"],
                }
            )
        for _, precision, seed, value, steps in env_references:
            by_precision[precision].append(
                {"seed": seed, "return": value, "steps": steps, "evaluations": [], "sps": None, "source": "reference"}
            )
        ranges = {}
        for p, seeds in by_precision.items():
            # (while runs are short of a reference's steps, the reference is listed but not ranged)
            values = [
                s["return"]
                for s in seeds
                if not math.isnan(s["return"]) and not (pending and s["source"] == "reference")
            ]
            ranges[p] = (min(values), sum(values) / len(values), max(values)) if values else None
        a, b = ranges["fp32"], ranges["bf16"]
        judged = a is not None and b is not None and not pending
        out.append(
            {
                "env": env,
                "step": step,
                "precisions": by_precision,
                "ranges": ranges,
                "pending": pending,
                # two-sided: the ranges overlap; one-sided: bf16's worst seed at least fp32's worst
                "overlap": (a[0] <= b[2] and b[0] <= a[2]) if judged else None,
                "bf16_not_below": (b[0] >= a[0]) if judged else None,
            }
        )
    return out


def draw(env_runs: list[dict[str, Any]], env: str, path: Path) -> bool:
    """Training return (thin: each seed) of both precisions against steps; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"fp32": "tab:blue", "bf16": "tab:orange"}
    labelled = set()
    for r in sorted(env_runs, key=lambda r: (r["precision"], r["seed"])):
        steps = [row["global_step"] for row in r["rows"]]
        returns = [row["recent_return"] for row in r["rows"]]
        label = r["precision"] if r["precision"] not in labelled else None
        labelled.add(r["precision"])
        ax.plot(steps, returns, color=colors[r["precision"]], lw=1, alpha=0.8, label=label)
        evals = evaluations(r["rows"])
        if evals:
            ax.scatter(*zip(*evals, strict=True), color=colors[r["precision"]], s=12, marker="o")
    ax.set_title(f"{env}: training return per seed (lines), evaluations (dots)", fontsize=10)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    if labelled:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(meta: dict[str, Any], results: list[dict[str, Any]], images: dict[str, str]) -> str:
    lines = [
        "# bf16 mixed precision against fp32: learning parity",
        "",
        f"Command: `{meta['command']}` ({meta['date']}).",
        "Return: each seed's mean training return over the last 100 episodes, at the step where the",
        "env's shortest run stands; evaluations: the deterministic evaluations logged on the way.",
        "Parity: the two precisions' ranges over seeds overlap; beside it, the one-sided check that",
        "bf16's worst seed is no worse than fp32's worst.",
        "",
    ]
    rows = []
    for res in results:
        for precision in PRECISIONS:
            for s in sorted(res["precisions"][precision], key=lambda s: s["seed"]):
                evals = ", ".join(f"{step / 1e6:.2f}M: {fmt(v, 1)}" for step, v in s["evaluations"])
                source = (
                    f"earlier run, at {fmt(s['steps'], 0)} steps" if s["source"] == "reference" else fmt(s["sps"], 0)
                )
                rows.append([res["env"], precision, s["seed"], fmt(s["return"], 1), evals or "-", source])
    lines += md_table(["env", "precision", "seed", "return", "evaluations", "steps/s (its run)"], rows)
    lines += [
        "",
        "| env | compared at step | fp32 min / mean / max | bf16 min / mean / max | ranges overlap "
        "| bf16's worst seed >= fp32's worst |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        cells = [" / ".join(fmt(v, 1) for v in res["ranges"][p]) if res["ranges"][p] else "-" for p in PRECISIONS]
        verdicts = ["-" if v is None else ("yes" if v else "**no**") for v in (res["overlap"], res["bf16_not_below"])]
        if res["pending"]:
            verdicts = ["pending (runs short of the reference's steps)", "pending"]
        lines.append(f"| {res['env']} | {fmt(res['step'], 0)} | {cells[0]} | {cells[1]} | {' | '.join(verdicts)} |")
    lines += [""] + [f"![{env}]({name})" for env, name in images.items()]
    lines += ["", *machine_markdown(meta)]
    return "\n".join(lines) + "\n"


def without_nan(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    return value


def parse_reference(text: str) -> tuple[str, str, int, float, int]:
    try:
        key, value = text.split("=")
        env, precision, seed = key.rsplit(":", 2)
        result, steps = value.split("@")
        if precision not in PRECISIONS:
            raise ValueError
        return env, precision, int(seed), float(result), int(steps)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--reference {text!r} is invalid: use ENV:PRECISION:SEED=RETURN@STEPS, e.g. "
            "ALE/Breakout-v5:fp32:1=23.0@1001472"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="holds <group>_<precision>/<Env>_s<seed> runs")
    parser.add_argument("--reference", type=parse_reference, action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"--root {args.root}: not a directory")
    runs = find_runs(args.root)
    results = compare(runs, args.reference)
    args.out.mkdir(parents=True, exist_ok=True)
    images = {}
    for res in results:
        name = "curves_" + res["env"].replace("/", "-") + ".png"
        if draw([r for r in runs if r["env"] == res["env"]], res["env"], args.out / name):
            images[res["env"]] = name
    meta = {"command": command_line(), "date": now(), "machine": machine_info()}
    write_json(args.out / "results.json", without_nan({"meta": meta, "results": results}))
    (args.out / "results.md").write_text(markdown(meta, results, images))
    for res in results:
        print(
            f"{res['env']}: at step {fmt(res['step'], 0)} ranges {res['ranges']} overlap {res['overlap']}, "
            f"bf16 not below {res['bf16_not_below']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

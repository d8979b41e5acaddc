"""Env-only steps/second of every way clippo can step Atari (and MinAtar), on this machine.

Each measurement is a child process of its own that builds the vector env through
``clippo.envs.atari`` (so it measures exactly what training steps: the standard preprocessing, raw
rewards, ``info["lives"]``, NEXT_STEP autoreset, the env's own sticky actions), resets it,
takes ``--warmup`` vector steps of random actions, then times ``--steps`` more. The modes
alternate within each round (so slow drifts of the machine's speed hit them all), ``--rounds``
rounds, and the table reports the median (and the min-max spread) over rounds:

- Atari, ``--env`` (ALE/Breakout-v5) with ``--num-envs`` (8) envs: ale-py's C++
  ``AtariVectorEnv`` on 1 and 2 threads, EnvPool on 1 and 2 threads (if installed), Gymnasium's
  AsyncVectorEnv (one worker process per env) and SyncVectorEnv of Gymnasium's wrappers;
- MinAtar, ``--minatar-env`` (MinAtar/Breakout-v1) with ``--minatar-envs`` (64): sync vs async.

Steps are env steps (vector steps x envs; an Atari step is 4 frames). Writes
``atari_env_speed.md`` and ``atari_env_speed.json`` to ``--out``. About 4 minutes with the
defaults on 2 cores.

    python benchmarks/atari_env_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

ATARI_CASES = [
    {"label": "ale, 1 thread", "mode": "ale", "num_threads": 1},
    {"label": "ale, 2 threads", "mode": "ale", "num_threads": 2},
    {"label": "envpool, 1 thread", "mode": "envpool", "num_threads": 1},
    {"label": "envpool, 2 threads", "mode": "envpool", "num_threads": 2},
    {"label": "gymnasium async (1 process per env)", "mode": "async"},
    {"label": "gymnasium sync", "mode": "sync"},
]
MINATAR_CASES = [
    {"label": "gymnasium sync", "mode": "sync"},
    {"label": "gymnasium async (1 process per env)", "mode": "async"},
]


def child(case: dict) -> int:
    """Build one vector env, step it, print the rate."""
    import numpy as np

    from clippo.envs import atari

    start = time.perf_counter()
    if case["family"] == "atari":
        kwargs = {"num_threads": case["num_threads"]} if "num_threads" in case else {}
        envs = atari.make_atari_vector_env(case["env"], case["num_envs"], case["mode"], **kwargs)
    else:
        envs = atari.make_minatar_vector_env(case["env"], case["num_envs"], case["mode"])
    envs.reset(seed=0)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    n = envs.single_action_space.n
    actions = rng.integers(0, n, size=(case["warmup"] + case["steps"], case["num_envs"]), dtype=np.int64)
    for t in range(case["warmup"]):
        envs.step(actions[t])
    workers = [p.pid for p in getattr(envs.unwrapped, "processes", [])]  # AsyncVectorEnv's
    episodes = 0
    cpu_start = cpu_seconds(workers)
    start = time.perf_counter()
    for t in range(case["warmup"], case["warmup"] + case["steps"]):
        _, _, terminated, truncated, _ = envs.step(actions[t])
        episodes += int(np.count_nonzero(terminated | truncated))
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(workers) - cpu_start
    envs.close()
    env_steps = case["steps"] * case["num_envs"]
    _common.emit_result(
        {
            "steps_per_s": env_steps / elapsed,
            "cpu_us_per_step": cpu / env_steps * 1e6,
            "vector_step_ms": elapsed / case["steps"] * 1e3,
            "build_and_reset_s": build_s,
            "episodes_ended": episodes,
        }
    )
    return 0


def cpu_seconds(worker_pids: list[int]) -> float:
    """CPU time (user + system) of this process, all its threads, and the given worker processes."""
    total = sum(os.times()[:2])
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in worker_pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def envpool_available() -> bool:
    try:
        import envpool  # noqa: F401
    except ImportError:
        return False
    return True


def measure(case: dict) -> dict:
    return _common.measure_child(__file__, case)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ALE/Breakout-v5")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000, help="timed vector steps per Atari measurement")
    parser.add_argument("--warmup", type=int, default=100, help="vector steps before timing")
    parser.add_argument("--minatar-env", default="MinAtar/Breakout-v1")
    parser.add_argument("--minatar-envs", type=int, default=64)
    parser.add_argument("--minatar-steps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=_common.DEFAULT_OUT)
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the Markdown from --out's atari_env_speed.json"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.render:
        write_markdown(args.out, json.loads((args.out / "atari_env_speed.json").read_text()))
        return 0

    meta = {"command": _common.command_line(), "date": _common.now(), "machine": _common.machine_info()}
    meta["machine"]["packages"] = {
        name: _common.package_version(name) for name in ("ale-py", "envpool", "minatar", "opencv-python-headless")
    }
    cases = [
        {**c, "family": "atari", "env": args.env, "num_envs": args.num_envs, "steps": args.steps, "warmup": args.warmup}
        for c in ATARI_CASES
        if c["mode"] != "envpool" or envpool_available()
    ] + [
        {
            **c,
            "family": "minatar",
            "env": args.minatar_env,
            "num_envs": args.minatar_envs,
            "steps": args.minatar_steps,
            "warmup": args.warmup,
        }
        for c in MINATAR_CASES
    ]
    runs: dict[int, list[dict]] = {i: [] for i in range(len(cases))}
    for round_index in range(args.rounds):
        for i, case in enumerate(cases):
            result = measure(case)
            runs[i].append(result)
            rate = result.get("steps_per_s")
            print(
                f"round {round_index + 1}: {case['env']} {case['label']}: "
                + (f"{rate:,.0f} steps/s" if rate else result.get("error", "?")),
                flush=True,
            )
    meta["finished"] = _common.now()
    meta["load_average_at_end"] = os.getloadavg()

    rows = []
    for i, case in enumerate(cases):
        rates = [r["steps_per_s"] for r in runs[i] if "steps_per_s" in r]
        rows.append(
            {
                "family": case["family"],
                "env": case["env"],
                "num_envs": case["num_envs"],
                "label": case["label"],
                "mode": case["mode"],
                "num_threads": case.get("num_threads"),
                "median_steps_per_s": _common.median(rates),
                "min_steps_per_s": min(rates) if rates else None,
                "max_steps_per_s": max(rates) if rates else None,
                "median_vector_step_ms": _common.median(r.get("vector_step_ms") for r in runs[i]),
                "median_cpu_us_per_step": _common.median(r.get("cpu_us_per_step") for r in runs[i]),
                "median_build_and_reset_s": _common.median(r.get("build_and_reset_s") for r in runs[i]),
                "errors": [r["error"] for r in runs[i] if "error" in r],
                "runs": runs[i],
            }
        )
    atari_rows = [r for r in rows if r["family"] == "atari" and r["median_steps_per_s"]]
    fastest = max(atari_rows, key=lambda r: r["median_steps_per_s"]) if atari_rows else None
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "render")} | {"out": str(args.out)}
    data = {"meta": meta, "settings": settings, "rows": rows, "fastest_atari": fastest and fastest["label"]}
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "atari_env_speed.json", data)
    write_markdown(args.out, data)
    return 0


def write_markdown(out: Path, data: dict) -> None:
    """``atari_env_speed.md`` from the measurements in ``data`` (what ``atari_env_speed.json`` holds)."""
    from clippo.envs import atari

    meta, settings, rows = data["meta"], data["settings"], data["rows"]
    nproc = meta["machine"]["nproc"]
    loads = [meta["machine"]["load_average_at_start"], meta.get("load_average_at_end")]
    busy = any(load is not None and max(load) > nproc for load in loads)
    lines = [
        "# Atari and MinAtar: env-only steps/second",
        "",
        "Random actions, env steps per second (vector steps x envs; one Atari step is 4 frames) "
        f"over {settings['steps']:,} timed vector steps (MinAtar {settings['minatar_steps']:,}) "
        f"after {settings['warmup']} warm-up steps, each measurement a fresh child process, modes alternating, "
        f"{settings['rounds']} rounds: median (min-max). Atari through `clippo.envs.atari.make_atari_vector_env`: "
        "standard preprocessing (no-op reset up to 30, "
        "frame skip 4 with max-pooling, 84x84 grayscale, 4 stacked frames, FIRE on reset), raw rewards, whole games, "
        '`info["lives"]`, NEXT_STEP autoreset, the env\'s own sticky actions (0.25 for v5). MinAtar through '
        "`make_minatar_vector_env` (sticky actions 0.1). CPU us per env step: user + system time of the "
        "process, its threads and its worker processes over the timed steps, which other load on the machine "
        "changes less than the wall-clock rate (with 2 cores, 2 threads or processes can at best halve the "
        "wall time per step).",
        "",
    ]
    lines += _common.md_table(
        [
            "env",
            "envs",
            "vector env",
            "steps/s, median",
            "min-max",
            "ms per vector step",
            "CPU us per env step",
            "build + reset, s",
        ],
        [
            [
                r["env"],
                r["num_envs"],
                r["label"],
                _common.fmt(r["median_steps_per_s"], 0),
                f"{_common.fmt(r['min_steps_per_s'], 0)}-{_common.fmt(r['max_steps_per_s'], 0)}",
                _common.fmt(r["median_vector_step_ms"], 2),
                _common.fmt(r["median_cpu_us_per_step"], 0),
                _common.fmt(r["median_build_and_reset_s"], 2),
            ]
            for r in rows
        ],
    )
    errors = [f"- {r['env']} {r['label']}: {r['errors'][0]}" for r in rows if r["errors"]]
    if errors:
        lines += ["", "Failed measurements:", *errors]
    lines += [
        "",
        f"Fastest Atari mode in this run: **{data['fastest_atari'] or 'n/a'}**. clippo's `--vector-env auto` for Atari "
        f"ids is `{atari.AUTO_ATARI_MODE}` with {atari.DEFAULT_ALE_THREADS} threads "
        "(`clippo.envs.atari.AUTO_ATARI_MODE`, `DEFAULT_ALE_THREADS`).",
    ]
    if busy:
        lines += [
            "",
            f"The load average exceeded the {nproc} cores during this run (other processes shared the CPUs): "
            "the wall-clock rates are low and noisy; compare modes within a round "
            "(`atari_env_speed.json` has every run).",
        ]
    lines += [
        "",
        "## Machine and command",
        "",
        *_common.machine_markdown(meta),
        f"- load average at the end {_common.fmt_load(meta.get('load_average_at_end'))}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in meta["machine"]["packages"].items()),
        "",
    ]
    (out / "atari_env_speed.md").write_text("\n".join(lines))
    print(f"wrote {out / 'atari_env_speed.md'}")


if __name__ == "__main__":
    sys.exit(main())

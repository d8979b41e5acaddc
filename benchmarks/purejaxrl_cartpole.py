"""clippo against PureJaxRL on PureJaxRL's own CartPole-v1 recipe: whole-process time, alternating.

PureJaxRL (github.com/luchris429/purejaxrl) compiles its whole training loop, env included
(gymnax's CartPole), into one XLA program. Its ``purejaxrl/ppo.py`` CartPole recipe: 4 envs x 128
steps, 4 epochs of 4 minibatches, Adam lr 2.5e-4 annealed linearly, clipped value loss, entropy
0.01, gamma 0.99, lambda 0.95, clip 0.2, grad norm 0.5, two 64-unit tanh MLPs, 500k steps.
clippo runs the same recipe with ``clippo train CartPole-v1`` on Gymnasium's CartPole (its native
vector env) and the default run directory (checkpoints, metrics, the final 10-episode evaluation).

Nothing of PureJaxRL is copied here: pass a checkout's ``purejaxrl`` folder (the one holding
``ppo.py`` and ``wrappers.py``) with ``--purejaxrl``; a small driver (below) imports ``make_train``
from it (with empty stand-ins for the brax and navix modules its ``wrappers.py`` imports for
other envs), builds the recipe's config with ``DEBUG`` off (its ``__main__`` turns on a per-step print
callback), jit-compiles and runs it, in a Python that has jax, flax, optax, distrax and gymnax 0.0.9
(``--jax-python``; e.g. ``python3 -m venv /work/venv-jax && /work/venv-jax/bin/pip install jax flax
optax distrax gymnax==0.0.9``).

Each round runs both, one after the other (the order alternating), once per seed, each process
pinned to one core (``taskset -c``, default core 0; XLA otherwise spreads over ~1.2 cores) and
single-threaded (OMP/MKL/OpenBLAS one thread; XLA's Eigen pool off). Reported per run: wall time
of the whole process (imports and XLA compilation included) and its CPU time (user + system, from
``getrusage(RUSAGE_CHILDREN)``: on a shared machine the steadier figure); clippo's rollout/update
split from its metrics.csv; the returns (clippo: its evaluation; PureJaxRL: the mean return of the
episodes that ended in its last 10 updates), so that neither wins by learning nothing.

    python benchmarks/purejaxrl_cartpole.py --purejaxrl ~/purejaxrl/purejaxrl --seeds 1 2 3 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    REPO_SRC,
    RESULT_PREFIX,
    child_env,
    command_line,
    failure,
    fmt,
    git_commit,
    machine_info,
    machine_markdown,
    md_table,
    now,
    parse_child_output,
    pinned,
    pinning_core,
    time_clippo_train,
    timed,
    write_json,
)

DEFAULT_JAX_PYTHON = "/work/venv-jax/bin/python"
TOTAL_STEPS = 500_000

#: The recipe, as clippo's flags (Gymnasium's CartPole, everything else as in PureJaxRL's config).
CLIPPO_FLAGS = [
    "--preset", "default", "--num-envs", "4", "--num-steps", "128", "--num-minibatches", "4",
    "--update-epochs", "4", "--learning-rate", "2.5e-4", "--anneal-lr", "--clip-value-loss",
    "--ent-coef", "0.01", "--vf-coef", "0.5", "--max-grad-norm", "0.5", "--gamma", "0.99",
    "--gae-lambda", "0.95", "--clip-epsilon", "0.2", "--hidden-sizes", "64", "64", "--activation", "tanh",
    "--torch-threads", "1", "--no-tensorboard", "--no-progress",
]  # fmt: skip

# Run by --jax-python with argv [purejaxrl_dir, seed, total_steps]; prints one BENCH_RESULT line.
PUREJAXRL_DRIVER = """
import json, sys, time, types
start = time.perf_counter()
sys.path.insert(0, sys.argv[1])
# wrappers.py imports brax and navix for its other envs' wrappers; CartPole uses neither, so empty
# stand-ins spare installing (and importing, which would add seconds to PureJaxRL's time) them.
for name in ("brax", "brax.envs", "brax.envs.wrappers", "brax.envs.wrappers.training", "navix"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["brax"].envs = sys.modules["brax.envs"]
sys.modules["brax.envs.wrappers.training"].EpisodeWrapper = object
sys.modules["brax.envs.wrappers.training"].AutoResetWrapper = object
import jax
import numpy as np
from ppo import make_train
imported = time.perf_counter()
config = {
    "LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "TOTAL_TIMESTEPS": float(sys.argv[3]),
    "UPDATE_EPOCHS": 4, "NUM_MINIBATCHES": 4, "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2,
    "ENT_COEF": 0.01, "VF_COEF": 0.5, "MAX_GRAD_NORM": 0.5, "ACTIVATION": "tanh",
    "ENV_NAME": "CartPole-v1", "ANNEAL_LR": True, "DEBUG": False,
}
out = jax.block_until_ready(jax.jit(make_train(config))(jax.random.PRNGKey(int(sys.argv[2]))))
trained = time.perf_counter()
metrics = out["metrics"]
ended = np.asarray(metrics["returned_episode"])[-10:]
returns = np.asarray(metrics["returned_episode_returns"])[-10:][ended]
print("BENCH_RESULT " + json.dumps({
    "import_s": imported - start, "compile_and_train_s": trained - imported,
    "final_return": float(returns.mean()) if returns.size else None, "final_episodes": int(returns.size),
}))
"""


def jax_versions(python: str) -> str:
    """The jax-side package versions, as ``name version`` pairs (what ``--jax-python`` runs)."""
    code = (
        "import importlib.metadata as m\n"
        "for n in ('jax', 'jaxlib', 'flax', 'optax', 'distrax', 'gymnax'):\n"
        "    print(n, m.version(n))"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return ", ".join(proc.stdout.split("\n")).strip(", ") if proc.returncode == 0 else "unknown"


def run_purejaxrl(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    env = child_env()
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["JAX_PLATFORMS"] = "cpu"
    command = [args.jax_python, "-c", PUREJAXRL_DRIVER, str(args.purejaxrl), str(seed), str(args.total_steps)]
    proc, wall, cpu = timed(pinned(command, args.core), env)
    result = parse_child_output(proc.stdout)
    if proc.returncode != 0 or result is None:
        return {"library": "purejaxrl", "seed": seed, "ok": False, "error": failure(proc)}
    return {"library": "purejaxrl", "seed": seed, "ok": True, "wall_s": wall, "cpu_s": cpu, **result}


def run_clippo(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    train_args = ["CartPole-v1", *CLIPPO_FLAGS, "--seed", str(seed), "--total-steps", str(args.total_steps)]
    return {"library": "clippo", "seed": seed, **time_clippo_train(train_args, args.core)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for library in ("clippo", "purejaxrl"):
        ok = [run for run in runs if run["library"] == library and run["ok"]]
        summary[library] = {
            key: statistics.median(run[key] for run in ok) if ok else None
            for key in ("wall_s", "cpu_s", "rollout_s", "update_s", "train_loop_s", "compile_and_train_s")
            if all(key in run for run in ok)
        }
        summary[library]["runs"] = len(ok)
        summary[library]["min_return"] = min(
            (run.get("eval_return", run["final_return"]) for run in ok if run["final_return"] is not None), default=None
        )
    clippo, peer = summary["clippo"], summary["purejaxrl"]
    for key in ("wall_s", "cpu_s"):
        if clippo.get(key) and peer.get(key):
            summary[f"speedup_{key[:-2]}"] = peer[key] / clippo[key]
    return summary


def markdown(meta: dict[str, Any], runs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        "# clippo vs PureJaxRL: PureJaxRL's CartPole-v1 recipe, whole process",
        "",
        f"Command: `{meta['command']}` ({meta['date']}). Each process pinned to core {meta['core']}, one thread.",
        "Wall and CPU time of the whole process (imports, XLA compilation, clippo's checkpoints and final",
        "evaluation included); return: clippo's 10-episode evaluation, PureJaxRL's mean return of the episodes",
        "ended in its last 10 updates.",
        "",
    ]
    rows = []
    for run in runs:
        if not run["ok"]:
            rows.append([run["library"], run["seed"], "failed", run["error"], "", ""])
            continue
        split = f"{fmt(run['rollout_s'])} / {fmt(run['update_s'])}" if "rollout_s" in run else ""
        ret = run.get("eval_return", run["final_return"])
        rows.append([run["library"], run["seed"], fmt(run["wall_s"]), fmt(run["cpu_s"]), split, fmt(ret, 1)])
    lines += md_table(["library", "seed", "wall s", "CPU s", "rollout / update s (clippo's metrics)", "return"], rows)
    clippo, peer = summary["clippo"], summary["purejaxrl"]
    lines += [
        "",
        f"Medians: clippo wall {fmt(clippo.get('wall_s'))} s, CPU {fmt(clippo.get('cpu_s'))} s; "
        f"PureJaxRL wall {fmt(peer.get('wall_s'))} s, CPU {fmt(peer.get('cpu_s'))} s. "
        f"PureJaxRL time / clippo time: wall {fmt(summary.get('speedup_wall'))}x, "
        f"CPU {fmt(summary.get('speedup_cpu'))}x. "
        f"Lowest return: clippo {fmt(clippo.get('min_return'), 1)}, PureJaxRL {fmt(peer.get('min_return'), 1)}.",
        "",
        f"- clippo: this checkout's src/ (commit {meta['clippo_commit']}, uncommitted changes not shown)",
        f"- PureJaxRL: `{meta['purejaxrl']}` (commit {meta['purejaxrl_commit']}) run by `{meta['jax_python']}` "
        f"({meta['jax_versions']})",
        *machine_markdown(meta),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--purejaxrl", type=Path, required=True, help="a checkout's purejaxrl/ folder (ppo.py)")
    parser.add_argument("--jax-python", default=DEFAULT_JAX_PYTHON, help="a Python with jax, flax, optax, gymnax")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=1, help="passes over the seeds")
    parser.add_argument("--total-steps", type=int, default=TOTAL_STEPS)
    parser.add_argument("--core", default="0", help="taskset core list for every child ('none': no pinning)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "purejaxrl_cartpole")
    args = parser.parse_args(argv)
    if (args.purejaxrl / "purejaxrl" / "ppo.py").is_file():
        args.purejaxrl = args.purejaxrl / "purejaxrl"
    if not (args.purejaxrl / "ppo.py").is_file():
        parser.error(f"--purejaxrl {args.purejaxrl}: no ppo.py there (give a purejaxrl checkout's purejaxrl/ folder)")
    if not Path(args.jax_python).exists():
        parser.error(f"--jax-python {args.jax_python}: not found (a Python with jax, flax, optax, distrax, gymnax)")
    args.purejaxrl = args.purejaxrl.resolve()
    args.core = pinning_core(args.core)

    started = now()
    runs: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for seed_index, seed in enumerate(args.seeds):
            order = [run_clippo, run_purejaxrl]
            if (round_index + seed_index) % 2:
                order.reverse()
            for run in order:
                result = run(args, seed)
                runs.append(result)
                print(json.dumps(result), flush=True)

    summary = summarize(runs)
    meta = {
        "machine": machine_info(),
        "command": command_line(),
        "date": started,
        "clippo_commit": git_commit(REPO_SRC.parent),
        "purejaxrl_commit": git_commit(args.purejaxrl),
        "core": args.core,
        "jax_python": args.jax_python,
        "purejaxrl": str(args.purejaxrl),
        "jax_versions": jax_versions(args.jax_python),
        "finished": now(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"meta": meta, "runs": runs, "summary": summary})
    (args.out / "results.md").write_text(markdown(meta, runs, summary))
    print(RESULT_PREFIX + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

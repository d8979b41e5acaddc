"""Helpers shared by the benchmark scripts: machine description, child processes, Markdown.

Only the standard library is imported here, so the parent processes of the benchmarks stay light
(all the training happens in child processes).
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results"
REPO_SRC = BENCH_DIR.parent / "src"

# Every child process runs single-threaded: small MLPs are fastest on one thread, and the
# comparison must not depend on how many cores each library would grab by default.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def measure_child(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --child SPEC`` in a fresh single-threaded interpreter; its result (the JSON line
    ``emit_result`` printed), or ``{"error": ...}`` with the last line it wrote."""
    proc = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True, env=child_env()
    )
    result = parse_child_output(proc.stdout)
    if proc.returncode != 0 or result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return result


def run_child_script(script: str, spec: dict[str, Any], log_path: Path, keys: Sequence[str]) -> dict[str, Any]:
    """Run ``script _child SPEC`` (one measurement) in a fresh single-threaded interpreter; its
    output goes to ``log_path``. Returns ``spec``'s ``keys`` plus ``ok`` and the child's result,
    or its error (exit status and last lines)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(script).resolve()), "_child", json.dumps(spec)]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
    log_path.write_text(f"spec: {json.dumps(spec)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    parsed = parse_child_output(proc.stdout) if proc.returncode == 0 else None
    base = {k: spec[k] for k in keys if k in spec}
    if parsed is None:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        return {**base, "ok": False, "error": f"exit status {proc.returncode}: {tail}"}
    return {**base, "ok": True, **parsed}


def git_commit(path: Path) -> str:
    """The commit checked out at ``path`` (``unknown`` outside a git checkout)."""
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def pinning_core(core: str) -> str | None:
    """A ``--core`` option's taskset core list, or None for no pinning ('none', or no taskset here)."""
    return None if core == "none" or shutil.which("taskset") is None else core


def pinned(command: list[str], core: str | None) -> list[str]:
    """``command`` run by ``taskset -c core`` (as it is for ``None``)."""
    return ["taskset", "-c", core, *command] if core is not None else command


def timed(command: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``command``; its result, wall seconds and CPU seconds (user + system, its children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


def failure(proc: subprocess.CompletedProcess) -> str:
    """A failed child in one line: its exit status and last line of output."""
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return f"exit status {proc.returncode}: {tail[0]}"


def time_clippo_train(train_args: list[str], core: str | None) -> dict[str, Any]:
    """``clippo train *train_args`` from this checkout's src/ in a fresh run directory, as a whole
    process (pinned to ``core``, one thread): ``ok``, wall and CPU seconds, steps, the rollout and
    update seconds and last training return from its metrics.csv, its final evaluation; or the error."""
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_SRC), env.get("PYTHONPATH")]))
    run_dir = Path(tempfile.mkdtemp(prefix="clippo-bench-")) / "run"
    command = [sys.executable, "-m", "clippo", "train", *train_args, "--run-dir", str(run_dir)]
    try:
        proc, wall, cpu = timed(pinned(command, core), env)
        if proc.returncode != 0:
            return {"ok": False, "error": failure(proc)}
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        evaluation = json.loads((run_dir / "eval.json").read_text())
        return {
            "ok": True,
            "wall_s": wall,
            "cpu_s": cpu,
            "steps": int(rows[-1]["global_step"]),
            "rollout_s": sum(float(row["rollout_time"]) for row in rows),
            "update_s": sum(float(row["update_time"]) for row in rows),
            "train_loop_s": float(rows[-1]["wall_time"]),
            "final_return": float(rows[-1]["recent_return"]),
            "eval_return": float(evaluation["mean_return"]),
        }
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "clippo": package_version("clippo"),
        "stable_baselines3": package_version("stable-baselines3"),
        "gymnasium": package_version("gymnasium"),
        "numpy": package_version("numpy"),
        "mujoco": package_version("mujoco"),
        "thread_env": THREAD_ENV,
        # the machine's own OpenBLAS settings (a forced core type decides numpy's matrix kernels)
        "openblas_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_")},
    }


def command_line() -> str:
    """The command that produced the results, as it can be pasted into a shell."""
    return shlex.join([sys.executable, *sys.argv])


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def parse_child_output(stdout: str) -> dict[str, Any] | None:
    """The last ``BENCH_RESULT {json}`` line a child printed (libraries may print other lines)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def emit_result(result: dict[str, Any]) -> None:
    """What a child prints as its last line for the parent to parse."""
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result, allow_nan=False, default=_json_default), flush=True)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays without importing numpy here
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    kept = [v for v in values if v is not None]
    if not kept:
        return None, None
    return statistics.fmean(kept), (statistics.pstdev(kept) if len(kept) > 1 else 0.0)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def fmt_pm(mean: float | None, std: float | None, digits: int = 1) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return lines


def machine_markdown(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    return [
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']} (finished {meta.get('finished', 'n/a')})",
        f"- machine: {m['nproc']} usable CPU cores (nproc), CPU `{m['cpu_model']}`, "
        f"load average at start {fmt_load(m['load_average_at_start'])}, {m['platform']}",
        f"- versions: Python {m['python']}, torch {m['torch']}, clippo {m['clippo']}, "
        f"stable-baselines3 {m['stable_baselines3']}, gymnasium {m['gymnasium']}, numpy {m['numpy']}, "
        f"mujoco {m['mujoco']}",
        "- every child process runs with "
        + ", ".join(f"{k}={v}" for k, v in m["thread_env"].items())
        + " and torch.set_num_threads(1)"
        + (
            "; the machine's environment sets " + ", ".join(f"{k}={v}" for k, v in m["openblas_env"].items())
            if m.get("openblas_env")
            else ""
        ),
    ]


def fmt_load(load: Sequence[float] | None) -> str:
    return "n/a" if load is None else " / ".join(f"{x:.2f}" for x in load)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n")

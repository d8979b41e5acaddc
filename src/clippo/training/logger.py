"""Per-update metrics: a CSV file (``pandas.read_csv(run_dir / "metrics.csv")``), TensorBoard
event files, and a live progress bar on a terminal or plain log lines otherwise."""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clippo.core import safety
from clippo.training.checkpoint import write_failure

METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"

# Column order of metrics.csv; TensorBoard gets the same names under "train/", except the
# evaluation's (already "eval/...").
COLUMNS = [
    "global_step",
    "update",
    "wall_time",
    "sps",
    "episode_return",
    "recent_return",
    "episode_length",
    "episodes",
    # the periodic deterministic evaluation (clippo.training.callbacks.EvalCallback): blank in the rows of
    # updates without one
    "eval/mean_return",
    "eval/std_return",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "epochs_run",
    "early_stopped",
    "skipped_steps",
    "learning_rate",
    # seconds this update spent (on rank 0): collecting the rollout with its critic values and
    # advantages; in the after-rollout exchange between ranks (0 alone; includes waiting for the
    # slowest rank); in the minibatch epochs (gradient all-reduces included)
    "rollout_time",
    "exchange_time",
    "update_time",
]


class RunLogger:
    """Writes one row per update. ``run_dir=None`` writes no files (Python API without a run dir)."""

    def __init__(
        self,
        run_dir: Path | None,
        total_steps: int,
        start_step: int = 0,
        show_progress: bool | None = None,
        tensorboard: bool = True,
        columns: list[str] | None = None,
    ):
        """``show_progress``: True a progress bar, False nothing, None a bar on a terminal and
        plain log lines (with a run directory) otherwise."""
        self.run_dir = run_dir
        #: metrics.csv's columns (COLUMNS, or a run kind's own list, e.g. clippo.multiagent's)
        self.columns = list(columns or COLUMNS)
        self._csv_file = None
        self._csv_path = Path(METRICS_FILE)
        self._csv = None
        self._tb = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / METRICS_FILE
            new_file = not path.exists() or path.stat().st_size == 0
            if not new_file and _header(path) != self.columns:  # a run begun by an older clippo
                _rewrite(path, _rows(path), self.columns)
            # never through a link or into another file's hard link (clippo.core.safety)
            self._csv_file = safety.open_append(path)
            self._csv_path = path
            self._csv = csv.DictWriter(self._csv_file, fieldnames=self.columns, extrasaction="ignore")
            if new_file:
                self._csv.writeheader()
            if tensorboard:
                safety.refuse_symlink(run_dir / TENSORBOARD_DIR)
                from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

                self._tb = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=start_step or None)
        self._plain = run_dir is not None and show_progress is None and not sys.stderr.isatty()
        if show_progress is None:
            show_progress = sys.stderr.isatty()
        self._bar = (
            tqdm(total=total_steps, initial=start_step, unit="step", unit_scale=True, dynamic_ncols=True)
            if show_progress
            else None
        )
        self._last_line = 0.0
        self._last_eval: float | None = None

    def log(self, metrics: dict[str, Any]) -> None:
        if self._csv is not None:
            assert self._csv_file is not None  # opened with the writer
            try:
                self._csv.writerow(metrics)
                self._csv_file.flush()  # a checkpoint may follow: its rows must not sit in a buffer
            except OSError as exc:  # (a full disk: one line naming the file)
                raise write_failure(self._csv_path, exc, "metrics file") from exc
        if self._tb is not None:
            step = metrics["global_step"]
            for name in self.columns[2:]:
                value = metrics.get(name)
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self._tb.add_scalar(name if name.startswith("eval/") else f"train/{name}", value, step)
        evaluated = metrics.get("eval/mean_return")
        if evaluated is not None:
            self._last_eval = evaluated
        if self._bar is not None:
            self._bar.n = metrics["global_step"]
            postfix = {"sps": f"{metrics['sps']:.0f}", "ret": _fmt(metrics.get("recent_return"))}
            if self._last_eval is not None:
                postfix["eval"] = _fmt(self._last_eval)
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()
        elif self._plain and (
            time.monotonic() - self._last_line > 5.0 or metrics.get("final") or evaluated is not None
        ):
            self._last_line = time.monotonic()
            evaluation = f"  eval {_fmt(evaluated)}" if evaluated is not None else ""
            print(
                f"step {metrics['global_step']}  update {metrics['update']}  sps {metrics['sps']:.0f}  "
                f"return {_fmt(metrics.get('recent_return'))}{evaluation}  kl {metrics['approx_kl']:.4f}  "
                f"clipfrac {metrics['clip_fraction']:.3f}",
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._csv_file is not None:
            self._csv_file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_metrics(run_dir: Path, global_step: int, columns: list[str] | None = None) -> None:
    """Drop metric rows logged after ``global_step`` (a resumed run logs them again). Every
    column of ``COLUMNS`` is kept (the evaluation's too); a file with an older header is
    rewritten with the current one, so that the rows appended next line up."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    rows = _rows(path)
    kept = [row for row in rows if row.get("global_step") and float(row["global_step"]) <= global_step]
    if len(kept) == len(rows) and _header(path) == (columns or COLUMNS):
        return
    _rewrite(path, kept, columns)


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rewrite(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> None:
    """Write ``rows`` under the current header (absent columns blank), atomically and never
    through a link (clippo.core.safety)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns or COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    safety.write_file(path, text.getvalue())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1f}"

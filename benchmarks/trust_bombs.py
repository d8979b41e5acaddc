"""Peak memory and wall time of clippo commands on the resource bombs of issue #30 (docs/trust.md).

Each command runs in a fresh process (``python -m clippo ...``) under a small wrapper process
that reports the command's peak resident memory (``ru_maxrss``). The baseline rows are the same
commands on the honest run they were made from. Run from the repository root:

    python benchmarks/trust_bombs.py

Writes nothing outside a temporary folder; prints one line per command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from clippo.training.checkpoint import read_checkpoint, write_atomic

# 10 lols, then 39 levels of 10 aliases each: 10**40 strings once expanded (a 2 KB file)
BILLION_LAUGHS = (
    "a0: &a0 ["
    + ", ".join(["lol"] * 10)
    + "]\n"
    + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 40))
    + "encoder_kwargs: {x: *a39}\n"
)
ZERO_TENSOR_BYTES = 400 << 20


_WRAPPER = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)\n"
    "print((done.stderr.strip().splitlines() or [''])[-1][:150])\n"
)


def measure(args: list[str], cwd: Path) -> str:
    """One command in a process of its own (under a wrapper that reads its ``ru_maxrss``):
    seconds, peak RSS (MB), exit status, last stderr line."""
    started = time.perf_counter()
    wrapper = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "clippo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    first, _, last = wrapper.stdout.partition("\n")
    peak_kb, code = first.split()
    return f"{seconds:5.1f} s  peak {int(peak_kb) / 1024:6.0f} MB  exit {code}  {last.strip()}"


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="clippo-trust-bombs-"))
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "clippo",
                "train",
                "CartPole-v1",
                "--run-dir",
                "run",
                "--total-steps",
                "256",
                "--num-envs",
                "2",
                "--num-steps",
                "32",
                "--eval-episodes",
                "1",
                "--no-tensorboard",
                "--no-progress",
            ],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        payload = read_checkpoint(folder / "run" / "agent.pt")
        payload["junk"] = torch.zeros(ZERO_TENSOR_BYTES, dtype=torch.uint8)
        torch.save(payload, folder / "stored.pt")
        del payload
        with (
            zipfile.ZipFile(folder / "stored.pt") as source,
            zipfile.ZipFile(folder / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as target,
        ):
            for entry in source.infolist():
                with source.open(entry) as reader, target.open(entry.filename, "w", force_zip64=True) as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
        (folder / "stored.pt").unlink()
        size = (folder / "bomb.pt").stat().st_size // 1024
        print(
            f"deflate bomb ({size} KB file, {ZERO_TENSOR_BYTES >> 20} MB zero tensor), eval: "
            f"{measure(['eval', 'bomb.pt', '--episodes', '1'], folder)}"
        )
        print(f"baseline eval:                {measure(['eval', 'run', '--episodes', '1'], folder)}")
        shutil.copytree(folder / "run", folder / "laughs")
        (folder / "laughs" / "config.yaml").write_text(BILLION_LAUGHS)
        print(f"billion laughs ({len(BILLION_LAUGHS)} bytes), report: {measure(['report', 'laughs'], folder)}")
        print(f"billion laughs, plot:          {measure(['plot', 'laughs', '-o', 'c.png'], folder)}")
        wide = read_checkpoint(folder / "run" / "agent.pt")
        wide["config"]["hidden_sizes"] = [8192, 8192]
        write_atomic(wide, folder / "wide.pt")
        print(f"hidden_sizes [8192, 8192], eval: {measure(['eval', 'wide.pt', '--episodes', '1'], folder)}")
        print(f"baseline report:               {measure(['report', 'run'], folder)}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

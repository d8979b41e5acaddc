"""Helpers shared by several test modules."""

from __future__ import annotations

import contextlib
import io

from clippo.tools.cli import main


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """main(args) in-process: exit code (argparse exits included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()

"""The docs name real code: every function in docs/concept-map.md exists in the file it names,
and the docs the README links to exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONCEPT_MAP = ROOT / "docs" / "concept-map.md"


def concept_rows() -> list[tuple[str, str, str]]:
    """(step, function, file) of each row of the concept map's table."""
    rows = []
    for line in CONCEPT_MAP.read_text().splitlines():
        if not re.match(r"\| \d+b? \|", line):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]  # "\|" inside formulas is not a cell border
        rows.append((cells[1], cells[2].strip("`"), cells[3].strip("`")))
    return rows


def defined_names(path: Path) -> set[str]:
    """Top-level functions and ``Class.method`` names defined in a Python file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}.{item.name}")
    return names


def test_concept_map_has_every_step():
    steps = " ".join(step for step, _, _ in concept_rows())
    for concept in (
        "act",
        "trajectories",
        "rewards-to-go",
        "returns",
        "GAE",
        "likelihood ratio",
        "clipped loss",
        "value loss",
        "entropy bonus",
        "combined loss",
        "backward",
        "Adam step",
        "KL early stopping",
    ):
        assert concept in steps, concept


@pytest.mark.parametrize("step, function, file", concept_rows())
def test_concept_map_names_real_functions(step, function, file):
    path = ROOT / file
    assert path.is_file(), f"{step}: {file} does not exist"
    assert function in defined_names(path), f"{step}: {function} is not defined in {file}"


def test_linked_docs_exist():
    readme = (ROOT / "README.md").read_text()
    for name in ("concept-map.md", "shared-vs-separate.md", "convergence.md", "reward-normalization.md", "tuning.md"):
        assert (ROOT / "docs" / name).is_file(), name
        assert f"docs/{name}" in readme, f"README does not link docs/{name}"


def test_presets_doc_is_what_clippo_presets_prints():
    """docs/presets.md is generated (``clippo presets > docs/presets.md``): regenerate it after a
    change to the presets or the config fields."""
    from tests.helpers import run_cli

    code, out, _ = run_cli(["presets"])
    assert code == 0
    assert (ROOT / "docs" / "presets.md").read_text() == out

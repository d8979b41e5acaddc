"""The docs name real code and their examples run.

- Every function in docs/concept-map.md exists in the file it names.
- Every Python code block of README.md and docs/*.md runs, unless the line just before its opening
  fence is the marker ``<!-- not run -->`` (kept for examples that need a GPU, torchrun, a long
  run or a package outside the test extra). Each block runs in-process, in a fresh namespace (so
  it must define or import every name it uses), in a temporary working directory shared by the
  blocks of its page in page order: a block may read a file that an earlier block of the same page
  wrote (docs/export.md exports ``policy.onnx``, then runs it with onnxruntime alone), as a reader
  following the page would.
- Small step counts: the blocks are written with realistic budgets (``agent.learn(100_000)``);
  while they run, ``PPO.learn`` (single- and multi-agent) is wrapped so that each call trains for
  at most ``STEP_CAP`` environment (or agent) steps (still rounded up to whole rollouts, as
  always, so every example runs at least one update) with no progress display.
  Nothing else about the block changes: the same code path, the same presets.
- Every ``clippo SUBCOMMAND --flag`` shown in a bash or text block (also after ``-m clippo``) or in
  an inline code span is a subcommand and a flag that the command line's parser
  (``clippo.tools.cli.build_parser``) knows.
- The metrics table of docs/evaluation.md lists exactly the keys a training run's callbacks
  receive and the columns of metrics.csv.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONCEPT_MAP = ROOT / "docs" / "concept-map.md"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: also checked for clippo commands (their flags), not for Python examples
COMMAND_FILES = [*DOC_FILES, ROOT / "benchmarks" / "README.md"]
NOT_RUN = "<!-- not run -->"
#: the most environment steps one ``learn`` call of a doc example trains for in the tests (one
#: rollout of the default 8 x 128: the examples run, they are not learning tests)
STEP_CAP = 1024


# ------------------------------------------------------------------------------------------------
# code blocks
# ------------------------------------------------------------------------------------------------
@dataclass
class CodeBlock:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    run: bool  # False when marked NOT_RUN

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[CodeBlock]:
    """The fenced code blocks of a Markdown file (fences at the start of a line)."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        start, language = i, match.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marked = start > 0 and lines[start - 1].strip() == NOT_RUN
        blocks.append(CodeBlock(path, start + 1, language, "\n".join(lines[start + 1 : end]), not marked))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in code_blocks(path)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "python"]
SHELL_BLOCKS = [
    block for path in COMMAND_FILES for block in code_blocks(path) if block.language in ("bash", "sh", "text", "")
]


def test_blocks_are_found():
    assert len(PYTHON_BLOCKS) >= 10, [b.where for b in PYTHON_BLOCKS]
    assert any(block.path.name == "README.md" for block in PYTHON_BLOCKS)
    # the marker is for exceptions: most examples run
    assert sum(not block.run for block in PYTHON_BLOCKS) <= len(PYTHON_BLOCKS) // 4


@pytest.fixture
def capped_learn(monkeypatch):
    """``PPO.learn`` (and multi-agent PPO's, which ``PPO(pettingzoo_env)`` returns) trains for at most
    STEP_CAP steps per call, without a progress display."""
    from clippo import PPO
    from clippo.multiagent.agent import MultiAgentPPO

    for cls in (PPO, MultiAgentPPO):

        def capped(self, total_steps=None, progress=None, callback=None, learn=cls.learn):
            steps = self.config.total_steps if total_steps is None else total_steps
            return learn(self, min(steps, STEP_CAP), progress=False, callback=callback)

        monkeypatch.setattr(cls, "learn", capped)


def run_block(block: CodeBlock) -> None:
    code = compile(block.code, block.where, "exec")
    exec(code, {"__name__": "__doc_example__"})


@pytest.fixture(scope="module")
def page_dirs(tmp_path_factory):
    """A working directory per page, shared by its blocks, and the blocks already run there."""
    dirs: dict[Path, tuple[Path, set[int]]] = {}

    def page_dir(path: Path) -> tuple[Path, set[int]]:
        if path not in dirs:
            dirs[path] = tmp_path_factory.mktemp(path.stem), set()
        return dirs[path]

    return page_dir


RUN_BLOCKS = [block for block in PYTHON_BLOCKS if block.run]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.where)
def test_python_block_runs(block, page_dirs, monkeypatch, capped_learn):
    directory, done = page_dirs(block.path)
    monkeypatch.chdir(directory)
    # the page's earlier blocks first, when this one was selected alone (pytest -k)
    for earlier in RUN_BLOCKS:
        if earlier.path == block.path and earlier.line < block.line and earlier.line not in done:
            run_block(earlier)
            done.add(earlier.line)
    run_block(block)
    done.add(block.line)


def test_marked_blocks_are_still_python():
    """A block that is not run must at least parse."""
    for block in PYTHON_BLOCKS:
        if not block.run:
            ast.parse(block.code, block.where)


# ------------------------------------------------------------------------------------------------
# command lines
# ------------------------------------------------------------------------------------------------
@functools.cache  # built once: the parametrized tests only read it
def clippo_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from clippo.tools.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(subparsers.choices)


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def clippo_commands(block: CodeBlock) -> list[tuple[str, list[str]]]:
    """(the command as written, its words after ``clippo``) for each clippo command in a block."""
    commands = []
    text = block.code.replace("\\\n", " ")  # continued lines
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line)  # comments
        for part in re.split(r"&&|;|\|\|", line):
            try:
                words = shlex.split(part)
            except ValueError:  # an unbalanced quote in a synopsis: split on spaces
                words = part.split()
            for i, word in enumerate(words):
                if word == "clippo" and (i == 0 or words[i - 1] == "-m"):
                    commands.append((part.strip(), words[i + 1 :]))
                    break
    return commands


def flags_of(words: list[str]) -> list[str]:
    """The ``--flags`` among the words of a command or synopsis (``[--a|--b]`` gives both)."""
    flags = []
    for word in words:
        for piece in word.strip("[]").split("|"):
            piece = piece.strip("[]")
            if re.match(r"^--?[A-Za-z]", piece):
                flags.append(piece.split("=", 1)[0])
    return flags


def inline_commands(path: Path) -> list[CodeBlock]:
    """Inline code spans that are clippo commands (`` `clippo eval RUN_DIR --json` ``), outside fenced blocks."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [
        CodeBlock(path, text[: m.start()].count("\n") + 1, "inline", m.group(1), True)
        for m in re.finditer(r"`(clippo [^`]+)`", text)
    ]


SHELL_COMMANDS = [
    (block, command, words)
    for block in SHELL_BLOCKS + [span for path in COMMAND_FILES for span in inline_commands(path)]
    for command, words in clippo_commands(block)
]


def test_shell_commands_are_found():
    assert len(SHELL_COMMANDS) >= 30
    assert {words[0] for _, _, words in SHELL_COMMANDS if words} >= {"train", "eval", "resume", "export", "tune"}


@pytest.mark.parametrize(
    "block, command, words", SHELL_COMMANDS, ids=[f"{b.where} {c[:60]}" for b, c, _ in SHELL_COMMANDS]
)
def test_shell_command_flags_exist(block, command, words):
    parser, subcommands = clippo_parsers()
    position = 0
    while position < len(words) and words[position].startswith("-"):  # clippo --debug train ...
        assert words[position] in option_strings(parser), f"{block.where}: {command}: clippo has no {words[position]}"
        position += 1
    if position == len(words):
        return
    name = words[position]
    if name.isupper():  # a placeholder: `clippo SUBCOMMAND --help`
        return
    assert name in subcommands, f"{block.where}: {command}: no subcommand {name!r} (have {sorted(subcommands)})"
    known = option_strings(subcommands[name])
    for flag in flags_of(words[position + 1 :]):
        assert flag in known, f"{block.where}: {command}: clippo {name} has no {flag}"


def test_yaml_config_blocks_name_real_fields():
    """A YAML block that sets hyperparameters names fields of PPOConfig."""
    import yaml

    from clippo import PPOConfig

    names = {f.name for f in fields(PPOConfig)}
    blocks = [block for block in ALL_BLOCKS if block.language == "yaml"]
    assert blocks
    for block in blocks:
        values = yaml.safe_load(block.code)
        assert isinstance(values, dict) and values, block.where
        assert set(values) <= names, f"{block.where}: not PPOConfig fields: {set(values) - names}"


# ------------------------------------------------------------------------------------------------
# the metrics table
# ------------------------------------------------------------------------------------------------
def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "evaluation.md").read_text().split("## Metrics", 1)[1]
    return {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", text, re.MULTILINE)}


def test_metrics_table_lists_every_key():
    from clippo import PPO
    from clippo.training.logger import COLUMNS

    seen: set[str] = set()
    agent = PPO(
        "CartPole-v1",
        num_envs=2,
        num_steps=16,
        num_minibatches=2,
        update_epochs=1,
        eval_every=32,
        eval_episodes=1,
        seed=0,
    )
    agent.learn(96, progress=False, callback=lambda agent, metrics: seen.update(metrics))
    agent.close()
    assert {"eval/mean_return", "approx_kl", "final"} <= seen
    documented, keys = documented_metrics(), seen | set(COLUMNS)
    assert documented == keys, f"undocumented: {sorted(keys - documented)}; not a metric: {sorted(documented - keys)}"


# ------------------------------------------------------------------------------------------------
# README and the concept map
# ------------------------------------------------------------------------------------------------
def test_readme_is_short_and_starts_with_the_set_up_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    first = [block.code for block in code_blocks(ROOT / "README.md")[:2]]
    assert "clippo train CartPole-v1 && clippo eval runs/latest" in first[0]
    assert "python -m pytest tests" in first[1]


def concept_rows() -> list[tuple[str, str, str]]:
    """(step, function, file) of each row of the concept map's table."""
    rows = []
    for line in CONCEPT_MAP.read_text().splitlines():
        if not re.match(r"\| \d+b? \|", line):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]  # "\|" inside formulas is not a cell border
        rows.append((cells[1], cells[2].strip("`"), cells[3].strip("`")))
    return rows


@functools.cache  # parsed once per file: many concept-map rows name the same file
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


def test_readme_links_resolve():
    """Relative links of README.md point at files of the repository (the site's own links are
    checked by ``mkdocs build --strict``)."""
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_presets_doc_is_what_clippo_presets_prints():
    """docs/presets.md is generated (``clippo presets > docs/presets.md``): regenerate it after a
    change to the presets or the config fields."""
    from tests.helpers import run_cli

    code, out, _ = run_cli(["presets"])
    assert code == 0
    assert (ROOT / "docs" / "presets.md").read_text() == out

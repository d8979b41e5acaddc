"""MkDocs hook: publish benchmarks/README.md and benchmarks/results/ with the documentation.

They stay outside docs/ (the benchmark scripts write there, and the repository's README links
there), so the docs link to them as ``../benchmarks/...``, which works when reading the files on
GitHub. For the site, this hook adds those files under ``benchmarks/`` and rewrites such links
to match, so ``mkdocs build --strict`` still checks every one of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
#: file kinds of benchmarks/results worth publishing (run directories are git-ignored and skipped)
PUBLISHED = {".md", ".png", ".svg", ".json", ".yaml", ".csv", ".html", ".txt"}
LINK_OUT = re.compile(r"\]\(\.\./benchmarks/")


def benchmark_files() -> list[str]:
    """Paths, relative to the repository root, of the benchmark files the site includes."""
    paths = ["benchmarks/README.md"]
    for path in sorted((ROOT / "benchmarks" / "results").rglob("*")):
        relative = path.relative_to(ROOT)
        if path.is_file() and path.suffix in PUBLISHED and "runs" not in relative.parts:
            paths.append(relative.as_posix())
    return paths


def on_files(files: Files, config) -> Files:
    for path in benchmark_files():
        files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    # A page at docs/x.md reaches the repository's benchmarks/ as ../benchmarks/; in the site,
    # where benchmarks/ sits inside the docs tree, the same file is benchmarks/ from the page.
    depth = page.file.src_uri.count("/")
    up = "../" * depth
    if page.file.src_uri.startswith("benchmarks/"):
        # and the other way: a benchmark page reaches docs/x.md as ../docs/x.md (one "../" per
        # folder), which in the site is x.md at the top of the tree
        return markdown.replace("](" + up + "docs/", "](" + up)
    return LINK_OUT.sub("](" + up + "benchmarks/", markdown)

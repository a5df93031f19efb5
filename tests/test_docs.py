"""Every document the repository cites must be in the repository.

Docstrings, comments, notebooks and docs cite ``docs/algorithm.md §N`` and friends. A citation of a file that users
do not have (a planning note, a path on someone's machine) is a dead end, so any ``*.md`` path mentioned in a
tracked text file must resolve to a tracked file, relative to the repository root or to the citing file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".ipynb", ".md", ".toml", ".yml", ".yaml", ".cfg", ".txt", ".html", ".js"}
# a path-like token ending in .md, not part of a URL
DOC_PATH = re.compile(r"(?<![\w/.:-])((?:\.{1,2}/)?[\w.-]+(?:/[\w.-]+)*\.md)\b")
SECTION = re.compile(r"docs/(\w+)\.md ?§ ?(\d+)")


def _tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = [ROOT / name for name in listed.splitlines()]
    this = Path(__file__).resolve()  # holds example citations on purpose
    return [f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file() and f.resolve() != this]


def _citations(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in DOC_PATH.finditer(line):
            start = match.start(1)
            if re.search(r"https?://\S*$", line[:start]):  # part of a web address
                continue
            before, after = line[start - 1 : start], line[match.end(1) : match.end(1) + 1]
            if before and before == after and before in "'\"":  # a quoted file name in code or test data
                continue
            found.append((number, match.group(1)))
    return found


def test_every_cited_document_exists_in_the_repository():
    missing = []
    for path in _tracked_text_files():
        for number, cited in _citations(path):
            candidates = (ROOT / cited, path.parent / cited)
            if not any(c.resolve().is_file() and c.resolve().is_relative_to(ROOT) for c in candidates):
                missing.append(f"{path.relative_to(ROOT)}:{number}: {cited}")
    assert not missing, "cited documents that are not in the repository:\n" + "\n".join(missing)


def test_cited_sections_exist():
    """``docs/X.md §N`` must name a top-level section N that the document has."""
    headings: dict[str, set[str]] = {}
    for doc in (ROOT / "docs").glob("*.md"):
        headings[doc.stem] = set(re.findall(r"^## (\d+)\.", doc.read_text(encoding="utf-8"), flags=re.M))
    bad = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in SECTION.finditer(text):
            name, section = match.groups()
            if section not in headings.get(name, set()):
                bad.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not bad, "citations of sections that do not exist:\n" + "\n".join(bad)


def test_the_checker_catches_a_dead_citation(tmp_path):
    """The citation pattern finds the forms the repository uses, and leaves web addresses alone."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""See docs/algorithm.md §9 and ../notes/plan.md; https://example.org/README.md is a URL."""\n'
        "# the (tficon-algorithm.md section 8.4) form\n"
        'names = ("notes.md", "bg.png")  # file names as data, not citations\n'
    )
    assert [c for _, c in _citations(sample)] == ["docs/algorithm.md", "../notes/plan.md", "tficon-algorithm.md"]

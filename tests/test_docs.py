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


# ---------------------------------------------------------------------------------------------------------------
# The README and the docs pages: their commands run as written, and the README stays a newcomer's page
# ---------------------------------------------------------------------------------------------------------------

README = ROOT / "README.md"


def _shell_commands(path: Path) -> list[str]:
    """The commands of a page's ```bash blocks: continuation lines joined, comments and '&& ...' tails dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].split("&&")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_ci_runs_the_readmes_test_command_verbatim():
    test_commands = [c for c in README.read_text(encoding="utf-8").splitlines() if c.endswith("python -m pytest")]
    assert len(test_commands) == 1, test_commands
    assert test_commands[0] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_every_tficon_command_in_the_readme_and_docs_parses():
    """Each ``tficon ...`` line of README.md and docs/*.md is accepted by the command line's parser as written
    (lines with a ``...`` or ``<placeholder>`` are sketches and skipped)."""
    import shlex

    from tficon.cli import build_parser

    checked, bad = 0, []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for command in _shell_commands(page):
            if not command.startswith("tficon ") or "..." in command or "<" in command:
                continue
            checked += 1
            try:
                build_parser().parse_args(shlex.split(command)[1:])
            except SystemExit:
                bad.append(f"{page.relative_to(ROOT)}: {command}")
    assert checked >= 8 and not bad, "commands the CLI refuses:\n" + "\n".join(bad)


def test_the_readme_is_short_and_says_the_toy_models_limits_first():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material to docs/"
    top = "\n".join(lines[:30])
    for limit in ("4 shapes", "4 colours", "4 styles", "64 x 64 px"):
        assert limit in top, f"the README's first screen must state the toy model's limit {limit!r}"
    assert "tficon demo" in "\n".join(lines[:60]) and re.search(r"About \d+ s", "\n".join(lines[:60]))


def test_no_placeholder_repository_anywhere():
    """The notebooks' addresses are written by tools/notebook_links.py (tests/test_notebooks_meta.py checks them)."""
    found = [
        str(path.relative_to(ROOT))
        for path in _tracked_text_files()
        if path.suffix != ".ipynb" and "github.com/OWNER" in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert not found, f"placeholder repository addresses in {found}"

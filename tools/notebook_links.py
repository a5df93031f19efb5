"""Write each notebook's "Open in Colab" badge and its Colab install cell from the one place that says where
tficon is published: ``[tool.tficon]`` in pyproject.toml.

    [tool.tficon]
    repository = "owner/tficon"   # the public GitHub repository; "" while there is none
    branch = "main"

With a repository the first cell carries a badge that opens the notebook from that repository in Colab, and the
install cell installs tficon from it. Without one there is no badge (it would lead nowhere), and in Colab the
install cell installs a tficon wheel uploaded to Colab's Files panel, or stops with a message saying how to get
one. Outside Colab (a laptop, CI) the install cell does nothing. The README's "The notebooks" section says how to run
them in Colab from a fork or from an uploaded wheel.

    python tools/notebook_links.py                 # rewrite every notebook under notebooks/
    python tools/notebook_links.py notebooks/01_quickstart.ipynb
    python tools/notebook_links.py --check         # exit 1 and name the notebooks that are out of date

Runs with the standard library alone (Python 3.11+ for tomllib); notebooks are read and written as Jupyter
writes them (JSON, one-space indent), so a notebook already up to date stays byte for byte the same.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP_MARKER = "# Colab only: install tficon"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_REPOSITORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
_BRANCH = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


def read_settings(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, str]:
    """``(repository, branch)`` from ``[tool.tficon]``; repository ``""`` when tficon is not published."""
    import tomllib

    table = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("tficon", {})
    repository, branch = str(table.get("repository", "")).strip(), str(table.get("branch", "main")).strip()
    if repository and not _REPOSITORY.match(repository):
        raise ValueError(f"[tool.tficon] repository must be a GitHub 'owner/name' (or \"\"), got {repository!r}")
    if not _BRANCH.match(branch):
        raise ValueError(f"[tool.tficon] branch must be a branch name, got {branch!r}")
    return repository, branch


def badge(repository: str, branch: str, notebook: str) -> str | None:
    """The markdown badge that opens ``notebooks/<notebook>`` of the repository in Colab; None without one."""
    if not repository:
        return None
    url = f"https://colab.research.google.com/github/{repository}/blob/{branch}/notebooks/{notebook}"
    return f"[![Open In Colab]({BADGE_IMAGE})]({url})"


def setup_cell(repository: str, branch: str) -> str:
    """The install cell: nothing outside Colab; in Colab an uploaded wheel, else the repository, else a message."""
    source = f"git+https://github.com/{repository}@{branch}" if repository else ""
    return f'''{SETUP_MARKER} (outside Colab this cell does nothing). Written by tools/notebook_links.py.
import sys

IN_COLAB = "google.colab" in sys.modules
TFICON_SOURCE = "{source}"  # where Colab installs tficon from; a fork: "git+https://github.com/<you>/tficon"
if IN_COLAB:
    import glob
    import subprocess
    from pathlib import Path

    wheels = sorted(glob.glob("/content/tficon-*.whl"))  # a wheel uploaded to Colab's Files panel comes first
    source = Path(wheels[-1]).as_uri() if wheels else TFICON_SOURCE
    if not source:
        raise RuntimeError(
            "Colab needs tficon: upload a wheel (pip wheel --no-deps -w dist . in a tficon checkout) to the Files "
            "panel, or set TFICON_SOURCE above to your fork's git URL; then run this cell again."
        )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"tficon[widgets] @ {{source}}"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()  # ipywidgets and anywidget views in Colab'''


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _set_source(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def _code_cell(text: str) -> dict:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": []}
    _set_source(cell, text)
    return cell


def apply(notebook: dict, name: str, repository: str, branch: str) -> dict:
    """``notebook`` (nbformat 4 JSON) with its badge and install cell written from the settings.

    The badge goes right under the first cell's title (any earlier Colab badge is removed); the install cell is
    the code cell that starts with ``SETUP_MARKER`` or, in notebooks written before this tool, the one that
    tests for ``google.colab``; without either, a new one is inserted after the first cell."""
    cells = notebook["cells"]
    if not cells or cells[0]["cell_type"] != "markdown":
        raise ValueError(f"{name}: the first cell must be markdown (the title)")
    lines = [line for line in _source(cells[0]).split("\n") if BADGE_IMAGE not in line]
    while len(lines) > 2 and lines[1] == "" and lines[2] == "":  # the blank line a removed badge leaves
        del lines[1]
    line = badge(repository, branch, name)
    if line is not None:
        lines[1:1] = ["", line]
    cells[0]["source"] = "\n".join(lines).splitlines(keepends=True)
    setup = setup_cell(repository, branch)
    found = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and _source(c).startswith(SETUP_MARKER)]
    found = found or [i for i, c in enumerate(cells) if c["cell_type"] == "code" and "google.colab" in _source(c)]
    if found:
        _set_source(cells[found[0]], setup)
    else:
        cells.insert(1, _code_cell(setup))
    return notebook


def render(path: Path, repository: str, branch: str) -> str:
    """The notebook file's new text."""
    notebook = apply(json.loads(path.read_text(encoding="utf-8")), path.name, repository, branch)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to write (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook is out of date")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repository, branch = read_settings(args.pyproject)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    stale = []
    for path in paths:
        text = render(path, repository, branch)
        if text != path.read_text(encoding="utf-8"):
            stale.append(path)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    where = repository or "no repository set (no badges; Colab installs an uploaded wheel)"
    if args.check:
        print("".join(f"out of date: {p}\n" for p in stale) or f"up to date ({where})", end="" if stale else "\n")
        return 1 if stale else 0
    print(f"wrote {len(stale)} of {len(paths)} notebooks ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tools/notebook_links.py: the Colab badges and install cells come from ``[tool.tficon]`` in pyproject.toml."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tools import notebook_links as links

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "01_quickstart.ipynb"


def _pyproject(tmp_path, repository, branch="main"):
    path = tmp_path / "pyproject.toml"
    path.write_text(f'[project]\nname = "x"\n\n[tool.tficon]\nrepository = "{repository}"\nbranch = "{branch}"\n')
    return path


def test_the_settings_are_read_and_checked(tmp_path):
    assert links.read_settings(_pyproject(tmp_path, "")) == ("", "main")
    assert links.read_settings(_pyproject(tmp_path, "someone/tficon", "dev")) == ("someone/tficon", "dev")
    for bad in ("https://github.com/someone/tficon", "someone", "a/b/c"):
        with pytest.raises(ValueError, match="owner/name"):
            links.read_settings(_pyproject(tmp_path, bad))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')  # no table: not published
    assert links.read_settings(tmp_path / "pyproject.toml") == ("", "main")
    assert links.read_settings() == ("", "main")  # this repository: not public yet, so no badges


def test_badge_only_with_a_repository():
    assert links.badge("", "main", "01_quickstart.ipynb") is None
    assert links.badge("someone/tficon", "main", "01_quickstart.ipynb") == (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        "(https://colab.research.google.com/github/someone/tficon/blob/main/notebooks/01_quickstart.ipynb)"
    )


def _run_cell(source, monkeypatch, wheels=()):
    import glob

    calls, managers = [], []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: managers.append(True))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(subprocess, "run", lambda args, **kwargs: calls.append(args))
    monkeypatch.setattr(glob, "glob", lambda pattern: list(wheels))
    exec(compile(source, "<setup>", "exec"), {})
    return calls, managers


def test_the_install_cell_in_colab(monkeypatch):
    published = links.setup_cell("someone/tficon", "main")
    calls, managers = _run_cell(published, monkeypatch)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "tficon[widgets] @ git+https://github.com/someone/tficon@main"]]
    assert managers == [True]
    calls, _ = _run_cell(published, monkeypatch, wheels=["/content/tficon-0.1.0-py3-none-any.whl"])
    assert calls[0][-1] == "tficon[widgets] @ file:///content/tficon-0.1.0-py3-none-any.whl"  # an upload wins
    with pytest.raises(RuntimeError, match="upload a wheel"):
        _run_cell(links.setup_cell("", "main"), monkeypatch)


def test_apply_writes_badge_and_cell_and_undoes_them(tmp_path):
    original = QUICKSTART.read_text(encoding="utf-8")
    assert links.render(QUICKSTART, "", "main") == original  # the committed notebook is up to date
    copy = tmp_path / QUICKSTART.name
    copy.write_text(links.render(QUICKSTART, "someone/tficon", "main"), encoding="utf-8")
    notebook = json.loads(copy.read_text())
    title = "".join(notebook["cells"][0]["source"]).split("\n")
    assert title[1] == "" and title[2] == links.badge("someone/tficon", "main", QUICKSTART.name) and title[3] == ""
    setups = [c for c in notebook["cells"] if "".join(c["source"]).startswith(links.SETUP_MARKER)]
    assert len(setups) == 1 and "git+https://github.com/someone/tficon@main" in "".join(setups[0]["source"])
    assert links.render(copy, "someone/tficon", "main") == copy.read_text()  # idempotent
    copy.write_text(links.render(copy, "", "main"), encoding="utf-8")
    assert copy.read_text() == original  # and back, byte for byte


def test_a_notebook_without_an_install_cell_gets_one(tmp_path):
    path = tmp_path / "new.ipynb"
    notebook = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# New\n", "\n", "text"]}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}  # fmt: skip
    path.write_text(json.dumps(notebook))
    written = json.loads(links.render(path, "someone/tficon", "main"))
    assert [c["cell_type"] for c in written["cells"]] == ["markdown", "code"]
    assert "".join(written["cells"][1]["source"]) == links.setup_cell("someone/tficon", "main")
    with pytest.raises(ValueError, match="first cell must be markdown"):
        links.apply({"cells": []}, "empty.ipynb", "", "main")


def test_check_mode_names_stale_notebooks_and_writing_fixes_them(tmp_path, capsys):
    copy = tmp_path / QUICKSTART.name
    copy.write_text(QUICKSTART.read_text(encoding="utf-8"), encoding="utf-8")
    pyproject = _pyproject(tmp_path, "someone/tficon")
    assert links.main(["--check", "--pyproject", str(pyproject), str(copy)]) == 1
    assert f"out of date: {copy}" in capsys.readouterr().out and copy.read_text() == QUICKSTART.read_text()
    assert links.main(["--pyproject", str(pyproject), str(copy)]) == 0
    assert links.main(["--check", "--pyproject", str(pyproject), str(copy)]) == 0

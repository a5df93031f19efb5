"""Static checks of the committed teaching notebooks (nothing is executed here; CI runs them with nbval).

Every notebook must: be valid nbformat with its outputs stripped (small in git), open with a markdown cell that
says what it teaches and how long it takes, hold at least one assertion cell (so a notebook that shows wrong
pictures fails under nbval), parse as Python, keep CI's plumbing out of its cells (the thread count reaches the
kernels through notebooks/conftest.py), skip no cell, and carry the Colab badge and install cell that
tools/notebook_links.py writes from pyproject.toml (no badge while no public repository is set; the install cell
does nothing outside Colab). ``notebooks/README.md`` lists each one.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import nbformat  # comes with nbval (dev extras)
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
REQUIRED = (
    "01_quickstart.ipynb",
    "02_inversion.ipynb",
    "03_inside_composite_attention.ipynb",
    "04_parameters.ipynb",
    "05_stable_diffusion.ipynb",
    "06_toy_world.ipynb",
    "07_strategies.ipynb",
)
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_BYTES = 64_000  # stripped notebooks are text only; this catches committed images and widget state
COLAB_GUARD = '"google.colab" in sys.modules'


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _code_cells(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def _setup_cells(nb) -> list[str]:
    return [source for source in _code_cells(nb) if "pip" in source]


def test_the_required_notebooks_exist():
    missing = [name for name in REQUIRED if not (NOTEBOOK_DIR / name).is_file()]
    assert not missing, f"missing notebooks: {missing}"


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    return request.param, _read(request.param)


def test_valid_and_stripped(notebook):
    path, nb = notebook
    nbformat.validate(nb)
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"
        assert "attachments" not in cell, f"{path.name}: a cell carries attachments"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state is stored in the metadata"


def test_opens_with_what_it_teaches_and_how_long(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{path.name} must open with a markdown cell"
    text = first.source.lower()
    assert "what it teaches" in text, f"{path.name}: the first cell must say what it teaches"
    assert re.search(r"how long[^\n]*\b(second|minute)", text), f"{path.name}: the first cell must say how long it takes"


def test_has_an_assertion_cell_and_parses(notebook):
    path, nb = notebook
    trees = [ast.parse(source) for source in _code_cells(nb)]  # a SyntaxError fails here, naming the notebook
    asserts = sum(isinstance(node, ast.Assert) for tree in trees for node in ast.walk(tree))
    assert asserts > 0, f"{path.name} has no assertion cell"



def test_no_cell_is_skipped_and_no_ci_plumbing(notebook, request):
    path, nb = notebook
    text = json.dumps(nb)
    assert "NBVAL_SKIP" not in text and "nbval-skip" not in text, f"{path.name} skips a cell"
    assert "set_num_threads" not in text and "TFICON_TEST_THREADS" not in text, (
        f"{path.name}: thread settings for CI belong in notebooks/conftest.py, not in the cells"
    )
    for top in ("work", "tmp", "home", "Users"):  # top-level folders of developer machines
        forbidden = f"/{top}/"
        assert forbidden not in text, f"{path.name} contains a machine-specific path {forbidden!r}"


def test_the_ci_thread_count_reaches_the_kernels():
    conftest = (NOTEBOOK_DIR / "conftest.py").read_text()
    assert 'os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("TFICON_TEST_THREADS", "1"))' in conftest


def test_colab_badge_and_a_guarded_setup_cell(notebook, request):
    path, nb = notebook
    assert "OWNER" not in json.dumps(nb), f"{path.name}: a placeholder repository"
    written = subprocess.run(
        [sys.executable, "tools/notebook_links.py", "--check", str(path)], cwd=NOTEBOOK_DIR.parent,
        capture_output=True, text=True,
    )  # fmt: skip
    assert written.returncode == 0, f"{path.name} is out of date: run python tools/notebook_links.py\n{written.stdout}"
    setup = _setup_cells(nb)
    assert len(setup) == 1, f"{path.name}: expected one setup cell, found {len(setup)}"
    tree = ast.parse(setup[0])
    assert COLAB_GUARD in setup[0]
    for statement in tree.body:  # every statement that installs anything sits under the Colab guard
        if "pip" in ast.unparse(statement):
            assert isinstance(statement, ast.If) and "IN_COLAB" in ast.unparse(statement.test), ast.unparse(statement)


def _repository() -> str:
    import tomllib

    return tomllib.loads((NOTEBOOK_DIR.parent / "pyproject.toml").read_text())["tool"]["tficon"]["repository"]


def _run_setup(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "<setup cell>", "exec"), namespace)
    return namespace


def test_the_setup_cell_does_nothing_outside_colab(notebook, monkeypatch):
    path, nb = notebook
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    namespace = _run_setup(_setup_cells(nb)[0])
    assert namespace["IN_COLAB"] is False and calls == []


def test_the_setup_cell_installs_tficon_on_colab(notebook, monkeypatch, request):
    """In Colab: an uploaded wheel is installed; without one (and no repository set) the cell says what to do."""
    import glob

    path, nb = notebook
    calls, widget_managers = [], []
    fake_colab = types.ModuleType("google.colab")
    fake_colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: widget_managers.append(True))
    monkeypatch.setitem(sys.modules, "google.colab", fake_colab)
    monkeypatch.setattr(subprocess, "run", lambda args, **k: calls.append(args))
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/content/tficon-0.1.0-py3-none-any.whl"])
    namespace = _run_setup(_setup_cells(nb)[0])
    assert namespace["IN_COLAB"] is True
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"]
    assert calls[0][-1] == "tficon[widgets] @ file:///content/tficon-0.1.0-py3-none-any.whl"
    assert widget_managers == [True]  # the notebooks' widgets (Explorer, SweepGrid) need Colab's widget manager
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    calls.clear()
    if not _repository():
        with pytest.raises(RuntimeError, match="upload a wheel .* or set TFICON_SOURCE"):
            _run_setup(_setup_cells(nb)[0])
        assert calls == []


def test_the_stable_diffusion_notebook_has_one_model_line_and_a_loud_stand_in():
    nb = _read(NOTEBOOK_DIR / "05_stable_diffusion.ipynb")
    lines = [line for source in _code_cells(nb) for line in source.splitlines()]
    assert [line for line in lines if line.startswith("MODEL =")] == ['MODEL = "stabilityai/stable-diffusion-2-1-base"']
    source = "\n".join(lines)
    assert "torch.cuda.is_available()" in source and "STAND-IN" in source and "tiny_model" in source


def test_readme_lists_every_notebook_on_one_line():
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    for path in NOTEBOOKS:
        lines = [line for line in readme.splitlines() if f"]({path.name})" in line]
        assert len(lines) == 1, f"notebooks/README.md must link {path.name} on exactly one line"

"""The house rules that keep the repository's architecture readable, checked on the source tree.

- No tracked file over 1 MB outside ``tficon/toy/model/`` (the shipped weights): generated figures, model folders
  and data sets are rebuilt by the commands their READMEs give, not carried in git.
- No module over 600 lines in ``tficon/`` or ``widgets/``: a module has one job.
- No import cycle between ``tficon`` modules.
- The layers (docs/architecture.md): ``tficon.core`` imports nothing from model, composition, run, eval, toy or
  widgets; ``tficon.model`` nothing from composition, run, eval or widgets; ``tficon.composition`` nothing from run,
  eval or widgets; ``tficon.run`` nothing from widgets; nothing in ``tficon`` imports ``tficon.widgets``.

Which imports count. The import graph is read from the AST of every ``tficon/**/*.py`` and ``widgets/*.py``:

- **Cycles** are looked for among *module-level* imports only (those at the top of a module, including inside a
  top-level ``if``/``try``, but not under ``if TYPE_CHECKING:``), because only they run when the module is
  imported: a function-level import runs after every module has loaded and cannot deadlock the import. Importing
  ``tficon.a.b`` also runs ``tficon/__init__.py``, which re-exports the public names; that implicit edge to a parent
  package is left out, or every module would sit in one cycle through ``tficon``; an explicit ``import tficon`` or
  ``from tficon.a import name`` counts as an edge to that package.
- **Layers** are checked on *every* import, function-level ones included: a lazy import is still a dependency of
  the lower layer on the higher one. The few that exist on purpose are listed in ``LAYER_EXCEPTIONS`` with the
  reason; the test fails when one is added and when a listed one is gone (so the list never goes stale).
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_BYTES = 1_000_000
MAX_MODULE_LINES = 600

#: For each layer, the layers it must not import (module names under ``tficon.``).
FORBIDDEN = {
    "core": ("model", "composition", "run", "eval", "toy", "widgets"),
    "model": ("composition", "run", "eval", "widgets"),
    "composition": ("run", "eval", "widgets"),
    "run": ("widgets",),
}

#: Imports across layers that stay on purpose: (importing module, imported module) -> why.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    """``tficon/core/io.py`` -> ``tficon.core.io``; ``widgets/x.py`` -> ``tficon.widgets.x`` (how it is imported)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "widgets":
        parts = ["tficon", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*(ROOT / "tficon").rglob("*.py"), *(ROOT / "widgets").rglob("*.py")]
    return {_module_name(p): p for p in files}


SOURCES = _sources()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module, module_level: bool):
    """Import statements of a module: all of them, or only those that run when the module is imported."""
    if not module_level:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            pending += ([] if _is_type_checking(node.test) else node.body) + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, (ast.With,)):
            pending += node.body


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The tficon modules an import statement names (``from package import submodule`` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module if SOURCES[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base for alias in node.names]
    found = set()
    for name in names:
        # the longest prefix that is a tficon module: ``import tficon.core.io as io`` -> tficon.core.io
        while name and name not in SOURCES:
            name = name.rpartition(".")[0]
        if name.startswith("tficon"):
            found.add(name)
    return found


def import_graph(module_level: bool) -> dict[str, set[str]]:
    graph = {}
    for module, path in SOURCES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {t for node in _import_nodes(tree, module_level) for t in _targets(module, node)} - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for module, targets in graph.items():
        layer = _layer(module)
        forbidden = set(FORBIDDEN.get(layer, ()))
        if layer != "widgets":
            forbidden.add("widgets")  # nothing in tficon imports the widgets
        bad |= {(module, t) for t in targets if _layer(t) in forbidden}
    return bad


# ------------------------------------------------------------------------------------------------ the rules


def test_no_tracked_file_over_1_mb_outside_the_shipped_toy_model():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    if not listed:
        pytest.skip("not a git checkout")
    paths = [p for p in listed.decode().split("\0") if p]
    large = {
        p: (ROOT / p).stat().st_size
        for p in paths
        if (ROOT / p).is_file() and not p.startswith("tficon/toy/model/") and (ROOT / p).stat().st_size > MAX_FILE_BYTES
    }
    assert not large, f"tracked files over 1 MB (rebuild them from a command instead): {large}"


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES.values() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_no_import_cycle_between_tficon_modules():
    assert cycles(import_graph(module_level=True)) == []


def test_layers_import_only_downwards():
    violations = layer_violations(import_graph(module_level=False))
    unexplained = sorted(violations - set(LAYER_EXCEPTIONS))
    assert not unexplained, f"imports against the layers (docs/architecture.md): {unexplained}"
    stale = sorted(set(LAYER_EXCEPTIONS) - violations)
    assert not stale, f"LAYER_EXCEPTIONS lists imports that no longer exist: {stale}"


# ------------------------------------------------------------------------------------------------ the checker


def test_the_checker_finds_cycles_and_layer_violations():
    """The helpers see what they must: a cycle of three, a self-contained chain, a lazy upward import."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = {"tficon.core.io": {"tficon.model.loading"}, "tficon.run.batch": {"tficon.widgets.explorer"},
             "tficon.eval.pixel": {"tficon.core.io"}, "tficon.widgets.explorer": {"tficon.run.batch"}}
    assert layer_violations(graph) == {("tficon.core.io", "tficon.model.loading"),
                                       ("tficon.run.batch", "tficon.widgets.explorer")}
    tree = ast.parse("import os\nfrom tficon.core import io\n\ndef f():\n    from tficon.model import loading\n")
    assert [type(n).__name__ for n in _import_nodes(tree, module_level=True)] == ["ImportFrom", "Import"]
    assert len(list(_import_nodes(tree, module_level=False))) == 3
    assert _targets("tficon.eval.pixel", tree.body[1]) == {"tficon.core.io"}

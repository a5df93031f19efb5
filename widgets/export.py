"""The Explorer's export: the result PNG, a figure of the current views and the recipe of the settings.

Each button makes one file and offers it as a download link in the page (a ``data:`` URL, so it works the same in
JupyterLab, classic Notebook and Colab, with no file server); ``Explorer.export(folder)`` writes all three into a
folder from Python.

- result: the composed image at the working size (PNG, lossless);
- figure: ``tficon.widgets.figures.session_figure`` of the step being looked at (the static twin of the views);
- recipe: ``tficon.run.recipe`` JSON, the inputs embedded; ``tficon.run.recipe.session_from_recipe`` gives back a
  Session with the same final latent bit for bit, and ``compose_arguments`` the equivalent ``tficon compose`` call.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from . import render
from .panel import STEPS_DROPPED, Change, Panel

__all__ = ["ExportPanel", "result_png", "figure_png", "recipe_json"]

KINDS = ("result", "figure", "recipe")
FILE_NAMES = {"result": "tficon-result.png", "figure": "tficon-figure.png", "recipe": "tficon-recipe.json"}


def result_png(session) -> bytes:
    """The finished Session's result as PNG bytes."""
    if not session.done:
        raise RuntimeError(f"the composition has {session.step_index} of {session.steps + 1} steps: run it to the end first")
    return render.png_bytes(np.asarray(session.result))


def figure_png(session, step: int | None = None, *, query: tuple[int, int] | None = None, dpi: int = 110) -> bytes:
    """``figures.session_figure(session, step, query=query)`` as PNG bytes (matplotlib's Agg canvas, no pyplot
    state); ``query``: ``(x, y)`` pixels, as the attention panel holds it."""
    from . import figures

    figure = figures.session_figure(session, step, query=query)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def recipe_json(session) -> bytes:
    """``tficon.run.recipe.recipe_from_session(session)`` as JSON bytes."""
    from tficon.run.recipe import recipe_from_session

    return (json.dumps(recipe_from_session(session), indent=1) + "\n").encode()


def _make(kind: str, session, step: int | None, query: tuple[int, int] | None) -> bytes:
    if kind == "result":
        return result_png(session)
    if kind == "figure":
        return figure_png(session, step, query=query)
    return recipe_json(session)


class ExportPanel(Panel):
    """``buttons`` {"result", "figure", "recipe"}: each makes its file; ``links`` shows the download links
    (``a.tficon-download``); ``files`` {kind: bytes} holds the last file of each kind (dropped when the result they
    describe is recomputed)."""

    heading = "export"

    def build(self) -> widgets.Widget:
        ex = self.explorer
        self.files: dict[str, bytes] = {}
        tips = {
            "result": "the composed image (PNG)",
            "figure": "a static figure of the step looked at: inputs, x0 previews, latents, attention (PNG)",
            "recipe": "every setting and input as JSON: tficon.run.recipe.session_from_recipe reproduces the result exactly",
        }
        self.buttons = {}
        for kind in KINDS:
            button = widgets.Button(description=f"{kind} {'JSON' if kind == 'recipe' else 'PNG'}", tooltip=tips[kind], layout=widgets.Layout(width="110px"))
            button.add_class(f"tficon-export-{kind}")
            button.on_click(lambda _b, k=kind: ex.submit(lambda: self.make(ex.session, k)))
            self.buttons[kind] = button
        self.links = widgets.HTML("")
        self.links.add_class("tficon-export-links")
        return widgets.HBox([*self.buttons.values(), self.links], layout=widgets.Layout(flex_flow="row wrap", align_items="center"))

    # ---- worker thread
    def make(self, session, kind: str) -> bytes:
        """Make the file ``kind`` of the Session's current state and offer it for download."""
        data = _make(kind, session, self.explorer.scrubber.value, self.explorer.attention.query)  # the views shown
        self.files[kind] = data
        self._draw_links()
        return data

    def write(self, session, folder: str | Path) -> dict[str, Path]:
        """Write the three files into ``folder`` (made if missing); returns {kind: path}."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for kind in KINDS:
            paths[kind] = folder / FILE_NAMES[kind]
            paths[kind].write_bytes(self.make(session, kind))
        return paths

    def on_change(self, session, change: Change) -> None:
        if change.kind == STEPS_DROPPED and self.files:  # the files describe a result that is being replaced
            self.files.clear()
            self._draw_links()

    def _draw_links(self) -> None:
        links = []
        for kind in KINDS:
            if kind in self.files:
                data = self.files[kind]
                mime = "application/json" if kind == "recipe" else "image/png"
                url = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
                links.append(
                    f"<a class='tficon-download' data-kind='{kind}' download='{FILE_NAMES[kind]}' href='{url}' "
                    f"style='margin-left:10px;font-size:12px'>&#8595; {html.escape(FILE_NAMES[kind])} ({len(data) / 1024:.0f} KiB)</a>"
                )
        self.links.value = "".join(links)

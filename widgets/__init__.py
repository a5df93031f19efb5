"""Jupyter views of TF-ICON (imported as ``tficon.widgets``; the core never imports this package).

- ``Explorer(session)``: run, inspect and tune one ``tficon.Session`` in a notebook; a column of panels
  (``panel.Panel``: ``status_panel``, ``banner``, ``inputs_panel``, ``settings_panel``, ``history_panel``,
  ``export``, ``steps_panel``, ``live_attention``); ``compare`` holds the history's pure image functions.
- ``SweepGrid(tficon.sweep(...))``: a parameter sweep as a clickable grid; a click opens the cell in an Explorer.
- Building blocks over plain tensors: ``AttentionMapView`` (click a query, see its attention),
  ``AttentionPanel`` (every view of one step's captured maps), ``StepStrip`` (one thumbnail per
  step), ``ImageRow``; the pointer widgets ``ClickableImage``, ``BoxDrawer`` and ``MaskPainter``
  (anywidget).
- ``figures``: the same views as static matplotlib figures (needs matplotlib only).
- ``maps`` and ``render``: the attention arithmetic and the pixels behind every view.

Names are imported on first use, so ``tficon.widgets.figures`` works where ipywidgets is missing.

Example::

    from tficon.widgets import Explorer, AttentionMapView, figures

    Explorer(session, run=True)                        # the whole thing
    maps = session.capture_attention(3)                # or one map on its own
    AttentionMapView(maps[(layer, "composite")], image, grid=(16, 16))
    figures.session_figure(session).savefig("fig.png")  # a static figure for a paper
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Explorer": "explorer",
    "AttentionMapView": "views",
    "StepStrip": "views",
    "ImageRow": "views",
    "AttentionPanel": "attention_panel",
    "ClickableImage": "canvas",
    "BoxDrawer": "canvas",
    "MaskPainter": "canvas",
    "SweepGrid": "sweep",
}
_SUBMODULES = (
    "figures", "maps", "render", "masks", "views", "canvas", "attention_panel", "panel", "status_panel", "inputs_panel",
    "settings_panel", "steps_panel", "live_attention", "explorer", "worker", "sweep", "banner", "compare",
    "history_panel", "export", "strategy_panel", "strategy_views",
)

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

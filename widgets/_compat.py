"""What the installed Jupyter stack offers, decided once at import.

The Explorer is written for ipywidgets 8 and keeps to the subset that ipywidgets 7.7 (Google Colab)
also has: no ``Stack``/``TagsInput``, no ``description_allow_html``, hover text through :func:`set_help` (no
``tooltip`` except on buttons in 7.7), tab and accordion titles through ``set_title``, ``layout.overflow`` rather
than ``overflow_x``. Without anywidget the canvas widgets (click a query, draw a box, paint a mask) are replaced
by sliders and number fields.

Views read ``_compat.HAS_ANYWIDGET`` when they are built (not at import), so one switch decides.
"""

from __future__ import annotations

import ipywidgets as _widgets

try:
    import anywidget  # noqa: F401

    HAS_ANYWIDGET = True
except ImportError:  # the canvases degrade to plain widgets
    HAS_ANYWIDGET = False

#: ipywidgets 8 names the hover text of every widget ``tooltip``; 7.7 has ``tooltip`` on buttons only and
#: ``description_tooltip`` on the widgets with a description (8 keeps that name as a deprecated alias).
IPYWIDGETS_8 = int(_widgets.__version__.split(".")[0]) >= 8


def set_help(widget, text: str) -> None:
    """Show ``text`` when the pointer rests on ``widget`` (its description), in ipywidgets 7.7 and 8 alike."""
    if IPYWIDGETS_8 or isinstance(widget, _widgets.Button):
        widget.tooltip = text
    else:
        widget.description_tooltip = text


def help_of(widget) -> str | None:
    """The text :func:`set_help` gave ``widget``."""
    if IPYWIDGETS_8 or isinstance(widget, _widgets.Button):
        return widget.tooltip
    return widget.description_tooltip

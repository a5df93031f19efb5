"""What the installed Jupyter stack offers, decided once at import.

The Explorer is written for ipywidgets 8 and keeps to the subset that ipywidgets 7.7 (Google Colab)
also has: no ``Stack``/``TagsInput``, no ``description_allow_html`` and no ``tooltip`` except on buttons, tab titles
through ``set_title``, ``layout.overflow`` rather than ``overflow_x``. Without anywidget the canvas
widgets (click a query, draw a box, paint a mask) are replaced by sliders and number fields.

Views read ``_compat.HAS_ANYWIDGET`` when they are built (not at import), so one switch decides.
"""

from __future__ import annotations

try:
    import anywidget  # noqa: F401

    HAS_ANYWIDGET = True
except ImportError:  # the canvases degrade to plain widgets
    HAS_ANYWIDGET = False

"""The Explorer's header: which model, the progress bar of the run, and one status message."""

from __future__ import annotations

import html

import ipywidgets as widgets

from .panel import Change, Panel

__all__ = ["StatusPanel"]


class StatusPanel(Panel):
    """Title, progress (``progress``: steps computed of ``steps + 1``) and the status line (``status``).

    The header shows one message: a later success replaces an earlier error (``is_error`` says which it is).
    """

    def build(self) -> widgets.Widget:
        s = self.explorer.session
        model = s.model
        spec, family = str(getattr(model, "spec", "")), str(getattr(model, "family", ""))
        name = spec if not family or family == spec else f"{spec} ({family})"  # "toy", not "toy (toy)"
        title = (
            f"<b>TF-ICON Explorer</b> <span style='color:#666'>&middot; {html.escape(name)} "
            f"&middot; {s.image_size[1]}&times;{s.image_size[0]} px</span>"
        )
        self.status = widgets.HTML("")
        self.status.add_class("tficon-status")
        self.progress = widgets.IntProgress(min=0, max=s.steps + 1, value=0, layout=widgets.Layout(width="200px"))
        self.progress.add_class("tficon-progress")
        self.is_error = False
        # the header wraps on a narrow page instead of cutting the status off; a style rule shows the small
        # pictures of the Explorer and the SweepGrid as crisp pixels when the browser enlarges them
        style = widgets.HTML(
            "<style>.tficon-explorer img, .tficon-sweep-grid img { image-rendering: pixelated; }"
            ".tficon-explorer .widget-html-content, .tficon-sweep-grid .widget-html-content { white-space: normal; line-height: 1.35; }</style>"
        )
        return widgets.HBox(
            [widgets.HTML(title), self.progress, self.status, style],
            layout=widgets.Layout(align_items="center", justify_content="flex-start", flex_flow="row wrap"),
        )

    def set(self, text: str, *, error: bool = False) -> None:
        """Show ``text`` (in red when ``error``)."""
        self.is_error = error
        colour = "#b00020" if error else "#333"
        self.status.value = f"<span style='color:{colour};font-size:12px;margin-left:10px'>{html.escape(text)}</span>"

    def on_change(self, session, change: Change) -> None:
        self.progress.max = session.steps + 1
        self.progress.value = session.step_index
        self.progress.bar_style = "success" if session.done else "info"

"""The Explorer's history: every finished run kept, any two compared, any one restored.

- ``strip``: a thumbnail per finished run (newest last) with what changed since the run before; a click on a
  run's button makes it B of the comparison.
- ``a_choice`` / ``b_choice``: the two runs compared (default: the run before the newest, and the newest).
- ``compare_row``: A, B and their difference map (``tficon.widgets.compare.difference_map``) with its numbers;
  ``split`` (a slider) and ``split_view``: one picture, A left of the line and B right of it.
- ``settings_diff``: the settings that differ between A and B.
- ``restore_button``: undo to run B (its settings come back through ``Session.update``, so only the steps its
  settings change are recomputed, and the result is run B's again, bit for bit); ``reset_button``: back to the
  settings the Explorer opened with.

Memory: a run keeps its settings (the Session's own objects, nothing copied) and its result at most ``KEEP_PX``
pixels on its longer side; at most ``KEEP_RUNS`` runs are kept (the oldest go first).
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np

from . import compare, render
from .panel import Panel
from .views import ImageRow, StepStrip, image_widget, set_image

__all__ = ["HistoryPanel"]


class HistoryPanel(Panel):
    """See the module docstring; ``entries`` are the kept runs (``compare.RunEntry``), oldest first."""

    heading = "history &middot; compare two runs &middot; undo"
    KEEP_PX = 256
    KEEP_RUNS = 30

    def build(self) -> widgets.Widget:
        ex = self.explorer
        self.entries: list[compare.RunEntry] = []
        self.size = ex.image_px
        self.strip = StepStrip(
            size=2 * ex.thumbnail_px,
            title="<span style='font-size:11px;color:#555'>every finished run (click a run to compare it as B)</span>",
        )
        self.strip.add_class("tficon-history")
        self.strip.observe(self._on_strip_select, names="selected")
        style = {"description_width": "18px"}
        self.a_choice = widgets.Dropdown(options=[], description="A", style=style, layout=widgets.Layout(width="330px"))
        self.b_choice = widgets.Dropdown(options=[], description="B", style=style, layout=widgets.Layout(width="330px"))
        self.a_choice.add_class("tficon-compare-a")
        self.b_choice.add_class("tficon-compare-b")
        for choice in (self.a_choice, self.b_choice):
            choice.observe(self._on_choice, names="value")
        self.compare_row = ImageRow(size=self.size)
        self.compare_row.add_class("tficon-compare")
        self.split = widgets.FloatSlider(
            value=0.5, min=0.0, max=1.0, step=0.01, description="split", readout_format=".2f",
            style={"description_width": "36px"}, layout=widgets.Layout(width=f"{self.size + 60}px"),
        )  # fmt: skip
        self.split.add_class("tficon-split")
        self.split.observe(self._on_choice, names="value")
        self.split_view = image_widget(size=self.size, css_class="tficon-split-view")
        self.split_caption = widgets.HTML("")
        self.settings_diff = widgets.HTML("")
        self.settings_diff.add_class("tficon-compare-settings")
        self.restore_button = widgets.Button(
            description="Restore B", tooltip="undo to run B: its settings come back, only the steps they change are recomputed",
            layout=widgets.Layout(width="96px"),
        )  # fmt: skip
        self.restore_button.add_class("tficon-restore")
        self.restore_button.on_click(lambda _b: self.b_choice.value is not None and ex.restore(self.b_choice.value))
        self.reset_button = widgets.Button(
            description="Reset", tooltip="back to the settings this Explorer opened with", layout=widgets.Layout(width="76px")
        )
        self.reset_button.add_class("tficon-reset")
        self.reset_button.on_click(lambda _b: ex.reset())
        self.empty = widgets.HTML("<span style='font-size:11px;color:#555'>no finished run yet</span>")
        # the comparison appears once there are two runs to compare
        self.compare_box = widgets.VBox(
            [
                self.compare_row,
                widgets.HBox(
                    [widgets.VBox([self.split_view, self.split, self.split_caption]), self.settings_diff],
                    layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"),
                ),
            ],
            layout=widgets.Layout(display="none"),
        )
        self.body = widgets.VBox(
            [
                self.strip,
                widgets.HBox([self.a_choice, self.b_choice, self.restore_button, self.reset_button], layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
                self.compare_box,
            ],
            layout=widgets.Layout(display="none"),
        )
        return widgets.VBox([self.empty, self.body])

    # ---- main thread: choices only redraw (no Session is read), coalesced on the worker
    def _on_choice(self, _change) -> None:
        if not self.syncing:
            self.explorer.submit(self.draw, key="history-compare")

    def _on_strip_select(self, change) -> None:
        if self.syncing or change["new"] is None or change["new"] >= len(self.entries):
            return
        self.b_choice.value = self.entries[change["new"]].number  # -> _on_choice

    # ---- worker thread
    def entry(self, number: int) -> compare.RunEntry:
        """The kept run ``number`` (a KeyError names the kept ones)."""
        for entry in self.entries:
            if entry.number == number:
                return entry
        raise KeyError(f"run {number} is not kept (kept: {', '.join(str(e.number) for e in self.entries) or 'none'})")

    def record(self, session, number: int, warnings: tuple[str, ...] = ()) -> compare.RunEntry:
        """Keep the finished run ``number`` of ``session`` and compare it (B) with the run before it (A)."""
        settings = compare.snapshot(session)
        changes = compare.describe_changes(self.entries[-1].settings, settings) if self.entries else []
        entry = compare.RunEntry(number, settings, compare.shrink(np.asarray(session.result), self.KEEP_PX), tuple(warnings), changes)
        self.entries.append(entry)
        with self.quietly():
            if len(self.entries) > self.KEEP_RUNS:
                del self.entries[0]
                self.strip.set_images(
                    [e.image for e in self.entries], labels=[f"#{e.number}" for e in self.entries],
                    notes=[self._note(e) for e in self.entries],
                )  # fmt: skip
            else:
                self.strip.set_item(len(self.entries) - 1, entry.image, label=f"#{number}", note=self._note(entry))
            options = [(e.label()[:60], e.number) for e in self.entries]
            self.a_choice.options = options
            self.b_choice.options = options
            self.a_choice.value = self.entries[-2].number if len(self.entries) > 1 else number
            self.b_choice.value = number
            self.strip.selected = len(self.entries) - 1
        self.empty.layout.display = "none"
        self.body.layout.display = "flex"
        self.compare_box.layout.display = "flex" if len(self.entries) > 1 else "none"
        self.draw()
        return entry

    @staticmethod
    def _note(entry: compare.RunEntry) -> str:
        """What changed since the run before (cut short; the whole text on hover), with a mark when it warned."""
        note = html.escape(entry.label().split(" \u00b7 ", 1)[1])
        short = note if len(note) <= 22 else note[:20] + "\u2026"
        mark = " &#9888;" if entry.warnings else ""
        return f"<span style='font-size:10px' title='{note}'>{short}{mark}</span>"

    def draw(self) -> None:
        """Draw the comparison of the chosen runs A and B."""
        if not self.entries or self.a_choice.value is None or self.b_choice.value is None:
            return
        a, b = self.entry(self.a_choice.value), self.entry(self.b_choice.value)
        difference, numbers = compare.difference_map(a.image, b.image)
        if numbers["max"] == 0:
            verdict = "identical, pixel for pixel"
        else:
            verdict = (
                f"max |A&minus;B| = {numbers['max']:.0f}/255, mean {numbers['mean']:.1f}, "
                f"{100 * numbers['changed']:.1f}% of pixels differ"
            )
        self.compare_row.set(
            [a.image, b.image, difference],
            [f"A &middot; run {a.number}", f"B &middot; run {b.number}",
             f"difference (black = equal; bright = up to {numbers['max']:.0f}/255): {verdict}"],
        )  # fmt: skip
        set_image(self.split_view, compare.split_view(a.image, b.image, self.split.value), size=self.size)
        self.split_caption.value = (
            f"<span style='font-size:11px'>run {a.number} (A) left of the line, run {b.number} (B) right of it</span>"
        )
        lines = compare.describe_changes(a.settings, b.settings)
        listed = "".join(f"<li>{html.escape(line)}</li>" for line in lines) or "<li>the same settings</li>"
        warned = "".join(
            f"<li style='color:#a05a00'>run {e.number}: {html.escape(w)}</li>" for e in (a, b) for w in e.warnings
        )
        self.settings_diff.value = (
            f"<div style='font-size:12px;margin-left:12px;max-width:420px'><b>A &rarr; B</b> (run {a.number} &rarr; "
            f"run {b.number})<ul style='margin:2px 0 0 0;padding-left:18px'>{listed}{warned}</ul></div>"
        )

    def thumbnail(self, number: int) -> np.ndarray:
        """The picture the strip shows for run ``number``."""
        return render.as_rgb(self.entry(number).image)

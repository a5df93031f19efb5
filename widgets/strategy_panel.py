"""The Explorer's strategy panel: the preset selector, the object mask proposal and the object words' cross-attention.

- ``preset_choice``: a dropdown of ``tficon.presets()`` (every description in its hover text; ``preset_note`` under it
  says what the chosen one is, sets and comes from). Choosing a preset applies its settings through the Explorer's
  usual ``update`` (``strategy_views.preset_update``: the settings some preset controls follow the chosen one, the
  others, e.g. steps, seed or the object's words, stay as the user set them), so only the steps it changes are
  recomputed. The dropdown follows the Session: after any change it shows the preset the settings follow, or nothing
  ("custom") when they mix presets.
- ``propose_button``, ``threshold``, ``accept_button``, ``proposal_row``: ``Session.propose_mask`` on the computed
  steps, shown over the background with the current box in red; Accept makes it the target (``mask_or_box``), whose
  box the official first-contour rule reads.
- ``cross_row``: the scrubbed step's cross-attention of the object's words (``mask_proposal.object_attention_map``,
  the finest layers), the placed object outlined. With region-constrained cross-attention on, the words attend only
  inside the outline, and the caption's share says so (100%).

The adaptive blend mask of a step is on the step view (``steps_panel``); the layers that take the composite are
marked in the attention panel's layer list (``live_attention``).
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np

from tficon.core.presets import preset_of, presets

from . import _compat, render
from .panel import FINISHED, SETTINGS_CHANGED, STARTED, STEPS_DROPPED, Change, Panel
from .strategy_views import cross_attention_picture, preset_summary, presets_help, proposal_picture
from .views import ImageRow

__all__ = ["StrategyPanel"]

_SMALL = "<span style='font-size:11px;color:#555'>{}</span>"


def _same_mask(target, mask: np.ndarray) -> bool:
    """Whether the Session's target (a box or a mask) is ``mask`` (the Session keeps its own copy of a mask)."""
    array = np.asarray(target) if not isinstance(target, tuple) else None
    return array is not None and array.shape == mask.shape and bool(np.array_equal(array.astype(bool), mask))


class StrategyPanel(Panel):
    """See the module docstring. ``proposal``: the last proposed mask (bool (H, W) at the working size), until it is
    accepted or the Session's target changes; None otherwise."""

    heading = "strategy &middot; presets and what their mechanisms do"

    def build(self) -> widgets.Widget:
        ex = self.explorer
        self.proposal: np.ndarray | None = None
        self.preset_choice = widgets.Dropdown(
            options=list(presets()), value=None, description="preset", style={"description_width": "62px"},
            layout=widgets.Layout(width="260px"),
        )  # fmt: skip
        self.preset_choice.add_class("tficon-preset")
        _compat.set_help(self.preset_choice, presets_help())
        self.preset_choice.observe(self._on_preset, names="value")
        self.preset_note = widgets.HTML("")
        self.preset_note.add_class("tficon-preset-note")

        self.threshold = widgets.FloatSlider(
            value=0.5, min=0.05, max=1.0, step=0.05, description="threshold", continuous_update=False,
            readout_format=".2f", style={"description_width": "62px"}, layout=widgets.Layout(width="280px"),
        )  # fmt: skip
        _compat.set_help(self.threshold, "the proposal keeps the region around the hottest point whose normalised heat is at least this")
        self.propose_button = widgets.Button(
            description="Propose mask", tooltip="propose the object's mask from its words' cross-attention on the computed steps",
            layout=widgets.Layout(width="110px"),
        )  # fmt: skip
        self.propose_button.add_class("tficon-propose")
        self.propose_button.on_click(lambda _b: ex.propose_mask(threshold=self.threshold.value))
        self.accept_button = widgets.Button(
            description="Accept", tooltip="make the proposal the target mask (mask_or_box)", disabled=True,
            layout=widgets.Layout(width="76px"),
        )  # fmt: skip
        self.accept_button.add_class("tficon-accept-proposal")
        self.accept_button.on_click(lambda _b: ex.accept_proposal())
        self.proposal_row = ImageRow(size=ex.image_px)
        self.proposal_row.add_class("tficon-proposal")
        self.proposal_note = widgets.HTML("")

        self.cross_live = widgets.Checkbox(
            value=True, description="show the object words' cross-attention of the scrubbed step", indent=False,
            layout=widgets.Layout(width="420px"),
        )  # fmt: skip
        self.cross_row = ImageRow(size=ex.image_px)
        self.cross_row.add_class("tficon-cross-attention")
        self.cross_note = widgets.HTML("")
        return widgets.VBox(
            [
                widgets.HBox([self.preset_choice, self.preset_note], layout=widgets.Layout(align_items="center")),
                widgets.HBox([self.propose_button, self.threshold, self.accept_button], layout=widgets.Layout(align_items="center")),
                widgets.HTML(_SMALL.format(
                    "the proposal reads the object's words (marked '&lt;ref&gt; red star &lt;ref&gt;' in the prompt, or "
                    "the object_words setting) in the generation's cross-attention; the red outline is the current box"
                )),
                self.proposal_row,
                self.proposal_note,
                self.cross_live,
                self.cross_row,
                self.cross_note,
            ]
        )  # fmt: skip

    # ---- main thread
    def _on_preset(self, change) -> None:
        if not self.syncing and change["new"] is not None:
            self.explorer.apply_preset(change["new"])

    # ---- worker thread
    def on_change(self, session, change: Change) -> None:
        if change.kind in (STARTED, SETTINGS_CHANGED):
            self.sync(session)
            if self.proposal is not None and _same_mask(session.mask_or_box, self.proposal):
                window = session.placement.target_window
                self.drop_proposal(
                    f"accepted: the target is the proposed mask, its box (x, y, w, h) = "
                    f"({window.left}, {window.top}, {window.width}, {window.height})"
                )
            elif change.names & {"mask_or_box", "background", "foreground", "foreground_mask"}:
                self.drop_proposal("the target changed")
        elif change.kind == STEPS_DROPPED:
            self.cross_row.set([], [])
        elif change.kind == FINISHED and session.done and self.cross_live.value:
            self.show_cross_attention(session, self.explorer.scrubber.value)

    def render(self, session, step: int) -> None:
        if self.cross_live.value:
            self.show_cross_attention(session, step)

    def sync(self, session) -> None:
        """The selector shows the preset the Session's settings follow (None: they mix presets)."""
        name = preset_of(session.config)
        with self.quietly():
            self.preset_choice.options = list(presets())  # a preset registered since the Explorer opened is listed
            self.preset_choice.value = name
        self.preset_note.value = preset_summary(session.config)

    def propose(self, session, threshold: float) -> np.ndarray | None:
        """``Session.propose_mask`` over the computed steps; shown over the background. Returns the mask (None and an
        error in the status when there is no step to read yet or the object's words are unknown)."""
        computed = min(session.step_index, session.steps)
        if computed == 0:
            self.explorer.set_status("propose mask: run at least one step first (the proposal reads its attention)", error=True)
            return None
        try:
            mask = session.propose_mask(steps=list(range(computed)), threshold=threshold)
        except ValueError as error:
            self.explorer.set_status(f"propose mask: {error}", error=True)
            return None
        self.proposal = mask
        background = render.as_rgb(session.inputs.background, value_range=(-1, 1))
        box = session.region_masks(*mask.shape)["box"]
        self.proposal_row.set(
            [proposal_picture(background, mask, box, size=self.proposal_row.size)],
            [f"proposed object mask (green), threshold {threshold:.2f}, from steps 0..{computed - 1}; red: the current box"],
        )  # fmt: skip
        rows, cols = np.nonzero(mask)
        self.proposal_note.value = _SMALL.format(
            f"proposal: {int(mask.sum())} pixels, bounding box (x, y, w, h) = ({cols.min()}, {rows.min()}, "
            f"{cols.max() - cols.min() + 1}, {rows.max() - rows.min() + 1}); Accept makes it the target"
        )
        self.accept_button.disabled = False
        self.explorer.set_status("mask proposed: Accept to use it as the target")
        return mask

    def drop_proposal(self, why: str) -> None:
        if self.proposal is None:
            return
        self.proposal = None
        self.accept_button.disabled = True
        self.proposal_note.value = _SMALL.format(html.escape(why if why.startswith("accepted") else f"no proposal ({why})"))

    def show_cross_attention(self, session, step: int) -> None:
        """The object words' cross-attention of step ``step``'s UNet call, the placed object outlined."""
        from tficon.composition.mask_proposal import object_attention_map

        k = min(step, session.steps - 1)
        if session.step_index == 0 or k > session.step_index:
            self.cross_row.set([], [])
            self.cross_note.value = _SMALL.format("run at least up to this step to see its cross-attention")
            return
        try:
            heat = object_attention_map(session, steps=[k])
        except ValueError as error:  # no object words, or a flat map
            self.cross_row.set([], [])
            self.cross_note.value = _SMALL.format(html.escape(f"no cross-attention view: {error}"))
            return
        frame = render.as_rgb(session.inputs.cut_and_paste, value_range=(-1, 1))
        region = session.region_masks(*heat.shape)["object"]
        picture, caption = cross_attention_picture(
            frame, heat.numpy(), region.cpu().numpy(), size=self.cross_row.size,
            constrained=bool(getattr(session.plans[k], "region_cross_attention", False)),
        )  # fmt: skip
        self.cross_row.set([picture], [f"step {k}: {html.escape(caption)}"])
        self.cross_note.value = ""

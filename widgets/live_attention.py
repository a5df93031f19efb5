"""The Explorer's attention panel: captures the scrubbed step's self-attention from the Session and shows it in an
``AttentionPanel`` (which itself knows nothing of Sessions). Where the step's ``inject_layers`` selects only some
layers, the layer list marks which take the composite ("◆ injected") and which run plain attention ("plain")."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from . import render
from .attention_panel import AttentionPanel
from .panel import FINISHED, STEP_COMPUTED, STEPS_DROPPED, Change, Panel
from .steps_panel import plan_tags
from .strategy_views import layer_marks

__all__ = ["LiveAttentionPanel"]

#: Captured steps kept: maps are N x N per layer, so only the latest few.
CACHED_STEPS = 3


class LiveAttentionPanel(Panel):
    """``view``: the ``AttentionPanel``; ``live``: capture whenever the scrubbed step changes (otherwise the
    Capture button does it)."""

    heading = "attention"

    def __init__(self, explorer, *, live: bool = True):
        super().__init__(explorer)
        self._live = live
        self._maps_cache: dict[int, dict] = {}
        self._frames_of: tuple | None = None  # (inputs, mode) the frames were made for
        self._frames: dict[str, np.ndarray] = {}
        self.shown_step: int | None = None  # the UNet call whose maps the view shows

    def build(self) -> widgets.Widget:
        ex = self.explorer
        self.live = widgets.Checkbox(value=self._live, description="live", indent=False, layout=widgets.Layout(width="70px"))
        capture = widgets.Button(description="Capture", tooltip="capture the attention of the scrubbed step now", layout=widgets.Layout(width="76px"))
        capture.on_click(lambda _b: ex.capture_attention())
        self.view = AttentionPanel(picker_px=ex.attention_px, dispatch=ex.submit, extra_controls=(self.live, capture))
        return self.view

    # ---- worker thread
    def render(self, session, step: int) -> None:
        if self.live.value:
            self.show(session, step)

    def on_change(self, session, change: Change) -> None:
        if change.kind == STEPS_DROPPED:
            for step in [k for k in self._maps_cache if k >= change.step]:
                del self._maps_cache[step]
            if self.shown_step is not None and self.shown_step >= change.step:
                self.view.mark_stale(f"step {self.shown_step} is being recomputed; these maps are of the earlier settings")
        elif change.kind == STEP_COMPUTED and self.view.stale and self.live.value and self.shown_step is not None:
            if session.step_index > self.shown_step:  # the recompute reached the step shown: show its new maps
                self.show(session, self.shown_step)
        elif change.kind == FINISHED and session.done and self.live.value:
            self.show(session, self.explorer.scrubber.value)

    @staticmethod
    def captured_step(session, step: int) -> int:
        """Steps with a UNet call are 0..S-1; the last step shows the call of S-1."""
        return min(step, session.steps - 1)

    def show(self, session, step: int, *, recapture: bool = False) -> None:
        """Capture (or take from the cache) the attention of ``step``'s UNet call and show it."""
        k = self.captured_step(session, step)
        if recapture:
            self._maps_cache.pop(k, None)
        if session.step_index == 0 or k > session.step_index:
            self.view.title.value = "<i>run at least up to this step to see its attention</i>"
            return
        if k not in self._maps_cache:
            self.view.title.value = f"<i>capturing the attention of step {k}…</i>"
            self._maps_cache[k] = session.capture_attention(k, max_tokens=self.explorer.attention_max_tokens)
            while len(self._maps_cache) > CACHED_STEPS:
                del self._maps_cache[next(iter(self._maps_cache))]
        if self.view.query is None:  # start at the centre of the object's window
            target = session.placement.target_window
            self.view.query = ((target.left + target.right) // 2, (target.top + target.bottom) // 2)
        plan = session.plans[k]
        self.shown_step = k
        self.view.show(
            self._maps_cache[k],
            frames=self.frames(session),
            latent_grid=session.placement.latent_size,
            region_masks=session.region_masks,
            heading=f"step {k}'s UNet call {plan_tags(plan)} &middot; ",
            injected=plan.fg or plan.bg,
            # with inject_layers, only the selected layers take the composite: the layer list says which
            layer_marks=layer_marks(session.attention_layers, session.engine.injected_layers(plan.inject_layers), plan.fg or plan.bg),
        )

    def frames(self, session) -> dict[str, np.ndarray]:
        """The pictures attention keys belong to; in "same" mode the background branch inverts the cut-and-paste."""
        inputs, mode = session.inputs, session.config.mode
        if self._frames_of is None or self._frames_of[0] is not inputs or self._frames_of[1] != mode:
            cut_and_paste = render.as_rgb(inputs.cut_and_paste, value_range=(-1, 1))
            self._frames = {
                "target": cut_and_paste,
                "reference": render.as_rgb(inputs.reference, value_range=(-1, 1)),
                "background": render.as_rgb(inputs.background, value_range=(-1, 1)) if mode == "cross" else cut_and_paste,
            }
            self._frames_of = (inputs, mode)
        return self._frames

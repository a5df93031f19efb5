"""The Explorer's steps: the step scrubber, a strip of every step's x0 preview, and the scrubbed step's latent
channels, x0 previews, the mechanisms' intermediates of that step (the adaptive background blend's mask,
``StepRecord.blend_mask``, where the step has one) and, on demand, VAE decodes."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from . import render
from .panel import SETTINGS_CHANGED, STARTED, STEP_COMPUTED, STEPS_DROPPED, Change, Panel
from .strategy_views import blend_mask_picture
from .views import ImageRow, StepStrip

__all__ = ["StepsPanel", "plan_tags", "FLAG_LEGEND"]


def plan_tags(plan) -> str:
    """Small coloured tags for what a step does (``tficon.core.plan.StepPlan``)."""
    tags = []
    if plan.fg:
        tags.append("<span style='color:#d04020' title='foreground (composite) injection'>fg</span>")
    if plan.bg:
        tags.append("<span style='color:#2060c0' title='background logit injection'>bg</span>")
    if plan.blend or plan.history_blend:
        tags.append("<span style='color:#208040' title='background latent blend'>bl</span>")
    # the strategy mechanisms (docs/strategies.md), tagged only on the steps they act on
    if getattr(plan, "adaptive_blend", False):
        tags.append("<span style='color:#10a070' title='adaptive background blend (attention mask)'>ab</span>")
    if getattr(plan, "latent_norm", 0.0):
        tags.append(f"<span style='color:#8040a0' title='latent normalisation, weight {plan.latent_norm:.2f}'>ln</span>")
    if getattr(plan, "region_cross_attention", False):
        tags.append("<span style='color:#a07000' title='region-constrained cross-attention'>rca</span>")
    return "<span style='font-size:10px'>" + " ".join(tags) + "</span>"


#: What the step tags mean, shown under the step strip.
FLAG_LEGEND = (
    "<span style='font-size:10px;color:#555'>tags: "
    "<span style='color:#d04020'>fg</span> foreground (composite) injection &middot; "
    "<span style='color:#2060c0'>bg</span> background-logit injection &middot; "
    "<span style='color:#208040'>bl</span> background latent blend; where on: "
    "<span style='color:#10a070'>ab</span> adaptive blend (its mask shown under the step) &middot; "
    "<span style='color:#8040a0'>ln</span> latent normalisation &middot; "
    "<span style='color:#a07000'>rca</span> region-constrained cross-attention</span>"
)


class StepsPanel(Panel):
    """``scrubber`` (the step looked at), ``strip`` (one thumbnail per computed step), ``step_title``,
    ``plan_label``, ``channel_rows`` (each branch's latent channels), ``preview_row`` (each branch's x0 preview)
    ``mechanism_row`` (the step's adaptive blend mask over its x0 preview, empty on steps without one) and
    ``decoded_row`` (filled by ``decode``).

    While a run goes on the panel follows the newest step, unless the user scrubbed back to an older one.
    """

    heading = "steps"

    def build(self) -> widgets.Widget:
        ex = self.explorer
        self.following = True
        self._decoded_step: int | None = None
        self.scrubber = widgets.IntSlider(
            min=0, max=ex.session.steps, description="step", continuous_update=False,
            style={"description_width": "62px"}, layout=widgets.Layout(width="560px"),
        )
        self.scrubber.add_class("tficon-scrubber")
        self.scrubber.observe(self._on_scrub, names="value")
        self.plan_label = widgets.HTML("")
        self.strip = StepStrip(
            size=ex.thumbnail_px,
            title="<span style='font-size:11px;color:#555'>x0 preview of the generation branch after each step "
            f"(click to inspect)</span><br>{FLAG_LEGEND}",
        )
        self.strip.add_class("tficon-step-strip")
        self.strip.observe(self._on_strip_select, names="selected")
        self.step_title = widgets.HTML("")
        self.channel_rows = ImageRow(size=3 * ex.image_px // 2)
        self.preview_row = ImageRow(size=ex.image_px // 2)
        self.decode_button = widgets.Button(description="Decode", tooltip="VAE-decode each branch's x0 estimate at this step", layout=widgets.Layout(width="76px"))
        self.decode_button.add_class("tficon-decode")
        self.decode_button.on_click(lambda _b: ex.decode_step())
        self.decoded_row = ImageRow(size=ex.image_px // 2)
        self.mechanism_row = ImageRow(size=ex.image_px)
        self.mechanism_row.add_class("tficon-blend-mask")
        return widgets.VBox(
            [
                widgets.HBox([self.scrubber, self.plan_label], layout=widgets.Layout(align_items="center")),
                self.strip,
                self.step_title,
                widgets.HBox([self.channel_rows, self.preview_row, widgets.VBox([self.decode_button, self.decoded_row])], layout=widgets.Layout(flex_flow="row wrap")),
                self.mechanism_row,
            ]
        )

    # ---- main thread
    def _on_scrub(self, change) -> None:
        if not self.syncing:
            self.explorer.look_at(change["new"])

    def _on_strip_select(self, change) -> None:
        if not self.syncing and change["new"] is not None:
            self.scrubber.value = change["new"]  # -> _on_scrub

    # ---- worker thread
    def render(self, session, step: int) -> None:
        # the user looked at a step: keep following the run only if it is the newest one
        self.following = step >= session.step_index - 1
        self._draw(session, step)

    def on_change(self, session, change: Change) -> None:
        if change.kind in (STARTED, SETTINGS_CHANGED):
            with self.quietly():
                # the steps this Session runs (with a later start, fewer than config.steps)
                self.scrubber.max = session.steps
        if change.kind == STARTED:  # a Session that already ran: show its steps as if the Explorer had run them
            for record in session.records:
                self._computed(session, record.s)
        elif change.kind == STEPS_DROPPED:
            self.strip.truncate(change.step)
        elif change.kind == STEP_COMPUTED:
            self._computed(session, change.step)

    def _computed(self, session, k: int) -> None:
        self.strip.set_item(k, session.preview(k).get("generation"), note=plan_tags(session.records[k].plan))
        if self.following or k == self.scrubber.value:
            self._draw(session, k)  # moves the scrubber there

    def _draw(self, session, step: int) -> None:
        if step >= session.step_index:
            self.step_title.value = f"<i>step {step} is not computed yet</i>"
            self.plan_label.value = ""
            self.mechanism_row.set([], [])
            return
        record = session.records[step]
        plan = record.plan
        self.plan_label.value = (
            f"<span style='font-size:11px;margin-left:8px'>{plan_tags(plan)} order {plan.order}, "
            f"{plan.sample_evals} sample evals, {record.seconds:.2f} s</span>"
        )
        latents = session.latents(step)
        previews = session.preview(step)
        self.step_title.value = f"<span style='font-size:12px'>after step {step}: latent channels and x0 previews</span>"
        self.channel_rows.set(
            [render.channel_strip(z) for z in latents.values()],
            [f"{b} latent, {z.shape[1]} channels" for b, z in latents.items()],
        )
        self.preview_row.set(list(previews.values()), [f"{b} x0 preview" for b in previews])
        if record.blend_mask is not None:  # the adaptive blend acted on this step: show what it kept
            box = session.region_masks(*record.blend_mask.shape[-2:])["box"]
            picture, caption = blend_mask_picture(previews["generation"], record.blend_mask, box, size=self.mechanism_row.size)
            self.mechanism_row.set([picture], [f"step {step}: {caption}"])
        else:
            self.mechanism_row.set([], [])
        if self._decoded_step is not None and self._decoded_step != step:
            self.decoded_row.set([], [])
            self._decoded_step = None
        with self.quietly():
            if self.scrubber.value != step:
                self.scrubber.value = step
            self.strip.selected = step

    def decode(self, session, step: int) -> bool:
        """VAE-decode each branch's x0 estimate at ``step`` into ``decoded_row``; False (and an error in the status)
        when the step is not computed yet."""
        if step >= session.step_index:
            self.explorer.set_status(f"step {step} is not computed yet", error=True)
            return False
        from tficon.core.io import to_pil

        branches = session.x0(step)
        images = [np.asarray(to_pil(session.decode(x0)[0])) for x0 in branches.values()]
        self.decoded_row.set(images, [f"{branch} x0, decoded" for branch in branches])
        self._decoded_step = step
        return True

"""The Explorer: one widget to run, inspect and tune a TF-ICON Session in Jupyter.

Layout (top to bottom): status and progress; the inputs (background with the target box, drawn by
dragging; foreground with its object mask, painted with the mouse; the pixel cut-and-paste; the
result); prompt and mode; the settings (tau_a, tau_b, tau_bg, guidance, steps, seed) and the Step /
Run / Rewind / Stop buttons; the step scrubber and a strip of every step's x0 preview; the scrubbed
step's latents (channels), x0 previews and, on demand, VAE decodes; the attention panel (layer or
resolution, kind, a clickable query pixel with its heatmap, the map's top SVD components, the region
masks at that resolution, and the same query side by side in the composite and its sources).

How it stays responsive: every Session access is a job on one worker thread (``tficon.widgets.worker``),
a run is one job per denoising step, and event handlers only queue jobs. Updates coalesce: a newer value of
the same control replaces a pending older one, so a burst of slider moves applies only the latest. Settings go through
``Session.update``, which keeps every step before the first one the change affects; only the
suffix is recomputed. The Explorer talks to nothing but the Session's public API.

How the Explorer shows what the user gave:

- the box the user asked for is ``Session.mask_or_box`` (a box, or the user mask whose bbox it shows, scaled
  to the working size); the window where the object was placed (``placement.target_window``) is drawn dashed;
- the original foreground and its object mask: the painter shows the object as it sits in the image
  (the reference canvas cropped to ``placement.ref_window``) and sends back a mask at the original
  foreground's size (``placement.foreground_size``) that the Session resizes onto exactly the
  painted cells (``tficon.widgets.masks``).
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as widgets
import numpy as np

from . import _compat, render
from .attention_panel import AttentionPanel
from .masks import mask_at_original_size, painting_grid, window_mask_on_grid
from .views import ImageRow, StepStrip, image_widget, set_image
from .worker import Worker

__all__ = ["Explorer"]

_INPUT_CHANGES = {"mask_or_box", "background", "foreground", "foreground_mask", "mode"}
_CONFIG_CONTROLS = ("tau_a", "tau_b", "tau_bg", "guidance", "steps", "seed", "mode")


def _flags(plan) -> str:
    """Small coloured tags for what a step does."""
    tags = []
    if plan.fg:
        tags.append("<span style='color:#d04020' title='foreground (composite) injection'>fg</span>")
    if plan.bg:
        tags.append("<span style='color:#2060c0' title='background logit injection'>bg</span>")
    if plan.blend or plan.history_blend:
        tags.append("<span style='color:#208040' title='background latent blend'>bl</span>")
    return "<span style='font-size:10px'>" + " ".join(tags) + "</span>"


#: What the step tags mean, shown under the step strip.
FLAG_LEGEND = (
    "<span style='font-size:10px;color:#555'>tags: "
    "<span style='color:#d04020'>fg</span> foreground (composite) injection &middot; "
    "<span style='color:#2060c0'>bg</span> background-logit injection &middot; "
    "<span style='color:#208040'>bl</span> background latent blend</span>"
)


class Explorer(widgets.VBox):
    """Run, inspect and tune one ``tficon.Session`` in a notebook.

    Args:
        session: the Session to explore (its settings are changed only through ``Session.update``).
        run: start a full run at once.
        auto_run: after a change, run the remaining steps automatically (default True).
        threaded: run the work on a background thread (default); False runs it inline, in the thread
            that asks for it (scripts, tests).
        image_px: display width of the input and result images (CSS px).
        attention_px: display width of the query picker.
        thumbnail_px: width of the step thumbnails.
        attention_max_tokens: pooling limit of captured maps (``Session.capture_attention``).
        live_attention: capture attention whenever the scrubbed step changes.

    Python API (every call queues work and returns at once; ``wait()`` blocks until it is done):
    ``run(until=None)``, ``step()``, ``rewind(step)``, ``stop()``, ``update(**changes)``,
    ``show_step(step)``, ``select_query(x, y)``, ``decode_step()``, ``wait(timeout)``. ``lock`` guards the
    Session: hold it to use the Session directly while the Explorer is live.
    """

    def __init__(
        self,
        session,
        *,
        run: bool = False,
        auto_run: bool = True,
        threaded: bool = True,
        image_px: int = 192,
        attention_px: int = 256,
        thumbnail_px: int = 44,
        attention_max_tokens: int = 1024,
        live_attention: bool = True,
    ):
        super().__init__()
        self.add_class("tficon-explorer")
        self.session = session
        self.image_px, self.attention_px, self.thumbnail_px = image_px, attention_px, thumbnail_px
        self.attention_max_tokens = attention_max_tokens
        self._worker = Worker(threaded=threaded, on_error=self._report_error, name="tficon-explorer")
        self.lock = self._worker.lock
        self.last_error: BaseException | None = None
        self.history: list[dict[str, Any]] = []  # applied updates: {"changes", "first"}
        self.shown: dict[str, Any] = {}  # what the views show, as arrays (for tests and notebooks)
        self.runs_finished = 0  # completed runs (the status names the last one)
        self._local = threading.local()
        self._following = True
        self._maps_cache: dict[int, dict] = {}
        self._box: tuple[int, int, int, int] | None = None
        self._run_started: tuple[int, int, float] | None = None  # (first step, sample evals, time)

        with self.lock:
            self._build(auto_run, live_attention)
            self._sync_controls()
            self._show_inputs()
            self._refresh_progress()
            # a Session that already ran: show its steps (and result) as if the Explorer had run them
            for record in session.records:
                self._after_step(record)
            if session.done:
                self._show_result()
            self._set_status("ready" if not session.step_index else f"{session.step_index} steps already computed")
        if run:
            self.run()

    @property
    def _syncing(self) -> bool:
        """True while the Explorer itself sets controls (observers must not treat that as user input).
        Per thread: observers run in the thread that sets the value, so a user event arriving on the main
        thread while the worker syncs is never swallowed."""
        return getattr(self._local, "syncing", False)

    @_syncing.setter
    def _syncing(self, value: bool) -> None:
        self._local.syncing = value

    # ================================================================== public API
    def run(self, until: int | None = None) -> None:
        """Run the remaining steps (up to ``until`` completed steps)."""
        generation = self._worker.new_generation()
        self._worker.submit(lambda: self._job_advance(generation, until))

    def step(self) -> None:
        """Run one more step."""
        generation = self._worker.new_generation()
        self._worker.submit(lambda: self._job_advance(generation, "next"))

    def rewind(self, step: int | None = None) -> None:
        """Forget steps ``step``.. (default: the scrubbed step) so they are recomputed by the next run."""
        target = self.scrubber.value if step is None else int(step)
        self._worker.new_generation()
        self._worker.submit(lambda: self._job_rewind(target))

    def stop(self) -> None:
        """Stop a run after the step in progress."""
        self._worker.new_generation()
        self._worker.submit(lambda: self._set_status(f"stopped after {self.session.step_index} steps"))

    def update(self, **changes) -> None:
        """Apply ``Session.update(**changes)`` and (with auto-run) recompute the affected steps.

        Rapid updates coalesce: a pending update of the same fields (one that has not started) is replaced
        by this one, so dragging a slider through many values while a step runs applies only the latest.
        """
        generation = self._worker.new_generation()
        self._worker.submit(lambda: self._job_update(changes, generation), key=("update", *sorted(changes)))

    def show_step(self, step: int) -> None:
        """Show step ``step`` in the step and attention panels (moves the scrubber)."""
        self.scrubber.value = int(step)  # the observer queues the job

    def select_query(self, x: int, y: int) -> None:
        """Pick the attention query pixel ``(x, y)`` in working-image pixels."""
        self._worker.submit(lambda: self._job_select_query((int(x), int(y))))

    def decode_step(self) -> None:
        """VAE-decode each branch's x0 estimate at the scrubbed step."""
        step = self.scrubber.value
        self._worker.submit(lambda: self._job_decode(step))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queued work is done; False if ``timeout`` seconds passed first."""
        return self._worker.wait(timeout)

    @property
    def busy(self) -> bool:
        """True while work is running or queued."""
        return self._worker.busy

    def __repr__(self) -> str:  # short: the default lists every child widget
        s = self.session
        return f"Explorer(steps={s.steps}, completed={s.step_index}, busy={self.busy})"

    def close(self) -> None:
        """Stop the worker and close the widget."""
        self._worker.close()
        super().close()

    # ================================================================== building
    def _build(self, auto_run: bool, live_attention: bool) -> None:
        s = self.session
        config = s.config
        label_style = {"description_width": "62px"}

        model = s.model
        title = (
            f"<b>TF-ICON Explorer</b> <span style='color:#666'>&middot; {html.escape(str(getattr(model, 'spec', '')))} "
            f"({html.escape(str(getattr(model, 'family', '')))}) &middot; {s.image_size[1]}&times;{s.image_size[0]} px</span>"
        )
        self.status = widgets.HTML("")
        self.status.add_class("tficon-status")
        self.progress = widgets.IntProgress(min=0, max=s.steps + 1, value=0, layout=widgets.Layout(width="200px"))
        self.progress.add_class("tficon-progress")
        header = widgets.HBox(
            [widgets.HTML(title), self.progress, self.status],
            layout=widgets.Layout(align_items="center", justify_content="flex-start"),
        )

        # ---- inputs
        px = self.image_px
        if _compat.HAS_ANYWIDGET:
            from .canvas import BoxDrawer, MaskPainter

            self.box_drawer = BoxDrawer(display_width=px)
            self.box_drawer.add_class("tficon-box-drawer")
            self.box_drawer.observe(self._on_box_drawn, names="box")
            self.mask_painter = MaskPainter(display_width=px, brush=1)
            self.mask_painter.add_class("tficon-mask-painter")
            self.mask_painter.observe(self._on_mask_painted, names="mask")
            self.brush = widgets.IntSlider(value=1, min=0, max=8, description="brush", style=label_style, layout=widgets.Layout(width=f"{px + 10}px"))
            widgets.jslink((self.brush, "value"), (self.mask_painter, "brush"))
            self.erase = widgets.ToggleButton(value=False, description="erase", layout=widgets.Layout(width="70px"))
            self.erase.add_class("tficon-erase")
            widgets.jslink((self.erase, "value"), (self.mask_painter, "erase"))
            foreground_tools: list[widgets.Widget] = [self.mask_painter, widgets.HBox([self.brush]), self.erase]
            background_view: widgets.Widget = self.box_drawer
        else:
            self.box_drawer = self.mask_painter = None
            background_view = self.background_view = image_widget(size=px)
            self.foreground_view = image_widget(size=px)
            foreground_tools = [self.foreground_view, widgets.HTML("<i>install anywidget to paint the mask</i>")]
        self.box_label = widgets.HTML("")
        self.box_label.add_class("tficon-box-label")
        self.box_fields = [
            widgets.IntText(description=name, style={"description_width": "14px"}, layout=widgets.Layout(width="78px"))
            for name in ("x", "y", "w", "h")
        ]
        apply_box = widgets.Button(description="set box", layout=widgets.Layout(width="70px"))
        apply_box.on_click(lambda _b: self._apply_box_fields())
        self._small_px = 2 * px // 3  # four columns fit a notebook's output width (about 850 px in JupyterLab)
        self.cut_and_paste_view = image_widget(size=self._small_px, css_class="tficon-cut-and-paste")
        self.result_view = image_widget(render.blank(8, 8), size=px, css_class="tficon-result")
        self.result_caption = widgets.HTML("<span style='font-size:11px'>not run yet</span>")
        self.result_caption.add_class("tficon-result-caption")

        def column(heading: str, *children: widgets.Widget, width: int = px) -> widgets.VBox:
            return widgets.VBox([widgets.HTML(f"<b>{heading}</b>"), *children], layout=widgets.Layout(margin="0 8px 0 0", width=f"{width + 12}px"))

        inputs = widgets.HBox(
            [
                column("background &middot; drag a box", background_view, self.box_label,
                       widgets.HBox(self.box_fields[:2]), widgets.HBox([*self.box_fields[2:]]), apply_box),
                column("foreground &middot; paint the mask", *foreground_tools),
                column("cut-and-paste", self.cut_and_paste_view, width=self._small_px),
                column("result", self.result_view, self.result_caption),
            ],
            layout=widgets.Layout(flex_flow="row wrap"),
        )

        # ---- settings
        self.prompt = widgets.Text(value=s.prompt, description="prompt", continuous_update=False, style=label_style, layout=widgets.Layout(width="560px"))
        self.prompt.add_class("tficon-prompt")
        self.prompt.observe(lambda c: self._on_control("prompt", c), names="value")
        self.controls: dict[str, widgets.Widget] = {"prompt": self.prompt}

        def slider(name: str, low: float, high: float, step: float, description: str) -> widgets.FloatSlider:
            w = widgets.FloatSlider(
                min=low, max=high, step=step, description=description, continuous_update=False, readout_format=".2f",
                style=label_style, layout=widgets.Layout(width="300px"),
            )
            return w

        self.controls["mode"] = widgets.Dropdown(options=["cross", "same"], description="mode", style=label_style, layout=widgets.Layout(width="170px"))
        self.controls["tau_a"] = slider("tau_a", 0.0, 1.0, 0.05, "tau_a")
        self.controls["tau_b"] = slider("tau_b", 0.0, 1.0, 0.05, "tau_b")
        self.controls["tau_bg"] = slider("tau_bg", 0.0, 1.0, 0.05, "tau_bg")
        self.controls["guidance"] = slider("guidance", 0.0, 15.0, 0.5, "guidance")
        self.controls["steps"] = widgets.IntSlider(min=config.order, max=max(50, config.steps), description="steps", continuous_update=False, style=label_style, layout=widgets.Layout(width="300px"))
        self.controls["seed"] = widgets.IntText(description="seed", style=label_style, layout=widgets.Layout(width="200px"))
        for name in _CONFIG_CONTROLS:
            control = self.controls[name]
            control.add_class(f"tficon-{name.replace('_', '-')}")
            control.observe(lambda c, n=name: self._on_control(n, c), names="value")

        def button(description: str, action, style: str = "") -> widgets.Button:
            b = widgets.Button(description=description, button_style=style, layout=widgets.Layout(width="76px"))
            b.add_class(f"tficon-{description.lower()}")
            b.on_click(lambda _b: action())
            return b

        self.auto_run = widgets.Checkbox(value=auto_run, description="auto-run after a change", indent=False)
        self.buttons = {
            "step": button("Step", self.step),
            "run": button("Run", self.run, "primary"),
            "rewind": button("Rewind", lambda: self.rewind()),
            "stop": button("Stop", self.stop, "warning"),
        }
        self.change_label = widgets.HTML("")
        self.change_label.add_class("tficon-last-change")
        settings = widgets.VBox(
            [
                widgets.HBox([self.prompt, self.controls["mode"]]),
                widgets.HBox(
                    [
                        widgets.VBox([self.controls["tau_a"], self.controls["tau_b"], self.controls["tau_bg"]]),
                        widgets.VBox([self.controls["guidance"], self.controls["steps"], self.controls["seed"]]),
                        widgets.VBox([widgets.HBox(list(self.buttons.values())), self.auto_run, self.change_label]),
                    ],
                    layout=widgets.Layout(flex_flow="row wrap"),
                ),
            ]
        )

        # ---- steps
        self.scrubber = widgets.IntSlider(min=0, max=s.steps, description="step", continuous_update=False, style=label_style, layout=widgets.Layout(width="560px"))
        self.scrubber.add_class("tficon-scrubber")
        self.scrubber.observe(self._on_scrub, names="value")
        self.plan_label = widgets.HTML("")
        self.strip = StepStrip(
            size=self.thumbnail_px,
            title="<span style='font-size:11px;color:#555'>x0 preview of the generation branch after each step "
            f"(click to inspect)</span><br>{FLAG_LEGEND}",
        )
        self.strip.observe(self._on_strip_select, names="selected")
        self.step_title = widgets.HTML("")
        self.channel_rows = ImageRow(size=3 * self.image_px // 2)
        self.preview_row = ImageRow(size=self.image_px // 2)
        self.decode_button = widgets.Button(description="Decode", tooltip="VAE-decode each branch's x0 estimate at this step", layout=widgets.Layout(width="76px"))
        self.decode_button.add_class("tficon-decode")
        self.decode_button.on_click(lambda _b: self.decode_step())
        self.decoded_row = ImageRow(size=self.image_px // 2)
        steps_panel = widgets.VBox(
            [
                widgets.HBox([self.scrubber, self.plan_label], layout=widgets.Layout(align_items="center")),
                self.strip,
                self.step_title,
                widgets.HBox([self.channel_rows, self.preview_row, widgets.VBox([self.decode_button, self.decoded_row])], layout=widgets.Layout(flex_flow="row wrap")),
            ]
        )

        # ---- attention
        self.live_attention = widgets.Checkbox(value=live_attention, description="live", indent=False, layout=widgets.Layout(width="70px"))
        capture = widgets.Button(description="Capture", tooltip="capture the attention of the scrubbed step now", layout=widgets.Layout(width="76px"))
        capture.on_click(lambda _b: self._submit_attention(force=True))
        self.attention = AttentionPanel(
            picker_px=self.attention_px, dispatch=self._worker.submit, extra_controls=(self.live_attention, capture), shown=self.shown
        )
        # the panel's parts, for notebooks and tests
        self.picker, self.layer_choice, self.kind_choice = self.attention.picker, self.attention.layer_choice, self.attention.kind_choice
        self.sources_row = self.attention.sources_row
        attention_panel = self.attention

        def section(text: str) -> widgets.HTML:
            return widgets.HTML(f"<div style='border-top:1px solid #ccc;margin-top:6px;padding-top:2px'><b>{text}</b></div>")

        self.children = [
            header,
            inputs,
            section("settings"),
            settings,
            section("steps"),
            steps_panel,
            section("attention"),
            attention_panel,
        ]

    # ================================================================== event handlers (main thread)
    def _on_control(self, name: str, change) -> None:
        if self._syncing:
            return
        value = change["new"]
        if name == "guidance":
            value = float(value)
        self.update(**{name: value})

    def _apply_box_fields(self) -> None:
        box = tuple(int(f.value) for f in self.box_fields)
        if box == self._box:  # the fields show the Session's box: nothing to change (a mask stays a mask)
            self._set_status(f"box {box} unchanged")
            return
        self.update(mask_or_box=box)

    def _on_box_drawn(self, change) -> None:
        if self._syncing or len(change["new"]) != 4:
            return
        self.update(mask_or_box=tuple(int(v) for v in change["new"]))

    def _on_mask_painted(self, change) -> None:
        if self._syncing:
            return
        bits = self.mask_painter.mask_array.copy()
        generation = self._worker.new_generation()
        self._worker.submit(lambda: self._job_apply_mask(bits, generation), key=("update", "foreground_mask"))

    def _on_scrub(self, change) -> None:
        if self._syncing:
            return
        step = change["new"]
        self._worker.submit(lambda: self._job_show_step(step, user=True))

    def _on_strip_select(self, change) -> None:
        if self._syncing or change["new"] is None:
            return
        self.scrubber.value = change["new"]

    def _report_error(self, error: BaseException) -> None:
        self.last_error = error
        self._set_status(f"{type(error).__name__}: {error}", error=True)

    # ================================================================== jobs (worker thread, lock held)
    def _mark_run_start(self) -> None:
        s = self.session
        if self._run_started is None:
            self._run_started = (s.step_index, s.stats["sample_evals"], time.perf_counter())

    def _job_update(self, changes: dict, generation: int) -> None:
        s = self.session
        try:
            first = s.update(**changes)
        except (ValueError, TypeError) as error:
            self.last_error = error
            self._sync_controls()
            if _INPUT_CHANGES & set(changes):
                self._show_inputs()
            self._set_status(f"not applied: {error}", error=True)
            return
        self.last_error = None
        self.history.append({"changes": dict(changes), "first": first})
        what = ", ".join(f"{k}={v!r}" if isinstance(v, (int, float, str, tuple)) else k for k, v in changes.items())
        # the status first: when a view below has changed, the status already says what is going on
        if first is None:
            self._set_status(f"{what}: no step changes")
        else:
            self._set_status(f"{what}: steps {first}..{s.steps} must be recomputed ({s.steps + 1 - first} of {s.steps + 1})")
            self._drop_from(first)
            self._run_started = (first, s.stats["sample_evals"], time.perf_counter())
        self._sync_controls()
        if _INPUT_CHANGES & set(changes):
            self._show_inputs()
        effect = "no step changes" if first is None else f"steps {first}..{s.steps} recomputed"
        self.change_label.value = f"<span style='font-size:11px'>last change: {html.escape(what)} &rarr; {effect}</span>"
        self._refresh_progress()
        if self.auto_run.value and not s.done and self._worker.is_current(generation):
            self._worker.submit(lambda: self._job_advance(generation, None))

    def _job_apply_mask(self, bits: np.ndarray, generation: int) -> None:
        place = self.session.placement
        width, height = place.foreground_size
        self._job_update({"foreground_mask": mask_at_original_size(bits, (height, width))}, generation)

    def _job_rewind(self, step: int) -> None:
        s = self.session
        step = min(step, s.step_index)
        s.rewind(step)
        self._drop_from(step)
        self._run_started = None
        self._refresh_progress()
        self._set_status(f"rewound: steps {step}..{s.steps} will be recomputed")

    def _job_advance(self, generation: int, until) -> None:
        if not self._worker.is_current(generation):
            return
        s = self.session
        total = s.steps + 1
        target = min(s.step_index + 1, total) if until == "next" else (total if until is None else min(int(until), total))
        if until == "next":
            until = target  # the continuation must not move the goal
        if s.step_index >= target:
            self._finish()
            return
        if self._run_started is None:
            self._mark_run_start()
        if s.step_index == 0:
            self._set_status("encoding and inverting both images (cached after the first run)…")
            started = time.perf_counter()
            s.compose_start()
            if time.perf_counter() - started > 0.05:
                self._set_status(f"inversion done in {time.perf_counter() - started:.1f} s")
        record = s.step()
        self._after_step(record)
        if s.step_index < target and self._worker.is_current(generation):
            self._worker.submit(lambda: self._job_advance(generation, until))
        else:
            self._finish()

    def _job_show_step(self, step: int, *, user: bool = False) -> None:
        s = self.session
        if user:
            self._following = step >= s.step_index - 1
        self._render_step(step)
        if self.live_attention.value:
            self._render_attention_for(step)
        self._clear_stale_error()

    def _job_select_query(self, query: tuple[int, int]) -> None:
        self.attention.set_query(*query)
        self._clear_stale_error()

    def _job_decode(self, step: int) -> None:
        s = self.session
        if step >= s.step_index:
            self._set_status(f"step {step} is not computed yet", error=True)
            return
        from tficon.core.io import to_pil

        images, captions = [], []
        decoded = {}
        for branch, x0 in s.x0(step).items():
            image = np.asarray(to_pil(s.decode(x0)[0]))
            decoded[branch] = image
            images.append(image)
            captions.append(f"{branch} x0, decoded")
        self.decoded_row.set(images, captions)
        self.shown["decoded"] = (step, decoded)
        self._clear_stale_error()

    def _clear_stale_error(self) -> None:
        """After a job that succeeded without a status of its own, an earlier error no longer describes the state."""
        if getattr(self, "_status_is_error", False):
            self._set_status(f"ready · {self.session.step_index} of {self.session.steps + 1} steps computed")

    # ================================================================== rendering (worker thread)
    def _set_status(self, text: str, *, error: bool = False) -> None:
        # the header shows one message: a later success replaces an earlier error, and last_error follows it
        self._status_is_error = error
        if not error:
            self.last_error = None
        colour = "#b00020" if error else "#333"
        self.status.value = f"<span style='color:{colour};font-size:12px;margin-left:10px'>{html.escape(text)}</span>"

    def _sync_controls(self) -> None:
        """Controls show the Session's settings (after an update, or to undo a rejected change)."""
        s = self.session
        config = s.config
        self._syncing = True
        try:
            self.prompt.value = s.prompt
            self.controls["mode"].value = config.mode
            for name in ("tau_a", "tau_b", "tau_bg"):
                self.controls[name].value = float(getattr(config, name))
            self.controls["guidance"].value = config.effective_guidance
            steps = self.controls["steps"]
            steps.max = max(steps.max, config.steps)
            steps.value = config.steps
            self.controls["seed"].value = config.seed
            self.scrubber.max = config.steps
            self.progress.max = config.steps + 1
        finally:
            self._syncing = False

    def _show_inputs(self) -> None:
        s = self.session
        inputs, place = s.inputs, s.placement
        height, width = s.image_size
        target = place.target_window
        placed = (target.left, target.top, target.width, target.height)
        background = render.as_rgb(inputs.background, value_range=(-1, 1))
        reference = render.as_rgb(inputs.reference, value_range=(-1, 1))
        cut_and_paste = render.as_rgb(inputs.cut_and_paste, value_range=(-1, 1))
        window = place.ref_window
        foreground = reference[window.top : window.bottom, window.left : window.right]
        window_bits = np.asarray(inputs.object_mask[window.top : window.bottom, window.left : window.right] > 0.5)
        original = (place.foreground_size[1], place.foreground_size[0])
        grid = painting_grid(window_bits.shape, original)
        object_bits = window_mask_on_grid(window_bits, grid, original)
        # the pictures attention keys belong to; in "same" mode the background branch inverts the cut-and-paste
        self._frames = {
            "target": cut_and_paste,
            "reference": reference,
            "background": background if s.config.mode == "cross" else cut_and_paste,
        }
        self.shown.update(background=background, cut_and_paste=cut_and_paste, foreground=foreground, painted_mask=object_bits)
        self._box = self._user_box(place, placed)
        self._syncing = True
        try:
            if self.box_drawer is not None:
                with self.box_drawer.hold_sync():
                    self.box_drawer.set_image(render.enlarge_to(background, self.image_px), natural_size=(height, width))
                    self.box_drawer.box = list(self._box)
                    self.box_drawer.secondary_box = list(placed)
                with self.mask_painter.hold_sync():
                    self.mask_painter.set_image(render.enlarge_to(foreground, self.image_px), natural_size=grid)
                    self.mask_painter.mask_array = object_bits
            else:
                set_image(self.background_view, render.draw_box(background, (target.top, target.left, target.bottom, target.right)), size=self.image_px)
                set_image(self.foreground_view, render.tint(foreground, object_bits), size=self.image_px)
            for field, value in zip(self.box_fields, self._box):
                field.value = int(value)
        finally:
            self._syncing = False
        set_image(self.cut_and_paste_view, cut_and_paste, size=self._small_px)
        self.box_label.value = (
            f"<span style='font-size:11px'>box (x, y, w, h) = ({', '.join(str(v) for v in self._box)}) &middot; "
            f"object placed at ({', '.join(str(v) for v in placed)}) (dashed)</span>"
        )

    def _user_box(self, place, placed) -> tuple[int, int, int, int]:
        """The box the user asked for, in working-image pixels: the Session's box as given, or its user mask's
        bbox scaled from the mask's size; the placed window only when neither is known."""
        given = self.session.mask_or_box
        if isinstance(given, tuple) and len(given) == 4:
            return tuple(int(v) for v in given)
        if place.bbox is None or place.mask_size is None:
            return placed
        x, y, w, h = place.bbox
        fy, fx = place.image_size[0] / place.mask_size[0], place.image_size[1] / place.mask_size[1]
        left, top = round(x * fx), round(y * fy)
        return left, top, round((x + w) * fx) - left, round((y + h) * fy) - top

    def _refresh_progress(self) -> None:
        s = self.session
        self.progress.max = s.steps + 1
        self.progress.value = s.step_index
        self.progress.bar_style = "success" if s.done else "info"

    def _drop_from(self, first: int) -> None:
        """Forget what was shown for steps ``first``.. (they are being recomputed)."""
        self.strip.truncate(first)
        for step in [k for k in self._maps_cache if k >= first]:
            del self._maps_cache[step]
        self.result_caption.value = "<span style='font-size:11px;color:#a60'>recomputing…</span>"

    def _after_step(self, record) -> None:
        s = self.session
        k = record.s
        self._refresh_progress()
        preview = s.preview(k).get("generation")
        self.strip.set_item(k, preview, note=_flags(record.plan))
        self._set_status(f"step {k}/{s.steps} done ({record.seconds:.2f} s, {record.sample_evals} sample evals)")
        if self._following or k == self.scrubber.value:
            self._render_step(k)  # moves the scrubber there

    def _finish(self) -> None:
        s = self.session
        self._refresh_progress()
        if not s.done:
            self._set_status(f"paused after {s.step_index} of {s.steps + 1} steps")
            return
        self._show_result()
        if self.live_attention.value:
            self._render_attention_for(self.scrubber.value)
        self.runs_finished += 1
        summary = f"done · run {self.runs_finished}"
        if self._run_started is not None:
            first, evals, started = self._run_started
            summary += (
                f" · steps {first}..{s.steps} computed ({s.steps + 1 - first} of {s.steps + 1}), "
                f"{s.stats['sample_evals'] - evals} sample evals, {time.perf_counter() - started:.1f} s"
            )
        self._run_started = None
        self._set_status(summary)  # last: "done" means every view is up to date

    def _show_result(self) -> None:
        s = self.session
        result = np.asarray(s.result)
        self.shown["result"] = result
        set_image(self.result_view, result, size=self.image_px)
        c = s.config
        self.result_caption.value = (
            f"<span style='font-size:11px'>tau_a={c.tau_a:.2f} tau_b={c.tau_b:.2f} tau_bg={c.tau_bg:.2f} "
            f"guidance={c.effective_guidance:g} steps={c.steps} seed={c.seed}</span>"
        )

    def _render_step(self, step: int) -> None:
        s = self.session
        if step >= s.step_index:
            self.step_title.value = f"<i>step {step} is not computed yet</i>"
            self.plan_label.value = ""
            return
        record = s.records[step]
        plan = record.plan
        self.plan_label.value = (
            f"<span style='font-size:11px;margin-left:8px'>{_flags(plan)} order {plan.order}, "
            f"{plan.sample_evals} sample evals, {record.seconds:.2f} s</span>"
        )
        latents = s.latents(step)
        previews = s.preview(step)
        self.step_title.value = f"<span style='font-size:12px'>after step {step}: latent channels and x0 previews</span>"
        self.channel_rows.set(
            [render.channel_strip(z) for z in latents.values()],
            [f"{b} latent, {z.shape[1]} channels" for b, z in latents.items()],
        )
        self.preview_row.set(list(previews.values()), [f"{b} x0 preview" for b in previews])
        self.shown["step"] = step
        self.shown["latents"] = {b: z.clone() for b, z in latents.items()}
        self.shown["previews"] = {b: p.clone() for b, p in previews.items()}
        decoded = self.shown.get("decoded")
        if decoded is not None and decoded[0] != step:
            self.decoded_row.set([], [])
            self.shown.pop("decoded", None)
        self._syncing = True
        try:
            if self.scrubber.value != step:
                self.scrubber.value = step
            self.strip.selected = step
        finally:
            self._syncing = False

    # ---- attention
    def _submit_attention(self, force: bool = False) -> None:
        step = self.scrubber.value

        def job() -> None:
            if force:
                self._maps_cache.pop(self._attention_step(step), None)
            self._render_attention_for(step)

        self._worker.submit(job)

    def _attention_step(self, step: int) -> int:
        """Steps with a UNet call are 0..S-1; the last step shows the call of S-1."""
        return min(step, self.session.steps - 1)

    def _render_attention_for(self, step: int) -> None:
        s = self.session
        k = self._attention_step(step)
        if s.step_index == 0 or k > s.step_index:
            self.attention.title.value = "<i>run at least up to this step to see its attention</i>"
            return
        if k not in self._maps_cache:
            self.attention.title.value = f"<i>capturing the attention of step {k}…</i>"
            self._maps_cache[k] = s.capture_attention(k, max_tokens=self.attention_max_tokens)
            while len(self._maps_cache) > 3:  # keep the latest few steps only: maps are N x N
                del self._maps_cache[next(iter(self._maps_cache))]
        if self.attention.query is None:  # start at the centre of the object's window
            target = s.placement.target_window
            self.attention.query = ((target.left + target.right) // 2, (target.top + target.bottom) // 2)
        self.attention.show(
            self._maps_cache[k],
            frames=self._frames,
            latent_grid=s.placement.latent_size,
            region_masks=s.region_masks,
            heading=f"step {k}'s UNet call {_flags(s.plans[k])} &middot; ",
            injected=s.plans[k].fg or s.plans[k].bg,
        )
        self.shown["attention_step"] = k

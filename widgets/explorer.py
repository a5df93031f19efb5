"""The Explorer: one widget to run, inspect and tune a TF-ICON Session in Jupyter.

It is a column of panels (``tficon.widgets.panel``: each builds its widgets, renders the step the user looks at
and reacts to a change of the Session), top to bottom:

- ``StatusPanel``: the model, the progress of the run and one status message;
- ``BannerPanel``: the warnings and the error of the last run, right under the status (hidden when there are
  none); a run that warned ends with the status "done, with a warning";
- ``InputsPanel``: the background with the target box (drawn by dragging), the foreground with its object mask
  (painted with the mouse), the pixel cut-and-paste and the result;
- ``SettingsPanel``: the prompt, one control per setting of ``tficon.core.config.SETTINGS`` (the official-code
  switches in a collapsed section) and the Step / Run / Rewind / Stop buttons;
- ``StepsPanel``: the step scrubber, a strip of every step's x0 preview, and the scrubbed step's latents
  (channels), x0 previews and, on demand, VAE decodes;
- ``LiveAttentionPanel``: the attention of the scrubbed step's UNet call (layer or resolution, kind, a clickable
  query pixel with its heatmap, the map's top SVD components, the region masks at that resolution, and the same
  query side by side in the composite and its sources);
- ``StrategyPanel``: the preset selector (``tficon.presets()``, applied through ``update``), the object mask
  proposal (``Session.propose_mask``, accepted as the target) and the scrubbed step's cross-attention of the object's
  words with the placed object outlined; the adaptive blend mask of a step is on the step view, and the layers that
  take the composite (``inject_layers``) are marked in the attention panel's layer list;
- ``HistoryPanel``: every finished run (thumbnail and settings); any two compared side by side with a difference
  map and a split view; undo to any kept run; reset to the opening settings;
- ``ExportPanel``: the result PNG, a figure of the current views and the recipe JSON, as download links.

How it stays responsive: every Session access is a job on one worker thread (``tficon.widgets.worker``),
a run is one job per denoising step, and event handlers only queue jobs. Updates coalesce: a newer value of
the same control replaces a pending older one, so a burst of slider moves applies only the latest. Settings go through
``Session.update``, which keeps every step before the first one the change affects; only the
suffix is recomputed. The Explorer talks to nothing but the Session's public API.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import ipywidgets as widgets

from tficon.composition.runner import run_alone

from .banner import TOY_WORLD_MARK, BannerPanel, toy_world_notice
from .compare import changes_to, snapshot
from .export import ExportPanel
from .history_panel import HistoryPanel
from .inputs_panel import InputsPanel
from .live_attention import LiveAttentionPanel
from .panel import FINISHED, SETTINGS_CHANGED, STARTED, STEP_COMPUTED, STEPS_DROPPED, Change, Panel, section
from .settings_panel import SettingsPanel
from .status_panel import StatusPanel
from .steps_panel import StepsPanel
from .strategy_panel import StrategyPanel
from .worker import Worker

__all__ = ["Explorer"]


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
    ``show_step(step)``, ``select_query(x, y)``, ``decode_step()``, ``restore(run)``, ``reset()``,
    ``compare(a, b)``, ``export(folder)``, ``apply_preset(name)``, ``propose_mask(threshold)``, ``accept_proposal()``,
    ``wait(timeout)``. ``lock`` guards the Session: hold it to use the
    Session directly while the Explorer is live. ``history`` lists the applied updates (``{"changes", "first"}``),
    ``runs`` the kept finished runs (``tficon.widgets.compare.RunEntry``: number, settings, result, warnings),
    ``last_error`` the error the status shows (None when it shows none) and ``run_warnings`` the warnings of the
    run in progress or the last one (what the banner shows).

    ``panels`` are the parts (``status_panel``, ``inputs_panel``, ``settings_panel``, ``strategy_panel``,
    ``steps_panel``, ``attention_panel``...); their main widgets are also attributes of the Explorer: ``controls`` (the prompt and one
    widget per setting), ``status``, ``progress``, ``box_drawer``, ``mask_painter``, ``box_fields``, ``set_box_button``,
    ``cut_and_paste_view``, ``result_view``, ``result_caption``, ``scrubber``, ``strip``, ``channel_rows``,
    ``preview_row``, ``decoded_row``, ``attention`` (the ``AttentionPanel``), ``picker``, ``sources_row``, ``preset_choice``,
    ``preset_note``, ``propose_button``, ``accept_button``, ``proposal_row``, ``cross_row``...
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
        self._worker = Worker(threaded=threaded, on_error=self._report_error, on_warning=self._collect_warnings, name="tficon-explorer")
        self.lock = self._worker.lock
        self.last_error: BaseException | None = None
        self.history: list[dict[str, Any]] = []  # applied updates: {"changes", "first"}
        self.runs_finished = 0  # completed runs (the status names the last one)
        self.run_warnings: list[str] = []  # of the run in progress, or the last one
        self._opening_settings = snapshot(session)  # what reset() brings back
        self._run_started: tuple[int, int, float] | None = None  # (first step, sample evals, time)

        self.status_panel = StatusPanel(self)
        self.banner_panel = BannerPanel(self)
        self.inputs_panel = InputsPanel(self)
        self.settings_panel = SettingsPanel(self, auto_run=auto_run)
        self.strategy_panel = StrategyPanel(self)
        self.steps_panel = StepsPanel(self)
        self.attention_panel = LiveAttentionPanel(self, live=live_attention)
        self.history_panel = HistoryPanel(self)
        self.export_panel = ExportPanel(self)
        self.panels: tuple[Panel, ...] = (
            self.status_panel, self.banner_panel, self.inputs_panel, self.settings_panel, self.strategy_panel,
            self.history_panel, self.export_panel, self.steps_panel, self.attention_panel,
        )  # fmt: skip
        with self.lock:
            parts = [panel.build() for panel in self.panels]
            self._expose_widgets()
            # each panel under its heading, in the order of self.panels: a new panel is one more entry there
            self.children = [
                widget for panel, part in zip(self.panels, parts)
                for widget in ([section(panel.heading)] if panel.heading else []) + [part]
            ]  # fmt: skip
            self._tell(Change(STARTED))
            self.set_status("ready" if not session.step_index else f"{session.step_index} steps already computed")
        if run:
            self.run()

    def _expose_widgets(self) -> None:
        """The panels' widgets as attributes of the Explorer (its API for notebooks and tests)."""
        status, inputs, settings = self.status_panel, self.inputs_panel, self.settings_panel
        steps, attention = self.steps_panel, self.attention_panel
        self.banner = self.banner_panel.view
        self.status, self.progress = status.status, status.progress
        for name in (
            "box_drawer", "mask_painter", "box_fields", "set_box_button", "box_label", "cut_and_paste_view", "result_view",
            "result_caption",
        ):
            setattr(self, name, getattr(inputs, name))
        for name in ("brush", "erase", "background_view", "foreground_view"):  # with anywidget the first two, else the others
            if hasattr(inputs, name):
                setattr(self, name, getattr(inputs, name))
        for name in ("controls", "prompt", "buttons", "auto_run", "change_label"):
            setattr(self, name, getattr(settings, name))
        for name in ("scrubber", "strip", "step_title", "plan_label", "channel_rows", "preview_row", "decode_button", "decoded_row"):
            setattr(self, name, getattr(steps, name))
        self.attention, self.live_attention = attention.view, attention.live
        self.picker, self.layer_choice, self.kind_choice = self.attention.picker, self.attention.layer_choice, self.attention.kind_choice
        self.sources_row = self.attention.sources_row
        for name in ("preset_choice", "preset_note", "propose_button", "accept_button", "proposal_row", "cross_row"):
            setattr(self, name, getattr(self.strategy_panel, name))

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
        self._worker.submit(lambda: self.set_status(f"stopped after {self.session.step_index} steps"))

    def update(self, **changes) -> None:
        """Apply ``Session.update(**changes)`` and (with auto-run) recompute the affected steps.

        Rapid updates coalesce: a pending update of the same fields (one that has not started) is replaced
        by this one, so dragging a slider through many values while a step runs applies only the latest.
        """
        self.update_later(tuple(changes), lambda: changes)

    def update_later(self, names: tuple[str, ...], make_changes: Callable[[], dict]) -> None:
        """``update(**make_changes())`` with the changes made in the job, for changes that depend on the Session
        (e.g. a painted mask, sized to the foreground then). ``names``: the fields it changes (for coalescing)."""
        generation = self._worker.new_generation()
        self._worker.submit(lambda: self._job_update(make_changes(), generation), key=("update", *sorted(names)))

    def show_step(self, step: int) -> None:
        """Show step ``step`` in the step and attention panels (moves the scrubber)."""
        self.scrubber.value = int(step)  # the observer queues the job

    def look_at(self, step: int) -> None:
        """Queue the rendering of step ``step`` by every panel (what a scrubber move does)."""
        self._worker.submit(lambda: self._job_render(int(step)))

    def select_query(self, x: int, y: int) -> None:
        """Pick the attention query pixel ``(x, y)`` in working-image pixels."""
        self._worker.submit(lambda: self._job_select_query((int(x), int(y))))

    def decode_step(self) -> None:
        """VAE-decode each branch's x0 estimate at the scrubbed step."""
        step = self.scrubber.value
        self._worker.submit(lambda: self._job_decode(step))

    def capture_attention(self) -> None:
        """Capture the attention of the scrubbed step again and show it (also when live capture is off)."""
        step = self.scrubber.value
        self._worker.submit(lambda: self.attention_panel.show(self.session, step, recapture=True))

    def restore(self, run: int) -> None:
        """Undo to the kept run number ``run``: its settings come back through ``Session.update`` (only the steps
        they change are recomputed; with auto-run the result is that run's again)."""
        entry = self.history_panel.entry(int(run))  # a KeyError here, at the call, names the kept runs
        self._restore_later(entry.settings, f"restored run {entry.number}'s settings")

    def reset(self) -> None:
        """Back to the settings (config, prompt, box, images, object mask) the Explorer opened with."""
        self._restore_later(self._opening_settings, "reset to the opening settings")

    def _restore_later(self, settings: dict, what: str) -> None:
        generation = self._worker.new_generation()

        def job() -> None:
            changes = changes_to(self.session, settings)
            if not changes:
                self.set_status(f"{what}: they are the current settings")
                return
            self._job_update(changes, generation)

        self._worker.submit(job, key=("update", "restore"))

    @property
    def runs(self) -> list:
        """The kept finished runs, oldest first (``tficon.widgets.compare.RunEntry``)."""
        return list(self.history_panel.entries)

    def compare(self, a: int, b: int) -> None:
        """Compare the kept runs ``a`` and ``b`` in the history panel (side by side, difference, split view)."""
        for run in (a, b):
            self.history_panel.entry(int(run))
        self.history_panel.a_choice.value, self.history_panel.b_choice.value = int(a), int(b)

    def export(self, folder) -> dict:
        """Write the result PNG, the figure PNG and the recipe JSON into ``folder``; returns {kind: path}.
        Waits for the queued work first (the files describe the finished run)."""
        paths: dict = {}
        self._worker.submit(lambda: paths.update(self.export_panel.write(self.session, folder)))
        self.wait()
        if not paths:
            raise RuntimeError(f"export failed: {self.last_error}")
        return paths

    def apply_preset(self, name: str) -> None:
        """Switch to preset ``name`` (``tficon.presets()``) through ``update``: the settings some preset controls take
        its values (or their defaults where it leaves them alone), the others (steps, seed, ...) are kept; only the
        steps the change affects are recomputed. An unknown name raises a ValueError here, listing the presets."""
        from tficon.core.presets import get_preset

        from .strategy_views import preset_update

        get_preset(name)
        self.update_later(("preset",), lambda: preset_update(self.session.config, name))

    def propose_mask(self, threshold: float = 0.5) -> None:
        """Propose the object's mask from its words' cross-attention on the computed steps (``Session.propose_mask``)
        and show it over the background; ``accept_proposal()`` makes it the target."""
        self._worker.submit(lambda: self.strategy_panel.propose(self.session, float(threshold)))

    def accept_proposal(self) -> None:
        """Make the proposed mask the target (``update(mask_or_box=proposal)``); the official rule reads its box."""
        def changes() -> dict:
            proposal = self.strategy_panel.proposal
            if proposal is None:
                raise ValueError("there is no mask proposal to accept: propose one first (propose_mask)")
            return {"mask_or_box": proposal}

        self.update_later(("mask_or_box",), changes)

    def submit(self, job: Callable[[], None], *, key: object = None) -> None:
        """Queue ``job`` on the Explorer's worker (it runs holding ``lock``, after the jobs already queued); a
        pending job with the same ``key`` is replaced by this one."""
        self._worker.submit(job, key=key)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queued work is done; False if ``timeout`` seconds passed first."""
        return self._worker.wait(timeout)

    @property
    def busy(self) -> bool:
        """True while work is running or queued."""
        return self._worker.busy

    def set_status(self, text: str, *, error: bool = False) -> None:
        """Show ``text`` in the header. The header shows one message: a later success replaces an earlier
        error, and ``last_error`` follows it."""
        if not error:
            self.last_error = None
        self.status_panel.set(text, error=error)
        self.banner_panel.set_error(text if error else None)

    def __repr__(self) -> str:  # short: the default lists every child widget
        s = self.session
        return f"Explorer(steps={s.steps}, completed={s.step_index}, busy={self.busy})"

    def close(self) -> None:
        """Stop the worker and close the widget."""
        self._worker.close()
        super().close()

    # ================================================================== panels
    def _tell(self, change: Change) -> None:
        for panel in self.panels:
            panel.on_change(self.session, change)

    def _collect_warnings(self, caught: list) -> None:
        """The warnings a job raised (``Worker``'s ``on_warning``): kept for the run and shown in the banner. The
        library's toy-world warning is said in the Explorer's own words when the run ends (``toy_world_notice``)."""
        for message in caught:
            text = str(message.message)
            if TOY_WORLD_MARK in text:
                continue
            self._warn(f"{message.category.__name__}: {text}" if message.category is not UserWarning else text)

    def _warn(self, text: str) -> None:
        if text not in self.run_warnings:
            self.run_warnings.append(text)
        self.banner_panel.add_warning(text)

    def _begin_run(self) -> None:
        """A new run begins: the warnings and the error shown belong to the run before."""
        self.run_warnings = []
        self.banner_panel.clear()

    def _report_error(self, error: BaseException) -> None:
        self.last_error = error
        self.set_status(f"{type(error).__name__}: {error}", error=True)

    def _then_clear_error(self) -> None:
        """After a job that succeeded without a status of its own, an earlier error no longer describes the state."""
        if self.status_panel.is_error:
            self.set_status(f"ready · {self.session.step_index} of {self.session.steps + 1} steps computed")

    # ================================================================== jobs (worker thread, lock held)
    def _job_update(self, changes: dict, generation: int) -> None:
        s = self.session
        names = frozenset(changes)
        try:
            first = s.update(**changes)
        except (ValueError, TypeError) as error:
            self.last_error = error
            self._tell(Change(SETTINGS_CHANGED, names=names))  # the views show the Session's values again
            self.set_status(f"not applied: {error}", error=True)
            return
        self.history.append({"changes": dict(changes), "first": first})
        self._begin_run()
        what = ", ".join(f"{k}={v!r}" if isinstance(v, (int, float, str, tuple)) else k for k, v in changes.items())
        # the status first: when a view below has changed, the status already says what is going on
        if first is None:
            self.set_status(f"{what}: no step changes")
        else:
            self.set_status(f"{what}: steps {first}..{s.steps} must be recomputed ({s.steps + 1 - first} of {s.steps + 1})")
            self._tell(Change(STEPS_DROPPED, step=first))
            self._run_started = (first, s.stats["sample_evals"], time.perf_counter())
        self._tell(Change(SETTINGS_CHANGED, names=names))
        self.settings_panel.show_last_change(what, first, s.steps)
        if self.auto_run.value and not s.done and self._worker.is_current(generation):
            self._worker.submit(lambda: self._job_advance(generation, None))

    def _job_rewind(self, step: int) -> None:
        s = self.session
        step = min(step, s.step_index)
        s.rewind(step)
        self._tell(Change(STEPS_DROPPED, step=step))
        self._run_started = None
        self.set_status(f"rewound: steps {step}..{s.steps} will be recomputed")

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
            self._begin_run()
            self._run_started = (s.step_index, s.stats["sample_evals"], time.perf_counter())
        if s.step_index == 0:
            self.set_status("encoding and inverting both images (cached after the first run)…")
            started = time.perf_counter()
            s.compose_start()
            if time.perf_counter() - started > 0.05:
                self.set_status(f"inversion done in {time.perf_counter() - started:.1f} s")
        run_alone(s, until=s.step_index + 1, threads=s.threads)  # one step per job: a stop or a change lands between steps
        record = s.records[-1]
        first, _, started = self._run_started
        rate = (s.step_index - first) / max(time.perf_counter() - started, 1e-9)  # since this run began (all jobs)
        self.set_status(
            f"step {record.s}/{s.steps} done ({record.seconds:.2f} s, {record.sample_evals} sample evals; "
            f"{rate:.1f} steps/s)"
        )
        self._tell(Change(STEP_COMPUTED, step=record.s))
        if s.step_index < target and self._worker.is_current(generation):
            self._worker.submit(lambda: self._job_advance(generation, until))
        else:
            self._finish()

    def _job_render(self, step: int) -> None:
        for panel in self.panels:
            panel.render(self.session, step)
        self._then_clear_error()

    def _job_decode(self, step: int) -> None:
        if self.steps_panel.decode(self.session, step):
            self._then_clear_error()

    def _job_select_query(self, query: tuple[int, int]) -> None:
        self.attention.set_query(*query)
        self._then_clear_error()

    def _finish(self) -> None:
        s = self.session
        self._tell(Change(FINISHED))
        if not s.done:
            self.set_status(f"paused after {s.step_index} of {s.steps + 1} steps")
            return
        self.runs_finished += 1
        notice = toy_world_notice(s)
        if notice is not None:
            self._warn(notice)
        count = len(self.run_warnings)
        done = "done" if not count else "done, with a warning" if count == 1 else f"done, with {count} warnings"
        summary = f"{done} · run {self.runs_finished}"
        if self._run_started is not None:  # steps were computed: a new result to keep
            self.history_panel.record(s, self.runs_finished, tuple(self.run_warnings))
            first, evals, started = self._run_started
            summary += (
                f" · steps {first}..{s.steps} computed ({s.steps + 1 - first} of {s.steps + 1}), "
                f"{s.stats['sample_evals'] - evals} sample evals, {time.perf_counter() - started:.1f} s "
                f"({(s.steps + 1 - first) / max(time.perf_counter() - started, 1e-9):.1f} steps/s)"
            )
        self._run_started = None
        self.set_status(summary)  # last: "done" means every view is up to date

"""Kernel-side tests of tficon.widgets: set controls from Python as the front end would, then check the
Session, what the views show, and how much was recomputed (no browser; see test_browser.py for that).

Tiny random SD 2.x model at 128 px (16x16 latents, attention at 16/8/4), 8 steps: fast, and every code
path of the real models runs. Expectations are computed independently from the Session's public API
(fresh sessions, direct capture_attention calls, the step plans), never from the widget's own state.
"""

from __future__ import annotations

import re

import base64
import io
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")
pytest.importorskip("matplotlib")

from tficon.widgets import Explorer, _compat, figures, maps, render  # noqa: E402
from tficon.widgets.attention_panel import source_picture  # noqa: E402
from tficon.widgets.masks import mask_at_original_size, painting_grid, window_mask_on_grid  # noqa: E402
from tficon.widgets.views import AttentionMapView, StepStrip  # noqa: E402
from tficon.widgets.worker import Worker  # noqa: E402
from tiny_setup import SIZE, new_session  # noqa: E402

from tficon.core.config import SETTINGS  # noqa: E402
from tficon.core.io import to_pil  # noqa: E402
from tficon.core.placement import nearest_resize  # noqa: E402

STEPS = 8


def make_session(model, sample, **config):
    return new_session(model, sample, steps=config.pop("steps", STEPS), **config)


# What the views show, read from the widgets' own values (the PNG an image widget holds, the data URL a canvas draws).
def png_picture(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def shown(view) -> np.ndarray:
    """The picture an ``ipywidgets.Image`` (or a canvas, through its ``src`` data URL) shows."""
    if hasattr(view, "src"):
        return png_picture(base64.b64decode(view.src.split(",", 1)[1]))
    return png_picture(view.value)


def row_pictures(row) -> list[np.ndarray]:
    """The pictures of an ``ImageRow``, in order."""
    return [shown(cell.children[0]) for cell in row.children]


def shows(view, image, size: int) -> bool:
    """Whether ``view`` shows ``image`` (drawn ``size`` px wide, as the views enlarge it)."""
    return np.array_equal(shown(view), render.enlarge_to(render.as_rgb(image), size))


def shown_result(ex) -> np.ndarray:
    return shown(ex.result_view)


@pytest.fixture
def explorer(model, sample):
    ex = Explorer(make_session(model, sample), run=True)
    assert ex.wait(120), "the first run did not finish"
    assert ex.last_error is None
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def finished(model, sample):
    """One finished Explorer for the read-only tests."""
    ex = Explorer(make_session(model, sample), run=True)
    assert ex.wait(120)
    yield ex
    ex.close()


# ---------------------------------------------------------------------------------------------- settings
def test_tau_b_change_recomputes_only_the_affected_suffix(explorer, model, sample):
    s = explorer.session
    old_plans, old_records = s.plans, s.records
    old_result = shown_result(explorer)
    evals_before = s.stats["sample_evals"]

    explorer.controls["tau_b"].value = 0.5  # what the browser does when the slider moves
    assert explorer.wait(120)

    assert explorer.last_error is None
    assert s.config.tau_b == 0.5
    new_plans = s.plans
    first = next(k for k, (a, b) in enumerate(zip(old_plans, new_plans)) if a != b)
    assert 0 < first < STEPS  # tau_b only moves the end of the blending
    assert explorer.history[-1] == {"changes": {"tau_b": 0.5}, "first": first}
    # steps before `first` are the very same records; the rest were recomputed, at exactly their plans' cost
    assert all(a is b for a, b in zip(old_records[:first], s.records[:first]))
    assert all(a is not b for a, b in zip(old_records[first:], s.records[first:]))
    assert s.stats["sample_evals"] - evals_before == sum(p.sample_evals for p in new_plans[first:])
    # the shown result is the new composition, bitwise equal to a fresh run with tau_b = 0.5
    fresh = np.asarray(make_session(model, sample, tau_b=0.5).result)
    assert shows(explorer.result_view, fresh, explorer.image_px)
    assert not np.array_equal(shown_result(explorer), old_result)
    assert explorer.progress.value == STEPS + 1 and len(explorer.strip) == STEPS + 1
    assert f"steps {first}..{STEPS} computed" in explorer.status.value
    rate = float(re.search(r"\(([0-9.]+) steps/s\)", explorer.status.value).group(1))  # the run's step rate
    assert rate > 0
    assert "tau_b=0.50" in explorer.result_caption.value


def test_guidance_seed_prompt_and_steps_controls_reach_the_session(explorer):
    s = explorer.session
    explorer.controls["guidance"].value = 3.0
    assert explorer.wait(120)
    assert s.config.guidance == 3.0 and explorer.history[-1]["first"] == 0
    explorer.controls["seed"].value = 7
    explorer.prompt.value = "a red star and a blue square, outline style"
    assert explorer.wait(120)
    assert s.config.seed == 7 and s.prompt == "a red star and a blue square, outline style"
    explorer.controls["steps"].value = 6
    assert explorer.wait(120)
    assert s.steps == 6 and s.done and len(s.records) == 7
    assert explorer.scrubber.max == 6 and explorer.progress.max == 7 and len(explorer.strip) == 7


def test_every_setting_with_a_control_has_its_widget_with_the_declared_range(finished):
    """The settings controls come from tficon.core.config.SETTINGS: one widget per Setting with a control, of that
    kind, over its declared range or choices, with its help as hover text and its CSS class."""
    import ipywidgets as widgets

    controls, config = finished.controls, finished.session.config
    declared = [setting for setting in SETTINGS if setting.control is not None]
    assert set(controls) == {"prompt"} | {setting.name for setting in declared}
    assert "order" not in controls  # declared without a control
    kinds = {
        "slider": widgets.FloatSlider, "int": widgets.BoundedIntText, "dropdown": widgets.Dropdown,
        "checkbox": widgets.Checkbox, "text": widgets.Text, "layers": widgets.Combobox,
    }  # fmt: skip
    for setting in declared:
        control = controls[setting.name]
        assert isinstance(control, kinds[setting.control]), setting.name
        assert f"tficon-{setting.name.replace('_', '-')}" in control._dom_classes
        assert _compat.help_of(control) == setting.help
        if setting.control in ("slider", "int"):
            assert (control.min, control.max) == setting.control_span, setting.name
        if setting.control == "slider":
            assert control.step == setting.step
        if setting.control == "dropdown":
            assert tuple(control.options) == setting.choices
        expected = config.effective_guidance if setting.name == "guidance" else getattr(config, setting.name)
        assert control.value == expected, setting.name
    assert controls["tau_b"].max == 2.0  # tau_b may exceed 1 (blending on the last steps too)
    switches = [controls[setting.name] for setting in declared if setting.switch]
    assert len(switches) == 7 and not any(c.value for c in switches)  # all off: the official code
    accordion = finished.settings_panel.switches
    assert accordion.selected_index is None and list(accordion.children[0].children) == switches  # collapsed


def test_a_parity_switch_reaches_the_session_and_recomputes_from_its_first_effect(model, sample):
    ex = Explorer(make_session(model, sample), threaded=False)
    s = ex.session
    try:
        ex.run()
        evals_before = s.stats["sample_evals"]
        ex.controls["background_queries"].value = True  # what a click on the checkbox sends
        assert ex.last_error is None and s.config.background_queries is True and s.done
        first = ex.history[-1]["first"]
        assert ex.history[-1]["changes"] == {"background_queries": True} and first is not None
        assert s.stats["sample_evals"] - evals_before == sum(p.sample_evals for p in s.plans[first:])
        fresh = make_session(model, sample, background_queries=True).run()
        assert np.array_equal(np.asarray(s.result), np.asarray(fresh.result))
        assert shows(ex.result_view, fresh.result, ex.image_px)
        # a rejected value leaves the Session as it was and the control showing the Session's value
        ex.update(tau_b=2.5)
        assert isinstance(ex.last_error, ValueError) and "tau_b must be" in ex.status.value
        assert s.config.tau_b == 0.8 and ex.controls["tau_b"].value == 0.8
        ex.controls["background_queries"].value = False
        assert ex.last_error is None and s.config.background_queries is False
    finally:
        ex.close()


def test_rejected_change_leaves_everything_as_it_was(explorer):
    s = explorer.session
    before = (s.placement, s.records, s.stats["sample_evals"], list(explorer.box_drawer.box))
    explorer.box_drawer.set_state({"box": [100, 100, 60, 60]})  # a drag in the front end; leaves the 128 px image
    assert explorer.wait(60)
    assert isinstance(explorer.last_error, ValueError)
    assert "not applied" in explorer.status.value and "leaves the 128x128 image" in explorer.status.value
    assert s.placement == before[0] and s.records == before[1] and s.stats["sample_evals"] == before[2]
    assert explorer.box_drawer.box == before[3]  # the drawn box snaps back


def test_run_until_step_rewind_and_the_lock(model, sample):
    ex = Explorer(make_session(model, sample))
    s = ex.session
    try:
        with ex.lock:  # the worker cannot touch the Session while we hold the lock
            ex.run(until=3)
            time.sleep(0.05)
            assert ex.busy and s.step_index == 0
        assert ex.wait(120)
        assert s.step_index == 3 and not s.done and "paused after 3" in ex.status.value
        ex.step()
        assert ex.wait(60) and s.step_index == 4 and len(ex.strip) == 4
        ex.rewind(2)
        assert ex.wait(60) and s.step_index == 2 and len(ex.strip) == 2 and ex.progress.value == 2
        ex.run()
        assert ex.wait(120) and s.done
    finally:
        ex.close()


def test_inline_mode_computes_in_the_calling_thread(model, sample):
    ex = Explorer(make_session(model, sample), threaded=False)
    try:
        ex.run(until=2)
        assert ex.session.step_index == 2 and not ex.busy  # done before run() returned
        ex.controls["tau_a"].value = 0.0
        assert ex.session.config.tau_a == 0.0 and ex.session.done
    finally:
        ex.close()


# ---------------------------------------------------------------------------------------------- inputs
def test_drawing_a_box_moves_the_object(explorer):
    s = explorer.session
    old_cut = shown(explorer.cut_and_paste_view)
    explorer.box_drawer.set_state({"box": [10, 12, 40, 40]})  # the message the front end sends at the end of a drag
    assert explorer.wait(120)
    assert explorer.last_error is None
    assert s.placement.bbox == (10, 12, 40, 40)
    target = s.placement.target_window
    assert explorer.box_drawer.secondary_box == [target.left, target.top, target.width, target.height]
    assert "(10, 12, 40, 40)" in explorer.box_label.value
    assert [f.value for f in explorer.box_fields] == [10, 12, 40, 40]
    expected_cut = render.as_rgb(s.inputs.cut_and_paste, value_range=(-1, 1))
    assert shows(explorer.cut_and_paste_view, expected_cut, explorer.inputs_panel.small_px)
    assert not np.array_equal(shown(explorer.cut_and_paste_view), old_cut)
    assert s.done and shows(explorer.result_view, s.result, explorer.image_px)


def test_painting_the_mask_sets_exactly_the_painted_object_mask(explorer):
    s = explorer.session
    window = s.placement.ref_window
    painted = explorer.mask_painter.mask_array.copy()
    assert painted.shape == (window.height, window.width) and painted.any()
    painted[:, : painted.shape[1] // 2] = False  # erase the left half, as strokes would
    painted[0:3, -3:] = True
    # the front end sends the mask as a binary buffer at the end of a stroke
    explorer.mask_painter.set_state({"mask": memoryview(painted.astype(np.uint8).tobytes())})
    assert explorer.wait(120)
    assert explorer.last_error is None and explorer.history[-1]["first"] == 0
    object_mask = s.inputs.object_mask[window.top : window.bottom, window.left : window.right] > 0.5
    assert np.array_equal(object_mask, painted)
    assert np.array_equal(explorer.mask_painter.mask_array, painted)
    assert s.done


@pytest.mark.parametrize("window, original", [((26, 26), (64, 64)), ((51, 37), (128, 93)), ((40, 40), (30, 30)), ((40, 23), (17, 11))])
def test_painted_masks_reach_the_session_exactly(window, original):
    rng = np.random.default_rng(0)
    grid = painting_grid(window, original)
    assert grid == (window if original[0] >= window[0] else original)
    painted = rng.random(grid) > 0.5
    full = mask_at_original_size(painted, original)
    assert full.shape == original
    # the Session resizes the original mask onto the window with nearest_resize
    expected_window = painted if grid == window else nearest_resize(painted, window)
    assert np.array_equal(nearest_resize(full, window), expected_window)
    # and the painter starts from exactly the mask the Session holds
    assert np.array_equal(window_mask_on_grid(nearest_resize(full, window), grid, original), painted)


# ---------------------------------------------------------------------------------------------- views
def test_scrubber_shows_that_steps_latents_previews_and_decodes(finished):
    s = finished.session
    def captions(row) -> list[str]:
        return [cell.children[1].value for cell in row.children]

    finished.scrubber.value = 2
    assert finished.wait(60)
    assert finished.strip.selected == 2 and "after step 2:" in finished.step_title.value
    latents, previews = s.latents(2), s.preview(2)
    assert {"generation", "background"} <= set(latents)
    assert len(finished.channel_rows.children) == len(latents) and len(finished.preview_row.children) == len(previews)
    for branch, picture, caption in zip(latents, row_pictures(finished.channel_rows), captions(finished.channel_rows)):
        assert f"{branch} latent" in caption
        assert np.array_equal(picture, render.enlarge_to(render.channel_strip(latents[branch]), finished.channel_rows.size))
    for branch, picture, caption in zip(previews, row_pictures(finished.preview_row), captions(finished.preview_row)):
        assert f"{branch} x0 preview" in caption
        assert np.array_equal(picture, render.enlarge_to(render.as_rgb(previews[branch]), finished.preview_row.size))
    finished.decode_step()
    assert finished.wait(60)
    x0 = s.x0(2)
    assert len(finished.decoded_row.children) == len(x0)
    for branch, picture, caption in zip(x0, row_pictures(finished.decoded_row), captions(finished.decoded_row)):
        decoded = np.asarray(to_pil(s.decode(x0[branch])[0]))
        assert f"{branch} x0, decoded" in caption
        assert np.array_equal(picture, render.enlarge_to(decoded, finished.decoded_row.size))
    finished.strip.selected = 5  # a click on a thumbnail moves the scrubber
    assert finished.wait(60)
    assert finished.scrubber.value == 5 and "after step 5:" in finished.step_title.value
    assert len(finished.decoded_row.children) == 0  # the decodes of step 2 no longer describe the step shown


def test_query_click_shows_that_row_of_the_captured_maps(finished):
    s = finished.session
    panel = finished.attention
    finished.scrubber.value = 1
    assert finished.wait(60)
    assert "step 1's UNet call" in panel.title.value
    grid, layers, kind = panel.selected()
    assert grid == (16, 16) and kind == "composite"
    captured = s.capture_attention(1)  # independent capture of the same step
    finest = [layer for (layer, kind), m in captured.items() if kind == "composite" and m.shape[0] == 256]
    expected = torch.stack([captured[(layer, "composite")] for layer in finest]).mean(0)
    assert sorted(layers) == sorted(finest)
    torch.testing.assert_close(finished.picker.attention, expected)

    before = finished.picker.heatmap.clone()
    finished.picker.canvas.set_state({"point": [20, 100]})  # the message a click sends
    assert finished.wait(60)
    q = (100 * 16 // SIZE) * 16 + 20 * 16 // SIZE
    assert finished.picker.query == (20, 100) and finished.picker.query_index == q
    torch.testing.assert_close(finished.picker.heatmap, expected[q].reshape(16, 16))
    assert not torch.equal(finished.picker.heatmap, before)
    kinds = [k for k in maps.KINDS if any((layer, k) in captured for layer in finest)]
    assert set(kinds) == {"composite", "generation", "background", "reference", "pseudo_cross"}  # step 1 injects
    pictures = row_pictures(finished.sources_row)
    assert len(pictures) == 5
    heats = {}
    for kind in kinds:  # each source: that kind's mean map's row q, over its picture
        layers = [layer for layer in finest if (layer, kind) in captured]
        heats[kind] = torch.stack([captured[(l, kind)] for l in layers]).mean(0)[q].reshape(16, 16)
    shared = max(float(h.max()) for h in heats.values())  # one colour scale for all (the default)
    for (kind, heat), picture in zip(heats.items(), pictures):
        expected_picture = source_picture(panel.frame_for(kind), heat, (20, 100), size=finished.sources_row.size, width=SIZE, peak=shared)
        assert np.array_equal(picture, render.enlarge_to(expected_picture, finished.sources_row.size)), kind
    assert all(f"{shared:.3f}" in cell.children[1].value for cell in finished.sources_row.children)
    panel.shared_scale.value = False  # each map on its own scale
    assert finished.wait(60)
    for (kind, heat), picture in zip(heats.items(), row_pictures(finished.sources_row)):
        expected_picture = source_picture(panel.frame_for(kind), heat, (20, 100), size=finished.sources_row.size, width=SIZE)
        assert np.array_equal(picture, render.enlarge_to(expected_picture, finished.sources_row.size)), kind
    panel.shared_scale.value = True
    assert finished.wait(60)

    # one layer and one kind
    layer = finest[0]
    finished.layer_choice.value = layer
    finished.kind_choice.value = "pseudo_cross"
    assert finished.wait(60)
    assert panel.selected() == ((16, 16), [layer], "pseudo_cross")
    torch.testing.assert_close(finished.picker.attention, captured[(layer, "pseudo_cross")])
    torch.testing.assert_close(finished.picker.heatmap, captured[(layer, "pseudo_cross")][q].reshape(16, 16))
    regions = s.region_masks(16, 16)
    cut_and_paste = render.as_rgb(s.inputs.cut_and_paste, value_range=(-1, 1))
    reference = render.as_rgb(s.inputs.reference, value_range=(-1, 1))
    region_names = [n for n in ("box", "object", "background", "reference_object") if n in regions]
    for name, picture in zip(region_names, row_pictures(panel.region_row), strict=True):
        frame = reference if name == "reference_object" else cut_and_paste
        assert np.array_equal(picture, render.enlarge_to(render.tint(frame, regions[name].numpy()), panel.region_row.size)), name
    ref_share, ref_components = maps.svd_components(captured[(layer, "pseudo_cross")], (16, 16), k=4)
    svd_pictures = row_pictures(panel.svd_row)
    assert len(svd_pictures) == 4
    for component, picture in zip(ref_components, svd_pictures):
        high = float(component.abs().max())
        colours = render.colourise(component.numpy(), cmap="RdBu_r", vmin=-high, vmax=high)
        assert np.array_equal(picture, render.enlarge_to(colours, panel.svd_row.size))
    assert [f"{100 * float(v):.0f}%" in c.children[1].value for v, c in zip(ref_share, panel.svd_row.children)] == [True] * 4
    finished.layer_choice.value = "grid:16x16"
    finished.kind_choice.value = "composite"
    assert finished.wait(60)


def test_attention_map_view_on_plain_tensors():
    grid = (4, 6)
    attention = torch.softmax(torch.randn(24, 24, generator=torch.Generator().manual_seed(0)), -1)
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    seen = []
    view = AttentionMapView(attention, image, grid=grid, query=(5, 5), on_query=seen.append)
    torch.testing.assert_close(view.heatmap, attention[0].reshape(4, 6))
    view.canvas.point = [59, 39]  # bottom-right cell
    assert view.query == (59, 39) and view.query_index == 23 and seen == [(5, 5), (59, 39)]
    torch.testing.assert_close(view.heatmap, attention[23].reshape(4, 6))
    expected = render.heat_overlay(image, attention[23].reshape(4, 6).numpy(), size=256)
    assert expected.shape[1] == 60 * (256 // 60) and np.array_equal(shown(view.canvas), expected)
    with pytest.raises(ValueError, match="outside"):
        view.set_query(60, 0)


def test_step_strip_selection_and_truncation():
    strip = StepStrip([np.zeros((4, 4, 3), np.uint8)] * 3, notes=["a", "b", "c"])
    assert len(strip) == 3 and strip.selected is None
    strip.items[1].children[1].click()
    assert strip.selected == 1 and strip.items[1].children[1].button_style == "info"
    strip.truncate(1)
    assert len(strip) == 1 and strip.selected is None
    strip.set_item(1, np.ones((4, 4, 3), np.uint8))
    assert len(strip) == 2 and strip.items[1].children[1].description == "1"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")


def test_200_rapid_slider_changes_coalesce_to_the_last_setting_with_flat_memory(model, sample):
    """Under load: tau_b dragged through 200 values while the worker is busy. Pending updates of the same
    control coalesce (the queue holds one, two are applied: the one already started and the latest), the
    Session ends bitwise equal to a fresh run at the last value, and memory stays flat after a warm-up."""
    import tracemalloc

    ex = Explorer(make_session(model, sample), run=True)
    s = ex.session
    values = [round(0.05 * ((i * 7) % 19 + 1), 2) for i in range(200)]  # consecutive values always differ
    assert values[-1] == 0.35

    def burst() -> None:
        applied = len(ex.history)
        with ex.lock:  # the worker is mid-job (it waits for the lock) while the 200 changes arrive
            for value in values:
                ex.controls["tau_b"].value = value  # what the browser sends when the slider moves
            assert ex._worker.pending <= 1  # without coalescing, 199 updates would wait here
        assert ex.wait(300)
        assert ex.last_error is None and s.done
        assert len(ex.history) - applied <= 2 and ex.history[-1]["changes"] == {"tau_b": 0.35}
        ex.controls["tau_b"].value = 0.8  # back to the start, so the next burst does the same work
        assert ex.wait(300) and s.config.tau_b == 0.8

    try:
        assert ex.wait(300) and ex.last_error is None
        burst()  # warm-up: caches, first-use allocations
        tracemalloc.start()
        try:
            rss0, (traced0, _) = _rss_bytes(), tracemalloc.get_traced_memory()
            burst()
            burst()
            rss1, (traced1, _) = _rss_bytes(), tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Python objects (numpy arrays included) and the process as a whole, after 400 more changes
        assert traced1 - traced0 < 2 * 2**20, f"Python heap grew {(traced1 - traced0) / 2**20:.2f} MB"
        assert rss1 - rss0 < 32 * 2**20, f"RSS grew {(rss1 - rss0) / 2**20:.1f} MB"
        assert ex._worker.coalesced >= 3 * 198
        # the last setting, bitwise
        ex.controls["tau_b"].value = values[-1]
        assert ex.wait(300) and ex.last_error is None
        fresh = make_session(model, sample, tau_b=values[-1]).run()
        assert s.config == fresh.config
        assert np.array_equal(np.asarray(s.result), np.asarray(fresh.result))
        assert shows(ex.result_view, fresh.result, ex.image_px)
    finally:
        ex.close()


def test_worker_coalesces_pending_jobs_with_the_same_key():
    worker = Worker()
    ran = []
    with worker.lock:
        worker.submit(lambda: ran.append("started"), key="a")  # taken by the thread, waits for the lock
        time.sleep(0.05)
        for i in range(50):
            worker.submit(lambda i=i: ran.append(("a", i)), key="a")
            worker.submit(lambda i=i: ran.append(("b", i)), key="b")
        worker.submit(lambda: ran.append("plain"))
        worker.submit(lambda: ran.append("plain"))
        assert worker.pending == 4 and worker.coalesced == 98
    assert worker.wait(10)
    assert ran == ["started", ("a", 49), ("b", 49), "plain", "plain"]
    worker.close()


def test_worker_runs_jobs_one_at_a_time_in_order():
    worker = Worker()
    spans, order = [], []

    def job(name):
        def run():
            start = time.perf_counter()
            time.sleep(0.01)
            spans.append((start, time.perf_counter()))
            order.append(name)
        return run

    threads = [threading.Thread(target=lambda i=i: [worker.submit(job((i, k))) for k in range(4)]) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert worker.wait(10)
    spans.sort()
    assert len(spans) == 12 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # never overlapping
    for i in range(3):
        assert [k for (j, k) in order if j == i] == [0, 1, 2, 3]  # each submitter's order is kept
    generation = worker.new_generation()
    assert worker.is_current(generation) and not worker.is_current(generation - 1)
    worker.submit(lambda: 1 / 0)
    assert worker.wait(10) and isinstance(worker.errors[-1], ZeroDivisionError)
    worker.submit(job("after"))  # an error does not kill the thread
    assert worker.wait(10) and order[-1] == "after"
    worker.close()


# ---------------------------------------------------------------------------------------------- maths and figures
def test_grid_and_query_arithmetic():
    assert maps.grid_for(256) == (16, 16)
    assert maps.grid_for(24, like=(8, 12)) == (4, 6) and maps.grid_for(96, like=(8, 12)) == (8, 12)
    with pytest.raises(ValueError):
        maps.grid_for(10, like=(8, 12))
    assert maps.query_token(0, 0, (64, 96), (4, 6)) == 0
    assert maps.query_token(95, 63, (64, 96), (4, 6)) == 23
    assert maps.query_token(16, 16, (64, 96), (4, 6)) == 7
    assert maps.token_centre(7, (64, 96), (4, 6)) == (24.0, 24.0)


def test_svd_components_recover_a_planted_pattern():
    # every query attends uniformly plus +/- a fixed key pattern: one centred component, share ~ 1
    grid = (4, 4)
    pattern = torch.zeros(16)
    pattern[[1, 6, 11]] = 1.0
    pattern -= pattern.mean()
    weights = torch.linspace(-1, 1, 16)
    attention = torch.full((16, 16), 1 / 16) + 0.02 * weights[:, None] * pattern[None, :]
    share, components = maps.svd_components(attention, grid, k=3)
    assert float(share[0]) == pytest.approx(1.0, abs=1e-6)
    expected = pattern / pattern.norm()
    torch.testing.assert_close(components[0].reshape(-1), expected, atol=1e-5, rtol=0)  # sign fixed: peak positive
    # against numpy on a random map: same singular vectors up to sign, shares from the singular values
    rand = torch.softmax(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)), -1)
    share, components = maps.svd_components(rand, grid, k=4)
    centred = (rand - rand.mean(1, keepdim=True)).double().numpy()
    _, singular, vh = np.linalg.svd(centred)
    np.testing.assert_allclose(share.numpy(), (singular[:4] ** 2 / (singular**2).sum()), rtol=1e-5)
    for i in range(4):
        np.testing.assert_allclose(np.abs(components[i].reshape(-1).numpy()), np.abs(vh[i]), atol=1e-5)


def test_heat_overlay_and_channel_strip_pixels():
    base = np.full((4, 4, 3), 100, np.uint8)
    assert np.array_equal(render.heat_overlay(base, np.zeros((2, 2))), base)  # no attention: image unchanged
    heat = np.array([[0.0, 1.0], [0.0, 0.0]])
    out = render.heat_overlay(base, heat, size=8)
    assert out.shape == (8, 8, 3)
    assert np.array_equal(out[:4, :4], np.full((4, 4, 3), 100, np.uint8))  # a zero cell keeps the image
    assert not np.array_equal(out[0, 4], base[0, 0])  # the hot cell covers the top-right quarter
    assert np.array_equal(out[:4, 4:], np.broadcast_to(out[0, 4], (4, 4, 3)))
    strip = render.channel_strip(torch.randn(1, 4, 3, 5))
    assert strip.shape == (3, 4 * 5 + 3, 3) and np.all(strip[:, 5] == 255)


def test_figures_show_the_same_numbers(finished):
    s = finished.session
    grid = (4, 6)
    attention = torch.softmax(torch.randn(24, 24, generator=torch.Generator().manual_seed(2)), -1)
    fig = figures.attention_figure(attention, np.zeros((40, 60, 3), np.uint8), grid=grid, query=(59, 0))
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), attention[5].reshape(4, 6).numpy())
    fig = figures.svd_figure(attention, grid=grid, k=3)
    _, components = maps.svd_components(attention, grid, k=3)
    np.testing.assert_allclose(fig.axes[2].images[0].get_array(), components[2].numpy())
    fig = figures.step_strip_figure([np.zeros((4, 4, 3), np.uint8)] * 13)
    assert sum(ax.get_visible() for ax in fig.axes) == 13
    fig = figures.session_figure(s, step=1)
    result_panel = fig.subfigs[0].axes[3].images[0].get_array()
    assert np.array_equal(np.asarray(result_panel), np.asarray(s.result))
    assert len(fig.subfigs[1].axes) == 5  # composite and its four sources at an injection step
    fig.savefig(__import__("io").BytesIO(), format="png", dpi=50)


def test_explorer_degrades_to_plain_widgets_without_anywidget(model, sample, monkeypatch):
    """Without anywidget (e.g. a bare ipywidgets 7 install) the canvases become sliders and number fields."""
    from tficon.widgets import _compat

    monkeypatch.setattr(_compat, "HAS_ANYWIDGET", False)  # what an ImportError of anywidget sets
    ex = Explorer(make_session(model, sample, steps=4), run=True)
    s = ex.session
    try:
        assert ex.wait(120) and ex.last_error is None and s.done
        assert ex.box_drawer is None and ex.mask_painter is None and not ex.picker.uses_canvas
        ex.picker.query_x.value = 5  # the query sliders stand in for a click
        assert ex.wait(60) and ex.picker.query[0] == 5
        grid, layers, _kind = ex.attention.selected()
        q = maps.query_token(*ex.picker.query, (SIZE, SIZE), grid)
        heat = maps.query_heatmap(maps.mean_map(ex.attention.maps, layers, "composite"), q, grid)
        peaks = [maps.query_heatmap(m, q, grid).max() for k in maps.KINDS if (m := maps.mean_map(ex.attention.maps, layers, k)) is not None]
        size = ex.sources_row.size  # the side-by-side follows the slider's query, on one colour scale
        expected = source_picture(ex.attention.frame_for("composite"), heat, ex.picker.query, size=size, width=SIZE, peak=float(max(peaks)))
        assert np.array_equal(row_pictures(ex.sources_row)[0], render.enlarge_to(expected, size))
        for field, value in zip(ex.box_fields, (10, 10, 40, 40)):  # typed box, then "set box"
            field.value = value
        ex.update(mask_or_box=tuple(f.value for f in ex.box_fields))
        assert ex.wait(120) and s.placement.bbox == (10, 10, 40, 40) and s.done
    finally:
        ex.close()


def test_core_never_imports_the_widgets_and_figures_need_no_ipywidgets():
    import subprocess
    import sys

    script = (
        "import sys, tficon, tficon.composition.session, tficon.composition.one_call, tficon.run.sweeps, tficon.cli\n"
        "assert not [m for m in sys.modules if m.startswith('tficon.widgets') or m in ('ipywidgets', 'anywidget')]\n"
        "import tficon.widgets.figures\n"
        "assert 'ipywidgets' not in sys.modules and 'anywidget' not in sys.modules\n"
        "print('IMPORTS OK')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "IMPORTS OK" in done.stdout, done.stderr[-3000:]


def test_explorer_on_an_already_run_session_shows_its_steps_and_updates(model, sample):
    session = make_session(model, sample).run()
    ex = Explorer(session)
    try:
        assert ex.wait(60) and ex.last_error is None
        assert len(ex.strip.items) == session.steps + 1 and shows(ex.result_view, session.result, ex.image_px)
        before = shown_result(ex)
        ex.update(tau_b=0.95)
        assert ex.wait(120) and ex.last_error is None
        assert session.done and len(ex.strip.items) == session.steps + 1
        assert not np.array_equal(shown_result(ex), before)
        assert shows(ex.result_view, session.result, ex.image_px)
    finally:
        ex.close()


def test_step_tags_legend_composite_label_and_colour_bars(finished):
    """The step strip explains its fg/bg/bl tags; the composite is called injected only at steps that inject; each
    source heatmap carries a colour bar up to its own maximum."""
    s = finished.session
    assert all(word in finished.strip.title.value for word in ("fg", "bg", "bl", "foreground", "blend"))
    finished.show_step(1)
    assert finished.wait(60) and s.plans[1].fg
    labels = dict((value, label) for label, value in finished.kind_choice.options)
    assert labels["composite"] == "composite (injected)"
    captions = [cell.children[1].value for cell in finished.sources_row.children]
    assert all("linear-gradient" in c for c in captions)
    assert finished.attention.selected()[2] == "composite"  # so the picker's heatmap is the composite's row
    assert f"{float(finished.picker.heatmap.max()):.3f}" in captions[0]
    plain = max(k for k, plan in enumerate(s.plans) if plan.evaluate and not (plan.fg or plan.bg))
    finished.show_step(plain)
    assert finished.wait(60) and f"step {plain}'s UNet call" in finished.attention.title.value
    labels = dict((value, label) for label, value in finished.kind_choice.options)
    assert labels["composite"].startswith("composite (no injection")
    finished.show_step(1)
    assert finished.wait(60)

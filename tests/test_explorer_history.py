"""The Explorer's banner, history, A/B compare, undo, reset and export (kernel side), and the recipe round trips.

Warnings come from the toy model (its closed vocabulary) and from a warning raised inside a job; results are
compared with fresh Sessions built from the public API, never with the widgets' own state.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")
pytest.importorskip("matplotlib")

from PIL import Image  # noqa: E402

from tficon.composition.session import Session  # noqa: E402
from tficon.run import recipe as recipe_mod  # noqa: E402
from tficon.toy.samples import demo_sample  # noqa: E402
from tficon.widgets import Explorer, compare  # noqa: E402
from tficon.widgets.banner import words_outside  # noqa: E402
from tficon.widgets.worker import Worker  # noqa: E402
from tiny_setup import new_session  # noqa: E402

STEPS = 4


@pytest.fixture
def explorer(model, sample):
    ex = Explorer(new_session(model, sample, steps=STEPS), threaded=False)
    yield ex
    ex.close()


def fresh_result(model, sample, **config) -> np.ndarray:
    """What a fresh Session with these settings composes (the expectation, independent of the Explorer)."""
    session = new_session(model, sample, steps=config.pop("steps", STEPS), **config)
    return np.asarray(session.result)


def test_worker_hands_each_jobs_warnings_to_on_warning():
    seen: list[list[str]] = []
    worker = Worker(threaded=False, on_warning=lambda caught: seen.append([str(w.message) for w in caught]))
    worker.submit(lambda: warnings.warn("first"))
    worker.submit(lambda: None)  # no warning: no call
    worker.submit(lambda: (warnings.warn("again"), warnings.warn("again")))  # "always": both kept
    assert seen == [["first"], ["again", "again"]]


def test_history_keeps_every_finished_run_and_compares_any_two(explorer, model, sample):
    ex = explorer
    ex.run()
    assert ex.history_panel.compare_box.layout.display == "none"  # one run: nothing to compare yet
    ex.controls["guidance"].value = 2.0
    assert [e.number for e in ex.runs] == [1, 2] and ex.status_panel.is_error is False
    assert ex.history_panel.compare_box.layout.display == "flex"
    assert ex.runs[1].changes == ["guidance: None \u2192 2"]
    np.testing.assert_array_equal(ex.runs[0].image, fresh_result(model, sample))
    np.testing.assert_array_equal(ex.runs[1].image, fresh_result(model, sample, guidance=2.0))
    # A = run 1, B = run 2 (the newest and the one before): the difference map's numbers are those of the images
    panel = ex.history_panel
    assert (panel.a_choice.value, panel.b_choice.value) == (1, 2)
    d = np.abs(ex.runs[0].image.astype(int) - ex.runs[1].image.astype(int)).max(axis=-1)
    caption = panel.compare_row.children[2].children[1].value
    assert f"max |A&minus;B| = {d.max()}/255" in caption and f"{100 * (d > 0).mean():.1f}% of pixels differ" in caption
    assert "guidance: None \u2192 2" in panel.settings_diff.value
    # the split view: A left of the split, B right of it
    panel.split.value = 0.25
    shown = np.asarray(Image.open(io.BytesIO(panel.split_view.value)).convert("RGB"))
    expected = compare.split_view(ex.runs[0].image, ex.runs[1].image, 0.25)
    factor = shown.shape[0] // expected.shape[0]
    np.testing.assert_array_equal(shown[::factor, ::factor], expected)
    # the same run on both sides: identical
    ex.compare(2, 2)
    assert "identical, pixel for pixel" in panel.compare_row.children[2].children[1].value


def test_restore_and_reset_bring_back_the_earlier_result_bit_for_bit(explorer, model, sample):
    ex = explorer
    ex.run()
    first = ex.runs[0].image.copy()
    ex.controls["seed"].value = 3
    ex.controls["guidance"].value = 3.0
    assert len(ex.runs) == 3
    ex.restore(2)  # seed 3, guidance official
    assert ex.session.config.seed == 3 and ex.session.config.guidance is None and ex.session.done
    np.testing.assert_array_equal(ex.runs[-1].image, ex.runs[1].image)
    assert ex.history[-1]["changes"] == {"guidance": None}  # only what differs is changed
    ex.reset()
    assert ex.session.config == new_session(model, sample, steps=STEPS).config
    np.testing.assert_array_equal(ex.runs[-1].image, first)
    assert ex.controls["seed"].value == 3407 and ex.controls["guidance"].value == 5.0  # the controls follow
    ex.reset()  # already there: nothing recomputed
    assert "they are the current settings" in ex.status.value and len(ex.runs) == 5
    with pytest.raises(KeyError, match="run 99 is not kept"):
        ex.restore(99)


def test_a_failed_job_shows_its_error_in_the_banner_and_a_success_clears_it(explorer):
    ex = explorer
    ex.controls["steps"].value = 1  # steps < order: refused by the Session
    assert "not applied" in ex.status.value and ex.banner_panel.error and "steps (1) must be &gt;= order" in ex.banner.value
    assert ex.banner_panel.box.layout.display == "flex"

    def fails():
        raise FloatingPointError("step 2 produced non-finite values")

    ex.submit(fails)
    assert "non-finite" in ex.banner.value and ex.status_panel.is_error
    ex.run()
    assert ex.status.value.count("done \u00b7 run 1") == 1 and ex.banner_panel.error is None
    assert ex.banner_panel.box.layout.display == "none"


def test_a_warning_raised_in_a_job_reaches_the_banner_and_the_status(explorer):
    ex = explorer

    def warns():
        warnings.warn("attention capture of step 1: 3 maps left out", RuntimeWarning)

    ex.run(until=2)
    ex.submit(warns)
    assert "RuntimeWarning: attention capture of step 1" in ex.banner.value
    ex.run()
    assert "done, with a warning \u00b7 run 1" in ex.status.value
    assert ex.runs[0].warnings == ("RuntimeWarning: attention capture of step 1: 3 maps left out",)
    ex.controls["guidance"].value = 2.0  # a new run: its own warnings only
    assert "done \u00b7 run 2" in ex.status.value and ex.banner_panel.warnings == []


def test_the_toy_world_warning_reaches_the_page_every_time():
    from tficon.model import load_model

    toy = load_model("toy")
    d = demo_sample()
    assert words_outside(d.prompt, toy.vocabulary) == []
    assert words_outside("a photo of a Cat", toy.vocabulary) == ["cat", "of", "photo"]
    assert words_outside("a photo", None) == []
    ex = Explorer(Session(toy, d.background, d.foreground, d.foreground_mask, d.box, d.prompt, steps=2), threaded=False)
    try:
        ex.run()
        assert "done \u00b7 run 1" in ex.status.value and not ex.banner_panel.warnings
        title = ex.children[0].children[0].value
        assert "toy (toy)" not in title and "&middot; toy &middot;" in title
        for run in (2, 3):  # said for each run with such a prompt (the library says it once per process)
            ex.controls["prompt"].value = "a photo of a cat on a sofa" + " indeed" * (run - 2)
            assert f"done, with a warning \u00b7 run {run}" in ex.status.value
            assert len(ex.banner_panel.warnings) == 1 and "knows only its toy world" in ex.banner.value
            assert "'photo'" in ex.banner_panel.warnings[0] and "tficon.load_model" not in ex.banner.value
    finally:
        ex.close()


def test_export_writes_the_result_a_figure_and_a_recipe_that_reproduces_the_result(explorer, model, sample, tmp_path):
    ex = explorer
    ex.run()
    ex.controls["tau_a"].value = 0.2
    paths = ex.export(tmp_path)
    assert sorted(paths) == ["figure", "recipe", "result"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths["result"]).convert("RGB")), np.asarray(ex.session.result))
    with Image.open(paths["figure"]) as figure:
        assert figure.width > 400 and figure.height > 300
    recipe = json.loads(paths["recipe"].read_text())
    assert recipe["settings"]["tau_a"] == 0.2 and recipe["prompt"] == sample.prompt
    again = recipe_mod.session_from_recipe(recipe, model=model)
    again.run()
    assert torch.equal(again.records[-1].generation.x, ex.session.records[-1].generation.x)
    # the page offers the three files as download links; a recompute withdraws them
    links = ex.export_panel.links.value
    assert links.count("class='tficon-download'") == 3 and "download='tficon-recipe.json'" in links
    ex.controls["guidance"].value = 2.0
    assert ex.export_panel.links.value == ""


def test_recipe_round_trips_through_the_session_and_tficon_compose(tmp_path):
    from tficon.cli import main
    from tficon.model import load_model

    toy = load_model("toy")
    d = demo_sample()
    session = Session(toy, d.background, d.foreground, d.foreground_mask, d.box, d.prompt, steps=3, tau_b=0.6, seed=7)
    session.run()
    path = recipe_mod.save_recipe(session, tmp_path / "r.json")
    recipe = recipe_mod.load_recipe(path)
    again = recipe_mod.session_from_recipe(recipe, model=toy)
    again.run()
    assert torch.equal(again.records[-1].generation.x, session.records[-1].generation.x)
    args = recipe_mod.compose_arguments(recipe, tmp_path / "inputs")
    assert args[:3] == ["compose", "--model", "toy"] and "--tau-b" in args and "0.6" in args and "--seed" in args
    assert main([*args, "--out", str(tmp_path / "out.png"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png").convert("RGB")), np.asarray(session.result))
    with pytest.raises(ValueError, match="format"):
        recipe_mod.session_from_recipe({"format": "other"})
    with pytest.raises(ValueError, match="not settings of this tficon"):
        recipe_mod.config_of({**recipe, "settings": {"tau_z": 1}})


def test_difference_and_split_view_pixels():
    a = np.zeros((4, 6, 3), dtype=np.uint8)
    b = a.copy()
    b[1, 2] = (10, 40, 0)
    picture, numbers = compare.difference_map(a, b)
    assert numbers == {"max": 40.0, "mean": 40.0 / 24, "changed": 1 / 24}
    assert picture.shape == (4, 6, 3) and (picture[1, 2] != picture[0, 0]).any() and (picture[0] == picture[0, 0]).all()
    assert compare.difference_map(a, a)[1] == {"max": 0.0, "mean": 0.0, "changed": 0.0}
    b[:] = 200
    split = compare.split_view(a, b, 0.5)
    assert (split[:, :3] == 0).all() and (split[:, 3] == 255).all() and (split[:, 4:] == 200).all()
    assert (compare.split_view(a, b, 0.0) == 200).all() and (compare.split_view(a, b, 1.0) == 0).all()
    with pytest.raises(ValueError, match="same size"):
        compare.difference_map(a, np.zeros((5, 6, 3), np.uint8))
    assert compare.shrink(np.zeros((512, 256, 3), np.uint8), 256).shape == (256, 128, 3)
    assert compare.shrink(a, 256) is not None and compare.shrink(a, 256).shape == a.shape


def test_attention_stale_mark_cosmetics_and_zoom(model, sample):
    ex = Explorer(new_session(model, sample, steps=STEPS), threaded=False, auto_run=False)
    try:
        stop = ex.buttons["stop"]
        assert stop.button_style == ""  # idle: not a bright warning colour
        ex.run()
        assert stop.button_style == "" and ex.session.done
        ex.show_step(1)
        assert ex.attention_panel.shown_step == 1 and "tficon-stale" not in ex.attention.title.value
        ex.update(guidance=2.0)  # no auto-run: step 1's maps are now of the earlier settings
        assert ex.attention.stale and "stale: step 1 is being recomputed" in ex.attention.title.value
        ex.attention.kind_choice.value = "reference"  # a redraw of the old maps keeps the mark
        assert "tficon-stale" in ex.attention.title.value
        ex.run()
        assert not ex.attention.stale and "tficon-stale" not in ex.attention.title.value
        expected = ex.session.capture_attention(1)
        key = next(k for k in expected if k[1] == "composite")
        torch.testing.assert_close(ex.attention.maps[key], expected[key])
        assert "(row, col)" in ex.picker.caption.value
        ex.inputs_panel.zoom.value = 3
        assert ex.result_view.layout.width == f"{3 * ex.image_px}px"
    finally:
        ex.close()


def test_crosshair_pixels():
    from tficon.widgets import render

    image = np.zeros((21, 21, 3), dtype=np.uint8)
    out = render.draw_crosshair(image, 10, 10, colour=(200, 200, 200), opacity=0.5, gap=6)
    assert (out[10, 0] == 100).all() and (out[0, 10] == 100).all() and (out[20, 10] == 100).all()  # row and column, blended
    assert (out[10, 10] == 0).all() and (out[0, 0] == 0).all()  # the query pixel itself stays visible
    assert (out[10, 7] == (0, 255, 128)).all()  # the marker near it
    assert (image == 0).all()  # a copy


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_recipe_round_trip_in_half_precision(dtype, sample):
    from tficon.model.tiny import tiny_model

    half = tiny_model("sd2", dtype=dtype)
    session = new_session(half, sample, steps=3, tau_a=0.6)
    session.run()
    recipe = json.loads(json.dumps(recipe_mod.recipe_from_session(session)))
    assert recipe["dtype"] == str(dtype).replace("torch.", "")
    again = recipe_mod.session_from_recipe(recipe, model=half)
    again.run()
    assert torch.equal(again.records[-1].generation.x, session.records[-1].generation.x)
    assert again.config == session.config and again.mask_or_box == session.mask_or_box

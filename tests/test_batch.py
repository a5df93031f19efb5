"""Batch composition over an official-layout folder of synthetic samples (tiny random SD model, 128 px, 6 steps).

The folder holds three good samples (two cross-domain ones sharing one background, one same-domain one) and six
broken ones (missing mask, empty mask, box off the image, unreadable file, mismatched sizes, two backgrounds). One
CLI run composes it; later tests check what it wrote, resume, --force and settings changes.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tficon.cli import main
from tficon.core import io
from tficon.core.config import CompositionConfig
from tficon.core.placement import compute_placement, prepare_foreground
from tficon.model.tiny import (
    save_tiny_clip,  # noqa: E402
    save_tiny_model,
)
from tficon.run.batch import (
    OUTPUT_FILES,
    RECORD_FILE,
    check_sample_files,
    composition_order,
    discover_samples,
    placement_overlay,
    prompt_from_folder,
    role_of,
    run_batch,
)
from tficon.toy.samples import toy_sample
from tficon.toy.world import ObjectSpec, render_background, render_object

SIZE = 128
STEPS = 6
GOOD = (
    "cross_domain/a red star and a blue square, outline style",
    "cross_domain/a_yellow_circle_and_a_blue_square,_outline_style",
    "same_domain/a blue square and a green triangle, striped style",
)
BROKEN = {
    "cross_domain/box off the image": "leave",
    "cross_domain/empty mask": "empty",
    "cross_domain/missing mask": "missing user mask",
    "cross_domain/mismatched sizes": "mismatched sizes",
    "cross_domain/two backgrounds": "several background candidates",
    "same_domain/unreadable file": "cannot read",
}


def _box_mask(box, size=(SIZE, SIZE)) -> Image.Image:
    """A user mask (H, W) = size with the rectangle (x, y, w, h) set."""
    mask = np.zeros(size, dtype=np.uint8)
    x, y, w, h = box
    mask[y : y + h, x : x + w] = 255
    return Image.fromarray(mask)


def _write_sample(folder: Path, background, foreground, object_mask, user_mask, fg_name="fg01_5f1e.png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if background is not None:
        background.save(folder / "bg00.png")
    foreground.save(folder / fg_name)
    object_mask.save(folder / (fg_name.split("_")[0] + "_mask.png"))
    if user_mask is not None:
        user_mask.save(folder / "mask_bg_fg.png")


def make_inputs(root: Path) -> Path:
    """An official-layout tree: inputs/{cross_domain,same_domain}/<prompt>/{bg*, fg*, fg*_mask, mask*}."""
    inputs = root / "inputs"
    star = toy_sample(image_size=SIZE)  # flat red star into an outline scene with a blue square
    background = star.background
    circle, circle_mask = render_object("circle", "yellow", "flat", size=16.0, image_size=SIZE)

    _write_sample(inputs / GOOD[0], background, star.foreground, star.foreground_mask, _box_mask(star.box))
    # the same background file (same bytes): its inversion is reused
    _write_sample(inputs / GOOD[1], background, circle, circle_mask, _box_mask((70, 70, 36, 36)))
    striped, _, _ = render_background("striped", [ObjectSpec("square", "blue", (18.0, 32.0), 11.0)], image_size=SIZE)
    triangle, triangle_mask = render_object("triangle", "green", "striped", size=18.0, image_size=SIZE)
    _write_sample(inputs / GOOD[2], striped, triangle, triangle_mask, _box_mask((74, 40, 44, 44)))

    # the official folders also hold other images: ignored
    background.save(inputs / GOOD[0] / "cp_bg_fg.jpg")
    background.save(inputs / GOOD[0] / "dccf_image.jpg")
    (inputs / "cross_domain" / "notes").mkdir()
    background.save(inputs / "cross_domain" / "notes" / "cp_bg_fg.jpg")

    broken = {name.split("/")[1]: inputs / name for name in BROKEN}
    _write_sample(broken["missing mask"], background, circle, circle_mask, None)
    _write_sample(broken["empty mask"], background, circle, circle_mask, Image.new("L", (SIZE, SIZE), 0))
    # a tall box at the right edge: the object window (centred on the box, as tall as the box) leaves the image
    _write_sample(broken["box off the image"], background, circle, circle_mask, _box_mask((100, 30, 28, 60)))
    _write_sample(broken["unreadable file"], background, circle, circle_mask, _box_mask((70, 70, 36, 36)))
    (broken["unreadable file"] / "bg00.png").write_bytes(b"not a png at all")
    _write_sample(broken["mismatched sizes"], background, circle, circle_mask, _box_mask((70, 30, 36, 30), (64, SIZE)))
    _write_sample(broken["two backgrounds"], background, circle, circle_mask, _box_mask((70, 70, 36, 36)))
    background.save(broken["two backgrounds"] / "bg01.png")
    return inputs


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Inputs, a saved tiny model, and the output of one CLI batch run (with its printed text)."""
    base = tmp_path_factory.mktemp("batch")
    inputs = make_inputs(base)
    model_dir = save_tiny_model(base / "tiny", "sd2")
    out = base / "out"
    args = ["batch", str(inputs), "--out", str(out), "--model", str(model_dir), "--size", str(SIZE),
            "--steps", str(STEPS), "--quiet"]  # fmt: skip
    return {"inputs": inputs, "model": model_dir, "out": out, "args": args}


@pytest.fixture(scope="module")
def first_run(tree):
    import contextlib
    import io as stdio

    buffer = stdio.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(tree["args"])
    mtimes = {g: os.stat(tree["out"] / g / OUTPUT_FILES["result"]).st_mtime_ns for g in GOOD}
    return {"code": code, "printed": buffer.getvalue(), "mtimes": mtimes}


def _record(tree, sample_id) -> dict:
    return json.loads((tree["out"] / sample_id / RECORD_FILE).read_text())


# ------------------------------------------------------------------------------------------------ discovery


def test_roles_follow_the_official_file_names():
    assert role_of("bg59.png") == "background"
    assert role_of("fg66_63d22b3b1f5b66e8e5ac4ff4.jpg") == "foreground"
    assert role_of("fg66_mask.png") == "foreground_mask"
    assert role_of("fg_63d9f84cb82cf5cb1db5cec0_mask.png") == "foreground_mask"
    assert role_of("mask_bg_fg.jpg") == "mask"
    assert role_of("BG04.PNG") == "background"
    for other in ("cp_bg_fg.jpg", "dccf_image.jpg", "bg.txt", ".bg00.png", "notes.md"):
        assert role_of(other) is None
    assert prompt_from_folder("an oil painting of a roast Chicken, Van Gogh Style") == (
        "an oil painting of a roast Chicken, Van Gogh Style"
    )
    assert prompt_from_folder("a_pencil_drawing__of_a_panda") == "a pencil drawing of a panda"


def test_discovery_finds_samples_modes_prompts_and_problems(tree):
    samples = {s.id: s for s in discover_samples(tree["inputs"])}
    assert sorted(samples) == sorted(GOOD + tuple(BROKEN))  # "notes" (only ignored files) is no sample
    assert samples[GOOD[0]].mode == "cross" and samples[GOOD[0]].mode_source == "folder cross_domain"
    assert samples[GOOD[2]].mode == "same"
    assert samples[GOOD[1]].prompt == "a yellow circle and a blue square, outline style"
    assert samples[GOOD[0]].files["foreground"].name == "fg01_5f1e.png"
    assert samples[GOOD[0]].files["foreground_mask"].name == "fg01_mask.png"
    assert samples[GOOD[0]].problem is None
    assert "missing user mask (mask*)" in samples["cross_domain/missing mask"].problem
    assert "bg00.png, bg01.png" in samples["cross_domain/two backgrounds"].problem
    forced = discover_samples(tree["inputs"], "same")
    assert {s.mode for s in forced} == {"same"} and {s.mode_source for s in forced} == {"--mode"}
    # any root works, including a sample folder itself; no domain folder above -> cross by default
    alone = discover_samples(tree["inputs"] / GOOD[0])
    assert [s.id for s in alone] == ["a red star and a blue square, outline style"] and alone[0].mode == "cross"
    with pytest.raises(ValueError, match="mode must be"):
        discover_samples(tree["inputs"], "both")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        discover_samples(tree["inputs"] / "nowhere")


def test_file_checks_name_the_problem(tree):
    samples = {s.id: s for s in discover_samples(tree["inputs"])}
    check_sample_files(samples[GOOD[0]], SIZE)  # no error
    with pytest.raises(ValueError, match="empty"):
        check_sample_files(samples["cross_domain/empty mask"])
    with pytest.raises(ValueError, match="mismatched sizes: user mask mask_bg_fg.png is 128x64"):
        check_sample_files(samples["cross_domain/mismatched sizes"])
    with pytest.raises(ValueError, match="cannot read"):
        check_sample_files(samples["same_domain/unreadable file"])


def test_samples_sharing_a_background_are_composed_back_to_back(tree):
    import dataclasses

    samples = {s.id: s for s in discover_samples(tree["inputs"])}
    a, other, b = samples[GOOD[0]], samples[GOOD[2]], samples[GOOD[1]]  # a and b: the same background bytes
    assert [s.id for s in composition_order([a, other, b])] == [a.id, b.id, other.id]
    # the same background in another mode is another inversion (same mode inverts the cut-and-paste)
    b_same = dataclasses.replace(b, mode="same")
    assert [s.id for s in composition_order([a, other, b_same])] == [a.id, other.id, b.id]
    missing = samples["cross_domain/missing mask"]  # has a background; "unreadable file" has garbage bytes
    assert [s.id for s in composition_order([missing, other, a])] == [missing.id, a.id, other.id]


# ------------------------------------------------------------------------------------------------ the run


def test_cli_batch_writes_every_output(tree, first_run):
    assert first_run["code"] == 0
    printed = first_run["printed"]
    assert f"9 samples under {tree['inputs']}: 3 composed, 0 already done, 6 skipped, 0 failed" in printed
    assert "background inversions reused from the cache: 1 of 3 composed samples" in printed
    out = tree["out"]
    for sample_id in GOOD:
        for name in OUTPUT_FILES.values():
            with Image.open(out / sample_id / name) as image:
                assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        record = _record(tree, sample_id)
        assert record["status"] == "composed" and record["reason"] is None
        assert record["settings"]["config"]["steps"] == STEPS
        assert record["settings"]["image_size"] == [SIZE, SIZE]
        assert record["settings"]["prompt"] == record["prompt"]
        assert record["timings"]["total"] > 0 and record["sample_evals"] > 0
    assert _record(tree, GOOD[0])["mode"] == "cross" and _record(tree, GOOD[2])["mode"] == "same"
    assert _record(tree, GOOD[2])["settings"]["guidance"] == 2.5  # the official same-domain guidance


def test_background_inversion_is_reused_between_samples_sharing_it(tree, first_run):
    first, second, same = (_record(tree, g)["invert_cached"] for g in GOOD)
    # the two cross samples run back to back; the second finds the first one's background inversion
    assert first == {"background": False, "reference": False}
    assert second == {"background": True, "reference": False}
    assert same == {"background": False, "reference": False}  # same mode inverts its own cut-and-paste
    assert _record(tree, GOOD[1])["run_index"] == _record(tree, GOOD[0])["run_index"] + 1
    # both images are inverted in one batch and results must not depend on the cache, so a partial hit saves no
    # UNet work (tficon.composition.engine): the two cross samples spend the same evaluations
    assert _record(tree, GOOD[1])["sample_evals"] == _record(tree, GOOD[0])["sample_evals"]


def test_broken_samples_are_skipped_with_their_reason(tree, first_run):
    for sample_id, fragment in BROKEN.items():
        record = _record(tree, sample_id)
        assert record["status"] == "skipped", sample_id
        assert fragment in record["reason"], (sample_id, record["reason"])
        assert not (tree["out"] / sample_id / OUTPUT_FILES["result"]).exists()


def test_cut_and_paste_metrics_show_the_protocol(tree, first_run):
    """The cut-and-paste equals the background outside its target window, so its BG metrics with the window
    blanked are exact: MSE 0, PSNR inf, SSIM 1; the result's are finite."""
    for sample_id in GOOD:
        metrics = _record(tree, sample_id)["metrics"]
        cp_bg = metrics["cut_and_paste"]["bg"]
        assert cp_bg["mse"] == 0.0 and cp_bg["psnr"] == "inf" and cp_bg["ssim"] == pytest.approx(1.0, abs=1e-12)
        result_bg = metrics["result"]["bg"]
        assert result_bg["mse"] > 0 and 0 < result_bg["psnr"] < 100 and -1 <= result_bg["ssim"] < 1
        assert set(metrics["result"]) == {"bg", "fg"}  # no LPIPS/CLIP weights here


def test_metrics_in_the_record_match_the_written_files(tree, first_run):
    """The FG MSE recomputed by hand from result.png and the inputs (placement and reference canvas rebuilt with
    tficon.core.placement) equals the recorded one: the record describes the files."""
    record = _record(tree, GOOD[0])
    files = record["files"]
    placement = compute_placement(
        io.load_mask(files["mask"], name="mask"), Image.open(files["foreground"]).size, (SIZE, SIZE), 8, levels=3
    )
    assert _box_tlbr(placement.target_window) == record["boxes"]["target_window_tlbr"]
    assert _box_tlbr(placement.ref_window) == record["boxes"]["reference_window_tlbr"]
    with Image.open(files["foreground_mask"]) as object_mask:
        reference, _ = prepare_foreground(io.load_image(files["foreground"], name="fg"), object_mask.convert("L"), placement)
    reference_pixels = np.asarray(io.to_pil(reference), dtype=np.float64) / 255
    result = np.asarray(Image.open(tree["out"] / GOOD[0] / OUTPUT_FILES["result"]), dtype=np.float64) / 255
    crop = result[placement.target_window.slices()]
    expected = float(((crop - reference_pixels[placement.ref_window.slices()]) ** 2).mean())
    assert record["metrics"]["result"]["fg"]["mse"] == pytest.approx(expected, rel=1e-12)
    assert record["metrics"]["result"]["fg"]["psnr"] == pytest.approx(-10 * np.log10(expected), rel=1e-6)  # torchmetrics takes the log in float32


def _box_tlbr(box) -> list[int]:
    return [box.top, box.left, box.bottom, box.right]


def test_summaries_and_visual_report(tree, first_run):
    out = tree["out"]
    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == sorted(GOOD + tuple(BROKEN))
    statuses = {r["id"]: r["status"] for r in rows}
    assert [statuses[g] for g in GOOD] == ["composed"] * 3
    assert sum(s == "skipped" for s in statuses.values()) == 6
    by_id = {r["id"]: r for r in rows}
    assert by_id[GOOD[1]]["invert_cached_bg"] == "True" and by_id[GOOD[0]]["cp_bg_mse"] == "0"
    assert float(by_id[GOOD[0]]["bg_psnr"]) == pytest.approx(_record(tree, GOOD[0])["metrics"]["result"]["bg"]["psnr"], rel=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"samples": 9, "composed_now": 3, "already_done": 0, "skipped": 6, "failed": 0}
    assert summary["inversion_cache"]["background_hits_now"] == 1
    psnrs = [_record(tree, g)["metrics"]["result"]["bg"]["psnr"] for g in GOOD]
    assert summary["means"]["all"]["bg_psnr"] == pytest.approx(sum(psnrs) / 3)
    assert summary["means"]["mode same"]["bg_psnr"] == pytest.approx(psnrs[2])
    assert set(summary["metrics_unavailable"]) == {"LPIPS", "CLIP"}

    with Image.open(out / "contact_sheet.png") as sheet:
        # 4 columns of 128 px + 3 gaps; header line, then per sample two caption lines and a row of thumbnails
        assert sheet.size == (4 * 128 + 3 * 4, 16 + 3 * (26 + 128 + 4))
        pixels = np.asarray(sheet.convert("RGB"))
    y0 = 16 + 26  # first row of thumbnails: the result column shows the first sample's result
    result = np.asarray(Image.open(out / GOOD[0] / OUTPUT_FILES["result"]).convert("RGB"))
    assert np.array_equal(pixels[y0 : y0 + 128, 3 * 132 : 3 * 132 + 128], result)

    page = (out / "report.html").read_text()
    assert page.count('src="data:image/jpeg;base64,') == 3 * 4
    assert not re.search(r'src="(?!data:)', page)  # self-contained
    assert "cross_domain/empty mask (skipped)" in page and "several background candidates" in page
    assert len(page) < 200_000


def test_overlay_draws_box_target_and_outline(tree, first_run):
    with Image.open(tree["out"] / GOOD[0] / OUTPUT_FILES["overlay"]) as overlay:
        pixels = np.asarray(overlay.convert("RGB"))
    top, left, bottom, right = _record(tree, GOOD[0])["boxes"]["target_window_tlbr"]
    assert tuple(pixels[top, left]) == (230, 0, 0) and tuple(pixels[bottom - 1, right - 1]) == (230, 0, 0)
    inside = pixels[top + 1 : bottom - 1, left + 1 : right - 1]
    assert (np.all(inside == (0, 200, 0), axis=-1)).sum() > 20  # the star's outline


def test_overlay_unit_geometry():
    """A 4x4 object mask pasted into an 8x8 window of a 32x32 image: the outline is the 12 border pixels."""
    from tficon.core.placement import compute_placement

    place = compute_placement((8, 8, 8, 8), (8, 8), (32, 32), 4, levels=1)
    mpad = np.zeros((32, 32))
    window = place.ref_window
    mpad[window.top + 2 : window.top + 6, window.left + 2 : window.left + 6] = 1
    overlay = np.asarray(placement_overlay(Image.new("RGB", (32, 32), "white"), place, mpad))
    green = np.all(overlay == (0, 200, 0), axis=-1)
    t, l = place.target_window.top, place.target_window.left
    expected = np.zeros((32, 32), dtype=bool)
    expected[t + 2 : t + 6, l + 2 : l + 6] = True
    expected[t + 3 : t + 5, l + 3 : l + 5] = False
    assert np.array_equal(green, expected)


def test_rerun_composes_nothing_and_loads_no_model(tree, first_run, capsys):
    assert main(tree["args"]) == 0
    printed = capsys.readouterr().out
    assert "0 composed, 3 already done, 6 skipped, 0 failed" in printed
    assert "model:" not in printed  # nothing to compose: the model is never loaded
    for sample_id in GOOD:
        assert os.stat(tree["out"] / sample_id / OUTPUT_FILES["result"]).st_mtime_ns == first_run["mtimes"][sample_id]
    summary = json.loads((tree["out"] / "summary.json").read_text())
    assert summary["counts"]["already_done"] == 3 and summary["means"]["all"]["bg_psnr"] is not None


def test_force_recomposes_bit_identically_and_a_settings_change_recomposes(tree, first_run):
    out, model = tree["out"], str(tree["model"])
    config = CompositionConfig(steps=STEPS)
    before = np.asarray(Image.open(out / GOOD[0] / OUTPUT_FILES["result"]))
    clip_dir = save_tiny_clip(tree["out"].parent / "clip")  # with CLIP weights given, CLIP scores are recorded too
    forced = run_batch(
        tree["inputs"], out, model, config=config, image_size=SIZE, force=True, limit=1, progress=False,
        clip_model=clip_dir, log=lambda m: None,
    )  # fmt: skip
    actions = {o.id: o.action for o in forced.outcomes}
    # one sample composed; the rest, finished earlier with these settings, stays in the summaries
    assert actions[GOOD[0]] == "composed" and forced.count("composed") == 1 and len(actions) == 9
    assert actions[GOOD[1]] == "done" and actions["cross_domain/empty mask"] == "skipped"
    assert os.stat(out / GOOD[0] / OUTPUT_FILES["result"]).st_mtime_ns != first_run["mtimes"][GOOD[0]]
    assert np.array_equal(np.asarray(Image.open(out / GOOD[0] / OUTPUT_FILES["result"])), before)
    metrics = _record(tree, GOOD[0])["metrics"]
    assert set(metrics["result"]) == {"bg", "fg", "clip_image_bg", "clip_image_fg", "clip_text"}
    assert all(-100 <= metrics[k][c] <= 100 for k in metrics for c in ("clip_image_bg", "clip_image_fg", "clip_text"))
    assert set(forced.metrics_unavailable) == {"LPIPS"}

    same = run_batch(tree["inputs"], out, model, config=config, image_size=SIZE, limit=2, progress=False, log=lambda m: None)
    assert same.count("composed") == 0 and same.count("done") == 3
    changed = run_batch(
        tree["inputs"], out, model, config=config.replace(seed=1), image_size=SIZE, limit=1, progress=False, log=lambda m: None
    )
    changed_actions = {o.id: o.action for o in changed.outcomes}
    assert changed_actions == {GOOD[0]: "composed"}  # the others were finished with other settings
    assert _record(tree, GOOD[0])["settings"]["config"]["seed"] == 1


def test_cli_batch_reports_bad_arguments(tree, capsys):
    assert main(["batch", str(tree["inputs"] / "nowhere"), "--out", str(tree["out"] / "x"), "--quiet"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(tree["args"] + ["--limit", "0"]) == 2
    assert "limit must be a positive integer" in capsys.readouterr().err
    fresh = ["batch", str(tree["inputs"]), "--out", str(tree["out"].parent / "out_size"), "--model", str(tree["model"])]
    assert main(fresh + ["--size", "100", "--quiet"]) == 2  # no sample's fault: the whole batch stops
    assert "error: --size (H, W) = (100, 100) must be multiples of 32" in capsys.readouterr().err


def test_a_folder_name_that_gives_an_empty_prompt_is_skipped_with_the_reason(tmp_path):
    star = toy_sample(image_size=SIZE)
    folder = tmp_path / "cross_domain" / "___"
    _write_sample(folder, star.background, star.foreground, star.foreground_mask, _box_mask(star.box))
    (sample,) = discover_samples(tmp_path)
    assert sample.prompt == "" and "'___' gives an empty prompt" in sample.problem and "rename the folder" in sample.problem
    with pytest.raises(ValueError, match="empty prompt"):
        check_sample_files(sample, SIZE)


def test_batch_and_session_apply_one_mask_size_rule(tmp_path, model):
    # A user mask of another aspect ratio than its background: the batch and the Session refuse it alike, and a
    # scaled copy (same aspect ratio, twice the size) is accepted by both.
    from tficon.composition.session import Session

    star = toy_sample(image_size=SIZE)
    for name, user_mask, accepted in (
        ("stretched", _box_mask((70, 30, 36, 30), (64, SIZE)), False),
        ("scaled", _box_mask(tuple(2 * v for v in star.box), (2 * SIZE, 2 * SIZE)), True),
    ):
        folder = tmp_path / name / "a red star, outline style"
        _write_sample(folder, star.background, star.foreground, star.foreground_mask, user_mask)
        (sample,) = discover_samples(tmp_path / name)
        make = lambda: Session(  # noqa: E731
            model, star.background, star.foreground, star.foreground_mask, np.asarray(user_mask) > 127, star.prompt,
            image_size=SIZE,
        )
        if accepted:
            check_sample_files(sample, SIZE)
            direct = Session(model, star.background, star.foreground, star.foreground_mask, star.box, star.prompt,
                             image_size=SIZE).placement
            placed = make().placement
            assert (placed.f_row, placed.f_col, placed.scale, placed.target_window) == (
                direct.f_row, direct.f_col, direct.scale, direct.target_window)
        else:
            with pytest.raises(ValueError, match="mismatched sizes: user mask mask_bg_fg.png is 128x64.*aspect ratio"):
                check_sample_files(sample, SIZE)
            with pytest.raises(ValueError, match=r"mask_or_box \(the user mask\) is 128x64.*aspect ratio"):
                make()


def test_the_embedded_model_takes_official_style_prompts(tmp_path):
    """Official TF-ICON sample folders are named by long, photographic prompts. The embedded model has CLIP's real
    tokenizer and 77 positions, so `tficon batch --model toy` composes them (words outside the toy world are
    simply not understood) instead of skipping them as too long."""
    inputs = tmp_path / "inputs"
    star = toy_sample()
    prompts = (
        "cross_domain/a professional photograph of a red star resting in a field of wild flowers at sunset, ultra realistic",
        "same_domain/a cartoon animation of a red star sitting next to a blue square in a sunny meadow, outline style",
    )
    for name in prompts:
        _write_sample(inputs / name, star.background, star.foreground, star.foreground_mask, _box_mask(star.box, (64, 64)))
    out = tmp_path / "out"
    code = main(["batch", str(inputs), "--out", str(out), "--model", "toy", "--steps", "4", "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"samples": 2, "composed_now": 2, "already_done": 0, "skipped": 0, "failed": 0}
    for name in prompts:
        record = json.loads((out / name / RECORD_FILE).read_text())
        assert record["status"] == "composed" and record["prompt"] == name.split("/")[1]
        with Image.open(out / name / OUTPUT_FILES["result"]) as image:
            assert image.size == (64, 64)

"""Parameter sweeps (tficon.sweep, tficon sweep, tficon.widgets.SweepGrid) and the multi-process batch.

Sweeps run on the tiny random SD 2.x-shaped model (128 px, few steps); every expectation is computed
independently: cell images against fresh Sessions, the work against the prefix tree of the cells' step plans built
here from tficon.core.plan, metrics against tficon.eval.metrics called directly. The multi-process batch runs the toy model
on 4 small samples through accelerate's launcher with 2 CPU processes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_setup import SIZE, new_session

import tficon
from tficon.cli import main
from tficon.composition.engine import Engine
from tficon.core import io
from tficon.core.plan import composition_plan
from tficon.core.schedule import injection_schedule
from tficon.eval.metrics import composition_metrics
from tficon.run.sweeps import GridError, SweepResult, evaluation_order, parse_grid_option, run_sweep

STEPS = 6


def _sweep(model, sample, grid, **kwargs) -> SweepResult:
    return tficon.sweep(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt, grid,
        image_size=SIZE, steps=kwargs.pop("steps", STEPS), progress=False, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def taus(model, sample):
    return _sweep(model, sample, {"tau_a": [0.2, 0.5], "tau_b": [0.5, 0.7, 1.0]})


def _prefix_tree_cost(configs) -> int:
    """UNet rows of the steps of ``configs`` when each distinct prefix of step plans is computed once."""
    nodes = {}
    for c in configs:
        plans = composition_plan(injection_schedule(c.steps, c.order, c.tau_a, c.tau_b, c.tau_bg))
        for s in range(len(plans)):
            nodes[plans[: s + 1]] = plans[s].sample_evals
    return sum(nodes.values())


def test_tficon_sweep_and_compose_stay_functions_after_their_modules_are_imported():
    """Importing a submodule sets it on the package; no submodule may carry an exported function's name."""
    import tficon.composition.one_call
    import tficon.run.sweeps  # noqa: F401

    assert tficon.sweep is run_sweep and tficon.compose is tficon.composition.one_call.compose


def test_cells_equal_fresh_sessions_and_each_shared_prefix_runs_once(taus, model, sample):
    assert taus.shape == (2, 3) and len(taus.cells) == 6
    fresh_evals = 0
    for cell in taus.cells:
        fresh = new_session(model, sample, steps=STEPS, tau_a=cell.values["tau_a"], tau_b=cell.values["tau_b"])
        assert np.array_equal(np.asarray(fresh.result), np.asarray(cell.image)), cell.label()
        fresh_evals += fresh.stats["sample_evals"]
    # the independent cost the sweep reports is what fresh Sessions spend
    assert taus.independent_sample_evals == fresh_evals
    # inversions once (one two-row call per step), then every node of the plans' prefix tree once
    expected = 2 * STEPS + _prefix_tree_cost([c.config for c in taus.cells])
    assert taus.sample_evals == expected == sum(c.sample_evals for c in taus.cells)
    assert taus.sample_evals < 0.6 * fresh_evals
    assert sum(c.inversions_cached for c in taus.cells) == 5  # all but the first cell
    # each cell starts where its plans leave those of every earlier cell: the longest shared prefix
    ordered = sorted(taus.cells, key=lambda c: c.order)
    plans = [composition_plan(injection_schedule(STEPS, 2, c.config.tau_a, c.config.tau_b, 0.4)) for c in ordered]

    def shared(a, b) -> int:
        return next((s for s, (p, q) in enumerate(zip(a, b)) if p != q), len(a))

    assert ordered[0].first_step == 0
    for i in range(1, 6):
        assert ordered[i].first_step == max(shared(plans[j], plans[i]) for j in range(i)) > 0
    assert [c.order for c in evaluation_order(taus.cells)] == list(range(6))


def test_metrics_table_and_files(taus, tmp_path):
    cell = taus.cell(tau_a=0.5, tau_b=0.7)
    session = taus.session(cell)
    inputs, place = session.inputs, session.placement
    expected = composition_metrics(
        cell.image, io.to_pil(inputs.background), io.to_pil(inputs.reference), place.target_window, place.ref_window
    )
    assert cell.metrics == expected
    paths = taus.save(tmp_path / "sweep")
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["tau_a"] for r in rows} == {"0.2", "0.5"}
    row = next(r for r in rows if int(r["index"]) == cell.index)
    assert float(row["bg_psnr"]) == pytest.approx(expected["bg"]["psnr"]) and float(row["fg_ssim"]) == pytest.approx(
        expected["fg"]["ssim"]
    )
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["sample_evals"] == taus.sample_evals and len(data["cells"]) == 6
    saved = np.asarray(Image.open(tmp_path / "sweep" / row["image"]))
    assert np.array_equal(saved, np.asarray(cell.image))
    grid = Image.open(paths["grid"])
    assert grid.width >= 3 * 96 and grid.height >= 2 * 96 + 96  # 2 rows x 3 columns of 96-px cells and the inputs
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 6 + 3  # the cells, background, foreground, cut-and-paste
    for text in ("tau_a=0.2", "tau_b=0.7", "tau_b=1", "bg_psnr"):
        assert text in page


def test_grid_image_places_each_cell_under_its_labels(taus):
    from tficon.run.report import thumbnail

    thumb = 40
    image = np.asarray(taus.grid_image(thumb=thumb, metrics=False))
    hits = {cell.index: _find(image, np.asarray(thumbnail(cell.image, thumb))) for cell in taus.cells}
    assert all(hits.values())  # every cell's picture is in the grid
    ys = sorted({y for found in hits.values() for y, _ in found})
    xs = sorted({x for found in hits.values() for _, x in found})
    assert len(ys) == 2 and len(xs) == 3  # 2 tau_a rows, 3 tau_b columns
    for cell in taus.cells:  # row r / column c hold the cell with the r-th tau_a and the c-th tau_b
        row, col = cell.position
        assert (ys[row], xs[col]) in hits[cell.index]


def _find(image: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    h, w = tile.shape[:2]
    ys, xs = np.nonzero(np.all(image[: image.shape[0] - h + 1, : image.shape[1] - w + 1] == tile[0, 0], axis=-1))
    return [(y, x) for y, x in zip(ys, xs) if np.array_equal(image[y : y + h, x : x + w], tile)]


def test_seed_and_box_sweep_shares_inversions_across_same_size_boxes(model, sample):
    x, y, w, h = sample.box
    boxes = [(x, y, w, h), (x - 16, y + 8, w, h)]
    result = _sweep(model, sample, {"seed": [1, 2], "box": boxes}, steps=4)
    for cell in result.cells:
        fresh = new_session(model, _with_box(sample, cell.box), steps=4, seed=cell.values["seed"])
        assert np.array_equal(np.asarray(fresh.result), np.asarray(cell.image))
    # per seed one inversion (both boxes have one size, so one reference canvas); guidance etc. fixed
    assert sum(not c.inversions_cached for c in result.cells) == 2
    assert result.sample_evals == sum(c.sample_evals for c in result.cells) < result.independent_sample_evals
    assert set(result.cut_and_paste) == {"%d,%d,%d,%d" % b for b in boxes}


def _with_box(sample, box):
    import dataclasses

    return dataclasses.replace(sample, box=box)


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"tau_z": [0.1]}, "unknown sweep parameter 'tau_z'"),
        ({"tau_a": []}, "grid['tau_a'] is empty"),
        ({}, "non-empty mapping"),
        ({"tau_b": [0.5, 0.5]}, "repeats the value(s) 0.5"),
        ({"tau_a": [0.2, 1.5]}, "grid cell tau_a=1.5: tau_a must be a finite number in [0, 1]"),
        ({"steps": [1, 4]}, "steps (1) must be >= order (2)"),
        ({"box": [(0, 0, 10, 10), (120, 120, 40, 40)]}, "grid value box=120,120,40,40"),
        # a box in a grid is checked as every box is (tficon.core.boxes.as_user_box), before any model work
        ({"box": [(True, 0, 10, 10)]},
         "grid['box']: a box must be 4 integers (x, y, w, h) in pixels, got (True, 0, 10, 10) (True/False are not"),
        ({"box": [(0, 0, 10, 10), (0, 0, 0, 10)]},
         "grid['box']: the box (x, y, w, h) = (0, 0, 0, 10) must have positive width and height"),
        ({"tau_a": 0.3}, "must be a list of values"),
    ],
)
def test_bad_grids_fail_before_any_unet_work(model, sample, grid, message):
    engine = Engine(model)
    with pytest.raises(GridError) as error:
        _sweep(model, sample, grid, engine=engine)
    assert message in str(error.value)
    assert engine.sample_evals == 0


def test_grid_option_parsing():
    assert parse_grid_option("tau_a=0.2,0.4") == ("tau_a", [0.2, 0.4])
    assert parse_grid_option("tau-b=0.5:0.9:5") == ("tau_b", [0.5, 0.6, 0.7, 0.8, 0.9])
    assert parse_grid_option("seed=1:3:3") == ("seed", [1, 2, 3])
    assert parse_grid_option("guidance=official,7.5") == ("guidance", [None, 7.5])
    assert parse_grid_option("box=1,2,3,4;5,6,7,8") == ("box", [(1, 2, 3, 4), (5, 6, 7, 8)])
    for bad in ("tau_a", "tau_a=", "tau_a=x", "box=1,2,3", "steps=1.5", "tau_a=0:1:0", "colour=1"):
        with pytest.raises(GridError):
            parse_grid_option(bad)


def test_cli_sweep_writes_the_outputs_and_rejects_bad_grids(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["sweep", "--demo", "--grid", "tau_b=0.5,0.9", "--grid", "seed=1,2", "--steps", "4", "--out", str(out),
                 "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "4 cells (2 tau_b x 2 seed)" in printed
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert [(r["tau_b"], r["seed"]) for r in sorted(rows, key=lambda r: int(r["index"]))] == [
        ("0.5", "1"), ("0.5", "2"), ("0.9", "1"), ("0.9", "2")
    ]  # fmt: skip
    assert all(float(r["bg_psnr"]) > 0 for r in rows) and (out / "grid.png").is_file()
    assert main(["sweep", "--demo", "--grid", "tau_q=1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown sweep parameter 'tau_q'; a sweep can vary tau_a, tau_b, tau_bg" in capsys.readouterr().err
    assert main(["sweep", "--demo", "--out", str(tmp_path / "x")]) == 2
    assert "give at least one --grid" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- widget
def test_sweep_grid_widget_opens_a_cell_in_the_explorer(taus, model, sample):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    from tficon.widgets import Explorer, SweepGrid, render

    def shows(ex, image) -> bool:  # the Explorer's result view holds exactly this picture
        return ex.result_view.value == render.png_bytes(render.enlarge_to(np.asarray(image), ex.image_px))

    grid = SweepGrid(taus, explorer_options={"threaded": False, "live_attention": False})
    assert len(grid.buttons) == 6 and grid.explorer is None
    cell = taus.cell(tau_a=0.5, tau_b=1.0)
    evals_before = taus.engine.sample_evals
    grid.buttons[cell.index].click()  # what the browser does on a click
    ex = grid.explorer
    assert isinstance(ex, Explorer) and grid.opened is cell and ex in grid.explorer_box.children
    assert ex.wait(120) and ex.last_error is None
    assert ex.session.config == cell.config and ex.session.engine is taus.engine
    assert shows(ex, cell.image)
    # the inversions came from the sweep's cache: only the steps were computed
    spent = taus.engine.sample_evals - evals_before
    assert spent == sum(p.sample_evals for p in ex.session.plans)
    other = taus.cell(tau_a=0.2, tau_b=0.5)
    grid.open_cell(other)
    assert grid.explorer is not ex and grid.opened is other and grid.explorer.wait(120)
    assert shows(grid.explorer, other.image)
    grid.close()


# --------------------------------------------------------------------------------------- multi-process batch
BATCH_STEPS = 6


def _make_batch_inputs(root: Path) -> Path:
    """4 cross-domain toy samples (two share a background) in the official layout, 64 px."""
    from tficon.toy.samples import toy_sample

    specs = [
        ("outline", "flat", "star", "red", (36, 18, 26, 26)),
        ("outline", "flat", "circle", "yellow", (36, 18, 26, 26)),
        ("striped", "flat", "triangle", "green", (30, 20, 24, 24)),
        ("pencil", "outline", "square", "red", (34, 22, 24, 24)),
    ]
    for bg_domain, fg_domain, shape, colour, box in specs:
        s = toy_sample(bg_domain, fg_domain, shape, colour, box=box)
        folder = root / "cross_domain" / s.prompt
        folder.mkdir(parents=True)
        s.background.save(folder / "bg00.png")
        s.foreground.save(folder / "fg01.png")
        s.foreground_mask.save(folder / "fg01_mask.png")
        mask = np.zeros((64, 64), np.uint8)
        x, y, w, h = s.box
        mask[y : y + h, x : x + w] = 255
        Image.fromarray(mask).save(folder / "mask_bg_fg.png")
    return root


def _batch_command(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tficon", "batch", str(inputs), "--out", str(out), "--model", "toy",
            "--steps", str(BATCH_STEPS), "--pixel-metrics-only", "--quiet", "--threads", "1", *extra]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _records(out: Path) -> dict[str, dict]:
    records = {}
    for path in out.glob("cross_domain/*/sample.json"):
        try:
            records[path.parent.name] = json.loads(path.read_text())
        except ValueError:  # cut off mid-write by the kill: not finished
            pass
    return records


@pytest.fixture(scope="module")
def batch_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("multi")
    inputs = _make_batch_inputs(base / "inputs")
    single = base / "single"
    assert main(_batch_command(inputs, single)[3:]) == 0
    return {"base": base, "inputs": inputs, "single": single}


def _assert_same_samples(out: Path, single: Path) -> None:
    mine, reference = _records(out), _records(single)
    assert set(mine) == set(reference) and len(mine) == 4
    for name, record in reference.items():
        assert mine[name]["status"] == record["status"] == "composed"
        assert mine[name]["metrics"] == record["metrics"]
        for image in ("result.png", "cut_and_paste.png", "overlay.png"):
            a = np.asarray(Image.open(out / "cross_domain" / name / image))
            assert np.array_equal(a, np.asarray(Image.open(single / "cross_domain" / name / image))), (name, image)


def test_sharded_batch_gives_the_single_process_results(batch_tree):
    out = batch_tree["base"] / "sharded"
    done = subprocess.run(_batch_command(batch_tree["inputs"], out, "--processes", "2"), env=_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # both processes composed, each its own share; one merged summary
    assert "[process 1/2] model:" in done.stdout + done.stderr and "[process 2/2] model:" in done.stdout + done.stderr
    assert done.stdout.count("4 samples under") == 1
    _assert_same_samples(out, batch_tree["single"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["composed_now"] == 4 and len(summary["samples"]) == 4
    single_summary = json.loads((batch_tree["single"] / "summary.json").read_text())
    assert summary["means"] == single_summary["means"]
    assert (out / "report.html").read_text().count("<img") == 16 and (out / "contact_sheet.png").is_file()


def test_killed_sharded_batch_resumes(batch_tree):
    out = batch_tree["base"] / "killed"
    launcher = subprocess.Popen(_batch_command(batch_tree["inputs"], out, "--processes", "2"), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("cross_domain/*/sample.json")) and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    import psutil

    processes = psutil.Process(launcher.pid).children(recursive=True)
    workers = [p for p in processes if p.environ().get("LOCAL_RANK") is not None and "tficon" in " ".join(p.cmdline())]
    assert len(workers) == 2
    victim = next(p for p in workers if p.environ()["LOCAL_RANK"] == "1")
    victim.kill()  # SIGKILL one process mid-batch: the launcher then stops the other one
    try:
        assert launcher.wait(120) != 0
    finally:
        for p in processes + [psutil.Process(launcher.pid)] if launcher.poll() is None else processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    finished = _records(out)
    assert 1 <= len(finished) < 4, "the kill came too late to test resuming"
    assert not (out / "summary.json").exists()  # nothing merged by a killed run
    for name in finished:  # a finished record has all its images
        assert all((out / "cross_domain" / name / f).is_file() for f in ("result.png", "cut_and_paste.png", "overlay.png"))

    done = subprocess.run(_batch_command(batch_tree["inputs"], out, "--processes", "2"), env=_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["already_done"] == len(finished)
    assert summary["counts"]["composed_now"] == 4 - len(finished)
    after = _records(out)
    for name, record in finished.items():  # finished samples were not composed again
        assert after[name] == record
    _assert_same_samples(out, batch_tree["single"])

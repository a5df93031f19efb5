"""A catalogue of faults during a sweep (issue 26): a NaN in one cell, a full disk while saving one cell, a kill
between the cell images and ``cells.json``, Ctrl-C at the command line, a re-run that resumes, a smaller or other
sweep into an old folder, a cell image cut off on disk.

Each case asserts what is on disk afterwards (which cell files, what ``cells.json`` says, no temporary file) and
what a re-run does (which cells it computes, counted in UNet work, and that every cell equals a fresh Session's
result). Sweeps run on the tiny random SD 2.x-shaped model at 128 px with 4 steps; faults come from forward hooks
on the test's own UNet instance and from patched writers, never from patched ``forward`` methods.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_setup import SIZE, new_session

import tficon
from tficon.composition.engine import Engine
from tficon.run import sweep_files
from tficon.run.report import thumbnail
from tficon.run.sweep_order import independent_cost
from tficon.run.sweeps import SweepInterrupted, SweepResult

STEPS = 4
GRID = {"tau_b": [0.5, 0.7, 1.0], "tau_a": [0.2, 0.5]}  # 6 cells; one seed: one pair of inversions


def sweep(model, sample, out, grid=GRID, **kwargs) -> SweepResult:
    """A sweep on a new engine (an empty inversion cache, so the UNet work of a run is what it computed)."""
    return tficon.sweep(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt, grid,
        image_size=SIZE, steps=kwargs.pop("steps", STEPS), progress=False, out=out, engine=Engine(model), **kwargs,
    )  # fmt: skip


def record(out: Path) -> dict:
    return json.loads((out / "cells.json").read_text())


def cell_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "cells").iterdir())


def temporary_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.is_file()]


def assert_fresh(model, sample, cells) -> None:
    """Every cell's image is bitwise a fresh Session's result with the cell's settings."""
    for cell in cells:
        fresh = new_session(model, sample, steps=STEPS, **{k: v for k, v in cell.values.items()})
        assert np.array_equal(np.asarray(fresh.result), np.asarray(cell.image)), cell.label()


def assert_record_vouches(out: Path, result: SweepResult) -> None:
    """cells.json lists exactly the good cells as done, each with its image's size and hash; nothing else in cells/."""
    data = record(out)
    assert data["complete"] and data["fingerprint"] == result.fingerprint
    done = {row["index"]: row for row in data["cells"] if row["status"] == "done"}
    assert set(done) == {c.index for c in result.cells if c.error is None}
    assert cell_files(out) == sorted(f"cell_{i:03d}.png" for i in done)
    for index, row in done.items():
        path = out / row["image"]
        assert row["file"] == sweep_files.file_fingerprint(path)
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(result.cells[index].image))
    assert not temporary_files(out)


class NaNOnce:
    """A forward hook on the test's UNet instance: the ``after``-th call once the first cell is saved returns NaN
    (in every row, or only in row 0 with ``first_row_only``: one Session of a call shared by several)."""

    def __init__(self, unet, out: Path, after: int = 2, first_row_only: bool = False):
        self.out, self.after, self.seen, self.fired = out, after, 0, False
        self.first_row_only = first_row_only
        self.handle = unet.register_forward_hook(self)

    def __call__(self, module, args, output):
        if self.fired or not list((self.out / "cells").glob("cell_*.png")):
            return None
        self.seen += 1
        if self.seen < self.after:
            return None
        self.fired = True
        sample = (output[0] if isinstance(output, tuple) else output.sample).clone()
        if self.first_row_only:
            sample[0] = math.nan
        else:
            sample.fill_(math.nan)
        return (sample,) + tuple(output[1:]) if isinstance(output, tuple) else type(output)(sample=sample)


def tile_positions(image: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    h, w = tile.shape[:2]
    ys, xs = np.nonzero(np.all(image[: image.shape[0] - h + 1, : image.shape[1] - w + 1] == tile[0, 0], axis=-1))
    return [(y, x) for y, x in zip(ys, xs) if np.array_equal(image[y : y + h, x : x + w], tile)]


# ---------------------------------------------------------------------------------------------------------------
# A NaN in one cell: that cell fails and is named, every other cell is kept; a re-run computes only that cell
# ---------------------------------------------------------------------------------------------------------------


def test_a_nan_in_one_cell_fails_only_that_cell_and_a_rerun_computes_only_it(model, sample, tmp_path):
    out = tmp_path / "sweep"
    fault = NaNOnce(model.unet, out)
    try:
        result = sweep(model, sample, out)
    finally:
        fault.handle.remove()
    assert fault.fired
    assert len(result.failed) == 1
    bad = result.failed[0]
    assert bad.image is None and bad.error.startswith(f"cell {bad.label()}: step ") and "NaN" in bad.error
    assert "\n" not in bad.error
    good = [c for c in result.cells if c.error is None]
    assert len(good) == 5
    # the lane went on after the failure: the cells after it equal fresh Sessions (no poisoned state)
    assert any(c.order > bad.order for c in good)
    assert_fresh(model, sample, good)
    # on disk: the good cells, vouched for; the failed one named in cells.json, the grid and the page
    assert_record_vouches(out, result)
    data = record(out)
    assert data["failed"] == [{"index": bad.index, "cell": bad.label(), "error": bad.error}]
    assert data["summary"]["failed"] == 1
    assert "<b>failed</b>" in (out / "index.html").read_text()
    assert "failed" in (out / "cells.csv").read_text()
    # the grid: each good cell's picture, and in the failed cell's place a grey tile with an X, labelled "failed"
    grid = np.asarray(Image.open(out / "grid.png").convert("RGB"))
    side = 192  # SweepResult.grid_image's cell size
    assert all(tile_positions(grid, np.asarray(thumbnail(c.image, side))) for c in good)
    blank = np.asarray(thumbnail(None, side))
    [(y, x)] = tile_positions(grid, blank[32:])  # below the label
    assert not np.array_equal(grid[y - 32 : y, x : x + side], blank[:32])  # the label is drawn on the tile

    rerun = sweep(model, sample, out)  # the NaN gone: only the failed cell is computed
    assert not rerun.failed and {c.index for c in rerun.resumed} == {c.index for c in good}
    fixed = rerun.cells[bad.index]
    assert not fixed.resumed
    assert rerun.sample_evals == fixed.sample_evals == independent_cost(fixed.config)  # its inversions and steps
    assert_fresh(model, sample, [fixed])
    for cell in good:  # the kept cells are the first run's images
        assert np.array_equal(np.asarray(rerun.cells[cell.index].image), np.asarray(cell.image))
    assert_record_vouches(out, rerun)
    assert record(out)["failed"] == []


def test_a_nan_in_one_cell_of_lanes_sharing_calls_fails_that_cell_and_its_lane_goes_on(model, sample, tmp_path):
    """batch_cells: two lanes (one per seed) share each UNet call; a NaN in the rows of one lane's cell fails that
    cell only, the other lane's cell in the same call is kept, and the failed lane's next cell is computed."""
    out = tmp_path / "sweep"
    grid = {"seed": [1, 2], "guidance": [3.0, 5.0, 7.0]}  # every cell computes all its steps: 3 per lane
    fault = NaNOnce(model.unet, out, after=1, first_row_only=True)
    try:
        result = sweep(model, sample, out, grid=grid, batch_cells=2)
    finally:
        fault.handle.remove()
    assert fault.fired and result.lanes == 2
    [bad] = result.failed
    assert bad.error.startswith(f"cell {bad.label()}: step ") and "NaN" in bad.error
    lane = [c for c in result.cells if c.values["seed"] == bad.values["seed"]]
    assert any(c.order > bad.order and c.error is None for c in lane)  # the lane went on past the failure
    good = [c for c in result.cells if c.error is None]
    for cell in good:  # batched cells equal fresh Sessions to float tolerance
        fresh = new_session(model, sample, steps=STEPS, **cell.values).result
        assert np.abs(np.asarray(fresh, np.int16) - np.asarray(cell.image, np.int16)).max() <= 2, cell.label()
    assert_record_vouches(out, result)
    rerun = sweep(model, sample, out, grid=grid)
    assert [c.index for c in rerun.cells if not c.resumed] == [bad.index] and not rerun.failed
    assert_fresh(model, sample, [rerun.cells[bad.index]])


# ---------------------------------------------------------------------------------------------------------------
# Writes: a full disk while saving one cell, a kill between the cell images and cells.json, Ctrl-C
# ---------------------------------------------------------------------------------------------------------------


def test_a_full_disk_while_saving_one_cell_fails_that_cell_only(model, sample, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    real = sweep_files.save_image_atomic

    def full_for_cell_2(path, image, **options):
        if Path(path).name == "cell_002.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, image, **options)

    monkeypatch.setattr(sweep_files, "save_image_atomic", full_for_cell_2)
    result = sweep(model, sample, out)
    [bad] = result.failed
    assert bad.index == 2 and bad.image is None
    assert bad.error == f"cell {bad.label()}: could not write {out / 'cells' / 'cell_002.png'}: No space left on device"
    assert_record_vouches(out, result)
    assert "cell_002.png" not in cell_files(out) and len(cell_files(out)) == 5

    monkeypatch.setattr(sweep_files, "save_image_atomic", real)  # space freed: the re-run computes cell 2 only
    rerun = sweep(model, sample, out)
    assert not rerun.failed and len(rerun.resumed) == 5 and not rerun.cells[2].resumed
    assert rerun.sample_evals == independent_cost(rerun.cells[2].config)
    assert np.array_equal(np.asarray(rerun.cells[2].image), np.asarray(bad_free_image(model, sample, rerun.cells[2])))
    assert_record_vouches(out, rerun)


def bad_free_image(model, sample, cell):
    return new_session(model, sample, steps=STEPS, **cell.values).result


class Killed(BaseException):
    """What a kill -9 leaves: the process stops inside a write (not an Exception, so nothing catches it)."""


@pytest.mark.parametrize("kill_at", [1, 3, "last"])
def test_a_kill_between_the_cell_images_and_cells_json_resumes_without_trusting_unrecorded_cells(
    model, sample, tmp_path, monkeypatch, kill_at
):
    """kill_at: the record write that is killed (1: right after the first cell's image; "last": the final one,
    after grid.png, cells.csv and index.html)."""
    out = tmp_path / "sweep"
    real, writes = sweep_files.write_json_atomic, []

    def killed_writer(path, obj):
        writes.append(obj)
        if kill_at == len(writes) or (kill_at == "last" and obj["complete"]):
            raise Killed
        return real(path, obj)

    monkeypatch.setattr(sweep_files, "write_json_atomic", killed_writer)
    with pytest.raises(Killed):
        sweep(model, sample, out)
    monkeypatch.setattr(sweep_files, "write_json_atomic", real)
    assert not temporary_files(out)
    on_disk = set(cell_files(out))
    recorded = record(out) if (out / "cells.json").exists() else {"cells": []}
    done = {row["index"] for row in recorded["cells"] if row["status"] == "done"}
    assert {f"cell_{i:03d}.png" for i in done} <= on_disk
    if kill_at == 1:
        assert not (out / "cells.json").exists() and len(on_disk) == 1  # an image no record vouches for
    elif kill_at == 3:
        assert len(done) == 2 and len(on_disk) == 3 and not recorded["complete"]
    else:
        assert len(done) == 6 and not recorded["complete"] and (out / "grid.png").exists()

    rerun = sweep(model, sample, out)
    assert {c.index for c in rerun.resumed} == done  # an image the record does not name is computed again
    computed = [c for c in rerun.cells if not c.resumed]
    assert rerun.sample_evals == sum(c.sample_evals for c in computed)
    assert (rerun.sample_evals == 0) == (len(done) == 6)
    assert_fresh(model, sample, computed)
    assert_record_vouches(out, rerun)


def test_ctrl_c_at_the_command_line_says_how_many_cells_are_saved_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    import tficon.model
    from tficon.cli import main
    from tficon.model import load_model

    toy = load_model("toy")
    monkeypatch.setattr(tficon.model, "load_model", lambda *a, **k: toy)  # the CLI sweeps on this instance
    out = tmp_path / "cli"

    def interrupt_after_two_cells(module, args):  # a pre-hook on the test's own UNet instance
        if len(list((out / "cells").glob("cell_*.png"))) >= 2:
            raise KeyboardInterrupt

    args = ["sweep", "--demo", "--grid", "tau_b=0.5,0.9", "--grid", "seed=1,2", "--steps", "4", "--out", str(out),
            "--quiet"]  # fmt: skip
    handle = toy.unet.register_forward_pre_hook(interrupt_after_two_cells)
    try:
        assert main(args) == 130
    finally:
        handle.remove()
    err = capsys.readouterr().err
    saved = [row["index"] for row in record(out)["cells"] if row["status"] == "done"]
    assert len(saved) == 2 and cell_files(out) == [f"cell_{i:03d}.png" for i in sorted(saved)]
    assert f"interrupted (Ctrl-C); 2 of 4 cells saved in {out}; re-run the same sweep into it to resume" in err
    assert "Traceback" not in err and "nothing was written" not in err and err.count("interrupted") == 1
    assert not temporary_files(out) and not (out / "grid.png").exists()

    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 cells kept from the earlier run in the output folder" in printed
    data = record(out)
    assert data["complete"] and [row["status"] for row in data["cells"]] == ["done"] * 4
    assert sorted(row["index"] for row in data["cells"] if row["resumed"]) == sorted(saved)


def test_a_cli_sweep_that_cannot_write_its_outputs_says_which_file_without_a_traceback(tmp_path, monkeypatch, capsys):
    from tficon.cli import main

    out = tmp_path / "cli"

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))

    monkeypatch.setattr(sweep_files, "write_bytes_atomic", full_disk)  # the grid's table and page
    code = main(["sweep", "--demo", "--grid", "tau_b=0.5,0.9", "--steps", "4", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err  # exit 3: a file could not be written
    assert f"could not write {out / 'cells.csv'}: No space left on device; 2 of 2 cells are saved in {out}" in err
    assert "re-run the same sweep to resume" in err
    assert len(cell_files(out)) == 2 and not record(out)["complete"]


# ---------------------------------------------------------------------------------------------------------------
# Old folders: another grid is replaced whole, a cut-off cell image is computed again, files get the umask
# ---------------------------------------------------------------------------------------------------------------


def test_a_smaller_or_other_sweep_into_an_old_folder_replaces_it_whole(model, sample, tmp_path):
    out = tmp_path / "sweep"
    sweep(model, sample, out)
    assert len(cell_files(out)) == 6
    smaller = sweep(model, sample, out, grid={"tau_b": [0.5, 0.9]})
    assert not smaller.resumed and cell_files(out) == ["cell_000.png", "cell_001.png"]  # no old cell left
    assert_record_vouches(out, smaller)
    assert len(record(out)["cells"]) == 2
    assert_fresh(model, sample, smaller.cells)
    # the same grid with another setting (steps) is another sweep: nothing kept
    other = sweep(model, sample, out, grid={"tau_b": [0.5, 0.9]}, steps=STEPS + 1)
    assert not other.resumed and other.sample_evals == sum(c.sample_evals for c in other.cells)
    first = min(other.cells, key=lambda c: c.order)
    assert first.sample_evals == independent_cost(first.config)  # its inversions computed again
    assert_record_vouches(out, other)


def test_a_cut_off_cell_image_is_computed_again(model, sample, tmp_path):
    out = tmp_path / "sweep"
    first = sweep(model, sample, out, grid={"tau_b": [0.5, 0.9]})
    (out / "cells" / "cell_001.png").write_bytes(b"")  # a 0-byte image, as a kill mid-write of a plain write leaves
    rerun = sweep(model, sample, out, grid={"tau_b": [0.5, 0.9]})
    assert [c.resumed for c in rerun.cells] == [True, False]
    assert np.array_equal(np.asarray(rerun.cells[1].image), np.asarray(first.cells[1].image))
    assert_record_vouches(out, rerun)


def test_sweep_files_get_the_users_umask(model, sample, tmp_path):
    out = tmp_path / "sweep"
    old = os.umask(0o027)
    try:
        result = sweep(model, sample, out, grid={"tau_b": [0.5]}, metrics=False)
    finally:
        os.umask(old)
    for path in [out / "cells.json", out / "grid.png", out / "index.html", out / "cells.csv", out / "cells" / "cell_000.png"]:
        assert path.stat().st_mode & 0o777 == 0o640, path
    assert not result.failed


def test_interrupt_without_an_output_folder_says_nothing_was_written(model, sample):
    def interrupt(module, args):
        raise KeyboardInterrupt

    handle = model.unet.register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(SweepInterrupted, match=r"nothing was written \(no output folder\)"):
            sweep(model, sample, None, grid={"tau_b": [0.5]})
    finally:
        handle.remove()

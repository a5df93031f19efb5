"""A sweep's output folder: what it holds, what a re-run may keep, and writing it so that nothing wrong is kept.

Layout: ``cells/cell_NNN.png`` (one per good cell), ``grid.png``, ``cells.csv``, ``index.html`` and ``cells.json``,
the record. Every file is written atomically (:mod:`tficon.run.files`). ``cells.json`` is written after each cell
that is saved and once more at the end, always after the files it names: it lists every cell as ``done`` (with
the ``bytes`` and ``sha256`` of its image), ``failed`` (with a one-line reason) or ``missing`` (not computed yet),
and carries the fingerprint of what the cells depend on (inputs, model, working size, base settings, grid).

A re-run into the folder (:meth:`SweepFolder.open`):

- with the same fingerprint, keeps each cell the record lists as done whose image still has the recorded size and
  hash, and computes the others (missing, failed, or an image that was changed or cut off);
- with another fingerprint (another sample, model, setting or grid), or no readable record, replaces the folder's
  sweep whole: the old record is removed first, then every old cell image, so no old cell stays beside a new
  record.

The grid, table and page are removed when a run starts and written again when it ends, so that they never
describe another run's cells; a folder left by a killed run holds the cells saved so far and the record naming
them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tficon.run.files import TEMP_PREFIX, file_fingerprint, save_image_atomic, write_bytes_atomic, write_json_atomic
from tficon.run.report import jsonable
from tficon.run.sweep_grid import SweepCell, _label

__all__ = ["SweepFolder", "inputs_fingerprint", "RECORD"]

#: The record's file name.
RECORD = "cells.json"
_PAGES = ("grid.png", "cells.csv", "index.html")
_CELL_FILE = re.compile(r"cell_\d+\.png$")
_TEMPORARY = re.compile(re.escape(TEMP_PREFIX) + r"[0-9a-f]+\.tmp$")  # tficon.run.files' temporary names, left by a kill


def _content(value) -> Any:
    """A JSON-safe stand-in for an input that changes when its content does (files and arrays by hash)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, str) and os.path.isfile(value):
            return {"file": hashlib.sha256(Path(value).read_bytes()).hexdigest()}
        return value
    if isinstance(value, os.PathLike):
        return _content(os.fspath(value))
    if isinstance(value, Image.Image):
        return {"image": [value.mode, list(value.size), hashlib.sha256(value.tobytes()).hexdigest()]}
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    array = np.ascontiguousarray(np.asarray(value.detach().cpu() if hasattr(value, "detach") else value))
    return {"array": [str(array.dtype), list(array.shape), hashlib.sha256(array.tobytes()).hexdigest()]}


def inputs_fingerprint(model, inputs: dict, mask_or_box, image_size, base, grid: dict, labels: dict, metrics: bool) -> str:
    """What every cell of a sweep depends on, as one hash (module docstring)."""
    payload = {
        "model": [getattr(model, "spec", type(model).__name__), str(getattr(model, "dtype", "")),
                  getattr(model, "lora", None), getattr(model, "lora_scale", None)],
        "image_size": list(image_size),
        "config": dataclasses.asdict(base),
        "prompt": inputs["prompt"],
        "inputs": {k: _content(inputs[k]) for k in ("background", "foreground", "foreground_mask")},
        "box": None if "box" in grid else _content(mask_or_box),
        "grid": {n: [_content(v) if n == "box" else _label(n, v) for v in values] for n, values in grid.items()},
        "labels": labels,
        "metrics": metrics,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(jsonable(payload), sort_keys=True, default=str).encode()).hexdigest()


def _number(value):
    return float(value) if value in ("inf", "-inf", "nan") else value


class SweepFolder:
    """The output folder of one sweep run: opened (kept or cleared) before the first cell, then written cell by cell.

    ``saved``: the indices of the cells that the record on disk lists as done (what a re-run keeps)."""

    def __init__(self, out: str | os.PathLike, fingerprint: str):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"out: {str(self.out)!r} is a file; the sweep writes a folder")
        self.fingerprint = fingerprint
        self.cells_dir = self.out / "cells"
        self.record = self.out / RECORD
        self.fingerprints: dict[int, dict] = {}  # cell index -> its image's size and hash, as written
        self.saved: set[int] = set()
        self.record_error: str | None = None  # the last failure to write the record (the run goes on)

    def image_path(self, cell: SweepCell) -> Path:
        return self.cells_dir / f"cell_{cell.index:03d}.png"

    # ------------------------------------------------------------------ before the run
    def open(self, cells: list[SweepCell]) -> list[SweepCell]:
        """Keep what a re-run may keep (module docstring), clear the rest; returns the cells taken from the folder
        (their images, metrics and work as recorded, ``resumed`` set)."""
        old = self._read_record()
        kept = []
        if old is not None and old.get("fingerprint") == self.fingerprint:
            rows = {row.get("index"): row for row in old.get("cells", []) if row.get("status") == "done"}
            for cell in cells:
                row = rows.get(cell.index)
                if row is not None and self._restore(cell, row):
                    kept.append(cell)
        else:
            self.record.unlink(missing_ok=True)  # first: no record may vouch for files that are being removed
        keep = {self.image_path(c).name for c in kept}
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        for path in self.cells_dir.iterdir():  # another grid's cells, cells cut off by a kill, temporary files
            if (_CELL_FILE.match(path.name) and path.name not in keep) or _TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)
        for name in _PAGES:
            (self.out / name).unlink(missing_ok=True)
        for path in self.out.iterdir():
            if _TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)
        self.saved = {c.index for c in kept}
        return kept

    def _read_record(self) -> dict | None:
        try:
            data = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _restore(self, cell: SweepCell, row: dict) -> bool:
        """Fill ``cell`` from its record row if its image is the one the record vouches for."""
        path = self.image_path(cell)
        try:
            if not path.is_file() or file_fingerprint(path) != row.get("file"):
                return False
            with Image.open(path) as image:
                cell.image = image.convert("RGB")
        except (OSError, ValueError):
            return False
        self.fingerprints[cell.index] = row["file"]
        for name in ("order", "first_step", "inversions_cached", "sample_evals", "unet_calls", "seconds"):
            if name in row:
                setattr(cell, name, row[name])
        metrics = {region: {k: _number(row[f"{region}_{k}"]) for k in ("mse", "psnr", "ssim")}
                   for region in ("bg", "fg") if row.get(f"{region}_mse") is not None}  # fmt: skip
        cell.metrics, cell.error, cell.resumed = metrics, None, True
        return True

    # ------------------------------------------------------------------ during the run
    def save_cell(self, cell: SweepCell) -> None:
        """Write a good cell's image (raises OSError; the caller marks the cell failed)."""
        path = self.image_path(cell)
        try:
            save_image_atomic(path, cell.image)
            self.fingerprints[cell.index] = file_fingerprint(path)
        except BaseException:
            self.fingerprints.pop(cell.index, None)
            raise

    def forget_cell(self, cell: SweepCell) -> None:
        """A failed cell has no image: remove any (the record no longer lists it as done)."""
        self.fingerprints.pop(cell.index, None)
        try:
            self.image_path(cell).unlink(missing_ok=True)
        except OSError:
            pass

    def write_record(self, result, *, complete: bool, strict: bool = False) -> bool:
        """Write ``cells.json`` for ``result`` (after the files it names). A failure raises when ``strict``, else
        returns False with ``record_error`` set (the run goes on; the next write tries again)."""
        rows = [self.record_row(cell) for cell in result.cells]
        data = {
            "fingerprint": self.fingerprint,
            "complete": complete,
            "summary": result.summary(),
            "failed": [{"index": c.index, "cell": c.label(), "error": c.error} for c in result.failed],
            "cells": rows,
        }
        try:
            write_json_atomic(self.record, jsonable(data))
        except OSError as error:
            self.record_error = f"could not write {self.record}: {error.strerror or error}"
            if strict:
                raise
            return False
        self.saved = {row["index"] for row in rows if row["status"] == "done"}
        self.record_error = None
        return True

    def record_row(self, cell: SweepCell) -> dict:
        row = cell.row()
        if cell.error is not None:
            status = "failed"
        elif cell.index in self.fingerprints:
            status = "done"
        else:
            status = "missing"
        return row | {"status": status, "error": cell.error, "file": self.fingerprints.get(cell.index)}

    # ------------------------------------------------------------------ at the end
    def finish(self, result) -> dict[str, Path]:
        """Write grid.png, cells.csv and index.html, then the complete record (raises OSError)."""
        paths = {"grid": self.out / "grid.png", "csv": self.out / "cells.csv", "json": self.record,
                 "html": self.out / "index.html"}  # fmt: skip
        save_image_atomic(paths["grid"], result.grid_image())
        rows = [self.record_row(cell) for cell in result.cells]
        for row in rows:
            row.pop("file")
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_atomic(paths["csv"], buffer.getvalue().encode("utf-8"))
        write_bytes_atomic(paths["html"], result.html().encode("utf-8"))
        self.write_record(result, complete=True, strict=True)
        return paths

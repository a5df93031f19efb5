"""What a sweep returns (:class:`SweepResult`): its cells (good, failed or taken from an earlier run's folder),
totals, a way back to any cell's Session, and its files (``grid.png``, ``cells.csv``, ``cells.json``, ``index.html``
and ``cells/cell_NNN.png``, drawn by :mod:`tficon.run.report`, written by :mod:`tficon.run.sweep_files`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from tficon.composition.engine import Engine
from tficon.run.report import sweep_grid_image, sweep_html
from tficon.run.sweep_grid import SweepCell, _label

__all__ = ["SweepResult"]


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: the cells (grid order), the grid's axes, totals, and how to look at them.

    ``sample_evals`` / ``seconds``: the sweep's UNet rows and wall time (inversions, steps and decodes; metrics
    excluded, see ``metrics_seconds``); ``independent_sample_evals``: what the same cells cost run one by one with
    fresh Sessions (computed from their plans). A cell that failed has ``error`` set and no image
    (:attr:`failed`); a cell taken from the output folder of an earlier run of the same sweep has ``resumed`` set
    and its recorded work (this run's totals do not count it).
    """

    grid: dict[str, list]
    cells: list[SweepCell]
    inputs: dict[str, Any]
    engine: Engine
    image_size: tuple[int, int]
    sample_evals: int
    unet_calls: int
    seconds: float
    metrics_seconds: float
    independent_sample_evals: int
    cut_and_paste: dict[str, Any] = field(default_factory=dict)  # box label -> {"image", "metrics"}
    value_labels: dict[str, list[str]] = field(default_factory=dict)
    lanes: int = 1  # lanes of cells that shared UNet calls (1: one cell at a time; batch_cells)
    fingerprint: str = ""  # what every cell depends on (tficon.run.sweep_files.inputs_fingerprint)

    @property
    def failed(self) -> list[SweepCell]:
        """The cells that failed (each with its one-line ``error``), in grid order."""
        return [cell for cell in self.cells if cell.error is not None]

    @property
    def resumed(self) -> list[SweepCell]:
        """The cells taken from an earlier run's output folder instead of computed."""
        return [cell for cell in self.cells if cell.resumed]

    @property
    def names(self) -> list[str]:
        return list(self.grid)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.grid.values())

    @property
    def shared_fraction(self) -> float:
        """The sweep's UNet work as a fraction of the independent runs'."""
        return self.sample_evals / self.independent_sample_evals if self.independent_sample_evals else 0.0

    def label_of(self, name: str, value_index: int) -> str:
        labels = self.value_labels.get(name)
        return labels[value_index] if labels else _label(name, self.grid[name][value_index])

    def cell(self, **values) -> SweepCell:
        """The cell with these grid values (every grid parameter named)."""
        if set(values) != set(self.grid):
            raise ValueError(f"name every grid parameter ({', '.join(self.grid)}), got {sorted(values)}")
        for cell in self.cells:
            if all(_label(n, cell.values[n]) == _label(n, v) for n, v in values.items()):
                return cell
        raise KeyError(f"no cell with {values}")

    def session(self, cell: SweepCell | int, *, progress: bool = False):
        """A fresh Session with the cell's settings on the sweep's engine (its inversions come from the cache);
        run it, or open it in ``tficon.widgets.Explorer``."""
        from tficon.composition.session import Session

        cell = self.cells[cell] if isinstance(cell, int) else cell
        i = self.inputs
        return Session(
            self.engine.model, i["background"], i["foreground"], i["foreground_mask"], cell.box, i["prompt"],
            cell.config, image_size=self.image_size, engine=self.engine, progress=progress,
        )  # fmt: skip

    def table(self) -> list[dict[str, Any]]:
        return [cell.row() for cell in self.cells]

    def summary(self) -> dict[str, Any]:
        """Totals and the grid, JSON-safe."""
        return {
            "grid": {n: [self.label_of(n, i) for i in range(len(v))] for n, v in self.grid.items()},
            "cells": len(self.cells),
            "failed": len(self.failed),
            "resumed": len(self.resumed),
            "image_size": list(self.image_size),
            "prompt": self.inputs["prompt"],
            "model": getattr(self.engine.model, "spec", None),
            "sample_evals": self.sample_evals,
            "unet_calls": self.unet_calls,
            "independent_sample_evals": self.independent_sample_evals,
            "shared_fraction": round(self.shared_fraction, 4),
            "lanes": self.lanes,
            "seconds": round(self.seconds, 3),
            "metrics_seconds": round(self.metrics_seconds, 3),
            "cut_and_paste": {k: v["metrics"] for k, v in self.cut_and_paste.items()},
        }

    def describe(self) -> str:
        text = (
            f"{len(self.cells)} cells ({' x '.join(f'{len(v)} {n}' for n, v in self.grid.items())}): "
            f"{self.sample_evals} UNet sample-evaluations in {self.seconds:.1f} s; run independently they would "
            f"cost {self.independent_sample_evals} ({100 * self.shared_fraction:.0f} % of that)"
        )
        if self.resumed:
            text += f"; {len(self.resumed)} cells kept from the earlier run in the output folder"
        if self.failed:
            text += f"; {len(self.failed)} failed: " + "; ".join(cell.error for cell in self.failed)
        return text

    # ---------------------------------------------------------------------------------------------- outputs
    def grid_image(self, *, thumb: int = 192, metrics: bool = True) -> Image.Image:
        """The labelled grid: first parameter down the rows, second across the columns, further parameters as
        stacked panels with a heading; a strip of the inputs on top."""
        return sweep_grid_image(self, thumb=thumb, metrics=metrics)

    def html(self, *, thumb: int = 128) -> str:
        return sweep_html(self, thumb=thumb)

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        """Write cells/cell_NNN.png, grid.png, cells.csv, index.html and then cells.json into the folder ``out``,
        each atomically; another sweep's files there are replaced whole (:mod:`tficon.run.sweep_files`)."""
        from tficon.run.sweep_files import SweepFolder

        folder = SweepFolder(out, self.fingerprint)
        folder.open([])  # keeps nothing: every cell of this result is written again
        for cell in self.cells:
            if cell.error is None:
                folder.save_cell(cell)
        return folder.finish(self)

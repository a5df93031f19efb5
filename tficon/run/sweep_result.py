"""What a sweep returns (:class:`SweepResult`): its cells, totals, a way back to any cell's Session, and its files
(``grid.png``, ``cells.csv``, ``cells.json``, ``index.html`` and ``cells/cell_NNN.png``, drawn by
:mod:`tficon.run.report`)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from tficon.composition.engine import Engine
from tficon.run.report import jsonable, sweep_grid_image, sweep_html
from tficon.run.sweep_grid import SweepCell, _label

__all__ = ["SweepResult"]


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: the cells (grid order), the grid's axes, totals, and how to look at them.

    ``sample_evals`` / ``seconds``: the sweep's UNet rows and wall time (inversions, steps and decodes; metrics
    excluded, see ``metrics_seconds``); ``independent_sample_evals``: what the same cells cost run one by one with
    fresh Sessions (computed from their plans).
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

    @property
    def names(self) -> list[str]:
        return list(self.grid)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.grid.values())

    @property
    def shared_fraction(self) -> float:
        """The sweep's UNet work as a fraction of the independent runs'."""
        return self.sample_evals / self.independent_sample_evals

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
        return (
            f"{len(self.cells)} cells ({' x '.join(f'{len(v)} {n}' for n, v in self.grid.items())}): "
            f"{self.sample_evals} UNet sample-evaluations in {self.seconds:.1f} s; run independently they would "
            f"cost {self.independent_sample_evals} ({100 * self.shared_fraction:.0f} % of that)"
        )

    # ---------------------------------------------------------------------------------------------- outputs
    def grid_image(self, *, thumb: int = 96, metrics: bool = True) -> Image.Image:
        """The labelled grid: first parameter down the rows, second across the columns, further parameters as
        stacked panels with a heading; a strip of the inputs on top."""
        return sweep_grid_image(self, thumb=thumb, metrics=metrics)

    def html(self, *, thumb: int = 128) -> str:
        return sweep_html(self, thumb=thumb)

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        """Write grid.png, cells.csv, cells.json, index.html and cells/cell_NNN.png into the folder ``out``."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"out: {str(out)!r} is a file; the sweep writes a folder")
        (out / "cells").mkdir(parents=True, exist_ok=True)
        for cell in self.cells:
            cell.image.save(out / "cells" / f"cell_{cell.index:03d}.png")
        paths = {"grid": out / "grid.png", "csv": out / "cells.csv", "json": out / "cells.json", "html": out / "index.html"}
        self.grid_image().save(paths["grid"])
        rows = self.table()
        with paths["csv"].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        paths["json"].write_text(json.dumps(jsonable({"summary": self.summary(), "cells": rows}), indent=2) + "\n")
        paths["html"].write_text(self.html())
        return paths


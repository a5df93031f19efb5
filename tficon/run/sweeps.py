"""Parameter sweeps over one sample that reuse work: ``tficon.sweep(...)`` and ``tficon sweep``.

A sweep is a grid over any of ``tau_a``, ``tau_b``, ``tau_bg``, ``guidance``, ``seed``, ``steps`` and ``box``
(a full Cartesian product of the values given). It is evaluated so that no work is done twice:

- **Inversions once.** Every cell runs on one :class:`tficon.composition.engine.Engine`, whose inversion cache is keyed by
  content: cells that share ``seed``, ``steps`` (and, in cross mode, the box's size) share both inversions.
- **Common prefixes of steps once.** A cell's steps are a pure function of its step plans (``tficon.core.plan``) once
  the inputs, the seed, the steps, the guidance and the box are fixed, which is how ``Session.update`` decides
  what to keep. Cells of one such group are evaluated in lexicographic order of their plan sequences, i.e. in
  depth-first order of the prefix tree of those sequences. In that order, the longest prefix a cell shares with
  *any* earlier cell is the prefix it shares with the cell just before it, so moving one Session from cell to cell
  with ``Session.update`` (which keeps every step before the first divergent one; records are immutable) computes
  each node of the prefix tree exactly once: the least UNet work any order can achieve, without keeping
  snapshots of several branches. ``tau_b`` acts late, ``tau_a`` / ``tau_bg`` earlier; guidance, seed, steps
  and box change every step (seed and steps also the inversions), so those go outermost.

The result of every cell is bitwise the result of a fresh Session with the cell's settings (the tests check
it).

**Batched cells** (``batch_cells``, off by default): cells that share no steps can share UNet calls instead
(``tficon.run.lockstep``). The evaluation order is cut into *lanes*, contiguous runs of cells that one Session walks
through with ``update`` as above, and the lanes advance together, one call per round holding a step of each
(:func:`plan_lanes`). A cut before a cell costs the steps it shares with the cell before (its lane recomputes them),
so ``"auto"`` cuts only where that is nothing (a new seed, guidance or box, or a tau that already changes step 0)
and only as many lanes as the memory budget holds; a number N allows up to N lanes and may also cut where steps
are shared, taking the cuts that make the costliest lane cheapest (a lane is added only when it does). Batched
cells equal the unbatched ones to float tolerance, not bitwise (another batch shape rounds differently); without
batching nothing changes.

Outputs (:meth:`SweepResult.save`): ``grid.png`` (rows and columns labelled by their values, further
dimensions as stacked panels), ``cells.csv`` / ``cells.json`` (settings, metrics, work per cell) and a
self-contained ``index.html``; cell images under ``cells/``.

Metrics per cell (``tficon.eval.metrics.composition_metrics``, docs/evaluation.md): background MSE/PSNR/SSIM with the
target window blanked, foreground MSE/PSNR/SSIM of the window against the reference crop; the cut-and-paste's
values for comparison.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io as _io
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from tficon.composition.engine import Engine
from tficon.core import io
from tficon.core.config import CompositionConfig
from tficon.core.plan import composition_plan
from tficon.core.schedule import injection_schedule

__all__ = [
    "PARAMETERS", "GridError", "SweepCell", "SweepResult", "run_sweep", "parse_grid_option", "evaluation_order",
    "plan_lanes",
]  # fmt: skip

#: The parameters a sweep can vary, in the order they act on the composition (latest first).
PARAMETERS = ("tau_b", "tau_a", "tau_bg", "guidance", "seed", "steps", "box")
_CONFIG_PARAMETERS = ("tau_a", "tau_b", "tau_bg", "guidance", "seed", "steps")


class GridError(ValueError):
    """A bad grid: an unknown parameter, no values, a repeated value, a value a cell cannot take."""


_METRIC_COLUMNS = ("bg_mse", "bg_psnr", "bg_ssim", "fg_mse", "fg_psnr", "fg_ssim")


# --------------------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------------------


def _check_grid(grid: Mapping[str, Sequence]) -> dict[str, list]:
    """The grid as {name: [values]} in the given order; clear errors for unknown names and empty or repeated values."""
    if not isinstance(grid, Mapping) or not grid:
        raise GridError(
            f"grid must be a non-empty mapping {{parameter: [values]}} over {', '.join(PARAMETERS)}, got {grid!r}"
        )
    checked = {}
    for name, values in grid.items():
        if name not in PARAMETERS:
            raise GridError(f"unknown sweep parameter {name!r}; a sweep can vary {', '.join(PARAMETERS)}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise GridError(f"grid[{name!r}] must be a list of values, got {values!r}")
        values = [tuple(int(v) for v in b) if name == "box" and _is_box(b) else b for b in values]
        if not values:
            raise GridError(f"grid[{name!r}] is empty: give at least one value")
        labels = [_label(name, v) for v in values]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise GridError(f"grid[{name!r}] repeats the value(s) {', '.join(repeated)}; give each value once")
        checked[name] = values
    return checked


def _is_box(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 4 and all(isinstance(v, (int, np.integer)) for v in value)


def _label(name: str, value) -> str:
    if name == "box":
        if _is_box(value):
            return ",".join(str(int(v)) for v in value)
        rows, cols = np.nonzero(np.asarray(value))
        if not len(rows):
            return "empty mask"
        return f"mask {cols.min()},{rows.min()},{cols.max() - cols.min() + 1},{rows.max() - rows.min() + 1}"
    if value is None:
        return "official"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_grid_option(text: str) -> tuple[str, list]:
    """One ``--grid`` option of the command line: ``name=v1,v2,...`` or ``name=start:stop:count`` (evenly spaced,
    both ends included); boxes as ``box=x,y,w,h;x,y,w,h``; ``guidance=official`` is the per-mode default."""
    name, sep, rest = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not rest.strip():
        raise GridError(f"--grid takes name=v1,v2,... (e.g. tau_b=0.5,0.7,0.9 or tau_a=0.2:0.6:5), got {text!r}")
    if name not in PARAMETERS:
        raise GridError(f"--grid: unknown sweep parameter {name!r}; a sweep can vary {', '.join(PARAMETERS)}")
    rest = rest.strip()
    try:
        if name == "box":
            values = []
            for part in rest.split(";"):
                numbers = tuple(int(v) for v in part.split(","))
                if len(numbers) != 4:
                    raise ValueError
                values.append(numbers)
            return name, values
        kind = int if name in ("seed", "steps") else float
        if ":" in rest:
            start, stop, count = rest.split(":")
            n = int(count)
            if n < 1:
                raise ValueError
            if kind is int:
                values = sorted({int(round(v)) for v in np.linspace(int(start), int(stop), n)})
            else:
                values = [round(float(v), 6) for v in np.linspace(float(start), float(stop), n)]
            return name, values
        return name, [None if (name == "guidance" and v.strip() == "official") else kind(v) for v in rest.split(",")]
    except ValueError:
        form = "box=x,y,w,h;x,y,w,h" if name == "box" else f"{name}=v1,v2,... or {name}=start:stop:count"
        raise GridError(f"--grid: cannot read {text!r}; write {form}") from None


@dataclass
class SweepCell:
    """One cell: its grid values, position, settings, result and measurements.

    ``index`` is the cell's position in the grid (row-major over the grid's parameters, in their given order);
    ``order`` its position in the evaluation order; ``first_step`` the first step it computed (the steps before
    were shared with the cell evaluated before it; steps + 1: none); ``sample_evals`` the UNet rows it cost;
    ``inversions_cached``: it spent nothing on inversions (reused from the cell before or the engine's cache).
    With ``batch_cells``, ``first_step`` and the work are those of its lane (the cell before it in its lane),
    ``sample_evals`` / ``unet_calls`` count its rows and calls as if it had run alone, and ``seconds`` is its share
    of the shared calls plus its own decode.
    """

    index: int
    values: dict[str, Any]
    position: tuple[int, ...]
    config: CompositionConfig
    box: Any
    order: int = -1
    first_step: int | None = None
    inversions_cached: bool = False
    sample_evals: int = 0
    unet_calls: int = 0
    seconds: float = 0.0
    image: Image.Image | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def label(self, names: Sequence[str] | None = None) -> str:
        names = list(self.values) if names is None else names
        return ", ".join(f"{n}={_label(n, self.values[n])}" for n in names)

    def row(self) -> dict[str, Any]:
        """A flat, JSON-safe row of the table."""
        flat = {f"{region}_{k}": v for region in ("bg", "fg") for k, v in self.metrics.get(region, {}).items()}
        return {
            "index": self.index,
            **{n: _label(n, v) if n == "box" else v for n, v in self.values.items()},
            "guidance_used": self.config.effective_guidance,
            **{c: flat.get(c) for c in _METRIC_COLUMNS},
            "eval_order": self.order,
            "first_step": self.first_step,
            "inversions_cached": self.inversions_cached,
            "sample_evals": self.sample_evals,
            "unet_calls": self.unet_calls,
            "seconds": round(self.seconds, 4),
            "image": f"cells/cell_{self.index:03d}.png",
        }


def _plans(config: CompositionConfig):
    return composition_plan(
        injection_schedule(config.steps, config.order, config.tau_a, config.tau_b, config.tau_bg,
                           align_warmup=config.align_warmup),
        cross_lag=not config.no_cross_lag, background_queries=config.background_queries,
    )  # fmt: skip


def independent_cost(config: CompositionConfig) -> int:
    """UNet sample-evaluations of one fresh composition with ``config``: both inversions (one two-row call per step)
    plus every step's plan."""
    return 2 * config.steps + sum(p.sample_evals for p in _plans(config))


def evaluation_order(cells: Sequence[SweepCell]) -> list[SweepCell]:
    """The order that shares the most work (module docstring): grouped by steps, seed, box and guidance (in their
    grid order), then within a group in lexicographic order of the cells' step-plan sequences."""
    symbols: dict = {}
    boxes: list = []

    def box_index(box) -> int:
        for i, b in enumerate(boxes):
            if _same_box(b, box):
                return i
        boxes.append(box)
        return len(boxes) - 1

    def key(cell: SweepCell):
        c = cell.config
        path = tuple(symbols.setdefault(p, len(symbols)) for p in _plans(c))
        return (c.steps, c.seed, box_index(cell.box), c.effective_guidance, path)

    keys = {cell.index: key(cell) for cell in cells}
    return sorted(cells, key=lambda cell: keys[cell.index])


def _shared_steps(previous: SweepCell | None, cell: SweepCell) -> tuple[int, bool]:
    """(steps ``cell`` shares with ``previous`` when one Session moves from one to the other, whether it needs new
    inversions), by the rules of ``Session.update``."""
    if previous is None:
        return 0, True
    a, b = previous.config, cell.config
    new_inversions = (a.steps, a.seed) != (b.steps, b.seed) or not _same_box(previous.box, cell.box)
    if new_inversions or a.effective_guidance != b.effective_guidance:
        return 0, new_inversions
    plans_a, plans_b = _plans(a), _plans(b)
    return next((s for s, (p, q) in enumerate(zip(plans_a, plans_b)) if p != q), len(plans_b)), False


def plan_lanes(order: Sequence[SweepCell], lanes: int, *, free_cuts_only: bool) -> list[list[SweepCell]]:
    """Cut the evaluation ``order`` into at most ``lanes`` contiguous lanes (module docstring).

    A lane's cost is the UNet rows its Session computes: its first cell's steps from step 0 and then each cell's
    steps after those it shares with the cell before (inversions included where they are new). A cut before a cell
    adds the cost of the steps it would have shared. Among the cuts allowed (with ``free_cuts_only``, only before
    cells that share no steps with the cell before), the one that minimises the costliest lane is taken, then the
    one that adds the least work. One lane means no batching.
    """
    n = len(order)
    marginal, prefix = [], []
    for i, cell in enumerate(order):
        shared, new_inversions = _shared_steps(order[i - 1] if i else None, cell)
        plans = _plans(cell.config)
        marginal.append(sum(p.sample_evals for p in plans[shared:]) + (2 * cell.config.steps if new_inversions else 0))
        prefix.append(sum(p.sample_evals for p in plans[:shared]))
    running = [0]
    for m in marginal:
        running.append(running[-1] + m)
    allowed = [j for j in range(1, n) if not free_cuts_only or prefix[j] == 0]

    def cost(j: int, i: int) -> int:  # a lane of cells j..i-1
        return prefix[j] + running[i] - running[j]

    # best[i]: (costliest lane, added work, cuts) over cells 0..i-1 with the lanes so far
    best = {i: (cost(0, i), 0, ()) for i in range(1, n + 1)}
    answer = best[n]
    for _ in range(1, min(lanes, n)):
        nxt = {}
        for i in range(2, n + 1):
            options = [
                (max(best[j][0], cost(j, i)), best[j][1] + prefix[j], best[j][2] + (j,))
                for j in allowed if j < i and j in best
            ]  # fmt: skip
            if options:
                nxt[i] = min(options, key=lambda o: o[:2])
        if not nxt:
            break
        best = nxt
        if n in nxt and nxt[n][:2] < answer[:2]:  # ties: fewer lanes
            answer = nxt[n]
    cuts = (0,) + answer[2] + (n,)
    return [list(order[a:b]) for a, b in zip(cuts, cuts[1:])]


def _same_box(a, b) -> bool:
    if _is_box(a) or _is_box(b):
        return _is_box(a) and _is_box(b) and tuple(a) == tuple(b)
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


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
        return _grid_image(self, thumb=thumb, metrics=metrics)

    def html(self, *, thumb: int = 128) -> str:
        return _html(self, thumb=thumb)

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
        paths["json"].write_text(json.dumps(_jsonable({"summary": self.summary(), "cells": rows}), indent=2) + "\n")
        paths["html"].write_text(self.html())
        return paths


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    return value


def run_sweep(
    model,
    background,
    foreground,
    foreground_mask,
    mask_or_box,
    prompt: str,
    grid: Mapping[str, Sequence],
    *,
    config: CompositionConfig | None = None,
    image_size: int | tuple[int, int] | None = None,
    engine: Engine | None = None,
    out: str | os.PathLike | None = None,
    metrics: bool = True,
    value_labels: Mapping[str, Sequence[str]] | None = None,
    progress: bool = True,
    threads: int | None = None,
    batch_cells: int | str | None = None,
    **config_changes,
) -> SweepResult:
    """Compose one sample at every point of ``grid`` and measure each, sharing all shared work (module docstring).

    Args:
        model, background, foreground, foreground_mask, mask_or_box, prompt: as for ``tficon.Session``;
            ``mask_or_box`` is the box of cells when ``box`` is not swept.
        grid: {parameter: [values]} over ``PARAMETERS``; ``box`` values are (x, y, w, h) in working-image pixels
            or user masks; ``guidance`` None is the official per-mode value.
        config / config_changes: the settings of every cell besides the grid's.
        engine: the Engine to run on (default: a new one for ``model``); pass one to share its inversion cache.
        out: a folder to write the outputs into (see :meth:`SweepResult.save`).
        metrics: compute per-cell metrics (pixel metrics of ``tficon.eval.metrics``).
        value_labels: names shown for a parameter's values instead of the values themselves (e.g. for masks).
        progress: a tqdm bar over the cells.
        batch_cells: None (default): one cell at a time, each bitwise a fresh Session's result. N: up to N lanes
            of cells share UNet calls; ``"auto"``: as many lanes as cost no shared steps and fit the memory budget
            (module docstring, :func:`plan_lanes`, ``tficon.run.lockstep``). Results equal the unbatched ones to float
            tolerance.

    Returns:
        a :class:`SweepResult`.
    """
    from tficon.composition.session import Session

    checked = _check_grid(grid)
    labels = {}
    for name, names in (value_labels or {}).items():
        if name not in checked or len(names) != len(checked[name]):
            raise GridError(f"value_labels[{name!r}] must name each of the grid's {name} values")
        labels[name] = [str(n) for n in names]
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from tficon.model import load_model

        model = load_model(model)
    if engine is not None and engine.model is not model:
        raise ValueError("engine belongs to another model: pass engine.model as model, or no engine")
    base = (config or CompositionConfig()).replace(**config_changes)
    from tficon.run.lockstep import check_count

    check_count(batch_cells, "batch_cells", auto=True, none=True)

    # Every cell's settings, checked before any model work.
    cells = []
    for index, combo in enumerate(itertools.product(*(range(len(v)) for v in checked.values()))):
        values = {name: checked[name][i] for name, i in zip(checked, combo)}
        changes = {n: v for n, v in values.items() if n in _CONFIG_PARAMETERS}
        try:
            cell_config = base.replace(**changes)
        except (ValueError, TypeError) as error:
            raise GridError(f"grid cell {_cell_text(values)}: {error}") from None
        if cell_config.steps < cell_config.order:
            raise GridError(f"grid cell {_cell_text(values)}: steps ({cell_config.steps}) must be >= order ({cell_config.order})")
        cells.append(SweepCell(index, values, combo, cell_config, values.get("box", mask_or_box)))

    order = evaluation_order(cells)
    engine = engine if engine is not None else Engine(model)
    first = order[0]
    i_bg, i_fg = io.load_image(background, name="background"), io.load_image(foreground, name="foreground")
    session = Session(
        model, i_bg, i_fg, foreground_mask, first.box, prompt, first.config,
        image_size=image_size, engine=engine, threads=threads,
    )  # fmt: skip
    if "box" in checked:  # every box must fit before anything runs (update raises and changes nothing)
        for i, box in enumerate(checked["box"]):
            try:
                session.update(mask_or_box=box)
            except (ValueError, TypeError) as error:
                raise GridError(f"grid value box={labels.get('box', [None] * (i + 1))[i] or _label('box', box)}: {error}") from None
        session.update(mask_or_box=first.box)

    started = time.perf_counter()
    engine_evals, engine_calls = engine.sample_evals, engine.unet_calls
    metric_seconds = 0.0
    cut_and_paste: dict[str, Any] = {}
    bar = tqdm(total=len(order), desc="tficon sweep", unit="cell", disable=not progress)
    position_of = {cell.index: position for position, cell in enumerate(order)}

    def begin(cell: SweepCell, session, first_in_lane: bool) -> dict:
        """Move ``session`` to ``cell``; returns what finish() needs."""
        changes = {f: getattr(cell.config, f) for f in _CONFIG_PARAMETERS}
        first_step = session.update(mask_or_box=cell.box, **changes)
        cell.first_step = 0 if first_in_lane else (cell.config.steps + 1 if first_step is None else first_step)
        cell.order = position_of[cell.index]
        return {"evals": session.stats["sample_evals"], "calls": session.stats["unet_calls"],
                "started": time.perf_counter(), "steps_seconds": sum(r.seconds for r in session.records)}  # fmt: skip

    def finish(cell: SweepCell, session, mark: dict, shared_calls: bool) -> None:
        nonlocal metric_seconds
        decoding = time.perf_counter()
        session.run()
        cell.image = session.result
        cell.sample_evals = session.stats["sample_evals"] - mark["evals"]
        # what the steps cost by their plans; the rest went into inversions
        step_evals = sum(p.sample_evals for p in session.plans[min(cell.first_step, cell.config.steps + 1):])
        cell.inversions_cached = cell.sample_evals == step_evals
        cell.unet_calls = session.stats["unet_calls"] - mark["calls"]
        if shared_calls:  # its share of the shared calls, and its own decode
            steps = sum(r.seconds for r in session.records[min(cell.first_step, len(session.records)):])
            cell.seconds = steps + time.perf_counter() - decoding
        else:
            cell.seconds = time.perf_counter() - mark["started"]
        if metrics:
            measured = time.perf_counter()
            key = _label("box", cell.box)
            if "box" in labels:
                key = labels["box"][cell.position[list(checked).index("box")]]
            cell.metrics, cp = _measure(session, cell.image, key in cut_and_paste)
            if cp is not None:
                cut_and_paste[key] = cp
            metric_seconds += time.perf_counter() - measured
        bar.set_postfix_str(cell.label(), refresh=False)
        bar.update(1)

    lanes = [order]
    if batch_cells is not None:
        from tficon.run.lockstep import MAX_ROWS_PER_CELL, auto_max_rows

        if batch_cells == "auto":
            latent = tuple(v // model.vae_scale_factor for v in session.image_size)
            slots = max(1, auto_max_rows(model, latent) // MAX_ROWS_PER_CELL)
            lanes = plan_lanes(order, slots, free_cuts_only=True)
        else:
            lanes = plan_lanes(order, batch_cells, free_cuts_only=False)
    if len(lanes) == 1:
        for position, cell in enumerate(order):
            mark = begin(cell, session, position == 0)
            finish(cell, session, mark, shared_calls=False)
    else:
        _run_lanes(lanes, session, begin, finish, threads=threads,
                   new_session=lambda cell: Session(model, i_bg, i_fg, foreground_mask, cell.box, prompt, cell.config,
                                                    image_size=image_size, engine=engine, threads=threads))  # fmt: skip
    bar.close()
    seconds = time.perf_counter() - started - metric_seconds
    result = SweepResult(
        grid=checked,
        cells=cells,
        inputs={"background": i_bg, "foreground": i_fg, "foreground_mask": foreground_mask, "prompt": prompt,
                "reference": io.to_pil(session.inputs.reference)},
        engine=engine,
        image_size=session.image_size,
        sample_evals=engine.sample_evals - engine_evals,
        unet_calls=engine.unet_calls - engine_calls,
        seconds=seconds,
        metrics_seconds=metric_seconds,
        independent_sample_evals=sum(independent_cost(c.config) for c in cells),
        cut_and_paste=cut_and_paste,
        value_labels=labels,
        lanes=len(lanes),
    )  # fmt: skip
    if out is not None:
        result.save(out)
    return result


def _run_lanes(lanes, session, begin, finish, *, threads, new_session) -> None:
    """Run the lanes of cells together (``tficon.run.lockstep``): lane 0 on ``session``, the others each on a Session of
    its own made by ``new_session`` (their inversions come from the engine's cache or are batched)."""
    from tficon.run.lockstep import MAX_ROWS_PER_CELL, run_lockstep

    current: dict[int, tuple] = {}

    def lane_sessions(cells, own):
        for i, cell in enumerate(cells):
            if own is None:
                own = new_session(cell)
            current[id(own)] = (cell, begin(cell, own, i == 0))
            yield own

    def finished(done) -> None:
        cell, mark = current.pop(id(done))
        finish(cell, done, mark, shared_calls=True)

    run_lockstep(
        lanes=[lane_sessions(cells, session if i == 0 else None) for i, cells in enumerate(lanes)],
        max_cells=len(lanes), max_rows=MAX_ROWS_PER_CELL * len(lanes), on_finished=finished, threads=threads,
    )  # fmt: skip


def _cell_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{n}={_label(n, v)}" for n, v in values.items())


def _measure(session, image: Image.Image, have_cut_and_paste: bool):
    """(the cell's metrics, the cut-and-paste's {"image", "metrics"} or None when ``have_cut_and_paste``)."""
    from tficon.eval.metrics import composition_metrics

    inputs, place = session.inputs, session.placement
    background, reference = io.to_pil(inputs.background), io.to_pil(inputs.reference)

    def measure(picture):
        return composition_metrics(picture, background, reference, place.target_window, place.ref_window)

    cp = None
    if not have_cut_and_paste:
        cp_image = io.to_pil(inputs.cut_and_paste)
        cp = {"image": cp_image, "metrics": measure(cp_image)}
    return measure(image), cp


# --------------------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------------------

_FONT = ImageFont.load_default()
_LINE = 12
_GAP = 4


def _thumb(image: Image.Image, side: int) -> Image.Image:
    from tficon.run.report import thumbnail

    return thumbnail(image, side)


def _panels(result: SweepResult):
    """[(heading, {(row, col): cell})] over the parameters after the first two."""
    names = result.names
    extra = names[2:]
    panels: dict[tuple, dict] = {}
    for cell in result.cells:
        key = cell.position[2:]
        rc = (cell.position[0], cell.position[1] if len(names) > 1 else 0)
        panels.setdefault(key, {})[rc] = cell
    out = []
    for key, cells in panels.items():
        heading = ", ".join(f"{n}={result.label_of(n, i)}" for n, i in zip(extra, key))
        out.append((heading, cells))
    return out


def _metric_caption(cell: SweepCell) -> str:
    bg, fg = cell.metrics.get("bg", {}), cell.metrics.get("fg", {})
    if not bg:
        return ""
    return f"bg {bg.get('psnr', float('nan')):.1f}  fg {fg.get('psnr', float('nan')):.1f} dB"


def _grid_image(result: SweepResult, *, thumb: int, metrics: bool) -> Image.Image:
    names = result.names
    row_name = names[0]
    col_name = names[1] if len(names) > 1 else None
    n_rows = len(result.grid[row_name])
    n_cols = len(result.grid[col_name]) if col_name else 1
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_labels = [f"{row_name}={result.label_of(row_name, i)}" for i in range(n_rows)]
    label_w = int(max(probe.textlength(t, font=_FONT) for t in row_labels)) + 8
    caption_h = _LINE + 2 if metrics else 0
    cell_w, cell_h = thumb + _GAP, thumb + caption_h + _GAP
    panels = _panels(result)
    header_h = _LINE + 4
    panel_h = (_LINE + 4 if len(names) > 2 else 0) + header_h + n_rows * cell_h
    inputs_h = thumb + _LINE + 8
    width = max(label_w + n_cols * cell_w, 4 * cell_w)
    title_h = 2 * _LINE + 4
    sheet = Image.new("RGB", (width, title_h + inputs_h + len(panels) * (panel_h + _GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    title = f"tficon sweep: {result.inputs['prompt']}"
    draw.text((2, 1), title, fill="black", font=_FONT)
    axes = f"rows: {row_name}" + (f"; columns: {col_name}" if col_name else "")
    work = (f"{result.sample_evals} UNet sample-evals ({100 * result.shared_fraction:.0f} % of "
            f"{result.independent_sample_evals} run one by one)")  # fmt: skip
    draw.text((2, 1 + _LINE), f"{axes}; {work}", fill=(70, 70, 70), font=_FONT)
    y = title_h
    cp = next(iter(result.cut_and_paste.values()), {}).get("image")
    strip = [("background", result.inputs["background"]), ("foreground", result.inputs["foreground"]),
             ("cut-and-paste", cp)]  # fmt: skip
    for i, (name, image) in enumerate(strip):
        draw.text((i * cell_w + 2, y), name, fill="black", font=_FONT)
        sheet.paste(_thumb(image, thumb), (i * cell_w, y + _LINE + 2))
    y += inputs_h
    for heading, cells in panels:
        if heading:
            draw.text((2, y + 2), heading, fill=(150, 30, 30), font=_FONT)
            y += _LINE + 4
        for c in range(n_cols):
            text = f"{col_name}={result.label_of(col_name, c)}" if col_name else ""
            draw.text((label_w + c * cell_w + 2, y + 1), text, fill="black", font=_FONT)
        y += header_h
        for r in range(n_rows):
            top = y + r * cell_h
            draw.text((2, top + thumb // 2 - _LINE // 2), row_labels[r], fill="black", font=_FONT)
            for c in range(n_cols):
                cell = cells.get((r, c))
                if cell is None:
                    continue
                left = label_w + c * cell_w
                sheet.paste(_thumb(cell.image, thumb), (left, top))
                if metrics:
                    draw.text((left + 1, top + thumb + 1), _metric_caption(cell), fill=(70, 70, 70), font=_FONT)
        y += n_rows * cell_h + _GAP
    return sheet


def _data_uri(image: Image.Image | None, side: int) -> str:
    buffer = _io.BytesIO()
    _thumb(image, side).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _html(result: SweepResult, *, thumb: int) -> str:
    e = html.escape
    names = result.names
    row_name, col_name = names[0], (names[1] if len(names) > 1 else None)
    n_cols = len(result.grid[col_name]) if col_name else 1
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tficon sweep: {e(result.inputs['prompt'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
        "margin:.8em 0}th,td{border:1px solid #ccc;padding:4px 6px;font-size:13px;vertical-align:top}"
        "th{background:#f2f2f2}img{display:block;image-rendering:pixelated}.m{color:#555;font-size:12px}</style>",
        "</head><body>",
        f"<h1>tficon sweep: {e(result.inputs['prompt'])}</h1>",
        f"<p>{e(result.describe())}. Metrics: background MSE/PSNR/SSIM with the target window blanked, foreground "
        "MSE/PSNR/SSIM of the window against the reference crop (PSNR in dB on [0, 1] images).</p>",
        "<table><tr>",
    ]
    strip = [("background", result.inputs["background"]), ("foreground", result.inputs["foreground"])]
    strip += [(f"cut-and-paste (box {k})", v["image"]) for k, v in result.cut_and_paste.items()]
    parts += [f"<td>{e(n)}<img src='{_data_uri(im, thumb)}' width='{thumb}' alt='{e(n)}'></td>" for n, im in strip]
    parts.append("</tr></table>")
    for heading, cells in _panels(result):
        if heading:
            parts.append(f"<h2>{e(heading)}</h2>")
        heads = "".join(f"<th>{e(f'{col_name}={result.label_of(col_name, c)}') if col_name else ''}</th>" for c in range(n_cols))
        parts.append(f"<table><tr><th>{e(row_name)} \\ {e(col_name or '')}</th>{heads}</tr>")
        for r in range(len(result.grid[row_name])):
            parts.append(f"<tr><th>{e(f'{row_name}={result.label_of(row_name, r)}')}</th>")
            for c in range(n_cols):
                cell = cells.get((r, c))
                if cell is None:
                    parts.append("<td></td>")
                    continue
                parts.append(
                    f"<td><img src='{_data_uri(cell.image, thumb)}' width='{thumb}' alt='{e(cell.label())}'>"
                    f"<div class='m'>{e(_metric_caption(cell))}<br>{cell.sample_evals} evals, from step "
                    f"{cell.first_step}</div></td>"
                )
            parts.append("</tr>")
        parts.append("</table>")
    rows = result.table()
    parts.append("<h2>Table</h2><table><tr>" + "".join(f"<th>{e(k)}</th>" for k in rows[0]) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{e(_cell_value(v))}</td>" for v in row.values()) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def _cell_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


#: ``tficon.sweep(...)``
sweep = run_sweep

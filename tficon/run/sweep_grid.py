"""A sweep's grid: the parameters it can vary, the grid checked and read from the command line, and its cells.

The axes are the settings marked ``sweep`` in ``tficon.core.config.SETTINGS``, plus ``box``; see
:mod:`tficon.run.sweeps` for how the cells are evaluated.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from tficon.core.boxes import as_user_box, parse_box_text
from tficon.core.config import INVALIDATES, SETTINGS, CompositionConfig
from tficon.core.presets import get_preset, preset_of, with_preset

__all__ = ["PARAMETERS", "GridError", "SweepCell", "parse_grid_option", "grid_cells"]

#: The settings a sweep can vary, ordered as they act on the composition (latest first: the plans' taus, then
#: guidance, then what changes the inversions; the order of their declaration within each of these).
_CONFIG_PARAMETERS = tuple(
    s.name for s in sorted((s for s in SETTINGS if s.sweep), key=lambda s: -INVALIDATES.index(s.invalidates))
)
#: The parameters a sweep can vary: those settings, the box, and the preset (``tficon.core.presets``: a cell follows
#: the named preset, the other axes override it).
PARAMETERS = (*_CONFIG_PARAMETERS, "box", "preset")

class GridError(ValueError):
    """A bad grid: an unknown parameter, no values, a repeated value, a value a cell cannot take."""


_METRIC_COLUMNS = ("bg_mse", "bg_psnr", "bg_ssim", "fg_mse", "fg_psnr", "fg_ssim")


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
        values = [_grid_box(b) if name == "box" else _grid_preset(b) if name == "preset" else b for b in values]
        if not values:
            raise GridError(f"grid[{name!r}] is empty: give at least one value")
        labels = [_label(name, v) for v in values]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise GridError(f"grid[{name!r}] repeats the value(s) {', '.join(repeated)}; give each value once")
        checked[name] = values
    return checked


def _grid_preset(name):
    """A preset of the grid, checked by name (``tficon.presets()`` lists them)."""
    try:
        get_preset(name)
    except ValueError as error:
        raise GridError(f"grid['preset']: {error}") from None
    return name


def _grid_box(value):
    """A box of the grid as four Python ints, checked as every box is (``tficon.core.boxes.as_user_box``); a mask
    as it is (the Session reads it)."""
    try:
        box = as_user_box(value, name="grid['box']")
    except ValueError as error:
        raise GridError(str(error)) from None
    return value if box is None else box


def _label(name: str, value) -> str:
    if name == "box":
        if as_user_box(value, name="grid['box']") is not None:
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


_SWITCH_WORDS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _switch(text: str) -> bool:
    try:
        return _SWITCH_WORDS[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


def parse_grid_option(text: str) -> tuple[str, list]:
    """One ``--grid`` option of the command line: ``name=v1,v2,...`` or ``name=start:stop:count`` (evenly spaced,
    both ends included); boxes as ``box=x,y,w,h;x,y,w,h``; ``guidance=official`` is the per-mode default; text
    settings as ``name=v1;v2`` (their values may hold commas, e.g. ``inject_layers=decoder;up_blocks.1,mid``);
    switches as ``name=off,on`` (or true/false, 1/0)."""
    name, sep, rest = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not rest.strip():
        raise GridError(f"--grid takes name=v1,v2,... (e.g. tau_b=0.5,0.7,0.9 or tau_a=0.2:0.6:5), got {text!r}")
    if name not in PARAMETERS:
        raise GridError(f"--grid: unknown sweep parameter {name!r}; a sweep can vary {', '.join(PARAMETERS)}")
    rest = rest.strip()
    if name == "preset":
        return name, [_grid_preset(v.strip()) for v in rest.split(",")]
    try:
        if name == "box":
            return name, [parse_box_text(part, name="--grid box") for part in rest.split(";")]
        default = CompositionConfig.__dataclass_fields__[name].default
        if isinstance(default, str):
            return name, [part.strip() for part in rest.split(";")]
        if isinstance(default, bool):  # a mechanism's switch: region_cross_attention=off,on
            return name, [_switch(v) for v in rest.split(",")]
        kind = int if isinstance(default, int) else float  # steps, seed, latent_norm_steps: integers
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
        setting = CompositionConfig.__dataclass_fields__.get(name)
        if name == "box":
            form = "box=x,y,w,h;x,y,w,h"
        elif setting is not None and isinstance(setting.default, bool):
            form = f"{name}=off,on"
        else:
            form = f"{name}=v1,v2,... or {name}=start:stop:count"
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
    of the shared calls plus its own decode. ``error``: why the cell failed (one line naming its values; no image
    then); ``resumed``: the cell was taken from the output folder of an earlier run, not computed by this one.
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
    error: str | None = None
    resumed: bool = False

    def label(self, names: Sequence[str] | None = None) -> str:
        names = list(self.values) if names is None else names
        return ", ".join(f"{n}={_label(n, self.values[n])}" for n in names)

    def row(self) -> dict[str, Any]:
        """A flat, JSON-safe row of the table."""
        flat = {f"{region}_{k}": v for region in ("bg", "fg") for k, v in self.metrics.get(region, {}).items()}
        return {
            "index": self.index,
            **{n: _label(n, v) if n == "box" else v for n, v in self.values.items()},
            # the preset axis' value, else the preset the cell's settings follow (None: none)
            "preset": self.values.get("preset", preset_of(self.config)),
            "guidance_used": self.config.effective_guidance,
            **{c: flat.get(c) for c in _METRIC_COLUMNS},
            "eval_order": self.order,
            "first_step": self.first_step,
            "inversions_cached": self.inversions_cached,
            "sample_evals": self.sample_evals,
            "unet_calls": self.unet_calls,
            "seconds": round(self.seconds, 4),
            "image": None if self.error else f"cells/cell_{self.index:03d}.png",
            "resumed": self.resumed,
        }


def _cell_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{n}={_label(n, v)}" for n, v in values.items())


def grid_cells(checked: dict[str, list], base: CompositionConfig, mask_or_box) -> list[SweepCell]:
    """Every cell of the checked grid in grid order (row-major), its settings checked before any model work;
    ``mask_or_box`` is the box of cells when ``box`` is not swept."""
    cells = []
    for index, combo in enumerate(itertools.product(*(range(len(v)) for v in checked.values()))):
        values = {name: checked[name][i] for name, i in zip(checked, combo)}
        changes = {n: v for n, v in values.items() if n in _CONFIG_PARAMETERS}
        try:
            cell_base = with_preset(base, values["preset"]) if "preset" in values else base
            cell_config = cell_base.replace(**changes)
        except (ValueError, TypeError) as error:
            raise GridError(f"grid cell {_cell_text(values)}: {error}") from None
        if cell_config.steps < cell_config.order:
            raise GridError(f"grid cell {_cell_text(values)}: steps ({cell_config.steps}) must be >= order ({cell_config.order})")
        cells.append(SweepCell(index, values, combo, cell_config, values.get("box", mask_or_box)))
    return cells

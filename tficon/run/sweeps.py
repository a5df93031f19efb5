"""Parameter sweeps over one sample that reuse work: ``tficon.sweep(...)`` and ``tficon sweep``.

A sweep is a grid over any of ``tau_a``, ``tau_b``, ``tau_bg``, ``guidance``, ``seed``, ``steps`` and ``box``
(the settings marked ``sweep`` in ``tficon.core.config.SETTINGS``, and the box)
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
(``tficon.composition.runner``). The evaluation order is cut into *lanes*, contiguous runs of cells that one Session walks
through with ``update`` as above, and the lanes advance together, one call per round holding a step of each
(:func:`plan_lanes`). A cut before a cell costs the steps it shares with the cell before (its lane recomputes them),
so ``"auto"`` cuts only where that is nothing (a new seed, guidance or box, or a tau that already changes step 0)
and only as many lanes as the memory budget holds; a number N allows up to N lanes and may also cut where steps
are shared, taking the cuts that make the costliest lane cheapest (a lane is added only when it does). Batched
cells equal the unbatched ones to float tolerance, not bitwise (another batch shape rounds differently); without
batching nothing changes.

Outputs (``out``, or :meth:`SweepResult.save`): ``grid.png`` (rows and columns labelled by their values, further
dimensions as stacked panels), ``cells.csv`` / ``cells.json`` (settings, metrics, work per cell) and a
self-contained ``index.html``; cell images under ``cells/``. With ``out`` each cell is saved as soon as it is done,
every file atomically, and ``cells.json`` (written after the files it vouches for, with their size and hash) says
which cells are done, failed or missing.

Faults: failure is per cell. A NaN or any other error in one cell (moving to it, composing, decoding, measuring or
saving it) marks that cell failed with a one-line reason naming its values (``SweepCell.error``,
``SweepResult.failed``, a labelled blank tile in the grid, the ``failed`` list of ``cells.json``); the other cells
go on. A re-run into the same folder with the same sample, model, settings and grid computes only the cells that
are missing or failed (``SweepCell.resumed`` marks the others); a sweep into a folder holding another sweep replaces
it whole (:mod:`tficon.run.sweep_files`). Ctrl-C raises :class:`SweepInterrupted`, whose message says how many
cells are saved; a write the folder refuses at the start or end raises :class:`SweepWriteError` (saving one cell
that fails only fails that cell).

Metrics per cell (``tficon.eval.metrics.composition_metrics``, docs/evaluation.md): background MSE/PSNR/SSIM with the
target window blanked, foreground MSE/PSNR/SSIM of the window against the reference crop; the cut-and-paste's
values for comparison.

The one-lane case is the same runner with one cell per call, so both paths are one code path.

Modules: :mod:`tficon.run.sweep_grid` (axes, grid, cells), :mod:`tficon.run.sweep_order` (evaluation order and
lanes), :mod:`tficon.run.sweep_result` (the result, drawn by :mod:`tficon.run.report`), :mod:`tficon.run.sweep_files`
(the output folder: resume, replace, the record); this module runs them.
"""

from __future__ import annotations

import os
import time
import warnings
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from PIL import Image
from tqdm.auto import tqdm

from tficon.composition.engine import Engine
from tficon.composition.runner import MAX_ROWS_PER_CELL, Task, auto_max_rows, check_count, run_tasks
from tficon.core import io
from tficon.core.config import CompositionConfig
from tficon.run.sweep_grid import PARAMETERS, GridError, SweepCell, _check_grid, _label, grid_cells, parse_grid_option
from tficon.run.sweep_order import evaluation_order, independent_cost, plan_lanes
from tficon.run.sweep_files import SweepFolder, inputs_fingerprint
from tficon.run.sweep_result import SweepResult

__all__ = [
    "PARAMETERS", "GridError", "SweepCell", "SweepInterrupted", "SweepResult", "SweepWriteError", "run_sweep", "parse_grid_option", "evaluation_order",
    "plan_lanes",
]  # fmt: skip


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
        out: a folder to write the outputs into, cell by cell (module docstring); an earlier run of the same sweep
            there is resumed, another sweep there replaced.
        metrics: compute per-cell metrics (pixel metrics of ``tficon.eval.metrics``).
        value_labels: names shown for a parameter's values instead of the values themselves (e.g. for masks).
        progress: a tqdm bar over the cells.
        batch_cells: None (default): one cell at a time, each bitwise a fresh Session's result. N: up to N lanes
            of cells share UNet calls; ``"auto"``: as many lanes as cost no shared steps and fit the memory budget
            (module docstring, :func:`plan_lanes`, ``tficon.composition.runner``). Results equal the unbatched ones to float
            tolerance. It is how cells are computed, not what they are: a re-run with another ``batch_cells`` resumes.

    Returns:
        a :class:`SweepResult` (cells that failed in ``failed``, each with its reason).

    Raises:
        SweepInterrupted: Ctrl-C; its message says how many cells are saved in ``out``.
        SweepWriteError: ``out`` could not be prepared or its grid, table, page or record written.
    """
    from tficon.composition.session import Session

    checked = _check_grid(grid)
    labels = _value_labels(value_labels, checked)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from tficon.model import load_model

        model = load_model(model)
    if engine is not None and engine.model is not model:
        raise ValueError("engine belongs to another model: pass engine.model as model, or no engine")
    base = (config or CompositionConfig()).replace(**config_changes)
    check_count(batch_cells, "batch_cells", auto=True, none=True)
    cells = grid_cells(checked, base, mask_or_box)  # every cell's settings, checked before any model work

    order = evaluation_order(cells)
    engine = engine if engine is not None else Engine(model)
    first = order[0]
    i_bg, i_fg = io.load_image(background, name="background"), io.load_image(foreground, name="foreground")
    inputs = {"background": i_bg, "foreground": i_fg, "foreground_mask": foreground_mask, "prompt": prompt}
    session = Session(
        model, i_bg, i_fg, foreground_mask, first.box, prompt, first.config,
        image_size=image_size, engine=engine, threads=threads,
    )  # fmt: skip
    _check_boxes(session, checked, labels, first.box)
    result = SweepResult(
        grid=checked, cells=cells, inputs=inputs | {"reference": io.to_pil(session.inputs.reference)}, engine=engine,
        image_size=session.image_size, sample_evals=0, unet_calls=0, seconds=0.0, metrics_seconds=0.0,
        independent_sample_evals=sum(independent_cost(c.config) for c in cells), value_labels=labels,
        fingerprint=inputs_fingerprint(model, inputs, mask_or_box, session.image_size, base, checked, labels, metrics),
    )  # fmt: skip
    folder = SweepFolder(out, result.fingerprint) if out is not None else None
    if folder is not None:
        try:  # cells an earlier run of this sweep saved are kept (resumed), any other sweep's files removed
            folder.open(cells)
        except OSError as error:
            raise SweepWriteError(f"cannot prepare the output folder {folder.out}: {_why(error)}") from None
    todo = [cell for cell in order if not cell.resumed]

    started = time.perf_counter()
    engine_evals, engine_calls = engine.sample_evals, engine.unet_calls
    lanes = _lanes(todo, batch_cells, session) if todo else []
    run = _SweepRun(session, result, folder, order, metrics=metrics, progress=progress, threads=threads)
    try:
        run.run(lanes)
        run.cut_and_paste_of_resumed_boxes()
    except KeyboardInterrupt:
        raise SweepInterrupted(_interrupted(folder, len(cells))) from None
    result.seconds = time.perf_counter() - started - run.metric_seconds
    result.sample_evals, result.unet_calls = engine.sample_evals - engine_evals, engine.unet_calls - engine_calls
    result.metrics_seconds, result.lanes = run.metric_seconds, len(lanes)
    if folder is not None:
        try:
            folder.finish(result)
        except KeyboardInterrupt:
            raise SweepInterrupted(_interrupted(folder, len(cells))) from None
        except OSError as error:
            raise SweepWriteError(
                f"{_why(error)}; {len(folder.saved)} of {len(cells)} cells are saved in {folder.out}: free space or "
                "fix the folder, then re-run the same sweep to resume"
            ) from None
    return result


class SweepWriteError(OSError):
    """The sweep's outputs could not be written (a full disk, a read-only folder); the message names the file and
    says how many cells are saved (a re-run of the same sweep resumes)."""


def _why(error: OSError) -> str:
    return f"could not write {error.filename}: {error.strerror}" if error.filename else str(error)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; its message says what is on disk (how many cells are saved, and that a re-run of the
    same sweep into the same folder resumes)."""


def _interrupted(folder, total: int) -> str:
    if folder is None:
        return "interrupted (Ctrl-C); nothing was written (no output folder)"
    return (f"interrupted (Ctrl-C); {len(folder.saved)} of {total} cells saved in {folder.out}; "
            "re-run the same sweep into it to resume")  # fmt: skip


def _value_labels(value_labels: Mapping[str, Sequence[str]] | None, checked: dict[str, list]) -> dict[str, list[str]]:
    labels = {}
    for name, names in (value_labels or {}).items():
        if name not in checked or len(names) != len(checked[name]):
            raise GridError(f"value_labels[{name!r}] must name each of the grid's {name} values")
        labels[name] = [str(n) for n in names]
    return labels


def _check_boxes(session, checked: dict[str, list], labels: dict[str, list[str]], first_box) -> None:
    """Every box of the grid must fit before anything runs (``update`` raises and changes nothing)."""
    if "box" not in checked:
        return
    for i, box in enumerate(checked["box"]):
        try:
            session.update(mask_or_box=box)
        except (ValueError, TypeError) as error:
            raise GridError(f"grid value box={labels.get('box', [None] * (i + 1))[i] or _label('box', box)}: {error}") from None
    session.update(mask_or_box=first_box)


def _lanes(order: list[SweepCell], batch_cells, session) -> list[list[SweepCell]]:
    """The evaluation order cut into lanes (module docstring): one lane without ``batch_cells``."""
    if batch_cells is None:
        return [order]
    if batch_cells == "auto":
        model = session.model
        slots = max(1, auto_max_rows(model, model.latent_shape(session.image_size)) // MAX_ROWS_PER_CELL)
        return plan_lanes(order, slots, free_cuts_only=True)
    return plan_lanes(order, batch_cells, free_cuts_only=False)


@dataclass(eq=False, kw_only=True)
class CellTask(Task):
    """A sweep cell on its way through the runner: the cell, and the Session's counters and clock when it moved
    to the cell (what the cell cost is measured from)."""

    cell: SweepCell
    evals: int
    calls: int
    started: float
    steps_seconds: float


class _SweepRun:
    """The cells of one sweep run through the runner: lane 0 on the sweep's Session, the others each on a Session of
    their own (their inversions come from the engine's cache or are batched); each cell measured and saved when it
    is done.

    Failure is per cell: an exception while moving a Session to a cell, composing it (a non-finite step, a failed
    inversion), decoding, measuring or saving it marks that cell failed with a one-line reason naming its values,
    and every other cell goes on. The next cell of a failed cell's lane starts on a fresh Session: the failed one
    kept only good steps, but a fresh one makes the next cell independent of whatever went wrong (it inverts again
    unless the engine's cache holds good inversions) and keeps ``first_step`` and the work counts true."""

    def __init__(self, session, result: SweepResult, folder, order, *, metrics: bool, progress: bool, threads):
        self.session, self.result, self.folder = session, result, folder
        self.checked, self.labels = result.grid, result.value_labels
        self.metrics, self.threads = metrics, threads
        self.position_of = {cell.index: position for position, cell in enumerate(order)}
        self.cut_and_paste: dict[str, Any] = result.cut_and_paste
        self.metric_seconds = 0.0
        self.shared_calls = False
        self.warned = False
        todo = sum(not cell.resumed for cell in order)
        self.bar = tqdm(total=todo, desc="tficon sweep", unit="cell", disable=not progress)

    def run(self, lanes: list[list[SweepCell]]) -> None:
        """One lane: one cell per call (each bitwise a fresh Session's result); several: the lanes share calls."""
        self.shared_calls = len(lanes) > 1
        try:
            if lanes:
                run_tasks(
                    lanes=[self.lane(cells, self.session if i == 0 else None) for i, cells in enumerate(lanes)],
                    max_cells=len(lanes), max_rows=MAX_ROWS_PER_CELL * len(lanes), on_finished=self.finish,
                    on_error=lambda task, error: self.fail(task.cell, error), threads=self.threads,
                )  # fmt: skip
        finally:
            self.bar.close()

    def lane(self, cells: list[SweepCell], session):
        """The lane's cells as tasks, one Session moved from each to the next (made for the first when None, and
        again after a cell that failed: class docstring)."""
        first = True
        for cell in cells:
            try:
                if session is None:
                    session, first = self.new_session(cell), True
                task = self.begin(cell, session, first_in_lane=first)
            except Exception as error:  # noqa: BLE001 - this cell fails, the lane goes on
                self.fail(cell, error)
                session = None
                continue
            yield task
            first = False
            if cell.error is not None:
                session = None

    def new_session(self, cell: SweepCell):
        from tficon.composition.session import Session

        s, i = self.session, self.result.inputs
        return Session(
            s.model, i["background"], i["foreground"], i["foreground_mask"], cell.box, i["prompt"], cell.config,
            image_size=s.image_size, engine=s.engine, threads=self.threads,
        )  # fmt: skip

    def begin(self, cell: SweepCell, session, *, first_in_lane: bool) -> CellTask:
        """Move ``session`` to ``cell`` (``Session.update`` keeps the steps the cells share)."""
        # every setting (not only the swept ones: a preset axis changes the settings its presets control)
        changes = {f.name: getattr(cell.config, f.name) for f in dataclasses.fields(cell.config)}
        first_step = session.update(mask_or_box=cell.box, **changes)
        cell.first_step = 0 if first_in_lane else (session.steps + 1 if first_step is None else first_step)
        cell.order = self.position_of[cell.index]
        return CellTask(
            session=session, cell=cell, evals=session.stats["sample_evals"], calls=session.stats["unet_calls"],
            started=time.perf_counter(), steps_seconds=sum(r.seconds for r in session.records),
        )  # fmt: skip

    def finish(self, task: CellTask) -> None:
        """The cell's Session is done: keep its image and what it cost, measure it and save it."""
        cell = task.cell
        try:
            self.keep(task)
        except Exception as error:  # noqa: BLE001 - e.g. a non-finite decode: this cell fails
            self.fail(cell, error)
            return
        if self.folder is not None:
            try:
                self.folder.save_cell(cell)
            except OSError as error:
                self.fail(cell, f"could not write {self.folder.image_path(cell)}: {error.strerror or error}")
                return
            self.write_record()
        self.bar.set_postfix_str(cell.label(), refresh=False)
        self.bar.update(1)

    def keep(self, task: CellTask) -> None:
        cell, session = task.cell, task.session
        decoding = time.perf_counter()
        cell.image = session.result
        cell.sample_evals = session.stats["sample_evals"] - task.evals
        # what the steps cost by their plans; the rest went into inversions
        step_evals = sum(p.sample_evals for p in session.plans[min(cell.first_step, session.steps + 1):])
        cell.inversions_cached = cell.sample_evals == step_evals
        cell.unet_calls = session.stats["unet_calls"] - task.calls
        if self.shared_calls:  # its share of the shared calls, and its own decode
            steps = sum(r.seconds for r in session.records[min(cell.first_step, len(session.records)):])
            cell.seconds = steps + time.perf_counter() - decoding
        else:
            cell.seconds = time.perf_counter() - task.started
        if self.metrics:
            self.measure(cell, session)

    def fail(self, cell: SweepCell, error: BaseException | str) -> None:
        """Mark ``cell`` failed with a one-line reason naming its values; drop any image of it."""
        reason = error if isinstance(error, str) else (str(error).strip().splitlines() or [type(error).__name__])[0]
        if not isinstance(error, str) and not isinstance(error, (ValueError, FloatingPointError, OSError)):
            reason = f"{type(error).__name__}: {reason}"
        cell.error = f"cell {cell.label()}: {reason}"
        cell.image, cell.metrics = None, {}
        if cell.order < 0:
            cell.order = self.position_of[cell.index]
        if self.folder is not None:
            self.folder.forget_cell(cell)
            self.write_record()
        self.bar.update(1)

    def write_record(self) -> None:
        """cells.json after each cell; if it cannot be written, say so once and go on (the end tries again)."""
        if not self.folder.write_record(self.result, complete=False) and not self.warned:
            self.warned = True
            warnings.warn(f"tficon sweep: {self.folder.record_error}; the sweep goes on", RuntimeWarning, stacklevel=2)

    def measure(self, cell: SweepCell, session) -> None:
        measured = time.perf_counter()
        key = self.box_key(cell)
        cell.metrics, cp = _measure(session, cell.image, key in self.cut_and_paste)
        if cp is not None:
            self.cut_and_paste[key] = cp
        self.metric_seconds += time.perf_counter() - measured

    def box_key(self, cell: SweepCell) -> str:
        if "box" in self.labels:
            return self.labels["box"][cell.position[list(self.checked).index("box")]]
        return _label("box", cell.box)

    def cut_and_paste_of_resumed_boxes(self) -> None:
        """The cut-and-paste of each box whose cells were all taken from the folder (no UNet work)."""
        if not self.metrics:
            return
        for cell in self.result.cells:
            key = self.box_key(cell)
            if cell.resumed and key not in self.cut_and_paste:
                self.session.update(mask_or_box=cell.box)
                self.cut_and_paste[key] = _measure(self.session, cell.image, False)[1]


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



#: ``tficon.sweep(...)``
sweep = run_sweep

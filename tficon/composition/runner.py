"""The one runner: Sessions advanced to their end, several of them sharing each UNet call.

Why: one composition step is a UNet call of only 2-5 rows, too small to keep a GPU busy and below the batch size at
which CPU kernels reach their per-row speed. Samples of a batch and independent cells of a sweep share nothing but
the model and the latent size, so their steps can share calls (:meth:`tficon.composition.engine.Engine.run_steps`).
``Session.run``, ``tficon batch`` and ``tficon.sweep`` all run their Sessions here; one Session per call
(``max_cells=1``) is the unbatched case of all three.

Tasks: the runner takes :class:`Task` objects, each one Session plus whatever its caller attaches (a batch's
sample and its record, a sweep's cell; callers subclass :class:`Task`). The callbacks receive the task, so a caller
never has to look its own context up by the Session's identity.

How: :func:`run_tasks` keeps up to ``max_cells`` tasks active. Each round it asks every active Session for its
next step's inputs (``Session.step_request``), computes all those steps with one ``run_steps`` call per (engine,
latent size) group and within the row budget, and hands each Session its record (``Session.accept_step``, so each
Session stores, counts and checks its own step, exactly as when it runs alone). A task that finishes frees its slot
for the next one. Sessions may be at different steps with different settings, boxes and prompts: each row carries
its own time and embedding and each cell's composite reads its own geometry. The inversions of Sessions joining in
the same round are batched too (:meth:`~tficon.composition.engine.Engine.prepare_inversions`; equal latents, e.g. a
background shared by several samples, are inverted once).

Results: one Session per call is ``Session.step``'s own path (the same request, the same ``run_steps`` call of one
cell, the same inversion), so it is bitwise what a Session gives alone. Several Sessions per call equal their own
runs to float tolerance, not bitwise, because kernels round differently for another batch shape (measured on the
tiny test models in float32: each step within a relative 1e-5, whole runs within a few 1e-6 of the latents' scale;
in float16/bfloat16 on the CPU the latents came out identical).

After the run every Session is as after ``Session.run()``: ``records``, ``result``, ``rewind`` and ``update`` work
as usual; its ``stats`` count its work as if it had run alone, the engine counts the calls and rows that really ran.

Budget: ``max_rows`` bounds the rows of one UNet call. ``"auto"`` (:func:`auto_max_rows`) estimates the activation
memory of one row from the UNet's configuration and the latent size (:func:`row_bytes`) and fits the rows into
half the free memory of a CUDA device, or :data:`CPU_BUDGET_BYTES` on a CPU, capped at :data:`ROW_CAPS` rows (on a
CPU the time per row stops falling at about 20 rows; measured with the toy model). ``max_cells`` (default
``max_rows // 5``, the most rows one step takes) is the number of tasks in flight.

Lanes: a lane is an iterable of tasks run one after another in one slot; the next one is taken only when the one
before has finished and ``on_finished`` has seen it. A sweep uses this to move one Session through a chain of cells
that share prefixes of steps (``tficon.run.sweeps``). Passing ``tasks`` instead makes every slot take the next task
from the one iterable (a queue).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from tficon.core.threads import torch_threads

__all__ = [
    "CPU_BUDGET_BYTES", "MAX_ROWS_PER_CELL", "ROW_CAPS", "RunStats", "Task", "auto_max_rows", "check_count",
    "row_bytes", "run_alone", "run_tasks",
]  # fmt: skip

#: The most rows one composition step puts into its main call (background, reference, pseudo-cross, uncond, cond).
MAX_ROWS_PER_CELL = 5
#: Activation memory the automatic budget may use on a CPU.
CPU_BUDGET_BYTES = 2 * 2**30
#: The most rows ``"auto"`` puts into one call, per device type (CPU: no gain per row past about 20 rows).
ROW_CAPS = {"cpu": 20, "cuda": 64}


def check_count(value, name: str, *, auto: bool = False, none: bool = False):
    """``value`` if it is a positive integer (or ``"auto"`` / None where allowed), else a ValueError naming ``name``.

    The one rule for every batch size of the runner and its callers (max_rows, max_cells, batch_samples,
    batch_cells)."""
    if (auto and value == "auto") or (none and value is None):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        choices = ["a positive integer"] + (["'auto'"] if auto else []) + (["None"] if none else [])
        allowed = ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def row_bytes(model, latent_size: tuple[int, int]) -> int:
    """A conservative estimate of the activation memory one batch row takes during a UNet call without gradients.

    A row holds the skip connections of the down path (``layers_per_block + 1`` tensors per level, ``channels x h x w``
    at that level) while the working set of the widest block, at full resolution, is alive: a transformer block's
    hidden states, queries, keys, values, the composite's concatenated queries and keys (up to three widths) and the
    feed-forward's 8x-wide projection; 24 tensors of ``channels_0 x h x w`` cover that. Times the UNet's element size.
    """
    if model.family_rules.joint_attention:  # an MM-DiT (SD3): its own estimate
        from tficon.composition.joint_attention import joint_row_bytes

        return joint_row_bytes(model, latent_size)
    config = model.unet.config
    channels = list(config.block_out_channels)
    per_block = config.layers_per_block
    per_block = list(per_block) if isinstance(per_block, (list, tuple)) else [per_block] * len(channels)
    h, w = latent_size
    skips = sum((n + 1) * c * math.ceil(h / 2**level) * math.ceil(w / 2**level)
                for level, (c, n) in enumerate(zip(channels, per_block)))  # fmt: skip
    working = 24 * channels[0] * h * w
    return (skips + working) * model.unet.dtype.itemsize


def auto_max_rows(model, latent_size: tuple[int, int], max_bytes: int | None = None) -> int:
    """Rows per UNet call that fit the memory budget (module docstring): ``max_bytes`` (default: half the free memory
    of a CUDA device, :data:`CPU_BUDGET_BYTES` on a CPU) over :func:`row_bytes`, at most :data:`ROW_CAPS` of the
    device type and at least one step's rows."""
    device = model.unet.device
    if max_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            max_bytes = free // 2
        else:
            max_bytes = CPU_BUDGET_BYTES
    cap = ROW_CAPS.get(device.type, ROW_CAPS["cpu"])
    return max(MAX_ROWS_PER_CELL, min(cap, max_bytes // row_bytes(model, latent_size)))


@dataclass
class RunStats:
    """What :func:`run_tasks` did: tasks finished and failed, rounds, the real UNet calls and rows (engine counts,
    inversions included), wall seconds, and the budget it ran with."""

    finished: int = 0
    failed: int = 0
    rounds: int = 0
    unet_calls: int = 0
    sample_evals: int = 0
    seconds: float = 0.0
    max_rows: int = 0
    max_cells: int = 0

    @property
    def rows_per_call(self) -> float:
        return self.sample_evals / self.unet_calls if self.unet_calls else 0.0


@dataclass(eq=False, kw_only=True)
class Task:
    """One Session to run, and what its caller attaches to it (subclass and add fields).

    ``until``: the step count at which the task is finished (default: all ``steps + 1`` steps).
    The runner sets ``request`` (the pending step's inputs) and ``lane`` (where the task came from) while it runs.
    """

    session: Any
    until: int | None = None
    request: tuple | None = None
    lane: Iterator | None = None

    @property
    def target(self) -> int:
        return self.session.steps + 1 if self.until is None else self.until

    @property
    def done(self) -> bool:
        return self.session.step_index >= self.target

    @property
    def group(self) -> tuple:
        """Tasks of one group can share a UNet call: the same engine and latent size."""
        session = self.session
        return (session.engine, session.model.latent_shape(session.image_size))


def run_alone(session, *, until: int | None = None, threads: int | None = None, on_step: Callable | None = None):
    """Run one Session to ``until`` steps (default: the end), one UNet call per step: the runner's one-Session case,
    bitwise ``Session.step`` repeated. Errors are raised."""
    return run_tasks([Task(session=session, until=until)], max_rows=MAX_ROWS_PER_CELL, max_cells=1,
                     threads=threads, on_step=on_step)  # fmt: skip


def run_tasks(
    tasks: Iterable[Task] | None = None,
    *,
    lanes: Sequence[Iterable[Task]] | None = None,
    max_rows: int | str = "auto",
    max_cells: int | None = None,
    max_bytes: int | None = None,
    on_finished: Callable[[Task], Any] | None = None,
    on_error: Callable[[Task, BaseException], Any] | None = None,
    on_step: Callable[[Task], Any] | None = None,
    threads: int | None = None,
    batch_inversions: bool = True,
) -> RunStats:
    """Run tasks to their end together, one UNet call per round for all of them (module docstring).

    Args:
        tasks: :class:`Task` objects (any iterable, consumed lazily: the next is made when a slot frees). Each
            Session is run from its current step (already inverted and partly run is fine) to ``task.target``.
        lanes: instead of ``tasks``, iterables run one after another per slot (module docstring).
        max_rows: rows per UNet call, or ``"auto"`` for :func:`auto_max_rows` of the first Session's model and
            latent size (with ``max_bytes``).
        max_cells: tasks in flight (default ``max(1, max_rows // 5)``); a round whose rows exceed ``max_rows``
            is split into several calls.
        on_finished: called with each task when it is done, before its slot takes the next one.
        on_error: called with (task, exception) when one fails (its inversion, a step, a non-finite value);
            the others go on, and a call that fails is retried one Session at a time to find the culprit. None:
            the first error is raised.
        on_step: called with a task after each step its Session kept.
        threads: torch's CPU threads for the run (None: as it is).
        batch_inversions: invert the Sessions joining in one round together (else each inverts on its own).

    Returns:
        a :class:`RunStats`.
    """
    if (tasks is None) == (lanes is None):
        raise ValueError("give either sessions (one queue) or lanes (a sequence of iterables), not both")
    check_count(max_rows, "max_rows", auto=True)
    check_count(max_cells, "max_cells", none=True)
    run = _Run(tasks, lanes, on_finished, on_error, on_step)
    try:
        with torch_threads(threads):
            run.loop(max_rows, max_cells, max_bytes, batch_inversions)
    finally:
        run.close()
    return run.stats


class _Run:
    """The state of one :func:`run_tasks` call: where tasks come from, the tasks in flight, the counts."""

    def __init__(self, tasks, lanes, on_finished, on_error, on_step):
        self.shared = iter(tasks) if tasks is not None else None
        self.waiting = [iter(lane) for lane in lanes] if lanes is not None else []
        self.on_finished, self.on_error, self.on_step = on_finished, on_error, on_step
        self.stats = RunStats()
        self.started = time.perf_counter()
        self.engines: dict[Any, tuple[int, int]] = {}  # engine -> its counters when the run first saw it
        self.active: list[Task] = []
        self.cells = 1

    # ------------------------------------------------------------------ the loop
    def loop(self, max_rows, max_cells, max_bytes, batch_inversions: bool) -> None:
        first = self.pull(None)
        if first is None:
            return
        rows = max_rows
        if rows == "auto":
            session = first.session
            rows = auto_max_rows(session.model, session.model.latent_shape(session.image_size), max_bytes)
        self.cells = max_cells if max_cells is not None else max(1, rows // MAX_ROWS_PER_CELL)
        self.stats.max_rows, self.stats.max_cells = rows, self.cells
        joining = self.refill([], [first])
        while joining or self.active:
            ready, failed = self.join(joining, batch_inversions)
            self.active += ready
            done = []
            if self.active:
                self.stats.rounds += 1
                done, failed_steps = self.round(rows)
                failed += failed_steps
                for task in done:
                    self.finish(task)
                self.active = [task for task in self.active if task not in done and task not in failed_steps]
            joining = self.refill(done + failed, [])

    def close(self) -> None:
        for engine, (calls, evals) in self.engines.items():
            self.stats.unet_calls += engine.unet_calls - calls
            self.stats.sample_evals += engine.sample_evals - evals
            engine.drop_prepared_inversions()
        self.stats.seconds = time.perf_counter() - self.started

    # ------------------------------------------------------------------ slots
    def pull(self, lane: Iterator | None) -> Task | None:
        """The next task of ``lane`` (then of the lanes not started yet, or the shared queue)."""
        while True:
            if lane is None:
                if self.shared is not None:
                    lane = self.shared
                elif self.waiting:
                    lane = self.waiting.pop(0)
                else:
                    return None
            task = next(lane, None)
            if task is None:
                if lane is self.shared:
                    return None
                lane = None
                continue
            task.lane = lane
            engine = task.session.engine
            if engine is not None and engine not in self.engines:
                self.engines[engine] = (engine.unet_calls, engine.sample_evals)
            if task.done:
                self.finish(task)
                continue
            return task

    def refill(self, ended: list[Task], joining: list[Task]) -> list[Task]:
        """The next task of each ended task's lane, then of any lane, until ``max_cells`` are in flight."""
        for task in ended:
            nxt = self.pull(task.lane if task.lane is not self.shared else None)
            if nxt is not None:
                joining.append(nxt)
        while len(self.active) + len(joining) < self.cells:  # lanes that ended leave room for the lanes waiting
            nxt = self.pull(None)
            if nxt is None:
                break
            joining.append(nxt)
        return joining

    def finish(self, task: Task) -> None:
        self.stats.finished += 1
        if self.on_finished is not None:
            self.on_finished(task)

    def fail(self, task: Task, error: BaseException) -> None:
        if self.on_error is None:
            raise error
        self.stats.failed += 1
        self.on_error(task, error)

    # ------------------------------------------------------------------ work
    def join(self, tasks: list[Task], batch_inversions: bool) -> tuple[list[Task], list[Task]]:
        """Invert (together, where they share engine, steps and order) and compose the start latent of the tasks
        that join; returns (those ready to step, those that failed)."""
        if batch_inversions:
            _prepare_inversions(tasks)
        ready, failed = [], []
        for task in tasks:
            try:
                task.session.compose_start()
            except Exception as error:  # noqa: BLE001
                self.fail(task, error)
                failed.append(task)
                continue
            ready.append(task)
        return ready, failed

    def round(self, max_rows: int) -> tuple[list[Task], list[Task]]:
        """One step of every active task; returns (finished, failed) tasks."""
        failed, asked = [], []
        for task in self.active:
            try:
                task.request = task.session.step_request()
            except Exception as error:  # noqa: BLE001
                self.fail(task, error)
                failed.append(task)
                continue
            asked.append(task)
        groups: dict[tuple, list[Task]] = {}
        for task in asked:
            groups.setdefault(task.group, []).append(task)
        for group in groups.values():
            for chunk in _chunks(group, max_rows):
                failed += self.step_chunk(chunk)
        done = [task for task in self.active if task not in failed and task.done]
        return done, failed

    def step_chunk(self, chunk: list[Task]) -> list[Task]:
        """One UNet call for the steps of ``chunk``; returns the tasks that failed."""
        failed = []
        try:
            records = chunk[0].session.engine.run_steps([task.request for task in chunk])
        except Exception as error:  # noqa: BLE001 - find the Session that fails by running each on its own
            if len(chunk) == 1:
                self.fail(chunk[0], error)
                return chunk
            for task in chunk:
                try:
                    task.session.step()
                    self.stepped(task)
                except Exception as own:  # noqa: BLE001
                    self.fail(task, own)
                    failed.append(task)
            return failed
        for task, record in zip(chunk, records):
            try:
                task.session.accept_step(record)
            except Exception as error:  # noqa: BLE001 - e.g. a non-finite step: the Session keeps its last good one
                self.fail(task, error)
                failed.append(task)
                continue
            self.stepped(task)
        return failed

    def stepped(self, task: Task) -> None:
        task.request = None
        if self.on_step is not None:
            self.on_step(task)


def _prepare_inversions(tasks: list[Task]) -> None:
    """Invert the latents of joining Sessions that share engine, steps and order in one batch (into the engine's
    prepared inversions, where each Session's own ``invert`` finds them)."""
    groups: dict[tuple, list[Task]] = {}
    for task in tasks:
        s = task.session
        if s.needs_inversion:
            groups.setdefault((s.engine, s.steps, s.config.order), []).append(task)
    for group in groups.values():
        if len(group) < 2:
            continue  # one Session inverts on its own, as it would alone (bitwise)
        requests = []
        for task in group:
            ids = task.session.time_ids
            try:
                ids = None if ids is None else [ids["background"], ids["reference"]]
                requests.append((list(task.session.encoded_latents()), ids))
            except Exception:  # noqa: BLE001 - that Session reports its error when it inverts
                pass
        if requests:
            s = group[0].session
            try:
                s.engine.prepare_inversions(
                    [r for r, _ in requests], s.steps, s.config.order, time_ids=[t for _, t in requests]
                )
            except Exception:  # noqa: BLE001 - each Session then inverts on its own (and reports its error)
                pass


def _chunks(group: list[Task], max_rows: int) -> list[list[Task]]:
    """``group`` split in order into calls of at most ``max_rows`` main rows (at least one task each)."""
    chunks, current, used = [], [], 0
    for task in group:
        rows = task.request[0].batch_size
        if current and used + rows > max_rows:
            chunks.append(current)
            current, used = [], 0
        current.append(task)
        used += rows
    if current:
        chunks.append(current)
    return chunks

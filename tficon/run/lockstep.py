"""Several Sessions advanced together: each round, one UNet call holds the rows of all of them.

Why: one composition step is a UNet call of only 2-5 rows, too small to keep a GPU busy and below the batch size at
which CPU kernels reach their per-row speed. Samples of a batch and independent cells of a sweep share nothing but
the model and the latent size, so their steps can share calls (:meth:`tficon.composition.engine.Engine.run_steps`).

How: :func:`run_lockstep` keeps up to ``max_cells`` Sessions active. Each round it asks every active Session for
its next step's inputs (``Session.step_request``), computes all those steps with one ``run_steps`` call per
(engine, latent size) group and within the row budget, and hands each Session its record
(``Session.accept_step``, so each Session stores, counts and checks its own step, exactly as when it runs alone). A Session that finishes frees its slot for the
next one. Sessions may be at different steps with different settings, boxes and prompts: each row carries its
own time and embedding and each cell's composite reads its own geometry. The inversions of Sessions joining in the
same round are batched too (:meth:`~tficon.composition.engine.Engine.prepare_inversions`; equal latents, e.g. a background
shared by several samples, are inverted once).

Results: equal to each Session's own run to float tolerance, not bitwise, because kernels round differently for
another batch shape (measured on the tiny test models in float32: each step within a relative 1e-5, whole runs
within a few 1e-6 of the latents' scale; in float16/bfloat16 on the CPU the latents came out identical). One
Session per call is the solo path itself, bitwise; so is every path that does not batch.

After the run every Session is as after ``Session.run()``: ``records``, ``result``, ``rewind`` and ``update`` work as usual; its ``stats`` count its work as if
it had run alone, the engine counts the calls and rows that really ran.

Budget: ``max_rows`` bounds the rows of one UNet call. ``"auto"`` (:func:`auto_max_rows`) estimates the activation
memory of one row from the UNet's configuration and the latent size (:func:`row_bytes`) and fits the rows into
half the free memory of a CUDA device, or :data:`CPU_BUDGET_BYTES` on a CPU, capped at :data:`ROW_CAPS` rows (on a
CPU the time per row stops falling at about 20 rows; measured with the toy model). ``max_cells`` (default
``max_rows // 5``, the most rows one step takes) is the number of Sessions in flight.

Lanes: a lane is an iterable of Sessions run one after another in one slot; the next one is taken only when the
one before has finished and ``on_finished`` has seen it. A sweep uses this to move one Session through a chain of
cells that share prefixes of steps (``tficon.run.sweeps``). Passing ``sessions`` instead makes every slot take the next
Session from the one iterable (a queue).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from tficon.core.threads import torch_threads

__all__ = ["CPU_BUDGET_BYTES", "ROW_CAPS", "LockstepStats", "auto_max_rows", "row_bytes", "run_lockstep"]

#: The most rows one composition step puts into its main call (background, reference, pseudo-cross, uncond, cond).
MAX_ROWS_PER_CELL = 5
#: Activation memory the automatic budget may use on a CPU.
CPU_BUDGET_BYTES = 2 * 2**30
#: The most rows ``"auto"`` puts into one call, per device type (CPU: no gain per row past about 20 rows).
ROW_CAPS = {"cpu": 20, "cuda": 64}


def check_count(value, name: str, *, auto: bool = False, none: bool = False):
    """``value`` if it is a positive integer (or ``"auto"`` / None where allowed), else a ValueError naming ``name``.

    The one rule for every batch size of the lockstep runner and its callers (max_rows, max_cells, batch_samples,
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
class LockstepStats:
    """What :func:`run_lockstep` did: Sessions finished and failed, rounds, the real UNet calls and rows (engine
    counts, inversions included), wall seconds, and the budget it ran with."""

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


class _Slot:
    """One Session in flight and the lane it came from."""

    def __init__(self, lane: Iterator, session):
        self.lane, self.session = lane, session


def _latent_shape(session) -> tuple[int, ...]:
    f = session.model.vae_scale_factor
    return (session.model.latent_channels, session.image_size[0] // f, session.image_size[1] // f)


def run_lockstep(
    sessions: Iterable | None = None,
    *,
    lanes: Sequence[Iterable] | None = None,
    max_rows: int | str = "auto",
    max_cells: int | None = None,
    max_bytes: int | None = None,
    on_finished: Callable | None = None,
    on_error: Callable | None = None,
    threads: int | None = None,
    batch_inversions: bool = True,
) -> LockstepStats:
    """Run Sessions to the end together, one UNet call per round for all of them (module docstring).

    Args:
        sessions: Sessions to run (any iterable, consumed lazily: the next is created when a slot frees). Each is
            run from its current step (already inverted and partly run is fine) to the end.
        lanes: instead of ``sessions``, iterables run one after another per slot (module docstring).
        max_rows: rows per UNet call, or ``"auto"`` for :func:`auto_max_rows` of the first Session's model and
            latent size (with ``max_bytes``).
        max_cells: Sessions in flight (default ``max(1, max_rows // 5)``); a round whose rows exceed ``max_rows``
            is split into several calls.
        on_finished: called with each Session when it is done, before its slot takes the next one.
        on_error: called with (Session, exception) when one fails (its inversion, a step, a non-finite value);
            the others go on, and a call that fails is retried one Session at a time to find the culprit. None:
            the first error is raised.
        threads: torch's CPU threads for the run (None: as it is).
        batch_inversions: invert the Sessions joining in one round together (else each inverts on its own).

    Returns:
        a :class:`LockstepStats`.
    """
    if (sessions is None) == (lanes is None):
        raise ValueError("give either sessions (one queue) or lanes (a sequence of iterables), not both")
    check_count(max_rows, "max_rows", auto=True)
    check_count(max_cells, "max_cells", none=True)
    started = time.perf_counter()
    shared = iter(sessions) if sessions is not None else None
    waiting = [iter(lane) for lane in lanes] if lanes is not None else []
    stats = LockstepStats()
    engines: dict[int, object] = {}
    counted: dict[int, tuple[int, int]] = {}
    active: list[_Slot] = []

    def fail(session, error: BaseException) -> None:
        if on_error is None:
            raise error
        stats.failed += 1
        on_error(session, error)

    def pull(lane: Iterator | None) -> _Slot | None:
        """The next Session of ``lane`` (then of the lanes not started yet, or the shared queue)."""
        while True:
            if lane is None:
                if shared is not None:
                    lane = shared
                elif waiting:
                    lane = waiting.pop(0)
                else:
                    return None
            session = next(lane, None)
            if session is None:
                if lane is shared:
                    return None
                lane = None
                continue
            if session.engine is not None and id(session.engine) not in engines:
                engines[id(session.engine)] = session.engine
                counted[id(session.engine)] = (session.engine.unet_calls, session.engine.sample_evals)
            if session.done:
                _finish(_Slot(lane, session))
                continue
            return _Slot(lane, session)

    def _finish(slot: _Slot) -> None:
        stats.finished += 1
        if on_finished is not None:
            on_finished(slot.session)

    def refill(ended: list[_Slot], joining: list[_Slot]) -> None:
        """The next Session of each ended slot's lane, then of any lane, until ``max_cells`` are in flight."""
        for slot in ended:
            nxt = pull(slot.lane if slot.lane is not shared else None)
            if nxt is not None:
                joining.append(nxt)
        while len(active) + len(joining) < cells:  # lanes that ended leave room for the lanes waiting
            nxt = pull(None)
            if nxt is None:
                break
            joining.append(nxt)

    try:
        with torch_threads(threads):
            first = pull(None)
            if first is None:
                return stats
            rows = max_rows
            if rows == "auto":
                rows = auto_max_rows(first.session.model, _latent_shape(first.session)[1:], max_bytes)
            cells = max_cells if max_cells is not None else max(1, rows // MAX_ROWS_PER_CELL)
            stats.max_rows, stats.max_cells = rows, cells
            joining = [first]
            refill([], joining)
            while joining or active:
                ready, failed = _join(joining, batch_inversions, fail)
                active += ready
                joining = []
                done = []
                if active:
                    stats.rounds += 1
                    done, failed_steps = _round(active, rows, fail)
                    failed += failed_steps
                    for slot in done:
                        _finish(slot)
                    for slot in done + failed_steps:
                        active.remove(slot)
                refill(done + failed, joining)
    finally:
        for key, engine in engines.items():
            calls, evals = counted[key]
            stats.unet_calls += engine.unet_calls - calls
            stats.sample_evals += engine.sample_evals - evals
            engine.drop_prepared_inversions()
        stats.seconds = time.perf_counter() - started
    return stats


def _join(slots: list[_Slot], batch_inversions: bool, fail) -> tuple[list[_Slot], list[_Slot]]:
    """Invert (together, where they share engine, steps and order) and compose the start latent of Sessions that
    join; returns (those ready to step, those that failed)."""
    if batch_inversions:
        groups: dict[tuple, list[_Slot]] = {}
        for slot in slots:
            s = slot.session
            if s.needs_inversion:
                groups.setdefault((id(s.engine), s.steps, s.config.order), []).append(slot)
        for group in groups.values():
            if len(group) < 2:
                continue  # one Session inverts on its own, as it would alone (bitwise)
            requests = []
            for slot in group:
                ids = slot.session.time_ids
                try:
                    ids = None if ids is None else [ids["background"], ids["reference"]]
                    requests.append((list(slot.session.encoded_latents()), ids))
                except Exception:  # noqa: BLE001 - that Session reports its error when it inverts below
                    pass
            if requests:
                s = group[0].session
                try:
                    s.engine.prepare_inversions(
                        [r for r, _ in requests], s.steps, s.config.order, time_ids=[t for _, t in requests]
                    )
                except Exception:  # noqa: BLE001 - each Session then inverts on its own (and reports its error)
                    pass
    ready, failed = [], []
    for slot in slots:
        try:
            slot.session.compose_start()
        except Exception as error:  # noqa: BLE001
            fail(slot.session, error)
            failed.append(slot)
            continue
        ready.append(slot)
    return ready, failed


def _round(active: list[_Slot], max_rows: int, fail) -> tuple[list[_Slot], list[_Slot]]:
    """One step of every active Session; returns (finished, failed) slots."""
    requests, failed = {}, []
    for slot in active:
        try:
            requests[id(slot)] = slot.session.step_request()
        except Exception as error:  # noqa: BLE001
            fail(slot.session, error)
            failed.append(slot)
    groups: dict[tuple, list[_Slot]] = {}
    for slot in active:
        if id(slot) in requests:
            groups.setdefault((id(slot.session.engine), _latent_shape(slot.session)), []).append(slot)
    for group in groups.values():
        for chunk in _chunks(group, requests, max_rows):
            engine = chunk[0].session.engine
            try:
                records = engine.run_steps([requests[id(slot)] for slot in chunk])
            except Exception as error:  # noqa: BLE001 - find the Session that fails by running each on its own
                if len(chunk) == 1:
                    fail(chunk[0].session, error)
                    failed.append(chunk[0])
                    continue
                for slot in chunk:
                    try:
                        slot.session.step()
                    except Exception as own:  # noqa: BLE001
                        fail(slot.session, own)
                        failed.append(slot)
                continue
            for slot, record in zip(chunk, records):
                try:
                    slot.session.accept_step(record)
                except Exception as error:  # noqa: BLE001 - e.g. a non-finite step: the Session keeps its last good one
                    fail(slot.session, error)
                    failed.append(slot)
    done = [slot for slot in active if slot not in failed and slot.session.done]
    return done, failed


def _chunks(group: list[_Slot], requests: dict, max_rows: int) -> list[list[_Slot]]:
    """``group`` split in order into calls of at most ``max_rows`` main rows (at least one Session each)."""
    chunks, current, used = [], [], 0
    for slot in group:
        rows = requests[id(slot)][0].batch_size
        if current and used + rows > max_rows:
            chunks.append(current)
            current, used = [], 0
        current.append(slot)
        used += rows
    if current:
        chunks.append(current)
    return chunks

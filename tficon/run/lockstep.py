"""Several Sessions advanced together, one UNet call per round for all of them: :func:`run_lockstep`.

The Session-level face of the one runner (:mod:`tficon.composition.runner`, whose docstring explains the rounds, the row
budget, lanes and why batched results equal the solo ones to float tolerance while one Session per call is bitwise
the solo path). Here the items are plain Sessions and the callbacks receive Sessions; callers that attach context
to each Session (the batch, the sweep) use :func:`tficon.composition.runner.run_tasks` with their own tasks instead.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from tficon.composition.runner import (
    CPU_BUDGET_BYTES,
    MAX_ROWS_PER_CELL,
    ROW_CAPS,
    RunStats,
    Task,
    auto_max_rows,
    check_count,
    row_bytes,
    run_tasks,
)

__all__ = ["CPU_BUDGET_BYTES", "ROW_CAPS", "LockstepStats", "auto_max_rows", "row_bytes", "run_lockstep"]
__all__ += ["MAX_ROWS_PER_CELL", "check_count"]

#: What :func:`run_lockstep` returns (the runner's :class:`~tficon.composition.runner.RunStats`).
LockstepStats = RunStats


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
) -> RunStats:
    """Run Sessions to the end together, one UNet call per round for all of them (:mod:`tficon.composition.runner`).

    Args:
        sessions: Sessions to run (any iterable, consumed lazily: the next is created when a slot frees). Each is
            run from its current step (already inverted and partly run is fine) to the end.
        lanes: instead of ``sessions``, iterables of Sessions run one after another per slot.
        max_rows, max_cells, max_bytes, threads, batch_inversions: as for :func:`~tficon.composition.runner.run_tasks`.
        on_finished: called with each Session when it is done, before its slot takes the next one.
        on_error: called with (Session, exception) when one fails; the others go on. None: the first error is raised.

    Returns:
        a :class:`LockstepStats`.
    """

    def tasks(items):
        return (Task(session=session) for session in items)

    return run_tasks(
        None if sessions is None else tasks(sessions),
        lanes=None if lanes is None else [tasks(lane) for lane in lanes],
        max_rows=max_rows,
        max_cells=max_cells,
        max_bytes=max_bytes,
        on_finished=None if on_finished is None else (lambda task: on_finished(task.session)),
        on_error=None if on_error is None else (lambda task, error: on_error(task.session, error)),
        threads=threads,
        batch_inversions=batch_inversions,
    )

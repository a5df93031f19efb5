"""The order a sweep evaluates its cells in, and how it cuts that order into lanes that share UNet calls.

Why this order shares the most work, and what a cut costs: :mod:`tficon.run.sweeps`.
"""

from __future__ import annotations

from typing import Sequence

from tficon.core.boxes import same_box
from tficon.core.config import CompositionConfig
from tficon.core.plan import composition_steps, plans_for
from tficon.run.sweep_grid import SweepCell

__all__ = ["independent_cost", "evaluation_order", "plan_lanes"]


def independent_cost(config: CompositionConfig) -> int:
    """UNet sample-evaluations of one fresh composition with ``config``: both inversions (one two-row call per step)
    plus every step's plan."""
    return 2 * composition_steps(config) + sum(p.sample_evals for p in plans_for(config))


def evaluation_order(cells: Sequence[SweepCell]) -> list[SweepCell]:
    """The order that shares the most work (module docstring): grouped by steps, seed, box and guidance (in their
    grid order), then within a group in lexicographic order of the cells' step-plan sequences."""
    symbols: dict = {}
    boxes: list = []

    def box_index(box) -> int:
        for i, b in enumerate(boxes):
            if same_box(b, box):
                return i
        boxes.append(box)
        return len(boxes) - 1

    def key(cell: SweepCell):
        c = cell.config
        path = tuple(symbols.setdefault(p, len(symbols)) for p in plans_for(c))
        return (c.steps, c.later_start, c.seed, box_index(cell.box), c.effective_guidance, path)

    keys = {cell.index: key(cell) for cell in cells}
    return sorted(cells, key=lambda cell: keys[cell.index])


def _shared_steps(previous: SweepCell | None, cell: SweepCell) -> tuple[int, bool]:
    """(steps ``cell`` shares with ``previous`` when one Session moves from one to the other, whether it needs new
    inversions), by the rules of ``Session.update``."""
    if previous is None:
        return 0, True
    a, b = previous.config, cell.config
    # the settings of the "latents" level (a later start too: inversions that stop elsewhere), and the box
    new_inversions = (a.steps, a.seed, a.later_start) != (b.steps, b.seed, b.later_start) or not same_box(
        previous.box, cell.box
    )
    if new_inversions or a.effective_guidance != b.effective_guidance:
        return 0, new_inversions
    plans_a, plans_b = plans_for(a), plans_for(b)
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
        plans = plans_for(cell.config)
        inversions = 2 * composition_steps(cell.config) if new_inversions else 0
        marginal.append(sum(p.sample_evals for p in plans[shared:]) + inversions)
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


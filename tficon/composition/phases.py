"""The named phases of one composition step: what happens before the denoiser, which rows go into its call, and
what happens after it. The denoiser call itself stays in the engine (``tficon.composition.engine``, the one door to
the UNet), which drives the phases in this order for each cell (one Session's step):

1. ``warm_up``: background and reference evaluated on their own and moved one grid point ahead, one denoiser call
   per depth (``plan.pre_evals``: step 0 of the official warm-up). :func:`warm_up_rows`, :func:`warm_up_update`.
2. ``before_denoiser``: the operations of :attr:`StepPhases.before_denoiser`, by default ``(advance,
   latent_normalization)``: the solver update moving each branch the plan names from t_{s-1} to t_s
   (``plan.advance_*``), then TALE's normalisation of the object region's latent where the plan asks for it
   (``plan.latent_norm``, off officially).
3. ``rows``: :func:`add_rows`, the rows of the batched call and the composite-attention layout
   (``plan.background_row``, ``reference_row``, ``pseudo_cross_row``, ``fg``, ``bg``, ``background_queries``,
   ``inject_layers``, ``region_cross_attention``; TIGIC's ``prompted_branches``, ``mix_background``,
   ``mix_reference``).
4. ``denoiser``: one batched UNet call holding every cell's rows (``plan.evaluate``). In the engine, not here.
5. ``after_denoiser``: the operations of :attr:`StepPhases.after_denoiser`, by default ``(record_evaluations,
   guidance, history_blend, adaptive_blend, blend)``: keep the helper rows' evaluations, combine the CFG rows into
   the generation branch's evaluation, then the blends (``plan.history_blend``, ``plan.adaptive_blend``,
   ``plan.blend``).

:data:`STEP_ORDER` names this order; ``Engine.run_steps`` follows it. The solver update comes first because a plan's
step ``s`` leaves the generation branch at grid index ``s`` (``tficon.core.plan``): it starts by moving to ``t_s``
with the evaluations of the step before, then evaluates at ``t_s``, then blends.

Every operation reads the step's :class:`~tficon.core.plan.StepPlan` and its explicit inputs, never the
configuration: the plan is where settings become decisions, the phases only execute them. An operation is a function
``operation(state, door)`` of the cell's :class:`StepState` (which it may change) and the engine (``door.schedule``,
``door.data_prediction``); it returns nothing and does nothing when its plan flag is off.

Adding a composition strategy (for example a normalisation of the object region's latent) touches three files:

1. **A setting**: a ``CompositionConfig`` field declared with ``setting(...)`` in ``tficon/core/config.py``
   (``invalidates="plans"`` when it changes what steps do, so ``Session.update`` recomputes from the first step whose
   plan differs). The CLI, sweeps and the Explorer list it from that declaration.
2. **A plan flag**: a ``StepPlan`` field in ``tficon/core/plan.py``, decided in ``step_plan`` (which steps it
   applies to) and passed from the config in ``plans_for``.
3. **An operation**: a function here that reads the flag, added to the tuple of the one phase it belongs to in
   :class:`StepPhases` (before the rows are taken: ``before_denoiser``; after the call: ``after_denoiser``).

plus its test (the strategy runs at the steps its plan flag names; with the switch off, results are bitwise
unchanged) and a line in the docs. The engine does not change. To try an operation without editing this module,
give an engine other phases: ``engine.phases = Engine.phases.with_operation("after_denoiser", op)`` (or set
``phases`` on a subclass of ``Engine``); docs/architecture.md has the same recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import torch

from tficon.composition.attention import BatchLayout, InjectionController
from tficon.composition.attention_masks import adaptive_blend_mask, attention_heat
from tficon.composition.cross_attention import CrossAttentionRecord
from tficon.composition.latent_norm import adaptive_latent_normalization
from tficon.core import primecomposer, solver
from tficon.core.plan import StepPlan
from tficon.model.families import Family, conditioning_digest

if TYPE_CHECKING:  # annotations only: the engine imports this module
    from tficon.composition.engine import Row, StepInputs, Track

__all__ = [
    "STEP_ORDER",
    "Door",
    "Operation",
    "Rows",
    "StepPhases",
    "StepState",
    "adaptive_blend",
    "add_rows",
    "advance",
    "branch_embeddings",
    "blend",
    "guidance",
    "history_blend",
    "hold_object",
    "kept_blend",
    "kept_history_blend",
    "latent_normalization",
    "paste_on_reference",
    "record_evaluations",
    "warm_up_rows",
    "warm_up_update",
    "with_history",
    "with_latent",
]

#: The phases of one step, in the order the engine runs them (module docstring).
STEP_ORDER = ("warm_up", "before_denoiser", "rows", "denoiser", "after_denoiser")


class Door(Protocol):
    """What operations may use of the engine: its noise schedule, the conversion of raw outputs to D, the
    model's family (which attaches each branch's extra conditioning to a row) and the layer names a plan's
    ``inject_layers`` selects (None: all)."""

    schedule: solver.NoiseSchedule
    family: Family

    def data_prediction(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def injected_layers(self, spec: str) -> frozenset[str] | None: ...


@dataclass
class StepState:
    """One cell's step in progress: its branches' trajectories as the phases move them, the main call's rows and
    output (``layout``, ``output``: set by the engine around the denoiser call), and the work counted for its
    record. The engine makes it from the record before (``begin``) and turns it into the next ``StepRecord``."""

    plan: StepPlan
    inputs: StepInputs
    generation: Track
    background: Track
    reference: Track
    reference_latents: tuple[torch.Tensor, ...]  # x_reference at grid indices 0, 1, ...
    calls: int = 0
    evals: int = 0
    attention: dict = field(default_factory=dict)
    layout: BatchLayout | None = None  # this cell's rows in the main call (absolute row indices)
    output: torch.Tensor | None = None  # the main call's raw float32 outputs, all rows
    # the main call's record of the object words' cross-attention (``plan.adaptive_blend``), filled by the call
    object_attention: CrossAttentionRecord | None = None
    blend_mask: torch.Tensor | None = None  # the adaptive blend's mask (True: generation kept), for the record


Operation = Callable[[StepState, Door], None]


def with_latent(track: Track, x: torch.Tensor) -> Track:
    """``track`` with its latent replaced by ``x`` (time, history and evaluation flag kept)."""
    state = track.state
    return dataclasses.replace(track, state=solver.SolverState(x, state.t, state.t_hist, state.d_hist))


def with_history(track: Track, d_hist: tuple[torch.Tensor, ...]) -> Track:
    """``track`` with its stored data predictions replaced by ``d_hist`` (an evaluated trajectory)."""
    state = track.state
    return dataclasses.replace(track, state=solver.SolverState(state.x, state.t, state.t_hist, d_hist), evaluated=True)


# ---------------------------------------------------------------------------------------------------- warm_up
def branch_embeddings(state: StepState) -> tuple[object, object]:
    """The text conditioning of the background and reference rows: the exceptional prompt e* (TF-ICON), or with
    ``plan.prompted_branches`` (TIGIC's released code) the empty prompt and the prompt."""
    inputs = state.inputs
    if state.plan.prompted_branches:
        return inputs.uncond, inputs.cond
    return inputs.exceptional, inputs.exceptional


def warm_up_rows(state: StepState, depth: int, batch: Rows, door: Door) -> tuple[int, int]:
    """Add the background and reference rows at ``plan.pre_evals[depth]`` to ``batch``; returns their indices."""
    j, inputs = state.plan.pre_evals[depth], state.inputs
    e_background, e_reference = branch_embeddings(state)
    grid, family = inputs.grid, door.family
    background = inputs.conditioning(e_background, "background", family)
    b = batch.add((state.background.x, grid[j], background), shareable=True)
    r = batch.add((state.reference.x, grid[j], inputs.conditioning(e_reference, "reference", family)), shareable=True)
    return b, r


def warm_up_update(state: StepState, depth: int, out: torch.Tensor, rows: tuple[int, int], door: Door) -> None:
    """Record the two rows' evaluations at ``t_j`` and move background and reference to ``t_{j+1}``."""
    j, grid, schedule = state.plan.pre_evals[depth], state.inputs.grid, door.schedule
    b, r = rows
    background = state.background.with_evaluation(door.data_prediction(out[b : b + 1], state.background.x, grid[j]))
    reference = state.reference.with_evaluation(door.data_prediction(out[r : r + 1], state.reference.x, grid[j]))
    order = solver.step_order(j + 1, state.inputs.steps, state.inputs.order)
    state.background = background.advance(j + 1, order, schedule, grid)
    state.reference = reference.advance(j + 1, order, schedule, grid)
    state.reference_latents = state.reference_latents + (state.reference.x,)


# ---------------------------------------------------------------------------------------------------- before_denoiser
def advance(state: StepState, door: Door) -> None:
    """The solver update: move the branches the plan names (``plan.advance_*``) from t_{s-1} to t_s."""
    plan, grid, s, schedule = state.plan, state.inputs.grid, state.plan.s, door.schedule
    if plan.advance_generation:
        state.generation = state.generation.advance(s, plan.order, schedule, grid)
    if plan.advance_background:
        state.background = state.background.advance(s, plan.order, schedule, grid)
    if plan.advance_reference:
        state.reference = state.reference.advance(s, plan.order, schedule, grid)
        state.reference_latents = state.reference_latents + (state.reference.x,)


def paste_on_reference(state: StepState, door: Door) -> None:
    """PrimeComposer's correlation-diffuser canvas (``plan.paste_on_reference``), before the solver update: the
    reference record at t_s takes the generation's latent, still at t_{s-1}, on the object
    (``tficon.core.primecomposer.paste_on_reference``); the pseudo-cross row and the object hold read it."""
    plan = state.plan
    if not plan.paste_on_reference:
        return
    s, latents = plan.s, state.reference_latents
    canvas = primecomposer.paste_on_reference(state.inputs.kept, latents[s], state.generation.x)
    state.reference_latents = latents[:s] + (canvas,) + latents[s + 1 :]


def latent_normalization(state: StepState, door: Door) -> None:
    """TALE's adaptive latent normalisation (``plan.latent_norm``, the weight; 0: nothing), right after the solver
    update: the generation branch's object region (``inputs.object_region``) moves toward the per-channel mean and
    standard deviation of the background branch's latent at the same grid point
    (``tficon.composition.latent_norm.adaptive_latent_normalization``); the stored data predictions are kept."""
    weight = state.plan.latent_norm
    if not weight:
        return
    region, background, s = state.inputs.object_region, state.background, state.plan.s
    if region is None:
        raise RuntimeError("internal: the plan normalises the latent but StepInputs.object_region is None")
    if background.index != s:
        raise RuntimeError(f"internal: background is at grid index {background.index}, normalising at {s}")
    x = adaptive_latent_normalization(state.generation.x, region, background.x, weight)
    state.generation = with_latent(state.generation, x)


# ---------------------------------------------------------------------------------------------------- rows
def add_rows(state: StepState, batch: Rows, door: Door, *, geometry: InjectionController | None) -> BatchLayout:
    """Add this cell's rows of the main call to ``batch`` (plan order: background, reference, pseudo_cross, uncond,
    cond) and keep its layout, with absolute row indices, as ``state.layout``. ``geometry``: the controller whose box
    the cell's rows read when several cells share the call (None: the call's own controller)."""
    plan, inputs, grid = state.plan, state.inputs, state.inputs.grid
    e_star, s, m = inputs.exceptional, plan.s, plan.map_index

    def conditioned(embedding, branch: str):
        return inputs.conditioning(embedding, branch, door.family)

    at = {}
    e_background, e_reference = branch_embeddings(state)
    if plan.background_row:
        row = (state.background.x, grid[state.background.index], conditioned(e_background, "background"))
        at["background"] = batch.add(row, shareable=True)
    if plan.reference_row:
        at["reference"] = batch.add((state.reference.x, grid[m], conditioned(e_reference, "reference")), shareable=True)
    if plan.pseudo_cross_row:
        e_pseudo = conditioned(inputs.cond if plan.pseudo_cross_prompt else e_star, "pseudo_cross")
        at["pseudo_cross"] = batch.add((state.reference_latents[plan.pseudo_latent], grid[m], e_pseudo))
    at["uncond"] = batch.add((state.generation.x, grid[s], conditioned(inputs.uncond, "generation")))
    at["cond"] = batch.add((state.generation.x, grid[s], conditioned(inputs.cond, "generation")))
    if plan.adaptive_blend:
        state.object_attention = CrossAttentionRecord(tokens=inputs.object_tokens)
    records = tuple(r for r in (inputs.cross_record, state.object_attention) if r is not None)
    state.layout = BatchLayout(
        **at, fg=plan.fg, bg=plan.bg, background_queries=plan.background_queries, object_block=plan.object_block,
        mix_background=plan.mix_background, mix_reference=plan.mix_reference,
        geometry=geometry, inject_layers=door.injected_layers(plan.inject_layers),
        object_tokens=inputs.object_tokens if plan.region_cross_attention else (), attention_records=records,
    )  # fmt: skip
    return state.layout


class Rows:
    """The rows of one batched call being assembled; with ``dedupe``, a helper row identical to an earlier one
    (same latent values, time and embedding) is not added again and its index is returned instead."""

    def __init__(self, dedupe: bool):
        self.rows: list[Row] = []
        self.dedupe = dedupe
        self._helpers: list[int] = []  # indices of rows that may be shared

    def add(self, row: Row, *, shareable: bool = False) -> int:
        if self.dedupe and shareable:
            for i in self._helpers:
                if _same_row(self.rows[i], row):
                    return i
        self.rows.append(row)
        if shareable:
            self._helpers.append(len(self.rows) - 1)
        return len(self.rows) - 1


def _same_row(a: Row, b: Row) -> bool:
    """Whether two rows are the same evaluation: equal latents, times and embeddings (by value)."""
    if a[0].shape != b[0].shape or float(a[1]) != float(b[1]):
        return False
    if not (a[0] is b[0] or torch.equal(a[0], b[0])):
        return False
    return a[2] is b[2] or conditioning_digest(a[2]) == conditioning_digest(b[2])


# ---------------------------------------------------------------------------------------------------- after_denoiser
def record_evaluations(state: StepState, door: Door) -> None:
    """Keep the background and reference rows' data predictions (``plan.background_row``, ``reference_row``) as
    those branches' evaluations, unless the warm-up already evaluated them at this grid point."""
    plan, grid, out, layout = state.plan, state.inputs.grid, state.output, state.layout
    if not plan.evaluate:
        return
    if plan.background_row and not state.background.evaluated:
        b, x = layout.background, state.background.x
        d = door.data_prediction(out[b : b + 1], x, grid[state.background.index])
        state.background = state.background.with_evaluation(d)
    if plan.reference_row and not state.reference.evaluated:
        r, x = layout.reference, state.reference.x
        d = door.data_prediction(out[r : r + 1], x, grid[state.reference.index])
        state.reference = state.reference.with_evaluation(d)


def guidance(state: StepState, door: Door) -> None:
    """Classifier-free guidance: ``uncond + guidance * (cond - uncond)`` of the generation branch's two rows, kept
    as its data prediction at t_s (``plan.evaluate``)."""
    plan, grid, out, layout = state.plan, state.inputs.grid, state.output, state.layout
    if not plan.evaluate:
        return
    u, c = layout.uncond, layout.cond
    guided = out[u : u + 1] + state.inputs.guidance * (out[c : c + 1] - out[u : u + 1])
    state.generation = state.generation.with_evaluation(
        door.data_prediction(guided, state.generation.x, grid[plan.s])
    )


def history_blend(state: StepState, door: Door) -> None:
    """The official model-history blend after the last warm-up evaluation (``plan.history_blend``): the generation
    branch's last ``order`` stored data predictions take the background branch's outside the box."""
    if not state.plan.history_blend:
        return
    inside, k = state.inputs.inside, state.inputs.order
    generation, background = state.generation, state.background
    blended = tuple(
        torch.where(inside, d_gen, d_bg)
        for d_gen, d_bg in zip(generation.state.d_hist[-k:], background.state.d_hist[-k:])
    )
    state.generation = with_history(generation, generation.state.d_hist[:-k] + blended)


def adaptive_blend(state: StepState, door: Door) -> None:
    """SHINE's adaptive background blend (``plan.adaptive_blend``): the generation branch's latent outside the
    object mask derived from this step's own cross-attention to the object's words
    (``attention_masks.adaptive_blend_mask``: the finest layers' heat > 0.4, dilated 3 x 3, its largest region) takes
    the background branch's latent. A flat heat map (no region stands out) falls back to the box. The mask is kept
    as ``blend_mask`` on the step's record."""
    if not state.plan.adaptive_blend:
        return
    generation, background, s = state.generation, state.background, state.plan.s
    if background.index != s:
        raise RuntimeError(f"internal: background is at grid index {background.index}, blending at {s}")
    maps = [values for layer_maps in state.object_attention.maps.values() for values in layer_maps]
    controller = state.inputs.controller
    heat = attention_heat(maps, controller.resolution, tuple(generation.x.shape[-2:]))
    mask = adaptive_blend_mask(heat)
    keep = state.inputs.inside if mask is None else mask.to(generation.x.device)
    state.blend_mask = keep
    state.generation = with_latent(generation, torch.where(keep, generation.x, background.x))


def blend(state: StepState, door: Door) -> None:
    """The background blend (``plan.blend``): the generation branch's latent outside the box takes the background
    branch's latent at the same grid point (diffusers' inpainting after-block does the same)."""
    if not state.plan.blend:
        return
    generation, background, s = state.generation, state.background, state.plan.s
    if background.index != s:
        raise RuntimeError(f"internal: background is at grid index {background.index}, blending at {s}")
    state.generation = with_latent(generation, torch.where(state.inputs.inside, generation.x, background.x))


def kept_history_blend(state: StepState, door: Door) -> None:
    """PrimeComposer's warm-up blend (``plan.kept_history_blend``): the generation's last ``order`` stored data
    predictions take the kept background record's first entries outside the box (noisy latents, as the released code
    does; ``tficon.core.primecomposer.kept_history_blend``)."""
    if not state.plan.kept_history_blend:
        return
    inputs, generation = state.inputs, state.generation
    k, d_hist = inputs.order, generation.state.d_hist
    blended = primecomposer.kept_history_blend(inputs.inside, d_hist[-k:], inputs.kept.background)
    state.generation = with_history(generation, d_hist[:-k] + blended)


def hold_object(state: StepState, door: Door) -> None:
    """PrimeComposer's tau_c phase (``plan.hold_object``), after the evaluation: the latent becomes the kept background
    at t_s with the reference canvas at t_s on the object (``tficon.core.primecomposer.hold_object``)."""
    if not state.plan.hold_object:
        return
    s, kept = state.plan.s, state.inputs.kept
    held = primecomposer.hold_object(kept, kept.background[s], state.reference_latents[s])
    state.generation = with_latent(state.generation, held)


def kept_blend(state: StepState, door: Door) -> None:
    """PrimeComposer's background blend (``plan.kept_blend``), after the evaluation: the latent outside the box takes
    the kept background record at t_s."""
    if not state.plan.kept_blend:
        return
    s, inputs, generation = state.plan.s, state.inputs, state.generation
    blended = primecomposer.kept_blend(inputs.inside, generation.x, inputs.kept.background[s])
    state.generation = with_latent(generation, blended)


# ---------------------------------------------------------------------------------------------------- the phases
@dataclass(frozen=True)
class StepPhases:
    """The operations of the two open phases, each a tuple run in order (module docstring). The defaults are the
    TF-ICON step; a strategy adds its operation to one tuple here, or, to try one out, to a copy
    (:meth:`with_operation`) given to an engine (``engine.phases``)."""

    before_denoiser: tuple[Operation, ...] = (paste_on_reference, advance, latent_normalization)
    after_denoiser: tuple[Operation, ...] = (
        record_evaluations, guidance, history_blend, adaptive_blend, blend, kept_history_blend, hold_object, kept_blend
    )  # fmt: skip

    def with_operation(self, phase: str, operation: Operation, *, before: Operation | None = None) -> StepPhases:
        """A copy with ``operation`` added to ``phase`` (``"before_denoiser"`` or ``"after_denoiser"``): at its end,
        or just before the operation ``before``."""
        names = [f.name for f in dataclasses.fields(self)]
        if phase not in names:
            raise ValueError(f"phase must be one of {names}, got {phase!r}")
        operations = list(getattr(self, phase))
        if before is None:
            operations.append(operation)
        elif before in operations:
            operations.insert(operations.index(before), operation)
        else:
            raise ValueError(f"before={getattr(before, '__name__', before)!r} is not an operation of {phase}")
        return dataclasses.replace(self, **{phase: tuple(operations)})

    def names(self) -> dict[str, tuple[str, ...]]:
        """The operation names of each open phase, in order (for reading and for tests)."""
        return {f.name: tuple(op.__name__ for op in getattr(self, f.name)) for f in dataclasses.fields(self)}

    def run(self, phase: str, state: StepState, door: Door) -> None:
        """Run the operations of ``phase`` on one cell's state, in order."""
        for operation in getattr(self, phase):
            operation(state, door)

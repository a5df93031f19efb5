"""The one door to the UNet: batched evaluations, the inversion cache, and one planned composition step.

Everything in tficon that runs the UNet goes through an :class:`Engine` (the Session, the metrics, the toy
evaluations, the notebooks), so dtype, device and counting rules live in one place:

- **Precision.** The solver's arithmetic (schedule values, coefficients, latents, data predictions) is
  float32 whatever the model's dtype, as in the official code. Only at this door are latents and
  embeddings cast to the UNet's dtype and device, and the UNet's output comes back as float32. So a
  float16 or bfloat16 model rounds only what the UNet itself computes.
- **Counting.** ``unet_calls`` and ``sample_evals`` (batch rows through the UNet) count every evaluation made
  through this engine; the functions that evaluate also return their own counts, so a caller (a Session)
  can count its own work even when several callers share one engine.
- **The inversion cache.** :meth:`Engine.invert` inverts several latents together, one UNet call per step,
  and keeps the results in :class:`InversionCache`, owned by the engine (share an engine between Sessions
  to share their inversions). Results never depend on the cache: CPU and GPU kernels round differently
  for different batch shapes (a batch-of-one evaluation is not bitwise a row of a batch of two), so the
  batch always has one row per latent, at that latent's position, and a row whose result is cached is
  filled with a copy of a latent still to be inverted. Each row then sees exactly the shapes a fresh run
  sees, and its result is bitwise the same. The price: a partial hit saves no UNet work, only a full hit does.
  A failed inversion is never kept: every inversion step is checked for NaN/inf (one host read per step), and the
  first non-finite row stops the inversion with a ``NonFiniteError`` naming its image and step, before anything
  enters a cache (a transient NaN must not fail the next Session that shares the background).
- **One step.** :meth:`Engine.run_step` runs one planned composition step (``tficon.core.plan``) from explicit
  inputs and returns the new :class:`StepRecord`; it changes nothing but the engine's counters. It is the
  one-cell case of :meth:`Engine.run_steps`, which advances several cells (Sessions' steps) with one UNet call
  holding all their rows (``tficon.composition.runner``; equal to the one-cell steps to float tolerance, not bitwise).
  The step's work before and after the UNet call (solver updates, rows, guidance, blends) is named phases in
  ``tficon.composition.phases``; the engine makes the call and runs the phases in their order.

Model families (``tficon.model.families``): what a row's conditioning is and how the UNet is called with it is the
model's family's business. The engine asks ``model.family_rules`` to call the UNet (SDXL: hidden states, pooled
embedding and added time ids, the last two as ``added_cond_kwargs``), to concatenate and hash conditionings, and to
attach each branch's extra conditioning to its rows in a composition step (``StepInputs.time_ids``).

The VAE has its door here too: :meth:`Engine.encode` and :meth:`Engine.decode` (``tficon.model.vae``), which feed
the VAE its own dtype (SDXL's stays float32 in a float16 model) and return float32.

Branch names (the same everywhere in tficon): ``generation`` (the composition, with CFG and the composite
self-attention), ``background`` (the reconstruction of the inverted background) and ``reference`` (the
reconstruction of the inverted reference); ``pseudo_cross`` is the pseudo-cross row of a batched call.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch

from tficon.composition.attention import BatchLayout, CaptureRequest, InjectionController, composite_attention
from tficon.composition.joint_attention import joint_composite_attention
from tficon.composition.cross_attention import CrossAttentionRecord, object_cross_attention
from tficon.composition.phases import Rows, StepPhases, StepState, add_rows, warm_up_rows, warm_up_update
from tficon.core import checks, solver
from tficon.core.layers import select_layers
from tficon.core.plan import StepPlan
from tficon.core.primecomposer import KeptInversions
from tficon.model import vae
from tficon.model.families import Family, conditioning_digest

__all__ = ["Engine", "InversionCache", "StepInputs", "StepRecord", "Track", "noise_schedule"]

# One (latent, continuous time t, embedding) row of a batched evaluation; the embedding is the model family's
# conditioning (a tensor, or SDXL's tficon.model.text.Conditioning).
Row = tuple[torch.Tensor, torch.Tensor, object]


def noise_schedule(model) -> solver.NoiseSchedule:
    """The continuous-time noise schedule of a loaded model (cheap: built from its scheduler config by its family:
    the official VP schedule, or SD3's rectified flow, ``tficon.core.flow.FlowSchedule``)."""
    return model.family_rules.noise_schedule(model)


class InversionCache:
    """A small LRU of inverted latents, keyed by content (latent bytes, steps, order, embedding, row).

    Only finite latents are kept: :meth:`put` refuses a NaN/inf value (a failed inversion must fail alone)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def get(self, key) -> torch.Tensor | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key].clone()

    def put(self, key, value: torch.Tensor) -> None:
        if not bool(torch.isfinite(value).all()):
            raise checks.NonFiniteError("refusing to cache an inverted latent holding NaN or inf values")
        self._entries[key] = value.clone()
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def values(self) -> list[torch.Tensor]:
        """Copies of the cached latents, oldest first."""
        return [value.clone() for value in self._entries.values()]


def _digest(*tensors) -> str:
    """Content hash of latents and conditionings (any family's), for the inversion cache's keys."""
    if len(tensors) == 1:
        return conditioning_digest(tensors[0])
    digest = hashlib.sha1()
    for tensor in tensors:
        digest.update(conditioning_digest(tensor).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Track:
    """One solver trajectory: the latent at grid index ``index`` and its D history (float32)."""

    index: int
    state: solver.SolverState
    evaluated: bool = False  # whether D at ``index`` is already in the history

    def advance(self, index: int, order: int, schedule, grid) -> "Track":
        if index != self.index + 1 or not self.evaluated:
            raise RuntimeError(f"cannot move a trajectory from grid index {self.index} to {index}")
        return Track(index, self.state.advance(grid[index], order, schedule))

    def with_evaluation(self, d: torch.Tensor) -> "Track":
        return Track(self.index, self.state.with_evaluation(d), True)

    @property
    def x(self) -> torch.Tensor:
        return self.state.x


@dataclass(frozen=True)
class StepRecord:
    """The state after step ``s``: every branch's trajectory, the reference latents so far, and costs."""

    s: int
    plan: StepPlan
    generation: Track
    background: Track
    reference: Track
    reference_latents: tuple[torch.Tensor, ...]  # x_reference at grid indices 0, 1, ...
    seconds: float
    unet_calls: int
    sample_evals: int
    attention: dict = field(default_factory=dict)  # maps (layer, kind) -> (Nq, Nk), when captured
    blend_mask: torch.Tensor | None = None  # the adaptive background blend's mask of this step (True: kept)


@dataclass(frozen=True)
class StepInputs:
    """Everything one composition step reads besides the record before it.

    ``start`` (generation, background, reference latents at t_0) is read by step 0 only. ``inside`` is
    the latent target box ("param") as a bool (h, w) map. ``controller`` carries the geometry that the
    composite attention processors read; ``capture`` asks for attention maps (inspection only).
    """

    steps: int
    order: int
    guidance: float
    grid: torch.Tensor
    exceptional: torch.Tensor  # e*, for the background, reference and pseudo-cross rows
    uncond: torch.Tensor
    cond: torch.Tensor
    inside: torch.Tensor
    controller: InjectionController
    start: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    capture: CaptureRequest | None = None
    # each branch's extra conditioning (branch -> SDXL's (1, 6) added time ids); None for families without any (SD)
    time_ids: dict | None = None
    # both inversions' records and the blend windows, for plans that read them (``plan.kept_inversions``: strategy
    # "primecomposer"); step 0 then starts the reference latents from the reference record (tficon.core.primecomposer)
    kept: KeptInversions | None = None
    # the placed object's region, a bool (h, w) latent map: read by TALE's latent normalisation (plan.latent_norm)
    object_region: torch.Tensor | None = None
    # the object's token positions in the prompt (region-constrained cross-attention reads them where the plan says)
    object_tokens: tuple[int, ...] = ()
    # records the generation's conditional cross-attention to some tokens (inspection: the object mask proposal)
    cross_record: CrossAttentionRecord | None = None

    def conditioning(self, embedding, branch: str, family: Family):
        """``embedding`` with ``branch``'s extra conditioning attached by the model's ``family`` (SDXL: its time
        ids; the engine running the step passes its own family)."""
        if self.time_ids is None:
            return embedding
        return family.with_time_ids(embedding, self.time_ids[branch])


class Engine:
    """The UNet of a loaded model behind one door; see the module docstring.

    ``model`` is a ``tficon.LoadedModel``; ``cache`` an :class:`InversionCache` to share (default: a new one).
    """

    def __init__(self, model, cache: InversionCache | None = None):
        self.model = model
        self.family: Family = model.family_rules
        # the layers that take the composite, listed once: the step installs its processors on every call
        self.attention_layers: tuple[str, ...] = tuple(self.family.attention_layers(model.unet))
        self.schedule = noise_schedule(model)
        self.inversions = cache if cache is not None else InversionCache()
        self.unet_calls = 0
        self.sample_evals = 0
        self._prepared: dict = {}  # inversions handed over to the next invert() of the same latents
        self._batched = InversionCache(64)  # batched inversions by latent content (prepare_inversions)
        self._selections: dict[str, frozenset[str] | None] = {}  # inject_layers text -> layer names

    @property
    def dtype(self) -> torch.dtype:
        return self.model.unet.dtype

    def injected_layers(self, spec: str) -> frozenset[str] | None:
        """The layers a plan's ``inject_layers`` selects among :attr:`attention_layers` (None: all of them; the
        model's family tells encoder, mid and decoder apart); unknown names raise, listing the valid ones."""
        if spec not in self._selections:
            self._selections[spec] = select_layers(spec, self.attention_layers, self.family.layer_part)
        return self._selections[spec]

    @property
    def device(self) -> torch.device:
        return self.model.unet.device

    # ------------------------------------------------------------------ evaluations
    def unet(self, x: torch.Tensor, model_t: torch.Tensor, embeddings) -> torch.Tensor:
        """One UNet call on a batch: ``x`` (B, C, h, w), ``model_t`` (B,) in the model's time units,
        ``embeddings`` B rows (or 1, repeated) of the model family's conditioning: (B, L, D) for SD, a
        ``Conditioning`` on SDXL. Inputs are cast to the UNet's dtype and device here (and only here); the output
        comes back as float32.

        The family makes the call (``tficon.model.families``): SDXL passes the pooled embedding and time ids as
        ``added_cond_kwargs``, and rows without time ids get the pipeline's default for this latent size: original =
        target = (h, w) x the VAE factor, crop (0, 0)."""
        x = x.to(self.device, self.dtype)
        model_t = model_t.to(self.device).reshape(-1).expand(x.shape[0])
        out = self.family.denoise(self.model, x, model_t, embeddings)
        self.unet_calls += 1
        self.sample_evals += x.shape[0]
        return out.float()

    # ------------------------------------------------------------------ the VAE
    def encode(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``tficon.model.vae.encode_image``: images in [-1, 1] to scaled float32 latents (None: posterior mean)."""
        return vae.encode_image(self.model, images, generator)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``tficon.model.vae.decode_latent``: scaled latents to float32 images in [-1, 1]."""
        return vae.decode_latent(self.model, latents)

    def evaluate(self, rows: Sequence[Row]) -> torch.Tensor:
        """One batched UNet call over (latent (1, C, h, w), continuous time t, embedding (1, L, D)) rows;
        returns the raw float32 outputs in row order."""
        x = torch.cat([r[0] for r in rows])
        t = self.schedule.model_time(torch.stack([torch.as_tensor(r[1]).reshape(()) for r in rows]))
        return self.unet(x, t, self.family.cat_conditioning([r[2] for r in rows]))

    def model_fn(
        self, cond: torch.Tensor, uncond: torch.Tensor | None = None, guidance: float = 1.0
    ) -> solver.ModelFn:
        """A ``model_fn(x, model_t)`` for ``tficon.core.solver.sample`` / ``invert``: conditioned on ``cond``, or
        classifier-free guided ``uncond + guidance * (cond - uncond)`` in one call of twice the batch."""
        if uncond is None:
            return lambda x, model_t: self.unet(x, model_t, cond.expand(x.shape[0], -1, -1))

        def guided(x, model_t):
            n = x.shape[0]
            both = self.family.cat_conditioning([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])
            out_u, out_c = self.unet(torch.cat([x, x]), torch.cat([model_t, model_t]), both).chunk(2)
            return out_u + guidance * (out_c - out_u)

        return guided

    def data_prediction(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return solver.to_data_prediction(output, x, t, self.schedule, self.model.prediction_type)

    # ------------------------------------------------------------------ inversion
    def invert(
        self,
        latents: Sequence[torch.Tensor],
        steps: int,
        order: int,
        *,
        embedding: torch.Tensor | None = None,
        time_ids: Sequence[torch.Tensor] | None = None,
        progress: bool = False,
        names: Sequence[str] | None = None,
        t_start: float | None = None,
    ) -> tuple[list[torch.Tensor], list[bool], int]:
        """Invert clean latents (each (1, C, h, w)) to the schedule's noisy end together (t = 1; a flow's stops just
        short of it, tficon.core.flow), one UNet call per step; to an earlier ``t_start`` with a later start:
        ``steps`` steps of the grid from the clean end up to it, cached apart from inversions to the noisy end.

        ``embedding`` defaults to the exceptional prompt e* (used as both CFG halves officially, so one
        unguided evaluation per step is exact). SDXL: ``time_ids`` gives each latent's added time ids (default:
        the working size of the latents). Returns (x_T per latent, whether each came from the cache,
        sample-evaluations spent). Results are bitwise independent of what was cached (module docstring).

        Inversions that :meth:`prepare_inversions` computed for exactly these latents are handed over instead (until
        :meth:`drop_prepared_inversions`): reported as not cached, with the evaluations an inversion of its own would
        have spent.

        ``names`` names each latent's image in errors (the Session: background or cut-and-paste, and reference). A
        NaN/inf at any inversion step raises ``tficon.core.checks.NonFiniteError`` naming the image and the step; no
        result of that batch is cached.
        """
        embedding, keys = self._inversion_keys(latents, steps, order, embedding, time_ids)
        if t_start is not None and t_start != self.schedule.t_start:  # a later start (TALE): another end point
            keys = [key + (("t_start", float(t_start)),) for key in keys]
        if keys and all(key in self._prepared for key in keys):
            return [self._prepared[key].clone() for key in keys], [False] * len(keys), steps * len(keys)
        n = len(latents)
        results = [self.inversions.get(key) for key in keys]
        cached = [r is not None for r in results]
        missing = [i for i, r in enumerate(results) if r is None]
        if not missing:
            return results, cached, 0
        filler = latents[missing[0]]
        batch = torch.cat([latents[i] if results[i] is None else filler for i in range(n)]).float()
        names = [f"latent {i}" for i in range(n)] if names is None else list(names)
        check = checks.inversion_check([names[i if results[i] is None else missing[0]] for i in range(n)], steps,
                                       dtype=self.dtype)  # fmt: skip
        check(0, None, batch)
        x_T = solver.invert(
            self.model_fn(embedding), batch, self.schedule, steps, order,
            prediction_type=self.model.prediction_type, progress=progress, callback=check, t_start=t_start,
        )  # fmt: skip
        for i in missing:
            results[i] = x_T[i : i + 1].clone()
            self.inversions.put(keys[i], results[i])
        return results, cached, steps * n  # solver.invert evaluates once per step

    def _inversion_keys(self, latents, steps, order, embedding, time_ids):
        """(the embedding of the inversion's batch, the cache key of each latent): content, row, batch size."""
        embedding = self.model.exceptional_embedding() if embedding is None else embedding
        n = len(latents)
        if time_ids is not None:
            if len(time_ids) != n:
                raise ValueError(f"time_ids must give one (1, 6) tensor per latent ({n}), got {len(time_ids)}")
            rows = [self.family.with_time_ids(embedding, ids) for ids in time_ids]
            if any(row is not embedding for row in rows):  # families without time ids leave e* as it is
                embedding = self.family.cat_conditioning(rows)
        shared = (n, steps, order, _digest(embedding))
        return embedding, [(_digest(z), row) + shared for row, z in enumerate(latents)]

    def prepare_inversions(
        self,
        requests: Sequence[Sequence[torch.Tensor]],
        steps: int,
        order: int,
        *,
        time_ids: Sequence[Sequence[torch.Tensor] | None] | None = None,
    ) -> int:
        """Invert the latents of several later :meth:`invert` calls (``requests``: each call's latents, SDXL: its
        ``time_ids``) in one batch, once per distinct latent, and keep each result for the call that asks for it.

        For ``tficon.composition.runner``: Sessions joining a run invert together. Results equal their own
        inversions to float tolerance, not bitwise (another batch shape), so they never enter the bitwise cache
        :attr:`inversions`; they wait in a hand-over store (emptied by :meth:`drop_prepared_inversions`) and in a small
        cache of batched inversions keyed by latent content alone, so a background shared by samples of later
        rounds is not inverted again. Requests already in the bitwise cache are left to it. Returns the
        sample-evaluations spent. A NaN/inf in any row raises ``NonFiniteError`` and keeps nothing of the batch (the
        runner then lets each Session invert on its own, which names its own failure)."""
        e_star = self.model.exceptional_embedding()
        time_ids = [None] * len(requests) if time_ids is None else list(time_ids)
        rows: dict[str, tuple[torch.Tensor, object]] = {}  # distinct (latent, row embedding) -> inputs
        wanted = []
        for latents, ids in zip(requests, time_ids):
            _, keys = self._inversion_keys(latents, steps, order, None, ids)
            if all(key in self.inversions for key in keys):
                continue
            for i, (z, key) in enumerate(zip(latents, keys)):
                embedding = e_star if ids is None else self.family.with_time_ids(e_star, ids[i])
                row = (_digest(z, embedding), steps, order)
                rows.setdefault(row, (z, embedding))
                wanted.append((key, row))
        todo = [row for row in rows if row not in self._batched]
        evals = 0
        if todo:
            batch = torch.cat([rows[row][0] for row in todo]).float()
            embedding = self.family.cat_conditioning([rows[row][1] for row in todo])
            check = checks.inversion_check(["batched"] * len(todo), steps, dtype=self.dtype)
            check(0, None, batch)
            x_T = solver.invert(
                self.model_fn(embedding), batch, self.schedule, steps, order,
                prediction_type=self.model.prediction_type, callback=check,
            )  # fmt: skip
            for i, row in enumerate(todo):
                self._batched.put(row, x_T[i : i + 1])
            evals = steps * len(todo)
        for key, row in wanted:
            self._prepared[key] = self._batched.get(row)
        return evals

    def drop_prepared_inversions(self) -> None:
        """Forget inversions prepared for calls that never came (the end of a lockstep run)."""
        self._prepared.clear()

    # ------------------------------------------------------------------ composition steps
    #: The operations of the step's open phases (``tficon.composition.phases``); an engine or a subclass may be given
    #: others, e.g. ``Engine.phases.with_operation("after_denoiser", op)`` to try a composition strategy.
    phases: StepPhases = StepPhases()

    def run_step(self, plan: StepPlan, previous: StepRecord | None, inputs: StepInputs) -> StepRecord:
        """The record of step ``plan.s`` from the record before it (``None`` for step 0, which starts from
        ``inputs.start``). Pure apart from the engine's counters: nothing passed in is modified.

        The one-cell case of :meth:`run_steps`."""
        return self.run_steps([(plan, previous, inputs)])[0]

    def run_steps(self, cells: Sequence[tuple[StepPlan, "StepRecord | None", StepInputs]]) -> list[StepRecord]:
        """Advance several cells (each a Session's ``(plan, previous record, inputs)``) by one step together.

        Each cell runs the step's phases in the order of ``tficon.composition.phases.STEP_ORDER``: the warm-up
        pre-evaluations, ``before_denoiser`` (the solver update), ``rows`` (each cell's rows of the call), the
        ``denoiser`` (one UNet call holding every cell's rows, with one ``BatchLayout`` per cell at its row offset
        carrying the cell's own geometry) and ``after_denoiser`` (guidance, the blends), each cell on its own slice
        of the output. Cells may be at different steps, with different plans, boxes, prompts and grids; they must
        share the latent size. With one cell this is exactly the single step: same rows, same layout, same calls,
        so its result is bitwise what it always was.

        With several cells the results equal each cell's own step to float tolerance, not bitwise (kernels round
        differently for another batch shape). Helper rows that are identical in two cells (a background or
        reference latent at the same time with the same embedding, e.g. samples sharing a background) are
        evaluated once and read by both cells' composites (rows are independent, so nothing else changes).

        Counting: each record counts the calls it took part in and its own rows, as if it had run alone (so a
        Session's stats do not depend on batching); the engine's counters count the real calls and rows.
        ``seconds`` of the shared time is split between cells in proportion to their rows. Attention capture
        needs a one-cell call.
        """
        if not cells:
            return []
        started = time.perf_counter()
        states = [_begin(plan, previous, inputs) for plan, previous, inputs in cells]
        multi = len(states) > 1
        if multi:
            if any(w.inputs.capture is not None for w in states):
                raise ValueError("attention capture needs a one-cell step; capture each Session's step on its own")
            shapes = {tuple(w.generation.x.shape) for w in states}
            if len(shapes) > 1:
                raise ValueError(f"cells of one call must share the latent shape, got {sorted(shapes)}")
        controller = states[0].inputs.controller
        install = joint_composite_attention if self.family.joint_attention else composite_attention
        cross = any(
            w.plan.region_cross_attention or w.plan.adaptive_blend or w.inputs.cross_record is not None for w in states
        )
        with install(self.model.unet, controller, self.attention_layers), object_cross_attention(
            self.model.unet, controller, active=cross
        ):
            try:
                # warm_up: one call per pre-evaluation depth, background and reference rows only
                for depth in range(max(len(w.plan.pre_evals) for w in states)):
                    active = [w for w in states if depth < len(w.plan.pre_evals)]
                    batch = Rows(dedupe=multi)
                    at = [warm_up_rows(w, depth, batch, self) for w in active]
                    controller.layout = BatchLayout()
                    out = self.evaluate(batch.rows)
                    for w, rows in zip(active, at):
                        w.calls, w.evals = w.calls + 1, w.evals + 2
                        warm_up_update(w, depth, out, rows, self)
                for w in states:
                    self.phases.run("before_denoiser", w, self)
                main = [w for w in states if w.plan.evaluate]
                if main:
                    # rows, then the denoiser
                    batch = Rows(dedupe=multi)
                    layouts = [add_rows(w, batch, self, geometry=w.inputs.controller if multi else None) for w in main]
                    controller.layout = layouts[0] if not multi else tuple(layouts)
                    controller.capture, controller.dropped = states[0].inputs.capture, 0
                    out = self.evaluate(batch.rows)
                    if not multi and states[0].inputs.capture is not None:
                        _keep_capture(states[0], controller)
                    for w in main:
                        w.output, w.calls, w.evals = out, w.calls + 1, w.evals + w.plan.batch_size
            finally:
                controller.layout = None
                controller.capture = None
                controller.captured = {}
        for w in states:
            self.phases.run("after_denoiser", w, self)
        seconds = time.perf_counter() - started
        own_rows = [w.evals for w in states]
        total = sum(own_rows)
        shares = [r / total if total else 1 / len(states) for r in own_rows]
        return [_record(w, seconds * share) for w, share in zip(states, shares)]


def _begin(plan: StepPlan, previous: StepRecord | None, inputs: StepInputs) -> StepState:
    """A cell's step state from the record before it (step 0: from ``inputs.start``)."""
    if previous is None:
        if inputs.start is None:
            raise ValueError("step 0 needs StepInputs.start")
        grid = inputs.grid
        make = lambda x: Track(0, solver.SolverState(x=x, t=grid[0]))  # noqa: E731
        generation, background, reference = (make(x) for x in inputs.start)
        reference_latents = (inputs.start[2],) if inputs.kept is None else inputs.kept.reference
        return StepState(plan, inputs, generation, background, reference, reference_latents)
    return StepState(
        plan, inputs, previous.generation, previous.background, previous.reference, previous.reference_latents
    )


def _keep_capture(state: StepState, controller: InjectionController) -> None:
    state.attention = dict(controller.captured)
    if controller.dropped:
        warnings.warn(
            f"attention capture of step {state.plan.s}: {controller.dropped} maps left out to stay within "
            f"max_bytes={state.inputs.capture.max_bytes}; lower max_tokens or ask for fewer layers or kinds",
            stacklevel=6,
        )


def _record(state: StepState, seconds: float) -> StepRecord:
    """The record of a finished step state."""
    return StepRecord(
        s=state.plan.s,
        plan=state.plan,
        generation=state.generation,
        background=state.background,
        reference=state.reference,
        reference_latents=state.reference_latents,
        seconds=seconds,
        unet_calls=state.calls,
        sample_evals=state.evals,
        attention=state.attention,
        blend_mask=state.blend_mask,
    )

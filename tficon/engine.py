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
- **One step.** :meth:`Engine.run_step` runs one planned composition step (``tficon.plan``) from explicit
  inputs and returns the new :class:`StepRecord`; it changes nothing but the engine's counters.

SDXL (docs/algorithm.md §15): an embedding may be a ``tficon.text.Conditioning`` (hidden states, pooled
embedding, added time ids) instead of a tensor; :meth:`Engine.unet` passes its pooled embedding and time ids as
``added_cond_kwargs``. A composition step attaches each branch's time ids to its rows (``StepInputs.time_ids``).

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

from . import solver
from .attention import BatchLayout, CaptureRequest, InjectionController, composite_attention
from .plan import StepPlan
from .text import Conditioning, cat_conditioning, conditioning_digest

__all__ = ["Engine", "InversionCache", "StepInputs", "StepRecord", "Track", "noise_schedule"]

# One (latent, continuous time t, embedding) row of a batched evaluation.
Row = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | Conditioning"]


def noise_schedule(model) -> solver.NoiseSchedule:
    """The continuous-time noise schedule of a loaded model (cheap: built from its scheduler config)."""
    return solver.NoiseSchedule.from_scheduler_config(model.scheduler_config)


class InversionCache:
    """A small LRU of inverted latents, keyed by content (latent bytes, steps, order, embedding, row)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key) -> torch.Tensor | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key].clone()

    def put(self, key, value: torch.Tensor) -> None:
        self._entries[key] = value.clone()
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def _digest(*tensors) -> str:
    """Content hash of tensors (or SDXL ``Conditioning``s), for the inversion cache's keys."""
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
    # SDXL: each branch's added time ids (generation, background, reference, pseudo_cross -> (1, 6)); None for SD
    time_ids: dict | None = None

    def conditioning(self, embedding, branch: str):
        """``embedding`` with ``branch``'s time ids attached (SDXL); a tensor embedding is returned as it is."""
        if self.time_ids is None or not isinstance(embedding, Conditioning):
            return embedding
        return embedding.with_time_ids(self.time_ids[branch])


class Engine:
    """The UNet of a loaded model behind one door; see the module docstring.

    ``model`` is a ``tficon.LoadedModel``; ``cache`` an :class:`InversionCache` to share (default: a new one).
    """

    def __init__(self, model, cache: InversionCache | None = None):
        self.model = model
        self.schedule = noise_schedule(model)
        self.inversions = cache if cache is not None else InversionCache()
        self.unet_calls = 0
        self.sample_evals = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.model.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.model.unet.device

    # ------------------------------------------------------------------ evaluations
    def unet(self, x: torch.Tensor, model_t: torch.Tensor, embeddings) -> torch.Tensor:
        """One UNet call on a batch: ``x`` (B, C, h, w), ``model_t`` (B,) in the model's time units,
        ``embeddings`` (B, L, D), or on SDXL a ``Conditioning`` of B rows (or 1, repeated). Inputs are cast to
        the UNet's dtype and device here (and only here); the output comes back as float32.

        SDXL: the pooled embedding and time ids go in as ``added_cond_kwargs``; rows without time ids get the
        pipeline's default for this latent size: original = target = (h, w) x the VAE factor, crop (0, 0)."""
        unet = self.model.unet
        x = x.to(self.device, self.dtype)
        model_t = model_t.to(self.device).reshape(-1).expand(x.shape[0])
        added = {}
        if isinstance(embeddings, Conditioning):
            if embeddings.time_ids is None:
                f = self.model.vae_scale_factor
                embeddings = embeddings.with_time_ids(self.model.time_ids((x.shape[-2] * f, x.shape[-1] * f)))
            embeddings = embeddings.to(self.device, self.dtype).expand(x.shape[0])
            added = {"added_cond_kwargs": {"text_embeds": embeddings.pooled, "time_ids": embeddings.time_ids}}
            embeddings = embeddings.hidden
        elif getattr(unet.config, "addition_embed_type", None) == "text_time":
            raise TypeError("an SDXL UNet needs a tficon.text.Conditioning (pooled embedding, time ids), not a tensor")
        else:
            embeddings = embeddings.to(self.device, self.dtype)
        if embeddings.shape[0] == 1 and x.shape[0] > 1:
            embeddings = embeddings.expand(x.shape[0], -1, -1)
        with torch.no_grad():
            out = unet(x, model_t, encoder_hidden_states=embeddings, **added).sample
        self.unet_calls += 1
        self.sample_evals += x.shape[0]
        return out.float()

    def evaluate(self, rows: Sequence[Row]) -> torch.Tensor:
        """One batched UNet call over (latent (1, C, h, w), continuous time t, embedding (1, L, D)) rows;
        returns the raw float32 outputs in row order."""
        x = torch.cat([r[0] for r in rows])
        t = self.schedule.model_time(torch.stack([torch.as_tensor(r[1]).reshape(()) for r in rows]))
        return self.unet(x, t, cat_conditioning([r[2] for r in rows]))

    def model_fn(
        self, cond: torch.Tensor, uncond: torch.Tensor | None = None, guidance: float = 1.0
    ) -> solver.ModelFn:
        """A ``model_fn(x, model_t)`` for ``tficon.solver.sample`` / ``invert``: conditioned on ``cond``, or
        classifier-free guided ``uncond + guidance * (cond - uncond)`` in one call of twice the batch."""
        if uncond is None:
            return lambda x, model_t: self.unet(x, model_t, cond.expand(x.shape[0], -1, -1))

        def guided(x, model_t):
            n = x.shape[0]
            both = cat_conditioning([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])
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
    ) -> tuple[list[torch.Tensor], list[bool], int]:
        """Invert clean latents (each (1, C, h, w)) to t = 1 together, one UNet call per step.

        ``embedding`` defaults to the exceptional prompt e* (used as both CFG halves officially, so one
        unguided evaluation per step is exact). SDXL: ``time_ids`` gives each latent's added time ids (default:
        the working size of the latents). Returns (x_T per latent, whether each came from the cache,
        sample-evaluations spent). Results are bitwise independent of what was cached (module docstring).
        """
        embedding = self.model.exceptional_embedding() if embedding is None else embedding
        n = len(latents)
        if time_ids is not None and isinstance(embedding, Conditioning):
            if len(time_ids) != n:
                raise ValueError(f"time_ids must give one (1, 6) tensor per latent ({n}), got {len(time_ids)}")
            embedding = cat_conditioning([embedding.with_time_ids(ids) for ids in time_ids])
        shared = (n, steps, order, _digest(embedding))
        keys = [(_digest(z), row) + shared for row, z in enumerate(latents)]
        results = [self.inversions.get(key) for key in keys]
        cached = [r is not None for r in results]
        missing = [i for i, r in enumerate(results) if r is None]
        if not missing:
            return results, cached, 0
        filler = latents[missing[0]]
        batch = torch.cat([latents[i] if results[i] is None else filler for i in range(n)]).float()
        x_T = solver.invert(
            self.model_fn(embedding), batch, self.schedule, steps, order,
            prediction_type=self.model.prediction_type, progress=progress,
        )  # fmt: skip
        for i in missing:
            results[i] = x_T[i : i + 1].clone()
            self.inversions.put(keys[i], results[i])
        return results, cached, steps * n  # solver.invert evaluates once per step

    # ------------------------------------------------------------------ one composition step
    def run_step(self, plan: StepPlan, previous: StepRecord | None, inputs: StepInputs) -> StepRecord:
        """The record of step ``plan.s`` from the record before it (``None`` for step 0, which starts from
        ``inputs.start``). Pure apart from the engine's counters: nothing passed in is modified."""
        started = time.perf_counter()
        calls = evals = 0  # counted here, not as a difference of the engine's totals (which others may share)
        s, k, grid, schedule = plan.s, inputs.order, inputs.grid, self.schedule
        if previous is None:
            if inputs.start is None:
                raise ValueError("step 0 needs StepInputs.start")
            make = lambda x: Track(0, solver.SolverState(x=x, t=grid[0]))  # noqa: E731
            generation, background, reference = (make(x) for x in inputs.start)
            reference_latents = (inputs.start[2],)
        else:
            generation, background, reference = previous.generation, previous.background, previous.reference
            reference_latents = previous.reference_latents
        e_star, controller = inputs.exceptional, inputs.controller
        attention = {}

        with composite_attention(self.model.unet, controller):
            try:
                for j in plan.pre_evals:
                    controller.layout = BatchLayout()
                    out = self.evaluate([
                        (background.x, grid[j], inputs.conditioning(e_star, "background")),
                        (reference.x, grid[j], inputs.conditioning(e_star, "reference")),
                    ])  # fmt: skip
                    calls, evals = calls + 1, evals + 2
                    background = background.with_evaluation(self.data_prediction(out[0:1], background.x, grid[j]))
                    reference = reference.with_evaluation(self.data_prediction(out[1:2], reference.x, grid[j]))
                    order = solver.step_order(j + 1, inputs.steps, k)
                    background = background.advance(j + 1, order, schedule, grid)
                    reference = reference.advance(j + 1, order, schedule, grid)
                    reference_latents = reference_latents + (reference.x,)

                if plan.advance_generation:
                    generation = generation.advance(s, plan.order, schedule, grid)
                if plan.advance_background:
                    background = background.advance(s, plan.order, schedule, grid)
                if plan.advance_reference:
                    reference = reference.advance(s, plan.order, schedule, grid)
                    reference_latents = reference_latents + (reference.x,)

                if plan.evaluate:
                    rows, at = [], {}
                    m = plan.map_index
                    if plan.background_row:
                        at["background"] = len(rows)
                        rows.append((background.x, grid[background.index], inputs.conditioning(e_star, "background")))
                    if plan.reference_row:
                        at["reference"] = len(rows)
                        rows.append((reference.x, grid[m], inputs.conditioning(e_star, "reference")))
                    if plan.pseudo_cross_row:
                        at["pseudo_cross"] = len(rows)
                        e_pseudo = inputs.conditioning(e_star, "pseudo_cross")
                        rows.append((reference_latents[plan.pseudo_latent], grid[m], e_pseudo))
                    at["uncond"] = len(rows)
                    rows.append((generation.x, grid[s], inputs.conditioning(inputs.uncond, "generation")))
                    at["cond"] = len(rows)
                    rows.append((generation.x, grid[s], inputs.conditioning(inputs.cond, "generation")))
                    layout = BatchLayout(**at, fg=plan.fg, bg=plan.bg, background_queries=plan.background_queries)
                    controller.layout, controller.capture, controller.dropped = layout, inputs.capture, 0
                    out = self.evaluate(rows)
                    calls, evals = calls + 1, evals + len(rows)
                    if inputs.capture is not None:
                        attention = dict(controller.captured)
                        if controller.dropped:
                            warnings.warn(
                                f"attention capture of step {s}: {controller.dropped} maps left out to stay within "
                                f"max_bytes={inputs.capture.max_bytes}; lower max_tokens or ask for fewer layers "
                                "or kinds",
                                stacklevel=4,
                            )
                    if plan.background_row and not background.evaluated:
                        b = layout.background
                        d = self.data_prediction(out[b : b + 1], background.x, grid[background.index])
                        background = background.with_evaluation(d)
                    if plan.reference_row and not reference.evaluated:
                        r = layout.reference
                        d = self.data_prediction(out[r : r + 1], reference.x, grid[reference.index])
                        reference = reference.with_evaluation(d)
                    u, c = layout.uncond, layout.cond
                    guided = out[u : u + 1] + inputs.guidance * (out[c : c + 1] - out[u : u + 1])
                    generation = generation.with_evaluation(self.data_prediction(guided, generation.x, grid[s]))
            finally:
                controller.layout = None
                controller.capture = None
                controller.captured = {}

        inside = inputs.inside
        if plan.history_blend:
            blended = tuple(
                torch.where(inside, d_gen, d_bg)
                for d_gen, d_bg in zip(generation.state.d_hist[-k:], background.state.d_hist[-k:])
            )
            state = generation.state
            history = state.d_hist[:-k] + blended
            generation = Track(generation.index, solver.SolverState(state.x, state.t, state.t_hist, history), True)
        if plan.blend:
            if background.index != s:
                raise RuntimeError(f"internal: background is at grid index {background.index}, blending at {s}")
            state = generation.state
            x = torch.where(inside, generation.x, background.x)
            generation = Track(
                generation.index, solver.SolverState(x, state.t, state.t_hist, state.d_hist), generation.evaluated
            )
        return StepRecord(
            s=s,
            plan=plan,
            generation=generation,
            background=background,
            reference=reference,
            reference_latents=reference_latents,
            seconds=time.perf_counter() - started,
            unet_calls=calls,
            sample_evals=evals,
            attention=attention,
        )


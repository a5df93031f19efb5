"""The stepwise, resumable TF-ICON Session.

A Session owns one composition: its inputs, its configuration, both inversions, the start latent
and one immutable record per completed denoising step. Every phase can be run, inspected, rewound
and re-run; ``update`` changes settings and keeps everything that does not depend on them.

Phases, in order (each runs the ones before it when needed):

1. ``prepare``        images and box -> placement, background / reference / cut-and-paste tensors
                      (``tficon.composition.inputs``);
2. ``encode``         VAE posterior samples of the background (the cut-and-paste in "same" mode) and of
                      the reference, the first two draws of the seeded generator;
3. ``invert()``       exceptional-prompt DPM-Solver++ inversion of both latents (cached);
4. ``compose_start()`` the start latent (noise incorporation, docs/algorithm.md §7), the next generator draws;
5. ``step()``         steps 0..S: step s leaves the generation branch at grid index s (see
                      ``tficon.core.plan``), each one batched UNet call over the active rows with the
                      composite self-attention;
6. ``decode()`` / ``result``.

Branches (one vocabulary everywhere: records, ``latents()``, ``x0()``, ``preview()``, attention capture
kinds, the widgets): ``generation`` is the composition itself (CFG, composite self-attention),
``background`` reconstructs the inverted background (its latent is blended in outside the box, its
attention logits are injected), ``reference`` reconstructs the inverted reference (its object block is
injected); ``pseudo_cross`` names the pseudo-cross row of a batched call and its attention maps.

The Session keeps the inputs, decides what ``update`` invalidates, holds the records and rewinds them;
the work itself goes through its ``tficon.composition.engine.Engine``, the only code that calls the UNet: the batched
inversion (cached in the engine: pass ``engine=`` to share inversions between Sessions) and each planned
step, computed from explicit inputs. The solver's arithmetic is float32 in every model dtype; only the
UNet (and the VAE) run in the model's dtype, so float16 and bfloat16 models work as they are.

On SDXL (docs/algorithm.md §15) the text conditioning of every row is a ``tficon.model.text.Conditioning`` and each
branch gets its own added time ids (``Session.time_ids``); nothing else changes.

Records are immutable (tensors are never modified in place), so ``rewind`` is a truncation and a
step that raises leaves the Session exactly as it was.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from tficon.composition.attention import CaptureRequest, InjectionController
from tficon.composition.attention_backend import attention_function
from tficon.composition.engine import Engine, StepInputs, StepRecord
from tficon.composition.inputs import (
    Inputs,
    notice_words_outside_the_toy_world,
    official_mask_source,
    prepare_inputs,
)
from tficon.composition.runner import run_alone
from tficon.composition.session_strategies import SessionStrategies
from tficon.composition.session_views import BRANCHES, SessionViews
from tficon.composition.start import start_latent
from tficon.composition.tigic_latents import encode_collage, latent_recipe
from tficon.core import checks, io, solver
from tficon.core import placement as placement_mod
from tficon.core.boxes import as_user_box, same_box
from tficon.core.config import CompositionConfig, settings_invalidating
from tficon.core.plan import (
    StepPlan,
    composition_steps,
    injection_for,
    plans_for,
    start_index,
)
from tficon.core.primecomposer import released_token_positions
from tficon.core.prompt_markers import plain_prompt
from tficon.core.schedule import InjectionSchedule
from tficon.core.threads import torch_threads
from tficon.model.token_positions import object_token_positions_of

__all__ = ["BRANCHES", "Session"]

# What a change of each setting makes stale (its declared ``invalidates`` level, tficon.core.config); settings of
# the "plans" level drop the steps from the first whose plan differs.
_NEW_INPUTS = settings_invalidating("inputs")
_NEW_LATENTS = settings_invalidating("latents")
_ALL_STEPS = settings_invalidating("all_steps")


class Session(SessionStrategies, SessionViews):
    """One TF-ICON composition, run step by step.

    ``model`` is a ``tficon.LoadedModel`` or a spec for ``tficon.load_model`` (e.g. "toy"). Images are
    paths, PIL images or uint8 arrays; ``mask_or_box`` is the user mask (its first contour's bbox is
    the target box, as officially) or a box (x, y, w, h) in working-image pixels. Keyword arguments
    not consumed here are configuration fields (see ``CompositionConfig``).

    ``engine``: the ``tficon.composition.engine.Engine`` to run on (default: a new one for ``model``); Sessions that
    share an engine share its inversion cache. ``threads``: torch's CPU thread count while this Session
    works (restored afterwards); None leaves torch's setting as it is. ``attention_backend``: the attention kernel
    of the composition's processors, None (PyTorch's SDPA, bitwise the stock processors) or a name of diffusers'
    attention dispatcher ("native", "_native_cudnn", "flash", "sage", "xformers", ...:
    ``tficon.composition.attention_backend``); in a lockstep call of several Sessions the first one's serves the call.
    """

    def __init__(
        self,
        model,
        background,
        foreground,
        foreground_mask,
        mask_or_box,
        prompt: str,
        config: CompositionConfig | None = None,
        *,
        image_size: int | tuple[int, int] | None = None,
        progress: bool = False,
        engine: Engine | None = None,
        threads: int | None = None,
        attention_backend: str | None = None,
        **config_changes,
    ):
        if engine is not None and model is not engine.model:
            raise ValueError("engine belongs to another model: pass engine.model as model, or no engine")
        if isinstance(model, str) or hasattr(model, "__fspath__"):
            from tficon.model import load_model

            model = load_model(model)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.model = model
        self.engine = engine if engine is not None else Engine(model)
        self.threads = threads
        self.attention_backend = attention_backend
        self._attend = attention_function(attention_backend)  # an unknown name raises here, listing the known ones
        self.progress = progress
        self._config = (config or CompositionConfig()).replace(**config_changes)
        self._check_config(self._config)
        self.engine.injected_layers(self._config.inject_layers)  # a layer name this model lacks raises now
        self._images = {
            "background": io.load_image(background, name="background"),
            "foreground": io.load_image(foreground, name="foreground"),
        }
        self._object_mask = official_mask_source(foreground_mask)
        self._mask_or_box = self._load_box(mask_or_box)
        self._prompt = self._check_prompt(prompt)
        self._token_cache: dict = {}
        self._object_tokens(self._prompt, self._config)  # the object's words must be found now, not at step 0
        size = image_size if image_size is not None else model.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        io.check_image_size(self.image_size, model.size_multiple, name="image_size")
        self.schedule = self.engine.schedule
        self._plan_cache: dict = {}
        self.stats = {"unet_calls": 0, "sample_evals": 0}
        self.timings: dict[str, float] = {}
        self._reset(inputs=True)
        self.inputs  # fail now, naming the argument, if the box or the images do not fit

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> CompositionConfig:
        return self._config

    @property
    def prompt(self) -> str:
        return self._prompt

    @property
    def mask_or_box(self):
        """The target as given: a box (x, y, w, h) or the user mask (bool array)."""
        return self._mask_or_box

    @property
    def images(self) -> dict:
        """The background and foreground as given (PIL RGB, original sizes)."""
        return dict(self._images)

    @property
    def foreground_mask(self):
        """The object mask as the official code binarises it (greyscale PIL image or array)."""
        return self._object_mask

    @property
    def steps(self) -> int:
        """The steps the composition runs (records 0..steps): ``config.steps``, or with a later start (TALE) those
        after its grid index (``tficon.core.plan.composition_steps``)."""
        return composition_steps(self._config)

    @property
    def injection(self) -> InjectionSchedule:
        """The injection schedule of the current settings (``tficon.core.plan.injection_for``)."""
        return injection_for(self._config)

    @property
    def plans(self) -> tuple[StepPlan, ...]:
        """The plan of every step 0..S under the current settings."""
        return self._plans_for(self._config)

    def _plans_for(self, config: CompositionConfig) -> tuple[StepPlan, ...]:
        # Plans depend on the frozen config only; steps look them up on every call, so keep them.
        if self._plan_cache.get("config") != config:
            self._plan_cache = {"config": config, "plans": plans_for(config)}
        return self._plan_cache["plans"]


    def _check_config(self, config: CompositionConfig) -> None:
        self._check_steps(config)
        self.engine.family.check_config(config)  # settings this model family cannot honour are refused by name

    @staticmethod
    def _check_steps(config: CompositionConfig) -> None:
        if config.steps < config.order:
            raise ValueError(f"steps ({config.steps}) must be >= order ({config.order})")

    def _check_prompt(self, prompt) -> str:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        text = plain_prompt(prompt)  # the encoder sees the prompt without its <ref> markers; unbalanced ones raise
        self.model.encode_prompt(text)  # raises a clear error when it is longer than the encoder window
        if self.model.vocabulary is not None:
            notice_words_outside_the_toy_world(text, self.model.vocabulary)
        return prompt

    def _object_tokens(self, prompt: str, config: CompositionConfig) -> tuple[int, ...]:
        """The object's token positions where region-constrained cross-attention or the adaptive blend needs
        them, else (). Kept per prompt and settings: every step asks, and finding them tokenizes the prompt."""
        needed_by = tuple(name for name in ("region_cross_attention", "adaptive_blend") if getattr(config, name))
        if not needed_by:
            return ()
        key = (prompt, config.strategy, config.object_words, needed_by)
        if self._token_cache.get("key") != key:
            released = released_token_positions(prompt) if config.strategy == "primecomposer" else ()
            # primecomposer reads its released code's word indices (primecomposer-rca); else the tokenizer's
            positions = released or object_token_positions_of(
                self.model, prompt, config.object_words, " and ".join(needed_by)
            )
            self._token_cache = {"key": key, "positions": positions}
        return self._token_cache["positions"]

    @staticmethod
    def _load_box(mask_or_box):
        """The target as a box ``(x, y, w, h)`` of Python ints (``tficon.core.boxes``) or a bool mask."""
        box = as_user_box(mask_or_box, name="mask")
        return box if box is not None else io.load_mask(mask_or_box, name="mask")

    def update(self, **changes) -> int | None:
        """Apply new settings; returns the first step whose result changes (None: nothing changes).

        Accepts configuration fields, ``prompt``, ``mask_or_box``, ``background``, ``foreground`` and
        ``foreground_mask``. Invalid values raise and leave the Session unchanged. Steps from the returned index on
        are dropped and recomputed by the next ``run``; a prompt or guidance change keeps both
        inversions and the start latent, a tau change keeps every step before its first effect, a box
        move in cross mode keeps both inversions (the reference canvas is centred, so only a size
        change re-inverts it; inversions are cached by content).
        """
        new_prompt = self._check_prompt(changes.pop("prompt")) if "prompt" in changes else self._prompt
        new_box = self._load_box(changes.pop("mask_or_box")) if "mask_or_box" in changes else self._mask_or_box
        new_images = dict(self._images)
        for name in ("background", "foreground"):
            if name in changes:
                new_images[name] = io.load_image(changes.pop(name), name=name)
        new_mask = official_mask_source(changes.pop("foreground_mask")) if "foreground_mask" in changes else self._object_mask
        images_changed = any(new_images[n] is not self._images[n] for n in new_images) or new_mask is not self._object_mask
        new_config = self._config.replace(**changes)
        self._check_config(new_config)
        self.engine.injected_layers(new_config.inject_layers)
        self._object_tokens(new_prompt, new_config)
        prompt_changed = new_prompt != self._prompt
        box_changed = not same_box(new_box, self._mask_or_box)
        changed_fields = {
            name for name in new_config.__dataclass_fields__ if getattr(new_config, name) != getattr(self._config, name)
        }
        old_plans = self.plans
        pairs = ((new_config, new_prompt), (self._config, self._prompt))
        new_recipe = len({latent_recipe(c.strategy, plain_prompt(p)) for c, p in pairs}) > 1  # tigic: the prompt too
        new_inputs = None
        if images_changed or box_changed or changed_fields & _NEW_INPUTS:
            # raises before anything changes
            new_inputs = self._prepare_inputs(new_config, new_box, new_images, new_mask)
        self._config, self._prompt, self._mask_or_box = new_config, new_prompt, new_box
        self._images, self._object_mask = new_images, new_mask

        if new_inputs is not None:
            self._reset(inputs=True)
            self._inputs = new_inputs
            return 0
        if changed_fields & _NEW_LATENTS or new_recipe:  # steps, order, seed (or what is inverted): new inversions
            self._reset(inputs=False)
            return 0
        if prompt_changed or changed_fields & _ALL_STEPS:  # the prompt and guidance enter every step
            first = 0
        else:
            new_plans = self.plans
            first = next((s for s, (a, b) in enumerate(zip(old_plans, new_plans)) if a != b), None)
        if first is None:
            return None
        self._records = self._records[:first]
        self._result = None
        return first

    # ------------------------------------------------------------------ phases 1-4
    def _reset(self, *, inputs: bool) -> None:
        if inputs:
            self._inputs: Inputs | None = None
            self._preview_map = None
        self._latents = None  # (z_bg, z_ref, generator state after both draws)
        self._inverted = None  # (x_bg_T, x_ref_T)
        self._kept_records = None  # both inversions' records, when the plans read them (strategy primecomposer)
        self._start = None
        self._records: list[StepRecord] = []
        self._result = None
        self._controller = None

    @property
    def inputs(self) -> Inputs:
        if self._inputs is None:
            self._inputs = self._prepare_inputs(self._config, self._mask_or_box, self._images, self._object_mask)
        return self._inputs

    def _prepare_inputs(self, config: CompositionConfig, mask_or_box, images: dict, object_mask) -> Inputs:
        return prepare_inputs(self.model, config, mask_or_box, images, object_mask, self.image_size)

    @property
    def placement(self) -> placement_mod.Placement:
        return self.inputs.placement

    def _encode(self):
        if self._latents is None and self._config.strategy == "tigic":  # the collage and the reference (tigic_latents)
            with self._threads():
                self._latents = encode_collage(self.engine, self.inputs, self._config.seed)
        if self._latents is None:
            started = time.perf_counter()
            inputs = self.inputs
            generator = torch.Generator().manual_seed(self._config.seed)
            first = inputs.cut_and_paste if self._config.mode == "same" else inputs.background
            # Through the engine's VAE door, which casts to the VAE's own dtype (float32 for SDXL's in float16)
            with torch.no_grad(), self._threads():
                z_bg = self.engine.encode(first[None], generator)
                z_ref = self.engine.encode(inputs.reference[None], generator)
            self._latents = (z_bg, z_ref, generator.get_state())
            self.timings["encode"] = time.perf_counter() - started
        return self._latents

    @property
    def time_ids(self) -> dict[str, torch.Tensor] | None:
        """Each branch's extra conditioning from the model's family: on SDXL the added time ids, (1, 6) float32
        (original h, w; crop top, left; target h, w); None on SD models. Every branch works on an image at the working
        size, so all four are ``(H, W, 0, 0, H, W)``, the pipeline's default at that size (docs/algorithm.md §15.3);
        they travel per branch through the engine."""
        ids = self.engine.family.time_ids(self.model, self.image_size)
        if ids is None:
            return None
        return {branch: ids for branch in ("generation", "background", "reference", "pseudo_cross")}

    def invert(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert the background (the cut-and-paste in "same" mode) and the reference to t = 1 (with a later start:
        to its grid point, ``self.steps`` inversion steps of the same grid)."""
        if self._inverted is None and any(plan.kept_inversions for plan in self.plans):
            self._inverted = tuple(record[0] for record in self.inversion_records())  # one inversion, kept whole
        if self._inverted is None and self._config.strategy == "tigic":
            self._inverted = self._prompted_inversions()
        if self._inverted is None:
            z_bg, z_ref, _ = self._encode()
            started = time.perf_counter()
            ids = self.time_ids
            with self._threads():
                (x_bg, x_ref), cached, evals = self.engine.invert(
                    [z_bg, z_ref], self.steps, self._config.order, progress=self.progress,
                    time_ids=None if ids is None else [ids["background"], ids["reference"]],
                    names=("cut-and-paste" if self._config.mode == "same" else "background", "reference"),
                    # a later start stops the inversions at its grid point; else the schedule's noisy end
                    t_start=float(self._grid()[0]) if start_index(self._config) else None,
                )  # fmt: skip
            self.stats["unet_calls"] += self.steps if evals else 0
            self.stats["sample_evals"] += evals
            self._inverted = (x_bg, x_ref)
            self.timings["invert"] = time.perf_counter() - started
            self.timings["invert_cached"] = tuple(cached)
        return self._inverted

    def compose_start(self) -> torch.Tensor:
        """The start latent (docs/algorithm.md §7): inverted background outside the box, inverted reference (cross) or
        inverted composite (same) on the object, fresh noise in the rest of the box (``tficon.composition.start``);
        with a later start, of the inversions at its grid point."""
        if self._start is None:
            x_bg, x_ref = self.invert()
            _, _, rng_state = self._encode()
            generator = torch.Generator()
            generator.set_state(rng_state)
            self._start = start_latent(
                x_bg, x_ref, self.placement, self.inputs.object_mask, self.model.vae_scale_factor,
                mode="cross" if self._config.strategy == "tigic" else self._config.mode, generator=generator,
            )  # fmt: skip
        return self._start

    def region_masks(self, height: int | None = None, width: int | None = None) -> dict[str, torch.Tensor]:
        """Bool maps of the target box, the object and the background at a resolution (latent by default)."""
        lh, lw = self.model.latent_shape(self.image_size)
        regions = placement_mod.region_indices(self.placement, self.inputs.object_mask, height or lh, width or lw)
        return regions.masks()

    # ------------------------------------------------------------------ phase 5: steps
    @property
    def step_index(self) -> int:
        """The next step to run (= number of completed steps)."""
        return len(self._records)

    @property
    def done(self) -> bool:
        return len(self._records) == self.steps + 1

    @property
    def records(self) -> tuple[StepRecord, ...]:
        return tuple(self._records)

    def _threads(self):
        """torch's CPU threads set to ``self.threads`` for the block (nothing changes when it is None)."""
        return torch_threads(self.threads)

    def _grid(self) -> torch.Tensor:
        # on the model's device, so that solver coefficients never mix CPU and GPU tensors; the schedule's ends (the
        # official 1.0 and 1e-3; a flow keeps its noisy end off alpha = 0, tficon.core.flow); with a later start the
        # tail of the config's grid from its start index on (a time-uniform grid of self.steps steps)
        ends = dict(t_start=self.schedule.t_start, t_end=self.schedule.t_end)
        grid = solver.time_grid(self._config.steps, **ends, device=self.model.device)
        start = start_index(self._config)
        return grid if start == 0 else grid[start:].clone()

    def _blend_mask(self, like: torch.Tensor) -> torch.Tensor:
        """True inside the latent target box ("param"), broadcastable to a latent."""
        box = self.placement.latent_target_box
        mask = torch.zeros(like.shape[-2:], dtype=torch.bool, device=like.device)
        rows, cols = box.slices()
        mask[rows, cols] = True
        return mask

    def _ensure_controller(self) -> InjectionController:
        if self._controller is None:
            inputs = self.inputs
            device = self.model.device
            regions = lambda h, w: placement_mod.region_indices(  # noqa: E731
                inputs.placement, inputs.object_mask, h, w
            ).to(device)
            self._controller = InjectionController(
                latent_size=self.model.latent_shape(self.image_size), region_fn=regions, attend=self._attend
            )
        return self._controller

    def step(self) -> StepRecord:
        """Run the next step and return its record (raises when the composition is complete)."""
        if self.done:
            raise RuntimeError("the composition is complete; rewind() or update() to run steps again")
        return self.accept_step(self._compute_step(len(self._records)))

    @property
    def needs_inversion(self) -> bool:
        """Whether the exceptional-prompt inversions, which the runner batches, are still to be computed (strategy
        "tigic" inverts with its own prompts, alone: False)."""
        return self._inverted is None and self._config.strategy != "tigic"

    def encoded_latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE latents of the background (the cut-and-paste in "same" mode) and of the reference canvas,
        i.e. what :meth:`invert` inverts."""
        z_bg, z_ref, _ = self._encode()
        return z_bg, z_ref

    def step_request(self) -> tuple[StepPlan, StepRecord | None, StepInputs]:
        """What the engine needs to compute the next step: ``(plan, previous record, inputs)``.

        ``Engine.run_step(*session.step_request())`` is the record :meth:`step` would compute; ``Engine.run_steps``
        takes several Sessions' requests into one UNet call (``tficon.composition.runner``). Hand the record back with
        :meth:`accept_step`. Step 0's request inverts and composes the start latent first if needed.
        """
        if self.done:
            raise RuntimeError("the composition is complete; rewind() or update() to run steps again")
        return self._step_request(len(self._records))

    def accept_step(self, record: StepRecord) -> StepRecord:
        """Keep ``record``, computed from :meth:`step_request`, as the next step: count its work, check that its
        values are finite (else raise and keep the last good step) and store it, exactly as :meth:`step` does.

        A record of another step index or another plan is refused (a guard against mixing Sessions up; a record
        computed from another Session's request with the same plan cannot be told apart)."""
        s = len(self._records)
        if s > self.steps or record.s != s or record.plan != self.plans[s]:
            raise ValueError(
                f"this record is step {record.s} of another plan; the Session's next step is {s} "
                "(a record must come from this Session's own step_request, with no update or rewind in between)"
            )
        self.stats["unet_calls"] += record.unet_calls
        self.stats["sample_evals"] += record.sample_evals
        checks.check_step_finite(record, dtype=self.model.dtype)  # NaN/inf: raise, keep the last good step
        self._records.append(record)  # only now does the Session change: a failed step leaves no trace
        self._result = None
        return record

    def run(self, until: int | None = None) -> "Session":
        """Run steps until ``until`` steps are complete (all S + 1 by default)."""
        target = self.steps + 1 if until is None else until
        if not 0 <= target <= self.steps + 1:
            raise ValueError(f"until must be in 0..{self.steps + 1}, got {until}")
        self.compose_start()
        remaining = target - len(self._records)
        if remaining > 0:  # the runner's one-Session case: bitwise self.step() repeated
            with tqdm(total=remaining, desc="compose", disable=not self.progress, leave=False) as bar:
                run_alone(self, until=target, threads=self.threads, on_step=lambda task: bar.update(1))
        return self

    def rewind(self, step: int) -> None:
        """Forget steps ``step``.. so that the next ``step()`` recomputes step ``step``."""
        if not 0 <= step <= len(self._records):
            raise ValueError(f"can rewind to 0..{len(self._records)}, got {step}")
        del self._records[step:]
        self._result = None

    def _compute_step(self, s: int, *, capture: CaptureRequest | None = None) -> StepRecord:
        """The record of step ``s`` from the record before it, computed by the engine from explicit inputs
        (nothing in ``self`` changes; the caller decides whether to keep the record and count its work)."""
        request = self._step_request(s, capture=capture)
        with self._threads():
            return self.engine.run_step(*request)

    def _step_request(self, s: int, *, capture: CaptureRequest | None = None):
        """(plan, previous record, inputs) of step ``s``; inverts and composes the start latent for step 0."""
        previous = self._records[s - 1] if s > 0 else None
        start = None
        if s == 0:
            x_bg, x_ref = self.invert()  # tigic: its reference branch, too, starts from x_bg (the collage's)
            start = (self.compose_start(), x_bg, x_bg if self._config.strategy == "tigic" else x_ref)
        model = self.model
        grid = self._grid()
        inputs = StepInputs(
            steps=self.steps,
            order=self._config.order,
            guidance=self._config.effective_guidance,
            grid=grid,
            exceptional=model.exceptional_embedding(),
            uncond=model.unconditional_embedding(),
            cond=model.encode_prompt(self._encoded_text()),
            inside=self._blend_mask(start[0] if start is not None else previous.generation.x),
            controller=self._ensure_controller(),
            start=start,
            capture=capture,
            time_ids=self.time_ids,
            kept=self._kept_inversions() if self.plans[s].kept_inversions else None,
            object_region=self.region_masks()["object"].to(model.device) if self.plans[s].latent_norm else None,
            object_tokens=self._object_tokens(self._prompt, self._config),
        )
        return self.plans[s], previous, inputs

    # ------------------------------------------------------------------ phase 6
    def decode(self, latent: torch.Tensor | None = None) -> torch.Tensor:
        """VAE-decode ``latent`` (default: the final composition) to (1, 3, H, W) in [-1, 1]."""
        if latent is None:
            if not self.done:
                raise RuntimeError(f"the composition has {len(self._records)} of {self.steps + 1} steps: run() first")
            latent, what = self._records[-1].generation.x, f"the final latent of step {self.steps}"
        else:
            what = "decode(latent)"
        checks.check_finite(latent, what, dtype=self.model.dtype)
        with torch.no_grad(), self._threads():  # the engine's VAE door: the latent meets the VAE in the VAE's dtype
            image = self.engine.decode(latent).cpu()
        checks.check_finite(image, f"the VAE decode of {what}", dtype=self.model.dtype)
        return image

    @property
    def result(self):
        """The composed image as a PIL image (runs the remaining steps)."""
        if self._result is None:
            self.run()
            self._result = io.to_pil(self.decode()[0])
        return self._result

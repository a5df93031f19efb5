"""What each composition step does: a pure plan derived from the injection schedule.

The Session executes plans; keeping them pure makes three things easy: testing the batched design
against docs/algorithm.md §13.3/13.6 without a model, counting UNet work, and finding the first
step whose result changes when a setting changes (the first step whose plan differs).

Step s (0..S) leaves the generation branch at grid index s: steps s >= 1 first move every active
trajectory from t_{s-1} to t_s, then (for s < S) one batched UNet call evaluates the roles of
``attention.BatchLayout``, then the blends of that step are applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from tficon.core.config import later_start_index
from tficon.core.layers import ALL_LAYERS, parse_layer_spec
from tficon.core.schedule import InjectionSchedule, injection_schedule
from tficon.core.solver import step_order
from tficon.core.tigic import BACKGROUND_WINDOW, BLEND_UNTIL, REFERENCE_WINDOW


@dataclass(frozen=True)
class StepPlan:
    """Everything step ``s`` does, in execution order.

    pre_evals:      grid indices j at which background and reference are evaluated on their own and then moved to
                    j + 1 before the main call (the official warm-up runs them ahead of generation, 8.4).
    advance_*:      move that trajectory from t_{s-1} to t_s with ``order``.
    evaluate:       make the batched UNet call (every step but the last).
    map_index:      grid index of the background/reference/pseudo rows whose logits the generation branch's call at t_s reads.
    pseudo_latent:  grid index of the reference latent fed to the pseudo-cross row (the official lag).
    background_row, reference_row, pseudo_cross_row: which helper rows the call holds (the generation branch's two rows are always there).
    fg, bg:         foreground / background injection into the generation branch's conditional row.
    background_queries: the injected pseudo-cross logits take the background branch's queries (an option, not official).
    history_blend:  after the last warm-up evaluation, replace the generation branch's stored D values outside the box
                    by the background branch's (the official model-history blending).
    blend:          after the evaluation, the generation branch's latent outside the box <- the background branch's latent.

    PrimeComposer's released code (strategy "primecomposer"; tficon.core.primecomposer has the formulas):
    kept_inversions: the step reads the kept inversion trajectories (``StepInputs.kept``) instead of running
                    background and reference branches.
    object_block:   with ``fg``, the object x object block of the composite comes from the reference row (TF-ICON);
                    False: the pseudo-cross rows and columns only.
    pseudo_cross_prompt: the pseudo-cross row is conditioned on the prompt instead of the exceptional prompt.
    paste_on_reference: before the solver update, the reference canvas at t_s takes the generation's latent (still at
                    t_{s-1}) on the object; the pseudo-cross row then reads that canvas.
    kept_history_blend: after the last warm-up evaluation, the generation's stored data predictions outside the box
                    <- the kept background trajectory's entries 0..k-1 (noisy latents: the released code's oddity).
    hold_object:    after the evaluation, the latent <- the kept background at t_s, with the reference canvas at t_s
                    on the object.
    kept_blend:     after the evaluation, the latent outside the box <- the kept background at t_s.
    latent_norm:    TALE's adaptive latent normalisation right after the solver update: the weight with which the
                    generation branch's object region takes the background branch's per-channel statistics (0: none).
    inject_layers:  the self-attention layers whose ``cond`` row takes this step's composite (``tficon.core.layers``:
                    "all", a part, or a list); the others run plain attention. "all" on steps without injection.
    region_cross_attention: the generation's conditional cross-attention confines the object's words to the placed
                    object on this step's evaluation (``tficon.composition.cross_attention``).
    adaptive_blend: this step's background blend keeps the generation inside the attention-derived object mask of
                    its own evaluation instead of the box (``blend`` is then False; ``phases.adaptive_blend``).

    TIGIC's released code (strategy "tigic"; ``tigic_step_plan``, tficon.core.tigic has the weights):
    prompted_branches: the background rows are conditioned on the empty prompt and the reference rows on the prompt
                    (``inputs.uncond`` / ``inputs.cond``) instead of the exceptional prompt.
    mix_background, mix_reference: the generation's conditional pre-softmax map in the ``inject_layers`` (the
                    decoder) is mixed 50/50 with the background row's, then 50/50 with the reference row's
                    (``tficon.composition.tigic_attention``); nothing else of TF-ICON's composite is injected.
    """

    s: int
    order: int
    pre_evals: tuple[int, ...]
    advance_generation: bool
    advance_background: bool
    advance_reference: bool
    evaluate: bool
    map_index: int | None
    pseudo_latent: int | None
    background_row: bool
    reference_row: bool
    pseudo_cross_row: bool
    fg: bool
    bg: bool
    background_queries: bool
    history_blend: bool
    blend: bool
    # PrimeComposer (issue 22; ``primecomposer_step_plan``). All off by default, so TF-ICON's plans are unchanged.
    kept_inversions: bool = False
    object_block: bool = True
    pseudo_cross_prompt: bool = False
    paste_on_reference: bool = False
    kept_history_blend: bool = False
    hold_object: bool = False
    kept_blend: bool = False
    # TALE (issue 22): the weight of the adaptive latent normalisation (0: off)
    latent_norm: float = 0.0
    inject_layers: str = ALL_LAYERS
    region_cross_attention: bool = False
    adaptive_blend: bool = False
    # TIGIC (issue 22; ``tigic_step_plan``). All off by default, so TF-ICON's plans are unchanged.
    prompted_branches: bool = False
    mix_background: bool = False
    mix_reference: bool = False

    @property
    def batch_size(self) -> int:
        """Samples in this step's main UNet call (0 when there is none)."""
        if not self.evaluate:
            return 0
        return 2 + int(self.background_row) + int(self.reference_row) + int(self.pseudo_cross_row)

    @property
    def sample_evals(self) -> int:
        """Samples through the UNet in this step, pre-evaluations included."""
        return self.batch_size + 2 * len(self.pre_evals)

    @property
    def unet_calls(self) -> int:
        return int(self.evaluate) + len(self.pre_evals)


def step_plan(
    schedule: InjectionSchedule,
    s: int,
    *,
    cross_lag: bool = True,
    background_queries: bool = False,
    latent_norm: tuple[int, float] = (0, 0.0),
    inject_layers: str = ALL_LAYERS,
    region_cross_attention: bool = False,
    adaptive_blend_until: float | None = None,
) -> StepPlan:
    """The plan of step ``s`` (0..steps) for an injection schedule.

    ``cross_lag`` (official True): in the main loop the pseudo-cross row reads the reference latent of
    the previous grid point, t_{s-1}, with the timestep of t_s. ``background_queries`` (official False):
    the injected pseudo-cross logits use the background branch's queries, so the background row is evaluated while fg injection is on.
    ``latent_norm`` (official ``(0, 0.0)``: off): ``(n, strength)``, TALE's adaptive latent normalisation on steps
    1..n with weight ``strength * s / n`` on step ``s``; its target, the background branch's latent at t_s, needs that
    branch evaluated on every step before (so its row is kept until step n - 1). With order 3 and the official
    warm-up the background is a step ahead on step 1, which is then left out.
    ``inject_layers`` (official "all"): the self-attention layers that take the composite on injected steps.
    ``region_cross_attention`` (official False): PrimeComposer's constraint on every generation evaluation.
    ``adaptive_blend_until`` (official None: off): the blends of steps s < int(f * S + 1 - order), step fractions
    read like the taus, that also evaluate, use the attention-derived mask instead of the box.
    """
    steps, k = schedule.steps, schedule.order
    if not 0 <= s <= steps:
        raise ValueError(f"step must be in 0..{steps}, got {s}")
    # Officially background and reference finish their whole warm-up (evaluations t_0..t_{k-1}) before generation starts,
    # and every generation warm-up evaluation reads their maps at t_{k-1}.
    ahead = not schedule.align_warmup and k > 1
    evaluate = s < steps
    fg = evaluate and schedule.fg_inject(s)
    bg = evaluate and schedule.bg_inject(s)
    background_queries = fg and background_queries
    norm_steps, norm_strength = latent_norm
    norm = norm_strength * s / norm_steps if 1 <= s <= norm_steps and not (ahead and s < k - 1) else 0.0
    background_row = evaluate and (bg or schedule.background_needed(s) or background_queries or s < norm_steps)
    blend = s >= k and schedule.blend_after(s)
    adaptive = adaptive_blend_until is not None and blend and evaluate and s < int(adaptive_blend_until * steps + 1 - k)
    if s == 0 or (ahead and s < k):
        advance_background = advance_reference = False
    else:
        advance_background = background_row or blend or norm > 0  # an adaptive blend is a blend: background at t_s
        advance_reference = fg
    map_index = schedule.maps_index(s) if evaluate else None
    pseudo_latent = None
    if fg:
        pseudo_latent = map_index - 1 if (cross_lag and map_index >= k) else map_index
    return StepPlan(
        s=s,
        order=step_order(s, steps, k) if s > 0 else 0,
        pre_evals=tuple(range(k - 1)) if (s == 0 and ahead) else (),
        advance_generation=s > 0,
        advance_background=advance_background,
        advance_reference=advance_reference,
        evaluate=evaluate,
        map_index=map_index,
        pseudo_latent=pseudo_latent,
        background_row=background_row,
        reference_row=fg,
        pseudo_cross_row=fg,
        fg=fg,
        bg=bg,
        background_queries=background_queries,
        history_blend=s == k - 1,
        blend=blend and not adaptive,
        latent_norm=norm,
        inject_layers=parse_layer_spec(inject_layers) if (fg or bg) else ALL_LAYERS,
        region_cross_attention=region_cross_attention and evaluate,
        adaptive_blend=adaptive,
    )


def _bound(tau: float, steps: int, order: int) -> int:
    """The released codes' step bound ``int(tau * steps + 1 - order)`` (Python floats, truncation)."""
    return int(tau * steps + 1 - order)


def primecomposer_step_plan(
    steps: int,
    order: int,
    tau_a: float,
    tau_b: float,
    tau_c: float,
    s: int,
    *,
    inject_layers: str = ALL_LAYERS,
    region_cross_attention: bool = False,
) -> StepPlan:
    """The plan of step ``s`` (0..steps) as PrimeComposer's released sampler runs it (docs/strategies.md §4.3).

    Warm-up (s < order): the generation branch is evaluated with the pseudo-cross rows/columns injected, from one
    pseudo-cross pass on the unedited inverted reference x_ref(t_0) at time t_{k-1} (the last of the released code's
    warm-up passes, the one whose maps survive); at s = order - 1 the stored data predictions are blended with the kept
    background trajectory. Main loop (s >= order), with threshold(f) = int(f * S + 1 - k): while s <
    threshold(tau_a) the reference canvas at t_s takes the generation's latent on the object, the pseudo-cross pass
    runs on it at t_s and is injected; after the evaluation, s < threshold(tau_c) holds the object, else s <
    threshold(tau_b) blends the kept background outside the box. No background or reference branch ever runs.
    """
    if not 0 <= s <= steps:
        raise ValueError(f"step must be in 0..{steps}, got {s}")
    evaluate = s < steps
    warm_up = s < order
    fg = evaluate and (warm_up or s < _bound(tau_a, steps, order))
    hold = not warm_up and s < _bound(tau_c, steps, order)
    return StepPlan(
        s=s,
        order=step_order(s, steps, order) if s > 0 else 0,
        pre_evals=(),
        advance_generation=s > 0,
        advance_background=False,
        advance_reference=False,
        evaluate=evaluate,
        map_index=(order - 1 if warm_up else s) if evaluate else None,
        pseudo_latent=(0 if warm_up else s) if fg else None,
        background_row=False,
        reference_row=False,
        pseudo_cross_row=fg,
        fg=fg,
        bg=False,
        background_queries=False,
        history_blend=False,
        blend=False,
        kept_inversions=True,
        object_block=False,
        pseudo_cross_prompt=True,
        paste_on_reference=fg and not warm_up,
        kept_history_blend=s == order - 1,
        hold_object=hold,
        kept_blend=not warm_up and not hold and s < _bound(tau_b, steps, order),
        # the attention mechanisms that apply to it: the layer choice of its injection, and its own region-constrained
        # cross-attention on every generation evaluation (the ``primecomposer-rca`` preset)
        inject_layers=parse_layer_spec(inject_layers) if fg else ALL_LAYERS,
        region_cross_attention=region_cross_attention and evaluate,
    )


def tigic_step_plan(steps: int, order: int, s: int) -> StepPlan:
    """The plan of step ``s`` (0..steps) as TIGIC's released sampler runs it (docs/strategies.md §4.6).

    Three branches start from the collage's inversion: background ("orig", conditioned on ''), reference ("ref",
    conditioned on the prompt) and the generation. Warm-up (s < order): background and reference finish their own
    warm-up first (evaluated at t_0..t_{k-2} on their own, at t_{k-1} in step 0's call), and every generation warm-up
    evaluation mixes the reference's maps at t_{k-1} into its decoder self-attention. Main loop (s >= order), with
    threshold(f) = int(f * S + 1 - k): all three branches move to t_s and are evaluated in one call; the reference mix
    is on for threshold(0.2) <= s <= threshold(0.5), the background mix for threshold(0.0) < s < threshold(0.5); after
    the evaluation, s < threshold(1.0) takes the background's latent outside the box. ``tau_a``, ``tau_b`` and the
    TF-ICON switches are not read (the released sampler ignores its ``--tau_a`` / ``--tau_b``).
    """
    if not 0 <= s <= steps:
        raise ValueError(f"step must be in 0..{steps}, got {s}")
    evaluate = s < steps
    warm_up = s < order
    main = evaluate and not warm_up  # all three branches move to t_s and are evaluated there
    low, high = (_bound(f, steps, order) for f in REFERENCE_WINDOW)
    mix_reference = evaluate and (warm_up or low <= s <= high)
    low, high = (_bound(f, steps, order) for f in BACKGROUND_WINDOW)
    mix_background = main and low < s < high
    mixing = mix_background or mix_reference
    return StepPlan(
        s=s,
        order=step_order(s, steps, order) if s > 0 else 0,
        pre_evals=tuple(range(order - 1)) if s == 0 else (),
        advance_generation=s > 0,
        advance_background=main,
        advance_reference=main,
        evaluate=evaluate,
        map_index=(order - 1 if warm_up else s) if evaluate else None,
        pseudo_latent=None,
        background_row=s == 0 or main,  # its evaluation at t_{k-1} (step 0) and at every main-loop t_s
        reference_row=evaluate,  # the warm-up steps re-evaluate it at t_{k-1} for its maps
        pseudo_cross_row=False,
        fg=False,
        bg=False,
        background_queries=False,
        history_blend=False,
        blend=not warm_up and s < _bound(BLEND_UNTIL, steps, order),
        inject_layers="decoder" if mixing else ALL_LAYERS,
        prompted_branches=True,
        mix_background=mix_background,
        mix_reference=mix_reference,
    )


def start_index(config) -> int:
    """The grid index (of the ``config.steps``-step grid) where the composition starts: 0 officially (t = 1), TALE's
    t' with ``later_start`` (``tficon.core.config.later_start_index``)."""
    return later_start_index(config.later_start, config.steps)


def composition_steps(config) -> int:
    """The steps the composition runs: ``config.steps`` officially; with a later start, those after its grid index
    (the inversions stop there and the steps before it are not run: no plan, no UNet work)."""
    return config.steps - start_index(config)


def injection_for(config) -> InjectionSchedule:
    """The injection schedule of a ``CompositionConfig`` (its steps, order, fractions and warm-up switch); with a
    later start the fractions count the steps the composition runs (:func:`composition_steps`)."""
    return injection_schedule(
        composition_steps(config), config.order, config.tau_a, config.tau_b, config.tau_bg,
        align_warmup=config.align_warmup,
    )  # fmt: skip


def plans_for(config) -> tuple[StepPlan, ...]:
    """Plans of all steps 0..steps of a ``CompositionConfig``: the one place the config becomes plans."""
    if config.strategy == "tigic":
        return tuple(tigic_step_plan(config.steps, config.order, s) for s in range(config.steps + 1))
    if config.strategy == "primecomposer":
        args = (config.steps, config.order, config.tau_a, config.tau_b, config.tau_c)
        attention = dict(inject_layers=config.inject_layers, region_cross_attention=config.region_cross_attention)
        return tuple(primecomposer_step_plan(*args, s, **attention) for s in range(config.steps + 1))
    return composition_plan(
        injection_for(config), cross_lag=not config.no_cross_lag, background_queries=config.background_queries,
        latent_norm=(config.latent_norm_steps, config.latent_norm_strength),
        inject_layers=config.inject_layers, region_cross_attention=config.region_cross_attention,
        adaptive_blend_until=config.adaptive_blend_until if config.adaptive_blend else None,
    )  # fmt: skip


def composition_plan(schedule: InjectionSchedule, **options) -> tuple[StepPlan, ...]:
    """Plans of all steps 0..steps: :func:`step_plan` of each, with the same keyword ``options`` (its list of them
    and their official defaults is the one place they are written)."""
    return tuple(step_plan(schedule, s, **options) for s in range(schedule.steps + 1))

"""The one configuration object of a composition, and the one list of its settings.

Defaults reproduce the official TF-ICON code (docs/algorithm.md §10). Every deviation from
the official behaviour is a named switch that is off by default.

Each field carries its metadata (:func:`setting`): a help line, its range or choices, what a change invalidates,
its command-line flag, whether it can be a sweep axis and which Explorer control shows it. Everything that lists
settings (the CLI, the sweep axes, ``Session.update``, the Explorer) loops over :data:`SETTINGS` instead of
re-typing field names, so a new field appears everywhere by being declared here once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tficon.core.layers import parse_layer_spec
from tficon.core.tigic import TIGIC_GUIDANCE  # TIGIC's released --scale default, not forced per domain

#: What a change of a setting makes stale, from the most to the least work (``Session.update``):
#: ``inputs``: the placement and the prepared images (and everything after them);
#: ``latents``: the encoded latents, both inversions and the start latent (placement kept);
#: ``all_steps``: every denoising step (inversions and start latent kept);
#: ``plans``: the denoising steps from the first whose plan (``tficon.core.plan``) differs.
INVALIDATES = ("inputs", "latents", "all_steps", "plans")


@dataclass(frozen=True)
class Setting:
    """The metadata of one ``CompositionConfig`` field (see :func:`setting`)."""

    name: str
    default: Any
    help: str
    invalidates: str
    range: tuple[float, float | None] | None = None  # the accepted values (high None: no upper bound)
    span: tuple[float, float] | None = None  # the span an Explorer control shows, where it differs from ``range``
    choices: tuple | None = None
    cli: str | None = None  # the command-line flag; None: derived from the name
    sweep: bool = False  # can be an axis of ``tficon.sweep``
    # the Explorer control: "slider", "int", "dropdown", "checkbox", "text" (a text field), "layers" (a text field that
    # also offers the model's self-attention layer selections) or None (not shown)
    control: str | None = None
    step: float | None = None  # the slider's step
    switch: bool = False  # a parity switch (bool, off = the official behaviour)

    @property
    def control_span(self) -> tuple[float, float] | None:
        """The (low, high) an Explorer control offers: ``span`` where given, else ``range``."""
        return self.span if self.span is not None else self.range

    @property
    def flag(self) -> str:
        return self.cli or "--" + self.name.replace("_", "-")


def setting(default, *, help: str, invalidates: str, **meta) -> Any:
    """A ``CompositionConfig`` field with its :class:`Setting` metadata (keyword arguments as in ``Setting``)."""
    if invalidates not in INVALIDATES:
        raise ValueError(f"invalidates must be one of {INVALIDATES}, got {invalidates!r}")
    return field(default=default, metadata={"tficon": dict(help=help, invalidates=invalidates, **meta)})

MODES = ("cross", "same")

#: What the denoising steps compute (the ``strategy`` field): "tf-icon" is the official TF-ICON code, "primecomposer"
#: the released code of PrimeComposer (docs/strategies.md §4.3), run on the same inputs and inversions, "tigic" the
#: released code of TIGIC (§4.6: its own prompted inversions of the collage, three branches, decoder logit mixes).
STRATEGIES = ("tf-icon", "primecomposer", "tigic")

#: PrimeComposer's script does not force the guidance per domain: its ``--scale`` default is 2.5 in both modes.
PRIMECOMPOSER_GUIDANCE = 2.5

# The official script ignores --scale and forces these per domain (docs/algorithm.md §8.1).
OFFICIAL_GUIDANCE = {"cross": 5.0, "same": 2.5}

#: Accepted ranges of the step fractions. tau_a and tau_bg are fractions in [0, 1]. tau_b may exceed 1 on
#: purpose: the official bound int(tau_b * S + 1 - order) reaches the last steps only for tau_b >= (S + order) / S
#: (e.g. 1.1 pins the background outside the box on every step), and (S + order) / S <= 2 for every S >= order.
#: (The ranges are declared on the fields below; this table is derived from them after the class.)
TAU_RANGES: dict[str, float] = {}

#: Seeds go to ``torch.Generator.manual_seed``, which takes a signed 64-bit integer; negative ones wrap, so we
#: accept exactly the non-negative range and say so instead of torch's "Overflow when unpacking long long".
SEED_RANGE = (0, 2**63)


#: The largest accepted ``later_start``: later than 90 % of the steps leaves (almost) nothing to compose; a start
#: must also leave at least ``order`` steps (checked with the steps).
LATER_START_MAX = 0.9


def later_start_index(later_start: float, steps: int) -> int:
    """The grid index a composition with ``later_start`` starts at: ``int(later_start * steps)``, as the official
    bounds truncate, with a guard of 1e-9 so that e.g. 0.6 * 20 (= 11.999999999999998 in some orders of operations)
    gives 12."""
    return int(later_start * steps + 1e-9)


def _is_number(value) -> bool:
    # bool is an int subclass, but tau_a=True is a mistake, not 1.0
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CompositionConfig:
    """Settings of one TF-ICON composition.

    mode:      "cross" (the object comes from another domain: the start latent holds the inverted
               reference inside the object) or "same" (the pixel cut-and-paste is inverted as a whole).
    steps:     DPM-Solver++ steps, for inversion and for sampling (official 20).
    order:     solver order 1, 2 or 3 (official 2).
    guidance:  classifier-free guidance of the generation branch, finite and >= 0; None = official 5.0 (cross) /
               2.5 (same).
    tau_a:     fraction of steps with foreground (composite self-attention) injection (official 0.4), in [0, 1].
    tau_b:     fraction of steps after which the background latent is blended in (official 0.8), in [0, 2]
               (values above 1 extend the blending to the last steps, see TAU_RANGES).
    tau_bg:    fraction of steps with background-logit injection; hard-coded 0.4 in the official code; in [0, 1].
    seed:      seeds the one generator of all random draws (VAE posterior samples, then box noises); in [0, 2**63).

    Every field is checked at construction (and by ``replace``), so a bad value fails before any model work.

    Parity switches (all False = the official behaviour):
    align_warmup:  the generation branch's warm-up evaluations see the maps of their own time instead of those at t_{k-1}.
    no_cross_lag:  the pseudo-cross pass uses the reference latent at t_s instead of t_{s-1}.
    background_queries: the pseudo-cross logits injected into the composite use the background
                   branch's queries against the reference's object keys, our reading of the
                   paper, instead of the reference's own queries as the official code does (docs/algorithm.md §8.3).
    largest_contour: the target box is the bbox of the largest mask contour instead of OpenCV's first one.
    clip_box:      boxes that leave the image are moved inside instead of raising an error.

    strategy:  "tf-icon" (default, the official code), "primecomposer" (PrimeComposer's released code, see
               docs/strategies.md §4.3; tau_bg, align_warmup, no_cross_lag and background_queries do not
               apply to it) or "tigic" (TIGIC's released code, §4.6: mode, the taus, tau_bg and the parity switches
               do not apply; guidance None means 3.5).
    tau_c:     primecomposer only: the steps s < int(tau_c * S + 1 - order) reset the latent to the inverted
               background with the object held at its post-warm-up latent (its sampler's default 0.2), in [0, 1].
    TALE's mechanisms (off by default; docs/strategies.md):
    later_start:   fraction of the steps skipped: the inversions stop at grid index ``int(later_start * steps)`` and
                   the composition runs the remaining steps from there (the taus count those steps).
    latent_norm_steps, latent_norm_strength: on steps 1..n after the start, the object region's per-channel latent
                   statistics move toward the background branch's (AdaIN), with weight strength * j / n on step j.
    Attention mechanisms (off by default; docs/strategies.md):
    inject_layers: the self-attention layers that take the composite injection (``tficon.core.layers``): "all"
                   (official), "encoder", "mid", "decoder", or a comma-separated list of layer names/prefixes.
    region_cross_attention: on every generation evaluation, the conditional cross-attention of the object's words
                   is removed outside the placed object (PrimeComposer's region-constrained cross-attention).
    object_words:  the object's words in the prompt (else marked in it: ``a painting of a <ref> red dog <ref>``).
    adaptive_blend: the background blends of the steps before ``adaptive_blend_until`` (a step fraction, bound
                   int(f * S + 1 - order) like the taus) keep the generation inside a mask derived from its
                   cross-attention to the object's words instead of the box (SHINE's adaptive background blending).
    """

    mode: str = setting(
        "cross", help="cross: the object comes from another domain; same: the cut-and-paste is inverted whole",
        invalidates="inputs", choices=MODES, control="dropdown",
    )  # fmt: skip
    steps: int = setting(
        20, help="DPM-Solver++ steps, for inversion and sampling", invalidates="latents", range=(1, None),
        span=(1, 1000), sweep=True, control="int",
    )  # fmt: skip
    order: int = setting(2, help="solver order", invalidates="latents", choices=(1, 2, 3))
    guidance: float | None = setting(
        None, help="classifier-free guidance; default 5.0 cross, 2.5 same (official)", invalidates="all_steps",
        range=(0.0, None), span=(0.0, 20.0), sweep=True, control="slider", step=0.5,
    )  # fmt: skip
    tau_a: float = setting(
        0.4, help="fraction of steps with foreground (composite) injection", invalidates="plans", range=(0.0, 1.0),
        sweep=True, control="slider", step=0.05,
    )  # fmt: skip
    tau_b: float = setting(
        0.8, help="fraction of steps after which the background is blended in (above 1: also the last steps)",
        invalidates="plans", range=(0.0, 2.0), sweep=True, control="slider", step=0.05,
    )  # fmt: skip
    tau_bg: float = setting(
        0.4, help="fraction of steps with background-logit injection", invalidates="plans", range=(0.0, 1.0),
        sweep=True, control="slider", step=0.05,
    )  # fmt: skip
    seed: int = setting(
        3407, help="seeds the VAE posterior samples and the box noises", invalidates="latents",
        range=(0, 2**63 - 1), sweep=True, control="int",
    )  # fmt: skip
    align_warmup: bool = setting(
        False, help="warm-up evaluations see the maps of their own time (official: those at t_{k-1})",
        invalidates="plans", switch=True, control="checkbox",
    )  # fmt: skip
    no_cross_lag: bool = setting(
        False, help="the pseudo-cross pass uses the reference latent at t_s (official: at t_{s-1})",
        invalidates="plans", switch=True, control="checkbox",
    )  # fmt: skip
    background_queries: bool = setting(
        False, help="pseudo-cross logits use the background branch's queries (official: the reference's own)",
        invalidates="plans", switch=True, control="checkbox",
    )  # fmt: skip
    largest_contour: bool = setting(
        False, help="the target box is the bbox of the largest mask contour (official: OpenCV's first)",
        invalidates="inputs", switch=True, control="checkbox",
    )  # fmt: skip
    clip_box: bool = setting(
        False, help="move boxes that leave the image inside instead of raising an error", invalidates="inputs",
        switch=True, control="checkbox",
    )  # fmt: skip
    # PrimeComposer (issue 22)
    strategy: str = setting(
        "tf-icon", help="what the steps compute: tf-icon (the official code) or primecomposer (PrimeComposer's "
        "released code: correlation-diffuser pass, background from the inversion trajectory, tau_c object hold) or "
        "tigic (TIGIC's released code: prompted collage inversion, three branches, decoder logit mixes)",
        invalidates="plans", choices=STRATEGIES, sweep=True, control="dropdown",
    )  # fmt: skip
    tau_c: float = setting(
        0.2, help="primecomposer only: fraction of steps that keep the object at its post-warm-up latent and the "
        "rest at the inverted background", invalidates="plans", range=(0.0, 1.0), sweep=True, control="slider",
        step=0.05,
    )  # fmt: skip
    # TALE (issue 22): a later start and an adaptive normalisation of the object region's latent (docs/strategies.md)
    later_start: float = setting(
        0.0, help="fraction of the steps skipped: start from the inversions at grid index int(later_start * steps) "
        "instead of t = 1 (TALE's t'; 0: official)", invalidates="latents", range=(0.0, 0.9),
        sweep=True, control="slider", step=0.05,
    )  # fmt: skip
    latent_norm_steps: int = setting(
        0, help="the first steps after the start that move the object region's latent statistics toward the "
        "background's (TALE's tau; 0: off; steps past the end are not run)", invalidates="plans", range=(0, None),
        span=(0, 50), sweep=True, control="int",
    )  # fmt: skip
    latent_norm_strength: float = setting(
        0.5, help="weight of the latent normalisation on its last step; step j of n uses j/n of it (TALE: 0.5)",
        invalidates="plans", range=(0.0, 1.0), sweep=True, control="slider", step=0.05,
    )  # fmt: skip
    # attention mechanisms (issue 22)
    inject_layers: str = setting(
        "all", help="self-attention layers that take the composite injection: all (official), encoder, mid, "
        "decoder, or a comma-separated list of layer names/prefixes (others run plain attention)",
        invalidates="plans", sweep=True, control="layers",
    )  # fmt: skip
    region_cross_attention: bool = setting(
        False, help="the object's words attend only inside the placed object in the generation's conditional "
        "cross-attention (PrimeComposer's region-constrained cross-attention)", invalidates="plans", switch=True,
        sweep=True, control="checkbox",
    )  # fmt: skip
    object_words: str = setting(
        "", help="the object's words in the prompt, for region_cross_attention and the mask proposal (a prompt "
        "that marks them as '<ref> red dog <ref>' needs none)", invalidates="all_steps", control="text",
    )  # fmt: skip
    adaptive_blend: bool = setting(
        False, help="early background blends keep the generation inside an attention-derived object mask instead "
        "of the box (SHINE's adaptive background blending); later ones use the box", invalidates="plans",
        switch=True, sweep=True, control="checkbox",
    )  # fmt: skip
    adaptive_blend_until: float = setting(
        0.5, help="fraction of steps until which the background blend follows the attention mask (adaptive_blend)",
        invalidates="plans", range=(0.0, 1.0), sweep=True, control="slider", step=0.05,
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.strategy == "primecomposer" and self.adaptive_blend:
            raise ValueError(
                "strategy='primecomposer' blends with its kept background trajectory, which adaptive_blend does not "
                "apply to; set adaptive_blend=False (or use strategy='tf-icon')"
            )
        if self.strategy == "primecomposer" and (self.later_start or self.latent_norm_steps):
            # its steps read the full inversion trajectories from t = 1 and run no background branch to normalise to
            raise ValueError(
                "strategy='primecomposer' runs PrimeComposer's released steps, which TALE's later_start and "
                "latent_norm_steps do not apply to; set them to 0 (or use strategy='tf-icon')"
            )
        self._check_tigic()
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {self.order!r}")
        for name, high in TAU_RANGES.items():
            value = getattr(self, name)
            # Fractions of the steps: past the range they mean nothing more, and NaN compares false everywhere.
            if not _is_number(value) or not math.isfinite(value) or not 0 <= value <= high:
                extra = " (above 1: blending also on the last steps)" if high > 1 else ""
                raise ValueError(
                    f"{name} must be a finite number in [0, {high:g}]{extra}, a fraction of the steps; "
                    f"got {value!r} (official value {getattr(CompositionConfig, name)})"
                )
        if self.guidance is not None and (
            not _is_number(self.guidance) or not math.isfinite(self.guidance) or self.guidance < 0
        ):
            # A NaN or infinite guidance turns every generation latent into NaN from step 0 on.
            raise ValueError(
                f"guidance must be a finite number >= 0, or None for the official per-mode value "
                f"{OFFICIAL_GUIDANCE}, got {self.guidance!r}"
            )
        self._check_tale()
        parse_layer_spec(self.inject_layers)  # the text's form; the model's layer names are checked by the Session
        if not isinstance(self.object_words, str):
            raise ValueError(f"object_words must be a string of words of the prompt, got {self.object_words!r}")
        until = self.adaptive_blend_until
        if not _is_number(until) or not math.isfinite(until) or not 0 <= until <= 1:
            raise ValueError(f"adaptive_blend_until must be a finite step fraction in [0, 1], got {until!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            raise ValueError(
                f"seed must be in [0, 2**63) (torch generators take a signed 64-bit seed), got {self.seed}; "
                "e.g. seed % 2**63"
            )

    def _check_tigic(self) -> None:
        """Strategy "tigic" runs TIGIC's released steps: its own inversions from t = 1, its own decoder-only mixing
        and its box blend, so the mechanisms that change those are refused by name."""
        if self.strategy != "tigic":
            return
        refused = [
            name for name, on in (
                ("later_start", bool(self.later_start)), ("latent_norm_steps", bool(self.latent_norm_steps)),
                ("adaptive_blend", bool(self.adaptive_blend)),
                ("region_cross_attention", bool(self.region_cross_attention)),
                ("inject_layers", self.inject_layers != "all"),
            ) if on
        ]  # fmt: skip
        if refused:
            raise ValueError(
                f"strategy='tigic' runs TIGIC's released steps (its inversions from t = 1, its logit mixes in every "
                f"decoder self-attention, its box blend), which {', '.join(refused)} do not apply to; set "
                "later_start=0, latent_norm_steps=0, adaptive_blend=False, region_cross_attention=False and "
                "inject_layers='all' (or use strategy='tf-icon')"
            )

    def _check_tale(self) -> None:
        """The TALE settings (issue 22): numbers in range, and a later start that leaves at least ``order`` steps."""
        for name in ("later_start", "latent_norm_strength"):
            value, high = getattr(self, name), 1.0 if name == "latent_norm_strength" else LATER_START_MAX
            if not _is_number(value) or not math.isfinite(value) or not 0 <= value <= high:
                raise ValueError(f"{name} must be a finite number in [0, {high:g}], got {value!r}")
        n = self.latent_norm_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"latent_norm_steps must be an integer >= 0 (0: off), got {n!r}")
        if not isinstance(self.steps, int) or self.order not in (1, 2, 3):
            return  # reported by the checks of steps and order
        remaining = self.steps - later_start_index(self.later_start, self.steps)
        if self.later_start and remaining < self.order:
            raise ValueError(
                f"later_start={self.later_start!r} leaves {remaining} of the {self.steps} steps, fewer than "
                f"order={self.order}; lower later_start or raise steps"
            )

    @property
    def effective_guidance(self) -> float:
        """The guidance scale actually used: ``guidance``, or when it is None the official per-mode value (strategy
        "primecomposer": PrimeComposer's default 2.5 in both modes)."""
        if self.guidance is not None:
            return float(self.guidance)
        if self.strategy == "tigic":
            return float(TIGIC_GUIDANCE)
        return float(PRIMECOMPOSER_GUIDANCE if self.strategy == "primecomposer" else OFFICIAL_GUIDANCE[self.mode])

    @property
    def box_rule(self) -> str:
        return "largest" if self.largest_contour else "first"

    @classmethod
    def preset(cls, name: str, **changes) -> "CompositionConfig":
        """The configuration of the named preset (``tficon.presets()`` lists them), with ``changes`` applied over it.

        ``CompositionConfig.preset("tf-icon")`` is the default configuration; any setting can be overridden, e.g.
        ``CompositionConfig.preset("tale", steps=30)``. An unknown name raises a ValueError listing the valid ones."""
        from tficon.core.presets import apply_preset  # function level: the presets module imports this one

        return apply_preset(cls(), name).replace(**changes)

    def replace(self, **changes) -> "CompositionConfig":
        """A copy with ``changes`` applied (validated); unknown names raise a TypeError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown config field(s) {unknown}; valid fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)


#: Every setting of ``CompositionConfig``, in declaration order: the one list the CLI, the sweep axes,
#: ``Session.update`` and the Explorer loop over.
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(name=f.name, default=f.default, **f.metadata["tficon"]) for f in dataclasses.fields(CompositionConfig)
)
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
TAU_RANGES.update({name: SETTINGS_BY_NAME[name].range[1] for name in ("tau_a", "tau_b", "tau_bg", "tau_c")})


def settings_invalidating(level: str) -> frozenset[str]:
    """Names of the settings whose change invalidates ``level`` (one of :data:`INVALIDATES`)."""
    if level not in INVALIDATES:
        raise ValueError(f"level must be one of {INVALIDATES}, got {level!r}")
    return frozenset(s.name for s in SETTINGS if s.invalidates == level)

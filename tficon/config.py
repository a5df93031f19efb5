"""The one configuration object of a composition.

Defaults reproduce the official TF-ICON code (docs/algorithm.md §10). Every deviation from
the official behaviour is a named switch that is off by default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

MODES = ("cross", "same")

# The official script ignores --scale and forces these per domain (docs/algorithm.md §8.1).
OFFICIAL_GUIDANCE = {"cross": 5.0, "same": 2.5}

#: Accepted ranges of the step fractions. tau_a and tau_bg are fractions in [0, 1]. tau_b may exceed 1 on
#: purpose: the official bound int(tau_b * S + 1 - order) reaches the last steps only for tau_b >= (S + order) / S
#: (e.g. 1.1 pins the background outside the box on every step), and (S + order) / S <= 2 for every S >= order.
TAU_RANGES = {"tau_a": 1.0, "tau_b": 2.0, "tau_bg": 1.0}

#: Seeds go to ``torch.Generator.manual_seed``, which takes a signed 64-bit integer; negative ones wrap, so we
#: accept exactly the non-negative range and say so instead of torch's "Overflow when unpacking long long".
SEED_RANGE = (0, 2**63)


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
    """

    mode: str = "cross"
    steps: int = 20
    order: int = 2
    guidance: float | None = None
    tau_a: float = 0.4
    tau_b: float = 0.8
    tau_bg: float = 0.4
    seed: int = 3407
    align_warmup: bool = False
    no_cross_lag: bool = False
    background_queries: bool = False
    largest_contour: bool = False
    clip_box: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
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
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not SEED_RANGE[0] <= self.seed < SEED_RANGE[1]:
            raise ValueError(
                f"seed must be in [0, 2**63) (torch generators take a signed 64-bit seed), got {self.seed}; "
                "e.g. seed % 2**63"
            )

    @property
    def effective_guidance(self) -> float:
        """The guidance scale actually used (the official per-mode value when ``guidance`` is None)."""
        return float(OFFICIAL_GUIDANCE[self.mode] if self.guidance is None else self.guidance)

    @property
    def box_rule(self) -> str:
        return "largest" if self.largest_contour else "first"

    def replace(self, **changes) -> "CompositionConfig":
        """A copy with ``changes`` applied (validated); unknown names raise a TypeError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown config field(s) {unknown}; valid fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)

"""The one configuration object of a composition.

Defaults reproduce the official TF-ICON code (tficon-algorithm.md section 10). Every deviation from
the official behaviour is a named switch that is off by default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MODES = ("cross", "same")

# The official script ignores --scale and forces these per domain (tficon-algorithm.md 8.1).
OFFICIAL_GUIDANCE = {"cross": 5.0, "same": 2.5}


@dataclass(frozen=True)
class CompositionConfig:
    """Settings of one TF-ICON composition.

    mode:      "cross" (the object comes from another domain: the start latent holds the inverted
               reference inside the object) or "same" (the pixel cut-and-paste is inverted as a whole).
    steps:     DPM-Solver++ steps, for inversion and for sampling (official 20).
    order:     solver order 1, 2 or 3 (official 2).
    guidance:  classifier-free guidance of the generation branch; None = official 5.0 (cross) / 2.5 (same).
    tau_a:     fraction of steps with foreground (composite self-attention) injection (official 0.4).
    tau_b:     fraction of steps after which the background latent is blended in (official 0.8).
    tau_bg:    fraction of steps with background-logit injection; hard-coded 0.4 in the official code.
    seed:      seeds the one generator of all random draws (VAE posterior samples, then box noises).

    Parity switches (all False = the official behaviour):
    align_warmup:  gen's warm-up evaluations see the maps of their own time instead of those at t_{k-1}.
    no_cross_lag:  the pseudo-cross pass uses the reference latent at t_s instead of t_{s-1}.
    background_queries: the pseudo-cross logits injected into the composite use the background
                   (orig) branch's queries against the reference's object keys, our reading of the
                   paper, instead of the reference's own queries as the official code does (spec 8.3).
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
        for name in ("tau_a", "tau_b", "tau_bg"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 (a fraction of the steps), got {value!r}")
        if self.guidance is not None and (not isinstance(self.guidance, (int, float)) or self.guidance < 0):
            raise ValueError(f"guidance must be a number >= 0 or None (official per-mode value), got {self.guidance!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

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

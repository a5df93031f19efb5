"""Which injections and blends are active at each step of the composition (docs/algorithm.md §8.4).

Pure Python, no torch: one frozen dataclass that answers, per model evaluation or per solver step, the questions the
composition loop asks. Indices:

- **eval index** ``i`` (0..steps-1): the model evaluation at grid time ``t_i``. Warm-up evaluations are
  ``i < order``; the main loop evaluates at ``t_s`` for ``s = order..steps-1`` (never at ``t_steps``).
- **step** ``s`` (1..steps): the solver update that lands on ``t_s``.

The official bounds are ``int(tau * steps + 1 - order)``, computed with Python float arithmetic and ``int()``
truncation (toward zero), which this module reproduces exactly: e.g. ``0.3 * 20 = 6.000000000000001``, so
``tau_a = 0.3`` gives the bound 5 for ``order = 2``. Quirks kept on purpose (all marked [quirk] in docs/algorithm.md §8.4 and §11):

- warm-up evaluations (``i < order``) are always fg- and bg-injected, whatever ``tau_a`` is;
- all warm-up evaluations of ``generation`` use the maps recorded at ``t_{order-1}`` (``maps_index``);
- the bg threshold ``tau_bg`` is a separate constant (0.4 in the official code), neither ``tau_a`` nor ``tau_b``;
- the latent blend happens after the main-loop step ``s`` when ``s < blend_end``; warm-up steps are never
  latent-blended (the history of ``D`` is blended once after the warm-up instead, independently of ``tau_b``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["InjectionSchedule", "injection_schedule"]


def _bound(tau: float, steps: int, order: int) -> int:
    """Official bound ``int(tau * steps + 1 - order)``: Python floats, truncation toward zero."""
    return int(tau * steps + 1 - order)


def _check_int(value: object, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_tau(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(
            f"{name} must be a finite number >= 0 (a fraction of the steps, usually in [0, 1]), got {value}"
        )
    return value


@dataclass(frozen=True)
class InjectionSchedule:
    """Per-step injection and blending flags of TF-ICON for ``steps`` steps of order ``order``.

    Args:
        steps: number of solver steps ``S`` (>= order, as the official solver asserts).
        order: solver order ``k``, 1..3.
        tau_a: fraction of steps with foreground (reference / pseudo-cross) attention injection.
        tau_b: fraction of steps after which ``generation``'s latent is reset to ``background``'s outside the box.
        tau_bg: fraction of steps with background attention injection (official: hard-coded 0.4).
        align_warmup: ``False`` = official (the generation branch's warm-up evaluations all use the maps from ``t_{k-1}``);
            ``True`` = generation@t_i always uses the maps from ``t_i``.

    Any ``tau >= 0`` is accepted. Values above 1 are legitimate: with ``tau_b >= (steps + order) / steps`` (e.g.
    1.1 for S = 20, k = 2) every main-loop step is blended, so the final latent outside the box equals ``background``.
    ``tau = 0`` does not disable warm-up injection (the official behaviour).

    Derived bounds (exclusive, in step / eval index units): ``fg_end``, ``bg_end``, ``blend_end``.
    """

    steps: int
    order: int
    tau_a: float
    tau_b: float
    tau_bg: float = 0.4
    align_warmup: bool = False
    fg_end: int = field(init=False)
    bg_end: int = field(init=False)
    blend_end: int = field(init=False)

    def __post_init__(self) -> None:
        _check_int(self.order, "order", 1, 3)
        _check_int(self.steps, "steps", self.order)
        for name in ("tau_a", "tau_b", "tau_bg"):
            object.__setattr__(self, name, _check_tau(getattr(self, name), name))
        if not isinstance(self.align_warmup, bool):
            raise TypeError(f"align_warmup must be a bool, got {type(self.align_warmup).__name__}")
        object.__setattr__(self, "fg_end", _bound(self.tau_a, self.steps, self.order))
        object.__setattr__(self, "bg_end", _bound(self.tau_bg, self.steps, self.order))
        object.__setattr__(self, "blend_end", _bound(self.tau_b, self.steps, self.order))

    # ----- per evaluation ---------------------------------------------------------------------------------------
    def _check_eval(self, i: int) -> None:
        _check_int(i, "eval index i", 0, self.steps - 1)

    def fg_inject(self, i: int) -> bool:
        """Foreground injection (reference F×F block and pseudo-cross rows/columns) at the generation branch's evaluation ``i``."""
        self._check_eval(i)
        return i < self.order or i < self.fg_end

    def bg_inject(self, i: int) -> bool:
        """Background injection (the background branch's logits outside the box) at the generation branch's evaluation ``i``."""
        self._check_eval(i)
        return i < self.order or i < self.bg_end

    def reference_needed(self, i: int) -> bool:
        """Whether ``reference`` and the pseudo-cross pass must be evaluated at ``i`` (exactly when fg is injected).

        This also covers the ``reference`` trajectory itself: it advances (and is evaluated) while fg injection is on and
        freezes afterwards, and the pseudo-cross pass at ``i`` reads ``reference``'s latent at ``t_{i-1}``, which exists
        whenever ``reference`` was evaluated at ``i - 1``.
        """
        return self.fg_inject(i)

    def maps_index(self, i: int) -> int:
        """Eval index whose background/reference/pseudo-cross maps the generation branch's evaluation ``i`` reads.

        Official: ``order - 1`` for the warm-up evaluations ``i < order`` (generation@t_0 uses maps from t_1 when
        ``order = 2``), ``i`` afterwards. With ``align_warmup=True``: always ``i``.
        """
        self._check_eval(i)
        if not self.align_warmup and i < self.order:
            return self.order - 1
        return i

    def background_needed(self, i: int) -> bool:
        """Whether the ``background`` branch must be evaluated at ``i``.

        Three consumers need ``background``'s evaluation at ``t_i``:

        1. bg injection at ``i`` (its logits); with the official warm-up the maps come from ``t_{k-1}``, which is a
           warm-up evaluation and therefore covered by 2;
        2. the warm-up ``D``-history blend: the generation branch's D at ``t_0..t_{k-1}`` is replaced outside the box by the background branch's D,
           so all warm-up evaluations ``i < order`` are needed whatever the taus;
        3. the latent blend after step ``s`` needs ``x_background(t_s)``. The solver computes it from the background branch's D history at
           ``t_{s-1}, ..., t_{s-m}`` (m = that step's order), i.e. from evaluations with index <= s - 1. So the background branch
           must be evaluated at every ``i <= last_blend_step - 1``; nothing later reads it.

        Default (S = 20, k = 2, tau_b = 0.8): blends after s = 2..14, so evaluations 0..13 (docs/algorithm.md §13.6: O is still
        evaluated at s = 7..13 although bg injection stopped after 6).
        """
        self._check_eval(i)
        if i < self.order or self.bg_inject(i):
            return True
        blends = self.blend_steps()
        return bool(blends) and i <= blends[-1] - 1

    # ----- per step ---------------------------------------------------------------------------------------------
    def blend_after(self, s: int) -> bool:
        """Whether the generation branch's latent is reset to the background branch's outside the box right after the step landing on ``t_s``.

        Only main-loop steps ``order <= s <= steps`` can blend (``s < blend_end``); warm-up steps ``s < order``
        return False. The blend happens after the generation branch's evaluation at ``t_s`` (official order).
        """
        _check_int(s, "step s", 1, self.steps)
        return s >= self.order and s < self.blend_end

    # ----- tables -----------------------------------------------------------------------------------------------
    def fg_evals(self) -> tuple[int, ...]:
        """Eval indices with fg injection."""
        return tuple(i for i in range(self.steps) if self.fg_inject(i))

    def bg_evals(self) -> tuple[int, ...]:
        """Eval indices with bg injection."""
        return tuple(i for i in range(self.steps) if self.bg_inject(i))

    def injected_evals(self) -> tuple[int, ...]:
        """Eval indices where the generation branch's conditional self-attention is composite (fg or bg injection on)."""
        return tuple(i for i in range(self.steps) if self.fg_inject(i) or self.bg_inject(i))

    def background_evals(self) -> tuple[int, ...]:
        """Eval indices at which ``background`` must be evaluated (see :meth:`background_needed`)."""
        return tuple(i for i in range(self.steps) if self.background_needed(i))

    def blend_steps(self) -> tuple[int, ...]:
        """Steps ``s`` after which the generation branch's latent is blended with the background branch's outside the box."""
        return tuple(s for s in range(self.order, self.steps + 1) if s < self.blend_end)


def injection_schedule(
    steps: int,
    order: int,
    tau_a: float,
    tau_b: float,
    tau_bg: float = 0.4,
    *,
    align_warmup: bool = False,
) -> InjectionSchedule:
    """Build the :class:`InjectionSchedule` (validated) for ``steps`` steps of order ``order``."""
    return InjectionSchedule(
        steps=steps, order=order, tau_a=tau_a, tau_b=tau_b, tau_bg=tau_bg, align_warmup=align_warmup
    )

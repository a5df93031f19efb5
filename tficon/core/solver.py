"""Continuous-time multistep DPM-Solver++ ("dpmsolver" type), as used by the official TF-ICON code.

Everything here is a small function over tensors with the maths in plain sight:

- :class:`NoiseSchedule` turns a discrete ``alphas_cumprod`` (length ``N``) into the continuous VP schedule of
  DPM-Solver: knots ``t_n = (n + 1) / N`` carry ``log alpha = 0.5 * log(alphas_cumprod[n])``, piecewise linear
  between knots and linearly extrapolated outside. ``sigma = sqrt(1 - alpha^2)``, ``lambda = log alpha - log sigma``.
- :func:`time_grid` is the time-uniform grid (descending for sampling, ascending for inversion).
- :func:`to_data_prediction` turns a raw model output into the data prediction ``D(x, t)``.
- :func:`multistep_update` is one multistep update of order 1, 2 or 3 from ``t_hist[-1]`` to ``t_next``.
- :class:`SolverState` is the immutable state of one trajectory (latent, time, recent ``D`` history).
- :func:`sample` and :func:`invert` run the official control flow (warm-up with lower orders, ``NFE = steps``,
  no evaluation at the final point; ``invert`` is the same update on the ascending grid).

Why not diffusers' ``DPMSolverMultistepScheduler``: it uses integer timesteps, a different sigma interpolation,
lower-order final steps below 15 steps (the official code: below 10) and a final sigma of zero. None of that matches
what TF-ICON computes, and TF-ICON also needs the solver run *backwards* (inversion). Hence this ~150-line solver.

Precision: the official solver state is float32, and so is everything here: times, schedule values, coefficients
and latents (``sample``/``invert`` cast the latent to float32). The coefficient formulas follow the official
operation order (``expm1(-h)``, ``(1 / r0) * (D0 - D1)``, ...) so that results agree to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "PREDICTION_TYPES",
    "NoiseSchedule",
    "SolverState",
    "evaluate",
    "invert",
    "multistep_update",
    "sample",
    "step_order",
    "time_grid",
    "to_data_prediction",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")  # the last: a flow velocity (core.flow)
HISTORY_LENGTH = 3  # the highest supported order needs the last 3 data predictions

TimeLike = Union[Tensor, float]
ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]

# diffusers' SchedulerMixin defaults, used for keys missing from a scheduler config.
_CONFIG_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


def _as_time(t: TimeLike) -> Tensor:
    """Return ``t`` as a float32 tensor (scalar or any shape), keeping its device."""
    if isinstance(t, Tensor):
        return t.to(torch.float32)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a float or a torch.Tensor of times in (0, 1], got {type(t).__name__}")
    return torch.tensor(float(t), dtype=torch.float32)


def _per_sample(coef: Tensor, x: Tensor) -> Tensor:
    """Shape a per-sample coefficient (scalar, ``(1,)`` or ``(batch,)``) so that it broadcasts over ``x``."""
    if coef.dim() == 0:
        return coef
    if coef.dim() == 1 and x.dim() >= 1 and coef.shape[0] in (1, x.shape[0]):
        return coef.reshape(coef.shape + (1,) * (x.dim() - 1))
    raise ValueError(
        f"time tensor of shape {tuple(coef.shape)} does not fit a latent of shape {tuple(x.shape)}: "
        "pass a scalar time or one time per sample, shape (batch,)"
    )


class NoiseSchedule:
    """Continuous-time VP schedule wrapping a discrete ``alphas_cumprod`` (length ``N``, e.g. 1000).

    Knots ``t_n = (n + 1) / N`` (float32 ``linspace(0, 1, N + 1)[1:]``, as the official code builds them) carry
    ``log_alpha = 0.5 * log(alphas_cumprod[n])``. ``log_alpha(t)`` is piecewise linear between knots and linearly
    extrapolated outside them with the first / last segment. All values are float32.

    Args:
        alphas_cumprod: 1-D tensor of the cumulative products of ``1 - beta``, values in (0, 1]. It is cast to
            float32 first, like the buffer ldm stores. Use :meth:`from_scheduler_config` to build it from a
            diffusers scheduler config exactly as ldm does.
    """

    def __init__(self, alphas_cumprod: Tensor):
        if not isinstance(alphas_cumprod, Tensor):
            raise TypeError(f"alphas_cumprod must be a torch.Tensor, got {type(alphas_cumprod).__name__}")
        if alphas_cumprod.dim() != 1 or alphas_cumprod.numel() < 2:
            raise ValueError(
                f"alphas_cumprod must be 1-D with at least 2 entries, got shape {tuple(alphas_cumprod.shape)}"
            )
        acp = alphas_cumprod.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(acp).all()) or bool((acp <= 0).any()) or bool((acp > 1).any()):
            raise ValueError(
                "alphas_cumprod must hold values in (0, 1]; a zero (e.g. a zero-terminal-SNR schedule) has no "
                "finite log-SNR and is not supported"
            )
        self.num_train_timesteps: int = int(acp.numel())
        self.alphas_cumprod: Tensor = acp
        self._knot_t = torch.linspace(0.0, 1.0, self.num_train_timesteps + 1, dtype=torch.float32)[1:]
        self._knot_log_alpha = 0.5 * torch.log(acp)
        self._knots_by_device: dict[torch.device, tuple[Tensor, Tensor]] = {}
        #: the ends of the time grid this schedule is solved on (the official ones; a flow schedule,
        #: ``tficon.core.flow.FlowSchedule``, keeps its noisy end off t = 1, where its alpha is 0)
        self.t_start = 1.0
        self.t_end = 1e-3

    @classmethod
    def from_scheduler_config(cls, config: Mapping) -> "NoiseSchedule":
        """Build the schedule from a diffusers scheduler config (e.g. ``pipe.scheduler.config``).

        Uses ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule`` ("scaled_linear" or "linear")
        or ``trained_betas``; missing keys take diffusers' defaults. Betas and their cumulative product are computed
        in float64 and only then cast to float32. That reproduces ldm's stored float32 ``alphas_cumprod`` (diffusers
        itself computes the betas in float32, which differs in the last bits).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping (a diffusers scheduler config), got {type(config).__name__}")
        trained = config.get("trained_betas")
        if trained is not None:
            betas = torch.as_tensor(trained, dtype=torch.float64).reshape(-1)
        else:
            n = config.get("num_train_timesteps", _CONFIG_DEFAULTS["num_train_timesteps"])
            if isinstance(n, bool) or not isinstance(n, int) or n < 2:
                raise ValueError(f"config['num_train_timesteps'] must be an integer >= 2, got {n!r}")
            start = float(config.get("beta_start", _CONFIG_DEFAULTS["beta_start"]))
            end = float(config.get("beta_end", _CONFIG_DEFAULTS["beta_end"]))
            kind = config.get("beta_schedule", _CONFIG_DEFAULTS["beta_schedule"])
            if kind == "scaled_linear":
                betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
            elif kind == "linear":
                betas = torch.linspace(start, end, n, dtype=torch.float64)
            else:
                raise ValueError(
                    f"config['beta_schedule'] = {kind!r} is not supported; use 'scaled_linear' or 'linear', "
                    "or give 'trained_betas'"
                )
        if config.get("rescale_betas_zero_snr", False):
            raise ValueError("config['rescale_betas_zero_snr'] is set: zero terminal SNR has no finite log-SNR")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
        return cls(alphas_cumprod)

    def _knots(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._knots_by_device:
            self._knots_by_device[device] = (self._knot_t.to(device), self._knot_log_alpha.to(device))
        return self._knots_by_device[device]

    def log_alpha(self, t: TimeLike) -> Tensor:
        """``log alpha(t)``: piecewise linear in ``t`` through the knots, linear extrapolation outside."""
        t = _as_time(t)
        knot_t, knot_y = self._knots(t.device)
        flat = t.reshape(-1).contiguous()
        # Segment [k, k + 1] with knot_t[k] <= t < knot_t[k + 1]; the first / last segment outside the knots.
        seg = (torch.searchsorted(knot_t, flat, right=True) - 1).clamp(0, self.num_train_timesteps - 2)
        t0, t1 = knot_t[seg], knot_t[seg + 1]
        y0, y1 = knot_y[seg], knot_y[seg + 1]
        return (y0 + (flat - t0) * (y1 - y0) / (t1 - t0)).reshape(t.shape)

    def alpha(self, t: TimeLike) -> Tensor:
        """Signal scale ``alpha(t) = exp(log_alpha(t))``."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: TimeLike) -> Tensor:
        """Noise scale ``sigma(t) = sqrt(1 - alpha^2)`` (written as the official code does, not with expm1)."""
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t: TimeLike) -> Tensor:
        """Half log-SNR ``lambda(t) = log alpha - log sigma``."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def model_time(self, t: TimeLike) -> Tensor:
        """UNet timestep input for continuous time ``t``: the float ``(t - 1/N) * N``, not rounded.

        Knot ``t_n`` maps to the training timestep ``n``; for ``N = 1000`` this is ``1000 * (t - 0.001)``
        (999 at t = 1, 949.05 at t = 0.95005, 0 at t = 0.001).
        """
        n = self.num_train_timesteps
        return (_as_time(t) - 1.0 / n) * float(n)

    def __repr__(self) -> str:
        return f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps})"


def _check_int(value: object, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def time_grid(
    steps: int,
    *,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    ascending: bool = False,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """Time-uniform grid of ``steps + 1`` float32 times, shape ``(steps + 1,)``.

    Descending (sampling): ``linspace(t_start, t_end)``. Ascending (inversion): ``linspace(t_end, t_start)``,
    computed directly rather than flipped, as the official ``DPMencode`` does (float32 ``linspace`` is not exactly
    symmetric, so the two can differ in the last bit).
    """
    _check_int(steps, "steps", 1)
    t_start, t_end = float(t_start), float(t_end)
    if not (math.isfinite(t_start) and math.isfinite(t_end) and t_start > t_end > 0.0):
        raise ValueError(
            f"need t_start > t_end > 0 (t_start is the noisy end, e.g. 1.0; t_end the clean end, e.g. 1e-3), "
            f"got t_start={t_start}, t_end={t_end}"
        )
    if ascending:
        return torch.linspace(t_end, t_start, steps + 1, dtype=torch.float32, device=device)
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float32, device=device)


def to_data_prediction(
    model_output: Tensor, x: Tensor, t: TimeLike, schedule: NoiseSchedule, prediction_type: str = "epsilon"
) -> Tensor:
    """Data prediction ``D(x, t)`` from a raw model output (same shape as ``x``; ``t`` scalar or ``(batch,)``).

    - ``"epsilon"``: ``D = (x - sigma * eps) / alpha``;
    - ``"v_prediction"``: ``D = alpha * x - sigma * v`` (from ``v = alpha * eps - sigma * x0``);
    - ``"sample"``: the output is ``D`` itself;
    - ``"flow_prediction"``: a rectified-flow velocity ``v = eps - x0`` (``tficon.core.flow``): ``D = x - sigma * v``.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if model_output.shape != x.shape:
        raise ValueError(
            f"model output shape {tuple(model_output.shape)} differs from the latent shape {tuple(x.shape)}"
        )
    if prediction_type == "sample":
        return model_output.to(torch.promote_types(model_output.dtype, torch.float32))
    alpha = _per_sample(schedule.alpha(t).to(x.device), x)
    sigma = _per_sample(schedule.sigma(t).to(x.device), x)
    if prediction_type == "epsilon":
        return (x - sigma * model_output) / alpha
    if prediction_type == "flow_prediction":
        return x - sigma * model_output
    return alpha * x - sigma * model_output


def step_order(index: int, steps: int, order: int) -> int:
    """Order of the update that lands on grid index ``index`` (1..steps), as the official multistep loop picks it.

    Warm-up: index ``j < order`` uses order ``j`` (only ``j`` data predictions exist). Main loop: ``order``, except
    that for ``steps < 10`` the final steps drop the order, ``min(order, steps + 1 - index)``.
    """
    _check_int(order, "order", 1, 3)
    _check_int(steps, "steps", order)
    _check_int(index, "index", 1, steps)
    if index < order:
        return index
    if steps < 10:
        return min(order, steps + 1 - index)
    return order


def multistep_update(
    x: Tensor,
    t_hist: Sequence[Tensor],
    d_hist: Sequence[Tensor],
    t_next: TimeLike,
    order: int,
    schedule: NoiseSchedule,
) -> Tensor:
    """One multistep DPM-Solver++ update ("dpmsolver" type) of order 1, 2 or 3 from ``t_hist[-1]`` to ``t_next``.

    ``t_hist`` / ``d_hist`` hold the previous evaluation times and data predictions, most recent LAST; ``x`` is at
    ``t_hist[-1]``; the last ``order`` entries are used. Times are scalars or ``(batch,)`` tensors. With
    ``h = lambda(t_next) - lambda(t_hist[-1])`` and ``phi = expm1(-h)`` (``s`` = the current time, ``'`` = next):

    - order 1 (DDIM): ``x' = (sigma'/sigma) x - alpha' phi D0``;
    - order 2: ``r0 = h0 / h``, ``x' = (sigma'/sigma) x - alpha' phi D0 - 0.5 alpha' phi (D0 - D_-1) / r0``;
    - order 3: with ``r1 = h1 / h``, ``d0 = (D0 - D_-1)/r0``, ``d1 = (D_-1 - D_-2)/r1``,
      ``D1 = d0 + r0/(r0 + r1) (d0 - d1)``, ``D2 = (d0 - d1)/(r0 + r1)``, ``phi2 = phi/h + 1``,
      ``phi3 = phi2/h - 0.5``: ``x' = (sigma'/sigma) x - alpha' phi D0 + alpha' phi2 D1 - alpha' phi3 D2``.

    Nothing assumes ``t_next < t``: with ``t_next > t`` (h < 0) this is the official inversion step.

    Note on order 3 (kept exactly as the official code, and diffusers, write it): ``D2`` estimates
    ``h^2 D''/2`` while ``phi3`` is the weight of ``h^2 D''``, so the quadratic part of ``D`` is integrated with
    half its exact weight. The update is exact for ``D`` linear in lambda, but its local error is O(h^3), the same
    order as order 2 (tests/test_solver.py checks both facts).
    """
    _check_int(order, "order", 1, 3)
    if len(t_hist) != len(d_hist):
        raise ValueError(f"t_hist and d_hist must have the same length, got {len(t_hist)} and {len(d_hist)}")
    if len(d_hist) < order:
        raise ValueError(
            f"an order-{order} update needs {order} previous data predictions, only {len(d_hist)} given; "
            "use a lower order during warm-up (see step_order)"
        )
    t_next = _as_time(t_next).to(x.device)
    t0 = t_hist[-1]
    lambda_next, lambda_0 = schedule.lambda_(t_next), schedule.lambda_(t0)
    h = lambda_next - lambda_0
    alpha_next = schedule.alpha(t_next)
    sigma_ratio = schedule.sigma(t_next) / schedule.sigma(t0)
    phi_1 = torch.expm1(-h)
    d0 = d_hist[-1]
    x_next = _per_sample(sigma_ratio, x) * x - _per_sample(alpha_next * phi_1, x) * d0
    if order == 1:
        return x_next

    lambda_1 = schedule.lambda_(t_hist[-2])
    r0 = (lambda_0 - lambda_1) / h
    diff_0 = _per_sample(1.0 / r0, x) * (d0 - d_hist[-2])
    if order == 2:
        return x_next - 0.5 * _per_sample(alpha_next * phi_1, x) * diff_0

    lambda_2 = schedule.lambda_(t_hist[-3])
    r1 = (lambda_1 - lambda_2) / h
    diff_1 = _per_sample(1.0 / r1, x) * (d_hist[-2] - d_hist[-3])
    deriv_1 = diff_0 + _per_sample(r0 / (r0 + r1), x) * (diff_0 - diff_1)
    deriv_2 = _per_sample(1.0 / (r0 + r1), x) * (diff_0 - diff_1)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return x_next + _per_sample(alpha_next * phi_2, x) * deriv_1 - _per_sample(alpha_next * phi_3, x) * deriv_2


@dataclass(frozen=True)
class SolverState:
    """Immutable state of one trajectory: latent ``x`` at time ``t`` plus the recent data-prediction history.

    ``t_hist`` / ``d_hist`` hold up to the last 3 evaluation times and data predictions, most recent last. A
    ``Session`` keeps one per branch; being immutable, an old state is a free rewind point. Blending (replacing
    parts of ``x`` or of ``d_hist``) is ``dataclasses.replace(state, x=...)``.
    """

    x: Tensor
    t: Tensor
    t_hist: tuple[Tensor, ...] = ()
    d_hist: tuple[Tensor, ...] = ()

    def with_evaluation(self, d: Tensor) -> "SolverState":
        """Record the data prediction ``d = D(x, t)`` at the current time (keeps the last 3)."""
        if d.shape != self.x.shape:
            raise ValueError(f"data prediction shape {tuple(d.shape)} differs from the latent {tuple(self.x.shape)}")
        return replace(
            self,
            t_hist=(*self.t_hist, self.t)[-HISTORY_LENGTH:],
            d_hist=(*self.d_hist, d)[-HISTORY_LENGTH:],
        )

    def advance(self, t_next: TimeLike, order: int, schedule: NoiseSchedule) -> "SolverState":
        """Move ``x`` to ``t_next`` with a multistep update of the given order (history kept, no evaluation)."""
        if not self.t_hist:
            raise ValueError("no data prediction recorded yet: call with_evaluation(D) at the current time first")
        latest = self.t_hist[-1]
        if latest is not self.t and not torch.equal(latest, self.t):
            raise ValueError(
                "the latest data prediction is not at the current time (the state was advanced without an "
                "evaluation): call with_evaluation(D) before advancing again"
            )
        t_next = _as_time(t_next).to(self.x.device)
        x_next = multistep_update(self.x, self.t_hist, self.d_hist, t_next, order, schedule)
        return replace(self, x=x_next, t=t_next)


def evaluate(model_fn: ModelFn, state: SolverState, schedule: NoiseSchedule, prediction_type: str) -> SolverState:
    """Call ``model_fn(x, model_time(t))`` once and record the resulting data prediction in the state."""
    output = model_fn(state.x, schedule.model_time(state.t))
    return state.with_evaluation(to_data_prediction(output, state.x, state.t, schedule, prediction_type))


def _integrate(
    model_fn: ModelFn,
    x: Tensor,
    grid: Tensor,
    schedule: NoiseSchedule,
    order: int,
    prediction_type: str,
    callback: Optional[Callback],
    progress: bool,
    desc: str,
) -> Tensor:
    """The official multistep control flow over ``grid``: NFE = len(grid) - 1, no evaluation at the last point."""
    steps = grid.numel() - 1
    _check_int(order, "order", 1, 3)
    if steps < order:
        raise ValueError(f"steps must be >= order (the official solver asserts it), got steps={steps}, order={order}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError("x must be a batched torch.Tensor, shape (batch, ...)")
    batch = x.shape[0]
    state = SolverState(x=x.to(torch.float32), t=grid[0].expand(batch))
    state = evaluate(model_fn, state, schedule, prediction_type)
    for index in tqdm(range(1, steps + 1), desc=desc, disable=not progress):
        state = state.advance(grid[index].expand(batch), step_order(index, steps, order), schedule)
        if callback is not None:
            callback(index, state.t, state.x)
        if index < steps:
            state = evaluate(model_fn, state, schedule, prediction_type)
    return state.x


def _grid_ends(schedule, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    """The grid's ends: those given, else the schedule's own (1.0 and 1e-3 unless the schedule says otherwise)."""
    start = getattr(schedule, "t_start", 1.0) if t_start is None else t_start
    end = getattr(schedule, "t_end", 1e-3) if t_end is None else t_end
    return start, end


def sample(
    model_fn: ModelFn,
    x: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    order: int = 2,
    *,
    prediction_type: str = "epsilon",
    t_start: float | None = None,
    t_end: float | None = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """Solve the diffusion ODE from ``x`` at ``t_start`` down to ``t_end`` (multistep DPM-Solver++).

    Args:
        model_fn: ``model_fn(x, model_t) -> raw output`` (same shape as ``x``), ``model_t`` a float tensor of shape
            ``(batch,)`` equal to ``schedule.model_time(t)``. Guidance belongs inside ``model_fn``.
        x: latent at ``t_start``, shape ``(batch, ...)``; the solver state is float32.
        steps: number of grid intervals = number of model evaluations (NFE).
        order: 1, 2 or 3; the first ``order - 1`` steps use lower orders (warm-up), see :func:`step_order`.
        t_start, t_end: the grid's ends; None: the schedule's (``schedule.t_start``, ``schedule.t_end``: 1.0 and
            1e-3 for the official schedule).
        callback: called as ``callback(index, t, x)`` after each step lands on grid index 1..steps.
        progress: show a tqdm bar.

    Returns:
        The float32 latent at ``t_end`` (no final denoising evaluation).
    """
    t_start, t_end = _grid_ends(schedule, t_start, t_end)
    grid = time_grid(steps, t_start=t_start, t_end=t_end, device=x.device)
    return _integrate(model_fn, x, grid, schedule, order, prediction_type, callback, progress, "sample")


def invert(
    model_fn: ModelFn,
    x0: Tensor,
    schedule: NoiseSchedule,
    steps: int,
    order: int = 2,
    *,
    prediction_type: str = "epsilon",
    t_start: float | None = None,
    t_end: float | None = None,
    callback: Optional[Callback] = None,
    progress: bool = False,
) -> Tensor:
    """Invert a clean latent: the same multistep update run on the ascending grid, from ``t_end`` to ``t_start``.

    As the official ``DPMencode``: the first evaluation is ``D(x0, t_end)`` (model time 0 for ``t_end = 1/N``),
    the first step is DDIM inversion, later ones multistep of ``order``; no fixed-point iterations. Arguments as in
    :func:`sample`. Returns the float32 latent at ``t_start``.
    """
    t_start, t_end = _grid_ends(schedule, t_start, t_end)
    grid = time_grid(steps, t_start=t_start, t_end=t_end, ascending=True, device=x0.device)
    return _integrate(model_fn, x0, grid, schedule, order, prediction_type, callback, progress, "invert")

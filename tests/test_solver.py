"""Tests for the continuous-time multistep DPM-Solver++ (docs/algorithm.md §5, section 14 items 3-5)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from tficon.core.solver import (
    NoiseSchedule,
    SolverState,
    invert,
    multistep_update,
    sample,
    step_order,
    time_grid,
    to_data_prediction,
)

SD21_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.fixture(scope="module")
def sd() -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config(SD21_CONFIG)


def lambda_linear_schedule() -> NoiseSchedule:
    """A schedule whose lambda is linear in t (3.5 at t = 0 down to -2.5 at t = 1, alpha^2 = sigmoid(2 lambda)).

    On it the time-uniform grid is uniform in lambda, so the asymptotic convergence orders show already at 10-80
    steps. (On the SD schedule the last step of the grid ending at t = 1e-3 spans lambda from about
    lambda(0.001 + 0.999/S) to 3.53, which shrinks only like log(1 + 1/(0.001 S)) / 2: the asymptotic regime
    needs thousands of steps.)
    """
    knots = torch.arange(1, 1001, dtype=torch.float64) / 1000
    return NoiseSchedule(torch.sigmoid(2 * (3.5 - 6.0 * knots)))


# ----------------------------------------------------------------------------------------------------------------
# Schedule, grid and model time
# ----------------------------------------------------------------------------------------------------------------

# Spec 5 reference table: i, t_i, model time, alpha, sigma, lambda (SD 2.1 schedule, S = 20).
SPEC_5_TABLE = [
    (0, 1.00000, 999.00, 0.06826, 0.99767, -2.6820),
    (1, 0.95005, 949.05, 0.09130, 0.99582, -2.3894),
    (2, 0.90010, 899.10, 0.11952, 0.99283, -2.1171),
    (6, 0.70030, 699.30, 0.28800, 0.95763, -1.2015),
    (10, 0.50050, 499.50, 0.52631, 0.85029, -0.4797),
    (14, 0.30070, 299.70, 0.76877, 0.63953, +0.1841),
    (19, 0.05095, 49.95, 0.97551, 0.21993, +1.4896),
    (20, 0.00100, 0.00, 0.99957, 0.02916, +3.5347),
]


@pytest.mark.parametrize("row", SPEC_5_TABLE, ids=[f"i={r[0]}" for r in SPEC_5_TABLE])
def test_spec_5_table_values(sd, row):
    i, t, tau, alpha, sigma, lam = row
    grid = time_grid(20)
    ti = grid[i]
    assert abs(ti.item() - t) < 0.5e-5
    assert abs(sd.model_time(ti).item() - tau) < 0.5e-2
    assert abs(sd.alpha(ti).item() - alpha) < 0.5e-5
    assert abs(sd.sigma(ti).item() - sigma) < 0.5e-5
    assert abs(sd.lambda_(ti).item() - lam) < 0.5e-4
    # Inversion is the same grid reversed.
    assert abs(time_grid(20, ascending=True)[20 - i].item() - t) < 0.5e-5


def test_time_grids_are_float32_linspace():
    desc, asc = time_grid(20), time_grid(20, ascending=True)
    assert desc.dtype == asc.dtype == torch.float32 and desc.shape == asc.shape == (21,)
    assert torch.equal(desc, torch.linspace(1.0, 0.001, 21, dtype=torch.float32))
    assert torch.equal(asc, torch.linspace(0.001, 1.0, 21, dtype=torch.float32))  # computed directly, not flipped
    assert desc[0].item() == 1.0 and asc[0].item() == desc[-1].item() == np.float32(0.001)
    custom = time_grid(4, t_start=0.8, t_end=0.2)
    assert torch.allclose(custom, torch.tensor([0.8, 0.65, 0.5, 0.35, 0.2]))


def test_model_time_is_a_float_not_rounded(sd):
    times = sd.model_time(time_grid(20))
    assert times.dtype == torch.float32
    expected = torch.tensor([999.0 - 49.95 * i for i in range(21)])
    assert torch.allclose(times, expected, atol=1e-3, rtol=0)
    assert times[1].item() != round(times[1].item())  # 949.05 is passed as is
    assert times[0].item() == 999.0 and times[-1].item() == 0.0


def test_alphas_cumprod_reproduces_ldm_float64_computation(sd):
    # ldm: numpy float64 betas and cumprod, stored as float32.
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    ldm = torch.from_numpy(np.cumprod(1.0 - betas).astype(np.float32))
    assert torch.equal(sd.alphas_cumprod, ldm)
    assert sd.num_train_timesteps == 1000
    # Computing the betas in float32 (as diffusers' schedulers do) is not the same schedule bit for bit.
    betas32 = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    assert not torch.equal(torch.cumprod(1.0 - betas32, dim=0), sd.alphas_cumprod)


def test_linear_and_trained_betas_configs():
    linear = NoiseSchedule.from_scheduler_config({"num_train_timesteps": 10, "beta_start": 0.01, "beta_end": 0.1})
    expected = np.cumprod(1.0 - np.linspace(0.01, 0.1, 10)).astype(np.float32)
    assert torch.equal(linear.alphas_cumprod, torch.from_numpy(expected))
    trained = NoiseSchedule.from_scheduler_config({"trained_betas": [0.1, 0.2, 0.3], "num_train_timesteps": 3})
    assert torch.allclose(trained.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504]), atol=1e-7, rtol=0)


def test_log_alpha_is_piecewise_linear_with_linear_extrapolation():
    acp = torch.tensor([0.9, 0.7, 0.4, 0.1])
    sched = NoiseSchedule(acp)  # knots at t = 0.25, 0.5, 0.75, 1.0
    y = 0.5 * torch.log(acp)
    assert torch.equal(sched.log_alpha(torch.tensor([0.25, 0.5, 0.75, 1.0])), y)
    mid = sched.log_alpha(torch.tensor([0.375, 0.625, 0.875]))
    assert torch.allclose(mid, (y[:-1] + y[1:]) / 2, atol=1e-7, rtol=0)
    # Outside the knots: the first / last segment extended.
    assert math.isclose(sched.log_alpha(0.125).item(), (y[0] - (y[1] - y[0]) / 2).item(), abs_tol=1e-7)
    assert math.isclose(sched.log_alpha(1.125).item(), (y[3] + (y[3] - y[2]) / 2).item(), abs_tol=1e-7)
    # sigma and lambda from log alpha; shape is kept; model time maps knot n to timestep n.
    t = torch.tensor([[0.3, 0.6], [0.9, 1.0]])
    la = sched.log_alpha(t)
    assert la.shape == (2, 2)
    assert torch.allclose(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones(2, 2), atol=1e-6, rtol=0)
    assert torch.allclose(sched.lambda_(t), torch.log(sched.alpha(t) / sched.sigma(t)), atol=1e-5, rtol=0)
    assert torch.allclose(sched.model_time(torch.tensor([0.25, 0.5, 0.75, 1.0])), torch.tensor([0.0, 1.0, 2.0, 3.0]))


def test_schedule_rejects_bad_input():
    with pytest.raises(TypeError, match="alphas_cumprod"):
        NoiseSchedule([0.9, 0.8])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule(torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(torch.tensor([0.9, 0.0]))
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule.from_scheduler_config({"beta_schedule": "squaredcos_cap_v2"})
    with pytest.raises(ValueError, match="zero"):
        NoiseSchedule.from_scheduler_config({**SD21_CONFIG, "rescale_betas_zero_snr": True})
    with pytest.raises(TypeError, match="t must be"):
        NoiseSchedule(torch.tensor([0.9, 0.8])).alpha("1.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="t_start > t_end > 0"):
        time_grid(20, t_start=0.001, t_end=1.0)
    with pytest.raises(ValueError, match="t_start > t_end > 0"):
        time_grid(20, t_end=0.0)
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)


# ----------------------------------------------------------------------------------------------------------------
# Data prediction
# ----------------------------------------------------------------------------------------------------------------


def test_epsilon_v_and_sample_predictions_agree(sd):
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    t = torch.tensor([0.95, 0.5, 0.05])
    a, s = sd.alpha(t).view(-1, 1, 1, 1), sd.sigma(t).view(-1, 1, 1, 1)
    x = a * x0 + s * eps
    v = a * eps - s * x0
    d_eps = to_data_prediction(eps, x, t, sd, "epsilon")
    d_v = to_data_prediction(v, x, t, sd, "v_prediction")
    d_x0 = to_data_prediction(x0, x, t, sd, "sample")
    assert torch.allclose(d_v, d_eps, atol=1e-4, rtol=0)  # eps form divides by alpha = 0.09 at t = 0.95
    assert torch.allclose(d_v, x0, atol=1e-5, rtol=0)
    assert torch.equal(d_x0, x0)
    # A scalar time broadcasts over the batch.
    assert torch.allclose(to_data_prediction(eps, x, 0.5, sd), (x - sd.sigma(0.5) * eps) / sd.alpha(0.5))
    with pytest.raises(ValueError, match="prediction_type"):
        to_data_prediction(eps, x, t, sd, "flow")
    with pytest.raises(ValueError, match="one time per sample"):
        to_data_prediction(eps, x, torch.tensor([0.5, 0.4]), sd)


# ----------------------------------------------------------------------------------------------------------------
# Update formulas
# ----------------------------------------------------------------------------------------------------------------


def transcribed_update(x, lams, alphas, sigmas, ds, order):
    """Independent float64 transcription of the DPM-Solver++ multistep update, in terms of exp(-h) directly.

    ``lams``/``alphas``/``sigmas``: Python floats for the history times (most recent last) followed by the target
    time. Returns the update and a per-element scale: the sum of magnitudes of the float32 terms (with the 1/h
    conditioning of phi_3), to bound float32 rounding in the implementation under test.
    """
    x = x.double()
    ds = [d.double() for d in ds]
    lam_next, alpha_next, sigma_next = lams[-1], alphas[-1], sigmas[-1]
    h = lam_next - lams[-2]
    one_minus_exp = 1.0 - math.exp(-h)  # = -phi_1
    out = (sigma_next / sigmas[-2]) * x + alpha_next * one_minus_exp * ds[-1]
    scale = (sigma_next / sigmas[-2]) * x.abs() + alpha_next * abs(one_minus_exp) * ds[-1].abs()
    if order >= 2:
        h0 = lams[-2] - lams[-3]
        slope = (ds[-1] - ds[-2]) * (h / h0)
    if order == 2:
        out = out + 0.5 * alpha_next * one_minus_exp * slope
        scale = scale + alpha_next * slope.abs()
    if order == 3:
        h1 = lams[-3] - lams[-4]
        slope_prev = (ds[-2] - ds[-3]) * (h / h1)
        first = slope + (h0 / (h0 + h1)) * (slope - slope_prev)
        second = (slope - slope_prev) * (h / (h0 + h1))
        weight_first = 1.0 - one_minus_exp / h  # phi_2 = (e^{-h} - 1)/h + 1
        weight_second = (math.exp(-h) - 1.0 + h) / h**2 - 0.5  # phi_3
        out = out + alpha_next * weight_first * first - alpha_next * weight_second * second
        scale = scale + alpha_next * (first.abs() + second.abs() / abs(h))
    return out, scale


@pytest.mark.parametrize("ascending", [False, True], ids=["sampling", "inversion"])
@pytest.mark.parametrize("steps", [5, 20, 50])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_update_matches_independent_transcription(sd, order, steps, ascending):
    gen = torch.Generator().manual_seed(100 * order + steps)
    grid = time_grid(steps, ascending=ascending)
    for i in range(order - 1, steps):
        t_hist = [grid[j] for j in range(i - order + 1, i + 1)]
        x = torch.randn(2, 4, 3, 3, generator=gen)
        d_hist = [torch.randn(2, 4, 3, 3, generator=gen) for _ in t_hist]  # a random D-model
        out = multistep_update(x, t_hist, d_hist, grid[i + 1], order, sd)
        times = [*t_hist, grid[i + 1]]
        lams = [sd.lambda_(t).item() for t in times]
        alphas = [sd.alpha(t).item() for t in times]
        sigmas = [sd.sigma(t).item() for t in times]
        ref, scale = transcribed_update(x, lams, alphas, sigmas, d_hist, order)
        assert out.dtype == torch.float32
        assert ((out.double() - ref).abs() <= 1e-6 * scale).all(), f"step to grid index {i + 1}"


def test_per_sample_times_equal_separate_updates(sd):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 3, generator=gen)
    ds = [torch.randn(2, 4, 3, 3, generator=gen) for _ in range(3)]
    t_hist = [torch.tensor([0.9, 0.5]), torch.tensor([0.85, 0.45]), torch.tensor([0.8, 0.4])]
    t_next = torch.tensor([0.75, 0.35])
    batched = multistep_update(x, t_hist, ds, t_next, 3, sd)
    for b in range(2):
        single = multistep_update(x[b : b + 1], [t[b] for t in t_hist], [d[b : b + 1] for d in ds], t_next[b], 3, sd)
        assert torch.allclose(batched[b : b + 1], single, atol=1e-6, rtol=0)


def exact_polynomial_update(sd, x, t_now, t_next, coeffs):
    """Exact solution for D(lambda) = sum_k c_k (lambda - lambda_now)^k, k <= 2 (float64).

    x' = (sigma'/sigma) x + alpha' e^{-h} sum_k c_k I_k(h), with I_k = int_0^h e^u u^k du.
    """
    lam0, lam1 = sd.lambda_(t_now).double().item(), sd.lambda_(t_next).double().item()
    h = lam1 - lam0
    integrals = [math.expm1(h), (h - 1) * math.exp(h) + 1, math.exp(h) * (h * h - 2 * h + 2) - 2]
    ratio = (sd.sigma(t_next) / sd.sigma(t_now)).double().item()
    alpha_next = sd.alpha(t_next).double().item()
    return ratio * x.double() + alpha_next * math.exp(-h) * sum(c * i for c, i in zip(coeffs, integrals))


@pytest.mark.parametrize("direction", [-1, 1], ids=["sampling", "inversion"])
def test_exactness_on_polynomial_data_predictions(sd, direction):
    """Exponential integrator: exact for constant D at every order, order 3 exact for D linear in lambda.

    The official DPM-Solver++(3M) update (kept here unchanged) integrates the quadratic part of D with HALF the
    exact weight: its D2 estimates h^2 D''/2 while phi_3 multiplies h^2 D''. So the "third-order" multistep
    update has local error O(h^3), like order 2 (see test_local_error_orders).
    """
    x = torch.tensor([0.7, -1.3])
    t_now = 0.5
    t_hist = [torch.tensor(t_now - direction * 0.05 * j) for j in (2, 1, 0)]
    t_next = torch.tensor(t_now + direction * 0.05)
    lam0 = sd.lambda_(t_now).double().item()
    offsets = [sd.lambda_(t).double().item() - lam0 for t in t_hist]

    def history(coeffs):
        return [torch.full((2,), sum(c * u**k for k, c in enumerate(coeffs)), dtype=torch.float32) for u in offsets]

    for order in (1, 2, 3):
        out = multistep_update(x, t_hist, history([0.4]), t_next, order, sd)
        assert torch.allclose(out.double(), exact_polynomial_update(sd, x, t_now, t_next, [0.4]), atol=1e-6, rtol=0)
    linear = [0.4, -0.8]
    out = multistep_update(x, t_hist, history(linear), t_next, 3, sd)
    assert torch.allclose(out.double(), exact_polynomial_update(sd, x, t_now, t_next, linear), atol=1e-6, rtol=0)
    quadratic = [0.0, 0.0, 3.0]
    out = multistep_update(x, t_hist, history(quadratic), t_next, 3, sd).double()
    exact = exact_polynomial_update(sd, x, t_now, t_next, quadratic)
    half_weight = exact_polynomial_update(sd, x, t_now, t_next, [0.0, 0.0, 1.5])
    assert torch.allclose(out, half_weight, atol=1e-6, rtol=0)
    assert not torch.allclose(out, exact, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Gaussian data: the exact ODE solution is known
# ----------------------------------------------------------------------------------------------------------------


class GaussianData:
    """Data ~ N(mu, s^2 I): x_t ~ N(alpha mu, (alpha^2 s^2 + sigma^2) I), so the exact eps-prediction is
    E[eps | x_t] = -sigma * score = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2).

    The probability-flow ODE keeps z = (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2) constant (the only
    continuous, marginal-preserving affine flow), which gives the exact solution between any two times.
    """

    def __init__(self, schedule: NoiseSchedule, mu: torch.Tensor, std: float):
        self.schedule, self.mu, self.std = schedule, mu, std

    def model_fn(self, x, model_t):
        t = (model_t + 1.0) / self.schedule.num_train_timesteps  # invert model_time
        a = self.schedule.alpha(t).view(-1, *[1] * (x.dim() - 1))
        s = self.schedule.sigma(t).view(-1, *[1] * (x.dim() - 1))
        return s * (x - a * self.mu) / (a * a * self.std**2 + s * s)

    def data_prediction(self, x, t):
        return to_data_prediction(self.model_fn(x, self.schedule.model_time(t).reshape(1)), x, t, self.schedule)

    def flow(self, x, t_from, t_to):
        def stats(t):
            a, s = self.schedule.alpha(t).double(), self.schedule.sigma(t).double()
            return a * self.mu.double(), torch.sqrt(a * a * self.std**2 + s * s)

        (m0, v0), (m1, v1) = stats(t_from), stats(t_to)
        return m1 + v1 * (x.double() - m0) / v0


def max_error(a, b):
    return (a.double() - b.double()).abs().max().item()


def test_local_error_orders(sd):
    """One update from exact history on the SD schedule: local error ~ delta^2 (order 1), ~ delta^3 (orders 2, 3)."""
    gen = torch.Generator().manual_seed(4)
    data = GaussianData(sd, 0.5 * torch.randn(1, 4, 4, 4, generator=gen), 0.5)
    x_start = torch.randn(2, 4, 4, 4, generator=gen)
    for direction in (-1, 1):
        for order, (low, high) in {1: (3.3, 5.0), 2: (6.5, 10.0), 3: (6.0, 12.0)}.items():
            errors = []
            for delta in (0.08, 0.04, 0.02):
                t_hist = [torch.tensor(0.5 - direction * j * delta) for j in reversed(range(order))]
                t_next = torch.tensor(0.5 + direction * delta)
                xs = [data.flow(x_start, torch.tensor(1.0), t).float() for t in t_hist]
                ds = [data.data_prediction(xt, t) for xt, t in zip(xs, t_hist)]
                out = multistep_update(xs[-1], t_hist, ds, t_next, order, sd)
                errors.append(max_error(out, data.flow(x_start, torch.tensor(1.0), t_next)))
            ratios = [errors[0] / errors[1], errors[1] / errors[2]]
            assert all(low < r < high for r in ratios), (direction, order, errors)


def test_sampling_converges_to_exact_ode_solution():
    sched = lambda_linear_schedule()
    gen = torch.Generator().manual_seed(5)
    data = GaussianData(sched, 0.5 * torch.randn(1, 4, 4, 4, generator=gen), 1.0)
    x_T = torch.randn(2, 4, 4, 4, generator=gen)
    exact = data.flow(x_T, torch.tensor(1.0), torch.tensor(1e-3))
    errors = {order: [max_error(sample(data.model_fn, x_T, sched, n, order), exact) for n in (20, 40, 80)]
              for order in (1, 2, 3)}
    ratios = {order: [e[0] / e[1], e[1] / e[2]] for order, e in errors.items()}
    assert all(1.8 < r < 2.2 for r in ratios[1]), errors  # first order
    assert all(3.5 < r < 4.5 for r in ratios[2]), errors  # second order
    # Order 3 is globally second order too (first-order warm-up step, and the 3M half weight on D''), but its
    # error is smaller than order 2's at every step count.
    assert all(3.5 < r < 5.5 for r in ratios[3]), errors
    assert all(e3 < e2 for e2, e3 in zip(errors[2], errors[3])), errors
    assert errors[2][-1] < 1e-3


def test_sampling_on_sd_schedule_improves_with_steps(sd):
    gen = torch.Generator().manual_seed(6)
    data = GaussianData(sd, 0.5 * torch.randn(1, 4, 4, 4, generator=gen), 0.5)
    x_T = torch.randn(2, 4, 4, 4, generator=gen)
    exact = data.flow(x_T, torch.tensor(1.0), torch.tensor(1e-3))
    for order in (1, 2):
        errors = [max_error(sample(data.model_fn, x_T, sd, n, order), exact) for n in (10, 20, 40, 80)]
        assert all(b < 0.75 * a for a, b in zip(errors, errors[1:])), (order, errors)


def test_inversion_then_sampling_converges_to_identity():
    sched = lambda_linear_schedule()
    gen = torch.Generator().manual_seed(7)
    data = GaussianData(sched, 0.5 * torch.randn(1, 4, 4, 4, generator=gen), 1.0)
    x0 = data.flow(torch.randn(2, 4, 4, 4, generator=gen), torch.tensor(1.0), torch.tensor(1e-3)).float()
    exact_noise = data.flow(x0, torch.tensor(1e-3), torch.tensor(1.0))
    inversion_errors, roundtrip_errors = [], []
    for steps in (20, 40, 80):
        noise = invert(data.model_fn, x0, sched, steps, 2)
        inversion_errors.append(max_error(noise, exact_noise))
        roundtrip_errors.append(max_error(sample(data.model_fn, noise, sched, steps, 2), x0))
    assert all(3.0 < a / b < 5.0 for a, b in zip(inversion_errors, inversion_errors[1:])), inversion_errors
    # The round trip partly cancels the two (opposite) discretisation errors, so its ratio is less regular.
    assert all(3.0 < a / b < 6.0 for a, b in zip(roundtrip_errors, roundtrip_errors[1:])), roundtrip_errors
    assert roundtrip_errors[-1] < 2e-3


# ----------------------------------------------------------------------------------------------------------------
# Control flow
# ----------------------------------------------------------------------------------------------------------------


def test_step_order_table():
    assert [step_order(i, 20, 2) for i in range(1, 21)] == [1] + [2] * 19
    assert [step_order(i, 20, 3) for i in range(1, 21)] == [1, 2] + [3] * 18
    assert [step_order(i, 20, 1) for i in range(1, 21)] == [1] * 20
    assert [step_order(i, 10, 2) for i in range(1, 11)] == [1] + [2] * 9  # lower_order_final only below 10
    assert [step_order(i, 9, 2) for i in range(1, 10)] == [1] + [2] * 7 + [1]
    assert [step_order(i, 5, 3) for i in range(1, 6)] == [1, 2, 3, 2, 1]
    assert [step_order(i, 3, 3) for i in range(1, 4)] == [1, 2, 1]
    assert [step_order(i, 2, 2) for i in range(1, 3)] == [1, 1]
    with pytest.raises(ValueError, match="index"):
        step_order(0, 20, 2)
    with pytest.raises(ValueError, match="steps must be >= 3"):
        step_order(1, 2, 3)
    with pytest.raises(ValueError, match="order"):
        step_order(1, 20, 4)


class CountingModel:
    """A deterministic non-trivial eps model that records the model times it was called with."""

    def __init__(self):
        self.calls: list[torch.Tensor] = []

    def __call__(self, x, model_t):
        self.calls.append(model_t.clone())
        return torch.tanh(x) * (1.0 + model_t.view(-1, *[1] * (x.dim() - 1)) / 1000.0)


@pytest.mark.parametrize(("steps", "order"), [(1, 1), (3, 3), (5, 2), (9, 3), (20, 2), (20, 3)])
def test_nfe_and_model_times(sd, steps, order):
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(8))
    model = CountingModel()
    sample(model, x, sd, steps, order)
    assert len(model.calls) == steps
    expected = sd.model_time(time_grid(steps)[:-1])
    assert all(c.shape == (2,) and c.dtype == torch.float32 for c in model.calls)
    assert torch.equal(torch.stack([c[0] for c in model.calls]), expected)

    model = CountingModel()
    invert(model, x, sd, steps, order)
    assert len(model.calls) == steps
    assert torch.equal(model.calls[0], torch.zeros(2))  # first evaluation: the clean latent at model time 0
    assert torch.equal(torch.stack([c[0] for c in model.calls]), sd.model_time(time_grid(steps, ascending=True)[:-1]))


@pytest.mark.parametrize(("steps", "order"), [(5, 3), (12, 2), (12, 3)])
def test_sample_and_invert_equal_explicit_state_loop(sd, steps, order):
    """sample/invert = evaluate at t_0, then advance with step_order and evaluate except at the last point."""
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(9))
    model = CountingModel()
    for ascending, run in ((False, sample), (True, invert)):
        grid = time_grid(steps, ascending=ascending)
        state = SolverState(x=x, t=grid[0].expand(2))
        state = state.with_evaluation(to_data_prediction(model(state.x, sd.model_time(state.t)), state.x, state.t, sd))
        for index in range(1, steps + 1):
            state = state.advance(grid[index].expand(2), step_order(index, steps, order), sd)
            if index < steps:
                eps = model(state.x, sd.model_time(state.t))
                state = state.with_evaluation(to_data_prediction(eps, state.x, state.t, sd))
        assert torch.equal(run(model, x, sd, steps, order), state.x)


def test_callback_sees_every_step(sd):
    seen = []
    x = torch.randn(1, 2, 2, 2)
    out = sample(CountingModel(), x, sd, 6, 2, callback=lambda i, t, xt: seen.append((i, t[0].item(), xt)))
    assert [s[0] for s in seen] == list(range(1, 7))
    assert [s[1] for s in seen] == time_grid(6)[1:].tolist()
    assert torch.equal(seen[-1][2], out)


def test_solver_state_is_immutable_and_keeps_three(sd):
    state = SolverState(x=torch.zeros(1, 2), t=torch.tensor([0.9]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.x = torch.ones(1, 2)  # type: ignore[misc]
    with pytest.raises(ValueError, match="with_evaluation"):
        state.advance(0.8, 1, sd)
    times = [0.9, 0.8, 0.7, 0.6]
    for i, t_next in enumerate(times[1:]):
        state = state.with_evaluation(torch.full((1, 2), float(i)))
        before = state
        state = state.advance(torch.tensor([t_next]), 1, sd)
        assert before.t.item() == pytest.approx(times[i]) and before.x is not state.x  # old state untouched
    state = state.with_evaluation(torch.full((1, 2), 3.0))
    assert len(state.t_hist) == len(state.d_hist) == 3
    assert [d[0, 0].item() for d in state.d_hist] == [1.0, 2.0, 3.0]
    assert [t.item() for t in state.t_hist] == pytest.approx([0.8, 0.7, 0.6])
    advanced = state.advance(0.5, 1, sd)
    with pytest.raises(ValueError, match="without an evaluation"):
        advanced.advance(0.4, 1, sd)
    with pytest.raises(ValueError, match="shape"):
        state.with_evaluation(torch.zeros(2, 2))


def test_solver_rejects_bad_arguments(sd):
    x = torch.randn(1, 2, 2, 2)
    with pytest.raises(ValueError, match="steps must be >= order"):
        sample(CountingModel(), x, sd, 1, 2)
    with pytest.raises(ValueError, match="prediction_type"):
        sample(CountingModel(), x, sd, 4, 2, prediction_type="x0")
    with pytest.raises(ValueError, match="order-3 update needs 3"):
        multistep_update(x, [torch.tensor(0.5)] * 2, [x, x], 0.4, 3, sd)
    with pytest.raises(ValueError, match="same length"):
        multistep_update(x, [torch.tensor(0.5)], [x, x], 0.4, 1, sd)
    with pytest.raises(ValueError, match="order"):
        multistep_update(x, [torch.tensor(0.5)], [x], 0.4, 4, sd)

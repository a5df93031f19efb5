"""Step plans of the batched design against docs/algorithm.md §13.3 and 13.6 (no model needed)."""

from __future__ import annotations

import pytest

from tficon.core.plan import composition_plan, step_plan
from tficon.core.schedule import injection_schedule


def _plans(steps=20, order=2, tau_a=0.4, tau_b=0.8, tau_bg=0.4, align=False, lag=True):
    return composition_plan(injection_schedule(steps, order, tau_a, tau_b, tau_bg, align_warmup=align), cross_lag=lag)


def test_default_composition_costs_70_sample_evaluations():
    plans = _plans()
    # A2 + B5 + C5 + 5x5 + 7x3 + 6x2 (docs/algorithm.md §13.6)
    assert sum(p.sample_evals for p in plans) == 70
    assert sum(p.unet_calls for p in plans) == 21
    assert plans[0].pre_evals == (0,) and plans[0].batch_size == 5 and plans[1].batch_size == 5
    assert [p.batch_size for p in plans[2:7]] == [5] * 5
    assert [p.batch_size for p in plans[7:14]] == [3] * 7
    assert [p.batch_size for p in plans[14:20]] == [2] * 6
    assert plans[20].batch_size == 0 and not plans[20].evaluate


def test_official_warmup_reads_maps_at_t_k_minus_1_and_pseudo_lag():
    plans = _plans()
    assert [p.map_index for p in plans[:3]] == [1, 1, 2]
    # warm-up: the pseudo-cross row sees x_ref(t_1); main loop: x_ref(t_{s-1}) with the timestep of t_s
    assert [p.pseudo_latent for p in plans[:7]] == [1, 1, 1, 2, 3, 4, 5]
    assert plans[7].pseudo_latent is None
    assert all(p.fg and p.bg for p in plans[:2])
    assert plans[1].history_blend and not any(p.history_blend for p in plans if p.s != 1)
    assert [p.s for p in plans if p.blend] == list(range(2, 15))
    # background/reference run ahead in the warm-up, so they only move from step k on
    assert not any(p.advance_background or p.advance_reference for p in plans[:2])
    assert [p.s for p in plans if p.advance_reference] == [2, 3, 4, 5, 6]
    assert [p.s for p in plans if p.advance_background] == list(range(2, 15))


def test_aligned_warmup_and_no_lag():
    plans = _plans(align=True, lag=False)
    assert plans[0].pre_evals == ()
    assert [p.map_index for p in plans[:3]] == [0, 1, 2]
    assert [p.pseudo_latent for p in plans[:4]] == [0, 1, 2, 3]
    assert plans[1].advance_background and plans[1].advance_reference
    assert sum(p.sample_evals for p in plans) == 5 + 5 + 25 + 21 + 12


@pytest.mark.parametrize("order", [1, 2, 3])
def test_orders_and_pre_evaluations(order):
    plans = _plans(order=order)
    assert plans[0].pre_evals == tuple(range(order - 1))
    assert [p.order for p in plans[1:order + 1]] == list(range(1, order)) + [order]


def test_tau_change_first_divergence():
    before, after = _plans(tau_b=0.8), _plans(tau_b=0.9)
    first = next(s for s, (a, b) in enumerate(zip(before, after)) if a != b)
    # the background branch must now be evaluated one step longer (its D at t_14 feeds the blend after step 15)
    assert first == 14
    before, after = _plans(tau_a=0.4), _plans(tau_a=0.5)
    assert next(s for s, (a, b) in enumerate(zip(before, after)) if a != b) == 7


def test_step_range_is_checked():
    with pytest.raises(ValueError, match="step must be in 0..20"):
        step_plan(injection_schedule(20, 2, 0.4, 0.8), 21)


def test_background_queries_keep_background_in_the_batch_while_fg_is_on():
    schedule = injection_schedule(20, 2, 0.6, 0.8, 0.2)  # fg evals 0-10, bg 0-3
    official = composition_plan(schedule)
    option = composition_plan(schedule, background_queries=True)
    assert all(p.background_row for p in option if p.fg)
    assert [p.s for p in option if p.background_queries] == [p.s for p in official if p.fg]
    assert not any(p.background_queries for p in official)
    assert next(s for s, (a, b) in enumerate(zip(official, option)) if a != b) == 0

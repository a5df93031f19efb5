"""Golden tests for the per-step injection / blend flags (docs/algorithm.md §8.4, 13.2, 13.6)."""

from __future__ import annotations

import dataclasses

import pytest

from tficon.core.schedule import InjectionSchedule, injection_schedule


def span(a: int, b: int) -> tuple[int, ...]:
    """Inclusive integer range as a tuple (docs/algorithm.md's tables write 'a–b')."""
    return tuple(range(a, b + 1))


# Every row of the docs/algorithm.md §8.4 table: (S, k, tau_a, tau_b) -> fg-injection evals, bg-injection evals, x-blend steps.
SPEC_8_4_TABLE = [
    ((20, 2, 0.4, 0.8), span(0, 6), span(0, 6), span(2, 14)),  # default
    ((20, 1, 0.4, 0.8), span(0, 7), span(0, 7), span(1, 15)),
    ((20, 3, 0.4, 0.8), span(0, 5), span(0, 5), span(3, 13)),
    ((50, 2, 0.4, 0.8), span(0, 18), span(0, 18), span(2, 38)),  # gradio default steps
    ((20, 2, 0.0, 0.0), span(0, 1), span(0, 6), ()),  # tau_a = 0: warm-up still injects; tau_b = 0: no blend
    ((20, 2, 1.0, 1.0), span(0, 18), span(0, 6), span(2, 18)),  # tau_b = 1: the last k = 2 steps unblended
    ((20, 2, 0.3, 0.8), span(0, 4), span(0, 6), span(2, 14)),  # int(0.3 * 20 + 1 - 2) = 5
    ((20, 2, 0.6, 0.8), span(0, 10), span(0, 6), span(2, 14)),
]


@pytest.mark.parametrize(("args", "fg", "bg", "blends"), SPEC_8_4_TABLE, ids=[str(r[0]) for r in SPEC_8_4_TABLE])
def test_spec_table_rows(args, fg, bg, blends):
    sched = injection_schedule(*args)
    assert sched.fg_evals() == fg
    assert sched.bg_evals() == bg
    assert sched.blend_steps() == blends
    assert sched.injected_evals() == tuple(sorted(set(fg) | set(bg)))
    # The per-index predicates agree with the tables, including the last eval / step.
    steps = args[0]
    assert [sched.fg_inject(i) for i in range(steps)] == [i in fg for i in range(steps)]
    assert [sched.reference_needed(i) for i in range(steps)] == [i in fg for i in range(steps)]
    assert [sched.blend_after(s) for s in range(1, steps + 1)] == [s in blends for s in range(1, steps + 1)]


def test_bounds_use_python_float_truncation():
    # The spec's example "0.3 * 20 = 6.000000000000001" does not hold in IEEE doubles (it is exactly 6.0), but
    # float rounding does matter elsewhere: 0.58 * 50 = 28.999999999999996, so the bound is int(27.99...) = 27,
    # one less than exact rational arithmetic would give (28).
    assert 0.3 * 20 == 6.0 and 0.58 * 50 == 28.999999999999996
    assert injection_schedule(50, 2, 0.58, 0.8).fg_end == 27
    assert injection_schedule(50, 2, 0.58, 0.8).fg_evals() == span(0, 26)
    assert injection_schedule(50, 2, 0.8, 0.58).blend_steps() == span(2, 26)
    assert injection_schedule(50, 2, 0.4, 0.8, 0.58).bg_evals() == span(0, 26)
    default = injection_schedule(20, 2, 0.4, 0.8)
    assert (default.fg_end, default.bg_end, default.blend_end) == (7, 7, 15)
    assert injection_schedule(20, 2, 0.3, 0.8).fg_end == 5
    # int() truncates toward zero: tau = 0 with k = 2 gives int(-1.0) = -1 (no main-loop injection).
    assert injection_schedule(20, 2, 0.0, 0.0).fg_end == -1
    # 0.29 * 20 = 5.8 -> int(4.8) = 4: truncation, not rounding.
    assert injection_schedule(20, 2, 0.29, 0.8).fg_evals() == span(0, 3)


def test_tau_zero_keeps_warmup_injection_for_every_order():
    for order in (1, 2, 3):
        sched = injection_schedule(20, order, 0.0, 0.0, 0.0)
        assert sched.fg_evals() == span(0, order - 1)
        assert sched.bg_evals() == span(0, order - 1)
        assert sched.blend_steps() == ()


def test_tau_b_above_one_blends_every_main_loop_step():
    # Spec 14 item 12: tau_b >= (S + k)/S + eps, e.g. 1.1 for S = 20, k = 2, blends after every step 2..20.
    sched = injection_schedule(20, 2, 0.4, 1.1)
    assert sched.blend_steps() == span(2, 20)
    assert injection_schedule(20, 2, 0.4, 1.05).blend_steps() == span(2, 19)  # int(21.0 + 1 - 2) = 20 -> s < 20


def test_warmup_steps_are_never_latent_blended():
    sched = injection_schedule(20, 3, 0.4, 1.1)
    assert [sched.blend_after(s) for s in (1, 2)] == [False, False]
    assert sched.blend_after(3)


def test_maps_index_official_and_aligned():
    official = injection_schedule(20, 2, 0.4, 0.8)
    assert [official.maps_index(i) for i in range(4)] == [1, 1, 2, 3]  # generation@t_0 uses maps from t_1
    third = injection_schedule(20, 3, 0.4, 0.8)
    assert [third.maps_index(i) for i in range(5)] == [2, 2, 2, 3, 4]
    first = injection_schedule(20, 1, 0.4, 0.8)
    assert [first.maps_index(i) for i in range(3)] == [0, 1, 2]
    aligned = injection_schedule(20, 3, 0.4, 0.8, align_warmup=True)
    assert [aligned.maps_index(i) for i in range(20)] == list(range(20))
    # align_warmup changes only which maps are read, not when injection is on.
    assert aligned.fg_evals() == third.fg_evals() and aligned.blend_steps() == third.blend_steps()


def test_background_needed_matches_spec_13_6_default():
    sched = injection_schedule(20, 2, 0.4, 0.8)
    # O while bg injection is on (0..6) or while the background branch's latent is needed for the blends up to s = 14 (evals <= 13).
    assert sched.background_evals() == span(0, 13)
    assert not sched.background_needed(14)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((20, 2, 0.4, 0.0), span(0, 6)),  # no blends: only bg injection needs the background branch
        ((20, 2, 0.4, 1.1), span(0, 19)),  # blend after the final step 20 needs the background branch's D up to t_19
        ((20, 2, 0.0, 0.0, 0.0), span(0, 1)),  # warm-up D-history blend always needs the background branch's warm-up D's
        ((20, 3, 0.4, 0.8), span(0, 12)),  # blends 3..13
        ((20, 2, 0.8, 0.3, 0.5), span(0, 8)),  # bg evals 0..8 outlast the blends 2..4 (which need evals <= 3)
    ],
)
def test_background_needed_derivation(args, expected):
    sched = injection_schedule(*args)
    assert sched.background_evals() == expected
    # Independent restatement: needed iff warm-up, bg-injected, or some later blend step s has i <= s - 1.
    for i in range(sched.steps):
        later_blend = any(i <= s - 1 for s in sched.blend_steps())
        assert sched.background_needed(i) == (i < sched.order or sched.bg_inject(i) or later_blend)


def batched_sample_evals(sched: InjectionSchedule) -> int:
    """Sample-evaluations of the batched exact design (docs/algorithm.md §13.2 / 13.3 / 13.6).

    Warm-up: O and R at t_0..t_{k-2} (2 each), then k calls of [O, R, P, Gu, Gc] in which the generation branch's warm-up
    evaluations see the maps at t_{k-1}. Main loop s = k..S-1: O if the background branch is needed, R and P if fg is on, Gu and Gc.
    """
    k = sched.order
    total = 2 * (k - 1) + 5 * k
    for s in range(k, sched.steps):
        total += int(sched.background_needed(s)) + 2 * int(sched.reference_needed(s)) + 2
    return total


def test_batched_sample_eval_count_matches_spec_13_6():
    sched = injection_schedule(20, 2, 0.4, 0.8)
    # A2 + B5 + C5 + 5 x 5 (s = 2..6) + 7 x 3 (s = 7..13) + 6 x 2 (s = 14..19) = 70.
    roles = [int(sched.background_needed(s)) + 2 * int(sched.reference_needed(s)) + 2 for s in range(2, 20)]
    assert roles == [5] * 5 + [3] * 7 + [2] * 6
    assert batched_sample_evals(sched) == 70


def test_dataclass_is_frozen_and_equal_by_value():
    a = injection_schedule(20, 2, 0.4, 0.8)
    b = InjectionSchedule(steps=20, order=2, tau_a=0.4, tau_b=0.8)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.tau_a = 0.5  # type: ignore[misc]
    assert injection_schedule(20, 2, 1, 1) == injection_schedule(20, 2, 1.0, 1.0)  # ints are accepted as floats


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(steps=0, order=1), ValueError, "steps"),
        (dict(steps=1, order=2), ValueError, "steps must be >= 2"),
        (dict(steps=20, order=4), ValueError, "order"),
        (dict(steps=20, order=0), ValueError, "order"),
        (dict(steps=20.0, order=2), TypeError, "steps"),
        (dict(steps=20, order=True), TypeError, "order"),
        (dict(tau_a=-0.1), ValueError, "tau_a"),
        (dict(tau_b=float("nan")), ValueError, "tau_b"),
        (dict(tau_bg=float("inf")), ValueError, "tau_bg"),
        (dict(tau_a="0.4"), TypeError, "tau_a"),
        (dict(align_warmup=1), TypeError, "align_warmup"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, error, match):
    args = dict(steps=20, order=2, tau_a=0.4, tau_b=0.8)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        injection_schedule(**args)


def test_indices_out_of_range_raise():
    sched = injection_schedule(20, 2, 0.4, 0.8)
    for method in (sched.fg_inject, sched.bg_inject, sched.reference_needed, sched.maps_index, sched.background_needed):
        with pytest.raises(ValueError, match="eval index"):
            method(20)  # no evaluation at the final grid point
        with pytest.raises(ValueError, match="eval index"):
            method(-1)
    with pytest.raises(ValueError, match="step s"):
        sched.blend_after(0)
    with pytest.raises(ValueError, match="step s"):
        sched.blend_after(21)

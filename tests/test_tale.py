"""TALE's mechanisms (issue 22): the later start at t' and the adaptive latent normalisation of the object region,
and the ``tale`` preset. The maths is checked against its formula, the Session against the official run (off:
bitwise the same; on: exactly the change the plan names), the later start by the UNet work it skips."""

from __future__ import annotations

import pytest
import torch
from tiny_setup import new_session

from tficon.composition.latent_norm import adaptive_latent_normalization
from tficon.core import solver
from tficon.core.config import SETTINGS_BY_NAME, CompositionConfig
from tficon.core.plan import composition_steps, plans_for, start_index
from tficon.model.tiny import tiny_model

STEPS = 6


def _latents(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(1, 4, 8, 8, generator=g) * 2 + 1).to(dtype)
    target = (torch.randn(1, 4, 8, 8, generator=g) * 0.5 - 3).to(dtype)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:6, 1:5] = True
    region[2, 1] = False  # not a box: any region
    return x, region, target


def _stats(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased standard deviation of (C, n) values."""
    return values.mean(dim=1), values.std(dim=1)


# ---------------------------------------------------------------------------------------------------- the maths
def test_full_normalisation_gives_the_region_the_targets_channel_statistics():
    x, region, target = _latents()
    before = x.clone()
    out = adaptive_latent_normalization(x, region, target, 1.0)
    assert torch.equal(x, before)  # inputs untouched
    mean, std = _stats(out[0][:, region])
    target_mean, target_std = _stats(target.flatten(2)[0])
    torch.testing.assert_close(mean, target_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(std, target_std, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[0][:, ~region], x[0][:, ~region])  # nothing outside the region moves
    # and the formula itself, per channel
    inside = x[0][:, region]
    m, s = _stats(inside)
    expected = (inside - m[:, None]) / s[:, None] * target_std[:, None] + target_mean[:, None]
    torch.testing.assert_close(out[0][:, region], expected, rtol=1e-6, atol=1e-6)


def test_a_partial_weight_moves_the_region_that_part_of_the_way():
    x, region, target = _latents(1)
    full = adaptive_latent_normalization(x, region, target, 1.0)
    for weight in (0.1, 0.5):
        out = adaptive_latent_normalization(x, region, target, weight)
        torch.testing.assert_close(out, x + weight * (full - x), rtol=1e-6, atol=1e-6)
    assert torch.equal(adaptive_latent_normalization(x, region, target, 0.0), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_latents_keep_their_dtype_and_get_the_statistics(dtype):
    x, region, target = _latents(2, dtype)
    out = adaptive_latent_normalization(x, region, target, 1.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    mean, std = _stats(out[0][:, region].float())
    target_mean, target_std = _stats(target.float().flatten(2)[0])
    tolerance = 0.02 if dtype == torch.float16 else 0.08  # the result is rounded to the dtype
    torch.testing.assert_close(mean, target_mean, rtol=0, atol=tolerance)
    torch.testing.assert_close(std, target_std, rtol=tolerance, atol=0)


def test_degenerate_regions_and_bad_inputs():
    x, region, target = _latents()
    one = torch.zeros_like(region)
    one[3, 3] = True
    assert torch.equal(adaptive_latent_normalization(x, one, target), x)  # no spread to match
    assert torch.equal(adaptive_latent_normalization(x, torch.zeros_like(region), target), x)
    flat = x.clone()
    flat[0][:, region] = 2.0  # a constant region: no division by zero, it takes the target's mean
    out = adaptive_latent_normalization(flat, region, target)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0][:, region].mean(dim=1), target.flatten(2)[0].mean(dim=1), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"x must be one latent"):
        adaptive_latent_normalization(x[0], region, target)
    with pytest.raises(ValueError, match=r"target must be a latent \(1, 4, h, w\)"):
        adaptive_latent_normalization(x, region, target[:, :3])
    with pytest.raises(ValueError, match="region must be a bool map of shape"):
        adaptive_latent_normalization(x, region.float(), target)
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]"):
        adaptive_latent_normalization(x, region, target, 1.5)


# ---------------------------------------------------------------------------------------------------- settings, plans
def test_settings_are_off_by_default_and_declare_what_they_invalidate():
    config = CompositionConfig()
    assert (config.later_start, config.latent_norm_steps) == (0.0, 0)
    assert SETTINGS_BY_NAME["later_start"].invalidates == "latents"  # new inversions and start latent
    assert SETTINGS_BY_NAME["latent_norm_steps"].invalidates == "plans"
    assert SETTINGS_BY_NAME["latent_norm_strength"].invalidates == "plans"
    assert all(SETTINGS_BY_NAME[n].sweep for n in ("later_start", "latent_norm_steps", "latent_norm_strength"))
    assert all(p.latent_norm == 0.0 for p in plans_for(config))
    assert plans_for(config.replace(latent_norm_strength=0.9)) == plans_for(config)  # strength alone: nothing
    assert start_index(config) == 0 and composition_steps(config) == 20


def test_bad_values_name_the_setting_and_the_fix():
    with pytest.raises(ValueError, match=r"later_start must be a finite number in \[0, 0.9\]"):
        CompositionConfig(later_start=0.95)
    with pytest.raises(ValueError, match="later_start=0.6 leaves 2 of the 5 steps, fewer than order=3"):
        CompositionConfig(steps=5, order=3, later_start=0.6)
    with pytest.raises(ValueError, match="latent_norm_steps must be an integer >= 0"):
        CompositionConfig(latent_norm_steps=-1)
    with pytest.raises(ValueError, match="latent_norm_steps must be an integer >= 0"):
        CompositionConfig(latent_norm_steps=2.0)
    with pytest.raises(ValueError, match=r"latent_norm_strength must be a finite number in \[0, 1\]"):
        CompositionConfig(latent_norm_strength=float("nan"))


def test_the_normalisation_plan_ramps_its_weight_and_keeps_the_background_running():
    off = plans_for(CompositionConfig(steps=STEPS, tau_b=0.0, tau_bg=0.0))  # background needed in the warm-up only
    on = plans_for(
        CompositionConfig(steps=STEPS, tau_b=0.0, tau_bg=0.0, latent_norm_steps=4, latent_norm_strength=0.8)
    )
    assert [p.latent_norm for p in on] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.0, 0.0])
    # its target is the background branch at t_s: evaluated on every step before the last normalised one
    assert [p.background_row for p in off] == [True, True, False, False, False, False, False]
    assert [p.background_row for p in on] == [True, True, True, True, False, False, False]
    assert [p.advance_background for p in on] == [False, False, True, True, True, False, False]
    changed = {f for a, b in zip(off, on) for f in a.__dataclass_fields__ if getattr(a, f) != getattr(b, f)}
    assert changed == {"latent_norm", "background_row", "advance_background"}  # and nothing else
    # order 3: on step 1 the official warm-up has the background a step ahead; that step is left out
    third = plans_for(CompositionConfig(steps=STEPS, order=3, latent_norm_steps=3))
    assert [p.latent_norm for p in third][:4] == pytest.approx([0.0, 0.0, 1 / 3, 0.5])


def test_a_later_start_runs_the_remaining_steps_with_their_own_plans():
    config = CompositionConfig(steps=10, later_start=0.6)
    assert start_index(config) == 6 and composition_steps(config) == 4
    # the taus count the steps the composition runs: the plans of a 4-step composition
    assert plans_for(config) == plans_for(CompositionConfig(steps=4))
    assert start_index(CompositionConfig(steps=20, later_start=0.6)) == 12  # 0.6 * 20 truncates to 12, not 11


# ---------------------------------------------------------------------------------------------------- the Session
def test_switched_off_the_session_is_bitwise_the_official_one(model, sample):
    official = new_session(model, sample, steps=STEPS).run()
    off = new_session(model, sample, steps=STEPS, latent_norm_strength=1.0, engine=official.engine).run()
    assert [r.sample_evals for r in off.records] == [r.sample_evals for r in official.records]
    for a, b in zip(official.records, off.records):
        assert torch.equal(a.generation.x, b.generation.x) and a.plan == b.plan


def test_the_normalisation_changes_the_object_region_at_its_steps_and_nothing_else(model, sample):
    official = new_session(model, sample, steps=STEPS).run()
    on = new_session(model, sample, steps=STEPS, latent_norm_steps=1, latent_norm_strength=1.0, engine=official.engine)
    on.run()
    region = on.region_masks()["object"]
    a, b = official.records, on.records
    assert torch.equal(a[0].generation.x, b[0].generation.x)  # step 0 is before the window
    # step 1: the official latent at t_1 with the region normalised toward the background branch's latent at t_1
    assert torch.equal(a[1].background.x, b[1].background.x) and a[1].background.index == 1
    expected = adaptive_latent_normalization(a[1].generation.x, region, a[1].background.x, 1.0)
    assert torch.equal(b[1].generation.x, expected)
    moved = (b[1].generation.x != a[1].generation.x).any(dim=1)[0]
    assert moved.any() and not (moved & ~region).any()  # only inside the object region
    mean, std = _stats(b[1].generation.x[0][:, region])
    target_mean, target_std = _stats(b[1].background.x.flatten(2)[0])
    torch.testing.assert_close(mean, target_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(std, target_std, rtol=1e-5, atol=1e-6)
    # the helper branches do not change; the generation carries the change on
    for x, y in zip(a, b):
        assert torch.equal(x.background.x, y.background.x) and torch.equal(x.reference.x, y.reference.x)
    assert not torch.equal(a[-1].generation.x, b[-1].generation.x)
    # the background was evaluated on those steps anyway: no extra work
    assert [r.sample_evals for r in on.records] == [r.sample_evals for r in official.records]


def test_the_later_start_skips_the_inversion_and_step_work_before_t_prime(model, sample):
    steps, later = 10, 0.6
    official = new_session(model, sample, steps=steps).run()
    late = new_session(model, sample, steps=steps, later_start=later)
    assert late.steps == 4
    late.invert()
    assert late.stats == {"unet_calls": 4, "sample_evals": 2 * 4}  # the inversions stop at grid index 6
    late.run()
    assert len(late.records) == 5
    step_work = sum(p.sample_evals for p in plans_for(CompositionConfig(steps=4)))
    assert late.stats["sample_evals"] == 2 * 4 + step_work
    assert official.stats["sample_evals"] == 2 * 10 + sum(p.sample_evals for p in official.plans)
    assert late.stats["sample_evals"] < official.stats["sample_evals"] / 2
    # it starts at t_6 of the 10-step grid and ends where the official run ends
    grid = solver.time_grid(steps)
    assert late.records[0].generation.state.t == grid[6] and late.records[-1].generation.state.t == grid[-1]
    # its inversions are those of the 10-step grid stopped at t_6 (6 of 10 steps would be t_0.6 of a 6-step grid)
    z_bg, z_ref = late.encoded_latents()
    alone, _, _ = late.engine.invert([z_bg, z_ref], 4, 2, t_start=float(grid[6]))
    assert all(torch.equal(x, y) for x, y in zip(alone, late.invert()))
    full = official.invert()
    assert not torch.equal(full[0], late.invert()[0])


def test_update_keeps_what_each_setting_allows(model, sample):
    session = new_session(model, sample, steps=STEPS).run()
    assert session.update(latent_norm_steps=2) == 1  # the plans from step 1 on
    assert not session.needs_inversion and session.step_index == 1
    session.run()
    assert session.update(later_start=0.5) == 0 and session.needs_inversion  # new inversions and start latent
    session.run()
    fresh = new_session(model, sample, steps=STEPS, latent_norm_steps=2, later_start=0.5, engine=session.engine).run()
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_tale_preset_runs_in_half_precision(sample, dtype):
    model = tiny_model("sd2", dtype=dtype)
    config = CompositionConfig.preset("tale", steps=STEPS * 2)
    session = new_session(model, sample, **{f: getattr(config, f) for f in config.__dataclass_fields__})
    assert session.steps == 5
    assert [p.latent_norm for p in session.plans][:6] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5])
    session.run()
    x = session.records[-1].generation.x
    assert x.dtype == torch.float32 and torch.isfinite(x).all()  # the solver's latents stay float32
    assert session.result.size == (128, 128)


# ---------------------------------------------------------------------------------------------------- the preset
def test_tale_preset_maps_the_released_run_line_to_our_grid():
    """TALE's run line: --dpm_steps 20 --tprime 12 --tau 5; its ramp 0.5 / tau * j on its steps tprime + j."""
    config = CompositionConfig.preset("tale")
    settings = (config.steps, config.later_start, config.latent_norm_steps, config.latent_norm_strength)
    assert settings == (20, 0.6, 5, 0.5)
    assert start_index(config) == 12 and composition_steps(config) == 8
    weights = [p.latent_norm for p in plans_for(config)]
    assert weights == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0, 0.0, 0.0])
    # everything else is TF-ICON's
    other = {f: getattr(config, f) for f in config.__dataclass_fields__ if not f.startswith(("later", "latent"))}
    assert other == {f: getattr(CompositionConfig(), f) for f in other}
    assert CompositionConfig.preset("tale", later_start=0.5).later_start == 0.5


def test_tale_sessions_run_in_lockstep_with_official_ones(model, sample):
    """The runner advances Sessions at different grids together (the later start's rows read their own times); the
    results equal each Session's own run to float tolerance (another batch shape)."""
    from tficon.composition.engine import Engine
    from tficon.run.lockstep import run_lockstep

    engine = Engine(model)
    configs = [dict(), dict(later_start=0.5, latent_norm_steps=2), dict(later_start=0.34)]
    together = [new_session(model, sample, steps=STEPS, engine=engine, **c) for c in configs]
    run_lockstep(together, max_rows=64)
    for config, session in zip(configs, together):
        alone = new_session(model, sample, steps=STEPS, **config).run()
        assert session.done and len(session.records) == len(alone.records)
        torch.testing.assert_close(session.records[-1].generation.x, alone.records[-1].generation.x, rtol=1e-4, atol=1e-4)


def test_a_sweep_over_the_tale_settings_equals_fresh_sessions(model, sample):
    import numpy as np

    from tficon.run.sweeps import run_sweep
    from tiny_setup import SIZE

    grid = {"later_start": [0.0, 0.5], "latent_norm_steps": [0, 2]}
    result = run_sweep(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt, grid,
        image_size=SIZE, steps=STEPS, progress=False,
    )  # fmt: skip
    assert not result.failed and len(result.cells) == 4
    for cell in result.cells:
        fresh = new_session(model, sample, steps=STEPS, **cell.values).result
        assert np.array_equal(np.asarray(cell.image), np.asarray(fresh)), cell.values
        # the work each cell reports is its plans' (plus its inversions where it needed new ones)
        config = CompositionConfig(steps=STEPS, **cell.values)
        steps_work = sum(p.sample_evals for p in plans_for(config)[cell.first_step :])
        assert cell.sample_evals == steps_work + (0 if cell.inversions_cached else 2 * composition_steps(config))

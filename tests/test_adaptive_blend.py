"""SHINE-style adaptive background blending (``adaptive_blend``): the early blends follow an attention mask."""

from __future__ import annotations

import pytest
import torch

from tficon.composition.attention_masks import (
    adaptive_blend_mask,
    attention_heat,
    connected_region,
    dilate,
    largest_region,
)
from tficon.core.config import SETTINGS_BY_NAME, CompositionConfig
from tficon.core.plan import plans_for
from tiny_setup import new_session


# ---------------------------------------------------------------------------------------------------- pure parts
def test_heat_is_the_normalised_mean_of_the_finest_maps():
    fine = torch.arange(16.0).reshape(4, 4)
    coarse = torch.tensor([[100.0, 0.0], [0.0, 0.0]])
    resolution = {16: (4, 4), 4: (2, 2)}.__getitem__
    heat = attention_heat([fine.flatten(), coarse.flatten()], resolution, (4, 4))
    torch.testing.assert_close(heat, fine / 15)  # the coarse map is left out (max_factor 1)
    both = attention_heat([fine.flatten(), coarse.flatten()], resolution, (4, 4), max_factor=2)
    assert both.argmax() == 0 and float(both.max()) == 1.0 and float(both.min()) == 0.0
    assert attention_heat([], resolution, (4, 4)) is None
    assert attention_heat([torch.ones(16)], resolution, (4, 4)) is None  # flat: nothing stands out


def test_regions_and_dilation():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 0] = True
    mask[2:5, 2:4] = True  # the largest region: 6 cells
    assert torch.equal(largest_region(mask), connected_region(mask, (2, 2))) and int(largest_region(mask).sum()) == 6
    assert not largest_region(torch.zeros(3, 3, dtype=torch.bool)).any()
    grown = dilate(mask)
    assert torch.equal(grown[0:2, 0:2], torch.ones(2, 2, dtype=torch.bool)) and int(grown[1:6, 1:5].sum()) == 20
    with pytest.raises(ValueError, match="odd positive"):
        dilate(mask, 2)


def test_shine_mask_thresholds_dilates_and_keeps_the_largest_region():
    heat = torch.zeros(8, 8)
    heat[1, 1] = 1.0  # one hot cell: dilated to 3 x 3 = 9 cells
    heat[4:7, 4:7] = 0.5  # above 0.4: dilated to 5 x 5 = 25 cells, the largest region
    heat[6, 0] = 0.3  # below the threshold
    mask = adaptive_blend_mask(heat)
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[3:8, 3:8] = True
    assert torch.equal(mask, want)
    assert adaptive_blend_mask(None) is None


# ---------------------------------------------------------------------------------------------------- plans
def test_setting_and_plans():
    assert SETTINGS_BY_NAME["adaptive_blend"].switch and SETTINGS_BY_NAME["adaptive_blend_until"].sweep
    with pytest.raises(ValueError, match="adaptive_blend_until must be a finite step fraction"):
        CompositionConfig(adaptive_blend_until=1.5)
    off = plans_for(CompositionConfig(steps=10))
    assert off == plans_for(CompositionConfig(steps=10, adaptive_blend_until=0.9))  # the fraction alone: nothing
    on = plans_for(CompositionConfig(steps=10, adaptive_blend=True))
    # official blends after s = 2..6 (tau_b 0.8: int(0.8 * 10 + 1 - 2) = 7); until 0.5: int(0.5 * 10 + 1 - 2) = 4
    assert [p.s for p in off if p.blend] == [2, 3, 4, 5, 6]
    assert [p.s for p in on if p.adaptive_blend] == [2, 3] and [p.s for p in on if p.blend] == [4, 5, 6]
    for a, b in zip(off, on):
        assert (a == b) == (b.s not in (2, 3))
        assert a.advance_background == b.advance_background and a.background_row == b.background_row


# ---------------------------------------------------------------------------------------------------- a Session
STEPS = 10


def _toy_session(engine=None, **config):
    from tficon.composition.session import Session
    from tficon.model import load_model
    from tficon.toy.samples import toy_sample

    # trained: its cross-attention finds the object (a random tiny model's does not)
    model = load_model("toy") if engine is None else engine.model
    sample = toy_sample(image_size=model.image_size)
    return Session(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt, engine=engine,
        **config,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sessions():
    off = _toy_session(steps=STEPS).run()
    on = _toy_session(steps=STEPS, adaptive_blend=True, object_words="red star", engine=off.engine).run()
    return off, on


def test_off_is_bitwise(sessions):
    off, _ = sessions
    again = _toy_session(steps=STEPS, adaptive_blend_until=0.9, object_words="red star", engine=off.engine)
    assert torch.equal(again.run().latents()["generation"], off.latents()["generation"])
    assert all(r.blend_mask is None for r in off.records)


def test_outside_the_adaptive_mask_the_latent_is_the_backgrounds(sessions):
    off, on = sessions
    adaptive = [r for r in on.records if r.plan.adaptive_blend]
    assert [r.s for r in adaptive] == [2, 3]
    for record in adaptive:
        keep = record.blend_mask
        # measured: 247 and 198 of the 1024 latent cells (the box holds 169)
        assert keep is not None and keep.dtype == torch.bool and 100 < int(keep.sum()) < 400
        generation, background = record.generation.x, record.background.x
        assert torch.equal(generation[..., ~keep], background[..., ~keep])
        assert not torch.equal(generation[..., keep], background[..., keep])
    box = on._blend_mask(on.records[0].generation.x)
    assert any(not torch.equal(r.blend_mask, box) for r in adaptive)  # the mask is not the box
    for record in on.records:
        if record.plan.blend:  # the later blends: the box, as officially
            assert torch.equal(record.generation.x[..., ~box], record.background.x[..., ~box])
    # steps before the first adaptive blend are those of the official run; the first one differs
    first = adaptive[0].s
    for a, b in zip(off.records[:first], on.records[:first]):
        assert torch.equal(a.generation.x, b.generation.x)
    assert not torch.equal(off.records[first].generation.x, on.records[first].generation.x)


def test_adaptive_blend_needs_the_objects_words(model, sample):
    with pytest.raises(ValueError, match="adaptive_blend needs the object's words"):
        new_session(model, sample, steps=4, adaptive_blend=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_session_runs(sample, dtype):
    from tficon.model.tiny import tiny_model

    half = tiny_model("sd2", dtype=dtype, device="cpu")
    session = new_session(half, sample, steps=6, adaptive_blend=True, adaptive_blend_until=1.0, object_words="red star")
    records = session.run().records
    assert any(r.blend_mask is not None for r in records)
    assert torch.isfinite(records[-1].generation.x).all()

"""The stepwise Session on a tiny random SD 2.x-shaped model: start latent, plumbing, blends,
determinism, resumability, updates and failure safety."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_setup import SIZE, new_session

from tficon.composition.engine import noise_schedule
from tficon.composition.session import Session
from tficon.core import solver

STEPS = 10  # S=10, k=2: fg injection at evals 0-2, bg 0-2, blends after steps 2-6


def make(model, sample, **config):
    return new_session(model, sample, steps=config.pop("steps", STEPS), **config)


@pytest.fixture(scope="module")
def finished(model, sample):
    return make(model, sample).run()


def _box_and_object(session):
    place = session.placement
    P, Q = place.latent_target_box, place.latent_ref_box
    from tficon.core.placement import segmentation_at

    seg = torch.from_numpy(segmentation_at(session.inputs.object_mask, model_factor(session), place.geometry))[Q.slices()].bool()
    return P, Q, seg


def model_factor(session):
    return session.model.vae_scale_factor


def _draws(session, shape_latent, shape_box, mode):
    """Re-create the official draw order: bg posterior, ref posterior, N1, then (cross) N2."""
    g = torch.Generator().manual_seed(session.config.seed)
    torch.randn(shape_latent, generator=g)
    torch.randn(shape_latent, generator=g)
    n1 = torch.randn(shape_box, generator=g)
    n2 = torch.randn(shape_box, generator=g) if mode == "cross" else None
    return n1, n2


@pytest.mark.parametrize("mode", ["cross", "same"])
def test_start_latent_region_by_region(model, sample, mode):
    session = make(model, sample, mode=mode)
    start = session.compose_start()
    x_bg, x_ref = session.invert()
    P, Q, seg = _box_and_object(session)
    n1, n2 = _draws(session, tuple(x_bg.shape), (1, x_bg.shape[1], P.height, P.width), mode)
    outside = torch.ones(x_bg.shape[-2:], dtype=torch.bool)
    outside[P.slices()] = False
    assert torch.equal(start[..., outside], x_bg[..., outside])
    box = start[(..., *P.slices())]
    on, off = seg.expand_as(box[0]), ~seg.expand_as(box[0])
    if mode == "cross":
        assert torch.equal(box[0][on], x_ref[(0, slice(None), *Q.slices())][on])
        assert torch.equal(box[0][off], n2[0][off])
    else:
        assert torch.equal(box[0][on], x_bg[(0, slice(None), *P.slices())][on])
        assert torch.equal(box[0][off], n1[0][off])
    assert seg.any() and (~seg).any()


class _NoInjection(Session):
    """Plans with every injection and blend switched off (docs/algorithm.md §14 item 11)."""

    def _plans_for(self, config):
        return tuple(
            dataclasses.replace(p, fg=False, bg=False, history_blend=False, blend=False) for p in super()._plans_for(config)
        )


def _plain_cfg(session):
    model = session.model
    e_u, e_c = model.encode_prompt(""), model.encode_prompt(session.prompt)
    w = session.config.effective_guidance

    def fn(x, t):
        out = model.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([e_u, e_c])).sample
        return out[:1] + w * (out[1:] - out[:1])

    with torch.no_grad():
        return solver.sample(fn, session.compose_start(), noise_schedule(model), session.steps, session.config.order)


def test_plumbing_everything_off_equals_plain_cfg_sampling(model, sample, finished):
    off = _NoInjection(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                       image_size=SIZE, steps=STEPS).run()
    plain = _plain_cfg(off)
    # batch-size-dependent kernel rounding, amplified by guidance 5, is the only difference
    torch.testing.assert_close(off.records[-1].generation.x, plain, atol=3e-4, rtol=1e-3)
    # the official flags with tau_a = 0 still inject during the warm-up, so they do not give plain sampling
    tau0 = make(model, sample, tau_a=0.0, tau_b=0.0).run()
    assert (tau0.records[-1].generation.x - plain).abs().max() > 1e-3


def test_blend_invariants(model, sample, finished):
    P = finished.placement.latent_target_box
    outside = torch.ones(finished.records[0].generation.x.shape[-2:], dtype=torch.bool)
    outside[P.slices()] = False
    blended = [r for r in finished.records if r.plan.blend]
    assert blended
    for record in blended:
        assert torch.equal(record.generation.x[..., outside], record.background.x[..., outside])
    for record in finished.records:
        if not record.plan.blend and record.s > 0 and record.background.index == record.s:
            assert not torch.equal(record.generation.x[..., outside], record.background.x[..., outside])
    # with tau_b >= (S + k) / S every step blends: the result outside the box is the background branch's reconstruction
    full = make(model, sample, tau_b=(STEPS + 2) / STEPS + 0.05).run()
    final = full.records[-1]
    assert final.background.index == STEPS
    assert torch.equal(final.generation.x[..., outside], final.background.x[..., outside])
    x_bg, _ = full.invert()
    e_star = model.exceptional_embedding()
    with torch.no_grad():
        recon = solver.sample(
            lambda x, t: model.unet(x, t, encoder_hidden_states=e_star).sample, x_bg, noise_schedule(model), STEPS, 2
        )
    torch.testing.assert_close(final.generation.x[..., outside], recon[..., outside], atol=1e-4, rtol=1e-4)


def test_same_seed_is_bitwise_repeatable_and_seed_matters(model, sample, finished):
    again = make(model, sample).run()
    assert torch.equal(again.records[-1].generation.x, finished.records[-1].generation.x)
    other = make(model, sample, seed=1).run()
    assert not torch.equal(other.records[-1].generation.x, finished.records[-1].generation.x)


def test_rewind_and_rerun_is_bitwise_identical_and_recomputes_only_the_suffix(model, sample, finished):
    session = make(model, sample).run()
    calls_before = dict(session.stats)
    session.rewind(4)
    assert session.step_index == 4
    session.run()
    assert torch.equal(session.records[-1].generation.x, finished.records[-1].generation.x)
    suffix = session.plans[4:]
    assert session.stats["sample_evals"] - calls_before["sample_evals"] == sum(p.sample_evals for p in suffix)
    assert session.stats["unet_calls"] - calls_before["unet_calls"] == sum(p.unet_calls for p in suffix)


@pytest.mark.parametrize(
    "changes",
    [dict(tau_b=0.95), dict(tau_a=0.6), dict(tau_bg=0.6), dict(guidance=3.0), dict(prompt="a red star, outline style"),
     dict(align_warmup=True), dict(no_cross_lag=True)],
)
def test_update_then_run_equals_fresh_session_and_reuses_the_prefix(model, sample, finished, changes):
    session = make(model, sample).run()
    before = dict(session.stats)
    first = session.update(**changes)
    assert first is not None and session.step_index == first
    session.run()
    prompt = changes.pop("prompt", sample.prompt)
    fresh = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, prompt,
                    image_size=SIZE, steps=STEPS, **changes).run()
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)
    # only the divergent suffix was evaluated: no inversion, no earlier step
    assert session.stats["sample_evals"] - before["sample_evals"] == sum(p.sample_evals for p in session.plans[first:])
    if "tau_a" in changes or "tau_b" in changes:
        assert first > 0


def test_update_without_effect_returns_none(model, sample):
    session = make(model, sample).run()
    assert session.update(tau_a=0.4) is None
    assert session.done


def test_box_move_in_cross_mode_keeps_both_inversions(model, sample):
    session = make(model, sample).run()
    x, y, w, h = sample.box
    assert session.update(mask_or_box=(x - 16, y + 8, w, h)) == 0
    session.invert()
    assert session.timings["invert_cached"] == (True, True)
    session.update(seed=5)
    session.invert()
    assert session.timings["invert_cached"] == (False, False)  # new posterior samples


class _Boom(RuntimeError):
    pass


def _arm(unet, after_calls, error=_Boom):
    """A forward pre-hook on one inner block that raises after ``after_calls`` UNet forwards."""
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise error("injected failure")

    return unet.mid_block.register_forward_pre_hook(hook)


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
def test_a_failing_step_leaves_the_session_unchanged(model, sample, finished, error):
    session = make(model, sample)
    session.run(until=3)
    snapshot = (session.step_index, session.records[-1].generation.x.clone(), dict(session.stats))
    processors = dict(model.unet.attn_processors)
    handle = _arm(model.unet, 0, error)
    try:
        with pytest.raises(error):
            session.step()
    finally:
        handle.remove()
    assert session.step_index == snapshot[0]
    assert torch.equal(session.records[-1].generation.x, snapshot[1])
    assert all(model.unet.attn_processors[n] is p for n, p in processors.items())
    session.run()
    assert torch.equal(session.records[-1].generation.x, finished.records[-1].generation.x)


def test_inspection_latents_previews_and_attention(model, sample, finished):
    latents = finished.latents(2)
    assert set(latents) == {"generation", "background", "reference"}
    x0 = finished.x0(2)
    assert set(x0) == {"generation", "background", "reference"} and x0["generation"].shape == latents["generation"].shape
    before = dict(finished.stats)
    maps = finished.capture_attention(2, max_tokens=64)
    assert finished.stats == before
    layers = finished.attention_layers
    assert {layer for layer, _ in maps} == set(layers)
    assert {kind for _, kind in maps} == {"composite", "background", "reference", "pseudo_cross", "generation"}
    assert all(m.shape[0] <= 64 for m in maps.values())
    # at step 2 injection is on: the composite differs from the generation branch's own attention at some layer
    assert any(not torch.allclose(maps[(l, "composite")], maps[(l, "generation")]) for l in layers)
    late = finished.capture_attention(STEPS - 1, kinds=("composite", "generation"))
    assert all(torch.equal(late[(l, "composite")], late[(l, "generation")]) for l in layers)


def test_input_errors_name_the_argument(model, sample):
    with pytest.raises(ValueError, match="mode"):
        make(model, sample, mode="sideways")
    with pytest.raises(ValueError, match="order"):
        make(model, sample, order=4)
    with pytest.raises(TypeError, match="unknown config field"):
        make(model, sample, tau_z=0.3)  # (tau_c is a setting since issue 22)
    with pytest.raises(ValueError, match="box"):
        make(model, sample).update(mask_or_box=(100, 100, 60, 60))
    with pytest.raises(ValueError, match="prompt"):
        make(model, sample).update(prompt=" ".join(["red star"] * 60))


def test_summary_is_json_ready(finished):
    import json

    data = json.loads(json.dumps(finished.summary()))
    assert data["sample_evals"] >= sum(p.sample_evals for p in finished.plans)  # inversions may be cached
    assert data["config"]["tau_a"] == 0.4 and data["guidance"] == 5.0


def test_update_object_mask_keeps_inversions_in_cross_mode_and_matches_fresh(model, sample):
    import numpy as np

    session = make(model, sample).run()
    mask = np.array(sample.foreground_mask)
    mask[: mask.shape[0] // 2] = 0  # paint out the top half of the object
    assert session.update(foreground_mask=mask) == 0
    session.run()
    assert session.timings["invert_cached"] == (True, True)
    fresh = Session(model, sample.background, sample.foreground, mask, sample.box, sample.prompt,
                    image_size=SIZE, steps=STEPS).run()
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)
    with pytest.raises(ValueError, match="foreground_mask"):
        session.update(foreground_mask=np.zeros_like(mask))
    assert session.done  # the failed update changed nothing


def test_attention_capture_respects_its_memory_budget(finished):
    everything = finished.capture_attention(2, max_tokens=64)
    one_map = next(iter(everything.values()))
    budget = 3 * one_map.numel() * one_map.element_size()
    with pytest.warns(UserWarning, match="left out to stay within max_bytes"):
        bounded = finished.capture_attention(2, max_tokens=64, max_bytes=budget)
    assert 0 < len(bounded) < len(everything)
    assert sum(m.numel() * m.element_size() for m in bounded.values()) <= budget
    for key, value in bounded.items():
        assert torch.equal(value, everything[key])


def test_the_toy_model_says_once_that_it_knows_only_its_world(monkeypatch):
    """A prompt outside the toy world runs (CLIP's tokenizer takes it) and gets one plain notice per process."""
    import warnings

    from tficon.composition import inputs as inputs_module
    from tficon.model import load_model
    from tficon.toy.samples import demo_sample

    monkeypatch.setitem(inputs_module._TOY_WORLD_NOTICE, "given", False)
    model, s = load_model("toy"), demo_sample()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Session(model, s.background, s.foreground, s.foreground_mask, s.box, s.prompt)  # a toy-world prompt: silent
        assert not [w for w in caught if "toy world" in str(w.message)]
        for prompt in ("a professional photograph of a red star in a meadow", "a photo of a cat"):
            Session(model, s.background, s.foreground, s.foreground_mask, s.box, prompt)
    notices = [str(w.message) for w in caught if "toy world" in str(w.message)]
    assert len(notices) == 1 and "'meadow'" in notices[0] and "'photograph'" in notices[0], notices
    # The notice follows the model's vocabulary: the toy model carries its caption words, Stable Diffusion none.
    assert {"red", "star", "striped", "style"} <= model.vocabulary and "meadow" not in model.vocabulary
    from tficon.model.tiny import tiny_model

    assert tiny_model().vocabulary is None

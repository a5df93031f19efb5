"""Strategy "tigic" (issue 22): the batched Session against the sequential oracle of TIGIC's released code
(tests/tigic_reference.py), the fused logit mix against its materialised form, its plans, its blend window, its
settings, and the default left bitwise unchanged."""

from __future__ import annotations

import pytest
import torch
from tigic_reference import tigic_composition
from tiny_setup import SIZE, new_session

from tficon.composition.attention import (
    BatchLayout,
    CompositeSelfAttention,
    InjectionController,
)
from tficon.composition.processor_steps import split_heads
from tficon.composition.session import Session
from tficon.composition.tigic_attention import fused_mixed_attention, mixed_logits
from tficon.core import placement as placement_mod
from tficon.core.config import CompositionConfig
from tficon.core.plan import plans_for
from tficon.core.presets import presets
from tficon.core.tigic import mixing_weights, tigic_changes
from tficon.model.tiny import tiny_model
from tficon.toy.samples import toy_sample


def _reference(session):
    m, c, place = session.model, session.config, session.placement
    z_collage, z_ref, rng_state = session._encode()
    generator = torch.Generator()
    generator.set_state(rng_state)
    target = place.latent_target_box
    shape = (1, z_collage.shape[1], target.height, target.width)
    noises = tuple(torch.randn(shape, generator=generator) for _ in range(2))
    seg = placement_mod.segmentation_at(session.inputs.object_mask, m.vae_scale_factor, place.geometry)
    seg = torch.as_tensor(seg[place.latent_ref_box.slices()].copy(), dtype=torch.float32)
    with torch.no_grad():
        return tigic_composition(
            m.unet, session.schedule, z_collage=z_collage, z_ref=z_ref, e_empty=m.encode_prompt(""),
            e_prompt=m.encode_prompt(session.prompt), noises=noises, param_box=target, ref_box=place.latent_ref_box,
            seg=seg, steps=c.steps, order=c.order, guidance=c.effective_guidance, prediction_type=m.prediction_type,
        )  # fmt: skip


def _close(a, b, scale, what):
    # Float rounding only: the oracle materialises every logit in float32 and evaluates orig / ref as CFG pairs, the
    # Session fuses the mixes and batches all rows of a step; a dropped detail moves the latents by > 1e-2 of the scale.
    err = (a - b).abs().max()
    assert err <= 5e-5 * scale + 1e-5, f"{what}: {err:.3g} (scale {scale:.3g})"


def _session(model, steps, box=None, image_size=SIZE, **settings):
    sample = toy_sample(image_size=image_size)
    return Session(model, sample.background, sample.foreground, sample.foreground_mask, box or sample.box,
                   sample.prompt, image_size=image_size, steps=steps, strategy="tigic", **settings)  # fmt: skip


def _check_against_oracle(session, what):
    want = _reference(session)
    scale = want["final"].abs().max()
    for name, a, b in zip(("collage", "reference"), session.invert(), want["inverted"]):
        _close(a, b, scale, f"{what}: {name} inversion")
    _close(session.compose_start(), want["start"], scale, f"{what}: start latent")
    got = [r.generation.x for r in session.records]
    assert len(got) == len(want["gen"]) == session.steps + 1
    for s, (a, b) in enumerate(zip(got, want["gen"])):
        _close(a, b, scale, f"{what}: step {s}")
    for s, record in enumerate(session.records):  # the background and reference branches where they are
        _close(record.background.x, want["orig"][record.background.index], scale, f"{what}: orig at step {s}")
        _close(record.reference.x, want["ref"][record.reference.index], scale, f"{what}: ref at step {s}")
    return want


CASES = {
    "s10-k2": dict(),  # ref mix at s = 0, 1 and 1..4 (threshold(0.2) = 1, threshold(0.5) = 4), bg mix s = 2, 3
    "s20-k2": dict(steps=20),  # the released run: ref mix 0, 1, 3..9; bg mix 2..8; blend 2..18
    "order-3": dict(order=3),
    "order-1": dict(order=1),
    "off-centre-box": dict(box=(8, 64, 40, 40)),
}


@pytest.mark.parametrize("case", CASES)
def test_session_matches_the_sequential_released_structure(model, case):
    settings = dict(CASES[case])
    steps = settings.pop("steps", 10)
    session = _session(model, steps, **settings).run()
    want = _check_against_oracle(session, case)
    # the oracle's gen evaluations mixed exactly where the plans say, and only in the decoder's self-attention
    plans = session.plans
    mixes = [(j, ref, bg) for j, ref, bg, _ in want["trace"] if ref or bg]
    assert mixes == [(p.s, p.mix_reference, p.mix_background) for p in plans if p.mix_reference or p.mix_background]
    decoder = {name for name in session.engine.attention_layers if name.startswith("up_blocks")}
    assert all(set(layers) == decoder for _, ref, bg, layers in want["trace"] if ref or bg)
    # the composition differs from the inverted collage's reconstruction and from the start
    assert (want["final"] - want["orig"][-1]).abs().max() > 1e-3 * want["final"].abs().max()


@pytest.mark.parametrize("family", ["sd1", "sd2-v"])
def test_other_families_match_the_released_structure(family):
    _check_against_oracle(_session(tiny_model(family), 8).run(), family)


def test_the_toy_model_matches_the_released_structure():
    from tficon.model import load_model

    model = load_model("toy")
    sample = toy_sample()
    session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                      steps=6, strategy="tigic").run()  # fmt: skip
    _check_against_oracle(session, "toy")


def test_the_oracle_sees_a_dropped_mix(model):
    """Power of the comparison: the oracle without its background mix leaves the Session's trajectory."""
    import tigic_reference

    session = _session(model, 10).run()
    original = tigic_reference.released_bound
    tigic_reference.released_bound = lambda f, steps, order: original(f, steps, order) if f != 0.5 else -10
    try:
        want = _reference(session)  # neither mix window in the main loop now
    finally:
        tigic_reference.released_bound = original
    worst = max((r.generation.x - b).abs().max() for r, b in zip(session.records, want["gen"]))
    assert worst > 1e-3 * want["final"].abs().max()


def test_plans_follow_the_released_bounds():
    plans = plans_for(CompositionConfig(strategy="tigic", tau_a=0.9, tau_b=0.1))  # S = 20, k = 2; taus ignored
    assert [p.s for p in plans if p.mix_reference] == [0, 1, *range(3, 10)]
    assert [p.s for p in plans if p.mix_background] == list(range(2, 9))
    assert [p.s for p in plans if p.blend] == list(range(2, 19))
    assert [p.s for p in plans if p.inject_layers == "decoder"] == list(range(0, 10))
    assert plans[0].pre_evals == (0,) and all(not p.pre_evals for p in plans[1:])
    assert all(p.prompted_branches and not (p.fg or p.bg or p.pseudo_cross_row or p.history_blend) for p in plans)
    assert [p.s for p in plans if p.background_row] == [0, *range(2, 20)]
    assert sum(p.sample_evals for p in plans) == 2 + 4 + 3 + 18 * 4  # three branches on every main-loop step
    assert plans == plans_for(CompositionConfig(strategy="tigic"))
    assert not any(p.prompted_branches or p.mix_background or p.mix_reference for p in plans_for(CompositionConfig()))


def test_blend_window_keeps_the_background_branch_outside_the_box(model):
    session = _session(model, 10).run()  # blend at s = 2..8 (threshold(1.0) = 9)
    inside = torch.zeros(session.records[0].generation.x.shape[-2:], dtype=torch.bool)
    rows, cols = session.placement.latent_target_box.slices()
    inside[rows, cols] = True
    assert [p.s for p in session.plans if p.blend] == list(range(2, 9))
    for record in session.records:
        x, background = record.generation.x, record.background.x
        if record.plan.blend:
            assert record.background.index == record.s
            assert torch.equal(x[..., ~inside], background[..., ~inside])
            assert not torch.equal(x[..., inside], background[..., inside])
    last = session.records[-2]  # step 9: evaluated, not blended
    assert not last.plan.blend and not torch.equal(last.generation.x[..., ~inside], last.background.x[..., ~inside])


def _attention_module(dim=32, heads=2):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads)


@pytest.mark.parametrize("bg,ref", [(True, False), (False, True), (True, True)])
def test_fused_mix_equals_the_materialised_logits(bg, ref):
    torch.manual_seed(1)
    query, key, value = (torch.randn(5, 2, 64, 16) for _ in range(3))
    rows, weights, scale = (4, 0, 1), mixing_weights(bg, ref), 16**-0.5
    want = torch.softmax(mixed_logits(query, key, rows=rows, weights=weights, scale=scale), -1) @ value[4]
    got = fused_mixed_attention(query, key, value, rows=rows, weights=weights, scale=scale)
    assert torch.allclose(got, want, atol=2e-6)
    a, b, c = weights
    direct = a * query[4] @ key[4].mT + b * query[0] @ key[0].mT + c * query[1] @ key[1].mT
    assert torch.allclose(mixed_logits(query, key, rows=rows, weights=weights, scale=scale), direct * scale, atol=1e-5)
    for dtype in (torch.float16, torch.bfloat16):  # half precision: close to the float32 transcription, finite
        half = fused_mixed_attention(query.to(dtype), key.to(dtype), value.to(dtype), rows=rows, weights=weights,
                                     scale=scale)  # fmt: skip
        assert half.dtype == dtype and (half.float() - want).abs().max() < 0.05


def test_mixing_weights_follow_the_released_order():
    assert mixing_weights(False, False) == (1.0, 0.0, 0.0)
    assert mixing_weights(True, False) == (0.5, 0.5, 0.0)
    assert mixing_weights(False, True) == (0.5, 0.0, 0.5)
    assert mixing_weights(True, True) == (0.25, 0.25, 0.5)


def test_only_decoder_layers_mix():
    """With a mixing layout the processor of an encoder layer returns exactly the plain processor's output; the
    decoder layer's conditional row is the mixed attention and its other rows stay plain."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = _attention_module()
    hidden = torch.randn(4, 64, 32)  # rows: background, reference, uncond, cond
    controller = InjectionController(latent_size=(8, 8), region_fn=lambda h, w: None)
    layout = BatchLayout(background=0, reference=1, uncond=2, cond=3, mix_background=True, mix_reference=True,
                         inject_layers=frozenset({"up_blocks.1.attentions.0.transformer_blocks.0.attn1"}))  # fmt: skip
    controller.layout = layout
    plain = AttnProcessor2_0()(attn, hidden)
    with torch.no_grad():
        encoder = CompositeSelfAttention(controller, "down_blocks.0.attentions.0.transformer_blocks.0.attn1")
        assert torch.equal(encoder(attn, hidden), plain)
        decoder = CompositeSelfAttention(controller, "up_blocks.1.attentions.0.transformer_blocks.0.attn1")
        mixed = decoder(attn, hidden)
    assert torch.equal(mixed[:3], plain[:3])
    q, k, v = (split_heads(attn, proj(hidden)) for proj in (attn.to_q, attn.to_k, attn.to_v))
    logits = mixed_logits(q, k, rows=(3, 0, 1), weights=(0.25, 0.25, 0.5), scale=attn.scale)
    want = (torch.softmax(logits, -1) @ v[3]).transpose(0, 1).reshape(64, 32)
    want = attn.to_out[1](attn.to_out[0](want))
    assert torch.allclose(mixed[3], want, atol=1e-5) and not torch.allclose(mixed[3], plain[3], atol=1e-3)
    with pytest.raises(ValueError, match="reference logit mix needs"):
        BatchLayout(background=0, uncond=2, cond=3, mix_reference=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_runs_stay_finite_and_close(dtype, sample):
    full = new_session(tiny_model("sd2"), sample, steps=6, strategy="tigic").run()
    half = new_session(tiny_model("sd2", dtype=dtype), sample, steps=6, strategy="tigic").run()
    final = half.records[-1].generation.x
    assert final.dtype == torch.float32 and bool(torch.isfinite(final).all())
    assert bool(torch.isfinite(half.decode()).all())
    ref = full.records[-1].generation.x
    assert (final - ref).abs().max() < 0.25 * ref.abs().max()


def test_config_preset_and_refusals():
    config = CompositionConfig.preset("tigic")
    assert config.strategy == "tigic" and config.effective_guidance == 3.5
    assert CompositionConfig(strategy="tigic", mode="same").effective_guidance == 3.5
    assert CompositionConfig().replace(**tigic_changes()).seed == 42
    assert "zrealli/TIGIC" in presets()["tigic"].source
    for change in (dict(later_start=0.5), dict(latent_norm_steps=2), dict(adaptive_blend=True),
                   dict(region_cross_attention=True), dict(inject_layers="decoder")):  # fmt: skip
        name = next(iter(change))
        with pytest.raises(ValueError, match=f"strategy='tigic'.*{name}"):
            CompositionConfig(strategy="tigic", **change)


def test_inversions_follow_the_prompt_and_the_default_stays_bitwise(model, sample):
    default = new_session(model, sample, steps=6).run()
    explicit = new_session(model, sample, steps=6, strategy="tf-icon").run()
    for a, b in zip(default.records, explicit.records):
        assert torch.equal(a.generation.x, b.generation.x)
    tigic = new_session(model, sample, steps=6, strategy="tigic").run()
    # the collage (not the background) inverted with '', the reference with the prompt
    assert not torch.equal(tigic.invert()[0], default.invert()[0])
    # switching strategy re-encodes and re-inverts; switching back gives the default bitwise again
    assert default.update(strategy="tigic") == 0
    default.run()
    assert torch.equal(default.records[-1].generation.x, tigic.records[-1].generation.x)
    default.update(strategy="tf-icon")
    assert torch.equal(default.run().records[-1].generation.x, explicit.records[-1].generation.x)
    # under tigic a prompt change re-inverts the reference
    x_ref = tigic.invert()[1]
    assert tigic.update(prompt="a red star") == 0
    assert not torch.equal(tigic.invert()[1], x_ref)


def test_sdxl_shaped_models_run_the_strategy(sample):
    session = new_session(tiny_model("sdxl"), sample, steps=8, strategy="tigic").run()  # bg mix at s = 2
    assert any(p.mix_background for p in session.plans)
    assert bool(torch.isfinite(session.records[-1].generation.x).all())


def test_attention_capture_shows_the_mixed_map_in_the_decoder_only(model):
    """The "composite" capture of a mixing step is softmax of the mixed logits in decoder layers and the plain map
    elsewhere; the capture does not change the step's result."""
    session = _session(model, 10).run()
    maps = session.capture_attention(2, kinds=("composite", "generation", "background", "reference"))
    decoder = session.engine.injected_layers("decoder")
    for layer in session.attention_layers:
        composite, own = maps[(layer, "composite")], maps[(layer, "generation")]
        assert torch.allclose(composite.sum(-1), torch.ones(composite.shape[0]), atol=1e-4)
        if layer in decoder:
            assert not torch.allclose(composite, own, atol=1e-4), layer
        else:
            assert torch.equal(composite, own), layer
    again = session._compute_step(2)
    assert torch.equal(again.generation.x, session.records[2].generation.x)


def test_lockstep_runs_tigic_sessions_together(model):
    """Several tigic Sessions in one UNet call per round (tficon.composition.runner) equal their runs alone to float
    tolerance; each cell mixes its own rows."""
    from tficon.composition.runner import Task, run_tasks

    boxes = [None, (8, 64, 40, 40)]
    together = [_session(model, 8, box=box) for box in boxes]
    run_tasks([Task(session=s) for s in together], max_rows=12)
    for box, session in zip(boxes, together):
        want = _session(model, 8, box=box).run().records[-1].generation.x
        _close(session.records[-1].generation.x, want, want.abs().max(), f"box {box}")


def test_the_command_line_composes_the_preset(tmp_path):
    """``tficon demo --preset tigic`` composes with the strategy; a refused mechanism is reported, not run."""
    from tficon.cli import main

    out = tmp_path / "tigic.png"
    assert main(["demo", "--preset", "tigic", "--steps", "4", "--quiet", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["demo", "--preset", "tigic", "--inject-layers", "decoder", "--steps", "4", "--quiet",
                 "--out", str(tmp_path / "x.png")]) == 2  # fmt: skip

"""Strategy "primecomposer" (issue 22): the batched Session against the sequential oracle of PrimeComposer's released
code (tests/primecomposer_reference.py), its plans, its phase invariants, and the default left bitwise unchanged."""

from __future__ import annotations

import pytest
import torch
from primecomposer_reference import primecomposer_composition, released_inversion_list
from tiny_setup import SIZE, new_session

from tficon.composition.attention import BatchLayout, composite_logits, fused_composite_attention
from tficon.composition.session import Session
from tficon.core import placement as placement_mod
from tficon.core.config import CompositionConfig
from tficon.core.plan import plans_for
from tficon.core.primecomposer import primecomposer_changes
from tficon.model.tiny import tiny_model
from tficon.toy.samples import toy_sample


def _regions(session):
    lh, lw = session.model.latent_shape(session.image_size)
    levels = len(session.model.unet.config.block_out_channels)
    inputs = session.inputs
    return {
        (lh >> k, lw >> k): placement_mod.region_indices(inputs.placement, inputs.object_mask, lh >> k, lw >> k)
        for k in range(levels)
    }


def _reference(session):
    m, c, place = session.model, session.config, session.placement
    z_bg, z_ref = session.encoded_latents()
    seg = placement_mod.segmentation_at(session.inputs.object_mask, m.vae_scale_factor, place.geometry)
    seg = torch.as_tensor(seg[place.latent_ref_box.slices()].copy(), dtype=torch.float32)
    with torch.no_grad():
        return primecomposer_composition(
            m.unet, session.schedule, z_bg=z_bg, z_ref=z_ref, start=session.compose_start(),
            e_star=m.exceptional_embedding(), e_uncond=m.encode_prompt(""), e_cond=m.encode_prompt(session.prompt),
            regions=_regions(session), param_box=place.latent_target_box, ref_box=place.latent_ref_box, seg=seg,
            steps=c.steps, order=c.order, guidance=c.effective_guidance, tau_a=c.tau_a, tau_b=c.tau_b, tau_c=c.tau_c,
            prediction_type=m.prediction_type,
        )  # fmt: skip


def _close(a, b, scale, what):
    # Float rounding only: the oracle inverts each image alone (a batch of one), the Session both together, and
    # kernels round differently per batch shape; the inversion and ten steps amplify that to a few 1e-5 of the
    # latent's scale (measured up to 1.5e-5), while every dropped detail moves the latents by more than 1e-2 of it.
    err = (a - b).abs().max()
    assert err <= 5e-5 * scale + 1e-5, f"{what}: {err:.3g} (scale {scale:.3g})"


def _session(model, steps, box=None, image_size=SIZE, **settings):
    sample = toy_sample(image_size=image_size)
    return Session(model, sample.background, sample.foreground, sample.foreground_mask, box or sample.box,
                   sample.prompt, image_size=image_size, steps=steps, strategy="primecomposer", **settings)  # fmt: skip


CASES = {
    # S = 10, k = 2, defaults: injection at s = 0..2, no hold (int(0.2 * 10 - 1) = 1), background blend s = 2..6
    "default-taus": dict(),
    "long-phases": dict(tau_a=0.6, tau_c=0.5, tau_b=0.7),  # inject s <= 4, hold s = 2, 3, blend s = 4, 5
    "tau-c-past-tau-a": dict(tau_a=0.4, tau_c=0.6),  # paste at s = 2 only; the hold at s = 3, 4 reads unedited entries
    "tau-b-past-the-end": dict(tau_b=1.5, tau_a=0.5, tau_c=0.4),  # the blends read the lists' data-prediction entries
    "order-3": dict(order=3, tau_a=0.7, tau_c=0.6),
    "order-1-same": dict(order=1, mode="same", tau_a=0.5, tau_c=0.3),
    "off-centre-box": dict(box=(8, 64, 40, 40), tau_a=0.6, tau_c=0.5),
    # S < 2k - 1: the warm-up history blend itself reads the lists' data-prediction entries
    # (no main-loop injection or hold fits: int(1.0 * 4 + 1 - 3) = 2 < k)
    "few-steps-order-3": dict(steps=4, order=3, tau_b=2.0),
}


@pytest.mark.parametrize("case", CASES)
def test_session_matches_the_sequential_released_structure(model, case):
    settings = dict(CASES[case])
    steps = settings.pop("steps", 10)
    session = _session(model, steps, **settings).run()
    if case not in ("default-taus", "few-steps-order-3"):
        assert any(p.hold_object for p in session.plans) and any(p.paste_on_reference for p in session.plans)
    want = _reference(session)
    scale = want["final"].abs().max()
    got = [r.generation.x for r in session.records]
    assert len(got) == len(want["gen"]) == steps + 1
    for s, (a, b) in enumerate(zip(got, want["gen"])):
        _close(a, b, scale, f"step {s}")
    # the kept inversion records are the released lists (the reference list as edited by the correlation diffuser)
    background, reference = session.inversion_records()
    for s, (a, b) in enumerate(zip(background[1:], want["orig_inv_list"][1:]), start=1):
        _close(a, b, scale, f"background record {s}")
    for s, (a, b) in enumerate(zip(session.records[-1].reference_latents, want["ref_inv_list"])):
        _close(a, b, scale, f"reference canvas {s}")
    # the composition is neither the start latent nor the inverted background's record
    assert (want["final"] - background[-1]).abs().max() > 1e-2 * scale
    # the oracle ran the cross pass at every injected step, and gen's injection follows the plans
    injected = [step[1] for step in want["trace"] if step[0] == "gen" and step[2]]
    assert injected == [p.s for p in session.plans if p.fg]


@pytest.mark.parametrize("family", ["sd1", "sd2-v"])
def test_other_families_match_the_released_structure(family):
    model = tiny_model(family)
    session = _session(model, 8, tau_a=0.6, tau_c=0.5).run()
    want = _reference(session)
    _close(session.records[-1].generation.x, want["final"], want["final"].abs().max(), family)


def test_the_toy_model_matches_the_released_structure():
    from tficon.model import load_model

    model = load_model("toy")
    sample = toy_sample()
    session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                      steps=6, strategy="primecomposer", tau_a=0.7, tau_c=0.7).run()  # fmt: skip
    want = _reference(session)
    scale = want["final"].abs().max()
    for s, (a, b) in enumerate(zip([r.generation.x for r in session.records], want["gen"])):
        _close(a, b, scale, f"toy step {s}")


def test_the_oracle_sees_a_dropped_detail(model):
    """Power of the comparison: a Session without the object hold leaves the oracle's trajectory."""
    session = _session(model, 10, tau_a=0.6, tau_c=0.5).run()
    want = _reference(session)
    other = _session(model, 10, tau_a=0.6, tau_c=0.0).run()
    worst = max((r.generation.x - b).abs().max() for r, b in zip(other.records, want["gen"]))
    assert worst > 1e-2 * want["final"].abs().max()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_runs_stay_finite_and_close(dtype, sample):
    full = new_session(tiny_model("sd2"), sample, steps=6, strategy="primecomposer", tau_a=0.7, tau_c=0.7).run()
    half = new_session(tiny_model("sd2", dtype=dtype), sample, steps=6, strategy="primecomposer", tau_a=0.7,
                       tau_c=0.7).run()  # fmt: skip
    final = half.records[-1].generation.x
    assert final.dtype == torch.float32 and bool(torch.isfinite(final).all())
    assert bool(torch.isfinite(half.decode()).all())
    ref = full.records[-1].generation.x
    assert (final - ref).abs().max() < 0.25 * ref.abs().max()


def test_phase_invariants(model):
    """Object hold: the object keeps its post-warm-up latent and the rest is the inverted background's record; then
    the latent outside the box is the background record until tau_b; afterwards free."""
    session = _session(model, 20, tau_a=0.5, tau_c=0.4).run()  # hold s = 2..6, blend s = 7..14
    k = session.config.order
    plans = session.plans
    assert [p.s for p in plans if p.hold_object] == [2, 3, 4, 5, 6]
    assert [p.s for p in plans if p.kept_blend] == list(range(7, 15))
    background, _ = session.inversion_records()
    place = session.placement
    rows, cols = place.latent_target_box.slices()
    seg = placement_mod.segmentation_at(session.inputs.object_mask, session.model.vae_scale_factor, place.geometry)
    on_object = torch.as_tensor(seg[place.latent_ref_box.slices()].copy()) > 0.5
    inside = torch.zeros(background[0].shape[-2:], dtype=torch.bool)
    inside[rows, cols] = True
    object_mask = torch.zeros_like(inside)
    object_mask[rows, cols] = on_object
    after_warm_up = session.records[k - 1].generation.x
    for plan in plans:
        x = session.records[plan.s].generation.x
        if plan.hold_object:
            assert torch.equal(x[..., object_mask], after_warm_up[..., object_mask])
            assert torch.equal(x[..., ~object_mask], background[plan.s][..., ~object_mask])
        if plan.kept_blend:
            assert torch.equal(x[..., ~inside], background[plan.s][..., ~inside])
            assert not torch.equal(x[..., object_mask], after_warm_up[..., object_mask])
    last = session.records[-1].generation.x
    assert not torch.equal(last[..., ~inside], background[-1][..., ~inside])


def test_plans_follow_the_released_bounds():
    plans = plans_for(CompositionConfig(strategy="primecomposer"))  # S = 20, k = 2, tau 0.4 / 0.8 / 0.2
    assert [p.s for p in plans if p.fg] == list(range(0, 7))
    assert [p.s for p in plans if p.paste_on_reference] == list(range(2, 7))
    assert [p.s for p in plans if p.hold_object] == [2]
    assert [p.s for p in plans if p.kept_blend] == list(range(3, 15))
    assert [p.s for p in plans if p.kept_history_blend] == [1]
    assert [(p.map_index, p.pseudo_latent) for p in plans[:3]] == [(1, 0), (1, 0), (2, 2)]
    assert all(p.kept_inversions and not p.object_block and p.pseudo_cross_prompt for p in plans)
    assert not any(p.background_row or p.reference_row or p.bg or p.blend or p.history_blend for p in plans)
    assert sum(p.sample_evals for p in plans) == 20 * 2 + 7  # the generation's CFG rows plus 7 pseudo-cross rows
    # TF-ICON's plans carry none of the flags
    assert not any(p.kept_inversions or p.hold_object or p.kept_blend or not p.object_block
                   for p in plans_for(CompositionConfig()))  # fmt: skip


def test_config_and_preset_changes():
    config = CompositionConfig().replace(**primecomposer_changes())
    assert config.strategy == "primecomposer" and config.effective_guidance == 2.5
    assert CompositionConfig(strategy="primecomposer", mode="cross").effective_guidance == 2.5
    assert CompositionConfig().effective_guidance == 5.0 and CompositionConfig().strategy == "tf-icon"
    with pytest.raises(ValueError, match="strategy must be one of"):
        CompositionConfig(strategy="prime")
    with pytest.raises(ValueError, match="tau_c must be a finite number in"):
        CompositionConfig(tau_c=1.5)


def test_records_share_the_inversion_and_default_stays_bitwise(model, sample):
    default = new_session(model, sample, steps=6).run()
    explicit = new_session(model, sample, steps=6, strategy="tf-icon").run()
    for a, b in zip(default.records, explicit.records):
        assert torch.equal(a.generation.x, b.generation.x)
    prime = new_session(model, sample, steps=6, strategy="primecomposer")
    background, reference = prime.inversion_records()
    x_bg, x_ref = default.invert()
    assert torch.equal(background[0], x_bg) and torch.equal(reference[0], x_ref)  # one inversion, bitwise the same
    sharing = new_session(model, sample, steps=6, engine=prime.engine)  # a TF-ICON Session on the same engine
    assert torch.equal(sharing.invert()[0], x_bg) and sharing.timings["invert_cached"] == (True, True)
    # the released list order: latents at t_0..t_{S-k}, then the inversion's warm-up data predictions
    z_bg, _ = prime.encoded_latents()
    released = released_inversion_list(model.unet, prime.schedule, z_bg, model.exceptional_embedding(), 6, 2,
                                       model.prediction_type)[::-1]  # fmt: skip
    for a, b in zip(background, released):
        _close(a, b, released[0].abs().max(), "inversion record")
    # switching strategy keeps the inversions and recomputes every step
    prime.run()
    assert default.update(strategy="primecomposer") == 0
    default.run()
    assert torch.equal(default.records[-1].generation.x, prime.records[-1].generation.x)


def test_rows_and_columns_without_the_object_block():
    """The fused processor with ``object_block=False`` equals softmax of the materialised composite, and the F x F
    block then holds the column injection C(F[b], a)."""
    torch.manual_seed(0)
    batch, heads, n, d = 3, 2, 16, 8
    query, key, value = (torch.randn(batch, heads, n, d) for _ in range(3))

    class Regions:
        fg = torch.tensor([5, 6, 9])
        fg_ref = torch.tensor([1, 2, 5])

    layout = BatchLayout(pseudo_cross=0, uncond=1, cond=2, fg=True, object_block=False)
    outside = torch.ones(n, dtype=torch.bool)
    outside[[5, 6, 9, 10]] = False
    own = query[2] @ key[2].transpose(-1, -2) * d**-0.5
    logits = composite_logits(own, query=query, key=key, layout=layout, regions=Regions, outside=outside, scale=d**-0.5)
    cross = query[0] @ key[0][:, Regions.fg_ref].transpose(-1, -2) * d**-0.5
    assert torch.allclose(logits[:, Regions.fg[:, None], Regions.fg[None, :]], cross[:, Regions.fg].transpose(-1, -2))
    want = torch.softmax(logits, -1) @ value[2]
    got = fused_composite_attention(query, key, value, layout=layout, regions=Regions, outside=outside, scale=d**-0.5)
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="needs the reference"):
        BatchLayout(pseudo_cross=0, uncond=1, cond=2, fg=True)


def test_lockstep_runs_primecomposer_sessions_together(model):
    """Several primecomposer Sessions in one UNet call per round (tficon.composition.runner) equal their runs alone
    to float tolerance; each cell reads its own kept records and geometry."""
    from tficon.composition.runner import Task, run_tasks

    settings = dict(tau_a=0.6, tau_c=0.5)
    boxes = [None, (8, 64, 40, 40)]
    together = [_session(model, 8, box=box, **settings) for box in boxes]
    run_tasks([Task(session=s) for s in together], max_rows=12)
    for box, session in zip(boxes, together):
        alone = _session(model, 8, box=box, **settings).run()
        want = alone.records[-1].generation.x
        _close(session.records[-1].generation.x, want, want.abs().max(), f"box {box}")


def test_object_word_markers_are_removed_before_encoding(model, sample):
    """The released code encodes the prompt without its " <ref>" markers (they only feed its unused RCA)."""
    from tficon.core.primecomposer import released_prompt

    assert released_prompt("a painting of a <ref> red dog <ref>") == "a painting of a red dog"
    marked = new_session(model, sample, steps=4, strategy="primecomposer")
    marked.update(prompt="a blue square and a <ref> red star <ref>, outline style")
    plain = new_session(model, sample, steps=4, strategy="primecomposer")
    plain.update(prompt="a blue square and a red star, outline style")
    assert torch.equal(marked.run().records[-1].generation.x, plain.run().records[-1].generation.x)


def test_sdxl_shaped_models_run_the_strategy(sample):
    """SDXL's added time ids travel with the pseudo-cross row's prompt conditioning and the kept inversions."""
    session = new_session(tiny_model("sdxl"), sample, steps=6, strategy="primecomposer", tau_a=0.7, tau_c=0.7).run()
    plans = session.plans
    assert any(p.hold_object for p in plans) and any(p.paste_on_reference for p in plans)
    assert bool(torch.isfinite(session.records[-1].generation.x).all())


def test_region_constrained_cross_attention_finds_the_words_as_the_released_code_does():
    """primecomposer-rca takes the marked words' indices in the prompt split on whitespace as token positions
    (ldm/modules/encoders/modules.py): the tokenizer's positions while every word is one token, other tokens when an
    earlier word splits; only the first marked phrase counts."""
    from tficon.core.primecomposer import released_token_positions
    from tficon.model import load_model
    from tficon.model.token_positions import object_token_positions_of

    assert released_token_positions("a painting of a <ref> red dog <ref>") == (5, 6)
    assert released_token_positions("a <ref> red dog <ref>, outline style <ref> cat <ref>") == (2, 3)
    assert released_token_positions("a photo of a <ref>, red dog <ref>") == (5, 6)
    assert released_token_positions("no markers here") == ()
    model = load_model("toy")
    simple = "a <ref> red star <ref> and a blue square, outline style"
    assert released_token_positions(simple) == object_token_positions_of(model, simple, "", "test") == (2, 3)
    split = "a zxqvbnm <ref> red star <ref> and a blue square"  # a made-up word: several tokens
    assert object_token_positions_of(model, split, "", "test") != released_token_positions(split) == (3, 4)


def test_the_primecomposer_rca_session_reads_the_released_positions():
    from tficon.model import load_model

    model, sample = load_model("toy"), toy_sample()
    prompt = "a zxqvbnm " + sample.prompt.replace("red star", "<ref> red star <ref>")
    session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, prompt,
                      config=CompositionConfig.preset("primecomposer-rca", steps=4))  # fmt: skip
    from tficon.core.primecomposer import released_token_positions

    assert session._object_tokens(session.prompt, session.config) == released_token_positions(prompt)
    tf_icon = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, prompt,
                      region_cross_attention=True, steps=4)  # fmt: skip
    assert tf_icon._object_tokens(tf_icon.prompt, tf_icon.config) != released_token_positions(prompt)

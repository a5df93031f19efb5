"""Composite injection restricted to chosen self-attention layers (``inject_layers``, tficon.core.layers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from tficon.composition.attention import BatchLayout, CompositeSelfAttention, InjectionController
from tficon.core.config import SETTINGS_BY_NAME, CompositionConfig
from tficon.core.layers import parse_layer_spec, select_layers
from tficon.core.placement import RegionIndex
from tficon.core.plan import plans_for
from tficon.model.families import family_for
from tiny_setup import new_session

LAYERS = (
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1",
    "mid_block.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
)
PART = family_for("sd2").layer_part


# ---------------------------------------------------------------------------------------------------- pure selection
def test_parts_and_prefixes_select_the_named_layers():
    assert select_layers("all", LAYERS, PART) is None
    assert select_layers("encoder", LAYERS, PART) == frozenset(LAYERS[:2])
    assert select_layers("mid", LAYERS, PART) == frozenset(LAYERS[2:3])
    assert select_layers("decoder", LAYERS, PART) == frozenset(LAYERS[3:])
    assert select_layers("up_blocks.1.attentions.1, mid", LAYERS, PART) == frozenset({LAYERS[4], LAYERS[2]})
    assert select_layers(LAYERS[0], LAYERS, PART) == frozenset(LAYERS[:1])
    # a prefix ends at a dot: "down_blocks.1" does not pick "down_blocks.10..."
    assert select_layers("down_blocks.1", (*LAYERS, "down_blocks.10.x.attn1"), PART) == frozenset(LAYERS[1:2])


def test_unknown_layer_names_raise_listing_the_valid_ones():
    with pytest.raises(ValueError, match="'up_block' selects no self-attention layer") as error:
        select_layers("decoder,up_block", LAYERS, PART)
    assert LAYERS[3] in str(error.value) and "'decoder'" in str(error.value)


@pytest.mark.parametrize("bad", ["", " ", "decoder,", ",mid", "all,decoder", 3, None])
def test_bad_selections_are_refused_by_the_config(bad):
    with pytest.raises(ValueError, match="inject_layers"):
        CompositionConfig(inject_layers=bad)


def test_the_setting_is_declared_once_with_its_metadata():
    setting = SETTINGS_BY_NAME["inject_layers"]
    assert setting.default == "all" and setting.invalidates == "plans" and setting.sweep
    assert setting.flag == "--inject-layers"
    assert parse_layer_spec(" decoder , mid ,decoder") == "decoder,mid"


# ---------------------------------------------------------------------------------------------------- plans
def test_default_plans_are_unchanged_and_the_selection_is_decided_in_the_plan():
    default = plans_for(CompositionConfig(steps=10))
    assert all(p.inject_layers == "all" for p in default)
    decoder = plans_for(CompositionConfig(steps=10, inject_layers="decoder"))
    for a, b in zip(default, decoder):
        injected = a.fg or a.bg
        assert b.inject_layers == ("decoder" if injected else "all")
        assert (a == b) == (not injected)  # nothing else in the plan changes
    assert any(p.fg for p in decoder) and not all(p.fg or p.bg for p in decoder)


# ---------------------------------------------------------------------------------------------------- one layer
def _layer_and_inputs():
    torch.manual_seed(3)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    x = torch.randn(5, 36, 16)
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    box = [7, 8, 9, 13, 14, 15, 19, 20, 21]
    region = RegionIndex(6, 6, t(box), t([8, 14]), t([3, 4]), t([0, 1]), t([3, 4, 9, 10]))
    controller = InjectionController(latent_size=(6, 6), region_fn=lambda h, w: region)
    return attn, x, controller


@pytest.mark.parametrize("selected", [True, False])
def test_a_layer_outside_the_selection_runs_plain_attention_on_the_generation_rows(selected):
    attn, x, controller = _layer_and_inputs()
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        plain = attn(x)
        attn.set_processor(CompositeSelfAttention(controller, "up.attn1"))
        controller.layout = BatchLayout(background=0, reference=1, pseudo_cross=2, uncond=3, cond=4, fg=True, bg=True)
        everywhere = attn(x)
        chosen = frozenset({"up.attn1"} if selected else {"down.attn1"})
        controller.layout = BatchLayout(
            background=0, reference=1, pseudo_cross=2, uncond=3, cond=4, fg=True, bg=True, inject_layers=chosen
        )
        got = attn(x)
    if selected:
        assert torch.equal(got, everywhere)
    else:
        torch.testing.assert_close(got[[0, 1, 3, 4]], plain[[0, 1, 3, 4]], rtol=1e-6, atol=1e-6)
        assert (everywhere[4] - plain[4]).abs().max() > 1e-2  # the injection would have changed the cond row
        # the pseudo-cross pass is a branch of its own, not an injection: it stays restricted to its object keys
        assert torch.equal(got[2], everywhere[2])


# ---------------------------------------------------------------------------------------------------- a Session
def _outputs_of_one_step(session, layers):
    """The attn1 outputs of step 0's main call, and the stock processor's outputs for the same inputs."""
    modules = dict(session.model.unet.named_modules())
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def keep(module, args, kwargs, output):
            if output.shape[0] < 4:  # the warm-up calls hold two rows; keep the main call
                return
            mask = kwargs.get("attention_mask")
            seen[name] = (output, AttnProcessor2_0()(module, args[0], attention_mask=mask))

        return keep

    handles = [modules[name].register_forward_hook(hook(name), with_kwargs=True) for name in layers]
    try:
        plan, previous, inputs = session.step_request()
        session.engine.run_step(plan, previous, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen, session.plans[0]


def test_decoder_only_injection_leaves_encoder_and_mid_layers_plain(model, sample):
    session = new_session(model, sample, steps=4, inject_layers="decoder")
    layers = session.attention_layers
    outputs, plan = _outputs_of_one_step(session, layers)
    assert plan.fg and plan.bg and set(outputs) == set(layers)
    cond = 4  # rows: background, reference, pseudo_cross, uncond, cond
    for name, (got, stock) in outputs.items():
        if model.family_rules.layer_part(name) == "decoder":
            assert (got[cond] - stock[cond]).abs().max() > 1e-3, name
        else:
            torch.testing.assert_close(got[cond], stock[cond], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[[0, 1, 3]], stock[[0, 1, 3]], rtol=1e-5, atol=1e-5)


def test_every_layer_by_name_equals_all_bitwise_and_a_part_changes_the_result(model, sample):
    everything = new_session(model, sample, steps=4).run().latents()["generation"]
    by_parts = new_session(model, sample, steps=4, inject_layers="encoder,mid,decoder").run()
    assert torch.equal(by_parts.latents()["generation"], everything)
    decoder = new_session(model, sample, steps=4, inject_layers="decoder").run().latents()["generation"]
    assert (decoder - everything).abs().max() > 1e-4


def test_session_refuses_unknown_layers_and_update_replans(model, sample):
    with pytest.raises(ValueError, match="'up_blocks.9' selects no self-attention layer"):
        new_session(model, sample, steps=4, inject_layers="up_blocks.9")
    session = new_session(model, sample, steps=4).run()
    with pytest.raises(ValueError, match="selects no self-attention layer"):
        session.update(inject_layers="nowhere")
    assert session.config.inject_layers == "all" and session.done  # a refused update changes nothing
    assert session.update(inject_layers="decoder") == 0  # step 0 already injects
    assert session.run().done


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_with_a_selection(sample, dtype):
    from tficon.model.tiny import tiny_model

    half = tiny_model("sd2", dtype=dtype, device="cpu")
    session = new_session(half, sample, steps=3, inject_layers="decoder,mid").run()
    assert torch.isfinite(session.latents()["generation"]).all()


# ---------------------------------------------------------------------------------------------------- a sweep axis
def test_a_sweep_varies_the_selection_from_python_and_the_command_line(model, sample):
    from tficon.run.sweeps import parse_grid_option, run_sweep

    assert parse_grid_option("inject-layers=all;decoder;up_blocks.1,mid") == (
        "inject_layers", ["all", "decoder", "up_blocks.1,mid"]
    )  # fmt: skip
    result = run_sweep(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
        {"inject_layers": ["all", "decoder"]}, image_size=128, steps=3, metrics=False, progress=False,
    )  # fmt: skip
    cells = sorted(result.cells, key=lambda c: c.index)
    assert [c.config.inject_layers for c in cells] == ["all", "decoder"]
    everything = new_session(model, sample, steps=3).run()
    assert np.array_equal(np.asarray(cells[0].image), np.asarray(everything.result))
    assert not np.array_equal(np.asarray(cells[1].image), np.asarray(everything.result))

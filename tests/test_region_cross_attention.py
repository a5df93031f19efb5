"""Region-constrained cross-attention (PrimeComposer's RCA): prompt markers, token positions, the attn2 processor."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from tficon.composition.attention import BatchLayout, InjectionController
from tficon.composition.cross_attention import (
    CrossAttentionRecord,
    ObjectCrossAttention,
    cross_attention_layers,
    object_cross_attention,
    region_constrained_logits,
)
from tficon.core.config import SETTINGS_BY_NAME, CompositionConfig
from tficon.core.placement import RegionIndex
from tficon.core.plan import plans_for
from tficon.core.prompt_markers import object_spans, parse_prompt
from tficon.model.token_positions import object_token_positions, token_positions
from tiny_setup import new_session


# ---------------------------------------------------------------------------------------------------- the markers
def test_markers_are_stripped_and_the_marked_words_kept():
    marked = parse_prompt("a painting of a <ref> red dog <ref>")
    assert marked.text == "a painting of a red dog" and marked.words == ("red", "dog")
    assert [marked.text[a:b] for a, b in marked.spans] == ["red dog"]
    glued = parse_prompt("<ref>cat<ref>, and a <ref> dog <ref>.")
    assert glued.text == "cat, and a dog." and glued.words == ("cat", "dog")
    plain = "  a prompt  with no markers "
    assert parse_prompt(plain).text == plain and parse_prompt(plain).spans == ()  # unmarked prompts: untouched


@pytest.mark.parametrize("prompt", ["a <ref> red dog", "a <ref> dog <ref> and <ref> cat", "<ref>"])
def test_unbalanced_markers_raise(prompt):
    with pytest.raises(ValueError, match="unbalanced"):
        parse_prompt(prompt)


def test_empty_marked_phrase_and_missing_object_words_raise():
    with pytest.raises(ValueError, match="empty <ref> ... <ref> pair"):
        parse_prompt("a <ref> <ref> dog")
    with pytest.raises(ValueError, match="'green cat' do not occur in the prompt"):
        object_spans("a red dog", "green cat")
    found = object_spans("a Red dog and a red dogs", "red dog")  # whole words, any case
    assert [found.text[a:b] for a, b in found.spans] == ["Red dog"]
    assert object_spans("a <ref> red <ref> dog", "dog").words == ("red",)  # markers win


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_token_positions_point_at_the_words_tokens(family):
    from tficon.model.tiny import tiny_model

    model = tiny_model(family, device="cpu")
    marked = parse_prompt("a painting of a <ref> red dog <ref> at night")
    positions = object_token_positions(model, marked)
    for tokenizer in filter(None, (model.tokenizer, getattr(model, "tokenizer_2", None))):
        ids = tokenizer(marked.text)["input_ids"]
        assert tokenizer.decode([ids[p] for p in positions]).replace(" ", "") == "reddog"
        assert len(tokenizer.decode(ids[positions[0] - 1 : positions[0]]).strip()) > 0  # the word before is "a"
    # words split in several tokens: the positions cover all of them, and nothing of the words around
    many = parse_prompt("zq <ref> xylophonezz <ref> wq")
    spread = token_positions(model.tokenizer, many)
    ids = model.tokenizer(many.text)["input_ids"]
    assert len(spread) > 1 and model.tokenizer.decode([ids[p] for p in spread]).replace(" ", "") == "xylophonezz"


def test_words_past_the_encoder_window_raise():
    from tficon.model.tiny import tiny_model

    model = tiny_model("sd2", device="cpu")
    with pytest.raises(ValueError, match="past the text encoder's window"):
        token_positions(model.tokenizer, parse_prompt("a " * 80 + "<ref> dog <ref>"))


# ---------------------------------------------------------------------------------------------------- the formula
def test_constrained_logits_zero_the_words_outside_the_object_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5)
    inside = torch.tensor([True, False, True, False, False, True])
    tokens = torch.tensor([1, 3])
    got = region_constrained_logits(logits, tokens, inside)
    probs, plain = torch.softmax(got, -1), torch.softmax(logits, -1)
    assert torch.equal(probs[:, ~inside][..., tokens], torch.zeros(2, 3, 2))  # exactly 0 outside the object
    assert torch.equal(got[:, inside], logits[:, inside])  # queries inside: untouched
    others = torch.tensor([0, 2, 4])
    assert torch.equal(got[..., others], logits[..., others])  # other tokens' logits: untouched
    renormalised = plain[:, ~inside][..., others] / plain[:, ~inside][..., others].sum(-1, keepdim=True)
    torch.testing.assert_close(probs[:, ~inside][..., others], renormalised)


# ---------------------------------------------------------------------------------------------------- one layer
def _cross_layer_and_inputs(dtype=torch.float32):
    torch.manual_seed(3)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval().to(dtype)
    x, text = torch.randn(3, 36, 16, dtype=dtype), torch.randn(3, 7, 12, dtype=dtype)
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    region = RegionIndex(6, 6, t([7, 8, 13, 14]), t([8, 13, 14]), t([0, 1, 2]), t([0, 1, 2]), t([0, 1, 2]))
    controller = InjectionController(latent_size=(6, 6), region_fn=lambda h, w: region)
    inside = torch.zeros(36, dtype=torch.bool)
    inside[[8, 13, 14]] = True
    return attn, x, text, controller, inside


def test_processor_constrains_the_cond_row_only_and_equals_the_formula():
    attn, x, text, controller, inside = _cross_layer_and_inputs()
    stock = AttnProcessor2_0()
    attn.set_processor(stock)
    with torch.no_grad():
        plain = attn(x, encoder_hidden_states=text)
        attn.set_processor(ObjectCrossAttention(controller, "attn2", stock))
        assert torch.equal(attn(x, encoder_hidden_states=text), plain)  # no layout: the stock call
        controller.layout = BatchLayout(background=0, uncond=1, cond=2)  # a layout with no object tokens
        assert torch.equal(attn(x, encoder_hidden_states=text), plain)
        controller.layout = BatchLayout(background=0, uncond=1, cond=2, object_tokens=(2, 3))
        got = attn(x, encoder_hidden_states=text)
        assert torch.equal(got[:2], plain[:2])  # the background and unconditional rows: bitwise the stock's
        q = attn.to_q(x[2]).view(36, 2, 8).transpose(0, 1)
        k, v = (proj(text[2]).view(7, 2, 8).transpose(0, 1) for proj in (attn.to_k, attn.to_v))
        logits = region_constrained_logits(q @ k.transpose(-1, -2) * 8**-0.5, torch.tensor([2, 3]), inside)
        want = attn.to_out[0]((torch.softmax(logits, -1) @ v).transpose(0, 1).reshape(36, 16))
        torch.testing.assert_close(got[2], want)
        torch.testing.assert_close(got[2, inside], plain[2, inside])  # queries inside the object: unchanged
        assert (got[2, ~inside] - plain[2, ~inside]).abs().max() > 1e-3


def test_record_keeps_the_cond_rows_attention_to_the_tokens():
    attn, x, text, controller, inside = _cross_layer_and_inputs()
    record = CrossAttentionRecord(tokens=(2, 3))
    other = CrossAttentionRecord(tokens=(4,))
    attn.set_processor(ObjectCrossAttention(controller, "layer", AttnProcessor2_0()))
    controller.layout = (
        BatchLayout(uncond=0, cond=1, attention_records=(other,)),
        BatchLayout(cond=2, object_tokens=(2, 3), attention_records=(record,)),
    )  # two cells, each with its own record
    with torch.no_grad():
        attn(x, encoder_hidden_states=text)
    (kept,) = record.maps["layer"]
    assert kept.shape == (36,) and torch.equal(kept[~inside], torch.zeros(int((~inside).sum())))
    assert (kept[inside] > 0).all()
    (unconstrained,) = other.maps["layer"]  # the first cell's cond row (row 1), token 4, no constraint
    q, k = attn.to_q(x[1]).view(36, 2, 8).transpose(0, 1), attn.to_k(text[1]).view(7, 2, 8).transpose(0, 1)
    want = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, -1)[..., 4].mean(0)
    torch.testing.assert_close(unconstrained, want.detach())
    with pytest.raises(ValueError, match="at least one token"):
        CrossAttentionRecord(tokens=())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layer_stays_close_to_float32(dtype):
    attn, x, text, controller, inside = _cross_layer_and_inputs()
    layout = BatchLayout(uncond=1, cond=2, object_tokens=(2, 3))
    outputs = []
    for kind in (torch.float32, dtype):
        attn = attn.to(kind)
        attn.set_processor(ObjectCrossAttention(controller, "layer", AttnProcessor2_0()))
        controller.layout = layout
        with torch.no_grad():
            outputs.append(attn(x.to(kind), encoder_hidden_states=text.to(kind)).float())
    torch.testing.assert_close(outputs[1], outputs[0], atol=3e-2, rtol=3e-2)


def test_context_manager_installs_on_attn2_only_and_always_restores(model):
    unet = model.unet
    before = dict(unet.attn_processors)
    controller = InjectionController(latent_size=(16, 16), region_fn=lambda h, w: None)
    with object_cross_attention(unet, controller, active=False) as installed:
        assert installed == {} and all(unet.attn_processors[n] is p for n, p in before.items())
    with pytest.raises(KeyError):
        with object_cross_attention(unet, controller) as installed:
            assert set(installed) == set(cross_attention_layers(before)) and installed
            now = unet.attn_processors
            assert all(now[n] is p for n, p in before.items() if "attn2" not in n)
            raise KeyError("boom")
    assert all(unet.attn_processors[n] is p for n, p in before.items())


# ---------------------------------------------------------------------------------------------------- a Session
def test_settings_and_plans():
    assert SETTINGS_BY_NAME["region_cross_attention"].switch and not CompositionConfig().region_cross_attention
    assert SETTINGS_BY_NAME["object_words"].default == ""
    assert not any(p.region_cross_attention for p in plans_for(CompositionConfig(steps=5)))
    on = plans_for(CompositionConfig(steps=5, region_cross_attention=True))
    assert [p.region_cross_attention for p in on] == [True] * 5 + [False]  # every evaluation, none after the last


def test_off_is_bitwise_and_markers_are_only_stripped(model, sample):
    plain = new_session(model, sample, steps=4).run().latents()["generation"]
    marked_prompt = sample.prompt.replace("a red star", "a <ref> red star <ref>")
    marked = new_session(model, sample, steps=4, object_words="blue").run()
    marked.update(prompt=marked_prompt)
    assert torch.equal(marked.run().latents()["generation"], plain)
    assert marked.prompt == marked_prompt


def _attn2_rows(session):
    """{layer: (output, stock output)} of the attn2 layers in step 0's main call."""
    modules = dict(session.model.unet.named_modules())
    seen = {}

    def hook(name):
        def keep(module, args, kwargs, output):
            if output.shape[0] >= 4:
                seen[name] = (output, AttnProcessor2_0()(module, args[0], kwargs["encoder_hidden_states"]))

        return keep

    names = cross_attention_layers(session.model.unet.attn_processors)
    handles = [modules[n].register_forward_hook(hook(n), with_kwargs=True) for n in names]
    try:
        session.engine.run_step(*session.step_request())
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_on_changes_the_cond_row_of_cross_attention_only(model, sample):
    marked = dataclasses.replace(sample, prompt=sample.prompt.replace("a red star", "a <ref> red star <ref>"))
    on = new_session(model, marked, steps=4, region_cross_attention=True)
    rows = _attn2_rows(on)
    assert rows and all(out.shape[0] == 5 for out, _ in rows.values())  # bg, ref, pseudo, uncond, cond
    changed = 0
    for name, (got, stock) in rows.items():
        assert torch.equal(got[:4], stock[:4]), name
        changed += int((got[4] - stock[4]).abs().max() > 1e-4)
    assert changed == len(rows)
    result = on.run().latents()["generation"]
    by_words = new_session(model, sample, steps=4, region_cross_attention=True, object_words="red star").run()
    assert torch.equal(by_words.latents()["generation"], result)  # the setting and the markers: the same tokens


def test_on_without_words_raises_naming_the_fix(model, sample):
    with pytest.raises(ValueError, match="region_cross_attention needs the object's words"):
        new_session(model, sample, steps=4, region_cross_attention=True)
    session = new_session(model, sample, steps=4)
    with pytest.raises(ValueError, match="unbalanced"):
        session.update(prompt="a <ref> red star")
    with pytest.raises(ValueError, match="do not occur in the prompt"):
        session.update(region_cross_attention=True, object_words="green moon")
    assert not session.config.region_cross_attention  # refused updates change nothing


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_session_runs(sample, dtype):
    from tficon.model.tiny import tiny_model

    half = tiny_model("sd2", dtype=dtype, device="cpu")
    session = new_session(half, sample, steps=3, region_cross_attention=True, object_words="red star").run()
    assert torch.isfinite(session.latents()["generation"]).all()


def test_sdxl_session_runs():
    from tficon.model.tiny import tiny_model
    from tficon.toy.samples import toy_sample

    model = tiny_model("sdxl", device="cpu")
    sample = toy_sample(image_size=128)
    plain = new_session(model, sample, steps=3).run().latents()["generation"]
    on = new_session(model, sample, steps=3, region_cross_attention=True, object_words="red star").run()
    assert (on.latents()["generation"] - plain).abs().max() > 1e-5

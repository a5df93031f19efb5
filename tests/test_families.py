"""Model families (tficon.model.families): every model resolves to its family, a registered family is picked
without editing other modules, a family's denoiser call is the plain UNet call, and the VAE door
(tficon.model.vae through Engine.encode / Engine.decode) feeds the VAE its own dtype."""

from __future__ import annotations

import pytest
import torch

from tficon.composition.engine import Engine
from tficon.model import assemble_loaded_model, load_model
from tficon.model.families import Family, family_for, family_names, register, unregister
from tficon.model.families.sd import StableDiffusion
from tficon.model.families.sdxl import StableDiffusionXL
from tficon.model.families.toy import Toy
from tficon.model.text import sdxl_time_ids
from tficon.model.tiny import TINY_IMAGE_SIZE, tiny_components, tiny_model

EXPECTED = {"sd1": StableDiffusion, "sd2": StableDiffusion, "sd2-v": StableDiffusion, "sdxl": StableDiffusionXL}


@pytest.fixture(scope="module")
def tiny():
    return {name: tiny_model(name) for name in EXPECTED}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_tiny_model_resolves_to_its_family(tiny, name):
    model = tiny[name]
    family = family_for(model)
    assert type(family) is EXPECTED[name]
    assert model.family_rules is family and Engine(model).family is family
    assert model.is_sdxl == (name == "sdxl") == (family.text_encoders == 2)
    assert family.vocabulary() is None and model.vocabulary is None


def test_the_toy_model_is_sd_shaped_with_a_closed_vocabulary():
    toy = load_model("toy", device="cpu")
    family = family_for(toy)
    assert type(family) is Toy and isinstance(family, StableDiffusion) and not toy.is_sdxl
    assert toy.vocabulary == family.vocabulary() and {"red", "star"} <= toy.vocabulary
    assert family_for("toy") is family and family_for("sd2") is not family


def test_an_unknown_family_name_is_refused():
    with pytest.raises(ValueError, match="no model family drives 'flux'"):
        family_for("flux")
    with pytest.raises(TypeError, match="Family subclass or instance"):
        register(object)
    with pytest.raises(ValueError, match="names must list"):
        register(type("Nameless", (Family,), {}))


class _Zeroed(StableDiffusion):
    """A test-only family: SD, except that the exceptional prompt is all zeros."""

    names = ("tiny-sd1", "tiny-zeroed")

    def exceptional_embedding(self, model):
        return torch.zeros_like(super().exceptional_embedding(model))


def test_a_registered_family_is_picked_without_editing_other_modules():
    before = tiny_model("sd1")
    assert type(family_for(before)) is StableDiffusion
    register(_Zeroed)
    try:
        model = tiny_model("sd1")
        assert type(family_for(model)) is _Zeroed and type(Engine(model).family) is _Zeroed
        e_star = model.exceptional_embedding()
        assert e_star.shape == before.exceptional_embedding().shape and not e_star.any()
        # a new family name: known to the loader's checks at once
        assert "tiny-zeroed" in family_names()
        parts = tiny_components("sd1")
        zeroed = assemble_loaded_model(
            vae=parts["vae"], unet=parts["unet"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
            scheduler_config=dict(parts["scheduler"].config), family="tiny-zeroed", spec="test",
            exceptional_token_id=7788, image_size=TINY_IMAGE_SIZE, device="cpu", dtype=torch.float32,
        )  # fmt: skip
        assert type(zeroed.family_rules) is _Zeroed and not zeroed.exceptional_embedding().any()
    finally:
        unregister(_Zeroed)
    assert type(family_for(tiny_model("sd1"))) is StableDiffusion and "tiny-zeroed" not in family_names()
    with pytest.raises(ValueError, match="family must be one of"):
        assemble_loaded_model(
            vae=parts["vae"], unet=parts["unet"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
            scheduler_config=dict(parts["scheduler"].config), family="tiny-zeroed", spec="test",
            exceptional_token_id=7788, image_size=TINY_IMAGE_SIZE, device="cpu",
        )  # fmt: skip


def _inputs(model, rows: int = 2):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(rows, model.latent_channels, 8, 8, generator=generator)
    t = torch.tensor([700.0, 300.0][:rows])
    return x, t


@pytest.mark.parametrize("name", ["sd1", "sd2", "sd2-v"])
def test_the_sd_denoiser_call_is_the_plain_unet_call(tiny, name):
    model = tiny[name]
    x, t = _inputs(model)
    e = model.encode_prompt("a red car")  # one row, repeated to the batch
    with torch.no_grad():
        direct = model.unet(x, t, encoder_hidden_states=e.expand(2, -1, -1)).sample
    assert torch.equal(family_for(model).denoise(model, x, t, e), direct)
    assert torch.equal(Engine(model).unet(x, t, e), direct.float())
    with pytest.raises(TypeError, match="an SD UNet takes"):
        family_for(model).denoise(model, x, t, tiny["sdxl"].encode_prompt("a"))


def test_the_sdxl_denoiser_call_is_the_plain_unet_call_with_added_conditioning(tiny):
    model = tiny["sdxl"]
    family = family_for(model)
    x, t = _inputs(model)
    e = model.encode_prompt("a red car")
    ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [32.0, 48, 4, 8, 64, 64]])
    added = {"text_embeds": e.pooled.expand(2, -1), "time_ids": ids}
    with torch.no_grad():
        direct = model.unet(x, t, encoder_hidden_states=e.hidden.expand(2, -1, -1), added_cond_kwargs=added).sample
    assert torch.equal(family.denoise(model, x, t, family.with_time_ids(e, ids)), direct)
    # rows without time ids: the pipeline's default for the latent size (8 latents x 8 = 64 px), crop (0, 0)
    default = {"text_embeds": e.pooled.expand(2, -1), "time_ids": sdxl_time_ids(64).expand(2, -1)}
    with torch.no_grad():
        plain = model.unet(x, t, encoder_hidden_states=e.hidden.expand(2, -1, -1), added_cond_kwargs=default).sample
    assert torch.equal(family.denoise(model, x, t, e), plain) and not torch.equal(plain, direct)
    assert torch.equal(Engine(model).unet(x, t, e), plain.float())
    with pytest.raises(TypeError, match="an SDXL UNet needs"):
        family.denoise(model, x, t, e.hidden)


def test_families_concatenate_and_hash_their_conditionings(tiny):
    sd, xl = tiny["sd2"], tiny["sdxl"]
    a, b = sd.encode_prompt("a cat"), sd.encode_prompt("a dog")
    assert torch.equal(family_for(sd).cat_conditioning([a, b]), torch.cat([a, b]))
    rules = family_for(xl)
    c = rules.cat_conditioning([xl.encode_prompt("a cat"), xl.encode_prompt("a dog")])
    assert c.hidden.shape[0] == c.pooled.shape[0] == 2 and c.time_ids is None
    with pytest.raises(TypeError, match="cannot mix"):
        rules.cat_conditioning([xl.encode_prompt("a cat"), a])
    digest = rules.conditioning_digest
    e = xl.encode_prompt("a cat")
    assert digest(e) == digest(xl.encode_prompt("a cat")) != digest(rules.with_time_ids(e, sdxl_time_ids(64)))
    assert family_for(sd).conditioning_digest(a) != family_for(sd).conditioning_digest(b)


def test_attention_layers_are_the_self_attention_layers(tiny):
    for model in tiny.values():
        layers = family_for(model).attention_layers(model.unet)
        assert layers and all(name.endswith("attn1") for name in layers)
        assert len(layers) == sum(1 for name in model.unet.attn_processors if ".attn1." in name)


def test_the_vae_door_removes_the_float16_rounding_on_sdxl():
    """SDXL's VAE stays float32 in a float16 model (force_upcast): the door hands it float32 latents and images,
    so nothing is rounded through float16 on the way; casting to the model's dtype first (what a Session did before
    the door) rounds them."""
    model = tiny_model("sdxl", dtype=torch.float16)
    assert model.dtype == torch.float16 and model.vae.dtype == torch.float32
    engine = Engine(model)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model.vae.decode(z / model.latent_scaling).sample.float().clamp(-1, 1)
        rounded = model.vae.decode(z.half().float() / model.latent_scaling).sample.float().clamp(-1, 1)
    decoded = engine.decode(z)
    assert decoded.dtype == torch.float32 and torch.equal(decoded, exact)
    assert not torch.equal(engine.decode(z.half()), exact) and torch.equal(engine.decode(z.half()), rounded)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean = model.vae.encode(image).latent_dist.mean * model.latent_scaling
    assert torch.equal(engine.encode(image, None), mean)  # the posterior mean, unrounded
    assert not torch.equal(engine.encode(image.half(), None), mean)
    sample = engine.encode(image, torch.Generator().manual_seed(2))
    assert sample.dtype == torch.float32 and torch.equal(sample, model.encode_image(image, torch.Generator().manual_seed(2)))


def test_the_vae_door_keeps_a_half_precision_vae_in_its_dtype():
    """A bfloat16 SD model's VAE is bfloat16: the door casts the latent to it before unscaling, as Sessions always
    did, so their decodes are unchanged."""
    model = tiny_model("sd2", dtype=torch.bfloat16)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.vae.decode(z.bfloat16() / model.latent_scaling).sample.float().clamp(-1, 1)
    assert torch.equal(Engine(model).decode(z), expected)

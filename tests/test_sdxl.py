"""TF-ICON on SDXL-shaped models (docs/algorithm.md §15), on the tiny random ``"sdxl"`` model of tficon.model.tiny.

SDXL's UNet has three levels, no self-attention at the highest resolution, transformer depths 2 and 10, and
takes two text encoders' penultimate hidden states plus a pooled embedding and six added time ids. These tests
check the text conditioning against diffusers' own ``StableDiffusionXLPipeline.encode_prompt`` and against a
position-free run of each encoder, the processor on SDXL's attention modules against the naive transcription,
the batched Session against the sequential oracle (tests/official_reference.py, with ``added_cond``), rewinds,
half precision, loading, the CLI, the batch and the Explorer.
"""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch
from official_reference import official_composition
from test_attention import _naive_layer
from tiny_setup import SIZE, check_explorer_kernel_side, new_session

import tficon
from tficon.composition.attention import BatchLayout, CompositeSelfAttention, InjectionController
from tficon.composition.engine import Engine
from tficon.composition.session import Session
from tficon.core.placement import region_indices
from tficon.model import load_model
from tficon.model.families.base import self_attention_layers
from tficon.model.text import Conditioning, sdxl_time_ids
from tficon.model.tiny import save_tiny_model, tiny_components, tiny_model

STEPS = 6


@pytest.fixture(scope="module")
def xl():
    return tiny_model("sdxl")


@pytest.fixture(scope="module")
def xl_session(xl, sample):
    return new_session(xl, sample, steps=STEPS).run()


def _pipeline(model):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
        tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
        scheduler=EulerDiscreteScheduler.from_config(model.scheduler_config), force_zeros_for_empty_prompt=True,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the model
def test_tiny_sdxl_has_sdxl_attention_layout(xl, xl_session):
    config = xl.unet.config
    assert config.addition_embed_type == "text_time" and config.down_block_types[0] == "DownBlock2D"
    assert tuple(config.transformer_layers_per_block) == (1, 2, 10)
    layers = self_attention_layers(xl.unet)
    assert not any(name.startswith("down_blocks.0.") or name.startswith("up_blocks.2.") for name in layers)
    # tokens per self-attention layer at 128 px (16 x 16 latents): depth 2 at 8 x 8, depth 10 at 4 x 4 and mid
    maps = xl_session.capture_attention(1, kinds=("composite",))
    sizes = sorted(m.shape[0] for m in maps.values())
    assert set(sizes) == {16, 64}, sizes
    assert sizes.count(64) == 2 + 2 * 2 and sizes.count(16) == 10 + 10 + 2 * 10  # down, up (2 resnets), mid
    assert xl.family == "tiny-sdxl" and xl.is_sdxl and xl.latent_scaling == pytest.approx(0.13025)


# ------------------------------------------------------------------------------------------------ text
def test_prompt_conditioning_equals_the_sdxl_pipeline(xl):
    pipeline = _pipeline(xl)
    prompt = "a red cat in the city, watercolor style"
    embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(
        prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    cond, uncond = xl.encode_prompt(prompt), xl.unconditional_embedding()
    assert isinstance(cond, Conditioning) and cond.shape == (1, 77, 80) and cond.pooled.shape == (1, 40)
    torch.testing.assert_close(cond.hidden, embeds, rtol=0, atol=0)
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=0)
    # no negative prompt + force_zeros_for_empty_prompt: the pipeline's unconditional half is zeros
    assert torch.equal(uncond.hidden, negative) and torch.equal(uncond.pooled, negative_pooled)
    assert negative.abs().max() == 0
    with pytest.raises(ValueError, match="too long"):
        xl.encode_prompt(" ".join(["cat"] * 80))


def _position_free_run(encoder, token_id, length=77):
    """The encoder's own forward on ``length`` copies of ``token_id`` with its positional embedding zeroed."""
    free = copy.deepcopy(encoder)
    with torch.no_grad():
        free.text_model.embeddings.position_embedding.weight.zero_() if hasattr(free, "text_model") else \
            free.embeddings.position_embedding.weight.zero_()
        return free(torch.full((1, length), token_id), output_hidden_states=True)


def test_exceptional_embedding_in_both_encoders(xl):
    e = xl.exceptional_embedding()
    assert isinstance(e, Conditioning) and e.shape == (1, 77, 80) and e.pooled.shape == (1, 40)
    widths = (xl.text_encoder.config.hidden_size, xl.text_encoder_2.config.hidden_size)
    first, second = e.hidden.split(widths, dim=-1)
    for encoder, rows in ((xl.text_encoder, first), (xl.text_encoder_2, second)):
        want = _position_free_run(encoder, 7788)
        penultimate = want.hidden_states[-2]
        # the encoder's own 77-token run: every row identical (no positions, causal mask or not), equal to e*'s
        assert (penultimate - penultimate[:, :1]).abs().max() <= 1e-5
        torch.testing.assert_close(rows, penultimate, rtol=1e-5, atol=1e-5)
        # the penultimate layer's output, not the last layer's (SDXL reads hidden_states[-2])
        assert (rows - want.hidden_states[-1]).abs().max() > 1e-2
    # pooled: transformers' own pooling rule (first end-of-text token; none here -> position 0) and projection
    want = _position_free_run(xl.text_encoder_2, 7788)
    torch.testing.assert_close(e.pooled, want.text_embeds, rtol=1e-5, atol=1e-5)
    # position 0 is what CLIP's argmax rule picks too, and every position gives the same vector here
    last = want.last_hidden_state
    torch.testing.assert_close(xl.text_encoder_2.text_projection(last[:, 76]), e.pooled, rtol=1e-5, atol=1e-5)
    # e* differs from every prompt's conditioning and from the zero unconditional embedding
    for prompt in ("", "a cat"):
        c = xl.encode_prompt(prompt)
        assert (c.hidden - e.hidden).abs().max() > 1e-2 and (c.pooled - e.pooled).abs().max() > 1e-2


def test_exceptional_embedding_ignores_positional_weights():
    model = tiny_model("sdxl")
    before = model.exceptional_embedding()
    model._exceptional = None
    with torch.no_grad():
        for encoder in (model.text_encoder, model.text_encoder_2):
            encoder.text_model.embeddings.position_embedding.weight.mul_(3.0) if hasattr(encoder, "text_model") else \
                encoder.embeddings.position_embedding.weight.mul_(3.0)
    after = model.exceptional_embedding()
    assert torch.equal(before.hidden, after.hidden) and torch.equal(before.pooled, after.pooled)
    model._prompt_cache.clear()
    assert not torch.equal(model.encode_prompt("a cat").hidden, before.hidden)


def test_time_ids_per_branch_reach_the_unet(xl, sample):
    session = new_session(xl, sample, steps=STEPS)
    ids = session.time_ids
    assert set(ids) == {"generation", "background", "reference", "pseudo_cross"}
    assert all(torch.equal(v, torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)) for v in ids.values())
    assert torch.equal(sdxl_time_ids((96, 128), crop=(4, 8)), torch.tensor([[96.0, 128, 4, 8, 96, 128]]))
    engine = Engine(xl)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 500.0)
    e = xl.exceptional_embedding()
    default = engine.unet(x, t, e)  # no time ids: the working size of the latents (128 px), as the pipeline
    assert torch.equal(default, engine.unet(x, t, e.with_time_ids(sdxl_time_ids(SIZE))))
    other = engine.unet(x, t, e.with_time_ids(torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE], [64, 64, 0, 0, SIZE, SIZE]])))
    assert torch.equal(other[0], default[0]) and (other[1] - default[1]).abs().max() > 1e-4  # per row
    with pytest.raises(TypeError, match="Conditioning"):
        engine.unet(x, t, e.hidden)


# ------------------------------------------------------------------------------------------------ processor
@pytest.mark.parametrize("switches", [dict(fg=True, bg=True), dict(fg=True), dict(bg=True)], ids=["fg+bg", "fg", "bg"])
def test_processor_on_sdxl_attention_layers_equals_naive(xl, sample, switches):
    """Real attn1 modules of the SDXL layout (depth-2 block at 16 x 16, depth-10 block at 8 x 8) with the Session's
    own region sets, against the naive float64 transcription of tests/test_attention.py."""
    inputs = Session(xl, sample.background, sample.foreground, sample.foreground_mask, (40, 40, 192, 192),
                     sample.prompt, image_size=256).inputs  # 32 x 32 latents: the object covers both grids
    modules = dict(xl.unet.named_modules())
    chosen = {"down_blocks.1.attentions.0.transformer_blocks.1.attn1": 16,
              "down_blocks.2.attentions.0.transformer_blocks.9.attn1": 8}  # fmt: skip
    for name, side in chosen.items():
        attn = copy.deepcopy(modules[name]).double()
        region = region_indices(inputs.placement, inputs.object_mask, side, side)
        assert region.fg.numel() > 0
        controller = InjectionController(latent_size=(32, 32), region_fn=lambda h, w, r=region: r)
        controller.layout = BatchLayout(background=0, reference=1, pseudo_cross=2, uncond=3, cond=4, **switches)
        attn.set_processor(CompositeSelfAttention(controller, name))
        x = torch.randn(5, side * side, attn.to_q.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = attn(x)
            want = _naive_layer(attn, x, controller.layout, region)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
            controller.layout = None
            assert (attn(x) - want)[4].abs().max() > 1e-3  # the composite changed the cond row


# ------------------------------------------------------------------------------------------------ the composition
def _oracle(session):
    m = session.model
    x_bg, x_ref = session.invert()
    c = session.config
    lh, lw = session.model.latent_shape(session.image_size)
    levels = len(m.unet.config.block_out_channels)
    regions = {
        (lh >> k, lw >> k): region_indices(session.inputs.placement, session.inputs.object_mask, lh >> k, lw >> k)
        for k in range(levels)
    }
    ids = session.time_ids["generation"]
    embeddings = {"e_star": m.exceptional_embedding(), "e_uncond": m.unconditional_embedding(),
                  "e_cond": m.encode_prompt(session.prompt)}  # fmt: skip
    added = {name: {"text_embeds": e.pooled, "time_ids": ids} for name, e in embeddings.items()}
    with torch.no_grad():
        return official_composition(
            m.unet, session.schedule, x_bg_T=x_bg, x_ref_T=x_ref, start=session.compose_start(),
            e_star=embeddings["e_star"].hidden, e_uncond=embeddings["e_uncond"].hidden,
            e_cond=embeddings["e_cond"].hidden, regions=regions, param_box=session.placement.latent_target_box,
            steps=c.steps, order=c.order, guidance=c.effective_guidance, tau_a=c.tau_a, tau_b=c.tau_b,
            tau_bg=c.tau_bg, prediction_type=m.prediction_type, align_warmup=c.align_warmup,
            cross_lag=not c.no_cross_lag, added_cond=added,
        )  # fmt: skip


@pytest.mark.parametrize("settings", [dict(), dict(order=3, tau_a=0.7), dict(order=1, mode="same")],
                         ids=["official", "order-3", "order-1-same"])
def test_batched_session_matches_the_sequential_oracle(xl, sample, settings):
    session = new_session(xl, sample, steps=8, **settings).run()
    want = _oracle(session)
    got = [r.generation.x for r in session.records]
    scale = want["final"].abs().max()
    assert len(got) == len(want["gen"])
    for s, (a, b) in enumerate(zip(got, want["gen"])):
        assert (a - b).abs().max() <= 1e-5 * scale + 1e-5, f"step {s}: {(a - b).abs().max():.3g} (scale {scale:.3g})"
    assert (want["final"] - want["orig"][-1]).abs().max() > 1e-2 * scale  # not just the background reconstruction


def test_update_and_rewind_equal_a_fresh_session(xl, sample):
    session = new_session(xl, sample, steps=STEPS).run()
    first = session.update(tau_b=0.5)
    assert first is not None and 0 < first <= STEPS
    kept = session.step_index
    session.run()
    fresh = new_session(xl, sample, steps=STEPS, tau_b=0.5).run()
    assert kept == first and all(torch.equal(a.generation.x, b.generation.x) for a, b in zip(session.records, fresh.records))
    inverted = session.invert()
    assert session.update(prompt="a blue dog, sketch style") == 0
    session.run()
    fresh = new_session(xl, sample, steps=STEPS, tau_b=0.5)
    fresh.update(prompt="a blue dog, sketch style")
    fresh.run()
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)
    session.rewind(2)
    session.run()
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)
    assert session.invert() is inverted  # the prompt change kept both inversions


def test_previews_capture_and_decode(xl_session):
    previews = xl_session.preview(2)
    assert set(previews) >= {"generation"} and all(p.shape == (3, 16, 16) for p in previews.values())
    maps = xl_session.capture_attention(0, max_tokens=16)
    kinds = {kind for _, kind in maps}
    assert kinds == {"composite", "generation", "background", "reference", "pseudo_cross"}
    layer = next(name for name, kind in maps if kind == "composite" and maps[(name, kind)].shape[0] == 16)
    assert (maps[(layer, "composite")] - maps[(layer, "generation")]).abs().max() > 1e-4  # injected
    assert all(torch.allclose(m.sum(-1), torch.ones(m.shape[0]), atol=1e-4) for m in maps.values())
    assert xl_session.result.size == (SIZE, SIZE)


# float16 keeps SDXL's VAE in float32 (force_upcast); measured on this tiny model: float16 29-31 dB, bfloat16
# 25-27 dB against float32 (6 steps); the bounds are those of tests/test_half_precision.py.
MIN_PSNR = {torch.float16: 23.0, torch.bfloat16: 22.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_on_cpu(xl_session, sample, dtype):
    model = tiny_model("sdxl", dtype=dtype)
    assert model.unet.dtype == model.text_encoder_2.dtype == dtype
    assert model.vae.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    session = new_session(model, sample, steps=STEPS).run()
    assert session.records[-1].generation.x.dtype == torch.float32
    image = session.decode()
    mse = float(((image - xl_session.decode()) / 2).pow(2).mean())
    psnr = 10 * math.log10(1 / mse)
    assert psnr >= MIN_PSNR[dtype], f"{dtype}: {psnr:.1f} dB"
    assert session.capture_attention(1, max_tokens=16)
    first = session.update(tau_b=0.5)
    session.run()
    fresh = new_session(model, sample, steps=STEPS, tau_b=0.5).run()
    assert first > 0 and torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)


# ------------------------------------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("xl") / "tiny-sdxl", "sdxl")


def test_load_model_reads_an_sdxl_folder(xl_folder, xl, tmp_path):
    loaded = load_model(xl_folder, device="cpu")
    assert loaded.family == "tiny-sdxl" and loaded.is_sdxl and loaded.image_size == 64
    assert loaded.force_zeros_for_empty_prompt
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 300.0)
    # the same weights (tiny tokenizers are rebuilt per call and may number their words differently)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(loaded, part).state_dict(), getattr(xl, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), part
    e = xl.exceptional_embedding()
    assert torch.equal(loaded.exceptional_embedding().hidden, e.hidden)
    assert torch.equal(Engine(loaded).unet(x, t, e), Engine(xl).unet(x, t, e))
    assert loaded.tokenizer_2.pad_token == "!" and loaded.tokenizer.pad_token == "<|endoftext|>"
    # without tficon.json: family "sdxl", native size from the UNet's sample_size (8 latents x 8 = 64 here; 1024 real)
    plain = tmp_path / "plain"
    shutil.copytree(xl_folder, plain)
    (plain / "tficon.json").unlink()
    identity = load_model(plain, device="cpu")
    assert identity.family == "sdxl" and identity.image_size == 64 and "sdxl (epsilon)" in identity.describe()


def test_sdxl_lora_with_unet_and_second_encoder_parts_fuses_as_trained(xl_folder, sample, tmp_path):
    """An SDXL LoRA file (UNet + text_encoder_2 parts, written by diffusers' SDXL pipeline) loads through lora=."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    parts = tiny_components("sdxl")  # the weights saved in xl_folder (same seed)
    unet, encoder_2 = parts["unet"], parts["text_encoder_2"]
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    encoder_2 = inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), encoder_2
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in (unet, encoder_2):
            for name, parameter in module.named_parameters():
                if "lora_B" in name:  # peft starts B at zero (a no-op LoRA); a trained one is not
                    parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        text_encoder_2_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder_2)),
    )
    (path,) = tmp_path.glob("*.safetensors")
    base = load_model(xl_folder, device="cpu")
    model = load_model(xl_folder, device="cpu", lora=path)

    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    added = {"text_embeds": torch.randn(1, encoder_2.config.projection_dim, generator=generator),
             "time_ids": sdxl_time_ids(64)}
    ids = base.tokenizer_2("a red star", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected_unet = unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
        fused_unet = model.unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
        base_unet = base.unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added).sample
        expected_text = encoder_2(ids).text_embeds
        fused_text = model.text_encoder_2(ids).text_embeds
        base_text = base.text_encoder_2(ids).text_embeds
    torch.testing.assert_close(fused_unet, expected_unet, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused_text, expected_text, rtol=1e-4, atol=1e-5)
    assert (fused_unet - base_unet).abs().mean() > 0.1 * base_unet.abs().mean()
    assert (fused_text - base_text).abs().mean() > 0.1 * base_text.abs().mean()
    # fused: no adapter layers are left for the attention processors to meet; the first encoder is untouched
    assert not any("lora" in name for module in (model.unet, model.text_encoder_2) for name, _ in module.named_modules())
    assert not any(p.requires_grad for p in model.text_encoder_2.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.text_encoder.state_dict().values(), base.text_encoder.state_dict().values()))
    assert not torch.equal(model.encode_prompt("a red star").pooled, base.encode_prompt("a red star").pooled)
    session = new_session(model, sample, steps=3).run()
    assert session.done and torch.isfinite(session.records[-1].generation.x).all()


def test_refiner_and_broken_sdxl_folders_are_refused(xl_folder, tmp_path):
    refiner = tmp_path / "refiner"
    shutil.copytree(xl_folder, refiner, ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((refiner / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLImg2ImgPipeline", text_encoder=[None, None], tokenizer=[None, None])
    (refiner / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(refiner / "text_encoder")
    with pytest.raises(ValueError, match="only the second text encoder, like the SDXL refiner"):
        load_model(refiner, device="cpu")
    five = tmp_path / "five-ids"
    shutil.copytree(xl_folder, five, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((five / "unet" / "config.json").read_text())
    config["projection_class_embeddings_input_dim"] = 40 + 5 * config["addition_time_embed_dim"]
    (five / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"5 added time ids \(5 ids: the SDXL refiner"):
        load_model(five, device="cpu")


def test_sdxl_checkpoint_files_pass_the_family_check(tmp_path, monkeypatch):
    """An SDXL base single file is no longer refused by family; the refiner still is. Offline with no configs,
    the SDXL base file then needs its diffusers configs (config=), and the error says so."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES as KEYS
    from safetensors.torch import save_file

    from tficon.model import CheckpointFileError, ModelNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unet = "model.diffusion_model."
    base = tmp_path / "sd_xl_base.safetensors"
    save_file({KEYS["xl_base"]: torch.zeros(4), unet + "out.2.bias": torch.zeros(4),
               unet + "input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, str(base))  # fmt: skip
    with pytest.raises(ModelNotAvailableError):
        load_model(base, device="cpu")
    refiner = tmp_path / "refiner.safetensors"
    save_file({KEYS["xl_refiner"]: torch.zeros(4), unet + "out.2.bias": torch.zeros(4)}, str(refiner))
    with pytest.raises(CheckpointFileError, match="SDXL refiner"):
        load_model(refiner, device="cpu")


def test_sdxl_single_file_in_the_original_layout_gives_the_folder_models_outputs(xl_folder, sample, tmp_path,
                                                                                  monkeypatch):
    """The tiny SDXL as one original-layout .safetensors (tests/ldm_checkpoint.py: UNet with label_emb, VAE, CLIP
    under conditioner.embedders.0.transformer., OpenCLIP with its transposed text_projection under
    conditioner.embedders.1.model.) loads offline with config= and runs as the folder model does. Its second encoder
    has 2 blocks, so diffusers' own type check (a tensor of block 9) says "v1": tficon reads the SDXL layout instead."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from ldm_checkpoint import SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX, check_round_trip, to_ldm_checkpoint
    from safetensors.torch import save_file

    parts = tiny_components("sdxl")  # the weights save_tiny_model wrote to xl_folder
    modules = (parts["vae"], parts["unet"], parts["text_encoder"])
    state = to_ldm_checkpoint(*modules, text_encoder_2=parts["text_encoder_2"])
    check_round_trip(state, *modules, text_encoder_2=parts["text_encoder_2"])
    assert {k.split(".")[0] for k in state} == {"model", "first_stage_model", "conditioner"}
    add_embedding = parts["unet"].add_embedding.linear_1.weight
    assert torch.equal(state["model.diffusion_model.label_emb.0.0.weight"], add_embedding)
    assert all(any(k.startswith(p) for k in state) for p in (SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX))
    assert state[SDXL_OPEN_CLIP_PREFIX + "text_projection"].shape == (48, 40)  # width x projection, as OpenCLIP's
    assert infer_diffusers_model_type(state) == "v1"
    path = tmp_path / "tiny-sdxl.safetensors"
    save_file(state, str(path))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder_model = load_model(xl_folder, device="cpu")
    model = load_model(path, device="cpu", config=xl_folder)
    assert model.family == "tiny-sdxl" and model.is_sdxl and model.spec == str(path)  # tficon.json of config=
    assert (model.image_size, model.prediction_type, model.latent_scaling) == (64, "epsilon", pytest.approx(0.13025))
    assert model.force_zeros_for_empty_prompt
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(model, part).state_dict(), getattr(folder_model, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), part

    # both encoders' conditioning: the prompt's (hidden states of both, pooled of the second), e* and the empty one
    for get in (lambda m: m.encode_prompt("a red cat in the city"), lambda m: m.exceptional_embedding(),
                lambda m: m.unconditional_embedding()):  # fmt: skip
        got, want = get(model), get(folder_model)
        assert torch.equal(got.hidden, want.hidden) and torch.equal(got.pooled, want.pooled)
    cond = model.encode_prompt("a red cat in the city")
    assert cond.shape == (1, 77, 80) and cond.pooled.abs().mean() > 0.1
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 500.0)
    for e in (cond, model.exceptional_embedding()):
        got, want = Engine(model).unet(x, t, e), Engine(folder_model).unet(x, t, e)
        assert torch.equal(got, want) and got.abs().mean() > 0.1

    session = new_session(model, sample, steps=4).run()
    expected = new_session(folder_model, sample, steps=4).run()
    assert torch.equal(session.records[-1].generation.x, expected.records[-1].generation.x)
    assert torch.equal(session.decode(), expected.decode())
    assert session.result.size == (SIZE, SIZE) and session.result.tobytes() == expected.result.tobytes()


# ------------------------------------------------------------------------------------------------ CLI, batch, Explorer
def _write_inputs(folder, sample):
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in (("bg", sample.background), ("fg", sample.foreground), ("fg_mask", sample.foreground_mask)):
        image.save(folder / f"{name}.png")


def test_cli_compose_and_batch_on_an_sdxl_folder(xl_folder, sample, tmp_path):
    from PIL import Image

    from tficon.cli import main

    _write_inputs(tmp_path, sample)
    x, y, w, h = sample.box
    out = tmp_path / "out.png"
    args = ["compose", "--model", str(xl_folder), "--background", str(tmp_path / "bg.png"), "--foreground",
            str(tmp_path / "fg.png"), "--foreground-mask", str(tmp_path / "fg_mask.png"), "--prompt", sample.prompt,
            "--size", str(SIZE), "--steps", "4", "--quiet", "--box", f"{x},{y},{w},{h}", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert Image.open(out).size == (SIZE, SIZE)
    # the official inputs layout: inputs/<domain>/<prompt>/{bg, fg, fg_mask, mask}
    folder = tmp_path / "inputs" / "cross_domain" / "a red star"
    _write_inputs(folder, sample)
    mask = Image.new("L", sample.background.size, 0)
    mask.paste(255, (x, y, x + w, y + h))
    mask.save(folder / "mask.png")
    runs = tmp_path / "runs"
    assert main(["batch", str(tmp_path / "inputs"), "--out", str(runs), "--model", str(xl_folder), "--size",
                 str(SIZE), "--steps", "4", "--quiet"]) == 0  # fmt: skip
    summary = json.loads((runs / "summary.json").read_text())
    assert summary["counts"]["composed_now"] == 1 and summary["counts"]["failed"] == 0, summary["counts"]


def test_explorer_kernel_side(xl, sample):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    check_explorer_kernel_side(xl, sample)


def test_compose_one_call(xl, sample):
    result = tficon.compose(xl, sample.background, sample.foreground, sample.foreground_mask, sample.box,
                            sample.prompt, image_size=SIZE, steps=4, progress=False)  # fmt: skip
    assert result.size == (SIZE, SIZE)


def test_tiny_components_build_a_working_sdxl_pipeline():
    """The tiny components are a valid StableDiffusionXLPipeline (diffusers' own sampler runs on them)."""
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline(**tiny_components("sdxl"), force_zeros_for_empty_prompt=True)
    image = pipeline("a cat", num_inference_steps=2, height=64, width=64, output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()

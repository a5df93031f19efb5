"""Tiny random-weight models shaped like Stable Diffusion, for tests, benchmarks and offline demos.

They have SD's structure at a toy width, so every code path that walks a real SD model (attention
processors per resolution, the exceptional prompt, VAE posterior sampling, the noise schedule) runs on
them in milliseconds on a CPU:

- UNet: 3 levels like SD's 4 (``CrossAttnDownBlock2D`` x2 + ``DownBlock2D``, a cross-attention mid block,
  ``UpBlock2D`` + ``CrossAttnUpBlock2D`` x2), so self-attention (``attn1``) and cross-attention (``attn2``)
  run at two resolutions (latent 8x8 and 4x4 for 64x64 images) plus the mid block (2x2).
  ``"sd2"`` copies SD 2.x's choices (linear ``proj_in``/``proj_out``, per-level head counts, GELU text
  encoder); ``"sd1"`` copies SD 1.x's (1x1-conv projections, 8 heads everywhere, quick-GELU text encoder).
  ``"sd2-v"`` is ``"sd2"`` with v-prediction (and upcast attention), like SD 2.x 768-v.
- ``"sdxl"`` copies SDXL base's layout: 3 levels (``DownBlock2D`` + ``CrossAttnDownBlock2D`` x2), no attention
  at the highest resolution, transformer depths 2 and 10 (the mid block 10), ``addition_embed_type="text_time"``
  with six time ids, two text encoders (a quick-GELU ``CLIPTextModel`` and a GELU
  ``CLIPTextModelWithProjection``, their widths concatenated as the cross-attention width), a tokenizer each
  (the second pads with "!" as SDXL's does), SDXL's VAE scaling 0.13025 and ``force_upcast``, and an Euler
  scheduler config with SD's training schedule.
- VAE: 4 levels, so the downsampling factor is 8 as in SD, with 8 to 32 channels.
- Text encoder: a 2-layer ``CLIPTextModel`` whose vocabulary (8192 ids) contains SD's exceptional token
  7788, with a small offline ``CLIPTokenizer`` (window 77) covering ``TINY_WORDS``.
- Scheduler: SD's training schedule (scaled_linear, 0.00085..0.012, 1000 steps).

The weights are random (fixed by ``seed``): outputs are noise, never images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tficon.model.identify import SD_EXCEPTIONAL_TOKEN_ID, TFICON_JSON
from tficon.model.loaded import LoadedModel, assemble_loaded_model
from tficon.model.tokenizer import build_clip_tokenizer

__all__ = ["TINY_FAMILIES", "TINY_IMAGE_SIZE", "TINY_WORDS", "tiny_components", "tiny_model", "save_tiny_model"]

TINY_FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl")
TINY_IMAGE_SIZE = 64  # native size: 64x64 images, 8x8 latents
TINY_VOCAB_SIZE = 8192  # > 7788, so SD's exceptional token id is valid
TINY_WORDS = tuple(
    """a an the of in on with and at by photo painting sketch drawing oil watercolor pencil cartoon anime style
    cat dog bird horse car house tree flower person face sky sea beach mountain city street forest
    red green blue yellow black white small big old new realistic""".split()
) + tuple("abcdefghijklmnopqrstuvwxyz0123456789")

# Per family: text width (stands in for 768 / 1024), text activation, UNet head counts, projection style.
_TEXT_WIDTH = {"sd1": 32, "sd2": 48}
_TEXT_ACT = {"sd1": "quick_gelu", "sd2": "gelu"}
# SDXL: CLIP ViT-L (768, quick GELU) + OpenCLIP bigG (1280, GELU, 1280-d projection) at toy width; 6 time ids.
_SDXL_TEXT = (("sd1", 32, None), ("sd2", 48, 40))  # (style, width, projection_dim)
_SDXL_TIME_DIM = 8  # addition_time_embed_dim (256 in SDXL)
_UNET_HEADS = {"sd1": 8, "sd2": (2, 4, 4)}  # diffusers' attention_head_dim = number of heads for SD


def _base_family(family: str) -> str:
    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {TINY_FAMILIES}, got {family!r}")
    return family if family in ("sd1", "sdxl") else "sd2"


#: What every tiny UNet shares: 3 levels of widths 32/64/64 with 32-group norms, 8x8 latents at the native 64 px.
_UNET_COMMON = dict(
    sample_size=TINY_IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    norm_num_groups=32,
    norm_eps=1e-5,
)


def _tiny_sdxl_unet() -> UNet2DConditionModel:
    pooled = _SDXL_TEXT[1][2]
    return UNet2DConditionModel(
        **_UNET_COMMON,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=sum(width for _, width, _ in _SDXL_TEXT),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=pooled + 6 * _SDXL_TIME_DIM,
    )


def _tiny_unet(family: str) -> UNet2DConditionModel:
    base = _base_family(family)
    if base == "sdxl":
        return _tiny_sdxl_unet()
    return UNet2DConditionModel(
        **_UNET_COMMON,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT_WIDTH[base],
        attention_head_dim=_UNET_HEADS[base],
        use_linear_projection=base == "sd2",
        upcast_attention=family == "sd2-v",
    )


def _tiny_vae(family: str = "sd2") -> AutoencoderKL:
    sdxl = family == "sdxl"
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_IMAGE_SIZE,
        scaling_factor=0.13025 if sdxl else 0.18215,
        force_upcast=sdxl,  # SDXL's VAE overflows in float16; tficon then keeps it in float32
    )


def _tiny_text_encoder(family: str, width: int | None = None, projection_dim: int | None = None):
    base = _base_family(family)
    width = _TEXT_WIDTH[base] if width is None else width
    config = CLIPTextConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=_TEXT_ACT[base],
        layer_norm_eps=1e-5,
        # ids of tficon.model.tokenizer: <|startoftext|> = 0, <|endoftext|> = 1 (also the padding)
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **({} if projection_dim is None else {"projection_dim": projection_dim}),
    )
    return CLIPTextModel(config) if projection_dim is None else CLIPTextModelWithProjection(config)


def _tiny_scheduler(family: str):
    sd_schedule = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
    )
    if family == "sd2-v":  # SD 2.x 768-v ships a DDIM config with v-prediction
        return DDIMScheduler(**sd_schedule, clip_sample=False, prediction_type="v_prediction")
    if family == "sdxl":  # SDXL base ships an Euler config with the same training schedule
        from diffusers import EulerDiscreteScheduler

        sd_schedule.pop("set_alpha_to_one")
        return EulerDiscreteScheduler(**sd_schedule, timestep_spacing="leading", prediction_type="epsilon")
    return PNDMScheduler(**sd_schedule, skip_prk_steps=True, prediction_type="epsilon")


def tiny_components(family: str = "sd2", seed: int = 0) -> dict:
    """Random SD-shaped components: ``{"vae", "unet", "text_encoder", "tokenizer", "scheduler"}``.

    Args:
        family: ``"sd1"``, ``"sd2"`` or ``"sd2-v"`` (see the module docstring).
        seed: fixes every weight; the global torch RNG is left untouched.

    Returns:
        The keyword arguments of ``StableDiffusionPipeline`` minus the safety checker, in float32 on CPU;
        for ``"sdxl"`` those of ``StableDiffusionXLPipeline`` (``text_encoder_2`` and ``tokenizer_2`` too).
    """
    _base_family(family)
    sdxl = family == "sdxl"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(family)
        vae = _tiny_vae(family)
        if sdxl:
            encoders = [_tiny_text_encoder(style, width, dim) for style, width, dim in _SDXL_TEXT]
        else:
            encoders = [_tiny_text_encoder(family)]
    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=77)
    if len(tokenizer) > TINY_VOCAB_SIZE:  # guards edits of TINY_WORDS
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, more than the encoder's {TINY_VOCAB_SIZE}")
    for module in (unet, vae, *encoders):
        module.eval()
    parts = {
        "vae": vae,
        "unet": unet,
        "text_encoder": encoders[0],
        "tokenizer": tokenizer,
        "scheduler": _tiny_scheduler(family),
    }
    if sdxl:
        tokenizer_2 = build_clip_tokenizer(TINY_WORDS, model_max_length=77, extra_tokens=("!",))
        tokenizer_2.pad_token = "!"  # SDXL's second tokenizer pads with "!", not with the end-of-text token
        parts.update(text_encoder_2=encoders[1], tokenizer_2=tokenizer_2)
    return parts


def _tiny_family_name(family: str) -> str:
    return f"tiny-{_base_family(family)}"


def tiny_model(
    family: str = "sd2",
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """A ``LoadedModel`` around ``tiny_components(family, seed)``.

    Its family is ``"tiny-sd1"``, ``"tiny-sd2"`` or ``"tiny-sdxl"`` (``"sd2-v"`` gives ``"tiny-sd2"`` with
    ``prediction_type == "v_prediction"``), image size 64, exceptional token 7788. ``"sd3"`` gives the tiny SD3.5-shaped
    model of ``tficon.model.tiny_sd3`` (family ``"tiny-sd3"``).

    Args:
        device: default cuda when available, else cpu.
        dtype: default float32 on every device (random weights gain nothing from float16).
    """
    if family == "sd3":  # an MM-DiT: its own module (tficon.model.tiny_sd3)
        from tficon.model.tiny_sd3 import tiny_sd3_model

        return tiny_sd3_model(seed, device, dtype)
    parts = tiny_components(family, seed)
    return assemble_loaded_model(
        vae=parts["vae"],
        unet=parts["unet"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        text_encoder_2=parts.get("text_encoder_2"),
        tokenizer_2=parts.get("tokenizer_2"),
        force_zeros_for_empty_prompt=family == "sdxl",
        scheduler_config=dict(parts["scheduler"].config),
        family=_tiny_family_name(family),
        spec=f"tiny:{family}:seed={seed}",
        exceptional_token_id=SD_EXCEPTIONAL_TOKEN_ID,
        image_size=TINY_IMAGE_SIZE,
        device=device,
        dtype=torch.float32 if dtype is None else dtype,
    )


def save_tiny_model(directory: str | os.PathLike, family: str = "sd2", seed: int = 0) -> Path:
    """Write a tiny model as a ``StableDiffusionPipeline`` folder plus ``tficon.json``; return the folder.

    ``load_model(directory)`` then reports family ``"tiny-sd1"``/``"tiny-sd2"``/``"tiny-sdxl"``, image size 64 and
    exceptional token 7788 (from ``tficon.json``), and the prediction type from the scheduler config.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sd3":
        from tficon.model.tiny_sd3 import save_tiny_sd3_model

        return save_tiny_sd3_model(directory, seed)
    directory = Path(directory)
    if family == "sdxl":
        pipeline = StableDiffusionXLPipeline(**tiny_components(family, seed), force_zeros_for_empty_prompt=True)
    else:
        pipeline = StableDiffusionPipeline(
            **tiny_components(family, seed),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipeline.save_pretrained(directory, safe_serialization=True)
    metadata = {
        "family": _tiny_family_name(family),
        "exceptional_token_id": SD_EXCEPTIONAL_TOKEN_ID,
        "image_size": TINY_IMAGE_SIZE,
    }
    (directory / TFICON_JSON).write_text(json.dumps(metadata, indent=2) + "\n")
    return directory


def save_tiny_clip(directory) -> str:
    """A random CLIP (32-px images, 16-d projections) with an offline tokenizer, saved as a transformers folder.

    A stand-in for the CLIP weights that ``tficon.eval.metrics.CLIPScorer`` loads, for tests and offline demos.
    """
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = build_clip_tokenizer("a red star blue square outline style".split(), model_max_length=77)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer) + 8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)

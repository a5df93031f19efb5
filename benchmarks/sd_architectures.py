"""Stable Diffusion architectures from their published configs, with random weights (no download).

The UNet configs are the ``unet/config.json`` of stable-diffusion-v1-5, stable-diffusion-2-1-base and
stable-diffusion-xl-base-1.0, written out here with the keys that change the architecture (the rest are
diffusers' defaults). Weights are random: good for memory and time, meaningless for images.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

_SD1_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    norm_num_groups=32,
    norm_eps=1e-5,
    in_channels=4,
    out_channels=4,
    sample_size=64,
)

UNET_CONFIGS = {
    "sd15": dict(_SD1_BLOCKS, cross_attention_dim=768, attention_head_dim=8),
    "sd21": dict(_SD1_BLOCKS, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "sdxl": dict(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
        in_channels=4,
        out_channels=4,
        sample_size=128,
    ),
}

NATIVE_SIZE = {"sd15": 512, "sd21": 512, "sdxl": 1024}
TEXT_TOKENS = 77

_TEXT_CONFIGS = {  # CLIP ViT-L/14 (SD 1.x) and OpenCLIP ViT-H/14 (SD 2.x, penultimate layer: 23 layers)
    "sd15": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu"),
    "sd21": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                 hidden_act="gelu"),
    "sdxl": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 hidden_act="quick_gelu"),  # SDXL's first encoder is SD 1.x's CLIP ViT-L/14
}
# SDXL's second encoder: OpenCLIP ViT-bigG/14 with its 1280-d text projection
_SDXL_TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                    hidden_act="gelu", projection_dim=1280)

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True, prediction_type="epsilon")


def unet(name: str, *, seed: int = 0, device="cpu") -> UNet2DConditionModel:
    """The named UNet architecture (``sd15``, ``sd21``, ``sdxl``) with seeded random weights, float32, eval.

    Built directly on ``device`` (a GPU draws SDXL's 2.6 G random weights in a moment, a CPU takes minutes).
    """
    torch.manual_seed(seed)
    with torch.device(device):
        return UNet2DConditionModel(**UNET_CONFIGS[name]).eval().requires_grad_(False)


def extra_unet_inputs(name: str, batch: int, size: int, dtype: torch.dtype, device="cpu") -> dict:
    """SDXL's pooled-text and size conditioning (random); nothing for SD 1.x / 2.x."""
    if name != "sdxl":
        return {}
    time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=dtype, device=device).repeat(batch, 1)
    return {"added_cond_kwargs": {"text_embeds": torch.randn(batch, 1280, dtype=dtype, device=device),
                                  "time_ids": time_ids}}


def loaded_model(name: str, *, device, dtype, seed: int = 0):
    """A full tficon ``LoadedModel`` (UNet, VAE, text encoder(s)) of SD 1.5 / SD 2.1-base / SDXL-base size, random
    weights. SDXL: two text encoders, VAE scaling 0.13025 with ``force_upcast`` (kept float32 in a float16 model).

    The tokenizer is tficon's small offline one (its ids fit the real vocabulary); only sizes matter here.
    """
    from tficon.model import SD_EXCEPTIONAL_TOKEN_ID, assemble_loaded_model
    from tficon.model.tiny import TINY_WORDS
    from tficon.model.tokenizer import build_clip_tokenizer

    if name not in _TEXT_CONFIGS:
        raise ValueError(f"a full model is built for {sorted(_TEXT_CONFIGS)} only, got {name!r}")
    torch.manual_seed(seed)
    sdxl = name == "sdxl"
    with torch.device(device):  # drawn where they will run (see unet())
        vae, text_encoder, second = _vae_and_text_encoders(name)
    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=TEXT_TOKENS)
    if sdxl:
        second.update(tokenizer_2=tokenizer, force_zeros_for_empty_prompt=True)
    return assemble_loaded_model(
        vae=vae, unet=unet(name, seed=seed, device=device), text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler_config=dict(PNDMScheduler(**SCHEDULER).config),
        family={"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl"}[name], spec=f"random:{name}",
        exceptional_token_id=SD_EXCEPTIONAL_TOKEN_ID, image_size=NATIVE_SIZE[name], device=device, dtype=dtype,
        **second,
    )


def _vae_and_text_encoders(name: str):
    sdxl = name == "sdxl"
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, norm_num_groups=32, sample_size=NATIVE_SIZE[name],
        scaling_factor=0.13025 if sdxl else 0.18215, force_upcast=sdxl,
    )
    text = dict(vocab_size=49408, max_position_embeddings=TEXT_TOKENS, layer_norm_eps=1e-5,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text, **_TEXT_CONFIGS[name]))
    second = {}
    if sdxl:
        second = dict(text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text, **_SDXL_TEXT_2)))
    return vae, text_encoder, second

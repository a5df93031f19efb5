"""A tiny random model shaped like Stable Diffusion 3.5, built from diffusers' own classes, for tests (seconds on a CPU).

- Transformer: an ``SD3Transformer2DModel`` with patch size 2, 16 latent channels, 3 joint blocks (the last one
  "context pre-only", as in SD3), the first a dual-attention block (SD3.5's image-only ``attn2``), RMS query/key norms
  (SD3.5), 4 heads of width 8, a position table cropped from a larger one (``pos_embed_max_size``).
- Text: CLIP-L and CLIP-G stand-ins, both ``CLIPTextModelWithProjection`` (quick-GELU and GELU, widths 32 and 48,
  projections 32, the identity as in SD3's single files, and 24) with the tiny offline tokenizer of ``tficon.model.tiny`` (window 77, the exceptional token
  7788 in the vocabulary); no T5 (``text_encoder_3=None``): its rows are zeros, as in the pipeline. The joint width
  (``joint_attention_dim``, T5's 4096 in SD3) is 96, and T5's rows are 8 (``t5_length``; 256 in SD3).
- VAE: SD3's 16-channel ``AutoencoderKL`` (no quant convs) at toy width, factor 8, scaling 1.5305, shift 0.0609.
- Scheduler: ``FlowMatchEulerDiscreteScheduler`` with shift 3.0.

The weights are random (fixed by ``seed``): outputs are noise, never images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tficon.model.identify import SD_EXCEPTIONAL_TOKEN_ID, TFICON_JSON
from tficon.model.loaded import LoadedModel, assemble_loaded_model
from tficon.model.tiny import TINY_IMAGE_SIZE, TINY_VOCAB_SIZE, TINY_WORDS
from tficon.model.tokenizer import build_clip_tokenizer

__all__ = ["TINY_SD3_T5_LENGTH", "save_tiny_sd3_model", "tiny_sd3_components", "tiny_sd3_model"]

TINY_SD3_T5_LENGTH = 8
# (activation, width, projection_dim): CLIP-L, CLIP-G. CLIP-L's projection is square and the identity, as SD3's
# single files imply (they carry none; diffusers' single-file loader sets it to the identity)
_CLIP = (("quick_gelu", 32, 32), ("gelu", 48, 24))
_JOINT_WIDTH = 96


def _tiny_clip(act: str, width: int, projection_dim: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=TINY_VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=projection_dim,
    )  # fmt: skip
    return CLIPTextModelWithProjection(config)


def tiny_sd3_components(seed: int = 0) -> dict:
    """Random SD3.5-shaped components: the keyword arguments of ``StableDiffusion3Pipeline`` with
    ``text_encoder_3=None`` and ``tokenizer_3=None``, float32 on the CPU. The global RNG is left untouched."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=TINY_IMAGE_SIZE // 8, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=_JOINT_WIDTH, caption_projection_dim=32,
            pooled_projection_dim=sum(p for _, _, p in _CLIP), out_channels=16, pos_embed_max_size=32,
            dual_attention_layers=(0,), qk_norm="rms_norm",
        )  # fmt: skip
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
            latent_channels=16, norm_num_groups=8, sample_size=TINY_IMAGE_SIZE, scaling_factor=1.5305,
            shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
        )  # fmt: skip
        encoders = [_tiny_clip(*spec) for spec in _CLIP]
        with torch.no_grad():
            encoders[0].text_projection.weight.copy_(torch.eye(_CLIP[0][1]))
    for module in (transformer, vae, *encoders):
        module.eval()
    tokenizer = build_clip_tokenizer(TINY_WORDS, model_max_length=77)
    tokenizer_2 = build_clip_tokenizer(TINY_WORDS, model_max_length=77, extra_tokens=("!",))
    tokenizer_2.pad_token = "!"  # CLIP-G's tokenizer pads with "!" (as SDXL's second one)
    return dict(
        transformer=transformer, vae=vae, text_encoder=encoders[0], tokenizer=tokenizer,
        text_encoder_2=encoders[1], tokenizer_2=tokenizer_2, text_encoder_3=None, tokenizer_3=None,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
    )  # fmt: skip


def tiny_sd3_model(seed: int = 0, device=None, dtype: torch.dtype | None = None) -> LoadedModel:
    """A ``LoadedModel`` (family ``"tiny-sd3"``, 64-px native size, exceptional token 7788) around
    :func:`tiny_sd3_components`; dtype float32 unless given."""
    parts = tiny_sd3_components(seed)
    model = assemble_loaded_model(
        vae=parts["vae"], unet=parts["transformer"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"],
        scheduler_config=dict(parts["scheduler"].config), family="tiny-sd3", spec=f"tiny:sd3:seed={seed}",
        exceptional_token_id=SD_EXCEPTIONAL_TOKEN_ID, image_size=TINY_IMAGE_SIZE, device=device,
        dtype=torch.float32 if dtype is None else dtype,
    )  # fmt: skip
    model.t5_length = TINY_SD3_T5_LENGTH
    return model


def save_tiny_sd3_model(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny model as a ``StableDiffusion3Pipeline`` folder plus ``tficon.json`` (family, token, size,
    T5 rows); ``load_model(directory)`` loads it back."""
    from diffusers import StableDiffusion3Pipeline

    directory = Path(directory)
    StableDiffusion3Pipeline(**tiny_sd3_components(seed)).save_pretrained(directory, safe_serialization=True)
    metadata = {
        "family": "tiny-sd3",
        "exceptional_token_id": SD_EXCEPTIONAL_TOKEN_ID,
        "image_size": TINY_IMAGE_SIZE,
        "t5_length": TINY_SD3_T5_LENGTH,
    }
    (directory / TFICON_JSON).write_text(json.dumps(metadata, indent=2) + "\n")
    return directory

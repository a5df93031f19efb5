"""Write a diffusers Stable Diffusion (1.x, 2.x, XL base) model as one original-layout (LDM / CompVis / Stability)
checkpoint, for tests.

The installed diffusers converts only one way, original -> diffusers (``diffusers.loaders.single_file_utils``,
used by ``from_single_file``). This module is the inverse of exactly those functions: the fixed key pairs
come from the library's own ``DIFFUSERS_TO_LDM_MAPPING``, and each renaming below undoes one step of
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` or
``convert_open_clip_checkpoint``. ``check_round_trip`` runs the library's converters on the result and
requires the original state dicts back, key for key and bit for bit, so a wrong inverse cannot go unnoticed.

Layouts: the UNet under ``model.diffusion_model.`` (SDXL's added-condition MLP as ``label_emb.0``), the VAE
under ``first_stage_model.`` (attention projections as 1x1 convolutions), the text encoder either as SD 1.x's
Hugging Face CLIP under ``cond_stage_model.transformer.`` or as SD 2.x's OpenCLIP under ``cond_stage_model.model.``
(fused q/k/v ``in_proj`` tensors); SDXL base has both, the Hugging Face CLIP under
``conditioner.embedders.0.transformer.`` and the OpenCLIP one, with its ``text_projection`` stored transposed
(``x @ text_projection``), under ``conditioner.embedders.1.model.``.
"""

from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    LDM_UNET_KEY,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)

LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer."
LDM_OPEN_CLIP_PREFIX = "cond_stage_model.model."
# SDXL base (sgm's GeneralConditioner): embedder 0 is CLIP ViT-L, embedder 1 OpenCLIP bigG; the library reads
# the first through LDM_CLIP_PREFIX_TO_REMOVE and the second with this prefix (create_diffusers_clip_model_from_ldm)
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# The library's update_unet_resnet_ldm_to_diffusers renames, reversed (diffusers -> LDM).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# update_vae_attentions_ldm_to_diffusers, reversed.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_module(suffix: str, table: dict[str, str]) -> str:
    """Rename the leading module name(s) of ``suffix`` (e.g. ``conv1.weight``) by ``table``."""
    for new, old in table.items():
        if suffix.startswith(new + "."):
            return old + suffix[len(new) :]
    return suffix


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Inverse of ``convert_ldm_unet_checkpoint`` for an SD or SDXL UNet (``config``: the UNet's config)."""
    per_level = config["layers_per_block"] + 1  # LDM: layers_per_block blocks, then a down/upsampler slot
    mapping = DIFFUSERS_TO_LDM_MAPPING["unet"]
    fixed = dict(mapping["layers"])
    # the embedding MLPs the library reads from label_emb.0, under the same conditions
    if config.get("class_embed_type") in ("timestep", "projection"):
        fixed.update(mapping["class_embed_type"])
    if config.get("addition_embed_type") == "text_time":  # SDXL: pooled text + time ids
        fixed.update(mapping["addition_embed_type"])
    up_has_attention = {i: "CrossAttn" in t for i, t in enumerate(config["up_block_types"])}
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[LDM_UNET_KEY + fixed[key]] = value
            continue
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            name = f"input_blocks.{1 + b * per_level + j}.0.{_rename_module(rest, _UNET_RESNET)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            name = f"input_blocks.{1 + b * per_level + j}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"input_blocks.{1 + int(m[1]) * per_level + per_level - 1}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            name = f"middle_block.{2 * int(m[1])}.{_rename_module(m[2], _UNET_RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            name = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            name = f"output_blocks.{b * per_level + j}.0.{_rename_module(rest, _UNET_RESNET)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, j, rest = int(m[1]), int(m[2]), m[3]
            name = f"output_blocks.{b * per_level + j}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            slot = 2 if up_has_attention[b] else 1  # the upsampler follows the attention when there is one
            name = f"output_blocks.{b * per_level + per_level - 1}.{slot}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet key {key!r}")
        out[LDM_UNET_KEY + name] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Inverse of ``convert_ldm_vae_checkpoint`` (attention projections back to 1x1 convolutions)."""
    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["vae"])
    levels = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[LDM_VAE_PREFIX + fixed[key]] = value
            continue
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"encoder.down.{m[1]}.block.{m[2]}.{_rename_module(m[3], {'conv_shortcut': 'nin_shortcut'})}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            level = levels - 1 - int(m[1])  # LDM numbers the decoder levels from the bottom
            name = f"decoder.up.{level}.block.{m[2]}.{_rename_module(m[3], {'conv_shortcut': 'nin_shortcut'})}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            name = f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_module(m[3], {'conv_shortcut': 'nin_shortcut'})}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            name = f"{m[1]}.mid.attn_1.{_rename_module(m[2], _VAE_ATTENTION)}"
            if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        else:
            raise KeyError(f"no LDM name for VAE key {key!r}")
        out[LDM_VAE_PREFIX + name] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = LDM_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """Inverse of ``convert_ldm_clip_checkpoint``: a Hugging Face CLIP under ``prefix`` (SD 1.x's or SDXL's)."""
    # transformers >= 5.6 flattened CLIPTextModel (no "text_model." level); the checkpoint layout has one
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = LDM_OPEN_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """Inverse of ``convert_open_clip_checkpoint``: the OpenCLIP layout with fused q/k/v under ``prefix``
    (SD 2.x's or SDXL's); a projection (SDXL's second encoder) is stored transposed, as OpenCLIP multiplies by it."""
    # the flattened CLIPTextModel lacks the "text_model." level; CLIPTextModelWithProjection keeps it, and its
    # text_projection sits beside it
    top = ("text_model.", "text_projection.")
    state = {(k if k.startswith(top) else "text_model." + k): v for k, v in state.items()}
    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"])
    renames = [(d, l) for d, l in DIFFUSERS_TO_LDM_MAPPING["openclip"]["transformer"].items() if "final" not in d]
    renames = [(d, l) for d, l in renames if "embeddings" not in d]
    out = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in fixed:
            out[prefix + fixed[key]] = value.T.contiguous() if key == "text_projection.weight" else value
            continue
        if not key.startswith("text_model.encoder.layers."):
            raise KeyError(f"no OpenCLIP name for text encoder key {key!r}")
        name = key
        for diffusers_part, ldm_part in renames:
            name = name.replace(diffusers_part, ldm_part)
        if m := re.fullmatch(r"(.+\.attn)\.([qkv])_proj\.(weight|bias)", name):
            fused.setdefault(f"{m[1]}.in_proj_{m[3]}", {})[m[2]] = value
            continue
        out[prefix + "transformer." + name] = value
    for name, parts in fused.items():
        out[prefix + "transformer." + name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _text_weights(text_encoder) -> dict[str, torch.Tensor]:
    return {k: v for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}  # a buffer


def to_ldm_checkpoint(vae, unet, text_encoder, *, open_clip: bool = False, text_encoder_2=None) -> dict:
    """One original-layout state dict of the modules (contiguous CPU tensors, ready to save).

    ``open_clip``: the one text encoder in SD 2.x's OpenCLIP layout (else SD 1.x's). ``text_encoder_2``: an SDXL
    base checkpoint, ``text_encoder`` as embedder 0 (Hugging Face CLIP) and ``text_encoder_2`` as embedder 1
    (OpenCLIP with projection).
    """
    if text_encoder_2 is not None and open_clip:
        raise ValueError("SDXL's first text encoder is stored as Hugging Face CLIP: open_clip=True does not apply")
    text = _text_weights(text_encoder)
    if text_encoder_2 is not None:
        second = open_clip_to_ldm(_text_weights(text_encoder_2), SDXL_OPEN_CLIP_PREFIX)
        texts = {**clip_to_ldm(text, SDXL_CLIP_PREFIX), **second}
    else:
        texts = open_clip_to_ldm(text) if open_clip else clip_to_ldm(text)
    checkpoint = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config), **texts}
    return {k: v.detach().cpu().contiguous() for k, v in checkpoint.items()}


def check_round_trip(checkpoint: dict, vae, unet, text_encoder, *, open_clip: bool = False, text_encoder_2=None):
    """The library's converters must give back exactly the modules' state dicts (arguments: ``to_ldm_checkpoint``'s)."""

    def same(converted: dict, module, what: str) -> None:
        expected = _text_weights(module) if what.startswith("text") else module.state_dict()
        if what.startswith("text"):
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
            expected = {k.removeprefix("text_model."): v for k, v in expected.items()}
        assert converted.keys() == expected.keys(), (what, sorted(converted.keys() ^ expected.keys())[:5])
        bad = [k for k in expected if not torch.equal(converted[k], expected[k])]
        assert not bad, (what, bad[:5])

    same(convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), unet, "unet")
    same(convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)), vae, "vae")
    if open_clip:
        same(convert_open_clip_checkpoint(text_encoder, checkpoint, prefix=LDM_OPEN_CLIP_PREFIX), text_encoder, "text")
    else:  # the library strips SD 1.x's and SDXL's Hugging Face CLIP prefixes alike
        same(convert_ldm_clip_checkpoint(checkpoint), text_encoder, "text")
    if text_encoder_2 is not None:
        converted = convert_open_clip_checkpoint(text_encoder_2, checkpoint, prefix=SDXL_OPEN_CLIP_PREFIX)
        same(converted, text_encoder_2, "text_encoder_2")

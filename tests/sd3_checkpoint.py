"""Write a diffusers SD3 / SD3.5 model as one original-layout (Stability) single-file checkpoint, for tests.

The installed diffusers converts only original -> diffusers (``convert_sd3_transformer_checkpoint_to_diffusers``
and friends, used by ``from_single_file``). ``sd3_transformer_to_original`` undoes exactly that function: the
transformer under ``model.diffusion_model.`` with fused q/k/v, and the final layers' adaptive-norm (scale, shift)
halves swapped back. The VAE goes under ``first_stage_model.`` (``tests/ldm_checkpoint.vae_to_ldm``), CLIP-L and CLIP-G
as Hugging Face CLIP under ``text_encoders.clip_l.transformer.`` and ``text_encoders.clip_g.transformer.``.
``check_transformer_round_trip`` runs the library's converter on the result and requires the transformer's state
dict back bit for bit.
"""

from __future__ import annotations

import torch
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
from ldm_checkpoint import _text_weights, vae_to_ldm

PREFIX = "model.diffusion_model."
CLIP_PREFIXES = ("text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.")


def _swap_halves(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse (and the same) of diffusers' ``swap_scale_shift``: exchange the two halves along dim 0."""
    first, second = x[:dim], x[dim:]
    return torch.cat([second, first], dim=0)


def sd3_transformer_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Inverse of ``convert_sd3_transformer_checkpoint_to_diffusers``."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    n = int(config["num_layers"])
    width = int(config["caption_projection_dim"])

    def put(original: str, key: str) -> None:
        out[original] = state.pop(key)

    put("pos_embed", "pos_embed.pos_embed")
    put("x_embedder.proj.weight", "pos_embed.proj.weight")
    put("x_embedder.proj.bias", "pos_embed.proj.bias")
    for k, name in (("0", "linear_1"), ("2", "linear_2")):
        for p in ("weight", "bias"):
            put(f"t_embedder.mlp.{k}.{p}", f"time_text_embed.timestep_embedder.{name}.{p}")
            put(f"y_embedder.mlp.{k}.{p}", f"time_text_embed.text_embedder.{name}.{p}")
    for p in ("weight", "bias"):
        put(f"context_embedder.{p}", f"context_embedder.{p}")
    for i in range(n):
        block, last = f"joint_blocks.{i}", i == n - 1
        for p in ("weight", "bias"):
            for stream, names in (("x_block", ("to_q", "to_k", "to_v")),
                                  ("context_block", ("add_q_proj", "add_k_proj", "add_v_proj"))):  # fmt: skip
                out[f"{block}.{stream}.attn.qkv.{p}"] = torch.cat([state.pop(f"transformer_blocks.{i}.attn.{q}.{p}")
                                                                    for q in names])  # fmt: skip
            put(f"{block}.x_block.attn.proj.{p}", f"transformer_blocks.{i}.attn.to_out.0.{p}")
            if not last:
                put(f"{block}.context_block.attn.proj.{p}", f"transformer_blocks.{i}.attn.to_add_out.{p}")
            if f"transformer_blocks.{i}.attn2.to_q.{p}" in state:
                out[f"{block}.x_block.attn2.qkv.{p}"] = torch.cat([state.pop(f"transformer_blocks.{i}.attn2.{q}.{p}")
                                                                    for q in ("to_q", "to_k", "to_v")])  # fmt: skip
                put(f"{block}.x_block.attn2.proj.{p}", f"transformer_blocks.{i}.attn2.to_out.0.{p}")
            put(f"{block}.x_block.adaLN_modulation.1.{p}", f"transformer_blocks.{i}.norm1.linear.{p}")
            context_norm = state.pop(f"transformer_blocks.{i}.norm1_context.linear.{p}")
            out[f"{block}.context_block.adaLN_modulation.1.{p}"] = _swap_halves(context_norm, width) if last else context_norm
            put(f"{block}.x_block.mlp.fc1.{p}", f"transformer_blocks.{i}.ff.net.0.proj.{p}")
            put(f"{block}.x_block.mlp.fc2.{p}", f"transformer_blocks.{i}.ff.net.2.{p}")
            if not last:
                put(f"{block}.context_block.mlp.fc1.{p}", f"transformer_blocks.{i}.ff_context.net.0.proj.{p}")
                put(f"{block}.context_block.mlp.fc2.{p}", f"transformer_blocks.{i}.ff_context.net.2.{p}")
        for attn, stream, names in (("attn", "x_block", ("norm_q", "norm_k")),
                                    ("attn", "context_block", ("norm_added_q", "norm_added_k")),
                                    ("attn2", "x_block", ("norm_q", "norm_k"))):  # fmt: skip
            for ln, name in zip(("ln_q", "ln_k"), names):
                key = f"transformer_blocks.{i}.{attn}.{name}.weight"
                if key in state:
                    put(f"{block}.{stream}.{attn}.{ln}.weight", key)
    for p in ("weight", "bias"):
        put(f"final_layer.linear.{p}", f"proj_out.{p}")
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(state.pop(f"norm_out.linear.{p}"), width)
    if state:
        raise KeyError(f"no original name for transformer keys {sorted(state)[:5]}")
    return {PREFIX + k: v for k, v in out.items()}


def to_sd3_checkpoint(transformer, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """One original-layout state dict of the modules (contiguous CPU tensors, ready to save)."""
    checkpoint = {**sd3_transformer_to_original(transformer.state_dict(), transformer.config),
                  **vae_to_ldm(vae.state_dict(), vae.config)}  # fmt: skip
    for prefix, encoder in zip(CLIP_PREFIXES, (text_encoder, text_encoder_2)):
        for k, v in _text_weights(encoder).items():
            top = k.startswith(("text_model.", "text_projection."))
            checkpoint[prefix + (k if top else "text_model." + k)] = v
    return {k: v.detach().cpu().contiguous() for k, v in checkpoint.items()}


def check_transformer_round_trip(checkpoint: dict, transformer) -> None:
    converted = convert_sd3_transformer_checkpoint_to_diffusers({k: v for k, v in checkpoint.items() if k.startswith(PREFIX)})
    expected = transformer.state_dict()
    assert converted.keys() == expected.keys(), sorted(converted.keys() ^ expected.keys())[:5]
    assert all(torch.equal(converted[k], expected[k]) for k in expected)

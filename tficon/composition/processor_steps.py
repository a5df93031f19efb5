"""The steps every attention processor of tficon shares with diffusers' ``AttnProcessor2_0`` around its attention:
the input side (spatial norm, a (B, C, H, W) input flattened to tokens, group norm), heads split off the projections,
and the output side (heads merged, the output projection and dropout, back to (B, C, H, W), the residual, the
rescale). The processors differ only in the attention between them (``attention.py``: the composite self-attention;
``cross_attention.py``: the region-constrained cross-attention), so these steps have one home; so does their
installation on a model for one block (:func:`installed_processors`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

__all__ = ["installed_processors", "merge_heads_out", "split_heads", "tokens_in"]


def tokens_in(attn, hidden_states: torch.Tensor, temb=None):
    """``(hidden_states as (B, N, C) tokens after the group norm, residual, the input's 4-D shape or None)``."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = None
    if hidden_states.ndim == 4:
        shape = hidden_states.shape
        batch, channels, height, width = shape
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, shape


def split_heads(attn, x: torch.Tensor) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    batch, n, inner = x.shape
    return x.view(batch, n, attn.heads, inner // attn.heads).transpose(1, 2)


def merge_heads_out(attn, out: torch.Tensor, residual: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """(B, heads, N, d) attention output -> the layer's output: heads merged (in ``dtype``), the output projection and
    dropout, back to ``shape`` when the input was 4-D, the residual added, divided by the rescale factor."""
    batch = out.shape[0]
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


@contextmanager
def installed_processors(model, original: dict, layers, make: Callable) -> Iterator[dict]:
    """For the block, ``make(layer, its processor)`` on each of ``layers`` of ``model`` (a UNet or an SD3
    transformer), every other layer keeping its processor; yields ``{layer: processor made}``.

    ``original`` is ``dict(model.attn_processors)``, read once by the caller (a walk of every module: it runs on
    every step). The processors found are always restored, also when the block raises (``set_attn_processor``)."""
    installed, replacement = {}, {}
    for name, processor in original.items():
        layer = name[: -len(".processor")]
        if layer in layers:
            installed[layer] = replacement[name] = make(layer, processor)
        else:
            replacement[name] = processor
    model.set_attn_processor(replacement)
    try:
        yield installed
    finally:
        model.set_attn_processor(original)

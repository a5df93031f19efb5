"""Region-constrained cross-attention (PrimeComposer's RCA) and the record of the object words' cross-attention.

On every cross-attention layer (``attn2``) of a generation-branch evaluation, the object's words (their token
positions, ``tficon.model.token_positions``) may attend only from the queries inside the placed object: in the
conditional row, their logits at every query outside the object's segmentation, taken at the layer's resolution,
are set to minus the largest float, which makes their attention exactly 0 there. The unconditional row, every
other token and every other row are untouched. This is what PrimeComposer's released code writes in its cross-
attention (with its ``--attn_mask`` switch on): a mask over the conditional half, ``-finfo.max`` outside the object
for the marked words' columns (docs/strategies.md §3).

The object's segmentation at a resolution is the composite attention's object index set F (``RegionIndex.fg``:
the reference's object tokens placed in the target box), the same set PrimeComposer builds by striding its
segmentation map to the layer's grid and placing the reference box's crop in the target box.

:class:`ObjectCrossAttention` is a diffusers attention processor for ``attn2`` layers; :func:`object_cross_attention`
installs it for a block and always restores the processors it found. With nothing to do on a call (no cell asks for
the constraint, nothing to record) it hands the call to the processor it replaced, so results are bitwise those of
the stock processor. It also records, for each cell whose layout carries a :class:`CrossAttentionRecord`
(``BatchLayout.attention_records``), the cell's conditional row's attention to given tokens, averaged over heads and
tokens: an (N,) map per layer, nothing N x N (the object mask proposal, ``tficon.composition.mask_proposal``, and the
adaptive background blend, ``tficon.composition.attention_masks``, read it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from tficon.composition.processor_steps import installed_processors, merge_heads_out, split_heads, tokens_in

__all__ = [
    "CrossAttentionRecord",
    "ObjectCrossAttention",
    "cross_attention_layers",
    "keep_mask",
    "object_cross_attention",
    "region_constrained_logits",
]


def cross_attention_layers(processors: dict) -> list[str]:
    """Names (without ``.processor``) of the cross-attention (``attn2``) layers of a UNet's processor mapping."""
    return [name[: -len(".processor")] for name in processors if name.endswith("attn2.processor")]


def keep_mask(n_queries: int, n_keys: int, tokens: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Bool (N, L): True where query i may attend to key token j. False exactly at (i, j) with j one of the object's
    ``tokens`` and query i outside the object (``inside[i]`` False)."""
    keep = torch.ones(n_queries, n_keys, dtype=torch.bool, device=inside.device)
    keep[:, tokens.to(inside.device)] = inside[:, None]
    return keep


def region_constrained_logits(logits: torch.Tensor, tokens: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """PrimeComposer's region constraint on the conditional row's cross-attention logits.

    L'[h, i, j] = -max_float  if j in tokens and not inside[i],  else L[h, i, j]

    logits: (..., N, L); tokens: the object's token positions; inside: (N,) bool, the placed object at this
    resolution. softmax(L') gives the object's tokens exactly 0 outside the object (exp underflows to 0) and
    renormalises the other tokens there; rows of queries inside the object are unchanged.
    """
    keep = keep_mask(logits.shape[-2], logits.shape[-1], tokens, inside.to(logits.device))
    return logits.masked_fill(~keep, -torch.finfo(logits.dtype).max)


@dataclass
class CrossAttentionRecord:
    """What to record of the next calls: the conditional row's cross-attention probabilities to ``tokens``,
    averaged over heads and over the tokens, per layer. ``maps[layer]`` is a list with one (N,) float32 CPU
    tensor per recorded call (N: the layer's query count)."""

    tokens: tuple[int, ...]
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("a cross-attention record needs at least one token position")


class ObjectCrossAttention:
    """diffusers attention processor for ``attn2`` layers: the region constraint and the records (module docstring).

    ``controller``: the step's ``InjectionController`` (its ``layout``: which row is each cell's conditional row,
    the cell's ``object_tokens``, ``attention_records`` and geometry); ``stock``: the processor it replaces, which
    runs every call with nothing to do.
    """

    def __init__(self, controller, layer_name: str, stock):
        self.controller = controller
        self.layer_name = layer_name
        self.stock = stock

    def _cells(self):
        layout = self.controller.layout
        if layout is None:
            return []
        return [cell for cell in (layout if isinstance(layout, tuple) else (layout,)) if cell.cond is not None]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        cells = self._cells()
        constrained = [cell for cell in cells if cell.object_tokens]
        recording = [cell for cell in cells if cell.attention_records]
        if not constrained and not recording:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if encoder_hidden_states is None:
            raise ValueError(f"{self.layer_name}: the object cross-attention processor is for attn2 layers only")
        if attention_mask is not None:
            raise ValueError(f"{self.layer_name}: region-constrained cross-attention takes no encoder attention mask")
        # The steps of diffusers' AttnProcessor2_0 for a cross-attention layer, with the constrained rows redone.
        hidden_states, residual, shape = tokens_in(attn, hidden_states, temb)
        n_queries = hidden_states.shape[1]
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = split_heads(attn, attn.to_q(hidden_states))
        key = split_heads(attn, attn.to_k(encoder_hidden_states))
        value = split_heads(attn, attn.to_v(encoder_hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        n_keys = key.shape[-2]
        for cell in constrained:
            c = cell.cond
            keep = keep_mask(n_queries, n_keys, self._tokens(cell.object_tokens, n_keys), self._inside(cell, n_queries))
            # the default scale, as the stock AttnProcessor2_0 uses for every row; the boolean mask drops the masked
            # logits (-inf in the kernel), which gives the same exact zeros as PrimeComposer's -max_float
            out[c] = F.scaled_dot_product_attention(
                query[c : c + 1], key[c : c + 1], value[c : c + 1], attn_mask=keep[None, None]
            )[0]
        for cell in recording:
            self._record(query, key, cell, n_queries, n_keys)

        return merge_heads_out(attn, out, residual, shape, query.dtype)

    def _tokens(self, tokens, n_keys: int) -> torch.Tensor:
        if max(tokens) >= n_keys:
            raise ValueError(f"{self.layer_name}: object token {max(tokens)} is past the {n_keys} text tokens")
        return torch.tensor(tokens, dtype=torch.long)

    def _inside(self, cell, n_queries: int) -> torch.Tensor:
        """Bool (N,): the placed object (the composite's index set F) at this layer's resolution."""
        geometry = cell.geometry if cell.geometry is not None else self.controller
        regions = geometry.regions(n_queries)
        device = regions.fg.device
        inside = torch.zeros(n_queries, dtype=torch.bool, device=device)
        inside[regions.fg] = True
        return inside

    def _record(self, query, key, cell, n_queries: int, n_keys: int) -> None:
        """The cell's conditional row's probabilities to each record's tokens, head- and token-mean, (N,) float32 on
        the CPU (the same logits as the output, constraint included; N x L, never N x N)."""
        c = cell.cond
        scale = query.shape[-1] ** -0.5  # SDPA's default, which the output used
        logits = (query[c].float() @ key[c].float().transpose(-1, -2)) * scale  # (heads, N, L)
        if cell.object_tokens:
            tokens = self._tokens(cell.object_tokens, n_keys)
            logits = region_constrained_logits(logits, tokens, self._inside(cell, n_queries).to(logits.device))
        probs = torch.softmax(logits, -1)
        for record in cell.attention_records:
            wanted = self._tokens(record.tokens, n_keys).to(logits.device)
            record.maps.setdefault(self.layer_name, []).append(probs[..., wanted].mean(0).mean(-1).cpu())


@contextmanager
def object_cross_attention(
    unet, controller, *, active: bool = True
) -> Iterator[dict[str, ObjectCrossAttention]]:
    """Install :class:`ObjectCrossAttention` on every ``attn2`` layer of ``unet`` for the block, when ``active``
    (else leave the UNet as it is: a step whose plan asks for no constraint and nothing to record). The processors
    found are always restored, also when the block raises."""
    if not active:
        yield {}
        return
    original = dict(unet.attn_processors)
    make = lambda layer, stock: ObjectCrossAttention(controller, layer, stock)  # noqa: E731
    with installed_processors(unet, original, set(cross_attention_layers(original)), make) as installed:
        yield installed

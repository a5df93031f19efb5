"""The composite self-attention of TF-ICON as a diffusers attention processor.

One batched UNet call carries every branch a denoising step needs (tficon-algorithm.md 13.2); a
``BatchLayout`` says which batch row plays which role:

- ``orig``   reconstruction of the inverted background (plain attention; its logits feed the composite),
- ``ref``    reconstruction of the inverted reference (plain; its object x object block feeds the composite),
- ``pseudo`` the pseudo-cross pass: the reference latent with every self-attention restricted to its own
             object tokens (its query x object-key logits feed the rows and columns of the composite),
- ``uncond`` / ``cond`` the generation branch's CFG halves; ``cond`` gets the composite when injection is on.

The processor is installed on ``attn1`` (self-attention) layers only; cross-attention keeps its stock
processor. All rows first go through one ordinary SDPA call, so with no injection the output equals
diffusers' ``AttnProcessor2_0``; only the ``pseudo`` and (injected) ``cond`` rows are then recomputed.
Nothing N x N survives the layer: the composite logits are built, used and dropped.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

ROLES = ("orig", "ref", "pseudo", "uncond", "cond")

# Names of the attention maps that can be captured for display, and the row each comes from.
CAPTURE_KINDS = {
    "composite": "cond",  # what gen's conditional row actually attends with (injected when on)
    "generation": "cond",  # gen's own, un-injected attention
    "background": "orig",
    "reference": "ref",
    "pseudo_cross": "pseudo",  # keys scattered back to their reference-grid positions
}


@dataclass(frozen=True)
class BatchLayout:
    """Which batch row plays which role in one UNet call (None: the role is absent).

    ``fg`` injects the pseudo-cross and reference logits into the ``cond`` row, ``bg`` injects the
    ``orig`` logits outside the box (tficon-algorithm.md section 9).
    """

    orig: int | None = None
    ref: int | None = None
    pseudo: int | None = None
    uncond: int | None = None
    cond: int | None = None
    fg: bool = False
    bg: bool = False
    background_queries: bool = False  # pseudo-cross logits from orig's queries (not official)

    def __post_init__(self) -> None:
        if self.fg and None in (self.ref, self.pseudo, self.cond):
            raise ValueError("foreground injection needs the ref, pseudo and cond rows in the batch")
        if self.fg and self.background_queries and self.orig is None:
            raise ValueError("background queries need the orig row in the batch")
        if self.bg and None in (self.orig, self.cond):
            raise ValueError("background injection needs the orig and cond rows in the batch")

    def row(self, role: str) -> int | None:
        return getattr(self, role)


@dataclass
class CaptureRequest:
    """Which attention maps to keep from the next UNet call, and how small.

    Maps are averaged over heads and pooled so that each side has at most ``max_tokens`` positions,
    then stored as float32 on the CPU. ``layers`` None means every self-attention layer. At most
    ``max_bytes`` are kept in all; maps past the budget are dropped and counted in
    ``InjectionController.dropped`` (pool harder or ask for fewer layers/kinds to get them).
    """

    kinds: tuple[str, ...] = ("composite", "background", "reference", "pseudo_cross", "generation")
    layers: frozenset[str] | None = None
    max_tokens: int = 1024
    max_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(CAPTURE_KINDS))
        if unknown:
            raise ValueError(f"unknown attention kinds {unknown}; choose from {sorted(CAPTURE_KINDS)}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {self.max_bytes}")


@dataclass
class InjectionController:
    """State shared by all composite processors of one UNet, set by the Session before each call.

    ``region_fn(h, w)`` returns the ``RegionIndex`` (tficon.placement) of an attention resolution; it is
    called once per resolution and cached, so index sets are precomputed tensors.
    """

    latent_size: tuple[int, int]
    region_fn: Callable[[int, int], object]
    layout: BatchLayout | None = None
    capture: CaptureRequest | None = None
    captured: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    dropped: int = 0  # maps not kept because the capture's byte budget was spent
    _regions: dict[tuple[int, int], object] = field(default_factory=dict)
    _masks: dict[tuple[int, int, str], torch.Tensor] = field(default_factory=dict)

    def resolution(self, n_tokens: int) -> tuple[int, int]:
        """The (h, w) grid of a layer with ``n_tokens`` tokens (its downsampling factor is a power of 2)."""
        lh, lw = self.latent_size
        factor = math.isqrt(lh * lw // n_tokens)
        if factor < 1 or (lh // factor) * (lw // factor) != n_tokens:
            raise ValueError(f"cannot map {n_tokens} tokens onto the latent grid {lh}x{lw}")
        return lh // factor, lw // factor

    def regions(self, n_tokens: int):
        hw = self.resolution(n_tokens)
        if hw not in self._regions:
            self._regions[hw] = self.region_fn(*hw)
        return self._regions[hw]

    def outside_box(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """Bool (N,) mask of the tokens outside the target box at this resolution (cached per device)."""
        hw = self.resolution(n_tokens)
        key = (*hw, str(device))
        if key not in self._masks:
            mask = torch.ones(n_tokens, dtype=torch.bool)
            mask[self.regions(n_tokens).box] = False
            self._masks[key] = mask.to(device)
        return self._masks[key]


def _pool_map(probs: torch.Tensor, hw: tuple[int, int], max_tokens: int) -> torch.Tensor:
    """Pool a (Nq, Nk) map over its (h, w) grid until each side has <= max_tokens.

    Queries are averaged and keys summed, so every row stays a probability distribution.
    """
    h, w = hw
    factor = 1
    while (h // factor) * (w // factor) > max_tokens and h % (factor * 2) == 0 and w % (factor * 2) == 0:
        factor *= 2
    if factor == 1:
        return probs
    hq, wq = h // factor, w // factor
    nk = probs.shape[-1]
    pooled_q = F.avg_pool2d(probs.T.reshape(nk, 1, h, w), factor).reshape(nk, hq * wq).T
    pooled = F.avg_pool2d(pooled_q.reshape(hq * wq, 1, h, w), factor) * factor**2
    return pooled.reshape(hq * wq, hq * wq)


class CompositeSelfAttention:
    """diffusers attention processor for ``attn1`` layers that builds TF-ICON's composite self-attention.

    With no layout set (a call outside a Session step) it behaves exactly like ``AttnProcessor2_0``.
    """

    def __init__(self, controller: InjectionController, layer_name: str):
        self.controller = controller
        self.layer_name = layer_name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.layer_name}: the composite processor is for self-attention (attn1) layers only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, n_tokens, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n_tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = (self._heads(attn, proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        layout = self.controller.layout
        if layout is not None:
            out = self._special_rows(attn, query, key, value, out, layout, n_tokens)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    @staticmethod
    def _heads(attn, x: torch.Tensor) -> torch.Tensor:
        batch, n, inner = x.shape
        return x.view(batch, n, attn.heads, inner // attn.heads).transpose(1, 2)

    def _capture_wanted(self, kind: str, layout: BatchLayout) -> bool:
        request = self.controller.capture
        return (
            request is not None
            and kind in request.kinds
            and (request.layers is None or self.layer_name in request.layers)
            and layout.row(CAPTURE_KINDS[kind]) is not None
        )

    def _store(self, kind: str, probs: torch.Tensor, n_tokens: int) -> None:
        """Keep the head-mean of (heads, N, N) probabilities, pooled, on the CPU."""
        controller = self.controller
        mean = probs.float().mean(0)
        pooled = _pool_map(mean, controller.resolution(n_tokens), controller.capture.max_tokens)
        used = sum(m.numel() * m.element_size() for m in controller.captured.values())
        if used + pooled.numel() * pooled.element_size() > controller.capture.max_bytes:
            controller.dropped += 1
            return
        controller.captured[(self.layer_name, kind)] = pooled.cpu()

    def _special_rows(self, attn, query, key, value, out, layout: BatchLayout, n_tokens: int) -> torch.Tensor:
        regions = self.controller.regions(n_tokens)
        scale = attn.scale
        out = out.clone()

        for kind, role in (("background", "orig"), ("reference", "ref")):
            if self._capture_wanted(kind, layout):
                row = layout.row(role)
                self._store(kind, torch.softmax((query[row] @ key[row].transpose(-1, -2)).float() * scale, -1), n_tokens)

        if layout.pseudo is not None:
            # Keys and values restricted to the reference's own object tokens (the whole reference box
            # when this resolution has none); queries at every position (tficon-algorithm.md 8.3).
            p = layout.pseudo
            keep = regions.fg_ref if regions.fg_ref.numel() > 0 else regions.ref_box
            keep = keep.to(query.device)
            logits = (query[p] @ key[p][:, keep].transpose(-1, -2)).float() * scale
            probs = torch.softmax(logits, -1)
            out[p] = (probs @ value[p][:, keep].float()).to(out.dtype)
            if self._capture_wanted("pseudo_cross", layout):
                full = probs.new_zeros(probs.shape[0], n_tokens, n_tokens)
                full[:, :, keep] = probs
                self._store("pseudo_cross", full, n_tokens)

        c = layout.cond
        if c is None:
            return out
        inject = layout.bg or (layout.fg and regions.fg.numel() > 0)
        want_generation = self._capture_wanted("generation", layout)
        if not (inject or want_generation or self._capture_wanted("composite", layout)):
            return out

        own = (query[c] @ key[c].transpose(-1, -2)).float() * scale
        if want_generation:
            self._store("generation", torch.softmax(own, -1), n_tokens)
        logits = composite_logits(
            own,
            query=query,
            key=key,
            layout=layout,
            regions=regions,
            outside=self.controller.outside_box(n_tokens, query.device),
            scale=scale,
        ) if inject else own
        probs = torch.softmax(logits, -1)
        if self._capture_wanted("composite", layout):
            self._store("composite", probs, n_tokens)
        if inject:
            out[c] = (probs @ value[c].float()).to(out.dtype)
        return out


def composite_logits(own, *, query, key, layout: BatchLayout, regions, outside, scale: float) -> torch.Tensor:
    """The composite pre-softmax logits of the ``cond`` row (tficon-algorithm.md section 9), float32.

    Assignment order as in the official code, later writes win: the gen row's own logits; the
    background block (query and key both outside the box) from ``orig``; every key column of an
    object token from the pseudo-cross map C; every query row of an object token from C transposed;
    the object x object block from ``ref``. Query i of gen is matched to reference-grid position i
    with no translation, exactly as the official code does. With ``layout.background_queries`` the map C
    takes orig's query i instead of the pseudo-cross row's (our reading of the paper).

    own: (heads, N, N), float32 or wider: every source is computed in its dtype; query/key: (batch, heads, N, d); outside: (N,) bool.
    """
    logits = own
    if layout.bg:
        o = layout.orig
        background = (query[o] @ key[o].transpose(-1, -2)).to(own.dtype) * scale
        logits = torch.where(outside[:, None] & outside[None, :], background, logits)
    fg_target = regions.fg.to(query.device)
    if layout.fg and fg_target.numel() > 0:
        fg_ref = regions.fg_ref.to(query.device)
        p, r = layout.pseudo, layout.ref
        asking = query[layout.orig] if layout.background_queries else query[p]
        cross = (asking @ key[p][:, fg_ref].transpose(-1, -2)).to(own.dtype) * scale  # (heads, N, |F|)
        logits = logits.clone() if logits is own else logits
        logits[:, :, fg_target] = cross
        logits[:, fg_target, :] = cross.transpose(-1, -2)
        obj = (query[r][:, fg_ref] @ key[r][:, fg_ref].transpose(-1, -2)).to(own.dtype) * scale  # (heads, |F|, |F|)
        logits[:, fg_target[:, None], fg_target[None, :]] = obj
    return logits


def self_attention_layers(unet) -> list[str]:
    """Names (without ``.processor``) of the UNet's self-attention layers, in execution order."""
    return [name[: -len(".processor")] for name in unet.attn_processors if name.endswith("attn1.processor")]


@contextmanager
def composite_attention(unet, controller: InjectionController) -> Iterator[dict[str, CompositeSelfAttention]]:
    """Install ``CompositeSelfAttention`` on every ``attn1`` layer for the duration of the block.

    Cross-attention layers keep whatever processor they had; the original processors are always
    restored, also when the block raises.
    """
    original = dict(unet.attn_processors)
    installed = {}
    replacement = {}
    for name, processor in original.items():
        if name.endswith("attn1.processor"):
            installed[name[: -len(".processor")]] = replacement[name] = CompositeSelfAttention(
                controller, name[: -len(".processor")]
            )
        else:
            replacement[name] = processor
    unet.set_attn_processor(replacement)
    try:
        yield installed
    finally:
        unet.set_attn_processor(original)

"""The composite self-attention of TF-ICON as a diffusers attention processor.

One batched UNet call carries every branch a denoising step needs (docs/algorithm.md §13.2); a
``BatchLayout`` says which batch row plays which role:

- ``background``   reconstruction of the inverted background (plain attention; its logits feed the composite),
- ``reference``    reconstruction of the inverted reference (plain; its object x object block feeds the composite),
- ``pseudo_cross`` the pseudo-cross pass: the reference latent with every self-attention restricted to its own
             object tokens (its query x object-key logits feed the rows and columns of the composite),
- ``uncond`` / ``cond`` the generation branch's CFG halves; ``cond`` gets the composite when injection is on.

The processor is installed on ``attn1`` (self-attention) layers only; cross-attention keeps its stock
processor. Rows with plain attention go through one ordinary SDPA call, so with no injection the output
equals diffusers' ``AttnProcessor2_0``. The ``pseudo_cross`` row and the injected ``cond`` row are left out of
that call and computed by fused SDPA calls of their own: the composite is expressed as attention over
concatenated, zero-padded query/key vectors (:func:`fused_composite_attention`), so nothing N x N is
materialised, in any dtype. Only an explicit ``CaptureRequest`` builds maps, for display.

Several cells in one call (``tficon.composition.runner``): ``InjectionController.layout`` may also be a tuple of
``BatchLayout``s, one per cell, with absolute row indices into the one batch, each carrying the ``geometry`` (the
cell's own controller: its box and object at every resolution) that its composite reads. The plain rows of every
cell still go through one SDPA call; each cell's ``pseudo_cross`` and injected ``cond`` rows get their own fused
calls with that cell's regions. Two layouts may name the same plain row (a background row shared by cells with the
same background latent), never the same replaced row.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from tficon.composition.attention_backend import Attend, sdpa
from tficon.composition.processor_steps import installed_processors, merge_heads_out, split_heads, tokens_in
from tficon.composition.tigic_attention import fused_mixed_attention, mixed_logits
from tficon.core.tigic import mixing_weights
from tficon.model.families.base import self_attention_layers

ROLES = ("background", "reference", "pseudo_cross", "uncond", "cond")

# Names of the attention maps that can be captured for display, and the row each comes from.
CAPTURE_KINDS = {
    "composite": "cond",  # what the generation branch's conditional row actually attends with (injected when on)
    "generation": "cond",  # the generation branch's own, un-injected attention
    "background": "background",
    "reference": "reference",
    "pseudo_cross": "pseudo_cross",  # keys scattered back to their reference-grid positions
}


@dataclass(frozen=True)
class BatchLayout:
    """Which batch row plays which role in one UNet call (None: the role is absent).

    ``fg`` injects the pseudo-cross and reference logits into the ``cond`` row, ``bg`` injects the
    ``background`` logits outside the box (docs/algorithm.md §9).
    """

    background: int | None = None
    reference: int | None = None
    pseudo_cross: int | None = None
    uncond: int | None = None
    cond: int | None = None
    fg: bool = False
    bg: bool = False
    background_queries: bool = False  # pseudo-cross logits from the background row's queries (not official)
    # fg also sets the object x object block from the reference row (TF-ICON); False: the pseudo-cross rows and
    # columns only, the F x F block then holding the column injection (PrimeComposer's released code)
    object_block: bool = True
    # TIGIC's logit mixes (``tficon.composition.tigic_attention``): the cond row's whole pre-softmax map mixed 50/50
    # with the background row's, then with the reference row's, in the ``inject_layers`` (strategy "tigic")
    mix_background: bool = False
    mix_reference: bool = False
    # The self-attention layers whose cond row takes the composite (None: every layer, the official case); the
    # plan decides it (``StepPlan.inject_layers``), the other layers run plain attention on this cell's rows.
    inject_layers: frozenset[str] | None = None
    # The object's token positions whose cross-attention the cond row confines to the placed object on this call
    # (``tficon.composition.cross_attention``; empty: no constraint).
    object_tokens: tuple[int, ...] = ()
    # Records of the cond row's cross-attention to some tokens, filled by the call (``CrossAttentionRecord``s).
    attention_records: tuple = field(default=(), compare=False, repr=False)
    # The controller whose region geometry this layout's rows read (None: the processor's own controller). Set
    # per cell when several cells share one call, since each may have its own box.
    geometry: "InjectionController | None" = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.fg and None in (self.pseudo_cross, self.cond):
            raise ValueError("foreground injection needs the pseudo_cross and cond rows in the batch")
        if self.fg and self.object_block and self.reference is None:
            raise ValueError("foreground injection needs the reference, pseudo_cross and cond rows in the batch")
        if self.fg and self.background_queries and self.background is None:
            raise ValueError("background queries need the background row in the batch")
        if self.bg and None in (self.background, self.cond):
            raise ValueError("background injection needs the background and cond rows in the batch")
        if self.mix_background and None in (self.background, self.cond):
            raise ValueError("the background logit mix needs the background and cond rows in the batch")
        if self.mix_reference and None in (self.reference, self.cond):
            raise ValueError("the reference logit mix needs the reference and cond rows in the batch")

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

    ``region_fn(h, w)`` returns the ``RegionIndex`` (tficon.core.placement) of an attention resolution; it is
    called once per resolution and cached, so index sets are precomputed tensors. ``layout`` is one
    ``BatchLayout``, or a tuple of them for a call that holds several cells (module docstring).
    """

    latent_size: tuple[int, int]
    region_fn: Callable[[int, int], object]
    layout: BatchLayout | tuple[BatchLayout, ...] | None = None
    capture: CaptureRequest | None = None
    captured: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    dropped: int = 0  # maps not kept because the capture's byte budget was spent
    _regions: dict[tuple[int, int], object] = field(default_factory=dict)
    _masks: dict[tuple[int, int, str], torch.Tensor] = field(default_factory=dict)
    _row_groups: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: the attention kernel every processor of the call uses (``tficon.composition.attention_backend``; the Session's
    #: ``attention_backend``): PyTorch's SDPA by default
    attend: Attend = field(default=sdpa, compare=False, repr=False)

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

    def row_groups(self, n_tokens: int, device: torch.device, *, fg_on: bool, bg: bool):
        """The fused composite's query groups at this resolution (:func:`fused_composite_attention`): the long indices
        of the ``cond`` row's queries that read the background block (outside the box, with ``bg``) and of those that
        read the generation's own keys (neither the object, with ``fg_on``, nor the background block's).

        They depend on the placement alone, so they are built once per resolution (all four cases), on the CPU, and
        moved to ``device``: a step then reads nothing back from the device (``nonzero`` on a GPU tensor waits for its
        queue).
        """
        hw = self.resolution(n_tokens)
        key = (*hw, str(device), fg_on, bg)
        if key not in self._row_groups:  # every case of this resolution at once: later steps switch cases
            regions = self.regions(n_tokens)
            outside = torch.ones(n_tokens, dtype=torch.bool)
            outside[regions.box.cpu()] = False
            for with_fg in (False, True):
                in_f = torch.zeros(n_tokens, dtype=torch.bool)
                if with_fg:
                    in_f[regions.fg.cpu()] = True
                for with_bg in (False, True):
                    from_background = outside & ~in_f if with_bg else torch.zeros_like(in_f)
                    rows_gen = ~in_f & ~from_background
                    self._row_groups[(*hw, str(device), with_fg, with_bg)] = (
                        from_background.nonzero().squeeze(1).to(device), rows_gen.nonzero().squeeze(1).to(device)
                    )
        return self._row_groups[key]


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

    With no layout set (a call outside a Session step), or a layout whose rows all run plain attention,
    it behaves exactly like ``AttnProcessor2_0`` (one SDPA call over the whole batch). Otherwise the
    rows whose output is replaced (``pseudo_cross``, and ``cond`` when injected) are left out of the plain
    SDPA call, the ``pseudo_cross`` row attends over its object keys only, and the ``cond`` row gets
    :func:`fused_composite_attention`. Nothing N x N is built, except the maps a ``CaptureRequest``
    asks for (display only; they never feed the output, so a capture leaves the result unchanged).
    """

    def __init__(self, controller: InjectionController, layer_name: str):
        self.controller = controller
        self.layer_name = layer_name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.layer_name}: the composite processor is for self-attention (attn1) layers only")
        hidden_states, residual, shape = tokens_in(attn, hidden_states, temb)
        batch, n_tokens, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n_tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        query, key, value = (split_heads(attn, proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        layout = self.controller.layout
        if layout is None:
            out = self.controller.attend(query, key, value, attn_mask=attention_mask)
        else:
            out = self._attend(attn, query, key, value, attention_mask, layout, n_tokens)
            self._capture(attn, query, key, layout, n_tokens)

        return merge_heads_out(attn, out, residual, shape, query.dtype)

    def _attend(self, attn, query, key, value, attention_mask, layout, n_tokens: int) -> torch.Tensor:
        cells = []  # (layout, geometry, regions, inject) per cell of the call
        replaced: set[int] = set()
        for cell in layout if isinstance(layout, tuple) else (layout,):
            geometry = cell.geometry if cell.geometry is not None else self.controller
            regions = geometry.regions(n_tokens)
            c = cell.cond
            inject = c is not None and (cell.bg or (cell.fg and regions.fg.numel() > 0)) and self._injected(cell)
            mix = c is not None and (cell.mix_background or cell.mix_reference) and self._injected(cell)
            mine = {row for row in (cell.pseudo_cross, c if inject or mix else None) if row is not None}
            if mine & replaced:
                clash = sorted(mine & replaced)
                raise ValueError(f"{self.layer_name}: two cells of one call replace the same batch rows {clash}")
            replaced |= mine
            cells.append((cell, geometry, regions, inject, mix))
        if not replaced:
            # Same call as AttnProcessor2_0, so un-injected steps are bitwise those of the stock processor.
            return self.controller.attend(query, key, value, attn_mask=attention_mask)

        batch = query.shape[0]
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        plain = [row for row in range(batch) if row not in replaced]
        if plain:
            rows = torch.tensor(plain, device=query.device)
            mask = None if attention_mask is None else attention_mask.index_select(0, rows)
            out[rows] = self.controller.attend(
                query.index_select(0, rows), key.index_select(0, rows), value.index_select(0, rows), attn_mask=mask
            )
        for cell, geometry, regions, inject, mix in cells:
            if mix:  # TIGIC: the cond row's whole map mixed with the background's and the reference's
                out[cell.cond] = fused_mixed_attention(
                    query, key, value, rows=(cell.cond, cell.background, cell.reference),
                    weights=mixing_weights(cell.mix_background, cell.mix_reference), scale=attn.scale,
                    kernel=self.controller.attend,
                )  # fmt: skip
            if cell.pseudo_cross is not None:
                # Keys and values restricted to the reference's own object tokens (the whole reference box
                # when this resolution has none); queries at every position (docs/algorithm.md §8.3).
                p = cell.pseudo_cross
                keep = self._pseudo_keys(regions, query.device)
                out[p] = self.controller.attend(
                    query[p : p + 1], key[p : p + 1, :, keep], value[p : p + 1, :, keep], scale=attn.scale
                )[0]
            if inject:
                fg_on = cell.fg and regions.fg.numel() > 0
                out[cell.cond] = fused_composite_attention(
                    query, key, value, layout=cell, regions=regions,
                    outside=geometry.outside_box(n_tokens, query.device), scale=attn.scale,
                    rows=geometry.row_groups(n_tokens, query.device, fg_on=fg_on, bg=cell.bg),
                    kernel=self.controller.attend,
                )  # fmt: skip
        return out

    def _injected(self, layout: BatchLayout) -> bool:
        """Whether this layer is one of the layout's injected layers (``BatchLayout.inject_layers``)."""
        return layout.inject_layers is None or self.layer_name in layout.inject_layers

    @staticmethod
    def _pseudo_keys(regions, device) -> torch.Tensor:
        keep = regions.fg_ref if regions.fg_ref.numel() > 0 else regions.ref_box
        return keep.to(device)

    # ------------------------------------------------------------------ capture (display only)
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

    def _capture(self, attn, query, key, layout: BatchLayout, n_tokens: int) -> None:
        """Materialise the requested maps, in float32, from the same queries and keys the output used.

        The only place where N x N maps exist, one at a time, and only for a ``CaptureRequest``.
        """
        if self.controller.capture is None:
            return
        if isinstance(layout, tuple):
            raise ValueError("attention capture needs a call of one cell; a multi-cell call cannot capture")
        scale = attn.scale
        regions = self.controller.regions(n_tokens)
        query, key = query.float(), key.float()

        def logits(q_row: int, k_row: int) -> torch.Tensor:
            return query[q_row] @ key[k_row].transpose(-1, -2) * scale

        for kind, role in (("background", "background"), ("reference", "reference")):
            if self._capture_wanted(kind, layout):
                row = layout.row(role)
                self._store(kind, torch.softmax(logits(row, row), -1), n_tokens)
        if self._capture_wanted("pseudo_cross", layout):
            p = layout.pseudo_cross
            keep = self._pseudo_keys(regions, query.device)
            probs = torch.softmax(query[p] @ key[p][:, keep].transpose(-1, -2) * scale, -1)
            full = probs.new_zeros(probs.shape[0], n_tokens, n_tokens)
            full[:, :, keep] = probs  # keys scattered back to their reference-grid positions
            self._store("pseudo_cross", full, n_tokens)
            del full, probs
        want_generation = self._capture_wanted("generation", layout)
        want_composite = self._capture_wanted("composite", layout)
        if not (want_generation or want_composite):
            return
        c = layout.cond
        own = logits(c, c)
        if want_generation:
            self._store("generation", torch.softmax(own, -1), n_tokens)
        if want_composite:
            inject = (layout.bg or (layout.fg and regions.fg.numel() > 0)) and self._injected(layout)
            if (layout.mix_background or layout.mix_reference) and self._injected(layout):
                own = mixed_logits(
                    query, key, rows=(c, layout.background, layout.reference),
                    weights=mixing_weights(layout.mix_background, layout.mix_reference), scale=scale,
                )  # fmt: skip
            composite = composite_logits(
                own, query=query, key=key, layout=layout, regions=regions,
                outside=self.controller.outside_box(n_tokens, query.device), scale=scale,
            ) if inject else own
            self._store("composite", torch.softmax(composite, -1), n_tokens)


class CompositeSets(NamedTuple):
    """The index sets of one ``cond`` row's composite at one resolution, shared by the fused UNet and joint paths."""

    fg_on: bool  # foreground injection on and the object present at this resolution
    fg: torch.Tensor | None  # F: the object's positions in the generation grid (None when fg_on is False)
    fg_ref: torch.Tensor | None  # R: the same positions in the reference grid
    in_f: torch.Tensor  # (N,) bool: in F
    from_background: torch.Tensor  # (N,) bool: the background block's rows and keys (outside the box, bg on)
    from_gen: torch.Tensor  # (N,) bool: the generation's own keys
    rows_background: torch.Tensor  # long indices of from_background's rows
    rows_gen: torch.Tensor  # long indices of the rows that read the generation's own keys (not F, not the O block)


def composite_sets(layout: BatchLayout, regions, outside: torch.Tensor, n: int, device, rows=None) -> CompositeSets:
    """:class:`CompositeSets` of ``layout`` at a resolution of ``n`` tokens; ``rows`` (rows_background, rows_gen) as
    ``InjectionController.row_groups`` caches them, or None to derive them here (one host read each)."""
    fg_on = bool(layout.fg and regions.fg.numel() > 0)
    in_f = torch.zeros(n, dtype=torch.bool, device=device)
    fg = fg_ref = None
    if fg_on:
        fg, fg_ref = regions.fg.to(device), regions.fg_ref.to(device)
        in_f[fg] = True
    outside = outside.to(device)
    from_background = outside & ~in_f if layout.bg else torch.zeros_like(in_f)
    from_gen = ~in_f & ~from_background
    if rows is None:
        rows = from_background.nonzero().squeeze(1), from_gen.nonzero().squeeze(1)
    return CompositeSets(fg_on, fg, fg_ref, in_f, from_background, from_gen, *rows)


def fused_composite_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    layout: BatchLayout,
    regions,
    outside,
    scale: float,
    rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    kernel: Attend = sdpa,
) -> torch.Tensor:
    """The ``cond`` row's composite self-attention output, softmax(L) V_gen, without building L.

    Every entry of the composite logits L (see :func:`composite_logits` for its definition) is the dot
    product of one query vector and one key vector taken from some branch. Rows of the same kind take
    their keys from the same branches, so each row group gets one concatenated query and every key a
    concatenation with zeros in the segments that do not apply to it; the zeros add exact zeros, and a
    fused ``scaled_dot_product_attention`` computes the group's rows in O(N d) memory. With
    A = the pseudo_cross row's queries (the background row's with ``background_queries``), P/O/R/G =
    pseudo_cross/background/reference/cond rows:

    ================================  ==========================  ==============================================
    row group                         query                       key j
    ================================  ==========================  ==============================================
    i = F[a] (object)                 [k_P(R[a]), q_R(R[a])]      j = F[b]: [0, k_R(R[b])]; else [A(j), 0]
    i outside the box, bg on          [A(i), q_O(i), q_G(i)]      F[b]: [k_P(R[b]),0,0]; outside: [0,k_O(j),0];
                                                                  in the box: [0, 0, k_G(j)]
    every other i                     [A(i), q_G(i)]              j = F[b]: [k_P(R[b]), 0]; else [0, k_G(j)]
    ================================  ==========================  ==============================================

    The A / k_P segments are dropped when foreground injection is off or |F| = 0 at this layer. Without the object
    block (``layout.object_block`` False) the object rows are [k_P(R[a])] against [A(j)] for every key j. Values
    are always gen's own, zero-padded to the query width because the CPU's fused kernel needs equal
    widths (with unequal widths it falls back to one that builds the N x N matrix).

    Precision: queries, keys and values stay in the model's dtype. The fused kernels (CPU and CUDA)
    accumulate the dot products and the softmax in float32 and round only the output to the model's
    dtype, so no logit is ever rounded to half precision; the official code rounds its logits to
    float16 before a float32 softmax. Widening the inputs to float32 would buy no agreement (their
    values are already rounded) and would double the kernel's memory, so it is not done. The tests
    bound float16/bfloat16 against a float32 transcription.

    query/key/value: (batch, heads, N, d); outside: (N,) bool. ``rows``: the row groups (background block's, gen's
    own) as ``InjectionController.row_groups`` caches them; None computes them here (one host read each). ``kernel``:
    the attention kernel (``tficon.composition.attention_backend``; default PyTorch's SDPA).
    Returns (heads, N, d_v) in value's dtype.
    """
    c = layout.cond
    q_gen, k_gen, v_gen = query[c], key[c], value[c]
    heads, n, d_v = v_gen.shape
    device = q_gen.device
    zero = torch.zeros((), dtype=k_gen.dtype, device=device)
    fg_on, fg, fg_ref, in_f, from_background, from_gen, rows_background, rows_gen = composite_sets(
        layout, regions, outside, n, device, rows
    )
    if fg_on:
        q_ask = query[layout.background] if layout.background_queries else query[layout.pseudo_cross]
        k_pseudo = key[layout.pseudo_cross]

    def masked(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.where(keep[:, None], x, zero)

    def at_f(x: torch.Tensor) -> torch.Tensor:
        """(heads, N, d) holding x[:, R[b]] at position F[b] and zeros elsewhere."""
        placed = torch.zeros_like(k_gen)
        placed[:, fg] = x[:, fg_ref]
        return placed

    out = v_gen.new_empty(heads, n, d_v)

    def attend(rows: torch.Tensor, queries: list[torch.Tensor], keys: list[torch.Tensor]) -> None:
        """out[:, rows] = SDPA over the concatenated segments; queries are (heads, len(rows), d) each."""
        if rows.numel() == 0:
            return
        q, k = torch.cat(queries, -1), torch.cat(keys, -1)
        v = v_gen if q.shape[-1] == d_v else torch.cat([v_gen, v_gen.new_zeros(heads, n, q.shape[-1] - d_v)], -1)
        out[:, rows] = kernel(q[None], k[None], v[None], scale=scale)[0, ..., :d_v]

    if fg_on:
        k_obj = at_f(k_pseudo)
        if layout.object_block:
            # Object rows F[a]: C transposed (query k_P(R[a]) against the asking queries), then ref's object block.
            q_ref, k_ref = query[layout.reference], key[layout.reference]
            attend(fg, [k_pseudo[:, fg_ref], q_ref[:, fg_ref]], [masked(q_ask, ~in_f), at_f(k_ref)])
        else:  # C transposed on the whole row, the F x F block included
            attend(fg, [k_pseudo[:, fg_ref]], [q_ask])
        attend(
            rows_background,
            [q_ask[:, rows_background], query[layout.background][:, rows_background], q_gen[:, rows_background]],
            [k_obj, masked(key[layout.background], from_background), masked(k_gen, from_gen)],
        )
        attend(rows_gen, [q_ask[:, rows_gen], q_gen[:, rows_gen]], [k_obj, masked(k_gen, ~in_f)])
    else:
        attend(
            rows_background,
            [query[layout.background][:, rows_background], q_gen[:, rows_background]],
            [masked(key[layout.background], from_background), masked(k_gen, from_gen)],
        )
        attend(rows_gen, [q_gen[:, rows_gen]], [k_gen])
    return out


def composite_logits(own, *, query, key, layout: BatchLayout, regions, outside, scale: float) -> torch.Tensor:
    """The composite pre-softmax logits of the ``cond`` row (docs/algorithm.md §9), float32.

    Assignment order as in the official code, later writes win: the gen row's own logits; the
    background block (query and key both outside the box) from ``background``; every key column of an
    object token from the pseudo-cross map C; every query row of an object token from C transposed;
    the object x object block from ``reference`` (unless ``layout.object_block`` is False). Query i of gen is
    matched to reference-grid position i with no translation, exactly as the official code does. With ``layout.background_queries`` the map C
    takes the background row's query i instead of the pseudo-cross row's (our reading of the paper).

    own: (heads, N, N), float32 or wider: every source is computed in its dtype; query/key: (batch, heads, N, d); outside: (N,) bool.
    """
    logits = own
    if layout.bg:
        o = layout.background
        background = (query[o] @ key[o].transpose(-1, -2)).to(own.dtype) * scale
        logits = torch.where(outside[:, None] & outside[None, :], background, logits)
    fg_target = regions.fg.to(query.device)
    if layout.fg and fg_target.numel() > 0:
        fg_ref = regions.fg_ref.to(query.device)
        p, r = layout.pseudo_cross, layout.reference
        asking = query[layout.background] if layout.background_queries else query[p]
        cross = (asking @ key[p][:, fg_ref].transpose(-1, -2)).to(own.dtype) * scale  # (heads, N, |F|)
        logits = logits.clone() if logits is own else logits
        logits[:, :, fg_target] = cross
        logits[:, fg_target, :] = cross.transpose(-1, -2)
        if layout.object_block:
            obj = (query[r][:, fg_ref] @ key[r][:, fg_ref].transpose(-1, -2)).to(own.dtype) * scale  # (heads, |F|, |F|)
            logits[:, fg_target[:, None], fg_target[None, :]] = obj
    return logits


@contextmanager
def composite_attention(
    unet, controller: InjectionController, layers: Sequence[str] | None = None
) -> Iterator[dict[str, CompositeSelfAttention]]:
    """Install ``CompositeSelfAttention`` on the self-attention ``layers`` for the duration of the block.

    ``layers``: the names the model's family lists (``Family.attention_layers``); default every ``attn1`` layer.
    Every other layer keeps whatever processor it had; the original processors are always restored, also when the
    block raises.
    """
    original = dict(unet.attn_processors)  # one walk of the UNet's modules per call: this runs on every step
    self_attention = set(self_attention_layers(original))
    chosen = self_attention if layers is None else set(layers)
    unknown = chosen - self_attention
    if unknown:
        raise ValueError(f"layers must be self-attention layers of this UNet; unknown: {sorted(unknown)[:3]}")
    make = lambda layer, _: CompositeSelfAttention(controller, layer)  # noqa: E731
    with installed_processors(unet, original, chosen, make) as installed:
        yield installed

"""TF-ICON's composite attention on an MM-DiT (SD3): a diffusers processor for joint text-image attention.

An SD3 block runs one attention over the concatenation of the image tokens (first, N of them) and the text tokens
(T), with one softmax per query over all N + T keys (``JointAttnProcessor2_0``). The image-to-image part of that
softmax is the analogue of the UNet's self-attention, and it is where the composite acts (docs/algorithm.md §16.4):

- the generation branch's conditional row (``cond``), image queries: the logits over image keys are TF-ICON's
  composite logits, entry for entry as on the UNet path (``tficon.composition.attention.composite_logits``:
  background block from the background row, object rows and columns from the pseudo-cross map, the object x object
  block from the reference row); the logits over text keys stay the generation row's own (its image query against
  its prompt's keys), and the values are the generation row's own image and text values. So the prompt keeps
  conditioning every image token, as the UNet's cross-attention (which the composite never touches) does, and the
  composite and the text share one softmax, as the model was trained;
- the ``cond`` row's text queries: the row's own joint attention, unchanged;
- the ``pseudo_cross`` row: every query (image and text) attends over the reference's object image tokens and all
  its own text tokens (the UNet path restricts the self-attention to the object tokens; the text part is kept);
- every other row: plain joint attention, one SDPA call, bitwise the stock processor's when nothing is injected.

The composite is computed fused, as on the UNet path: each row group's logits are dot products of concatenated,
zero-padded query and key segments, so one ``scaled_dot_product_attention`` per group computes it and nothing N x N
is materialised. The text keys sit in the segment of the generation row's query (object rows get that segment
added), with zeros elsewhere.

SD3.5's dual-attention blocks also have an image-only self-attention (``attn2``, no text); the same processor drives
it, with no text part. Capture (``CaptureRequest``) stores the image-to-image maps, softmax over the image keys alone
(the joint softmax's image block renormalised per row), through the UNet path's capture code.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from tficon.composition.attention import BatchLayout, CompositeSelfAttention, InjectionController, composite_sets
from tficon.composition.attention_backend import Attend, sdpa
from tficon.composition.processor_steps import installed_processors
from tficon.model.families.sd3 import joint_attention_layers

__all__ = [
    "CompositeJointAttention", "fused_joint_composite_attention", "joint_attention_layers", "joint_composite_attention",
    "joint_row_bytes",
]  # fmt: skip


def _split_heads(attn, x: torch.Tensor) -> torch.Tensor:
    batch, n, inner = x.shape
    return x.view(batch, n, attn.heads, inner // attn.heads).transpose(1, 2)


class CompositeJointAttention(CompositeSelfAttention):
    """diffusers processor for SD3's ``attn`` / ``attn2`` layers (module docstring); with no layout, or nothing
    injected, the same computation as ``JointAttnProcessor2_0``."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, n_image, _ = hidden_states.shape
        query, key, value = (_split_heads(attn, proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text = None
        if encoder_hidden_states is not None:
            projections = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            text = [_split_heads(attn, proj(encoder_hidden_states)) for proj in projections]
            if attn.norm_added_q is not None:
                text[0] = attn.norm_added_q(text[0])
            if attn.norm_added_k is not None:
                text[1] = attn.norm_added_k(text[1])
        joint = [torch.cat([a, b], dim=2) for a, b in zip((query, key, value), text)] if text else [query, key, value]

        layout = self.controller.layout
        if layout is None:
            out = self.controller.attend(*joint)
        else:
            out = self._attend_joint(attn, joint, n_image, layout)
            self._capture(attn, query, key, layout, n_image)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * value.shape[-1]).to(query.dtype)
        if text is not None:
            out, context = out[:, :n_image], out[:, n_image:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
        out = attn.to_out[1](attn.to_out[0](out))
        return (out, context) if text is not None else out

    def _attend_joint(self, attn, joint, n_image: int, layout) -> torch.Tensor:
        query, key, value = joint
        cells, replaced = [], set()
        for cell in layout if isinstance(layout, tuple) else (layout,):
            geometry = cell.geometry if cell.geometry is not None else self.controller
            regions = geometry.regions(n_image)
            c = cell.cond
            inject = c is not None and (cell.bg or (cell.fg and regions.fg.numel() > 0))
            mine = {row for row in (cell.pseudo_cross, c if inject else None) if row is not None}
            if mine & replaced:
                raise ValueError(f"{self.layer_name}: two cells of one call replace the same batch rows {sorted(mine & replaced)}")
            replaced |= mine
            cells.append((cell, geometry, regions, inject))
        if not replaced:  # the stock processor's call: un-injected steps are bitwise JointAttnProcessor2_0's
            return self.controller.attend(query, key, value)
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        plain = [row for row in range(query.shape[0]) if row not in replaced]
        if plain:
            rows = torch.tensor(plain, device=query.device)
            out[rows] = self.controller.attend(
                query.index_select(0, rows), key.index_select(0, rows), value.index_select(0, rows)
            )
        for cell, geometry, regions, inject in cells:
            if cell.pseudo_cross is not None:
                p = cell.pseudo_cross
                keep = self._pseudo_keys(regions, query.device)
                keep = torch.cat([keep, torch.arange(n_image, key.shape[2], device=keep.device)])  # + every text key
                out[p] = self.controller.attend(
                    query[p : p + 1], key[p : p + 1, :, keep], value[p : p + 1, :, keep], scale=attn.scale
                )[0]
            if inject:
                c = cell.cond
                image = slice(0, n_image)
                text_kv = None if key.shape[2] == n_image else (key[c, :, n_image:], value[c, :, n_image:])
                out[c, :, image] = fused_joint_composite_attention(
                    query[:, :, image], key[:, :, image], value[:, :, image], text_kv, layout=cell, regions=regions,
                    outside=geometry.outside_box(n_image, query.device), scale=attn.scale,
                    kernel=self.controller.attend,
                    rows=geometry.row_groups(
                        n_image, query.device, fg_on=cell.fg and regions.fg.numel() > 0, bg=cell.bg
                    ),
                )  # fmt: skip
                if text_kv is not None:  # the cond row's text queries: its own joint attention
                    out[c, :, n_image:] = self.controller.attend(
                        query[c : c + 1, :, n_image:], key[c : c + 1], value[c : c + 1], scale=attn.scale
                    )[0]
        return out


def fused_joint_composite_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    layout: BatchLayout,
    regions,
    outside: torch.Tensor,
    scale: float,
    kernel: Attend = sdpa,
    rows: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The ``cond`` row's image-query outputs of the composite joint attention, without building any N x N matrix.

    With L the UNet path's composite logits over the image keys (``composite_logits``) and, for text key u,
    ``q_G(i) . k_T(u)`` (the generation row's own image query against its own text key), the output of image query
    i is ``softmax([L_i, q_G(i) K_T^T] * scale) [V_G; V_T]``. Row groups as in
    ``tficon.composition.attention.fused_composite_attention``; the text keys are ``k_T`` in the segment that holds
    ``q_G`` (the object group gets that segment added, its image keys zero there) and zero in the others.

    query/key/value: image tokens only, (batch, heads, N, d); text: the cond row's (text keys, text values),
    (heads, T, d) each, or None (an image-only layer). ``rows``: the cached row groups
    (``InjectionController.row_groups``; None: derived here). Returns (heads, N, d_v) in value's dtype.
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
        k_pseudo, q_ref, k_ref = key[layout.pseudo_cross], query[layout.reference], key[layout.reference]
    k_text, v_text = text if text is not None else (k_gen[:, :0], v_gen[:, :0])
    values = torch.cat([v_gen, v_text.to(v_gen)], dim=1)

    def masked(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.where(keep[:, None], x, zero)

    def at_f(x: torch.Tensor) -> torch.Tensor:
        placed = torch.zeros_like(k_gen)
        placed[:, fg] = x[:, fg_ref]
        return placed

    out = v_gen.new_empty(heads, n, d_v)

    def attend(rows: torch.Tensor, queries: list, keys: list, text_slot: int) -> None:
        """out[:, rows] = SDPA over [image keys; text keys]; the text keys fill segment ``text_slot``."""
        if rows.numel() == 0:
            return
        text_keys = [k_text.to(k_gen) if i == text_slot else k_text.new_zeros(k_text.shape).to(k_gen)
                     for i in range(len(queries))]  # fmt: skip
        q = torch.cat(queries, -1)
        k = torch.cat([torch.cat(keys, -1), torch.cat(text_keys, -1)], dim=1)
        v = values if q.shape[-1] == d_v else torch.cat([values, values.new_zeros(heads, values.shape[1], q.shape[-1] - d_v)], -1)
        out[:, rows] = kernel(q[None], k[None], v[None], scale=scale)[0, ..., :d_v]

    if fg_on:
        k_obj = at_f(k_pseudo)
        # object rows: C transposed, the reference's object block, and the generation query for the text keys
        attend(fg, [k_pseudo[:, fg_ref], q_ref[:, fg_ref], q_gen[:, fg]],
               [masked(q_ask, ~in_f), at_f(k_ref), torch.zeros_like(k_gen)], text_slot=2)  # fmt: skip
        attend(
            rows_background,
            [q_ask[:, rows_background], query[layout.background][:, rows_background], q_gen[:, rows_background]],
            [k_obj, masked(key[layout.background], from_background), masked(k_gen, from_gen)], text_slot=2,
        )  # fmt: skip
        attend(rows_gen, [q_ask[:, rows_gen], q_gen[:, rows_gen]], [k_obj, masked(k_gen, ~in_f)], text_slot=1)
    else:
        attend(
            rows_background,
            [query[layout.background][:, rows_background], q_gen[:, rows_background]],
            [masked(key[layout.background], from_background), masked(k_gen, from_gen)], text_slot=1,
        )  # fmt: skip
        attend(rows_gen, [q_gen[:, rows_gen]], [k_gen], text_slot=0)
    return out


@contextmanager
def joint_composite_attention(
    transformer, controller: InjectionController, layers: Sequence[str] | None = None
) -> Iterator[dict[str, CompositeJointAttention]]:
    """Install :class:`CompositeJointAttention` on ``layers`` (default :func:`joint_attention_layers`) of an SD3
    transformer for the block; every other processor is kept, and the originals are always restored."""
    original = dict(transformer.attn_processors)
    known = set(joint_attention_layers(original))
    chosen = known if layers is None else set(layers)
    unknown = chosen - known
    if unknown:
        raise ValueError(f"layers must be attention layers of this transformer; unknown: {sorted(unknown)[:3]}")
    make = lambda layer, _: CompositeJointAttention(controller, layer)  # noqa: E731
    with installed_processors(transformer, original, chosen, make) as installed:
        yield installed


def joint_row_bytes(model, latent_size: tuple[int, int]) -> int:
    """A conservative estimate of the activation memory one batch row takes in an MM-DiT call without gradients
    (``tficon.composition.runner.row_bytes`` for SD3): a block's working set over the row's image tokens
    (``h w / patch^2``) and text tokens (77 CLIP + the T5 rows), all ``inner_dim`` wide: both streams' hidden states
    and their normed copies, joint queries, keys and values, the composite's concatenated queries and keys (up to three
    widths, values padded to match), the attention output and the feed-forward's 4x-wide projection; 24 such tensors
    cover that. Times the transformer's element size."""
    config = model.unet.config
    patch = int(config.patch_size)
    inner = int(config.num_attention_heads) * int(config.attention_head_dim)
    h, w = latent_size
    tokens = (h // patch) * (w // patch) + 77 + int(getattr(model, "t5_length", 256))
    return 24 * inner * tokens * model.unet.dtype.itemsize

"""TIGIC's logit mixing in the generation's self-attention, fused (nothing N x N) and materialised (display, tests).

TIGIC's released code mixes the generation's conditional pre-softmax self-attention map with the maps of two other
branches evaluated at the same time and layer (docs/strategies.md §4.6):

    L = a L_gen + b L_background + c L_reference,     L_x = scale * q_x k_x^T   (each branch's own queries and keys)
    out = softmax(L) V_gen

with (a, b, c) from ``tficon.core.tigic.mixing_weights`` (0.5 / 0.5 / 0 for the background mix alone, 0.5 / 0 / 0.5
for the reference mix alone, 0.25 / 0.25 / 0.5 for both). A weighted sum of dot products is one dot product of
concatenated vectors:

    a q_g.k_g + b q_o.k_o + c q_r.k_r = [a q_g, b q_o, c q_r] . [k_g, k_o, k_r]

so one fused ``scaled_dot_product_attention`` over the concatenated, weighted queries and the concatenated keys
computes the mixed attention in O(N d) memory, in the model's dtype (the kernels accumulate in float32). Segments
with weight 0 are left out. The weights are powers of two, so weighting a query rounds nothing.
"""

from __future__ import annotations

import torch

from tficon.composition.attention_backend import Attend, sdpa

__all__ = ["fused_mixed_attention", "mixed_logits"]


def _segments(rows: tuple[int | None, int | None, int | None], weights: tuple[float, float, float]):
    """(row, weight) of each branch that takes part: the generation always, the others where their weight is > 0."""
    gen, background, reference = rows
    a, b, c = weights
    chosen = [(gen, a)]
    for row, weight, name in ((background, b, "background"), (reference, c, "reference")):
        if weight:
            if row is None:
                raise ValueError(f"the {name} mix needs the {name} row in the batch")
            chosen.append((row, weight))
    return chosen


def fused_mixed_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    rows: tuple[int | None, int | None, int | None],
    weights: tuple[float, float, float],
    scale: float,
    kernel: Attend = sdpa,
) -> torch.Tensor:
    """softmax(a L_gen + b L_background + c L_reference) V_gen for the generation's row, without building L.

    query/key/value: (batch, heads, N, d); ``rows``: the batch rows of (generation cond, background, reference)
    (None: absent, allowed where its weight is 0); ``weights``: (a, b, c). Returns (heads, N, d_v) in value's dtype.
    The values are zero-padded to the query width because the CPU's fused kernel needs equal widths (with unequal
    widths it falls back to one that builds the N x N matrix); the padding adds exact zeros and is cut off.
    """
    chosen = _segments(rows, weights)
    q = torch.cat([query[row] * weight for row, weight in chosen], -1)
    k = torch.cat([key[row] for row, _ in chosen], -1)
    v = value[rows[0]]
    heads, n, d_v = v.shape
    if q.shape[-1] != d_v:
        v = torch.cat([v, v.new_zeros(heads, n, q.shape[-1] - d_v)], -1)
    return kernel(q[None], k[None], v[None], scale=scale)[0, ..., :d_v]


def mixed_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    rows: tuple[int | None, int | None, int | None],
    weights: tuple[float, float, float],
    scale: float,
) -> torch.Tensor:
    """The mixed pre-softmax logits a L_gen + b L_background + c L_reference, (heads, N, N) float32, written as the
    released code does it: the background mix first, then the reference mix (for captures and tests)."""
    gen, background, reference = rows
    a, b, c = weights

    def own(row: int) -> torch.Tensor:
        return (query[row].float() @ key[row].float().transpose(-1, -2)) * scale

    logits = own(gen)
    _segments(rows, weights)  # the same checks as the fused path
    if b:
        logits = 0.5 * own(background) + 0.5 * logits
    if c:
        logits = 0.5 * own(reference) + 0.5 * logits
    if (a, b, c) not in ((1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.25, 0.25, 0.5)):
        raise ValueError(f"weights must be TIGIC's (tficon.core.tigic.mixing_weights), got {weights}")
    return logits

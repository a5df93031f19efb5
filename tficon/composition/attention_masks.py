"""Object masks from recorded cross-attention: the heat map, and the masks the proposal and the adaptive blend use.

Pure tensor functions over :class:`~tficon.composition.cross_attention.CrossAttentionRecord` maps (an (N,) vector
per layer and call):

- :func:`attention_heat`: the mean over layers of the maps at most ``max_factor`` times coarser than the finest one,
  each upsampled bilinearly to the latent grid, then min-max normalised to [0, 1];
- :func:`connected_region`, :func:`largest_region`, :func:`dilate`: 4-connected regions and a 3 x 3 dilation on
  small bool grids;
- :func:`adaptive_blend_mask`: SHINE's blend mask, ``largest_region(dilate(heat > 0.4))``.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

__all__ = [
    "ADAPTIVE_DILATION",
    "ADAPTIVE_THRESHOLD",
    "adaptive_blend_mask",
    "attention_heat",
    "connected_region",
    "dilate",
    "largest_region",
]

#: SHINE's released defaults for its adaptive background blending (``abb_bin_threshold``, the dilation kernel side).
ADAPTIVE_THRESHOLD = 0.4
ADAPTIVE_DILATION = 3


def attention_heat(
    maps: Iterable[torch.Tensor],
    resolution: Callable[[int], tuple[int, int]],
    latent: tuple[int, int],
    *,
    max_factor: int = 1,
) -> torch.Tensor | None:
    """(h, w) float32 heat in [0, 1] at the ``latent`` grid from (N,) maps (``resolution(N)`` gives each map's grid):

    A = mean over the maps with grid height * max_factor >= the finest grid height of upsample_bilinear(map, latent)
    heat = (A - min A) / (max A - min A)

    None when there is no map or A is flat (nothing stands out)."""
    shaped = [(resolution(m.numel()), m.float()) for m in maps]
    if not shaped:
        return None
    finest = max(h for (h, _), _ in shaped)
    grids = []
    for (h, w), values in shaped:
        if h * max_factor < finest:
            continue
        grid = values.reshape(1, 1, h, w)
        if (h, w) != tuple(latent):
            grid = F.interpolate(grid, size=tuple(latent), mode="bilinear", align_corners=False)
        grids.append(grid[0, 0])
    mean = torch.stack(grids).mean(0)
    low, high = mean.min(), mean.max()
    if not high > low:
        return None
    return (mean - low) / (high - low)


def connected_region(mask: torch.Tensor, seed: tuple[int, int]) -> torch.Tensor:
    """The 4-connected region of the bool (h, w) ``mask`` that holds ``seed`` (grown one ring per iteration)."""
    region = torch.zeros_like(mask)
    region[seed] = bool(mask[seed])
    while True:
        grown = region.clone()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= mask
        if torch.equal(grown, region):
            return region
        region = grown


def largest_region(mask: torch.Tensor) -> torch.Tensor:
    """The largest 4-connected region of the bool (h, w) ``mask`` (the first found, in row-major order, on a tie);
    all False when the mask is empty."""
    left, best = mask.clone(), torch.zeros_like(mask)
    while left.any():
        seed = divmod(int(left.flatten().nonzero()[0]), mask.shape[1])
        region = connected_region(left, seed)
        if int(region.sum()) > int(best.sum()):
            best = region
        left &= ~region
    return best


def dilate(mask: torch.Tensor, size: int = ADAPTIVE_DILATION) -> torch.Tensor:
    """A bool (h, w) mask dilated by a ``size`` x ``size`` square (odd ``size``), as OpenCV's ``dilate`` does."""
    if size % 2 != 1 or size < 1:
        raise ValueError(f"the dilation size must be an odd positive integer, got {size}")
    pooled = F.max_pool2d(mask[None, None].float(), size, stride=1, padding=size // 2)
    return pooled[0, 0] > 0


def adaptive_blend_mask(heat: torch.Tensor | None) -> torch.Tensor | None:
    """SHINE's blend mask from a heat map: ``largest_region(dilate(heat > 0.4, 3 x 3))``; None for no heat."""
    if heat is None:
        return None
    return largest_region(dilate(heat > ADAPTIVE_THRESHOLD))

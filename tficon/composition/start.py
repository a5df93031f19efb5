"""The start latent of the generation branch: TF-ICON's noise incorporation (docs/algorithm.md §7).

A pure function of the two inverted latents, the placement and the seeded generator, so that strategies which start
elsewhere (a later start, another model family's time parametrisation) replace one function, not a Session method.

With TALE's later start (``CompositionConfig.later_start``) the same function builds the start latent from the
inversions that stopped at the later grid point: the fresh noise in the box is then read as the noise of that point
(a standard normal, as the marginal of a unit-variance latent is close to one there too).
"""

from __future__ import annotations

import numpy as np
import torch

from tficon.core import placement as placement_mod


def start_latent(
    x_bg: torch.Tensor,
    x_ref: torch.Tensor,
    placement: placement_mod.Placement,
    object_mask,
    vae_scale_factor: int,
    *,
    mode: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """The start latent: ``x_bg`` outside the target box; inside it, with sigma the object's segmentation at the
    latent resolution,

        cross:  x_ref[ref box] * sigma + noise_2 * (1 - sigma)
        same:   x_bg[box]      * sigma + noise_1 * (1 - sigma)

    ``noise_1`` is always drawn from ``generator`` first (the official code draws it in both modes), then
    ``noise_2`` in cross mode: the draw order is part of the official behaviour, so seeds agree with it.
    """
    target, ref_box = placement.latent_target_box, placement.latent_ref_box
    seg = placement_mod.segmentation_at(object_mask, vae_scale_factor, placement.geometry)
    sigma = torch.from_numpy(np.ascontiguousarray(seg[ref_box.slices()])).to(x_bg)
    shape = (1, x_bg.shape[1], target.height, target.width)
    start = x_bg.clone()
    rows, cols = target.slices()
    noise_1 = torch.randn(shape, generator=generator).to(x_bg)
    start[:, :, rows, cols] = x_bg[:, :, rows, cols] * sigma + noise_1 * (1 - sigma)
    if mode == "cross":
        noise_2 = torch.randn(shape, generator=generator).to(x_bg)
        ref_rows, ref_cols = ref_box.slices()
        start[:, :, rows, cols] = x_ref[:, :, ref_rows, ref_cols] * sigma + noise_2 * (1 - sigma)
    return start

"""Index sets for the attention processor (docs/algorithm.md §2.7): one job, ``region_indices``.

On each attention grid the processor needs the target box B, the kept object positions F in the generated grid,
the same positions R in the reference grid, their index c inside the reference box crop, and the whole reference
box Q, as ``torch.long`` linear indices; ``RegionIndex`` holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from tficon.core.boxes import Box
from tficon.core.placement.canvas import segmentation_at
from tficon.core.placement.layout import Placement


@dataclass(frozen=True)
class RegionIndex:
    """Spec 2.7 index sets on one ``height x width`` attention grid, as ``torch.long`` linear indices ``i * width + j``.

    ``fg``, ``fg_ref`` and ``fg_crop`` share one order: row-major over the reference box crop, kept where the
    segmentation is 1.
    """

    height: int
    width: int
    box: torch.Tensor  # B: target box, row-major
    fg: torch.Tensor  # F: kept object positions in the gen/target grid
    fg_ref: torch.Tensor  # R: the same positions in the reference grid
    fg_crop: torch.Tensor  # c: index inside the reference box crop (u * m + v)
    ref_box: torch.Tensor  # the whole reference box Q_r in the reference grid, row-major

    def to(self, device: torch.device | str) -> "RegionIndex":
        """The same index sets on ``device`` (where the attention processor indexes with them)."""
        return replace(
            self,
            box=self.box.to(device),
            fg=self.fg.to(device),
            fg_ref=self.fg_ref.to(device),
            fg_crop=self.fg_crop.to(device),
            ref_box=self.ref_box.to(device),
        )

    def masks(self) -> dict[str, torch.Tensor]:
        """``(height, width)`` bool maps for display: "box", "object" (F), "background" (outside the box),
        "reference_object" (R)."""

        def scatter(indices: torch.Tensor) -> torch.Tensor:
            flat = torch.zeros(self.height * self.width, dtype=torch.bool)
            flat[indices] = True
            return flat.view(self.height, self.width)

        box = scatter(self.box)
        return {
            "box": box,
            "object": scatter(self.fg),
            "background": ~box,
            "reference_object": scatter(self.fg_ref),
        }


def _box_indices(box: Box, width: int, n_tokens: int) -> torch.Tensor:
    rows = torch.arange(box.top, box.bottom, dtype=torch.long)
    cols = torch.arange(box.left, box.right, dtype=torch.long)
    # A box starting at row/column -1 on a coarse grid wraps like the official tensor indexing.
    return (rows[:, None] * width + cols[None, :]).reshape(-1) % n_tokens


def region_indices(placement: Placement, mpad: np.ndarray, height: int, width: int) -> RegionIndex:
    """Index sets B, F, R, c and Q on a ``height x width`` attention grid (docs/algorithm.md §2.7).

    The segmentation there is ``mpad`` sampled at stride ``H / height`` (rows) and ``W / width`` (cols) from
    pixel (0, 0) (= ``seg64[::64 / r]`` at 512), which must be integers.
    """
    image_height, image_width = placement.image_size
    if tuple(mpad.shape) != (image_height, image_width):
        raise ValueError(f"mpad must have shape {(image_height, image_width)}, got {tuple(mpad.shape)}")
    if height <= 0 or width <= 0 or image_height % height or image_width % width:
        raise ValueError(
            f"attention grid {height}x{width} does not divide the {image_height}x{image_width} image; "
            "use image sizes that are multiples of latent_factor * 2**(levels - 1)"
        )
    reference, target = placement.boxes_at(height, width)
    segmentation = segmentation_at(mpad, (image_height // height, image_width // width), placement.geometry)
    crop = segmentation[reference.slices()] == 1
    kept = torch.from_numpy(np.flatnonzero(crop)).to(torch.long)
    u = torch.div(kept, reference.width, rounding_mode="floor")
    v = kept - u * reference.width
    n_tokens = height * width
    return RegionIndex(
        height=height,
        width=width,
        box=_box_indices(target, width, n_tokens),
        fg=((target.top + u) * width + (target.left + v)) % n_tokens,
        fg_ref=(reference.top + u) * width + (reference.left + v),
        fg_crop=kept,
        ref_box=_box_indices(reference, width, n_tokens),
    )

"""Exact placement geometry of TF-ICON: user mask/box + foreground -> pixel and latent boxes and index sets.

Everything here follows docs/algorithm.md §2.2-2.7 integer for integer (at 512 x 512 with latent factor 8 every
number equals the official code's). One module per step:

- ``contours``: the user mask's bounding box (``bbox_from_mask``), with OpenCV's contour order rebuilt in numpy;
- ``layout``: the ``Placement`` (pixel windows and the boxes on every grid): ``compute_placement``,
  ``placement_from_center_scale``, ``resolve_geometry`` (official or centred), bounds checks and clipping;
- ``canvas``: pixels: the centred foreground canvas and ``Mpad`` (``prepare_foreground``), ``cut_and_paste``,
  ``nearest_resize`` (OpenCV's nearest rule) and ``segmentation_at``;
- ``regions``: the index sets of each attention grid (``RegionIndex``, ``region_indices``).

The half-open grid ``Box`` lives in ``tficon.core.boxes`` beside the user-box parser; it is re-exported here, so
``from tficon.core.placement import Box`` keeps working, as do all the names above.
"""

from __future__ import annotations

from tficon.core.boxes import Box
from tficon.core.placement.canvas import cut_and_paste, nearest_resize, prepare_foreground, segmentation_at
from tficon.core.placement.contours import BOX_RULES, MaskLike, bbox_from_mask
from tficon.core.placement.layout import (
    CLIP_ADVICE,
    GEOMETRIES,
    BoxLike,
    Placement,
    compute_placement,
    placement_from_center_scale,
    resolve_geometry,
)
from tficon.core.placement.regions import RegionIndex, region_indices

__all__ = [
    "BOX_RULES",
    "CLIP_ADVICE",
    "GEOMETRIES",
    "Box",
    "BoxLike",
    "MaskLike",
    "Placement",
    "RegionIndex",
    "bbox_from_mask",
    "compute_placement",
    "cut_and_paste",
    "nearest_resize",
    "placement_from_center_scale",
    "prepare_foreground",
    "region_indices",
    "resolve_geometry",
    "segmentation_at",
]

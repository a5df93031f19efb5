"""Pixels: the centred foreground canvas, the padded object mask ``Mpad``, the cut-and-paste composite, and the
object mask sampled on a coarser grid (docs/algorithm.md §2.4-2.5).

The official code resizes the object mask with ``cv2.resize(..., INTER_NEAREST)``. The core does not import
OpenCV; ``nearest_resize`` reproduces its source index ``min(floor(dst * (1.0 / (dst_size / src_size))),
src_size - 1)`` in double precision (tested against ``cv2`` in the test suite). This is the
``floor(dst * src_size / dst_size)`` rule of docs/algorithm.md §2.4 except where that product is an exact integer,
where OpenCV's rounded reciprocal can land one below (e.g. 2 -> 98 pixels).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tficon.core.io import image_to_tensor
from tficon.core.placement.layout import Placement


def nearest_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array to ``size = (H', W')`` with OpenCV's ``INTER_NEAREST`` indices.

    Source index per axis: ``min(floor(dst * (1.0 / (dst_size / src_size))), src_size - 1)`` in float64
    (top-left sampling; see the module docstring for why not the exact-integer ``dst * src // dst_size``).
    """
    out_height, out_width = size

    def indices(dst: int, src: int) -> np.ndarray:
        inverse = 1.0 / (dst / src)
        return np.minimum(np.floor(np.arange(dst) * inverse).astype(np.int64), src - 1)

    return array[np.ix_(indices(out_height, array.shape[0]), indices(out_width, array.shape[1]))]


def _object_mask_bits(object_mask: Image.Image | np.ndarray) -> np.ndarray:
    """Official object-mask binarisation: PIL ``convert("1")`` (Floyd-Steinberg dithering)."""
    if isinstance(object_mask, np.ndarray):
        if object_mask.ndim != 2:
            raise ValueError(f"object_mask must be a 2-D mask (H, W), got shape {object_mask.shape}")
        if object_mask.dtype == bool:
            return object_mask
        if object_mask.dtype != np.uint8:
            raise TypeError(
                f"object_mask must be bool or uint8, got {object_mask.dtype}; load it with tficon.core.io.load_mask"
            )
        object_mask = Image.fromarray(np.ascontiguousarray(object_mask))  # 2-D uint8 -> mode "L"
    if not isinstance(object_mask, Image.Image):
        raise TypeError(f"object_mask must be a PIL image or numpy array, got {type(object_mask).__name__}")
    return np.array(object_mask.convert("1"), dtype=bool)


def prepare_foreground(
    foreground: Image.Image, object_mask: Image.Image | np.ndarray, placement: Placement
) -> tuple[torch.Tensor, np.ndarray]:
    """The centred reference canvas and the padded object mask ``Mpad`` (docs/algorithm.md §2.4).

    The foreground is resized to ``placement.fg_size`` with PIL BICUBIC; the object mask is binarised with PIL
    ``convert("1")`` and resized to the same size with OpenCV's nearest rule; each is centred at row
    ``(H - H') // 2``, column ``(W - W') // 2`` of an ``H x W`` canvas.

    Returns:
        ``(reference, mpad)``: reference ``(3, H, W)`` float32 in [-1, 1] (black = -1 outside the object
        window); mpad ``(H, W)`` float64 with values 0/1 (zeros outside).
    """
    if not isinstance(foreground, Image.Image):
        raise TypeError(f"foreground must be a PIL image (see tficon.core.io.load_image), got {type(foreground).__name__}")
    if foreground.mode not in {"RGB", "L"}:
        raise ValueError(f"foreground has mode {foreground.mode}; load it with tficon.core.io.load_image first")
    if tuple(foreground.size) != tuple(placement.foreground_size):
        raise ValueError(
            f"foreground is {foreground.size[0]}x{foreground.size[1]} (W x H) but the placement was computed for "
            f"{placement.foreground_size[0]}x{placement.foreground_size[1]}; pass foreground.size to compute_placement"
        )
    height, width = placement.image_size
    w_fg, h_fg = placement.fg_size
    window = placement.ref_window.slices()

    resized = foreground.convert("RGB").resize((w_fg, h_fg), Image.Resampling.BICUBIC)
    reference = torch.full((3, height, width), -1.0, dtype=torch.float32)
    reference[(slice(None),) + window] = image_to_tensor(resized)

    bits = nearest_resize(_object_mask_bits(object_mask), (h_fg, w_fg))
    if not bits.any():
        raise ValueError(
            f"object_mask is empty after resizing to {w_fg}x{h_fg} px; mark the object in white or draw a larger box"
        )
    mpad = np.zeros((height, width), dtype=np.float64)
    mpad[window] = bits
    return reference, mpad


def cut_and_paste(
    background: torch.Tensor, reference: torch.Tensor, mpad: np.ndarray, placement: Placement
) -> torch.Tensor:
    """Pixel composite of docs/algorithm.md §2.5: inside the target window ``bg * (1 - m) + ref_window * m``, ``bg`` elsewhere.

    Args:
        background, reference: ``(3, H, W)`` in [-1, 1]; mpad: ``(H, W)`` 0/1.
    Returns:
        a new ``(3, H, W)`` tensor in the background's dtype.
    """
    shape = (3,) + tuple(placement.image_size)
    for label, tensor in (("background", background), ("reference", reference)):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{label} must have shape {shape}, got {tuple(tensor.shape)}")
    if tuple(mpad.shape) != shape[1:]:
        raise ValueError(f"mpad must have shape {shape[1:]}, got {tuple(mpad.shape)}")
    target = (slice(None),) + placement.target_window.slices()
    source = placement.ref_window.slices()
    weight = torch.from_numpy(np.ascontiguousarray(mpad[source])).to(background.dtype)
    composite = background.clone()
    pasted = reference[(slice(None),) + source].to(background.dtype)
    composite[target] = background[target] * (1 - weight) + pasted * weight
    return composite


def segmentation_at(mpad: np.ndarray, stride: int | tuple[int, int], geometry: str = "official") -> np.ndarray:
    """The padded object mask on a coarser grid, one pixel per cell.

    Official: ``mpad[::stride, ::stride]``, the top-left pixel of each cell (the official ``Mpad[::8, ::8]`` and
    its per-layer strides), which shifts the mask by half a cell. Centred: the pixel at each cell's centre.
    ``stride`` may be a pair ``(row stride, col stride)``.
    """
    row_stride, col_stride = (stride, stride) if isinstance(stride, (int, np.integer)) else stride
    row_stride, col_stride = int(row_stride), int(col_stride)
    if geometry == "centred":
        return mpad[row_stride // 2 :: row_stride, col_stride // 2 :: col_stride]
    return mpad[::row_stride, ::col_stride]

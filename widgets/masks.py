"""Object-mask geometry between the mask painter and the Session (pure numpy).

The Session keeps the user's object mask at the original foreground's size and resizes it onto the
object's window in the image with OpenCV's nearest-neighbour indices. The painter shows the object
as it sits in that window; these functions choose the grid to paint on and carry masks both ways so
that every painted cell reaches the Session exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["painting_grid", "window_mask_on_grid", "mask_at_original_size"]


def _nearest_indices(dst: int, src: int) -> np.ndarray:
    """Source index of each destination index in the Session's nearest resize (OpenCV ``INTER_NEAREST``)."""
    return np.minimum(np.floor(np.arange(dst) * (1.0 / (dst / src))).astype(np.int64), src - 1)


def painting_grid(window_size: tuple[int, int], original_size: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of the grid the object mask is painted on.

    The Session resizes the original object mask (``original_size``) to the object's size in the
    image (``window_size``) with nearest neighbour. When the original is at least as large, the
    window's resolution is all that survives, so painting happens there; when the original is smaller
    (the object is enlarged), its own pixels are the finest thing that can be set, so painting happens
    on the original grid. Either way every painted cell reaches the Session exactly.
    """
    if original_size[0] >= window_size[0] and original_size[1] >= window_size[1]:
        return window_size
    return original_size


def window_mask_on_grid(window_bits: np.ndarray, grid: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """The Session's object mask inside the object window ``(h', w')`` -> the mask on the painting grid.

    On the window grid this is the mask itself. On a (smaller) original grid, the window mask is the
    original mask enlarged by nearest neighbour, which reaches every original pixel, so the original
    mask is read back exactly from one window pixel per original pixel.
    """
    if tuple(grid) == tuple(window_bits.shape):
        return window_bits.copy()
    height, width = original_size
    rows, cols = _nearest_indices(window_bits.shape[0], height), _nearest_indices(window_bits.shape[1], width)
    first_row = np.searchsorted(rows, np.arange(height))
    first_col = np.searchsorted(cols, np.arange(width))
    return window_bits[np.ix_(first_row, first_col)]


def mask_at_original_size(painted: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """A mask painted on ``painting_grid`` -> a bool mask of the original foreground ``(H, W)`` that the
    Session's nearest resize maps back onto exactly the painted bits.

    From the window grid: every original pixel takes its nearest painted cell, then the pixels the
    resize samples are set to the painted values. On the original grid it is the painted mask itself.
    """
    height, width = original_size
    h, w = painted.shape
    if (h, w) == (height, width):
        return painted.astype(bool, copy=True)
    if h > height or w > width:
        raise ValueError(f"a mask painted on {h}x{w} cannot be stored exactly in a {height}x{width} original; use painting_grid")
    near_rows = np.minimum((np.arange(height) * h) // height, h - 1)
    near_cols = np.minimum((np.arange(width) * w) // width, w - 1)
    full = painted[np.ix_(near_rows, near_cols)].astype(bool)
    full[np.ix_(_nearest_indices(h, height), _nearest_indices(w, width))] = painted
    return full

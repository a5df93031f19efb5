"""A seam measure at the box border: how much colour jumps across the edge of the target box in a composition,
beyond the jump the background itself has there.

A composition that pastes or blends the box with a hard edge leaves a step in colour along the box's border (the
classic cut-and-paste seam); a harmonised one continues the scene across it. The measure compares pixel pairs that
straddle the border, one inside the box and one outside:

    E       = pairs (p, q) across the box's four edges: p the pixel ``width - 1`` in from the edge inside the box,
              q the pixel ``width - 1`` out from it outside, along each edge's length (2 * width - 1 px apart;
              width = 1 means 4-neighbours); edges on the image border have no outside pixel and are left out,
              and so is every pair with p or q in ``ignore``
    J(I)    = 1/|E| * sum over (p, q) in E of 1/3 * sum_c |I_c(p) - I_c(q)|          (I in [0, 1])
    seam    = J(result) - J(background)

Lower is better: 0 means the result jumps across the border no more than the background does there (on the toy
world's plain paper the background's own jump is about 0); a hard-edged paste of a box whose content differs from
its surroundings scores the size of the colour step. Negative values mean the result is smoother across the
border than the background (a blur). ``ignore`` leaves out pixels where an edge is wanted, such as an object placed
so that it touches the box's border.
"""

from __future__ import annotations

import numpy as np
import torch

from tficon.eval.pixel import ImageInput, as_unit_tensor

__all__ = ["border_jump", "seam_jump"]


def _edges(box, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` half-open, from a ``Box``-like object or an ``(x, y, w, h)`` tuple."""
    if all(hasattr(box, name) for name in ("top", "left", "bottom", "right")):
        top, left, bottom, right = (int(box.top), int(box.left), int(box.bottom), int(box.right))
    else:
        try:
            x, y, w, h = (int(v) for v in box)
        except (TypeError, ValueError):
            raise ValueError(f"box must be (x, y, w, h) or have top/left/bottom/right, got {box!r}") from None
        top, left, bottom, right = y, x, y + h, x + w
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"box {box!r} must lie inside the {width}x{height} image and not be empty")
    return top, left, bottom, right


def _pairs(box, height: int, width: int, band: int, ignore: np.ndarray | None):
    """Index arrays (rows_in, cols_in, rows_out, cols_out) of the pairs E (module docstring)."""
    top, left, bottom, right = _edges(box, height, width)
    d = band - 1
    rows_in, cols_in, rows_out, cols_out = [], [], [], []
    along_rows, along_cols = np.arange(top, bottom), np.arange(left, right)
    # (inside index, outside index) across each edge; an edge whose outside pixel leaves the image is skipped
    for inner, outer, vertical in (
        (left + d, left - 1 - d, True), (right - 1 - d, right + d, True),
        (top + d, top - 1 - d, False), (bottom - 1 - d, bottom + d, False),
    ):  # fmt: skip
        limit = width if vertical else height
        if not (0 <= outer < limit) or not (0 <= inner < limit):
            continue
        along = along_rows if vertical else along_cols
        fixed_in, fixed_out = np.full_like(along, inner), np.full_like(along, outer)
        if vertical:
            rows_in.append(along), cols_in.append(fixed_in), rows_out.append(along), cols_out.append(fixed_out)
        else:
            rows_in.append(fixed_in), cols_in.append(along), rows_out.append(fixed_out), cols_out.append(along)
    if not rows_in:
        return None
    ri, ci, ro, co = (np.concatenate(v) for v in (rows_in, cols_in, rows_out, cols_out))
    if ignore is not None:
        keep = ~(ignore[ri, ci] | ignore[ro, co])
        ri, ci, ro, co = ri[keep], ci[keep], ro[keep], co[keep]
    return (ri, ci, ro, co) if len(ri) else None


def _check_width(width) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer (pixels either side of the border), got {width!r}")


def _jump(pixels: torch.Tensor, box, width: int, ignore) -> float:
    """J of the module docstring for a (3, H, W) tensor in [0, 1]; NaN when no pair is left."""
    _, height, w = pixels.shape
    mask = None
    if ignore is not None:
        mask = np.asarray(ignore).astype(bool)
        if mask.shape != (height, w):
            raise ValueError(f"ignore must be a (H, W) = {(height, w)} mask, got shape {mask.shape}")
    pairs = _pairs(box, height, w, width, mask)
    if pairs is None:
        return float("nan")
    ri, ci, ro, co = (torch.as_tensor(v) for v in pairs)
    return float((pixels[:, ri, ci] - pixels[:, ro, co]).abs().mean())


def border_jump(image: ImageInput, box, *, width: int = 1, ignore=None) -> float:
    """J(image) of the module docstring: the mean absolute colour difference (channel mean, [0, 1] units) of the
    pixel pairs straddling the border of ``box`` (``(x, y, w, h)`` or a ``tficon.core.boxes.Box``) at distance
    ``width`` either side. NaN when no pair is left (every edge on the image border, or all ignored)."""
    _check_width(width)
    return _jump(as_unit_tensor(image, name="image"), box, width, ignore)


def seam_jump(result: ImageInput, background: ImageInput, box, *, width: int = 1, ignore=None) -> float:
    """The seam measure of the module docstring: ``border_jump(result) - border_jump(background)`` over the same
    pairs. Lower is better, 0 = no more jump across the box border than the background has there."""
    _check_width(width)
    a, b = as_unit_tensor(result, name="result"), as_unit_tensor(background, name="background")
    if a.shape != b.shape:
        raise ValueError(f"result {tuple(a.shape)} and background {tuple(b.shape)} must have the same size")
    return _jump(a, box, width, ignore) - _jump(b, box, width, ignore)

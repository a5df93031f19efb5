"""Boxes, in one place: the user's target box ``(x, y, w, h)`` and the half-open grid ``Box``.

A user gives the target either as a mask (its bbox is the target box, as officially) or as a box
``(x, y, w, h)`` in working-image pixels. Every entry point (``Session``, ``compute_placement``, the CLI's
``--box``) reads a box through :func:`as_user_box` or :func:`parse_box_text`, so they all accept and refuse the
same values: four integers (Python or numpy), never ``True``/``False`` (a bool is an int to Python, but
``(True, 0, 5, 5)`` is a mistake, not a box), with a positive width and height. :func:`box_mask` draws a box given
in an image's own pixels as a mask, :func:`same_box` tells whether two targets (boxes or masks) are the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

#: A user's target box ``(x, y, w, h)`` in pixels.
UserBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class Box:
    """A half-open integer box ``rows [top, bottom) x cols [left, right)`` on some grid."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    def slices(self) -> tuple[slice, slice]:
        """``(row slice, column slice)`` for indexing an array ``[..., rows, cols]``."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def inside(self, height: int, width: int) -> bool:
        """True if the box is non-empty and lies in ``[0, height) x [0, width)`` (ending at the edge is inside)."""
        return 0 <= self.top < self.bottom <= height and 0 <= self.left < self.right <= width

    def __str__(self) -> str:
        return f"rows [{self.top}, {self.bottom}) x cols [{self.left}, {self.right})"


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _looks_like_box(value) -> bool:
    """A tuple or list: what a user passes as a box (arrays, images and paths are masks)."""
    return isinstance(value, (tuple, list)) and not isinstance(value, (str, bytes, os.PathLike))


def as_user_box(value, *, name: str) -> UserBox | None:
    """``(x, y, w, h)`` as Python ints when ``value`` is a box, None when it is something else (a mask).

    A tuple or list is a box: it must hold four integers (Python or numpy, not bools) with a positive width and
    height, else a ValueError names ``name`` and says what a box is. Anything else (an array, a PIL image, a
    path) returns None: it is for the mask reader.
    """
    if not _looks_like_box(value):
        return None
    if len(value) != 4:
        raise ValueError(
            f"{name}: a box must be 4 integers (x, y, w, h) in pixels, got {len(value)} value(s) {tuple(value)!r}; "
            "or pass a mask image"
        )
    if not all(_is_integer(v) for v in value):
        note = " (True/False are not pixel counts)" if any(isinstance(v, (bool, np.bool_)) for v in value) else ""
        raise ValueError(f"{name}: a box must be 4 integers (x, y, w, h) in pixels, got {tuple(value)!r}{note}")
    box = tuple(int(v) for v in value)
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"{name}: the box (x, y, w, h) = {box} must have positive width and height")
    return box  # type: ignore[return-value]


def parse_box_text(text: str, *, name: str = "box", unit: str = "pixels") -> UserBox:
    """``"x,y,w,h"`` -> four ints (the command line's ``--box``). Only the form is checked here; whether the box
    fits an image is for the caller, who knows the image (the CLI says so in the background's own pixels)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"{name} must be four integers x,y,w,h in {unit}, got {text!r}")
    return values  # type: ignore[return-value]


def box_mask(box: UserBox, size: tuple[int, int], *, name: str = "box", image: str = "background") -> np.ndarray:
    """A box ``(x, y, w, h)`` in an image's own pixels -> a bool mask of that image's ``size = (W, H)`` holding
    that rectangle (the CLI's ``--box``: in the background's pixels).

    The Session reads a mask in fractions of its own size (the official rule), so the box maps to the working size
    exactly as the same rectangle drawn in a mask file would; on an image already at the working size it equals
    passing the box itself. A box that is empty or leaves the image raises a ValueError naming ``name``.
    """
    x, y, w, h = box
    width, height = size
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(
            f"{name} x,y,w,h = {x},{y},{w},{h} must have a positive size and lie inside the {width}x{height} "
            f"{image} (the box is in the {image}'s own pixels)"
        )
    mask = np.zeros((height, width), dtype=bool)
    mask[y : y + h, x : x + w] = True
    return mask


def same_box(a, b) -> bool:
    """Whether two targets are the same: equal boxes, or masks of one shape with equal pixels (a box never
    equals a mask). Both are assumed already checked (``as_user_box`` or the mask reader)."""
    if _looks_like_box(a) or _looks_like_box(b):
        return _looks_like_box(a) and _looks_like_box(b) and tuple(a) == tuple(b)
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))

"""The run layer's box helpers, in one place: what counts as an ``(x, y, w, h)`` box in a sweep grid, when two
boxes (or masks) are the same, and a window as the ``[top, left, bottom, right]`` list a batch record stores."""

from __future__ import annotations

import numpy as np

__all__ = ["_box_list", "_is_box", "_same_box"]


def _is_box(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 4 and all(isinstance(v, (int, np.integer)) for v in value)


def _same_box(a, b) -> bool:
    if _is_box(a) or _is_box(b):
        return _is_box(a) and _is_box(b) and tuple(a) == tuple(b)
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _box_list(box) -> list[int]:
    return [box.top, box.left, box.bottom, box.right]

"""The user mask's bounding box, as the official code finds it: one job, ``bbox_from_mask``.

The official code takes the target box from ``cv2.findContours(mask, RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)[0]``.
The core does not import OpenCV; this module reproduces that contour order with numpy (tested against ``cv2``
in the test suite): one contour per *outermost* blob (8-connected foreground, 4-connected background, blobs
inside holes excluded), in *reverse* raster order of each blob's first pixel; index 0 is therefore the blob
whose first pixel comes last in raster order. Components are labelled through horizontal runs and a union-find.
"""

from __future__ import annotations

from typing import Union

import numpy as np
from PIL import Image

#: Which blob of a multi-blob mask gives the box: the official first contour, the largest, or all pixels.
BOX_RULES = ("first", "largest", "union")

MaskLike = Union[np.ndarray, Image.Image]


def _runs(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True pixels as ``(row, start, stop)`` arrays (stop exclusive), in raster order."""
    height, width = binary.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = binary
    step = np.diff(padded, axis=1)  # step[:, k] = padded[:, k + 1] - padded[:, k]
    rows, starts = np.nonzero(step == 1)  # row-major order, so starts and stops pair up
    _, stops = np.nonzero(step == -1)
    return rows, starts, stops


def _concatenated_ranges(begins: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concat(arange(b, b + n) for b, n in zip(begins, counts))`` without a Python loop."""
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(begins, counts) + offsets


def _run_components(binary: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label the connected components of ``binary`` through its horizontal runs.

    Returns ``(rows, starts, stops, component)`` per run; components are numbered 0, 1, ... in raster order of
    their first pixel. ``connectivity`` is 8 (diagonal neighbours connect) or 4.
    """
    rows, starts, stops = _runs(binary)
    count = len(rows)
    if count == 0:
        return rows, starts, stops, np.zeros(0, dtype=np.int64)
    # Runs of row r + 1 touching runs of row r. With 8-connectivity, [a, b) and [c, d) touch when c <= b and
    # a <= d; with 4-connectivity when c < b and a < d. Runs of one row are sorted and disjoint, so the runs
    # of the previous row touching a run form a contiguous index range [lo, hi).
    slack = 1 if connectivity == 8 else 0
    width = binary.shape[1] + 2
    key_start = rows * width + starts
    key_stop = rows * width + stops
    previous = rows - 1
    lo = np.searchsorted(key_stop, previous * width + starts - slack, side="right")
    hi = np.searchsorted(key_start, previous * width + stops + slack, side="left")
    first_of_row = np.searchsorted(rows, previous, side="left")
    after_row = np.searchsorted(rows, previous, side="right")
    lo = np.maximum(lo, first_of_row)
    hi = np.minimum(hi, after_row)
    counts = np.maximum(hi - lo, 0)
    upper = np.repeat(np.arange(count), counts)
    lower = _concatenated_ranges(lo, counts)

    parent = list(range(count))

    def find(node: int) -> int:
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    for a, b in zip(lower.tolist(), upper.tolist()):
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    roots = np.array([find(i) for i in range(count)], dtype=np.int64)
    # The root of a component is its earliest run, so ranking roots numbers components in raster order.
    _, component = np.unique(roots, return_inverse=True)
    return rows, starts, stops, component.reshape(-1)


def _external_blobs(mask: np.ndarray) -> list[tuple[tuple[int, int, int, int], int]]:
    """Outermost blobs of ``mask`` in OpenCV's ``RETR_EXTERNAL`` order, as ``((x, y, w, h), filled_area)``.

    A blob (8-connected foreground) is outermost when it touches the background region connected to the image
    frame (4-connected, as in Suzuki-Abe border following), i.e. it does not sit inside a hole of another blob.
    Each outermost blob with its holes (and whatever sits in them) is one 8-connected component of "not outer
    background"; its bbox equals the blob's contour bbox and its pixel count is the "filled area".
    """
    height, width = mask.shape
    background = np.ones((height + 2, width + 2), dtype=bool)
    background[1:-1, 1:-1] = ~mask
    rows, starts, stops, component = _run_components(background, connectivity=4)
    outer = component == component[0]  # the first run is the top frame row
    outer_background = np.zeros(background.size, dtype=bool)
    flat_starts = rows[outer] * (width + 2) + starts[outer]
    outer_background[_concatenated_ranges(flat_starts, stops[outer] - starts[outer])] = True
    outer_background = outer_background.reshape(background.shape)
    filled = ~outer_background[1:-1, 1:-1]

    rows, starts, stops, component = _run_components(filled, connectivity=8)
    if len(rows) == 0:
        return []
    blobs = int(component.max()) + 1
    top = np.full(blobs, height)
    bottom = np.full(blobs, -1)
    left = np.full(blobs, width)
    right = np.full(blobs, -1)
    np.minimum.at(top, component, rows)
    np.maximum.at(bottom, component, rows)
    np.minimum.at(left, component, starts)
    np.maximum.at(right, component, stops - 1)
    area = np.bincount(component, weights=stops - starts, minlength=blobs).astype(np.int64)
    found = [
        ((int(left[i]), int(top[i]), int(right[i] - left[i] + 1), int(bottom[i] - top[i] + 1)), int(area[i]))
        for i in range(blobs)
    ]
    return found[::-1]  # OpenCV lists the contour found last in the raster scan first


def _binarise(mask: MaskLike, name: str) -> np.ndarray:
    """2-D bool mask from bool / uint8 (``> 127``, official) arrays or PIL images (greyscale ``> 127``)."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or PIL image, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask (H, W), got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if mask.dtype == np.uint8:
        return mask > 127
    raise TypeError(
        f"{name} must be a bool or uint8 mask, got {mask.dtype}; load it with tficon.core.io.load_mask first"
    )


def bbox_from_mask(mask: MaskLike, rule: str = "first") -> tuple[int, int, int, int]:
    """Bounding box ``(x, y, w, h)`` (pixels, w and h inclusive counts) of the user mask.

    Args:
        mask: 2-D bool mask, uint8 mask (set where ``> 127``, as official) or PIL image.
        rule: ``"first"`` (official): the first external contour in OpenCV's order (see the module docstring);
            ``"largest"``: the outermost blob whose filled region (blob plus its holes) has the most pixels,
            ties to the earlier in OpenCV's order; ``"union"``: the bbox of all mask pixels.
    """
    if rule not in BOX_RULES:
        raise ValueError(f"rule must be one of {BOX_RULES}, got {rule!r}")
    binary = _binarise(mask, "mask")
    if not binary.any():
        raise ValueError("mask is empty (no pixel set); draw the target region in white")
    if rule == "union":
        rows = np.flatnonzero(binary.any(axis=1))
        cols = np.flatnonzero(binary.any(axis=0))
        return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
    blobs = _external_blobs(binary)
    if rule == "first":
        return blobs[0][0]
    best = max(range(len(blobs)), key=lambda i: (blobs[i][1], -i))
    return blobs[best][0]

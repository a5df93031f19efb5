"""Exact placement geometry of TF-ICON: user mask/box + foreground -> pixel and latent boxes and index sets.

Everything here follows docs/algorithm.md §2.2-2.7 integer for integer. At H = W = 512 with latent
factor 8 every number equals the official code's (its constants 512, 256 and 64 are written here as the working
size H or W, ``min(H, W) / 2`` and the latent size). All functions are pure; results are frozen dataclasses.

Deliberate deviations from the official code (all documented where they happen):

- **Bounds.** The official code clamps the latent box end with ``min(63, .)`` and checks nothing else, so a box
  near the bottom/right edge crashes with a shape error (issue #19), and one off the top/left edge silently wraps.
  We validate the pixel window and the target box on every attention grid instead: a box *ending exactly at the
  edge* is valid here (a deliberate fix of the clamp bug), a box leaving the image raises a ``ValueError``, and
  ``clip=True`` moves the box centre inward (see ``compute_placement``).
- **Sizes.** Any working size (H, W) that is a multiple of ``latent_factor * 2**(levels - 1)`` is allowed, so that
  each attention grid samples the padded mask at an integer stride.

The core does not import OpenCV. The two OpenCV behaviours the official code depends on are reproduced with
numpy and tested against ``cv2`` in the test suite:

- the order of ``cv2.findContours(mask, RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)``: one contour per *outermost* blob
  (8-connected foreground, 4-connected background, blobs inside holes excluded), in *reverse* raster order of
  each blob's first pixel; index 0 is therefore the blob whose first pixel comes last in raster order;
- ``cv2.resize(..., INTER_NEAREST)``: source index ``min(floor(dst * (1.0 / (dst_size / src_size))), src_size - 1)``
  in double precision. This is the ``floor(dst * src_size / dst_size)`` rule of docs/algorithm.md §2.4 except where that
  product is an exact integer, where OpenCV's rounded reciprocal can land one below (e.g. 2 -> 98 pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from tficon.core.boxes import Box, as_user_box
from tficon.core.io import check_image_size, image_to_tensor

BOX_RULES = ("first", "largest", "union")

#: The advice of errors about boxes that leave the image, naming the option users actually have (this module's
#: ``clip`` argument is set from ``CompositionConfig.clip_box``).
CLIP_ADVICE = "pass clip_box=True to shift it inside (a CompositionConfig field; --clip-box on the command line)"

MaskLike = Union[np.ndarray, Image.Image]
BoxLike = Sequence[int]


# ``Box`` (the half-open grid box) lives in tficon.core.boxes beside the user-box parser; it is imported above,
# so ``from tficon.core.placement import Box`` keeps working.


# --------------------------------------------------------------------------------------------------------------
# Connected components (numpy + a union-find over horizontal runs)
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------------------------


def _ceil_half(n: int) -> int:
    return -(-n // 2)


#: How boxes are laid on the grids. "official": the official integer formulas, exact at 512 x 512 with latent
#: factor 8. "centred": the same object size, but every grid's target box is the reference box translated by
#: the rounded pixel offset and masks are sampled at cell centres, so the object lands where the user's box is
#: on every grid. "auto": "official" at the official size, "centred" at every other size.
GEOMETRIES = ("auto", "official", "centred")


def resolve_geometry(geometry: str, image_size: tuple[int, int], latent_factor: int) -> str:
    """``"auto"`` -> ``"official"`` at 512 x 512 with latent factor 8 (where the official numbers are defined),
    else ``"centred"``; explicit choices are returned as they are.

    Why not official everywhere: its truncations (``int(f_row * r)``, ``ceil(n / 2)`` rows above the centre,
    top-left mask sampling) each move the box up/left by a fraction of a cell. At 512 px a cell of the 64 x 64
    latent grid is 8 px and the bias is about 1 % of the image; on a 16 x 16 latent grid (a 64 px image) it is
    5 % at the latent grid and up to a quarter of the image on the 4 x 4 attention grid, which pulls the
    composed object visibly above the box.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if geometry != "auto":
        return geometry
    return "official" if tuple(image_size) == (512, 512) and int(latent_factor) == 8 else "centred"


def _reference_span(extent: int, size: int, grid: int, geometry: str = "official") -> tuple[int, int]:
    """Reference box span on a grid of ``grid`` cells over ``size`` pixels (docs/algorithm.md §2.6, ``r`` = grid, 512 = size).

    Centred geometry rounds the end up instead of down, so the span covers the whole object window.
    """
    start = int(0.5 * (size - extent) / size * grid)
    if geometry == "centred":
        return start, -(-((size + extent) // 2) * grid // size)
    return start, int(0.5 * (size + extent) / size * grid)


def _target_span(fraction: float, grid: int, extent: int) -> tuple[int, int]:
    """Target span ``[c - ceil(extent/2), c + floor(extent/2))`` around ``c = int(fraction * grid)`` (docs/algorithm.md §2.5/2.6)."""
    centre = int(fraction * grid)
    return centre - _ceil_half(extent), centre + extent // 2


def _pixel_target_span(fraction: float, size: int, extent: int, geometry: str) -> tuple[int, int]:
    """The pixel window of an ``extent``-px object centred at ``fraction * size``: official truncation, or the
    nearest integer start to the exact centre."""
    if geometry == "centred":
        start = math.floor(fraction * size - extent / 2 + 0.5)
        return start, start + extent
    return _target_span(fraction, size, extent)


def _grid_spans(fraction: float, size: int, extent: int, grid: int, geometry: str) -> tuple[int, int, int, int]:
    """``(reference start, stop, target start, stop)`` on a ``grid``-cell axis.

    Official: docs/algorithm.md §2.6's formulas. Centred: the reference span moved by the object's pixel offset rounded to
    cells; where the moved span passes an edge of the grid (its end cells are only partly covered by the
    object, which itself lies inside the image), both spans lose the same cells, so they stay aligned.
    """
    ref_start, ref_stop = _reference_span(extent, size, grid, geometry)
    if geometry != "centred":
        return (ref_start, ref_stop, *_target_span(fraction, grid, ref_stop - ref_start))
    offset_px = _pixel_target_span(fraction, size, extent, geometry)[0] - (size - extent) // 2
    shift = math.floor(offset_px * grid / size + 0.5)
    cut_start = max(0, -(ref_start + shift))
    cut_stop = max(0, ref_stop + shift - grid)
    ref_start, ref_stop = ref_start + cut_start, ref_stop - cut_stop
    return ref_start, ref_stop, ref_start + shift, ref_stop + shift


def _axis_fits(fraction: float, size: int, extent: int, grids: Sequence[int], geometry: str = "official") -> bool:
    """Whether the pixel window and the target span on every grid lie inside along one axis."""
    start, stop = _pixel_target_span(fraction, size, extent, geometry)
    if start < 0 or stop > size:
        return False
    for grid in grids:
        _, _, start, stop = _grid_spans(fraction, size, extent, grid, geometry)
        if start < 0 or stop > grid or stop <= start:
            return False
    return True


def _clip_fraction(fraction: float, size: int, extent: int, grids: Sequence[int], geometry: str = "official") -> float | None:
    """The fitting centre fraction nearest to ``fraction``: itself, else on the official 0.01 grid.

    Ties go towards the image centre. None if no centre fits (the object is too large for the image).
    """
    if _axis_fits(fraction, size, extent, grids, geometry):
        return fraction
    candidates = [round(k / 100, 2) for k in range(101)]
    candidates.sort(key=lambda c: (abs(c - fraction), abs(c - 0.5)))
    for candidate in candidates:
        if _axis_fits(candidate, size, extent, grids, geometry):
            return candidate
    return None


@dataclass(frozen=True)
class Placement:
    """Where the foreground goes, in pixels and on every latent/attention grid (docs/algorithm.md §2.2-2.7).

    Sizes ``(H, W)`` are (rows, cols); ``fg_size`` and ``foreground_size`` are PIL-style ``(width, height)``.
    """

    image_size: tuple[int, int]
    latent_factor: int
    bbox: tuple[int, int, int, int] | None
    f_row: float
    f_col: float
    scale: float
    fg_size: tuple[int, int]
    ref_window: Box
    target_window: Box
    latent_ref_box: Box
    latent_target_box: Box
    #: ``(W, H)`` of the original foreground image (its aspect ratio gave ``fg_size``).
    foreground_size: tuple[int, int]
    #: ``(H, W)`` of the user mask the bbox was measured in (the working size for a direct box); None otherwise.
    mask_size: tuple[int, int] | None
    #: The attention grids ``(h, w)`` whose boxes were validated: the latent grid and its halvings.
    attention_grids: tuple[tuple[int, int], ...]
    #: True when ``clip=True`` moved the centre (``f_row``/``f_col`` then hold the moved values).
    clipped: bool
    #: "official" or "centred" (see ``GEOMETRIES``): how boxes and masks are laid on the grids.
    geometry: str = "official"

    @property
    def latent_size(self) -> tuple[int, int]:
        """``(H / f, W / f)``."""
        return self.image_size[0] // self.latent_factor, self.image_size[1] // self.latent_factor

    def boxes_at(self, h: int, w: int) -> tuple[Box, Box]:
        """``(reference box, target box)`` on an ``h x w`` attention grid (docs/algorithm.md §2.7).

        The docs/algorithm.md §2.6 formulas re-evaluated on this grid (their own truncations; not the latent box divided).
        Raises ValueError when the target box leaves the grid or either box is empty on it.
        """
        reference, target = _grid_boxes(self.image_size, self.fg_size, self.f_row, self.f_col, h, w, self.geometry)
        _check_grid_boxes(reference, target, h, w, self)
        return reference, target


def _grid_boxes(
    image_size: tuple[int, int],
    fg_size: tuple[int, int],
    f_row: float,
    f_col: float,
    h: int,
    w: int,
    geometry: str = "official",
) -> tuple[Box, Box]:
    """Unvalidated ``(reference box, target box)`` on an ``h x w`` grid (docs/algorithm.md §2.6 with r -> h or w)."""
    height, width = image_size
    w_fg, h_fg = fg_size
    top, bottom, row0, row1 = _grid_spans(f_row, height, h_fg, h, geometry)
    left, right, col0, col1 = _grid_spans(f_col, width, w_fg, w, geometry)
    return Box(top, left, bottom, right), Box(row0, col0, row1, col1)


def _check_grid_boxes(reference: Box, target: Box, h: int, w: int, placement: Placement) -> None:
    """Validate the boxes on one grid.

    On the latent grid (where the start latent is pasted and blended) both boxes must be non-empty
    and the target box must lie inside. On the coarser attention grids the official code only
    crashes when the target box passes the bottom or right edge (an index >= N); a box that starts
    above or left of the grid (row or column -1, common near the top/left edge because the centre is
    truncated down) wraps its linear indices around, as the official tensor indexing does, and an
    empty box simply injects nothing there. We reproduce that and raise only where the official
    code fails; ``clip=True`` moves the centre so that every grid fits instead.
    """
    w_fg, h_fg = placement.fg_size
    latent = (h, w) == placement.latent_size
    where = f"user box (x, y, w, h) = {placement.bbox}" if placement.bbox is not None else "requested centre"
    if latent and (reference.height <= 0 or reference.width <= 0):
        raise ValueError(
            f"the {w_fg}x{h_fg} px object has an empty box ({reference}) on the {h}x{w} latent grid; "
            "make the box larger"
        )
    outside = not target.inside(h, w) if latent else (target.bottom > h or target.right > w)
    if outside:
        raise ValueError(
            f"target box {target} leaves the {h}x{w} {'latent' if latent else 'attention'} grid ({where}; centre "
            f"f_row={placement.f_row}, f_col={placement.f_col}; object {w_fg}x{h_fg} px): move the box inward or "
            "make it smaller, or " + CLIP_ADVICE
        )


def _levels_grids(latent: tuple[int, int], levels: int) -> tuple[tuple[int, int], ...]:
    """The latent grid and its ``levels - 1`` halvings (exact: sizes are checked to be divisible)."""
    return tuple((latent[0] >> k, latent[1] >> k) for k in range(levels))


def _build_placement(
    f_row: float,
    f_col: float,
    scale: float,
    foreground_size: tuple[int, int],
    image_size: tuple[int, int],
    latent_factor: int,
    *,
    bbox: tuple[int, int, int, int] | None,
    mask_size: tuple[int, int] | None,
    clip: bool,
    levels: int,
    geometry: str = "auto",
    exact_fractions: tuple[float, float] | None = None,
) -> Placement:
    """Shared tail of both routes: validate, size the foreground (2.4), clip if asked, build all boxes."""
    if isinstance(latent_factor, bool) or not isinstance(latent_factor, (int, np.integer)) or latent_factor < 1:
        raise ValueError(f"latent_factor must be a positive integer, got {latent_factor!r}")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    height, width = check_image_size(image_size, int(latent_factor), name="image_size")
    multiple = int(latent_factor) * 2 ** (int(levels) - 1)
    if height % multiple or width % multiple:
        raise ValueError(
            f"image_size (H, W) = ({height}, {width}) must be multiples of {multiple} (latent factor "
            f"{latent_factor} x 2^{levels - 1} for {levels} UNet levels) so that every attention grid samples "
            "the mask at an integer stride; resize the background accordingly"
        )
    try:
        fg_width, fg_height = (int(v) for v in foreground_size)
    except (TypeError, ValueError):
        raise ValueError(f"foreground_size must be (W, H) of the foreground image, got {foreground_size!r}") from None
    if fg_width <= 0 or fg_height <= 0:
        raise ValueError(f"foreground_size must be positive (W, H), got {foreground_size!r}")
    for label, value in (("f_row", f_row), ("f_col", f_col), ("scale", scale)):
        if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}; it is the object's longer side / (min(H, W) / 2)")

    # Spec 2.4: the foreground keeps its aspect ratio; its longer side becomes L = scale * 256 (at 512).
    length = scale * (min(height, width) / 2)
    aspect = fg_height / fg_width
    if aspect > 1:
        h_fg, w_fg = int(length), int(length / aspect)
    else:
        w_fg, h_fg = int(length), int(length * aspect)
    if w_fg < 1 or h_fg < 1:
        raise ValueError(
            f"the box is too small: the {fg_width}x{fg_height} foreground would be resized to {w_fg}x{h_fg} px "
            f"(scale {scale}); draw a larger box"
        )
    if w_fg > width or h_fg > height:
        raise ValueError(
            f"the box is too large: the foreground would be resized to {w_fg}x{h_fg} px, larger than the "
            f"{width}x{height} image (scale {scale}); draw a smaller box"
        )

    latent = (height // latent_factor, width // latent_factor)
    grids = _levels_grids(latent, int(levels))
    resolved = resolve_geometry(geometry, (height, width), int(latent_factor))
    layout = dict(
        f_row=f_row, f_col=f_col, scale=scale, sizes=(height, width, w_fg, h_fg, fg_width, fg_height),
        latent_factor=int(latent_factor), grids=grids, bbox=bbox, mask_size=mask_size, clip=clip,
    )
    # The centred layout places the object at the box's exact centre, not at the official 0.01-rounded one.
    centred = dict(layout, **dict(zip(("f_row", "f_col"), exact_fractions or (f_row, f_col))))
    try:
        return _lay_out(resolved, **(centred if resolved == "centred" else layout))
    except ValueError as official_error:
        # "auto" keeps the official numbers wherever the official code can place the box. Near the top/left
        # edge its truncations push the window out of the image where the same box at the bottom/right edge
        # fits; such boxes (which the official code cannot run) get the centred layout instead.
        if geometry != "auto" or resolved != "official":
            raise
        try:
            return _lay_out("centred", **centred)
        except ValueError:
            raise official_error from None


def _lay_out(
    geometry: str,
    *,
    f_row: float,
    f_col: float,
    scale: float,
    sizes: tuple[int, int, int, int, int, int],
    latent_factor: int,
    grids: tuple[tuple[int, int], ...],
    bbox,
    mask_size,
    clip: bool,
) -> Placement:
    """Clip if asked, then build and validate every box with one geometry."""
    height, width, w_fg, h_fg, fg_width, fg_height = sizes
    clipped = False
    if clip:
        new_row = _clip_fraction(f_row, height, h_fg, [g[0] for g in grids], geometry)
        new_col = _clip_fraction(f_col, width, w_fg, [g[1] for g in grids], geometry)
        if new_row is None or new_col is None:
            raise ValueError(
                f"clip_box=True cannot fit the {w_fg}x{h_fg} px object into the {width}x{height} image on every "
                "attention grid; draw a smaller box"
            )
        clipped = (new_row, new_col) != (f_row, f_col)
        f_row, f_col = new_row, new_col

    ref_window = Box((height - h_fg) // 2, (width - w_fg) // 2, (height + h_fg) // 2, (width + w_fg) // 2)
    row0, row1 = _pixel_target_span(f_row, height, h_fg, geometry)
    col0, col1 = _pixel_target_span(f_col, width, w_fg, geometry)
    target_window = Box(row0, col0, row1, col1)
    box_text = f"user box (x, y, w, h) = {bbox}" if bbox is not None else "requested centre"
    if not target_window.inside(height, width):
        raise ValueError(
            f"target window {target_window} ({box_text}; centre f_row={f_row}, f_col={f_col}; object "
            f"{w_fg}x{h_fg} px) leaves the {width}x{height} image: move the box inward or make it smaller, "
            "or " + CLIP_ADVICE
        )
    boxes = [_grid_boxes((height, width), (w_fg, h_fg), f_row, f_col, h, w, geometry) for h, w in grids]
    placement = Placement(
        image_size=(height, width),
        latent_factor=latent_factor,
        bbox=bbox,
        f_row=f_row,
        f_col=f_col,
        scale=scale,
        fg_size=(w_fg, h_fg),
        ref_window=ref_window,
        target_window=target_window,
        latent_ref_box=boxes[0][0],
        latent_target_box=boxes[0][1],
        foreground_size=(fg_width, fg_height),
        mask_size=mask_size,
        attention_grids=grids,
        clipped=clipped,
        geometry=geometry,
    )
    for (h, w), (reference, target) in zip(grids, boxes):
        _check_grid_boxes(reference, target, h, w, placement)
    return placement


def _scale_from_bbox(w_box: int, h_box: int, base: float) -> float:
    """Official ``scale`` (docs/algorithm.md §2.2, item 3): the same float expressions, then Python ``round(., 2)``."""
    if h_box / w_box > 1:
        scale = h_box / base
    else:
        scale = h_box / ((h_box / w_box) * base)
    return round(scale, 2)


def _as_box(value: object) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)`` if ``value`` is a box (``tficon.core.boxes.as_user_box``), else None (a mask)."""
    return as_user_box(value, name="mask_or_box")


def compute_placement(
    mask_or_box: MaskLike | BoxLike,
    foreground_size: tuple[int, int],
    image_size: tuple[int, int],
    latent_factor: int,
    *,
    box_rule: str = "first",
    clip: bool = False,
    levels: int = 4,
    geometry: str = "auto",
) -> Placement:
    """Placement from a user mask or box (docs/algorithm.md §2.2, 2.4-2.7).

    Args:
        mask_or_box: a 2-D user mask (bool, uint8 set where ``> 127``, or PIL image) in its own pixel
            coordinates, or a box ``(x, y, w, h)`` in working-image pixels.
        foreground_size: ``(W, H)`` of the original foreground image; its aspect ratio drives ``fg_size``.
        image_size: working size ``(H, W)``, multiples of ``latent_factor * 2**(levels - 1)``.
        latent_factor: pixels per latent cell (8 for SD, 2 for the toy model).
        box_rule: which blob of a multi-blob mask gives the bbox (``bbox_from_mask``); official ``"first"``.
        clip: if the target window or a target box leaves the image/grids, move the centre instead of raising:
            each axis keeps its requested fraction if it fits, else takes the nearest fraction on the official
            0.01 grid for which the pixel window and the boxes on all attention grids fit (ties toward the
            centre). The object's size never changes. ``Placement.clipped`` tells whether it moved.
        levels: number of UNet resolutions (latent grid and its halvings) whose boxes are validated; SD has 4
            (64/32/16/8 at 512).
        geometry: ``"auto"`` (official at 512 x 512 with latent factor 8, centred elsewhere), ``"official"`` or
            ``"centred"``; see ``resolve_geometry``.

    Centre and scale (official, generalised to a mask of size ``(mask_H, mask_W)``):
    ``f_row = round((y + h/2) / mask_H, 2)``, ``f_col = round((x + w/2) / mask_W, 2)``,
    ``scale = round(max-side expression / (min(mask_H, mask_W) / 2), 2)``.

    A target box ending exactly at the image/grid edge is valid (the official ``min(63, .)`` clamp would crash
    there: a deliberate fix). A box leaving the image raises ValueError unless ``clip=True``.
    """
    if box_rule not in BOX_RULES:
        raise ValueError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
    box = _as_box(mask_or_box)
    if box is not None:
        x, y, w_box, h_box = box
        mask_height, mask_width = check_image_size(image_size, 1, name="image_size")
    else:
        binary = _binarise(mask_or_box, "mask_or_box")  # type: ignore[arg-type]
        if not binary.any():
            raise ValueError(
                "mask_or_box is an empty mask (no pixel set, uint8 masks count values > 127); "
                "draw the target region in white or pass a box (x, y, w, h)"
            )
        box = bbox_from_mask(binary, box_rule)
        x, y, w_box, h_box = box
        mask_height, mask_width = binary.shape
    centre_x = x + w_box / 2
    centre_y = y + h_box / 2
    f_row = round(centre_y / mask_height, 2)
    f_col = round(centre_x / mask_width, 2)
    scale = _scale_from_bbox(w_box, h_box, min(mask_height, mask_width) / 2)
    return _build_placement(
        f_row,
        f_col,
        scale,
        foreground_size,
        image_size,
        latent_factor,
        bbox=box,
        mask_size=(mask_height, mask_width),
        clip=clip,
        levels=levels,
        geometry=geometry,
        exact_fractions=(centre_y / mask_height, centre_x / mask_width),
    )


def placement_from_center_scale(
    f_row: float,
    f_col: float,
    scale: float,
    foreground_size: tuple[int, int],
    image_size: tuple[int, int],
    latent_factor: int,
    *,
    clip: bool = False,
    levels: int = 4,
    geometry: str = "auto",
) -> Placement:
    """Placement from a centre and a scale, like the official notebook's ``CENTER_ROW_FROM_TOP`` etc.

    Args:
        f_row, f_col: centre as fractions of the image height/width (used as given, not rounded).
        scale: the foreground's longer side divided by ``min(H, W) / 2``.
        Other arguments as in ``compute_placement``.
    """
    return _build_placement(
        f_row,
        f_col,
        scale,
        foreground_size,
        image_size,
        latent_factor,
        bbox=None,
        mask_size=None,
        clip=clip,
        levels=levels,
        geometry=geometry,
    )


# --------------------------------------------------------------------------------------------------------------
# Pixels: foreground canvas, object mask, cut-and-paste
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Index sets for the attention processor (docs/algorithm.md §2.7)
# --------------------------------------------------------------------------------------------------------------


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

"""Where the foreground goes: one job, the ``Placement`` (pixel windows and the boxes on every latent and
attention grid) from a user mask or box, or from a centre and a scale (docs/algorithm.md §2.2, 2.4-2.7).

Everything here follows docs/algorithm.md integer for integer. At H = W = 512 with latent factor 8 every number
equals the official code's (its constants 512, 256 and 64 are written here as the working size H or W,
``min(H, W) / 2`` and the latent size). All functions are pure; results are frozen dataclasses.

Deliberate deviations from the official code (all documented where they happen):

- **Bounds.** The official code clamps the latent box end with ``min(63, .)`` and checks nothing else, so a box
  near the bottom/right edge crashes with a shape error (issue #19), and one off the top/left edge silently wraps.
  We validate the pixel window and the target box on every attention grid instead: a box *ending exactly at the
  edge* is valid here (a deliberate fix of the clamp bug), a box leaving the image raises a ``ValueError``, and
  ``clip=True`` moves the box centre inward (see ``compute_placement``).
- **Sizes.** Any working size (H, W) that is a multiple of ``latent_factor * 2**(levels - 1)`` is allowed, so that
  each attention grid samples the padded mask at an integer stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tficon.core.boxes import Box, as_user_box
from tficon.core.io import check_image_size
from tficon.core.placement.contours import BOX_RULES, MaskLike, _binarise, bbox_from_mask

#: The advice of errors about boxes that leave the image, naming the option users actually have (this module's
#: ``clip`` argument is set from ``CompositionConfig.clip_box``).
CLIP_ADVICE = "pass clip_box=True to shift it inside (a CompositionConfig field; --clip-box on the command line)"

BoxLike = Sequence[int]


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

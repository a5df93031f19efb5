"""Pixels for the views: plain tensors and arrays in, ``(H, W, 3)`` uint8 RGB arrays and PNG bytes out.

Every view of ``tficon.widgets`` (live widgets and static figures alike) draws through these small
functions, so what a paper figure shows is exactly what the Explorer shows. Nothing here knows about
a Session or about ipywidgets; only matplotlib's colour maps are used (no pyplot, no backend state).

Conventions: an *image* is ``(H, W, 3)`` uint8; a *map* is a 2-D float array ``(h, w)`` on some
attention or latent grid; boxes are ``(top, left, bottom, right)`` half-open, in the pixels of the
image they are drawn on. Small images are enlarged by an integer nearest-neighbour factor so that
latent and attention cells stay visible as cells (a 16x16 grid is never blurred into a false detail).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np

__all__ = [
    "as_rgb",
    "png_bytes",
    "data_url",
    "enlarge",
    "enlarge_to",
    "colourise",
    "heat_overlay",
    "draw_marker",
    "draw_crosshair",
    "draw_box",
    "tint",
    "channel_strip",
    "blank",
]


def as_rgb(image: Any, *, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Any image-like value -> ``(H, W, 3)`` uint8.

    Accepts a PIL image, a numpy array ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (uint8 as is, floats in
    ``value_range``), or a torch tensor ``(3, H, W)`` / ``(1, 3, H, W)`` / ``(H, W)`` with values in
    ``value_range`` (use ``(-1, 1)`` for tficon's image tensors, ``(0, 1)`` for previews).
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if hasattr(image, "detach"):  # torch
        array = image.detach().float().cpu().numpy()
        if array.ndim == 4:
            if array.shape[0] != 1:
                raise ValueError(f"image must hold one picture, got a batch of shape {tuple(array.shape)}")
            array = array[0]
        if array.ndim == 3:
            if array.shape[0] not in (1, 3):
                raise ValueError(f"image tensor must be (3, H, W) or (1, H, W), got {tuple(array.shape)}")
            array = np.moveaxis(array, 0, -1)
    else:
        array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (3, H, W), got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return np.ascontiguousarray(array.astype(np.uint8) * 255)
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    scaled = (array.astype(np.float64) - low) / (high - low)
    return np.ascontiguousarray((np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an ``(H, W, 3)`` uint8 image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(as_rgb(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URL (what the canvas widgets display; works offline)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor`` (each pixel becomes a factor x factor block)."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def enlarge_to(image: np.ndarray, size: int) -> np.ndarray:
    """Enlarge by the largest integer factor that keeps the longer side <= ``size`` (never shrinks)."""
    longest = max(image.shape[0], image.shape[1])
    return enlarge(image, max(1, size // longest))


def _resample_nearest(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resample of a 2-D map to ``(height, width)`` (cell ``i`` covers the pixels whose
    centre falls in it), so a coarse attention map lines up with the image it is drawn over."""
    rows = np.minimum((np.arange(height) + 0.5) * values.shape[0] / height, values.shape[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(width) + 0.5) * values.shape[1] / width, values.shape[1] - 1).astype(np.int64)
    return values[np.ix_(rows, cols)]


def colourise(values: np.ndarray, *, cmap: str = "inferno", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """A 2-D map -> ``(h, w, 3)`` uint8 through a matplotlib colour map (``vmin``/``vmax`` default to the
    map's range; a constant map is drawn at the low end)."""
    import matplotlib

    values = np.asarray(values, dtype=np.float64)
    low = float(values.min()) if vmin is None else vmin
    high = float(values.max()) if vmax is None else vmax
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    rgba = matplotlib.colormaps[cmap](np.clip(scaled, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def colour_bar_html(high: float, *, cmap: str = "inferno", stops: int = 6, label: str = "p") -> str:
    """A small HTML colour bar for a heat map drawn by :func:`heat_overlay` (colour 0 -> ``high``)."""
    colours = colourise(np.linspace(0.0, 1.0, stops)[None, :], cmap=cmap, vmin=0.0, vmax=1.0)[0]
    gradient = ", ".join(f"rgb({r},{g},{b})" for r, g, b in colours)
    return (
        f"<div style='height:6px;margin-top:2px;background:linear-gradient(to right, {gradient})'></div>"
        f"<div style='display:flex;justify-content:space-between;font-size:9px;color:#555'>"
        f"<span>{label} = 0</span><span>{high:.3f}</span></div>"
    )


def heat_overlay(
    base: np.ndarray,
    heat: np.ndarray,
    *,
    size: int | None = None,
    cmap: str = "inferno",
    strength: float = 0.85,
    peak: float | None = None,
) -> np.ndarray:
    """Draw a non-negative map over an image.

    The map is scaled by ``peak`` (default: its own maximum; pass a common peak to draw several maps on one
    colour scale, values above it are clipped), resampled onto the image by nearest neighbour (one block per cell)
    and blended with an opacity proportional to its value, so weak attention leaves the image visible
    and strong attention is a solid colour. ``size``: enlarge the image first (integer factor).

    base: ``(H, W, 3)`` uint8; heat: ``(h, w)`` >= 0. Returns ``(H', W', 3)`` uint8.
    """
    image = as_rgb(base)
    if size is not None:
        image = enlarge_to(image, size)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"heat must be a 2-D map (h, w), got shape {heat.shape}")
    peak = float(heat.max()) if peak is None else float(peak)
    weight = heat / peak if peak > 0 else np.zeros_like(heat)
    weight = _resample_nearest(np.clip(weight, 0.0, 1.0), image.shape[0], image.shape[1])
    colour = colourise(weight, cmap=cmap, vmin=0.0, vmax=1.0).astype(np.float64)
    alpha = (strength * weight)[..., None]
    blended = image.astype(np.float64) * (1.0 - alpha) + colour * alpha
    return (blended + 0.5).astype(np.uint8)


def draw_marker(image: np.ndarray, x: float, y: float, *, radius: int = 5, colour=(0, 255, 128)) -> np.ndarray:
    """A crosshair centred at pixel ``(x, y)`` (a copy; clipped at the edges)."""
    out = as_rgb(image).copy()
    height, width = out.shape[:2]
    cx, cy = int(round(x)), int(round(y))
    for d in range(-radius, radius + 1):
        if abs(d) < 2:  # leave the centre pixel visible
            continue
        if 0 <= cy < height and 0 <= cx + d < width:
            out[cy, cx + d] = colour
        if 0 <= cy + d < height and 0 <= cx < width:
            out[cy + d, cx] = colour
    return out


def draw_crosshair(image: np.ndarray, x: float, y: float, *, colour=(255, 255, 255), opacity: float = 0.6, gap: int = 6) -> np.ndarray:
    """Thin lines through pixel ``(x, y)`` across the whole image (its row and its column), blended at
    ``opacity``, leaving ``gap`` pixels around the point clear; then :func:`draw_marker` on it (a copy)."""
    out = as_rgb(image).astype(np.float64)
    height, width = out.shape[:2]
    cx, cy = int(round(x)), int(round(y))
    colour = np.asarray(colour, dtype=np.float64)
    if 0 <= cy < height:
        cols = np.r_[0 : max(0, cx - gap), min(width, cx + gap + 1) : width]
        out[cy, cols] = (1 - opacity) * out[cy, cols] + opacity * colour
    if 0 <= cx < width:
        rows = np.r_[0 : max(0, cy - gap), min(height, cy + gap + 1) : height]
        out[rows, cx] = (1 - opacity) * out[rows, cx] + opacity * colour
    return draw_marker((out + 0.5).astype(np.uint8), x, y)


def draw_box(image: np.ndarray, box: Sequence[int], *, colour=(255, 64, 64), width: int = 1) -> np.ndarray:
    """Outline of the half-open box ``(top, left, bottom, right)`` (a copy; clipped at the edges)."""
    out = as_rgb(image).copy()
    height, width_px = out.shape[:2]
    top, left, bottom, right = (int(v) for v in box)
    t, b = max(top, 0), min(bottom, height)
    l, r = max(left, 0), min(right, width_px)
    if t >= b or l >= r:
        return out
    for k in range(width):
        if 0 <= top + k < height:
            out[top + k, l:r] = colour
        if 0 <= bottom - 1 - k < height:
            out[bottom - 1 - k, l:r] = colour
        if 0 <= left + k < width_px:
            out[t:b, left + k] = colour
        if 0 <= right - 1 - k < width_px:
            out[t:b, right - 1 - k] = colour
    return out


def tint(image: np.ndarray, mask: np.ndarray, *, colour=(40, 160, 255), strength: float = 0.55) -> np.ndarray:
    """Tint the pixels where a bool ``mask`` is set; a coarser mask is resampled onto the image (nearest)."""
    out = as_rgb(image).astype(np.float64)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != out.shape[:2]:
        mask = _resample_nearest(mask.astype(np.float64), out.shape[0], out.shape[1]) > 0.5
    alpha = strength * mask[..., None]
    out = out * (1.0 - alpha) + np.asarray(colour, dtype=np.float64) * alpha
    return (out + 0.5).astype(np.uint8)


def channel_strip(latent: Any, *, gap: int = 1, cmap: str = "RdBu_r") -> np.ndarray:
    """A latent ``(1, C, h, w)`` or ``(C, h, w)`` as its C channels side by side, each on a symmetric
    colour scale around 0 (its own max |value|), separated by ``gap`` white columns: ``(h, C*w + gaps, 3)``."""
    array = latent.detach().float().cpu().numpy() if hasattr(latent, "detach") else np.asarray(latent, dtype=np.float64)
    if array.ndim == 4:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"latent must be (1, C, h, w) or (C, h, w), got shape {array.shape}")
    channels, height, width = array.shape
    out = np.full((height, channels * width + gap * (channels - 1), 3), 255, dtype=np.uint8)
    for c in range(channels):
        bound = float(np.abs(array[c]).max()) or 1.0
        out[:, c * (width + gap) : c * (width + gap) + width] = colourise(array[c], cmap=cmap, vmin=-bound, vmax=bound)
    return out


def blank(height: int, width: int, colour=(235, 235, 235)) -> np.ndarray:
    """A plain placeholder image."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = colour
    return out

"""What the Explorer shows of a composition strategy: pure functions over configs, masks and pictures.

- :func:`preset_update`: the ``Session.update`` arguments that make a configuration follow a preset, keeping every
  setting that no preset controls (steps, seed, guidance, ...);
- :func:`preset_summary`, :func:`presets_help`: a preset in one line of HTML, and every preset for a hover text;
- :func:`outline`, :func:`draw_outline`: the border of a bool mask, and that border drawn over a picture;
- :func:`share_inside`: how much of a heat map lies inside a region;
- :func:`blend_mask_picture`, :func:`proposal_picture`, :func:`cross_attention_picture`: the pictures of the adaptive
  blend mask of a step, of a proposed object mask, and of the object words' cross-attention with the placed object
  outlined;
- :func:`layer_marks`: which self-attention layers take the composite at a step (``inject_layers``).

Nothing here touches widgets or a Session; ``tficon.widgets.strategy_panel`` and the step and attention panels draw
with these.
"""

from __future__ import annotations

import html
from typing import Iterable

import numpy as np

from tficon.core.presets import get_preset, preset_of, presets, with_preset

from . import render

__all__ = [
    "preset_update", "preset_summary", "presets_help", "outline", "draw_outline", "share_inside",
    "blend_mask_picture", "proposal_picture", "cross_attention_picture", "layer_marks", "INJECTED", "PLAIN",
]  # fmt: skip

#: Colours of the strategy pictures: the placed object's (or box's) outline, and a kept / proposed region.
OUTLINE_COLOUR = (255, 255, 255)
BOX_COLOUR = (255, 64, 64)
REGION_COLOUR = (40, 200, 120)


def preset_update(config, name: str) -> dict:
    """The settings ``config`` must change to follow preset ``name`` ({} when it already does): every setting that
    some preset sets takes ``name``'s value, or its default where ``name`` leaves it alone (so ``tf-icon`` switches
    off what ``tale`` switched on); the others (steps, seed, guidance, the object's words, ...) stay as they are.
    An unknown name raises a ValueError listing the presets."""
    target = with_preset(config, name)
    return {
        field: getattr(target, field)
        for field in config.__dataclass_fields__
        if getattr(target, field) != getattr(config, field)
    }


def preset_summary(config) -> str:
    """One line of HTML: the preset ``config`` follows (``tficon.core.presets.preset_of``), its description, what it
    sets and its source; or that the settings mix presets."""
    name = preset_of(config)
    if name is None:
        return (
            "<span style='font-size:11px;color:#555'><b>custom</b>: these settings follow no single preset "
            "(choose one to switch to it)</span>"
        )
    preset = get_preset(name)
    sets = ", ".join(f"{k}={v!r}" for k, v in preset.changes.items()) or "the defaults"
    return (
        f"<div style='font-size:11px;color:#333;max-width:760px;white-space:normal'><b>{html.escape(name)}</b>: "
        f"{html.escape(preset.description)}<br><span style='color:#555'>sets {html.escape(sets)} &middot; source: "
        f"{html.escape(preset.source)}</span></div>"
    )


def presets_help() -> str:
    """Every registered preset, ``name: description`` one a line (the selector's hover text)."""
    return "\n".join(f"{p.name}: {p.description}" for p in presets().values())


def outline(mask) -> np.ndarray:
    """The border of a 2-D bool mask: its cells with a 4-neighbour outside it (or on the edge of the grid)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D bool map (h, w), got shape {mask.shape}")
    inner = np.pad(mask, 1, constant_values=False)
    interior = inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:] & mask
    return mask & ~interior


def _on_picture(mask, shape: tuple[int, int]) -> np.ndarray:
    """A bool mask resampled onto a picture's pixels (nearest: a coarse cell becomes a block)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == shape:
        return mask
    rows = (np.arange(shape[0]) * mask.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * mask.shape[1]) // shape[1]
    return mask[rows][:, cols]


def draw_outline(picture: np.ndarray, mask, *, colour=OUTLINE_COLOUR) -> np.ndarray:
    """``picture`` with the border of ``mask`` (any grid; resampled onto the picture first) drawn in ``colour``."""
    out = render.as_rgb(picture).copy()
    out[outline(_on_picture(mask, out.shape[:2]))] = colour
    return out


def share_inside(heat, region) -> float:
    """The share of a non-negative map's total inside a bool region of the same grid (nan when the map is all 0)."""
    heat = np.asarray(heat, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if heat.shape != region.shape:
        raise ValueError(f"heat {heat.shape} and region {region.shape} must be on the same grid")
    total = heat.sum()
    return float(heat[region].sum() / total) if total > 0 else float("nan")


def _squeeze(mask) -> np.ndarray:
    array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    while array.ndim > 2:
        array = array[0]
    return array.astype(bool)


def blend_mask_picture(frame, blend_mask, box_mask, *, size: int) -> tuple[np.ndarray, str]:
    """The adaptive blend mask of a step (True: the generation kept, elsewhere the background blended in) tinted over
    ``frame`` (e.g. the step's x0 preview), with the target box outlined in red; and its caption."""
    keep, box = _squeeze(blend_mask), _squeeze(box_mask)
    picture = render.enlarge_to(render.as_rgb(frame), size)
    picture = draw_outline(render.tint(picture, keep, colour=REGION_COLOUR), box, colour=BOX_COLOUR)
    inside = int((keep & box).sum())
    caption = (
        f"adaptive blend mask (green: kept, {int(keep.sum())} latent cells, {inside} of them in the box of "
        f"{int(box.sum())}; red: the box, which the official blend keeps)"
    )
    return picture, caption


def proposal_picture(background, proposal, box_mask, *, size: int) -> np.ndarray:
    """A proposed object mask tinted over the background, the current target box outlined in red."""
    picture = render.enlarge_to(render.as_rgb(background), size)
    return draw_outline(render.tint(picture, _squeeze(proposal), colour=REGION_COLOUR), _squeeze(box_mask), colour=BOX_COLOUR)


def cross_attention_picture(frame, heat, region, *, size: int, constrained: bool) -> tuple[np.ndarray, str]:
    """The object words' cross-attention heat (latent grid, in [0, 1]) over ``frame``, the placed object ``region``
    (same grid) outlined in white; the caption gives the share of the heat inside the outline. When ``constrained``
    (region-constrained cross-attention is on) the words attend only to the object at each layer's own grid; a layer
    coarser than the latent grid is upsampled bilinearly, which spreads its heat a little past the outline, so the
    share is high but below 100% there."""
    heat = np.asarray(heat, dtype=np.float64)
    region = _squeeze(region)
    picture = draw_outline(render.heat_overlay(frame, heat, size=size), region)
    share = share_inside(heat, region)
    what = "constrained to the object (region_cross_attention on)" if constrained else "unconstrained (region_cross_attention off)"
    return picture, f"object words' cross-attention, {what}: {100 * share:.1f}% inside the object"


#: The marks of :func:`layer_marks`.
INJECTED, PLAIN = "injected", "plain"


def layer_marks(layers: Iterable[str], selected, injecting: bool) -> dict[str, str]:
    """Which layers take the composite at a step: ``{layer: INJECTED or PLAIN}``, or {} when there is nothing to
    tell apart (no injection at the step, or every layer injected: ``selected`` None, the official "all").
    ``selected``: the set of layers the step's ``inject_layers`` picks (None: all)."""
    if not injecting or selected is None:
        return {}
    return {layer: INJECTED if layer in selected else PLAIN for layer in layers}

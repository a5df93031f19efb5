"""Two results side by side: pure functions over ``(H, W, 3)`` uint8 images, and the runs the Explorer keeps.

- :func:`difference_map`: where and how much two images differ;
- :func:`split_view`: one picture, A on the left of a split line and B on its right;
- :func:`shrink`: an image at most ``side`` pixels on its longer side (what a history entry keeps);
- :class:`RunEntry`, :func:`snapshot`, :func:`changes_to`, :func:`describe_changes`: a finished run's settings
  and result, the ``Session.update`` arguments that bring a Session back to them, and what differs between two.

Nothing here touches widgets; the history panel (``tficon.widgets.history_panel``) draws with these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tficon.core.boxes import same_box

from . import render

__all__ = ["difference_map", "split_view", "shrink", "RunEntry", "snapshot", "changes_to", "describe_changes"]


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = render.as_rgb(a), render.as_rgb(b)
    if a.shape != b.shape:
        raise ValueError(f"the two images must have the same size, got {a.shape[:2]} and {b.shape[:2]}")
    return a, b


def difference_map(a, b) -> tuple[np.ndarray, dict[str, float]]:
    """``d = max over RGB of |a - b|`` per pixel (0..255), drawn with the "inferno" colour map on the fixed scale
    0..max(d) (black: equal), and its numbers: ``max`` and ``mean`` of d, ``changed`` the fraction of pixels with
    d > 0. Two equal images give a black map and zeros."""
    a, b = _pair(a, b)
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)
    peak = int(d.max())
    picture = render.colourise(d.astype(np.float64), cmap="inferno", vmin=0.0, vmax=float(max(peak, 1)))
    return picture, {"max": float(peak), "mean": float(d.mean()), "changed": float((d > 0).mean())}


def split_view(a, b, fraction: float, *, line=(255, 255, 255)) -> np.ndarray:
    """Columns ``x < round(fraction * W)`` from ``a``, the rest from ``b``; a 1-pixel ``line`` drawn on the first
    column of ``b``'s side (none at fraction 0 or 1, where the picture is all B or all A)."""
    a, b = _pair(a, b)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    split = int(round(fraction * a.shape[1]))
    out = b.copy()
    out[:, :split] = a[:, :split]
    if 0 < split < a.shape[1]:
        out[:, split] = line
    return out


def shrink(image, side: int) -> np.ndarray:
    """``image`` with its longer side at most ``side`` pixels (area-averaged by PIL; never enlarged)."""
    from PIL import Image

    rgb = render.as_rgb(image)
    longest = max(rgb.shape[:2])
    if longest <= side:
        return rgb
    scale = side / longest
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))


def snapshot(session) -> dict[str, Any]:
    """What a run's result depends on: the config, the prompt, the target, the images and the object mask (the
    Session's own objects: nothing is copied)."""
    images = session.images
    return {
        "config": session.config,
        "prompt": session.prompt,
        "mask_or_box": session.mask_or_box,
        "background": images["background"],
        "foreground": images["foreground"],
        "foreground_mask": session.foreground_mask,
    }


def changes_to(session, target: dict[str, Any]) -> dict[str, Any]:
    """The ``Session.update`` arguments that bring ``session`` back to the snapshot ``target`` ({}: it is there).
    Images and masks are compared by identity (a snapshot keeps the Session's own objects)."""
    changes: dict[str, Any] = {}
    config, wanted = session.config, target["config"]
    for name in wanted.__dataclass_fields__:
        if getattr(config, name) != getattr(wanted, name):
            changes[name] = getattr(wanted, name)
    if session.prompt != target["prompt"]:
        changes["prompt"] = target["prompt"]
    if not same_box(session.mask_or_box, target["mask_or_box"]):
        changes["mask_or_box"] = target["mask_or_box"]
    images = session.images
    for name in ("background", "foreground"):
        if images[name] is not target[name]:
            changes[name] = target[name]
    if session.foreground_mask is not target["foreground_mask"]:
        changes["foreground_mask"] = target["foreground_mask"]
    return changes


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return "mask" if value is not None and not isinstance(value, (bool, int)) else str(value)


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two snapshots, one ``"name: old -> new"`` line each (images and masks by identity)."""
    from tficon.core.presets import preset_of

    lines = []
    presets = [preset_of(snap["config"]) or "custom" for snap in (before, after)]
    if presets[0] != presets[1]:  # a switch of strategy first: the settings lines below say what it changed
        lines.append(f"preset: {presets[0]} \u2192 {presets[1]}")
    for name in after["config"].__dataclass_fields__:
        old, new = getattr(before["config"], name), getattr(after["config"], name)
        if old != new:
            lines.append(f"{name}: {_short(old)} \u2192 {_short(new)}")
    if before["prompt"] != after["prompt"]:
        lines.append(f"prompt: {_short(before['prompt'])} \u2192 {_short(after['prompt'])}")
    if not same_box(before["mask_or_box"], after["mask_or_box"]):
        lines.append(f"box: {_short(before['mask_or_box'])} \u2192 {_short(after['mask_or_box'])}")
    for name, label in (("background", "background"), ("foreground", "foreground"), ("foreground_mask", "object mask")):
        if before[name] is not after[name]:
            lines.append(f"{label}: changed")
    return lines


@dataclass
class RunEntry:
    """One finished run: its ``number`` (the status's "run N"), its settings (:func:`snapshot`), its result
    (``image``, at most ``HistoryPanel.KEEP_PX`` on its longer side), the warnings it raised and what changed
    since the run before it."""

    number: int
    settings: dict[str, Any]
    image: np.ndarray
    warnings: tuple[str, ...] = ()
    changes: list[str] = field(default_factory=list)

    def label(self) -> str:
        what = "; ".join(self.changes) if self.changes else "first run" if self.number == 1 else "same settings"
        return f"run {self.number} \u00b7 {what}"

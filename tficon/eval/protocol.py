"""The author's composition protocol (docs/evaluation.md §1, issues #20/#31) on top of the pixel and perceptual scores.

- :func:`background_metrics`: the composite against the background with the target box set to 0 (black) in
  **both**, so that the box contributes no error but still counts in the mean.
- :func:`foreground_metrics`: the target-box crop of the composite, resized to the reference crop (the object
  window of the centred reference canvas), against that crop.
- :func:`composition_metrics`: both, plus LPIPS and CLIP when their scorers are given.

Boxes are ``tficon.core.placement.Box`` (half-open rows/cols in pixels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from tficon.core.placement import Box
from tficon.eval.perceptual import CLIPScorer, LPIPSScorer
from tficon.eval.pixel import ImageInput, as_unit_tensor, pixel_metrics

__all__ = [
    "blank_box",
    "crop_box",
    "background_metrics",
    "foreground_metrics",
    "composition_metrics",
]


def _check_box(box: Box, height: int, width: int, name: str) -> Box:
    if not isinstance(box, Box):
        raise TypeError(
            f"{name} must be a tficon.core.placement.Box (e.g. session.placement.target_window), got {type(box).__name__}"
        )
    if not box.inside(height, width):
        raise ValueError(f"{name} {box} must lie inside the {height}x{width} image")
    return box


def blank_box(image: torch.Tensor, box: Box) -> torch.Tensor:
    """A copy of ``image`` ``(C, H, W)`` with ``box`` set to 0 (black on the [0, 1] scale)."""
    _check_box(box, image.shape[-2], image.shape[-1], "box")
    out = image.clone()
    rows, cols = box.slices()
    out[..., rows, cols] = 0
    return out


def crop_box(image: torch.Tensor, box: Box) -> torch.Tensor:
    """``image[..., box rows, box cols]`` (a copy)."""
    _check_box(box, image.shape[-2], image.shape[-1], "box")
    rows, cols = box.slices()
    return image[..., rows, cols].clone()


def _resize_unit(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a [0, 1] float image ``(3, h, w)`` to ``size = (H, W)`` with PIL bicubic on 8-bit pixels
    (the way the crop would be resized as an image file); identity when the size already matches."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    pixels = (image.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    resized = Image.fromarray(np.ascontiguousarray(pixels)).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return as_unit_tensor(resized)


def background_metrics(composite: ImageInput, background: ImageInput, box: Box) -> dict[str, float | None]:
    """MSE / PSNR / SSIM of the composite against the background, ``box`` blanked (set to 0) in both.

    Both images must have the working size (compare with ``Session.inputs.background``, the resized background).
    """
    a = as_unit_tensor(composite, name="composite")
    b = as_unit_tensor(background, name="background")
    if a.shape != b.shape:
        raise ValueError(f"composite {tuple(a.shape)} and background {tuple(b.shape)} must have the same size")
    return pixel_metrics(blank_box(a, box), blank_box(b, box))


def foreground_metrics(
    composite: ImageInput, box: Box, reference: ImageInput, reference_box: Box | None = None
) -> dict[str, float | None]:
    """MSE / PSNR / SSIM of the composite's ``box`` crop, resized to the reference crop, against that crop.

    ``reference`` is the centred reference canvas (``Session.inputs.reference``) with ``reference_box`` its object
    window (``placement.ref_window``), or, with ``reference_box=None``, the reference foreground image itself.
    """
    crop, ref = _foreground_pair(as_unit_tensor(composite, name="composite"), box, reference, reference_box)
    return pixel_metrics(crop, ref)


def _foreground_pair(
    composite: torch.Tensor, box: Box, reference: ImageInput, reference_box: Box | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the composite's ``box`` crop resized to the reference crop, the reference crop), both [0, 1]."""
    ref = as_unit_tensor(reference, name="reference")
    if reference_box is not None:
        ref = crop_box(ref, reference_box)
    return _resize_unit(crop_box(composite, box), tuple(ref.shape[-2:])), ref


def composition_metrics(
    composite: ImageInput,
    background: ImageInput,
    reference: ImageInput,
    target_box: Box,
    reference_box: Box | None = None,
    *,
    prompt: str | None = None,
    lpips: LPIPSScorer | None = None,
    clip: CLIPScorer | None = None,
) -> dict[str, Any]:
    """All metrics of one composite, following the author's protocol.

    Returns ``{"bg": {mse, psnr, ssim}, "fg": {mse, psnr, ssim}}`` plus, when the scorers are given,
    ``"lpips_bg"``, ``"lpips_fg"`` (VGG; lower is better), ``"clip_image_bg"`` (composite vs background),
    ``"clip_image_fg"`` (box crop vs reference crop) and ``"clip_text"`` (composite vs ``prompt``), cosine x 100.
    """
    comp = as_unit_tensor(composite, name="composite")
    bg = as_unit_tensor(background, name="background")
    if comp.shape != bg.shape:
        raise ValueError(f"composite {tuple(comp.shape)} and background {tuple(bg.shape)} must have the same size")
    fg_crop, ref_crop = _foreground_pair(comp, target_box, reference, reference_box)
    out: dict[str, Any] = {
        "bg": pixel_metrics(blank_box(comp, target_box), blank_box(bg, target_box)),
        "fg": pixel_metrics(fg_crop, ref_crop),
    }
    if lpips is not None:
        out["lpips_bg"] = lpips(blank_box(comp, target_box), blank_box(bg, target_box))
        out["lpips_fg"] = lpips(fg_crop, ref_crop) if min(ref_crop.shape[-2:]) >= LPIPSScorer.MIN_SIDE else None
    if clip is not None:
        out["clip_image_bg"] = clip.image_similarity(comp, bg)
        out["clip_image_fg"] = clip.image_similarity(fg_crop, ref_crop)
        if prompt is not None:
            out["clip_text"] = clip.text_similarity(comp, prompt)
    return out

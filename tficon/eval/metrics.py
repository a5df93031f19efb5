"""Composition and inversion metrics following TF-ICON's stated protocol (docs/evaluation.md §1): every name in one place.

The code lives in small modules; this one gathers their names (``from tficon.eval.metrics import ...`` and the
old ``tficon.metrics`` keep working):

- :mod:`tficon.eval.pixel`: :func:`mse`, :func:`psnr`, :func:`ssim` (PSNR and SSIM by ``torchmetrics``, SSIM with
  the paper's 11x11 Gaussian window, sigma 1.5, over the windows fully inside the image), :func:`pixel_metrics`,
  :func:`as_unit_tensor`. Always available (no weights, no network).
- :mod:`tficon.eval.protocol`: :func:`background_metrics` (the target box blanked in both images),
  :func:`foreground_metrics` (the box crop against the reference crop), :func:`composition_metrics` (both, plus
  LPIPS and CLIP when given their scorers).
- :mod:`tficon.eval.perceptual`: :class:`LPIPSScorer` (VGG) and :class:`CLIPScorer`, only with local weights
  (never a silent download, never a hang); :class:`MetricUnavailable` says what is missing.
- :mod:`tficon.eval.inversion`: :func:`inversion_metrics`, inversion then reconstruction of any image.
"""

from __future__ import annotations

from tficon.eval.inversion import EXCEPTIONAL, inversion_metrics
from tficon.eval.perceptual import (
    CLIP_MODEL_ENV,
    DEFAULT_CLIP_MODEL,
    LPIPS_VGG_SLICE_ENDS,
    LPIPS_WEIGHTS_ENV,
    TORCHVISION_VGG16_FILE,
    CLIPScorer,
    LPIPSScorer,
    MetricUnavailable,
    lpips_backbone_state,
)
from tficon.eval.pixel import (
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    ImageInput,
    as_unit_tensor,
    mse,
    pixel_metrics,
    psnr,
    ssim,
    ssim_sigma,
)
from tficon.eval.protocol import (
    background_metrics,
    blank_box,
    composition_metrics,
    crop_box,
    foreground_metrics,
)

__all__ = [
    "SSIM_WINDOW",
    "SSIM_SIGMA",
    "SSIM_K1",
    "SSIM_K2",
    "LPIPS_WEIGHTS_ENV",
    "TORCHVISION_VGG16_FILE",
    "LPIPS_VGG_SLICE_ENDS",
    "CLIP_MODEL_ENV",
    "DEFAULT_CLIP_MODEL",
    "ImageInput",
    "MetricUnavailable",
    "as_unit_tensor",
    "mse",
    "psnr",
    "ssim",
    "ssim_sigma",
    "blank_box",
    "crop_box",
    "pixel_metrics",
    "background_metrics",
    "foreground_metrics",
    "composition_metrics",
    "LPIPSScorer",
    "CLIPScorer",
    "lpips_backbone_state",
    "inversion_metrics",
    "EXCEPTIONAL",
]

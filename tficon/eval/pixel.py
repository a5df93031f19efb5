"""Pixel metrics: MSE, PSNR and SSIM of two images, PSNR and SSIM computed by ``torchmetrics``.

SSIM follows the paper's protocol (docs/evaluation.md §1), which is what scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` computes: Wang et al.
(2004) with an 11x11 Gaussian window (sigma 1.5, normalised), K1 = 0.01, K2 = 0.03, population (co)variances,
averaged over the windows that lie fully inside the image ("valid") and over channels. ``torchmetrics`` computes
the SSIM map with reflection padding and averages all of it; here the map is asked for
(``return_full_image=True``) and the border where a window reaches into the padding is cropped before the mean.

Image conventions: :func:`as_unit_tensor` turns PIL images, uint8 arrays ``(H, W, 3)`` or float tensors
``(3, H, W)`` in [-1, 1] (the package convention) into [0, 1] float64 tensors, so ``data_range = 1`` and PSNR is
the same as on 8-bit pixels with peak 255.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from tficon.core import io

__all__ = [
    "SSIM_WINDOW",
    "SSIM_SIGMA",
    "SSIM_K1",
    "SSIM_K2",
    "ImageInput",
    "as_unit_tensor",
    "as_pair",
    "mse",
    "psnr",
    "ssim",
    "ssim_sigma",
    "pixel_metrics",
]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

ImageInput = Union[Image.Image, np.ndarray, torch.Tensor]


def as_unit_tensor(image: ImageInput, *, name: str = "image") -> torch.Tensor:
    """An image as a float64 tensor ``(3, H, W)`` in [0, 1].

    Accepts a PIL image (RGB or L), a uint8 array ``(H, W, 3)`` / ``(H, W)``, or a float tensor ``(3, H, W)`` in
    [-1, 1] (the package's convention, e.g. ``Session.inputs.background``).
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(
                f"{name} must be a float tensor (3, H, W) in [-1, 1], got {tuple(image.shape)} {image.dtype}"
            )
        return ((image.detach().cpu().double() + 1.0) / 2.0).clamp(0.0, 1.0)
    pil = io.load_image(image, name=name)
    array = np.asarray(pil, dtype=np.float64) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def as_pair(x, y, name_x: str = "x", name_y: str = "y") -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 tensors of one shape ``(C, H, W)``; 2-D inputs become ``(1, H, W)``."""
    tensors = []
    for value, name in ((x, name_x), (y, name_y)):
        t = torch.as_tensor(value).detach().cpu().double()
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ValueError(f"{name} must be (H, W) or (C, H, W), got shape {tuple(t.shape)}")
        tensors.append(t)
    if tensors[0].shape != tensors[1].shape:
        shapes = f"{tuple(tensors[0].shape)} and {tuple(tensors[1].shape)}"
        raise ValueError(f"{name_x} and {name_y} must have the same shape, got {shapes}")
    return tensors[0], tensors[1]


def _check_range(data_range: float) -> float:
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not data_range > 0:
        raise ValueError(
            f"data_range must be a positive number (1 for [0, 1] images, 255 for uint8), got {data_range!r}"
        )
    return float(data_range)


def mse(x, y) -> float:
    """Mean squared error over all elements of two equally shaped arrays/tensors."""
    a, b = as_pair(x, y)
    return float(((a - b) ** 2).mean())


def psnr(x, y, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``; ``inf`` for identical inputs.

    ``torchmetrics`` takes the logarithms in float32, so the result carries a relative error of about 1e-7.
    """
    peak = _check_range(data_range)
    a, b = as_pair(x, y)
    if torch.equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(a, b, data_range=peak))


def ssim_sigma(window_size: int) -> float:
    """The Gaussian's sigma for an SSIM window of ``window_size`` pixels: 1.5 for the paper's 11.

    ``torchmetrics`` (like scikit-image) derives the window from sigma, ``2 * int(3.5 sigma + 0.5) + 1`` taps, so
    a smaller window (only the latents of small models need one) keeps the Gaussian's shape, scaled to fit.
    """
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size!r}")
    if window_size > SSIM_WINDOW:
        raise ValueError(f"window_size must be at most {SSIM_WINDOW} (sigma {SSIM_SIGMA}), got {window_size}")
    return SSIM_SIGMA * window_size / SSIM_WINDOW


def ssim(
    x,
    y,
    *,
    data_range: float = 1.0,
    window_size: int = SSIM_WINDOW,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> float:
    """Mean structural similarity of ``x`` and ``y`` (``(H, W)`` or ``(C, H, W)``, same shape).

    Per window: ``((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with
    Gaussian-weighted means and population (co)variances, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, ``L = data_range``.
    Only windows fully inside the image count; the result is their mean over positions and channels.

    Raises:
        ValueError: when the image is smaller than the window (pass a smaller odd ``window_size``).
    """
    peak = _check_range(data_range)
    sigma = ssim_sigma(window_size)
    a, b = as_pair(x, y)
    height, width = a.shape[-2:]
    if height < window_size or width < window_size:
        raise ValueError(
            f"SSIM needs images of at least {window_size}x{window_size} pixels, got {height}x{width}; "
            "pass a smaller odd window_size"
        )
    _, full = structural_similarity_index_measure(
        a[None], b[None], gaussian_kernel=True, sigma=sigma, data_range=peak, k1=k1, k2=k2, return_full_image=True
    )
    border = window_size // 2  # windows centred closer to the edge reach into torchmetrics' reflection padding
    valid = full[0, :, border : height - border, border : width - border]
    return float(valid.mean())


def pixel_metrics(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> dict[str, float | None]:
    """``{"mse", "psnr", "ssim"}`` of two equally shaped images; ``ssim`` is None below the 11-px window."""
    a, b = as_pair(x, y)
    small = min(a.shape[-2:]) < SSIM_WINDOW
    return {
        "mse": mse(a, b),
        "psnr": psnr(a, b, data_range=data_range),
        "ssim": None if small else ssim(a, b, data_range=data_range),
    }

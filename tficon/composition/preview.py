"""Cheap latent previews: a fixed linear map from latent channels to RGB.

A full VAE decode per step and branch is too slow for a live view; a per-pixel affine map from the
latent channels to RGB shows layout and colour well enough. The map is not hard-coded per model: it
is fitted by least squares on images encoded with the model's own VAE (posterior mean) against the
same images area-averaged onto the latent grid. A Session fits it on its own inputs (background,
cut-and-paste, reference), so the map matches the content on screen; without images the map is
fitted on synthetic colour fields. This works for SD 1.x / 2.x, the toy model and the tiny
test models alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tficon.model.vae import encode_image


def _colour_fields(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """n images (n, 3, size, size) in [-1, 1]: random low-resolution colour fields, upsampled."""
    coarse = torch.rand(n, 3, 4, 4, generator=generator) * 2 - 1
    fields = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    blocks = F.interpolate(torch.rand(n, 3, 8, 8, generator=generator) * 2 - 1, size=(size, size), mode="nearest")
    return (0.6 * fields + 0.4 * blocks).clamp(-1, 1)


def fit_latent_rgb_map(model, images: torch.Tensor | None = None, latent_side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (weight (C, 3), bias (3,)) with rgb01 ~= latent @ weight + bias, per pixel.

    ``images`` (n, 3, H, W) in [-1, 1]; default: four synthetic colour fields.
    """
    factor = model.vae_scale_factor
    if images is None:
        images = _colour_fields(4, latent_side * factor, torch.Generator().manual_seed(0))
    images = images.float().cpu()
    latents = encode_image(model, images, None).cpu()  # the posterior mean, through the one VAE home
    targets = (F.avg_pool2d(images, factor) + 1) / 2  # (n, 3, side, side) in [0, 1]
    channels = latents.shape[1]
    x = latents.permute(0, 2, 3, 1).reshape(-1, channels)
    x = torch.cat([x, torch.ones(x.shape[0], 1)], 1)
    y = targets.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()
    return solution[:channels], solution[channels]


def latent_to_rgb(latent: torch.Tensor, rgb_map: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(1, C, h, w) or (C, h, w) scaled latent -> (3, h, w) RGB in [0, 1] (one pixel per latent cell).

    ``rgb_map`` comes from :func:`fit_latent_rgb_map`; whoever fits it keeps it (a Session keeps its own).
    """
    weight, bias = rgb_map
    z = latent[0] if latent.ndim == 4 else latent
    rgb = torch.einsum("chw,ck->khw", z.float().cpu(), weight) + bias[:, None, None]
    return rgb.clamp(0, 1)

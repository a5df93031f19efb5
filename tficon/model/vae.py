"""The VAE of a loaded model: images to scaled latents and back, in the VAE's own dtype.

The one home of VAE encoding and decoding (``LoadedModel.encode_image`` / ``decode_latent``, the engine's VAE door
``tficon.composition.engine.Engine.encode`` / ``decode``, the latent previews and the metrics all end here). Inputs
are cast to the VAE's dtype here and nowhere before, which need not be the model's: SDXL's VAE stays float32 in a
float16 model (``force_upcast``), so a float32 image or latent reaches it unrounded. Outputs are float32.
"""

from __future__ import annotations

import torch

__all__ = ["decode_latent", "encode_image"]


def encode_image(model, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Encode images to scaled latents: a posterior *sample*, as the official code takes (docs/algorithm.md §4).

    ``z = (mean + std * eps) * latent_scaling`` where, for each image in batch order, ``eps`` is one float32 draw of
    shape ``(1, C, h, w)`` from ``generator`` on the generator's device (the official code: CPU generator seeded
    3407, background then reference). ``generator=None`` gives the posterior mean instead (no draw).

    Args:
        model: a ``LoadedModel``.
        image: ``(B, 3, H, W)`` float tensor in [-1, 1] (any float dtype, any device); H and W multiples of
            ``model.vae_scale_factor``.
        generator: the ``torch.Generator`` the noise is drawn from (any device), or None for the mean.

    Returns:
        ``(B, latent_channels, H / f, W / f)`` float32 latents on ``model.device``.
    """
    _check_image(model, image)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    vae = model.vae
    with torch.no_grad():
        posterior = vae.encode(image.to(model.device, vae.dtype)).latent_dist
    mean = posterior.mean.float()
    shift = model.latent_shift  # SD3's VAE: latents are (z - shift) * scaling (0 for SD and SDXL)
    if generator is None:
        return (mean - shift) * model.latent_scaling if shift else mean * model.latent_scaling
    std = posterior.std.float()
    one_image = (1, *mean.shape[1:])
    noise = torch.cat(
        [
            torch.randn(one_image, generator=generator, device=generator.device, dtype=torch.float32)
            for _ in range(mean.shape[0])
        ]
    ).to(model.device)
    sample = mean + std * noise
    return (sample - shift) * model.latent_scaling if shift else sample * model.latent_scaling


def decode_latent(model, z: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents ``(B, C, h, w)`` (any float dtype) to float32 images ``(B, 3, h*f, w*f)`` in [-1, 1].

    The latent is cast to the VAE's dtype first and unscaled there, so a float32 latent meets a float32 VAE
    unrounded and a float16/bfloat16 VAE sees the same values a model-dtype latent would give it.
    """
    if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != model.latent_channels:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z must be a (B, {model.latent_channels}, h, w) latent tensor, got {shape}")
    vae = model.vae
    with torch.no_grad():
        z = z.to(model.device, vae.dtype) / model.latent_scaling
        image = vae.decode(z + model.latent_shift if model.latent_shift else z).sample
    return image.float().clamp(-1.0, 1.0)


def _check_image(model, image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or not torch.is_floating_point(image):
        raise TypeError(f"image must be a float tensor in [-1, 1], got {getattr(image, 'dtype', type(image))}")
    f = model.vae_scale_factor
    if image.ndim != 4 or image.shape[1] != 3 or image.shape[2] % f or image.shape[3] % f:
        raise ValueError(f"image must have shape (B, 3, H, W) with H and W multiples of {f}, got {tuple(image.shape)}")
    low, high = float(image.min()), float(image.max())
    if low < -1.001 or high > 1.001:
        raise ValueError(
            f"image values must lie in [-1, 1] (got {low:.3g}..{high:.3g}); map uint8 pixels with x / 127.5 - 1."
        )

"""How well does a model invert an image and bring it back? (:func:`inversion_metrics`)"""

from __future__ import annotations

import os
from typing import Any

import torch

from tficon.core import io
from tficon.eval.pixel import SSIM_WINDOW, as_unit_tensor, mse, pixel_metrics, psnr, ssim

__all__ = ["EXCEPTIONAL", "inversion_metrics"]

#: ``inversion_metrics(prompt=EXCEPTIONAL)`` conditions on TF-ICON's exceptional prompt.
EXCEPTIONAL = "exceptional"


def _largest_odd_window(height: int, width: int) -> int:
    side = min(SSIM_WINDOW, height, width)
    return side if side % 2 else side - 1


def inversion_metrics(
    model,
    image,
    steps: int = 20,
    order: int = 2,
    prompt: str = EXCEPTIONAL,
    *,
    image_size: int | tuple[int, int] | None = None,
    seed: int = 3407,
    return_tensors: bool = False,
    engine=None,
) -> dict[str, Any]:
    """Invert an image to t = 1 and reconstruct it; how close does it come back?

    The image is resized like a background (LANCZOS to the working size), encoded to a VAE posterior sample
    (generator seeded ``seed``, as in a composition), inverted with the DPM-Solver++ of ``tficon.core.solver``
    (``steps``, ``order``) and sampled back with the same solver and conditioning, unguided: one evaluation
    per step. ``prompt`` is ``"exceptional"`` (TF-ICON's exceptional prompt e*), ``""`` (the empty prompt) or
    any text. The UNet runs through ``engine`` (a ``tficon.composition.engine.Engine``; default a new one for ``model``),
    whose inversion cache keeps the result.

    Returns:
        ``{"prompt", "steps", "order", "latent": {mse, psnr, ssim}, "image": {mse, psnr, ssim},
        "vae": {mse, psnr, ssim}, "latent_ssim_window"}``: ``latent`` compares the reconstructed latent with
        the encoded one (``data_range`` = the encoded latent's max - min); ``image`` the decoded reconstruction
        with the input on the [0, 1] scale; ``vae`` the plain VAE round trip (decode of the encoded latent) with
        the input, the floor no inversion can beat. The latent SSIM uses the largest odd window up to 11 that fits
        the latent (``latent_ssim_window``: 11 for latents of 11x11 and more, 7 for 8x8 ones) with its
        Gaussian scaled to that window (``tficon.eval.pixel.ssim_sigma``). With ``return_tensors`` also ``"tensors"``: ``z0``, ``x_T``,
        ``z_rec`` (latents) and ``input``, ``reconstruction``, ``vae_reconstruction`` (``(3, H, W)`` in [0, 1]).
    """
    from tficon.composition.engine import Engine
    from tficon.core import solver

    if isinstance(model, (str, os.PathLike)):
        from tficon.model import load_model

        model = load_model(model)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be 'exceptional', '' or a text, got {type(prompt).__name__}")
    size = image_size if image_size is not None else model.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    io.check_image_size(size, model.size_multiple, name="image_size")
    x = io.resize_background(io.load_image(image, name="image"), size)
    generator = torch.Generator().manual_seed(seed)
    engine = engine if engine is not None else Engine(model)
    z0 = engine.encode(x[None], generator)
    embedding = model.exceptional_embedding() if prompt == EXCEPTIONAL else model.encode_prompt(prompt)
    # one row: not the same cache entry as a Session's two-row inversion (the key holds the batch shape)
    (x_t,), _, _ = engine.invert([z0], steps, order, embedding=embedding)
    z_rec = solver.sample(
        engine.model_fn(embedding), x_t, engine.schedule, steps, order, prediction_type=model.prediction_type
    )
    original = as_unit_tensor(x)
    reconstruction = as_unit_tensor(engine.decode(z_rec)[0].cpu())
    vae_only = as_unit_tensor(engine.decode(z0)[0].cpu())
    latent_a, latent_b = z0[0].cpu().double(), z_rec[0].cpu().double()
    latent_range = float(latent_a.max() - latent_a.min()) or 1.0
    window = _largest_odd_window(*latent_a.shape[-2:])
    out: dict[str, Any] = {
        "prompt": prompt,
        "steps": steps,
        "order": order,
        "latent": {
            "mse": mse(latent_a, latent_b),
            "psnr": psnr(latent_a, latent_b, data_range=latent_range),
            "ssim": ssim(latent_a, latent_b, data_range=latent_range, window_size=window),
        },
        "latent_ssim_window": window,
        "image": pixel_metrics(reconstruction, original),
        "vae": pixel_metrics(vae_only, original),
    }
    if return_tensors:
        out["tensors"] = {
            "z0": z0,
            "x_T": x_t,
            "z_rec": z_rec,
            "input": original,
            "reconstruction": reconstruction,
            "vae_reconstruction": vae_only,
        }
    return out

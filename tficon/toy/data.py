"""The toy model's data set: scenes and reference canvases as the training script renders them, and the held-out set.

Example ``i`` of seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``: a fraction of the examples are
reference canvases (one tightly cropped object resized and centred on black, as
``tficon.core.placement.prepare_foreground`` builds TF-ICON's reference image), the rest toy-world scenes with
0-3 objects. The held-out examples are the same draw from ``HELD_OUT_OFFSET`` on, which training never reaches.
The training script (``python -m training.toy.train``) and the quality figures render their data here.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from tficon.toy.world import COLOURS, DOMAINS, SHAPES, canvas_caption, render_foreground, render_scene

__all__ = [
    "IMAGE_SIZE",
    "LATENT_FACTOR",
    "HELD_OUT_OFFSET",
    "COUNT_PROBS",
    "CANVAS_BOX_RANGE",
    "UNET_LEVELS",
    "to_tensor",
    "reference_canvas",
    "render_example",
    "render_dataset",
    "held_out_images",
]

IMAGE_SIZE = 64
LATENT_FACTOR = 2  # the shipped model's (v3): 32x32 latents for 64 px images
HELD_OUT_OFFSET = 10_000_000  # held-out example i is example HELD_OUT_OFFSET + i of the same seed
#: Probabilities of 0-3 objects in a training scene: more pairs than the world's default, for binding.
COUNT_PROBS = (0.03, 0.45, 0.42, 0.10)
CANVAS_BOX_RANGE = (14, 48)  # longer side (px) of the box a training canvas is placed for
#: UNet levels of the toy model at each VAE downsampling factor (the length of ``block_out_channels`` in
#: ``training/toy/train.py``'s ``UNET_CONFIGS``): a canvas is placed on the grid that model composes on.
UNET_LEVELS = {4: 3, 2: 4}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def reference_canvas(rng: np.random.Generator, image_size: int = IMAGE_SIZE, latent_factor: int = LATENT_FACTOR) -> tuple[np.ndarray, str]:
    """One reference canvas as the pipeline makes it for a model of ``latent_factor``: a tightly cropped object
    resized and centred on black."""
    from tficon.core.placement import compute_placement, prepare_foreground

    domain = DOMAINS[rng.integers(len(DOMAINS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = COLOURS[rng.integers(len(COLOURS))]
    foreground, mask = render_foreground(
        shape, colour, domain, size=float(rng.uniform(12.0, 20.0)), margin=int(rng.integers(0, 4)), image_size=image_size
    )
    side = int(rng.integers(CANVAS_BOX_RANGE[0], CANVAS_BOX_RANGE[1] + 1)) * image_size // IMAGE_SIZE
    corner = (image_size - side) // 2
    placement = compute_placement(
        (corner, corner, side, side), foreground.size, (image_size, image_size), latent_factor=latent_factor,
        levels=UNET_LEVELS[latent_factor], clip=True
    )
    reference, _ = prepare_foreground(foreground, mask, placement)
    pixels = reference.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return pixels, canvas_caption(shape, colour, domain)


def render_example(seed: int, index: int, canvas_fraction: float, latent_factor: int = LATENT_FACTOR) -> tuple[np.ndarray, str, bool]:
    """Example ``index`` of the data set: (uint8 image (64, 64, 3), caption, is it a reference canvas)."""
    rng = np.random.default_rng([seed, index])
    if rng.random() < canvas_fraction:
        pixels, caption = reference_canvas(rng, latent_factor=latent_factor)
        return pixels, caption, True
    image, caption, _ = render_scene(rng, image_size=IMAGE_SIZE, count_probs=COUNT_PROBS)
    return np.asarray(image), caption, False


def render_dataset(count: int, seed: int, offset: int = 0, canvas_fraction: float = 0.1, latent_factor: int = LATENT_FACTOR):
    """``count`` examples -> (uint8 images (count, 64, 64, 3), captions, bool is_canvas (count,))."""
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions, canvas = [], np.zeros(count, dtype=bool)
    for i in range(count):
        images[i], caption, canvas[i] = render_example(seed, offset + i, canvas_fraction, latent_factor)
        captions.append(caption)
    return images, captions, canvas


def held_out_images(count: int = 64, seed: int = 0, canvases: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Held-out examples of the training script as (count, 3, 64, 64) in [-1, 1], and their captions.

    Scenes by default; ``canvases=True`` gives reference canvases (objects centred on black) instead.
    """
    images, captions, is_canvas = _held_out_render(4 * count, seed)
    chosen = np.flatnonzero(is_canvas == canvases)[:count]
    return to_tensor(images[chosen]), [captions[i] for i in chosen]


@functools.lru_cache(maxsize=4)
def _held_out_render(count: int, seed: int):
    """The held-out examples, half scenes and half canvases, rendered once for both kinds (callers copy)."""
    return render_dataset(count, seed, offset=HELD_OUT_OFFSET, canvas_fraction=0.5)

"""Phase 1 of a Session: its inputs checked and prepared at the working size.

The placement (``tficon.core.placement``) of the object in the background, the resized background, the reference
canvas (the foreground centred on black), the padded object mask and the pixel cut-and-paste; and the two checks on
what a user hands a Session that are not geometry: the object mask read the official way, and the notice that the
toy model knows only its toy world.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from tficon.core import checks, io
from tficon.core import placement as placement_mod
from tficon.core.config import CompositionConfig


@dataclass(frozen=True)
class Inputs:
    """Prepared inputs, all at the working size."""

    placement: placement_mod.Placement
    background: torch.Tensor  # (3, H, W) in [-1, 1], resized background
    reference: torch.Tensor  # (3, H, W) in [-1, 1], foreground centred on black
    object_mask: np.ndarray  # (H, W) float64 0/1, the padded object mask (Mpad)
    cut_and_paste: torch.Tensor  # (3, H, W) pixel composite (docs/algorithm.md §2.5)


def prepare_inputs(
    model, config: CompositionConfig, mask_or_box, images: dict, object_mask, size: tuple[int, int]
) -> Inputs:
    """Phase 1: the placement and the working-size background, reference and cut-and-paste (checks first)."""
    checks.check_mask_sizes(images, object_mask, mask_or_box, size)  # masks of another shape: refused
    place = placement_mod.compute_placement(
        mask_or_box,
        images["foreground"].size,
        size,
        model.vae_scale_factor,
        box_rule=config.box_rule,
        clip=config.clip_box,
        levels=model.attention_levels,
    )
    background = io.resize_background(images["background"], size)
    reference, mpad = placement_mod.prepare_foreground(images["foreground"], object_mask, place)
    composite = placement_mod.cut_and_paste(background, reference, mpad, place)
    return Inputs(place, background, reference, mpad, composite)


_TOY_WORLD_NOTICE = {"given": False}


def notice_words_outside_the_toy_world(prompt: str, known: frozenset) -> None:
    """Say once per process that the embedded model knows only its toy world, when a prompt leaves it.

    Its tokenizer is CLIP's, so any prompt (an official TF-ICON one included) runs; words it never saw in
    training simply mean nothing to it. Said once: a batch of such prompts should not repeat it per sample.
    """
    unknown = sorted({w for w in re.findall(r"[\w']+|,", prompt.lower()) if w not in known})
    if not unknown or _TOY_WORLD_NOTICE["given"]:
        return
    _TOY_WORLD_NOTICE["given"] = True
    shown = ", ".join(repr(w) for w in unknown[:6]) + (", ..." if len(unknown) > 6 else "")
    warnings.warn(
        f"the embedded toy model knows only its toy world (4 shapes, 4 colours, 4 styles: python -m training.toy.quality "
        f"shows it); the prompt's words {shown} mean nothing to it. Real photos and open prompts need Stable "
        "Diffusion (tficon.load_model with a hub id or a local folder). Said once per process.",
        stacklevel=4,
    )


def official_mask_source(mask):
    """The object mask as the official pipeline binarises it: a greyscale image for PIL's dithering
    ``convert("1")`` (tficon.core.placement.prepare_foreground); arrays other than uint8 stay as validated.
    Validates first (clear errors for empty, non-binary or unreadable masks)."""
    from PIL import Image

    io.load_mask(mask, name="foreground_mask")
    if isinstance(mask, (str,)) or hasattr(mask, "__fspath__"):
        with Image.open(mask) as opened:
            mask = opened.convert("L")
    if isinstance(mask, Image.Image):
        return mask if mask.mode in ("1", "L") else mask.convert("L")
    if isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.ndim == 2:
        return mask
    return io.load_mask(mask, name="foreground_mask")

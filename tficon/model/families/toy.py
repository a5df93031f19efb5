"""The embedded toy model (``load_model("toy")``): Stable Diffusion's shape, trained on a closed vocabulary."""

from __future__ import annotations

from tficon.model.families.base import register
from tficon.model.families.sd import StableDiffusion

__all__ = ["Toy"]


@register
class Toy(StableDiffusion):
    """SD-shaped; its prompts are captions of the toy world, whose words :meth:`vocabulary` lists (a Session points
    out a prompt that leaves them)."""

    names = ("toy",)

    def vocabulary(self) -> frozenset:
        from tficon.toy.world import caption_words

        return frozenset(caption_words())

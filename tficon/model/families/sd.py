"""Stable Diffusion 1.x and 2.x (epsilon and v-prediction alike): one CLIP text encoder, a tensor conditioning.

The prediction type is the scheduler's business (``LoadedModel.prediction_type``), not the family's: SD 2.x 768-v
and the tiny ``sd2-v`` model are this family too.
"""

from __future__ import annotations

import torch

from tficon.model.families.base import Family, register
from tficon.model.text import encode_prompt, exceptional_embedding

__all__ = ["StableDiffusion"]


@register
class StableDiffusion(Family):
    """SD 1.x / 2.x: the conditioning of a row is the text encoder's ``(1, 77, D)`` output."""

    names = ("sd1", "sd2", "tiny-sd1", "tiny-sd2")

    def encode_prompt(self, model, prompt: str) -> torch.Tensor:
        return encode_prompt(model.tokenizer, model.text_encoder, prompt)

    def exceptional_embedding(self, model) -> torch.Tensor:
        window = int(model.tokenizer.model_max_length)
        return exceptional_embedding(model.text_encoder, model.exceptional_token_id, window)

    def denoise(self, model, x: torch.Tensor, model_t: torch.Tensor, embeddings) -> torch.Tensor:
        unet = model.unet
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"an SD UNet takes a (B, L, D) embedding tensor, got {type(embeddings).__name__}")
        embeddings = embeddings.to(unet.device, unet.dtype)
        if embeddings.shape[0] == 1 and x.shape[0] > 1:
            embeddings = embeddings.expand(x.shape[0], -1, -1)
        with torch.no_grad():
            return unet(x, model_t, encoder_hidden_states=embeddings).sample

"""SDXL base (docs/algorithm.md §15): two text encoders, a pooled embedding and six added time ids per row.

A row's conditioning is a ``tficon.model.text.Conditioning``; each branch carries its own time ids (original size,
crop corner, target size), which the UNet takes with the pooled embedding as ``added_cond_kwargs``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from tficon.model.families.base import Family, register
from tficon.model.text import Conditioning, encode_prompt_sdxl, exceptional_embedding_sdxl, sdxl_time_ids

__all__ = ["StableDiffusionXL"]


@register
class StableDiffusionXL(Family):
    """SDXL base: ``text_encoder`` + ``text_encoder_2`` (a ``CLIPTextModelWithProjection``), ``text_time`` UNet."""

    names = ("sdxl", "tiny-sdxl")
    text_encoders = 2
    upcast_vae = True  # SDXL's VAE overflows in float16; StableDiffusionXLPipeline upcasts it too

    def encode_prompt(self, model, prompt: str) -> Conditioning:
        return encode_prompt_sdxl((model.tokenizer, model.tokenizer_2), (model.text_encoder, model.text_encoder_2), prompt)

    def exceptional_embedding(self, model) -> Conditioning:
        window = int(model.tokenizer.model_max_length)
        encoders = (model.text_encoder, model.text_encoder_2)
        return exceptional_embedding_sdxl(encoders, model.exceptional_token_id, window)

    def unconditional_embedding(self, model) -> Conditioning:
        """``encode_prompt("")``, or zeros when the pipeline sets ``force_zeros_for_empty_prompt`` (SDXL base does), as
        ``StableDiffusionXLPipeline`` uses for classifier-free guidance without a negative prompt (§15.1)."""
        empty = model.encode_prompt("")
        if model.force_zeros_for_empty_prompt:
            return Conditioning(torch.zeros_like(empty.hidden), torch.zeros_like(empty.pooled))
        return empty

    def time_ids(self, model, image_size: int | tuple[int, int]) -> torch.Tensor:
        """(1, 6): original = target = ``image_size``, crop (0, 0), the pipeline's default (§15.3)."""
        return sdxl_time_ids(image_size)

    def with_time_ids(self, embedding: Conditioning, time_ids) -> Conditioning:
        return embedding.with_time_ids(time_ids)

    def denoise(self, model, x: torch.Tensor, model_t: torch.Tensor, embeddings) -> torch.Tensor:
        """Rows without time ids get the pipeline's default for this latent size: original = target = (h, w) x the
        VAE factor, crop (0, 0)."""
        if not isinstance(embeddings, Conditioning):
            raise TypeError("an SDXL UNet needs a tficon.model.text.Conditioning (pooled embedding, time ids), not a tensor")
        unet = model.unet
        if embeddings.time_ids is None:
            f = model.vae_scale_factor
            embeddings = embeddings.with_time_ids(self.time_ids(model, (x.shape[-2] * f, x.shape[-1] * f)))
        embeddings = embeddings.to(unet.device, unet.dtype).expand(x.shape[0])
        added = {"text_embeds": embeddings.pooled, "time_ids": embeddings.time_ids}
        with torch.no_grad():
            return unet(x, model_t, encoder_hidden_states=embeddings.hidden, added_cond_kwargs=added).sample

    def cat_conditioning(self, items: Sequence) -> Conditioning:
        """Field by field; the time ids of every row, or of none."""
        items = list(items)
        if not all(isinstance(item, Conditioning) for item in items):
            raise TypeError("cannot mix SDXL Conditioning rows with plain embedding tensors in one batch")
        with_ids = [item.time_ids is not None for item in items]
        if any(with_ids) and not all(with_ids):
            raise ValueError("either every row of a batch carries time_ids or none does")
        ids = torch.cat([item.time_ids for item in items]) if all(with_ids) else None
        return Conditioning(torch.cat([i.hidden for i in items]), torch.cat([i.pooled for i in items]), ids)

    def pipeline(self, model, scheduler):
        """A ``StableDiffusionXLPipeline`` container: SDXL LoRA files name both text encoders."""
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
            scheduler=scheduler, text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
        )  # fmt: skip

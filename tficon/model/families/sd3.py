"""Stable Diffusion 3 / 3.5 (docs/algorithm.md §16): an MM-DiT on a rectified flow, two CLIP encoders and T5 (optional).

The model's ``unet`` slot holds the ``SD3Transformer2DModel`` (the denoiser; tficon calls it through the family).
A row's conditioning is a ``tficon.model.text.Conditioning`` (``tficon.model.text_sd3``): the joint text tokens as
``hidden`` and the pooled CLIP embeddings; the transformer takes them as ``encoder_hidden_states`` and
``pooled_projections``, with the timestep ``1000 sigma``. The solver's schedule is the flow's
(``tficon.core.flow.FlowSchedule``), the prediction ``"flow_prediction"`` (velocity). The composite goes into every attention
layer that sees image tokens (``joint_attention_layers``), through ``tficon.composition.joint_attention``.
"""

from __future__ import annotations

import torch

from tficon.core.flow import FLOW_PREDICTION, FlowSchedule
from tficon.model.families.base import Family, register
from tficon.model.text import Conditioning
from tficon.model.text_sd3 import encode_prompt_sd3, exceptional_embedding_sd3

__all__ = ["StableDiffusion3", "joint_attention_layers"]


def joint_attention_layers(transformer) -> list[str]:
    """Names (without ``.processor``) of an SD3 transformer's attention layers that see image tokens: every block's
    joint ``attn`` and, in SD3.5's dual-attention blocks, the image-only ``attn2``; in execution order.
    ``transformer`` may also be its ``attn_processors`` mapping."""
    processors = transformer if isinstance(transformer, dict) else transformer.attn_processors
    return [name[: -len(".processor")] for name in processors if name.endswith((".attn.processor", ".attn2.processor"))]


@register
class StableDiffusion3(Family):
    """SD3 / SD3.5: ``text_encoder`` (CLIP-L) and ``text_encoder_2`` (CLIP-G), both with projection, ``text_encoder_3``
    (T5) optional; the denoiser an ``SD3Transformer2DModel``; a 16-channel VAE with a shift factor."""

    names = ("sd3", "tiny-sd3")
    text_encoders = 2  # the two CLIP encoders; T5 is the model's optional third
    prediction_type = FLOW_PREDICTION
    joint_attention = True
    # The joint-attention composite is TF-ICON's (tficon.composition.joint_attention): the strategies that change its
    # blocks, restrict it to UNet layers, or read UNet cross-attention maps have no counterpart here yet.
    unsupported_settings = {
        "strategy": "tf-icon", "inject_layers": "all", "region_cross_attention": False, "adaptive_blend": False,
    }  # fmt: skip

    @staticmethod
    def _text_parts(model):
        tokenizers = (model.tokenizer, model.tokenizer_2, getattr(model, "tokenizer_3", None))
        encoders = (model.text_encoder, model.text_encoder_2, getattr(model, "text_encoder_3", None))
        return tokenizers, encoders

    @staticmethod
    def _joint_width(model) -> int:
        return int(model.unet.config.joint_attention_dim)

    def encode_prompt(self, model, prompt: str) -> Conditioning:
        tokenizers, encoders = self._text_parts(model)
        return encode_prompt_sd3(tokenizers, encoders, prompt, joint_width=self._joint_width(model),
                                 t5_length=model.t5_length)  # fmt: skip

    def exceptional_embedding(self, model) -> Conditioning:
        _, encoders = self._text_parts(model)
        return exceptional_embedding_sd3(
            encoders, model.exceptional_token_id, int(model.tokenizer.model_max_length),
            joint_width=self._joint_width(model), t5_length=model.t5_length,
        )  # fmt: skip

    def noise_schedule(self, model) -> FlowSchedule:
        return FlowSchedule.from_scheduler_config(model.scheduler_config)

    def denoise(self, model, x: torch.Tensor, model_t: torch.Tensor, embeddings) -> torch.Tensor:
        """The transformer's velocity for ``x`` at timestep ``model_t`` (= 1000 sigma)."""
        if not isinstance(embeddings, Conditioning):
            raise TypeError("an SD3 transformer needs a tficon.model.text.Conditioning (pooled embedding), not a tensor")
        transformer = model.unet
        embeddings = embeddings.to(transformer.device, transformer.dtype).expand(x.shape[0])
        with torch.no_grad():
            return transformer(
                hidden_states=x, timestep=model_t, encoder_hidden_states=embeddings.hidden,
                pooled_projections=embeddings.pooled, return_dict=False,
            )[0]  # fmt: skip

    def cat_conditioning(self, items) -> Conditioning:
        items = list(items)
        if not all(isinstance(item, Conditioning) for item in items):
            raise TypeError("cannot mix SD3 Conditioning rows with plain embedding tensors in one batch")
        return Conditioning(torch.cat([i.hidden for i in items]), torch.cat([i.pooled for i in items]))

    def attention_layers(self, unet) -> list[str]:
        return joint_attention_layers(unet)

    def pipeline(self, model, scheduler):
        """A ``StableDiffusion3Pipeline`` sharing the model's modules (T5 may be None)."""
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=model.unet, scheduler=scheduler, vae=model.vae,
            text_encoder=model.text_encoder, tokenizer=model.tokenizer,
            text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
            text_encoder_3=model.text_encoder_3, tokenizer_3=model.tokenizer_3,
        )  # fmt: skip

"""The family protocol and the registry (``tficon.model.families`` explains both)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import torch

__all__ = ["Family", "conditioning_digest", "family_for", "family_names", "register", "unregister"]


class Family:
    """The behaviour of one model family; subclasses override what differs from plain Stable Diffusion.

    Instances are stateless: every method takes the ``LoadedModel`` (or its UNet) it works on. A conditioning
    is whatever the family's UNet call takes as text conditioning: a tensor for SD, a ``Conditioning`` for SDXL.
    """

    #: the ``LoadedModel.family`` values this family drives
    names: tuple[str, ...] = ()
    #: text encoders (and tokenizers) its models carry: 1, or 2 (``text_encoder_2`` / ``tokenizer_2``)
    text_encoders: int = 1
    #: keep a VAE whose config sets ``force_upcast`` in float32 when the model is float16 (SDXL's overflows)
    upcast_vae: bool = False
    #: what the denoiser predicts, when the family fixes it (SD3: "flow_prediction"); None: the scheduler config says
    prediction_type: str | None = None
    #: the denoiser is an MM-DiT whose attention is joint over text and image tokens (SD3): the composite is
    #: installed with ``tficon.composition.joint_attention`` instead of on UNet ``attn1`` layers
    joint_attention: bool = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.names)})"

    # ------------------------------------------------------------------ text
    def encode_prompt(self, model, prompt: str):
        """The conditioning of ``prompt`` (one row), uncached (``LoadedModel.encode_prompt`` caches it)."""
        raise NotImplementedError

    def exceptional_embedding(self, model):
        """TF-ICON's exceptional prompt e* (one row), uncached."""
        raise NotImplementedError

    def unconditional_embedding(self, model):
        """The unconditional half of classifier-free guidance: the empty prompt's conditioning."""
        return model.encode_prompt("")

    def vocabulary(self) -> frozenset | None:
        """The words a closed-world family was trained on; None for open-vocabulary families."""
        return None

    # ------------------------------------------------------------------ extra conditioning per branch
    def time_ids(self, model, image_size: int | tuple[int, int]) -> torch.Tensor | None:
        """The extra conditioning of a branch working at ``image_size`` (SDXL's added time ids); None: there is none."""
        return None

    def with_time_ids(self, embedding, time_ids):
        """``embedding`` carrying ``time_ids`` (from :meth:`time_ids`); families without them return it unchanged."""
        return embedding

    # ------------------------------------------------------------------ the denoiser
    def denoise(self, model, x: torch.Tensor, model_t: torch.Tensor, embeddings) -> torch.Tensor:
        """One UNet call: ``x`` (B, C, h, w) and ``model_t`` (B,) already on the UNet's device and dtype,
        ``embeddings`` B rows (or 1, repeated) of this family's conditioning, cast here. Returns the UNet's
        output in its own dtype."""
        raise NotImplementedError

    # ------------------------------------------------------------------ rows of conditioning
    def cat_conditioning(self, items: Sequence):
        """Concatenate row conditionings along the batch."""
        return torch.cat(list(items))

    def conditioning_digest(self, embedding) -> str:
        """A content hash of a conditioning (shapes, dtypes, values), for cache keys."""
        return conditioning_digest(embedding)

    # ------------------------------------------------------------------ time
    def noise_schedule(self, model):
        """The continuous-time schedule the solver integrates (``tficon.core.solver.NoiseSchedule`` from the
        scheduler config; a flow family returns a ``tficon.core.flow.FlowSchedule``)."""
        from tficon.core.solver import NoiseSchedule

        return NoiseSchedule.from_scheduler_config(model.scheduler_config)

    # ------------------------------------------------------------------ layers
    def attention_layers(self, unet) -> list[str]:
        """Names (without ``.processor``) of the self-attention layers that take the composite, in execution order."""
        return self_attention_layers(unet)

    #: the diffusers UNet's top-level blocks and the part of the network each is (``tficon.core.layers``)
    layer_parts: tuple[tuple[str, str], ...] = (("down_blocks.", "encoder"), ("mid_block.", "mid"), ("up_blocks.", "decoder"))

    def layer_part(self, name: str) -> str:
        """The part of the network (``"encoder"``, ``"mid"`` or ``"decoder"``) an attention layer ``name`` is in."""
        for prefix, part in self.layer_parts:
            if name.startswith(prefix):
                return part
        raise ValueError(f"{type(self).__name__} cannot tell which part of the network layer {name!r} is in")

    #: Settings this family's denoiser path cannot honour, each with the value it must keep (the official one): a
    #: Session refuses any other value by name instead of ignoring it (:meth:`check_config`).
    unsupported_settings: dict = {}

    def check_config(self, config) -> None:
        """Raise ValueError naming every setting of ``config`` that this family cannot honour."""
        bad = [name for name, value in self.unsupported_settings.items() if getattr(config, name) != value]
        if bad:
            given = ", ".join(f"{name}={getattr(config, name)!r}" for name in bad)
            keep = ", ".join(f"{name}={self.unsupported_settings[name]!r}" for name in bad)
            raise ValueError(
                f"{self.names[0]} models do not support {given} (the mechanism needs UNet attention layers this "
                f"family does not have); keep {keep}, or use a Stable Diffusion 1.x/2.x/XL model"
            )

    def pipeline(self, model, scheduler):
        """A diffusers pipeline sharing ``model``'s modules (a container for diffusers' LoRA loading)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip


def conditioning_digest(embedding) -> str:
    """A content hash of any family's conditioning: a tensor, or a dataclass of tensors (field by field, None
    included), from shapes, dtypes, devices and values."""
    digest = hashlib.sha1()
    if isinstance(embedding, torch.Tensor):
        parts = [embedding]
    else:
        parts = [getattr(embedding, f.name) for f in dataclasses.fields(embedding)]
    for tensor in parts:
        if tensor is None:
            digest.update(b"none")
            continue
        digest.update(str((tuple(tensor.shape), tensor.dtype, tensor.device)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


_REGISTRY: list[Family] = []


def register(family):
    """Register a :class:`Family` (a subclass or an instance); returns its argument, so it works as a decorator.

    Families registered later are asked first by :func:`family_for`."""
    instance = family() if isinstance(family, type) else family
    if not isinstance(instance, Family):
        raise TypeError(f"register takes a Family subclass or instance, got {family!r}")
    if not instance.names or not all(isinstance(name, str) for name in instance.names):
        raise ValueError(f"{type(instance).__name__}.names must list the LoadedModel.family names it drives")
    _REGISTRY.append(instance)
    return family


def unregister(family) -> None:
    """Remove a family registered with :func:`register` (the class or the instance)."""
    _REGISTRY[:] = [f for f in _REGISTRY if f is not family and type(f) is not family]


def family_for(model) -> Family:
    """The family of ``model``: a ``LoadedModel`` (or anything with a ``family`` name), or a family name."""
    name = model if isinstance(model, str) else getattr(model, "family", None)
    for family in reversed(_REGISTRY):
        if name in family.names:
            return family
    raise ValueError(f"no model family drives {name!r}; registered are {family_names()}")


def family_names() -> tuple[str, ...]:
    """Every ``LoadedModel.family`` name a registered family drives, in registration order."""
    return tuple(dict.fromkeys(name for family in _REGISTRY for name in family.names))


def self_attention_layers(unet) -> list[str]:
    """Names (without ``.processor``) of a diffusers UNet's self-attention layers (``attn1``), in execution order:
    the layers every built-in family injects into. ``unet`` may also be its ``attn_processors`` mapping, already
    read (reading it walks every module)."""
    processors = unet if isinstance(unet, dict) else unet.attn_processors
    return [name[: -len(".processor")] for name in processors if name.endswith("attn1.processor")]

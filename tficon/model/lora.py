"""LoRA weights, fused into the model's weights with diffusers' ``load_lora_weights``."""

from __future__ import annotations

import math
import os
from pathlib import Path

from tficon.model.families import family_for

__all__: list[str] = []


def _check_lora_arguments(lora, lora_scale) -> Path | None:
    if isinstance(lora_scale, bool) or not isinstance(lora_scale, (int, float)) or not math.isfinite(lora_scale):
        raise ValueError(f"lora_scale must be a finite number, got {lora_scale!r}")
    if lora is None:
        if lora_scale != 1.0:
            raise ValueError("lora_scale is given but lora is not: pass lora=<LoRA .safetensors file or folder>")
        return None
    if not isinstance(lora, (str, os.PathLike)):
        raise TypeError(f"lora must be a path to LoRA weights, got {type(lora).__name__}")
    path = Path(os.fspath(lora)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"LoRA weights {os.fspath(lora)!r} do not exist (lora= takes a local file or folder)")
    return path


def _fuse_lora(model, path: Path, scale: float) -> None:
    """Load LoRA weights with diffusers' ``load_lora_weights`` and fuse them into the model's weights.

    Fused, the UNet is again plain ``Linear``/``Conv`` layers: TF-ICON's attention processors see no
    adapter wrappers, and the LoRA costs nothing per step. The price is a fixed scale per load.
    """
    from diffusers import DDIMScheduler
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise ImportError("loading LoRA weights needs the peft package (and transformers >= 4.34): pip install peft")
    # The pipeline is only the container load_lora_weights works on: it shares the model's modules. The family
    # builds it (SDXL's container knows SDXL LoRA files, whose text parts name both encoders).
    scheduler = DDIMScheduler.from_config(model.scheduler_config, clip_sample=False)  # never sampled with
    pipeline = family_for(model).pipeline(model, scheduler)
    weight = {"weight_name": path.name} if path.is_file() else {}
    where = str(path.parent if path.is_file() else path)
    try:
        pipeline.load_lora_weights(where, adapter_name="tficon_lora", **weight)
    except (ValueError, KeyError, RuntimeError, OSError) as error:
        raise ValueError(
            f"cannot load LoRA weights {str(path)!r} into {model.spec!r} ({model.family}): {error}. A LoRA must be "
            "made for the same base model family (SD 1.x LoRAs for SD 1.x, SD 2.x for SD 2.x, SDXL for SDXL)."
        ) from error
    adapted = {part: names for part, names in pipeline.get_list_adapters().items() if "tficon_lora" in names}
    if not adapted:
        raise ValueError(
            f"LoRA weights {str(path)!r} changed no layer of {model.spec!r}: were they made for another model family?"
        )
    pipeline.fuse_lora(components=list(adapted), lora_scale=scale, adapter_names=["tficon_lora"])
    pipeline.unload_lora_weights()  # drops the adapter layers; the fused weights stay
    for module in (model.unet, model.text_encoder, getattr(model, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    model.lora, model.lora_scale = str(path), scale

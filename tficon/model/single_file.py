"""Single-file checkpoints (``.ckpt`` / ``.safetensors``): checked from their tensor names and shapes, then read
with diffusers' ``from_single_file``.

Models TF-ICON cannot drive (the SDXL refiner and inpainting, Flux, inpainting/depth UNets, ...), and SD3 files given
without ``config=`` (an SD3 diffusers folder; ``tficon.model.load_sd3``), are refused
before any weights are read, from the safetensors header or a ``.ckpt`` unpickled onto the meta device; that also
turns a truncated or corrupt file into a ``CheckpointFileError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tficon.model.errors import _SUPPORTED, CheckpointFileError, ModelNotAvailableError
from tficon.model.hub import _hub_reachable, _offline_requested
from tficon.model.identify import _read_overrides, identify_model
from tficon.model.load_sd3 import is_sd3_checkpoint, load_sd3_single_file
from tficon.model.loaded import LoadedModel, _resolve_device, _resolve_dtype, assemble_loaded_model

__all__ = ["CHECKPOINT_SUFFIXES", "SD2_BASE_CONFIG_REPO"]

CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
# diffusers' single-file loader configures every SD 2.x checkpoint as the 768-v model; the official
# TF-ICON checkpoint (v2-1_512-ema-pruned.ckpt) is the 512 epsilon "base" model.
SD2_BASE_CONFIG_REPO = "stabilityai/stable-diffusion-2-1-base"


def _is_checkpoint_name(text: str) -> bool:
    return text.lower().endswith(CHECKPOINT_SUFFIXES)


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or "\\" in text
        or text.count("/") > 1
        or _is_checkpoint_name(text)
        or (len(text) > 1 and text[1] == ":")  # C:...
    )



def _default_single_file_config(path: Path) -> str | None:
    """The diffusers config repo for a checkpoint when the caller gave none.

    None lets diffusers infer it from the weights, except for SD 2.x 512 checkpoints (official names
    ``v2-1_512-ema-pruned.ckpt``, ``512-base-ema.ckpt``): diffusers would configure them as the 768
    v-prediction model, but they are epsilon models at 512.
    """
    name = path.name.lower()
    if "512" in name and ("v2" in name or "base" in name):
        return SD2_BASE_CONFIG_REPO
    return None


def _load_single_file(path: Path, spec: str, config, device, dtype, local_files_only) -> LoadedModel:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    layout = _checkpoint_layout(path, spec)
    if is_sd3_checkpoint(layout) and config is not None:  # SD3 / SD3.5: read with its diffusers folder's configs
        return load_sd3_single_file(path, spec, config, device, dtype)
    kind = _check_checkpoint(layout, spec)
    sdxl = kind == "xl_base"
    overrides: dict = {}
    if config is not None:
        config_path = Path(os.fspath(config)).expanduser()
        if config_path.is_dir():
            if not (config_path / "model_index.json").is_file():
                raise FileNotFoundError(f"config folder {str(config_path)!r} has no model_index.json")
            overrides = _read_overrides(config_path)
            config = str(config_path)
        elif _looks_like_path(os.fspath(config)):
            raise FileNotFoundError(f"config folder {os.fspath(config)!r} does not exist")
        else:
            config = os.fspath(config)
    else:
        config = _default_single_file_config(path)

    offline = _offline_requested(local_files_only)
    if isinstance(config, str) and not Path(config).is_dir() and (offline or not _hub_reachable()):
        config = _cached_config_folder(config, spec)  # raises with advice when not cached
        offline = True
    elif config is None and not offline and not _hub_reachable():
        offline = True

    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    try:
        if sdxl:
            pipeline = StableDiffusionXLPipeline.from_single_file(
                str(path), config=config, local_files_only=offline, torch_dtype=dtype
            )
        else:
            pipeline = StableDiffusionPipeline.from_single_file(
                str(path),
                config=config,
                local_files_only=offline,
                torch_dtype=dtype,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    except OSError as error:  # missing files / configs not cached / network
        raise ModelNotAvailableError(
            f"could not load the single-file checkpoint {spec!r}: {error}\nIf the diffusers component configs "
            "could not be fetched (offline), pass config=<a local diffusers folder of the same architecture, e.g. "
            "a saved stabilityai/stable-diffusion-2-1-base or stabilityai/stable-diffusion-xl-base-1.0; its *.json and "
            "tokenizer files suffice>, or run once "
            "with network access so that the configs are cached."
        ) from error
    identity = identify_model(
        dict(pipeline.unet.config),
        pipeline.text_encoder.config.to_dict(),
        dict(pipeline.vae.config),
        dict(pipeline.scheduler.config),
        overrides=overrides,
        where=repr(spec),
        component_names={"unet", "vae", "text_encoder", "text_encoder_2"} if sdxl else None,
        text_encoder_2_config=pipeline.text_encoder_2.config.to_dict() if sdxl else None,
    )
    sdxl_parts = {}
    if sdxl:
        sdxl_parts = dict(
            text_encoder_2=pipeline.text_encoder_2,
            tokenizer_2=pipeline.tokenizer_2,
            force_zeros_for_empty_prompt=bool(pipeline.config.get("force_zeros_for_empty_prompt", True)),
        )
    return assemble_loaded_model(
        **sdxl_parts,
        vae=pipeline.vae,
        unet=pipeline.unet,
        text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer,
        scheduler_config=dict(pipeline.scheduler.config),
        family=identity.family,
        spec=spec,
        exceptional_token_id=identity.exceptional_token_id,
        image_size=identity.image_size,
        device=device,
        dtype=dtype,
    )



# diffusers' names (infer_diffusers_model_type) for checkpoint families, in words. "v1" / "v2" are SD 1.x / 2.x.
_CHECKPOINT_FAMILIES = {  # refused; "xl_base" (SDXL base) is accepted
    "xl_refiner": "SDXL refiner",
    "xl_inpaint": "SDXL inpainting",
    "playground-v2-5": "Playground v2.5 (SDXL-based)",
    "inpainting": "SD 1.x inpainting (9-channel UNet)",
    "inpainting_v2": "SD 2.x inpainting (9-channel UNet)",
    "upscale": "SD x4 upscaler",
}
_CHECKPOINT_FAMILY_PREFIXES = {
    "sd35": "Stable Diffusion 3.5",  # before "sd3": the first matching prefix names the family
    "sd3": "Stable Diffusion 3",
    "flux": "Flux",
    "controlnet": "ControlNet",
    "stable_cascade": "Stable Cascade",
}
_LDM_IN_CONV = "model.diffusion_model.input_blocks.0.0.weight"


def _checkpoint_layout(path: Path, spec: str) -> dict:
    """Tensor names -> shape-only (meta) tensors of a checkpoint file, without reading its weights.

    A ``.safetensors`` file is read through its header; a ``.ckpt`` is unpickled onto the meta device
    (with ``weights_only=True``, as diffusers reads it). A file that cannot be read this way is truncated
    or corrupt, and the error says so and names it, instead of diffusers' bare ``OSError``.
    """
    size = path.stat().st_size
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}
        checkpoint = torch.load(path, map_location="meta", weights_only=True)
    except Exception as error:  # safetensors' SafetensorError, torch's RuntimeError/OSError/UnpicklingError
        if "weights_only" in str(error):
            raise CheckpointFileError(
                f"checkpoint file {spec!r} holds pickled Python objects besides tensors, which are not loaded "
                "(diffusers reads checkpoints with weights_only=True as well). Convert it to .safetensors with "
                f"the tool that made it. Reason: {type(error).__name__}: {error}"
            ) from error
        raise CheckpointFileError(
            f"cannot read checkpoint file {spec!r} ({size:,} bytes): it is truncated or corrupt, e.g. an "
            f"interrupted download; download it again. Reason: {type(error).__name__}: {error}"
        ) from error
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]  # Lightning checkpoints nest the weights, as diffusers unwraps
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(f"checkpoint file {spec!r} does not hold a state dict (got {type(checkpoint).__name__})")
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def _check_checkpoint(layout: dict, spec: str) -> str | None:
    """Refuse checkpoint files of families TF-ICON cannot drive, naming the family, before loading weights.

    Returns diffusers' model type: ``"v1"``, ``"v2"``, ``"xl_base"`` or None (undetermined)."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    try:
        kind = infer_diffusers_model_type(layout)
    except Exception:  # a few families are told apart by tensor values, which shape-only tensors do not have
        kind = None
    if kind == "v1" and CHECKPOINT_KEY_NAMES["open_clip_sdxl"] in layout:
        # diffusers types SDXL base by a tensor of its second text encoder's 10th block and otherwise falls back to
        # "v1"; a file with fewer blocks there (tficon.model.tiny's "sdxl") still has SDXL base's layout, whose second
        # encoder diffusers' loader recognizes by this key. Loaded as SD it would lose that encoder.
        kind = "xl_base"
    family = _CHECKPOINT_FAMILIES.get(kind) if kind else None
    if family is None and kind:
        family = next((name for p, name in _CHECKPOINT_FAMILY_PREFIXES.items() if kind.startswith(p)), None)
    if family is None and kind not in (None, "v1", "v2", "xl_base"):
        family = f"diffusers type {kind!r}"
    if family is not None and family.startswith("Stable Diffusion 3"):  # runs, from its diffusers folder only
        raise CheckpointFileError(
            f"checkpoint file {spec!r} is a {family} model; tficon reads an SD3 single file with config=<a local "
            f"SD3 diffusers folder of the same architecture>, or the diffusers folder itself; {_SUPPORTED}."
        )
    if family is not None:
        raise CheckpointFileError(f"checkpoint file {spec!r} is a {family} model, which TF-ICON cannot run; {_SUPPORTED}.")
    if not any(k.startswith("model.diffusion_model.") for k in layout):
        lora = any("lora" in k.lower() for k in layout)
        hint = (
            " It holds LoRA weights: pass it as load_model(<base model>, lora=...)."
            if lora
            else " Is it a VAE, a text encoder or another kind of model?"
        )
        raise CheckpointFileError(
            f"checkpoint file {spec!r} is not a Stable Diffusion checkpoint: it has no UNet weights "
            f"(model.diffusion_model.*).{hint} {_SUPPORTED}."
        )
    conv_in = layout.get(_LDM_IN_CONV)
    if conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] != 4:
        raise CheckpointFileError(
            f"checkpoint file {spec!r} has a UNet with {conv_in.shape[1]} input channels (an inpainting, depth or "
            f"instruct-pix2pix model); {_SUPPORTED}."
        )
    return kind



def _cached_config_folder(repo_id: str, spec: str) -> str:
    """The locally cached config files (no weights) of ``repo_id``, without touching the network."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    try:
        # a pure file-system check first: hub calls may wait on a silent network even when cache-only
        if not isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str):
            raise FileNotFoundError(f"{repo_id}/model_index.json is not cached")
        return snapshot_download(repo_id, allow_patterns=["*.json", "*/*.json", "*/*.txt"], local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelNotAvailableError(
            f"cannot load the single-file checkpoint {spec!r} offline: the diffusers configs of {repo_id!r} are not "
            "in the local Hugging Face cache. Pass config=<a local diffusers folder of the same architecture (its "
            "*.json and tokenizer files suffice)>, or run once with network access so that they are cached."
        ) from error

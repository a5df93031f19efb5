"""Load a Stable Diffusion model (or the embedded toy model): ``load_model(spec)``.

``load_model(spec)`` accepts:

- ``"toy"``: the embedded offline model shipped in ``tficon/toy/model``;
- a local diffusers pipeline folder (``model_index.json`` + ``vae/``, ``unet/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``), or a ``StableDiffusion3Pipeline`` folder (SD3 / SD3.5, T5 optional:
  ``tficon.model.load_sd3``);
- a single-file checkpoint (``.ckpt`` / ``.safetensors``, e.g. the official ``v2-1_512-ema-pruned.ckpt``),
  read with diffusers' ``from_single_file`` (``tficon.model.single_file``); ``config=`` names a diffusers folder (or
  hub id) with the matching component configs, which keeps it offline;
- a Hugging Face hub id (``stabilityai/stable-diffusion-2-1-base``,
  ``stable-diffusion-v1-5/stable-diffusion-v1-5``, ...), taken from the local cache when present
  (``tficon.model.hub``: nothing here may hang on the network).

``lora=`` adds LoRA weights (``tficon.model.lora``), fused into the weights, so the model stays a plain UNet for
TF-ICON's attention processors. What the model is (family, prediction type, native image size, exceptional token) is
read from its configs and ``tficon.json`` (``tficon.model.identify``) before any weights are read. An unavailable
``device`` (``cuda:7`` on a machine without it, ``mps`` off Apple silicon) is refused before anything is loaded.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from tficon.model import folder_layout
from tficon.model.errors import _ALTERNATIVES, ModelNotAvailableError
from tficon.model.hub import _hub_snapshot
from tficon.model.identify import _component_names, _read_json, _read_overrides, identify_model
from tficon.model.load_sd3 import is_sd3_index, load_sd3_folder
from tficon.model.loaded import LoadedModel, _resolve_device, _resolve_dtype, assemble_loaded_model
from tficon.model.lora import _check_lora_arguments, _fuse_lora
from tficon.model.single_file import _is_checkpoint_name, _load_single_file, _looks_like_path

__all__ = ["TOY_MODEL_DIR", "load_model"]

TOY_MODEL_DIR = Path(__file__).resolve().parents[1] / "toy" / "model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_model(
    spec: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    local_files_only: bool | None = None,
    config: str | os.PathLike | None = None,
    lora: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
) -> LoadedModel:
    """Load ``spec`` (``"toy"``, a diffusers folder, a .ckpt/.safetensors file or a hub id).

    Args:
        spec: what to load (see the module docstring).
        device: default cuda when available, else cpu.
        dtype: default float16 on cuda, float32 otherwise.
        local_files_only: True: never use the network. False: the network may be used. None (default):
            offline when ``HF_HUB_OFFLINE`` is set, else local cache first and the network only if the hub
            answers within ``HUB_PROBE_TIMEOUT_S``.
        config: single-file checkpoints only: a diffusers folder (or hub id) whose component configs
            match the checkpoint; a local folder keeps loading fully offline.
        lora: LoRA weights for this model: a ``.safetensors`` file (diffusers or kohya format, as
            ``load_lora_weights`` reads them) or a folder holding ``pytorch_lora_weights.safetensors``.
            They are fused into the UNet (and the text encoder, when the file has weights for it).
        lora_scale: strength of the fused LoRA (1.0: as trained; 0 leaves the model unchanged).

    Raises:
        FileNotFoundError: a local path (model, config or LoRA) that does not exist.
        ModelNotAvailableError: a hub id (or the configs of a checkpoint) neither cached nor reachable, or
            the toy model not installed.
        CheckpointFileError: a checkpoint file that is truncated, corrupt, or not a Stable Diffusion model.
        ModelLoadError: a file of a diffusers folder (weights, tokenizer) that is truncated or corrupt; it names
            the file (``CheckpointFileError`` is one too).
        FileNotFoundError: an incomplete diffusers folder: the message lists what its family needs and what is
            missing.
        ValueError: an unsupported model family, an unavailable device, LoRA weights that fit no layer of
            the model, or another bad argument.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a str or path, got {type(spec).__name__}")
    text = os.fspath(spec)
    if config is not None and not _is_checkpoint_name(text):
        raise ValueError("config= only applies to single-file checkpoints (.ckpt / .safetensors)")
    # Cheap checks first: a bad device or LoRA path must not cost a model load.
    device = _resolve_device(device)
    lora_path = _check_lora_arguments(lora, lora_scale)
    model = _load(text, device, dtype, local_files_only, config)
    if lora_path is not None:
        _fuse_lora(model, lora_path, float(lora_scale))
    return model


def _load(text: str, device, dtype, local_files_only, config) -> LoadedModel:
    if text == "toy":
        if not (TOY_MODEL_DIR / "model_index.json").is_file():
            raise ModelNotAvailableError(
                f"the embedded toy model is not installed (no {TOY_MODEL_DIR}/model_index.json). Train it with "
                f"`python -m training.toy.train --out {TOY_MODEL_DIR}` in a tficon checkout, or reinstall tficon."
            )
        return _load_folder(TOY_MODEL_DIR, "toy", device, dtype)
    if re.match(r"^[a-z][a-z0-9+.-]*://", text):
        raise ValueError(f"URLs are not supported as spec ({text!r}): download the file and pass its local path.")

    path = Path(text).expanduser()
    if path.is_dir():
        return _load_folder(path, text, device, dtype)
    if path.is_file():
        if not _is_checkpoint_name(text):
            raise ValueError(
                f"{text!r} is a file but not a .ckpt/.safetensors checkpoint; pass a checkpoint file, a diffusers "
                "folder, a hub id or \"toy\"."
            )
        return _load_single_file(path, text, config, device, dtype, local_files_only)
    if _looks_like_path(text) or not _HUB_ID.match(text):
        raise FileNotFoundError(f"model path {text!r} does not exist. {_ALTERNATIVES}")
    folder = _hub_snapshot(text, local_files_only)
    return _load_folder(folder, text, device, dtype)



@contextmanager
def _no_weight_loading_bars():
    """Keep transformers from drawing a "Loading weights" bar for each text encoder.

    A model load is quick on the toy model and already reported by tficon's callers; a bar per encoder
    clutters every notebook that loads a model. The caller's setting is restored afterwards.
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load_folder(folder: Path, spec: str, device, dtype) -> LoadedModel:
    """Check the configs of a diffusers pipeline folder, then load its components."""
    with _no_weight_loading_bars():
        return _load_folder_components(folder, spec, device, dtype)


def _load_folder_components(folder: Path, spec: str, device, dtype) -> LoadedModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{spec!r} is a folder but not a diffusers pipeline folder (no model_index.json). {_ALTERNATIVES}"
        )
    index = _read_json(folder / "model_index.json")
    if is_sd3_index(index):  # an MM-DiT on a flow: its own layout and loader (tficon.model.load_sd3)
        return load_sd3_folder(folder, spec, device, dtype)
    component_names = _component_names(index)
    sdxl = "text_encoder_2" in component_names
    # The SDXL refiner has no first text encoder: identify_model names it instead of a missing-file error.
    first_encoder = "text_encoder" in component_names or not sdxl
    # A missing config is named now (with all that is missing); missing weights once the family is one TF-ICON runs.
    folder_layout.check_complete(folder, spec, sdxl, first_encoder=first_encoder, configs_only=True)
    text_config = _read_json(folder / "text_encoder" / "config.json") if first_encoder else {}
    identity = identify_model(
        _read_json(folder / "unet" / "config.json"),
        text_config,
        _read_json(folder / "vae" / "config.json"),
        _read_json(folder / "scheduler" / "scheduler_config.json"),
        overrides=_read_overrides(folder),
        component_names=component_names,
        where=repr(spec),
        text_encoder_2_config=_read_json(folder / "text_encoder_2" / "config.json") if sdxl else None,
    )
    folder_layout.check_complete(folder, spec, sdxl, first_encoder=first_encoder, configs_only=False)
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)

    def read(component: str, load):  # a truncated or corrupt file: a ModelLoadError naming it
        names = ("tokenizer.json", "vocab.json") if component.startswith("tokenizer") else None
        with folder_layout.reading(folder, component, names):
            return load()

    sdxl_parts = {}
    if sdxl:
        sdxl_parts = dict(
            text_encoder_2=read(
                "text_encoder_2", lambda: CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")
            ),
            tokenizer_2=read("tokenizer_2", lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer_2")),
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
        )
    return assemble_loaded_model(
        **sdxl_parts,
        vae=read("vae", lambda: AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)),
        unet=read("unet", lambda: UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)),
        text_encoder=read("text_encoder", lambda: CLIPTextModel.from_pretrained(folder / "text_encoder")),
        tokenizer=read("tokenizer", lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer")),
        scheduler_config=_read_json(folder / "scheduler" / "scheduler_config.json"),
        family=identity.family,
        spec=spec,
        exceptional_token_id=identity.exceptional_token_id,
        image_size=identity.image_size,
        device=device,
        dtype=dtype,
    )


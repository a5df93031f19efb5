"""The model layer: identifying and loading models, their families, text conditioning, the VAE, tiny random models.

- ``load`` (``load_model``): the embedded toy model, diffusers folders, hub ids; ``single_file``: .ckpt/.safetensors
  checkpoints; ``hub``: the hub without hanging; ``lora``: fused LoRA weights; ``folder_layout``: what a complete
  diffusers folder of each family holds, and ``ModelLoadError`` for a damaged file;
- ``identify`` (``identify_model``): what a model is, from its configs; ``families``: what differs between SD 1.x/2.x,
  SDXL and the toy model at run time;
- ``loaded`` (``LoadedModel``, ``assemble_loaded_model``); ``vae``: images to latents and back; ``text``: prompt and
  exceptional-prompt encodings; ``tiny``: tiny random models for tests.

The names below are this package's public surface (``tficon.models``, the old module, is this package).
"""

from __future__ import annotations

from tficon.model.errors import CheckpointFileError, ModelLoadError, ModelNotAvailableError
from tficon.model.families import Family, family_for

# The private names below were importable from the old tficon.models module (tests and notebooks reach them).
from tficon.model.hub import HUB_PROBE_TIMEOUT_S, _hub_reachable, _offline_requested  # noqa: F401
from tficon.model.identify import (
    FAMILIES,
    PREDICTION_TYPES,
    SD_EXCEPTIONAL_TOKEN_ID,
    SDXL_TIME_IDS,
    TFICON_JSON,
    ModelIdentity,
    identify_model,
)
from tficon.model.load import TOY_MODEL_DIR, load_model
from tficon.model.loaded import (
    PROMPT_CACHE_SIZE,
    LoadedModel,
    _resolve_device,  # noqa: F401
    _resolve_dtype,  # noqa: F401
    assemble_loaded_model,
    cast_module,
)
from tficon.model.single_file import CHECKPOINT_SUFFIXES, SD2_BASE_CONFIG_REPO, _default_single_file_config  # noqa: F401

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "FAMILIES",
    "HUB_PROBE_TIMEOUT_S",
    "PREDICTION_TYPES",
    "PROMPT_CACHE_SIZE",
    "SD2_BASE_CONFIG_REPO",
    "SDXL_TIME_IDS",
    "SD_EXCEPTIONAL_TOKEN_ID",
    "TFICON_JSON",
    "TOY_MODEL_DIR",
    "CheckpointFileError",
    "Family",
    "LoadedModel",
    "ModelLoadError",
    "ModelIdentity",
    "ModelNotAvailableError",
    "assemble_loaded_model",
    "cast_module",
    "family_for",
    "identify_model",
    "load_model",
]

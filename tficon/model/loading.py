"""Load a Stable Diffusion model (or the embedded toy model) and say what it is.

``load_model(spec)`` accepts:

- ``"toy"``: the embedded offline model shipped in ``tficon/toy/model``;
- a local diffusers pipeline folder (``model_index.json`` + ``vae/``, ``unet/``, ``text_encoder/``,
  ``tokenizer/``, ``scheduler/``);
- a single-file checkpoint (``.ckpt`` / ``.safetensors``, e.g. the official ``v2-1_512-ema-pruned.ckpt``),
  read with diffusers' ``from_single_file``; ``config=`` names a diffusers folder (or hub id) with the
  matching component configs, which keeps it offline;
- a Hugging Face hub id (``stabilityai/stable-diffusion-2-1-base``,
  ``stable-diffusion-v1-5/stable-diffusion-v1-5``, ...), taken from the local cache when present.

``lora=`` adds LoRA weights (a diffusers / kohya ``.safetensors`` file or a folder saved by
``save_lora_weights``) with diffusers' ``load_lora_weights`` and fuses them into the weights, so the
model stays a plain UNet for TF-ICON's attention processors.

What the model is (``family``, ``prediction_type``, native ``image_size``, exceptional token) is read from
the component configs (``cross_attention_dim`` 768 -> SD 1.x, 1024 -> SD 2.x), or from a ``tficon.json``
file in the folder, which overrides ``family``, ``exceptional_token_id`` and ``image_size`` (the toy and
tiny models have one). SDXL base (two text encoders, ``addition_embed_type="text_time"`` with six time ids,
``cross_attention_dim`` 2048) is family ``"sdxl"`` at 1024 px (docs/algorithm.md §15). Models TF-ICON cannot drive
(the SDXL refiner and SDXL inpainting, SD3, Flux, inpainting/depth UNets, ...) are rejected before any weights are read: for a checkpoint file, from its tensor names and
shapes (the safetensors header; a ``.ckpt`` unpickled onto the meta device), which also turns a
truncated or corrupt file into a ``CheckpointFileError`` naming the file. An unavailable ``device``
(``cuda:7`` on a machine without it, ``mps`` off Apple silicon) is refused before anything is loaded.

Offline behaviour: nothing here may hang on the network. With ``HF_HUB_OFFLINE`` set (or
``local_files_only=True``) only local files and the HF cache are used. Otherwise the cache is tried first;
the network is used only when the hub endpoint answers an HTTP HEAD request within
``HUB_PROBE_TIMEOUT_S`` seconds, so a machine without network fails within about that long (at once
when name resolution fails). Once the hub has answered, huggingface_hub's own timeouts
(``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``) govern the download.
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

if TYPE_CHECKING:  # imported lazily at run time: `import tficon` stays fast
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = [
    "FAMILIES",
    "HUB_PROBE_TIMEOUT_S",
    "SD_EXCEPTIONAL_TOKEN_ID",
    "TFICON_JSON",
    "TOY_MODEL_DIR",
    "CheckpointFileError",
    "LoadedModel",
    "ModelIdentity",
    "ModelNotAvailableError",
    "assemble_loaded_model",
    "identify_model",
    "load_model",
]

FAMILIES = ("sd1", "sd2", "sdxl", "toy", "tiny-sd1", "tiny-sd2", "tiny-sdxl")
SDXL_FAMILIES = ("sdxl", "tiny-sdxl")
SDXL_TIME_IDS = 6  # original size (h, w), crop top-left (top, left), target size (h, w)
PREDICTION_TYPES = ("epsilon", "v_prediction")
SD_EXCEPTIONAL_TOKEN_ID = 7788  # "rian</w>" in CLIP's BPE; the official TF-ICON choice
TFICON_JSON = "tficon.json"
TOY_MODEL_DIR = Path(__file__).resolve().parents[1] / "toy" / "model"
HUB_PROBE_TIMEOUT_S = 3.0
PROMPT_CACHE_SIZE = 16
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
# diffusers' single-file loader configures every SD 2.x checkpoint as the 768-v model; the official
# TF-ICON checkpoint (v2-1_512-ema-pruned.ckpt) is the 512 epsilon "base" model.
SD2_BASE_CONFIG_REPO = "stabilityai/stable-diffusion-2-1-base"
_CROSS_ATTENTION_FAMILY = {768: "sd1", 1024: "sd2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_ALTERNATIVES = (
    'Use a local diffusers folder or a .ckpt/.safetensors file, or "toy" for the embedded offline model '
    '(load_model("toy")).'
)


class ModelNotAvailableError(FileNotFoundError):
    """The requested model is not on this machine and cannot be fetched (offline, not cached, not installed)."""


class CheckpointFileError(ValueError):
    """A single-file checkpoint that cannot be used: truncated, corrupt, or not a Stable Diffusion checkpoint."""


_SUPPORTED = (
    "TF-ICON runs on Stable Diffusion 1.x and 2.x text-to-image models (a 4-channel UNet, one CLIP text encoder) "
    "and on SDXL base (two CLIP text encoders, six added time ids)"
)


# --------------------------------------------------------------------------------------------------------------
# What a model is
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """What ``identify_model`` concluded from the component configs."""

    family: str
    prediction_type: str
    image_size: int
    exceptional_token_id: int


def identify_model(
    unet_config: dict,
    text_encoder_config: dict,
    vae_config: dict,
    scheduler_config: dict,
    *,
    overrides: dict | None = None,
    component_names: set[str] | None = None,
    where: str = "model",
    text_encoder_2_config: dict | None = None,
) -> ModelIdentity:
    """Decide family, prediction type, native image size and exceptional token from config dicts.

    Args:
        unet_config, text_encoder_config, vae_config, scheduler_config: the components' ``config.json`` /
            ``scheduler_config.json`` contents.
        overrides: the ``tficon.json`` contents (``family``, ``exceptional_token_id``, ``image_size``).
        component_names: the component names listed in ``model_index.json`` (with a class), when there is one.
        where: names the model in error messages.
        text_encoder_2_config: SDXL's second text encoder's config (a ``CLIPTextModelWithProjection``).

    Raises:
        ValueError: a family TF-ICON cannot drive, or inconsistent / invalid metadata.
    """
    overrides = dict(overrides or {})
    names = set(component_names or ())
    sdxl = (
        "text_encoder_2" in names
        or text_encoder_2_config is not None
        or unet_config.get("addition_embed_type") is not None
    )
    if sdxl:
        _check_sdxl_base(unet_config, text_encoder_config, text_encoder_2_config, names, where)
    if "transformer" in names or "prior" in names:
        raise ValueError(
            f"{where}: a transformer- or prior-based pipeline (SD3, Flux, PixArt, Kandinsky, ...) is not supported; "
            f"{_SUPPORTED}."
        )
    cross = unet_config.get("cross_attention_dim")
    latent_channels = int(vae_config.get("latent_channels", 4))
    in_channels = int(unet_config.get("in_channels", 4))
    if in_channels != latent_channels:
        raise ValueError(
            f"{where}: the UNet takes {in_channels} input channels but the VAE makes {latent_channels}-channel "
            "latents (an inpainting, depth or upscaling model); use a plain text-to-image SD 1.x/2.x model."
        )
    if not isinstance(cross, int):
        raise ValueError(f"{where}: unsupported UNet cross_attention_dim {cross!r}; expected a single int.")
    width = text_encoder_config.get("hidden_size")
    if sdxl:  # the two encoders' widths, concatenated (checked by _check_sdxl_base)
        width = int(width) + int(text_encoder_2_config["hidden_size"])
    if width is not None and int(width) != cross:
        raise ValueError(
            f"{where}: the text encoder width {width} does not match the UNet's cross_attention_dim {cross}."
        )

    family = overrides.get("family")
    if family is None and sdxl:
        family = "sdxl"
    if family is None:
        family = _CROSS_ATTENTION_FAMILY.get(cross)
        if family is None:
            hint = " (2048 is SDXL, which needs its second text encoder and added time ids)" if cross == 2048 else ""
            raise ValueError(
                f"{where}: cannot tell the model family from cross_attention_dim {cross}{hint}; supported are "
                f"SD 1.x (768) and SD 2.x (1024). For another SD-shaped model add a {TFICON_JSON} with "
                f'"family" (one of {FAMILIES}).'
            )
    elif family not in FAMILIES:
        raise ValueError(f"{where}: {TFICON_JSON} family must be one of {FAMILIES}, got {family!r}")
    if (family in SDXL_FAMILIES) != sdxl:
        raise ValueError(
            f"{where}: {TFICON_JSON} family {family!r} does not match the components "
            f"({'an SDXL' if sdxl else 'a one-encoder SD'} layout)"
        )

    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"{where}: scheduler prediction_type {prediction_type!r} is not supported; expected one of "
            f"{PREDICTION_TYPES}."
        )

    vae_factor = 2 ** (len(vae_config.get("block_out_channels", (0,) * 4)) - 1)
    image_size = overrides.get("image_size")
    if image_size is None:
        sample_size = unet_config.get("sample_size")
        if not isinstance(sample_size, int):
            raise ValueError(
                f"{where}: UNet sample_size {sample_size!r} is not a single int; state image_size in {TFICON_JSON}."
            )
        image_size = sample_size * vae_factor
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % vae_factor:
        raise ValueError(
            f"{where}: image_size must be a positive multiple of the VAE factor {vae_factor}, got {image_size!r}"
        )

    token_id = overrides.get("exceptional_token_id", SD_EXCEPTIONAL_TOKEN_ID)
    if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
        raise ValueError(f"{where}: exceptional_token_id must be a non-negative int, got {token_id!r}")
    for config in (text_encoder_config, text_encoder_2_config or {}):
        vocab_size = config.get("vocab_size")
        if vocab_size is not None and token_id >= int(vocab_size):
            raise ValueError(
                f"{where}: exceptional_token_id {token_id} is outside the text encoder's vocabulary of {vocab_size}; "
                f"state a valid id in {TFICON_JSON}."
            )
    return ModelIdentity(family, prediction_type, image_size, token_id)


def _check_sdxl_base(unet_config: dict, text_config: dict, text_2_config: dict | None, names: set, where: str) -> None:
    """Accept SDXL base's layout only; name the refiner and other SDXL-style variants in the refusal."""
    refuse = f"{where}: an SDXL-style model (two text encoders / added size conditioning) that is not SDXL base"
    if unet_config.get("addition_embed_type") != "text_time":
        raise ValueError(
            f"{refuse}: its UNet's addition_embed_type is {unet_config.get('addition_embed_type')!r}, SDXL's is "
            f"'text_time'; {_SUPPORTED}."
        )
    time_dim = unet_config.get("addition_time_embed_dim")
    projection_in = unet_config.get("projection_class_embeddings_input_dim")
    if text_2_config is None or not text_config or (names and "text_encoder" not in names):
        if text_2_config is not None:
            raise ValueError(f"{refuse}: it has only the second text encoder, like the SDXL refiner; {_SUPPORTED}.")
        raise ValueError(
            f"{refuse}: SDXL base needs text_encoder and text_encoder_2 (a CLIPTextModelWithProjection); "
            f"{_SUPPORTED}."
        )
    pooled = text_2_config.get("projection_dim")
    if not all(isinstance(v, int) for v in (time_dim, projection_in, pooled)):
        raise ValueError(f"{refuse}: missing addition_time_embed_dim / projection_class_embeddings_input_dim / "
                         f"text_encoder_2 projection_dim; {_SUPPORTED}.")
    if projection_in != pooled + SDXL_TIME_IDS * time_dim:
        ids = (projection_in - pooled) / time_dim
        what = " (5 ids: the SDXL refiner's aesthetic-score conditioning)" if ids == 5 else ""
        raise ValueError(
            f"{refuse}: its UNet expects {ids:g} added time ids{what}, SDXL base has {SDXL_TIME_IDS}; {_SUPPORTED}."
        )


# --------------------------------------------------------------------------------------------------------------
# The loaded model
# --------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class LoadedModel:
    """The parts of a Stable Diffusion pipeline that TF-ICON uses, plus what kind of model it is.

    Modules are in eval mode with gradients off. Latents handed out and taken in are scaled by
    ``latent_scaling`` (SD: 0.18215), i.e. they are what the UNet sees.
    """

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict  # for solver.NoiseSchedule.from_scheduler_config
    family: str  # one of FAMILIES
    prediction_type: str  # "epsilon" | "v_prediction"
    spec: str  # what the user asked for
    exceptional_token_id: int
    image_size: int  # native working size in pixels
    device: torch.device
    dtype: torch.dtype
    lora: str | None = None  # the LoRA weights fused into the UNet / text encoder, if any
    lora_scale: float = 1.0
    text_encoder_2: object | None = None  # SDXL: the CLIPTextModelWithProjection
    tokenizer_2: object | None = None  # SDXL: its tokenizer
    force_zeros_for_empty_prompt: bool = False  # SDXL: the unconditional embedding is zeros (the pipeline's rule)
    #: The words a closed-world model was trained on (the toy model's caption words), so that a prompt leaving
    #: its world can be pointed out; None for open-vocabulary models (Stable Diffusion).
    vocabulary: frozenset | None = None
    _prompt_cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _exceptional: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def is_sdxl(self) -> bool:
        """Two text encoders and added time ids (docs/algorithm.md §15): text conditioning is a ``Conditioning``."""
        return self.text_encoder_2 is not None

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def latent_scaling(self) -> float:
        """The VAE's ``scaling_factor`` (0.18215 for SD 1.x/2.x)."""
        return float(self.vae.config.scaling_factor)

    @property
    def latent_size(self) -> int:
        """Latent side length at the native image size (64 for SD at 512)."""
        return self.image_size // self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Working image sides must be multiples of this: the VAE's factor times the UNet's downsampling (64 for SD),
        so that every attention level has a whole grid."""
        levels = len(self.unet.config.block_out_channels)
        return self.vae_scale_factor * 2 ** (levels - 1)

    def latent_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The latent grid (h, w) of a working image of ``image_size`` = (H, W) pixels."""
        return (image_size[0] // self.vae_scale_factor, image_size[1] // self.vae_scale_factor)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """``(1, 77, D)`` prompt embedding (see ``tficon.model.text.encode_prompt``), cached per prompt string.
        SDXL: a ``tficon.model.text.Conditioning`` (``tficon.model.text.encode_prompt_sdxl``) with no time ids.

        The returned tensor is shared with the cache: do not modify it in place.
        """
        from tficon.model.text import encode_prompt, encode_prompt_sdxl

        cached = self._prompt_cache.get(prompt)
        if cached is None:
            if self.is_sdxl:
                cached = encode_prompt_sdxl(
                    (self.tokenizer, self.tokenizer_2), (self.text_encoder, self.text_encoder_2), prompt
                )
            else:
                cached = encode_prompt(self.tokenizer, self.text_encoder, prompt)
            self._prompt_cache[prompt] = cached
            while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        else:
            self._prompt_cache.move_to_end(prompt)
        return cached

    def exceptional_embedding(self) -> torch.Tensor:
        """``(1, 77, D)`` exceptional prompt e* (see ``tficon.model.text.exceptional_embedding``), cached.
        SDXL: a ``Conditioning`` from both encoders (``tficon.model.text.exceptional_embedding_sdxl``).

        The returned tensor is shared with the cache: do not modify it in place.
        """
        from tficon.model.text import exceptional_embedding, exceptional_embedding_sdxl

        if self._exceptional is None:
            window = int(self.tokenizer.model_max_length)
            if self.is_sdxl:
                encoders = (self.text_encoder, self.text_encoder_2)
                self._exceptional = exceptional_embedding_sdxl(encoders, self.exceptional_token_id, window)
            else:
                self._exceptional = exceptional_embedding(self.text_encoder, self.exceptional_token_id, window)
        return self._exceptional

    def unconditional_embedding(self):
        """The generation branch's unconditional half: ``encode_prompt("")``, except on SDXL models whose pipeline
        sets ``force_zeros_for_empty_prompt`` (SDXL base does): zeros, as ``StableDiffusionXLPipeline`` uses for
        classifier-free guidance without a negative prompt (docs/algorithm.md §15.1)."""
        empty = self.encode_prompt("")
        if self.is_sdxl and self.force_zeros_for_empty_prompt:
            from tficon.model.text import Conditioning

            return Conditioning(torch.zeros_like(empty.hidden), torch.zeros_like(empty.pooled))
        return empty

    def time_ids(self, image_size: int | tuple[int, int] | None = None) -> torch.Tensor | None:
        """SDXL's (1, 6) added time ids for a working size (default: the native size); None for SD models."""
        from tficon.model.text import sdxl_time_ids

        return sdxl_time_ids(self.image_size if image_size is None else image_size) if self.is_sdxl else None

    def encode_image(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Encode images to scaled latents: a posterior *sample*, as the official code takes (docs/algorithm.md §4).

        ``z = (mean + std * eps) * latent_scaling`` where, for each image in batch order, ``eps`` is one
        float32 draw of shape ``(1, C, h, w)`` from ``generator`` on the generator's device (the official
        code: CPU generator seeded 3407, background then reference).

        Args:
            image: ``(B, 3, H, W)`` float tensor in [-1, 1]; H and W multiples of ``vae_scale_factor``.
            generator: the ``torch.Generator`` the noise is drawn from (any device).

        Returns:
            ``(B, latent_channels, H / f, W / f)`` float32 latents on ``self.device``.
        """
        self._check_image(image)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        with torch.no_grad():
            posterior = self.vae.encode(image.to(self.device, self.vae.dtype)).latent_dist
        mean, std = posterior.mean.float(), posterior.std.float()
        one_image = (1, *mean.shape[1:])
        noise = torch.cat(
            [
                torch.randn(one_image, generator=generator, device=generator.device, dtype=torch.float32)
                for _ in range(mean.shape[0])
            ]
        ).to(self.device)
        return (mean + std * noise) * self.latent_scaling

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents ``(B, C, h, w)`` to float32 images ``(B, 3, h*f, w*f)`` clamped to [-1, 1]."""
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != self.latent_channels:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be a (B, {self.latent_channels}, h, w) latent tensor, got {shape}")
        with torch.no_grad():
            image = self.vae.decode((z / self.latent_scaling).to(self.device, self.vae.dtype)).sample
        return image.float().clamp(-1.0, 1.0)

    def describe(self) -> str:
        """One line: family, prediction type, sizes, device and dtype."""
        h = self.latent_size
        dtype = str(self.dtype).removeprefix("torch.")
        lora = f" + LoRA {self.lora!r} (scale {self.lora_scale:g})" if self.lora else ""
        if self.vae.dtype != self.dtype:
            lora += f" (VAE in {str(self.vae.dtype).removeprefix('torch.')}: it overflows in float16)"
        return (
            f"{self.family} ({self.prediction_type}), {self.image_size}x{self.image_size} images -> "
            f"{self.latent_channels}x{h}x{h} latents, {self.device} {dtype}, from {self.spec!r}{lora}"
        )

    def _check_image(self, image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor) or not torch.is_floating_point(image):
            raise TypeError(f"image must be a float tensor in [-1, 1], got {getattr(image, 'dtype', type(image))}")
        f = self.vae_scale_factor
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[2] % f or image.shape[3] % f:
            raise ValueError(
                f"image must have shape (B, 3, H, W) with H and W multiples of {f}, got {tuple(image.shape)}"
            )
        low, high = float(image.min()), float(image.max())
        if low < -1.001 or high > 1.001:
            raise ValueError(
                f"image values must lie in [-1, 1] (got {low:.3g}..{high:.3g}); map uint8 pixels with x / 127.5 - 1."
            )


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load on; refuses one this machine does not have, before any weights are read.

    Without the check, ``cuda:7`` on a CPU-only machine fails deep inside the first ``.to()`` with
    torch's bare ``AssertionError: Torch not compiled with CUDA enabled``.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(
                f"device {device!r} is not a device name ({error}); use 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from None
    elif not isinstance(device, torch.device):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    _check_device_available(device)
    return device


def _check_device_available(device: torch.device) -> None:
    name = str(device)
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA GPU visible"
            raise ValueError(
                f"device {name!r} is not available: torch.cuda.is_available() is False ({build}, torch "
                f"{torch.__version__}). Use device='cpu', or install the torch build for your CUDA version."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name!r} is not available: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}."
            )
        return
    if device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ValueError(
                f"device {name!r} is not available: torch.backends.mps.is_available() is False (MPS needs Apple "
                "silicon and macOS 12.3+). Use device='cpu'."
            )
        return
    # xpu, npu, ...: torch exposes torch.<type>.is_available() for the accelerators it knows
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if not callable(available) or not available():
        raise ValueError(f"device {name!r} is not available on this machine; use device='cpu'.")


_DTYPE_NAMES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}  # fmt: skip


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.removeprefix("torch.")]
    raise TypeError(f"dtype must be a torch.dtype or one of {sorted(_DTYPE_NAMES)}, got {dtype!r}")


def assemble_loaded_model(
    *,
    vae,
    unet,
    text_encoder,
    tokenizer,
    scheduler_config: dict,
    family: str,
    spec: str,
    exceptional_token_id: int,
    image_size: int,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    text_encoder_2=None,
    tokenizer_2=None,
    force_zeros_for_empty_prompt: bool = False,
) -> LoadedModel:
    """Move components to ``device``/``dtype`` (defaults: cuda+float16 if available, else cpu+float32),
    switch them to inference (eval, no gradients) and wrap them in a ``LoadedModel``.

    SDXL: pass ``text_encoder_2`` and ``tokenizer_2`` too. A VAE whose config sets ``force_upcast`` (SDXL's, which
    overflows in float16) stays float32 in a float16 model, as ``StableDiffusionXLPipeline`` upcasts it."""
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if (text_encoder_2 is None) != (family not in SDXL_FAMILIES) or (text_encoder_2 is None) != (tokenizer_2 is None):
        raise ValueError(f"family {family!r} needs {'both' if family in SDXL_FAMILIES else 'no'} text_encoder_2 "
                         "and tokenizer_2")
    modules = [(vae, dtype), (unet, dtype), (text_encoder, dtype)]
    if text_encoder_2 is not None:
        modules.append((text_encoder_2, dtype))
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False) and family in SDXL_FAMILIES:
        modules[0] = (vae, torch.float32)
    for module, module_dtype in modules:
        module.to(device=device)
        if module.dtype != module_dtype:
            cast_module(module, module_dtype)
        module.eval()
        module.requires_grad_(False)
    return LoadedModel(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=dict(scheduler_config),
        family=family,
        prediction_type=prediction_type,
        spec=spec,
        exceptional_token_id=int(exceptional_token_id),
        image_size=int(image_size),
        device=device,
        dtype=dtype,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        force_zeros_for_empty_prompt=bool(force_zeros_for_empty_prompt),
        vocabulary=_closed_vocabulary(family),
    )


def _closed_vocabulary(family: str) -> frozenset | None:
    """The toy family was trained on captions of a fixed vocabulary; every other family is open."""
    if family != "toy":
        return None
    from tficon.toy.world import caption_words

    return frozenset(caption_words())


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast ``module`` to ``dtype``.

    diffusers' ``ModelMixin.to`` warns that "modules should be kept in float32" on every dtype cast, also when the
    model lists none (its list defaults to ``[]``, which the check takes as given). Models with such modules keep
    diffusers' cast; the others take torch's own, which is what diffusers' ends in.
    """
    if getattr(module, "_keep_in_fp32_modules", None):
        module.to(dtype=dtype)
    else:
        torch.nn.Module.to(module, dtype=dtype)


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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; is this a complete diffusers Stable Diffusion folder?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _read_overrides(folder: Path) -> dict:
    path = folder / TFICON_JSON
    if not path.is_file():
        return {}
    overrides = _read_json(path)
    if not isinstance(overrides, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return overrides


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
    component_names = _component_names(index)
    sdxl = "text_encoder_2" in component_names
    # The SDXL refiner has no first text encoder: identify_model names it instead of a missing-file error.
    text_config = _read_json(folder / "text_encoder" / "config.json") if "text_encoder" in component_names or not sdxl else {}
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
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    sdxl_parts = {}
    if sdxl:
        sdxl_parts = dict(
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
            tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
        )
    return assemble_loaded_model(
        **sdxl_parts,
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype),
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        scheduler_config=_read_json(folder / "scheduler" / "scheduler_config.json"),
        family=identity.family,
        spec=spec,
        exceptional_token_id=identity.exceptional_token_id,
        image_size=identity.image_size,
        device=device,
        dtype=dtype,
    )


def _component_names(index: dict) -> set[str]:
    """The components a ``model_index.json`` lists with a class (the SDXL refiner lists ``text_encoder: [null, null]``)."""
    return {
        k for k, v in index.items()
        if not k.startswith("_") and isinstance(v, (list, tuple)) and len(v) == 2 and v[0] is not None
    }  # fmt: skip


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

    kind = _check_checkpoint(_checkpoint_layout(path, spec), spec)
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


# --------------------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------------------


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


def _fuse_lora(model: LoadedModel, path: Path, scale: float) -> None:
    """Load LoRA weights with diffusers' ``load_lora_weights`` and fuse them into the model's weights.

    Fused, the UNet is again plain ``Linear``/``Conv`` layers: TF-ICON's attention processors see no
    adapter wrappers, and the LoRA costs nothing per step. The price is a fixed scale per load.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise ImportError("loading LoRA weights needs the peft package (and transformers >= 4.34): pip install peft")
    # The pipeline is only the container load_lora_weights works on: it shares the model's modules. SDXL's
    # container knows SDXL LoRA files, whose text parts name both encoders.
    parts = dict(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler_config, clip_sample=False),  # never sampled with
    )
    if model.is_sdxl:
        pipeline = StableDiffusionXLPipeline(**parts, text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2)
    else:
        pipeline = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
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


# --------------------------------------------------------------------------------------------------------------
# The hub, without hanging
# --------------------------------------------------------------------------------------------------------------

_TRUE = {"1", "on", "yes", "true"}


def _offline_requested(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import; reading it here as well honours a later change.
    variables = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    environment = any(os.environ.get(v, "").strip().lower() in _TRUE for v in variables)
    return environment or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint answers an HTTP HEAD request within ``timeout_s``.

    Name lookup, proxies (urllib reads the same ``*_PROXY`` variables) and TLS are all part of the test,
    so a sandbox that accepts TCP connections but never answers counts as unreachable. Any HTTP status is
    an answer; so is a certificate the system store rejects (a TLS-inspecting proxy: huggingface_hub may
    still trust it through its own CA settings, so let it try).
    """
    outcome: list[bool] = []

    def ask() -> None:
        request = urllib.request.Request(_endpoint(), method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                outcome.append(True)
        except urllib.error.HTTPError:
            outcome.append(True)
        except urllib.error.URLError as error:
            outcome.append(isinstance(error.reason, ssl.SSLCertVerificationError))
        except (OSError, ValueError):
            outcome.append(False)

    # A thread, because name resolution has no timeout of its own.
    probe = threading.Thread(target=ask, daemon=True, name="tficon-hub-probe")
    probe.start()
    probe.join(timeout_s)
    return bool(outcome and outcome[0])


def _hub_snapshot(repo_id: str, local_files_only: bool | None) -> Path:
    """The local folder of hub pipeline ``repo_id``: from the cache, else downloaded when allowed and reachable."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache_error: Exception | None = None
    # try_to_load_from_cache only reads the file system. Any hub call, even a cache-only one, may first
    # spend seconds on a one-off metadata request when the network is silent, so skip them when nothing is cached.
    cached_index = try_to_load_from_cache(repo_id, "model_index.json")
    if isinstance(cached_index, str):
        try:
            pipeline, skip = _pipeline_class(_read_json(Path(cached_index)))
            return Path(pipeline.download(repo_id, local_files_only=True, **skip))
        except (OSError, ValueError) as error:
            cache_error = error
    if _offline_requested(local_files_only):
        reason = "it is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE / local_files_only)"
        raise ModelNotAvailableError(f"cannot load model {repo_id!r}: {reason}. {_ALTERNATIVES}") from cache_error
    if local_files_only is None and not _hub_reachable():
        reason = (
            f"it is not in the local Hugging Face cache and the hub ({urlparse(_endpoint()).hostname}) cannot be "
            f"reached (no connection within {HUB_PROBE_TIMEOUT_S:g} s)"
        )
        raise ModelNotAvailableError(f"cannot load model {repo_id!r}: {reason}. {_ALTERNATIVES}") from cache_error
    try:
        # Check the pipeline type on model_index.json alone before fetching gigabytes of weights.
        index = _read_json(Path(hf_hub_download(repo_id, "model_index.json")))
        names = _component_names(index)
        refiner = "text_encoder_2" in names and "text_encoder" not in names
        if refiner or "transformer" in names or "unet" not in names:
            raise ValueError(
                f"{repo_id!r} is a {index.get('_class_name', 'non-SD')} repository; TF-ICON runs on SD 1.x, 2.x and "
                "SDXL base."
            )
        pipeline, skip = _pipeline_class(index)
        return Path(pipeline.download(repo_id, local_files_only=False, **skip))
    except OSError as error:
        raise ModelNotAvailableError(f"cannot download model {repo_id!r}: {error}. {_ALTERNATIVES}") from error


def _pipeline_class(index: dict):
    """The diffusers pipeline class that downloads a hub repository, and the components it must not fetch."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if "text_encoder_2" in _component_names(index):
        return StableDiffusionXLPipeline, {}
    # The safety checker is never used: passing it tells diffusers not to fetch or require its weights.
    return StableDiffusionPipeline, {"safety_checker": None, "feature_extractor": None}


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT

"""The loaded model: its components, what kind of model it is, and how it was placed on a device and dtype.

``assemble_loaded_model`` moves components to a device and dtype (refusing a device this machine does not have,
before anything is loaded), switches them to inference and wraps them in a :class:`LoadedModel`. What differs
between model families (prompt encoding, the exceptional prompt, SDXL's time ids) the model asks its family
(``tficon.model.families``); VAE encoding and decoding live in ``tficon.model.vae``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tficon.model.families import Family, family_for, family_names
from tficon.model.identify import PREDICTION_TYPES

if TYPE_CHECKING:  # imported lazily at run time: `import tficon` stays fast
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = ["PROMPT_CACHE_SIZE", "LoadedModel", "assemble_loaded_model", "cast_module"]

PROMPT_CACHE_SIZE = 16


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
    family: str  # a name registered in tficon.model.families (FAMILIES for the built-in ones)
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
    text_encoder_3: object | None = None  # SD3: the optional T5 encoder (None: its rows are zeros)
    tokenizer_3: object | None = None  # SD3: its tokenizer
    t5_length: int = 256  # SD3: T5 rows per prompt (the pipeline's max_sequence_length)
    #: The words a closed-world model was trained on (the toy model's caption words), so that a prompt leaving
    #: its world can be pointed out; None for open-vocabulary models (Stable Diffusion).
    vocabulary: frozenset | None = None
    _prompt_cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _exceptional: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def family_rules(self) -> Family:
        """The family's behaviour (``tficon.model.families.family_for(self)``): how this model encodes prompts, calls
        its UNet, and what extra conditioning its rows carry."""
        return family_for(self)

    @property
    def is_sdxl(self) -> bool:
        """Two text encoders and added time ids (docs/algorithm.md §15): text conditioning is a ``Conditioning``.
        A read-only convenience for people; tficon itself asks :attr:`family_rules`."""
        rules = self.family_rules
        return rules.text_encoders == 2 and not rules.joint_attention

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def latent_shift(self) -> float:
        """The VAE's ``shift_factor`` (SD3: 0.0609; 0 when it has none): latents are ``(z - shift) * scaling``."""
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def attention_levels(self) -> int:
        """Grids the attention runs on: the UNet's levels (the latent grid and its halvings), or 1 + log2 of a
        transformer's patch size (SD3: 2, the latent grid and the token grid at half its resolution)."""
        config = self.unet.config
        patch = getattr(config, "patch_size", None)
        if patch is not None and not hasattr(config, "block_out_channels"):
            return int(patch).bit_length()
        return len(config.block_out_channels)

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
        or a transformer's patch size (16 for SD3), so that every attention level has a whole grid."""
        return self.vae_scale_factor * 2 ** (self.attention_levels - 1)

    def latent_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The latent grid (h, w) of a working image of ``image_size`` = (H, W) pixels."""
        return (image_size[0] // self.vae_scale_factor, image_size[1] // self.vae_scale_factor)

    def encode_prompt(self, prompt: str):
        """The conditioning of ``prompt``, cached per prompt string: SD a ``(1, 77, D)`` tensor
        (``tficon.model.text.encode_prompt``), SDXL a ``tficon.model.text.Conditioning`` with no time ids; the family
        decides (``tficon.model.families``).

        The returned conditioning is shared with the cache: do not modify it in place.
        """
        cached = self._prompt_cache.get(prompt)
        if cached is None:
            cached = self.family_rules.encode_prompt(self, prompt)
            self._prompt_cache[prompt] = cached
            while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        else:
            self._prompt_cache.move_to_end(prompt)
        return cached

    def exceptional_embedding(self):
        """The exceptional prompt e*, cached: SD ``(1, 77, D)`` (``tficon.model.text.exceptional_embedding``), SDXL a
        ``Conditioning`` from both encoders (``tficon.model.text.exceptional_embedding_sdxl``).

        The returned conditioning is shared with the cache: do not modify it in place.
        """
        if self._exceptional is None:
            self._exceptional = self.family_rules.exceptional_embedding(self)
        return self._exceptional

    def unconditional_embedding(self):
        """The generation branch's unconditional half: ``encode_prompt("")``, except on SDXL models whose pipeline
        sets ``force_zeros_for_empty_prompt`` (SDXL base does): zeros, as ``StableDiffusionXLPipeline`` uses for
        classifier-free guidance without a negative prompt (docs/algorithm.md §15.1)."""
        return self.family_rules.unconditional_embedding(self)

    def time_ids(self, image_size: int | tuple[int, int] | None = None) -> torch.Tensor | None:
        """SDXL's (1, 6) added time ids for a working size (default: the native size); None for SD models."""
        return self.family_rules.time_ids(self, self.image_size if image_size is None else image_size)

    def encode_image(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Encode images to scaled float32 latents, a posterior sample (``tficon.model.vae.encode_image``)."""
        from tficon.model.vae import encode_image

        return encode_image(self, image, generator)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Decode scaled latents ``(B, C, h, w)`` to float32 images ``(B, 3, h*f, w*f)`` clamped to [-1, 1]
        (``tficon.model.vae.decode_latent``)."""
        from tficon.model.vae import decode_latent

        return decode_latent(self, z)

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
    text_encoder_3=None,
    tokenizer_3=None,
) -> LoadedModel:
    """Move components to ``device``/``dtype`` (defaults: cuda+float16 if available, else cpu+float32),
    switch them to inference (eval, no gradients) and wrap them in a ``LoadedModel``.

    SDXL: pass ``text_encoder_2`` and ``tokenizer_2`` too. A VAE whose config sets ``force_upcast`` (SDXL's, which
    overflows in float16) stays float32 in a float16 model, as ``StableDiffusionXLPipeline`` upcasts it."""
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    if family not in family_names():
        raise ValueError(f"family must be one of {family_names()}, got {family!r}")
    rules = family_for(family)
    two = rules.text_encoders == 2
    prediction_type = rules.prediction_type or scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES and prediction_type != rules.prediction_type:
        raise ValueError(f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if (text_encoder_2 is None) == two or (text_encoder_2 is None) != (tokenizer_2 is None):
        raise ValueError(f"family {family!r} needs {'both' if two else 'no'} text_encoder_2 and tokenizer_2")
    modules = [(vae, dtype), (unet, dtype), (text_encoder, dtype)]
    if text_encoder_2 is not None:
        modules.append((text_encoder_2, dtype))
    if text_encoder_3 is not None:
        modules.append((text_encoder_3, dtype))
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False) and rules.upcast_vae:
        modules[0] = (vae, torch.float32)
    for module, module_dtype in modules:
        module.to(device=device)
        if module.dtype != module_dtype:
            cast_module(module, module_dtype)
        own_aligned_storage(module)
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
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
        vocabulary=rules.vocabulary(),
    )


#: Byte alignment of the storage every weight gets (what torch's CPU allocator returns; covers AVX-512 loads).
WEIGHT_ALIGNMENT = 64


def own_aligned_storage(module: torch.nn.Module) -> None:
    """Give every weight and buffer that sits at an unaligned address its own freshly allocated copy.

    Loaders memory-map safetensors files, so a weight can start at any 8-byte offset of the file. CPU matrix
    kernels pick their vector loops by alignment, and the same weights at another address then give results that
    differ in the last bit (measured: a model loaded from a folder or a single file against the same weights in
    memory, 1 ulp in the text embeddings). Copying the unaligned ones makes a model's outputs depend on its
    weights only, not on how the file laid them out. Weights on a GPU are copies already and are left alone.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % WEIGHT_ALIGNMENT:
                tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)


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


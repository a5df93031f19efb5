"""What a model is: family, prediction type, native image size and exceptional token, from its component configs.

The family is read from the configs (``cross_attention_dim`` 768 -> SD 1.x, 1024 -> SD 2.x; two text encoders and
``addition_embed_type="text_time"`` with six time ids -> SDXL base, docs/algorithm.md §15), or from a ``tficon.json``
file in the folder, which overrides ``family``, ``exceptional_token_id`` and ``image_size`` (the toy and tiny models
have one). Models TF-ICON cannot drive (the SDXL refiner, Flux, inpainting/depth UNets, ...) are refused here,
naming what they are. A stated family must be one that ``tficon.model.families`` has registered. SD3 / SD3.5
folders (a ``transformer/`` holding an ``SD3Transformer2DModel``) are identified by ``tficon.model.load_sd3``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tficon.model import families
from tficon.model.errors import _SUPPORTED

__all__ = ["FAMILIES", "PREDICTION_TYPES", "SD_EXCEPTIONAL_TOKEN_ID", "TFICON_JSON", "ModelIdentity", "identify_model"]

#: the built-in family names (``tficon.model.families.family_names()`` also lists families registered later)
FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "toy", "tiny-sd1", "tiny-sd2", "tiny-sdxl", "tiny-sd3")
SDXL_TIME_IDS = 6  # original size (h, w), crop top-left (top, left), target size (h, w)
PREDICTION_TYPES = ("epsilon", "v_prediction")
SD_EXCEPTIONAL_TOKEN_ID = 7788  # "rian</w>" in CLIP's BPE; the official TF-ICON choice
TFICON_JSON = "tficon.json"
_CROSS_ATTENTION_FAMILY = {768: "sd1", 1024: "sd2"}


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
            f"{where}: a transformer- or prior-based pipeline (Flux, PixArt, Kandinsky, ...) other than SD3 / SD3.5 "
            "is not supported; "
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
                f'"family" (one of {families.family_names()}).'
            )
    elif family not in families.family_names():
        raise ValueError(f"{where}: {TFICON_JSON} family must be one of {families.family_names()}, got {family!r}")
    if families.family_for(family).joint_attention:  # an MM-DiT family named on a UNet pipeline's configs
        raise ValueError(
            f"{where}: {TFICON_JSON} family {family!r} is an SD3 (MM-DiT) family, but the components are a UNet "
            "pipeline's; SD3 folders hold a transformer/ (StableDiffusion3Pipeline)"
        )
    if (families.family_for(family).text_encoders == 2) != sdxl:
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



def _component_names(index: dict) -> set[str]:
    """The components a ``model_index.json`` lists with a class (the SDXL refiner lists ``text_encoder: [null, null]``)."""
    return {
        k for k, v in index.items()
        if not k.startswith("_") and isinstance(v, (list, tuple)) and len(v) == 2 and v[0] is not None
    }  # fmt: skip

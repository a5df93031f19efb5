"""Loading Stable Diffusion 3 / 3.5 (docs/algorithm.md §16): a ``StableDiffusion3Pipeline`` folder, T5 optional.

A folder is SD3 when its ``model_index.json`` names an ``SD3Transformer2DModel`` as ``transformer``. It needs the
transformer, a 16-channel VAE, CLIP-L and CLIP-G (``CLIPTextModelWithProjection``) with their tokenizers and a
``FlowMatchEulerDiscreteScheduler``; ``text_encoder_3`` / ``tokenizer_3`` (T5) are loaded when the folder has them
and ``t5=True`` (the default), else the model runs without T5 (its rows zeros, as the pipeline does with
``text_encoder_3=None``). ``tficon.json`` may state ``family``, ``exceptional_token_id``, ``image_size`` and
``t5_length``. A single file in Stability's layout (``sd3.5_medium.safetensors``) loads with ``config=`` such a folder
(:func:`load_sd3_single_file`).
"""

from __future__ import annotations

from pathlib import Path

from tficon.model import folder_layout
from tficon.model.families import family_for, family_names
from tficon.model.identify import SD_EXCEPTIONAL_TOKEN_ID, TFICON_JSON, _read_json, _read_overrides
from tficon.model.loaded import LoadedModel, _resolve_device, _resolve_dtype, assemble_loaded_model
from tficon.model.text_sd3 import SD3_T5_LENGTH

__all__ = ["identify_sd3", "is_sd3_checkpoint", "is_sd3_index", "load_sd3_folder", "load_sd3_single_file"]

SD3_TRANSFORMER = "SD3Transformer2DModel"
SD3_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def is_sd3_index(index: dict) -> bool:
    """Whether a ``model_index.json`` describes an SD3 pipeline (its ``transformer`` is an SD3Transformer2DModel)."""
    transformer = index.get("transformer")
    return isinstance(transformer, (list, tuple)) and len(transformer) == 2 and transformer[1] == SD3_TRANSFORMER


def _needs(with_t5: bool) -> list[folder_layout.Need]:
    config, weights = folder_layout._config, folder_layout._weights
    needs = [config("model_index.json"), config("scheduler/scheduler_config.json")]
    for component in ("transformer", "vae"):
        needs += [config(f"{component}/config.json"), weights(component, folder_layout._DIFFUSERS_WEIGHTS)]
    for n in ("", "_2", "_3") if with_t5 else ("", "_2"):
        needs += folder_layout._encoder(f"text_encoder{n}")
    needs += [folder_layout._tokenizer("tokenizer"), folder_layout._tokenizer("tokenizer_2")]
    if with_t5:  # T5's tokenizer is a sentencepiece model or a tokenizer.json
        needs.append(folder_layout.Need("tokenizer_3/spiece.model (or tokenizer.json)",
                                        (("tokenizer_3/spiece.model",), ("tokenizer_3/tokenizer.json",))))  # fmt: skip
    return needs


def _check_complete(folder: Path, spec: str, with_t5: bool, *, configs_only: bool) -> None:
    needs = _needs(with_t5)
    missing = [need for need in needs if not need.present(folder)]
    if not missing or (configs_only and not any(need.config for need in missing)):
        return
    raise FileNotFoundError(
        f"{spec!r} is an incomplete SD3 diffusers folder: missing {', '.join(n.label for n in missing)}. An SD3 "
        f"folder holds {', '.join(n.label for n in needs)} (text_encoder_3/ and tokenizer_3/, T5, are optional). "
        f"Copy the missing files from the model's source, or re-download the model ({folder_layout._DOWNLOAD})."
    )


def identify_sd3(transformer_config: dict, vae_config: dict, scheduler_config: dict, text_configs: tuple[dict, dict],
                 overrides: dict, where: str) -> tuple[str, int, int, int]:  # fmt: skip
    """(family, image size, exceptional token id, T5 rows) of an SD3 pipeline's configs; a ValueError naming what does
    not fit (another scheduler, a VAE whose channels differ from the transformer's, CLIP encoders without projection)."""
    scheduler = scheduler_config.get("_class_name", SD3_SCHEDULER)
    if scheduler != SD3_SCHEDULER:
        raise ValueError(f"{where}: an SD3 pipeline with a {scheduler}; tficon integrates SD3's {SD3_SCHEDULER} flow")
    channels = int(vae_config.get("latent_channels", 16))
    if int(transformer_config.get("in_channels", 16)) != channels:
        raise ValueError(
            f"{where}: the transformer takes {transformer_config.get('in_channels')} channels but the VAE makes "
            f"{channels}-channel latents"
        )
    for name, config in zip(("text_encoder", "text_encoder_2"), text_configs):
        if "projection_dim" not in config and "CLIPTextModelWithProjection" not in str(config.get("architectures")):
            raise ValueError(f"{where}: SD3's {name} must be a CLIPTextModelWithProjection")
    family = overrides.get("family", "sd3")
    if family not in family_names() or not family_for(family).joint_attention:
        sd3_names = [n for n in family_names() if family_for(n).joint_attention]
        raise ValueError(f"{where}: {TFICON_JSON} family {family!r} is not an SD3 family ({sd3_names})")
    vae_factor = 2 ** (len(vae_config.get("block_out_channels", (0,) * 4)) - 1)
    image_size = overrides.get("image_size", int(transformer_config.get("sample_size", 128)) * vae_factor)
    token_id = overrides.get("exceptional_token_id", SD_EXCEPTIONAL_TOKEN_ID)
    t5_length = overrides.get("t5_length", SD3_T5_LENGTH)
    for value, name in ((image_size, "image_size"), (token_id, "exceptional_token_id"), (t5_length, "t5_length")):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "exceptional_token_id" else 1):
            raise ValueError(f"{where}: {TFICON_JSON} {name} must be a positive int, got {value!r}")
    for config in text_configs:
        if token_id >= int(config.get("vocab_size", token_id + 1)):
            raise ValueError(f"{where}: exceptional_token_id {token_id} is outside the CLIP vocabulary")
    return family, image_size, token_id, t5_length


def load_sd3_folder(folder: Path, spec: str, device, dtype, *, t5: bool = True) -> LoadedModel:
    """Load an SD3 / SD3.5 diffusers folder (module docstring); ``t5=False`` leaves T5 out even when present."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    index = _read_json(folder / "model_index.json")
    has_t5 = isinstance(index.get("text_encoder_3"), (list, tuple)) and index["text_encoder_3"][0] is not None
    with_t5 = bool(t5 and has_t5)
    _check_complete(folder, spec, with_t5, configs_only=True)
    family, image_size, token_id, t5_length = identify_sd3(
        _read_json(folder / "transformer" / "config.json"), _read_json(folder / "vae" / "config.json"),
        _read_json(folder / "scheduler" / "scheduler_config.json"),
        (_read_json(folder / "text_encoder" / "config.json"), _read_json(folder / "text_encoder_2" / "config.json")),
        _read_overrides(folder), repr(spec),
    )  # fmt: skip
    _check_complete(folder, spec, with_t5, configs_only=False)
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)

    def read(component: str, load):
        names = ("tokenizer.json", "vocab.json", "spiece.model") if component.startswith("tokenizer") else None
        with folder_layout.reading(folder, component, names):
            return load()

    t5_parts = {}
    if with_t5:
        t5_parts = dict(
            text_encoder_3=read("text_encoder_3", lambda: T5EncoderModel.from_pretrained(folder / "text_encoder_3")),
            tokenizer_3=read("tokenizer_3", lambda: AutoTokenizer.from_pretrained(folder / "tokenizer_3")),
        )
    model = assemble_loaded_model(
        **t5_parts,
        vae=read("vae", lambda: AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)),
        unet=read("transformer", lambda: SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer",
                                                                                torch_dtype=dtype)),  # fmt: skip
        text_encoder=read("text_encoder", lambda: CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder")),
        tokenizer=read("tokenizer", lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer")),
        text_encoder_2=read("text_encoder_2",
                            lambda: CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")),  # fmt: skip
        tokenizer_2=read("tokenizer_2", lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer_2")),
        scheduler_config=_read_json(folder / "scheduler" / "scheduler_config.json"),
        family=family, spec=spec, exceptional_token_id=token_id, image_size=image_size, device=device, dtype=dtype,
    )  # fmt: skip
    model.t5_length = t5_length
    return model


#: a tensor every SD3 / SD3.5 single file (Stability's layout) holds
SD3_CHECKPOINT_KEY = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"


def is_sd3_checkpoint(layout: dict) -> bool:
    """Whether a checkpoint's tensor names (``tficon.model.single_file._checkpoint_layout``) are an SD3 file's."""
    return SD3_CHECKPOINT_KEY in layout


def load_sd3_single_file(path: Path, spec: str, config, device, dtype, *, t5: bool = False) -> LoadedModel:
    """An SD3 / SD3.5 single file (``sd3.5_medium.safetensors``, ...) with ``config=`` a local SD3 diffusers folder of
    the same architecture (its ``*.json`` and tokenizer files suffice; offline). The file's transformer, VAE and CLIP
    encoders are read (diffusers' ``StableDiffusion3Pipeline.from_single_file``); T5 is left out unless ``t5`` and the
    file holds it. ``tficon.json`` in the config folder applies as for a folder."""
    import os

    from diffusers import StableDiffusion3Pipeline

    if config is None:
        raise ValueError(
            f"{spec!r} is an SD3 single file: pass config=<a local SD3 / SD3.5 diffusers folder of the same "
            "architecture> (its *.json and tokenizer files suffice), or load the diffusers folder itself"
        )
    folder = Path(os.fspath(config)).expanduser()
    if not (folder / "model_index.json").is_file() or not is_sd3_index(_read_json(folder / "model_index.json")):
        raise ValueError(f"config {os.fspath(config)!r} must be a local SD3 diffusers folder (its model_index.json "
                         "names an SD3Transformer2DModel)")  # fmt: skip
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    text_config = lambda name: _read_json(folder / name / "config.json")  # noqa: E731
    family, image_size, token_id, t5_length = identify_sd3(
        _read_json(folder / "transformer" / "config.json"), _read_json(folder / "vae" / "config.json"),
        _read_json(folder / "scheduler" / "scheduler_config.json"),
        (text_config("text_encoder"), text_config("text_encoder_2")), _read_overrides(folder), repr(spec),
    )  # fmt: skip
    skip_t5 = {} if t5 else dict(text_encoder_3=None, tokenizer_3=None)
    pipeline = StableDiffusion3Pipeline.from_single_file(
        str(path), config=str(folder), local_files_only=True, torch_dtype=dtype, **skip_t5
    )
    model = assemble_loaded_model(
        vae=pipeline.vae, unet=pipeline.transformer, text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer,
        text_encoder_2=pipeline.text_encoder_2, tokenizer_2=pipeline.tokenizer_2,
        text_encoder_3=pipeline.text_encoder_3, tokenizer_3=pipeline.tokenizer_3,
        scheduler_config=dict(pipeline.scheduler.config), family=family, spec=spec, exceptional_token_id=token_id,
        image_size=image_size, device=device, dtype=dtype,
    )  # fmt: skip
    model.t5_length = t5_length
    return model

"""What a diffusers pipeline folder of each family holds, and the errors for one that is incomplete or damaged.

A folder that lacks a file is answered with the whole list its family needs and what is missing from it, not with
the first file a loader happens to open; a weights or tokenizer file that cannot be read (truncated by an
interrupted download, say) is answered with a ``ModelLoadError`` naming the file and saying to download it again,
not with the loader's own ``OSError``.
"""

from __future__ import annotations

import json
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from tficon.model.errors import ModelLoadError

__all__ = ["Need", "check_complete", "family_needs", "reading"]

# The weights file names diffusers and transformers read, in the order they prefer them (sharded: an index).
_DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json",
)  # fmt: skip
_TRANSFORMERS_WEIGHTS = (
    "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json",
)  # fmt: skip
_DOWNLOAD = "e.g. `hf download <repo id> --local-dir <folder>`"


@dataclass(frozen=True)
class Need:
    """One thing a folder must hold: ``label`` names it in messages; ``choices`` are the alternatives (each a tuple
    of paths relative to the folder, all needed); ``config``: read before the family is identified."""

    label: str
    choices: tuple[tuple[str, ...], ...]
    config: bool = False

    def present(self, folder: Path) -> bool:
        return any(all((folder / name).is_file() for name in choice) for choice in self.choices)


def _config(path: str) -> Need:
    return Need(path, ((path,),), config=True)


def _weights(component: str, names: tuple[str, ...]) -> Need:
    return Need(f"{component}/{names[0]} (or {names[1]})", tuple((f"{component}/{n}",) for n in names))


def _tokenizer(component: str) -> Need:
    return Need(
        f"{component}/tokenizer.json (or vocab.json and merges.txt)",
        ((f"{component}/tokenizer.json",), (f"{component}/vocab.json", f"{component}/merges.txt")),
    )


def _encoder(component: str) -> list[Need]:
    return [_config(f"{component}/config.json"), _weights(component, _TRANSFORMERS_WEIGHTS)]


def family_needs(sdxl: bool, *, first_encoder: bool = True) -> list[Need]:
    """What an SD 1.x/2.x folder (``sdxl`` False) or an SDXL folder needs. ``first_encoder`` False leaves out the
    first text encoder and tokenizer (a folder whose ``model_index.json`` lists none, like the SDXL refiner, which
    ``identify_model`` then refuses by name)."""
    needs = [_config("model_index.json"), _config("scheduler/scheduler_config.json")]
    for component in ("unet", "vae"):
        needs += [_config(f"{component}/config.json"), _weights(component, _DIFFUSERS_WEIGHTS)]
    if first_encoder:
        needs += _encoder("text_encoder") + [_tokenizer("tokenizer")]
    if sdxl:
        needs += _encoder("text_encoder_2") + [_tokenizer("tokenizer_2")]
    return needs


def check_complete(folder: Path, spec: str, sdxl: bool, *, first_encoder: bool = True, configs_only: bool) -> None:
    """Raise ``FileNotFoundError`` listing what ``folder`` lacks of what its family needs (``family_needs``).

    ``configs_only``: raise only when a config is missing (the family is not identified yet, and a folder of a
    family TF-ICON cannot run is refused by name before its weights are looked for); the message still lists
    everything missing."""
    needs = family_needs(sdxl, first_encoder=first_encoder)
    missing = [need for need in needs if not need.present(folder)]
    if not missing or (configs_only and not any(need.config for need in missing)):
        return
    family, other = ("SDXL", "SD 1.x/2.x") if sdxl else ("SD 1.x/2.x", "SDXL")
    difference = "the same without" if sdxl else "the same and"
    raise FileNotFoundError(
        f"{spec!r} is an incomplete {family} diffusers folder: missing {', '.join(n.label for n in missing)}. "
        f"An {family} folder holds {', '.join(n.label for n in needs)} ({other}: {difference} text_encoder_2/ and "
        f"tokenizer_2/). Copy the missing files from the model's source, or re-download the model ({_DOWNLOAD})."
    )


# What a loader raises for a file it cannot read: safetensors' SafetensorError (an OSError-less Exception, matched by
# name so that safetensors need not be imported here), torch.load's RuntimeError/UnpicklingError/EOFError for a
# truncated .bin, diffusers' OSError, a JSONDecodeError for a damaged tokenizer.json.
_READ_ERRORS = (OSError, RuntimeError, pickle.UnpicklingError, EOFError, json.JSONDecodeError)


@contextmanager
def reading(folder: Path, component: str, names: tuple[str, ...] | None = None):
    """Turn a failure to read ``folder/component``'s files (weights ``names``, default the component's weights) into
    a ``ModelLoadError`` naming the file and saying to download it again. Running out of memory is not a damaged
    file and passes through."""
    try:
        yield
    except (torch.OutOfMemoryError, PermissionError):  # not a damaged file; a PermissionError names its file
        raise
    except Exception as error:  # noqa: BLE001 - narrowed below: only a file that cannot be read is renamed
        if not isinstance(error, _READ_ERRORS) and type(error).__name__ != "SafetensorError":
            raise
        if isinstance(error, ModelLoadError):
            raise
        names = names or (_TRANSFORMERS_WEIGHTS if component.startswith("text_encoder") else _DIFFUSERS_WEIGHTS)
        path = next((folder / component / n for n in names if (folder / component / n).is_file()), folder / component)
        size = f" ({path.stat().st_size:,} bytes)" if path.is_file() else ""
        raise ModelLoadError(
            f"cannot read {path}{size}: the file is truncated or corrupt (an interrupted download or copy, a full "
            f"disk); re-download this file, or the whole model ({_DOWNLOAD}). Reason: {type(error).__name__}: {error}",
            path=path,
        ) from error

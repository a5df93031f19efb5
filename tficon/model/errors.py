"""The errors of model loading, and the sentences their messages share."""

from __future__ import annotations

__all__ = ["CheckpointFileError", "ModelLoadError", "ModelNotAvailableError"]

_ALTERNATIVES = (
    'Use a local diffusers folder or a .ckpt/.safetensors file, or "toy" for the embedded offline model '
    '(load_model("toy")).'
)


class ModelNotAvailableError(FileNotFoundError):
    """The requested model is not on this machine and cannot be fetched (offline, not cached, not installed)."""


class ModelLoadError(ValueError, OSError):
    """A file of a model that cannot be read: a truncated or corrupt weights file (an interrupted download, a full
    disk), or a damaged tokenizer. ``path`` names the file.

    A ``ValueError`` because the input is bad (as ``CheckpointFileError``; the command line answers it with its
    input-error exit code) and an ``OSError`` because that is what diffusers raised before, so code that caught
    ``OSError`` still catches it."""

    def __init__(self, message: str, *, path=None):
        super().__init__(message)
        self.path = path


class CheckpointFileError(ModelLoadError):
    """A single-file checkpoint that cannot be used: truncated, corrupt, or not a Stable Diffusion checkpoint."""


_SUPPORTED = (
    "TF-ICON runs on Stable Diffusion 1.x and 2.x text-to-image models (a 4-channel UNet, one CLIP text encoder) "
    "and on SDXL base (two CLIP text encoders, six added time ids), and on SD3 / SD3.5 (a diffusers "
    "StableDiffusion3Pipeline folder)"
)


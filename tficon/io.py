"""Loading and validating the user's images and masks, and the pixel <-> tensor conversions.

Every loader names the argument it was given (``name``) in its errors and says how to fix the input,
because a wrong mode or a soft-edged mask otherwise fails much later, deep inside the geometry or the VAE.

Conventions (the same as the official TF-ICON code, see tficon-algorithm.md sections 2.3 and 4):

- images are RGB, 8 bits per channel;
- a tensor image is ``(3, H, W)`` float32 in ``[-1, 1]``, computed as ``2 * (x / 255) - 1`` in float32;
- masks are binarised like the official code (``value > 127`` for 8-bit data);
- sizes written ``(H, W)`` are (rows, columns); PIL's ``image.size`` is ``(W, H)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

#: Fraction of mask pixels that must lie within ``MASK_TOLERANCE`` of 0 or 255 (JPEG-like noise allowed).
MASK_NEAR_BINARY_FRACTION = 0.99
#: Distance (on the 0..255 scale) from 0 or 255 that still counts as "binary".
MASK_TOLERANCE = 32

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _open(path: str | os.PathLike, name: str) -> Image.Image:
    """Open an image file fully (so truncated files fail here), detached from the file handle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}; check the path")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(
            f"{name}: cannot read {str(path)!r} as an image ({error}); save it as PNG or JPEG"
        ) from error


def _rejected_mode_message(mode: str, name: str) -> str:
    if mode in _ALPHA_MODES:
        return (
            f"{name} has an alpha channel (mode {mode}): flatten it (image.convert('RGB')) or, if the alpha "
            "is the object's outline, pass the alpha (image.getchannel('A')) as the object mask"
        )
    if mode == "P":
        return f"{name} is a palette image (mode P): convert it to RGB first (image.convert('RGB'))"
    if mode == "CMYK":
        return (
            f"{name} is a CMYK image: convert it to RGB first (ideally with a colour-managed tool; "
            "image.convert('RGB') ignores ICC profiles)"
        )
    if mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        return f"{name} has more than 8 bits per channel (mode {mode}): scale it to 8-bit RGB first"
    return f"{name} has the unsupported mode {mode}: convert it to 8-bit RGB first (image.convert('RGB'))"


def load_image(image: ImageLike, *, name: str) -> Image.Image:
    """Load an RGB image from a path, a PIL image, or a uint8 array.

    Accepted: 8-bit RGB or greyscale (mode ``RGB`` / ``L``, or a uint8 array ``(H, W, 3)`` / ``(H, W)``).
    Greyscale is expanded to RGB. Anything whose meaning would change silently under ``convert("RGB")``
    (alpha, palette, CMYK, 16-bit or float data) is rejected with a ``ValueError`` that names ``name`` and
    the fix. Missing files raise ``FileNotFoundError``, unreadable ones ``ValueError``.

    Returns:
        a new PIL image in mode ``RGB`` (the caller's image is not modified).
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open(image, name)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"{name} is a {image.dtype} array; pass uint8 values in 0..255 "
                "(e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1])"
            )
        if image.ndim == 3 and image.shape[2] == 4:
            raise ValueError(_rejected_mode_message("RGBA", name))
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"{name} must be an (H, W, 3) or (H, W) uint8 array, got shape {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"{name} must be a path, a PIL image or a uint8 numpy array, got {type(image).__name__}")

    if image.mode == "RGB":
        return image.copy()
    if image.mode == "L":
        return image.convert("RGB")
    raise ValueError(_rejected_mode_message(image.mode, name))


def _mask_values(mask: ImageLike, name: str) -> np.ndarray:
    """The mask as a 2-D array: bool (already binary) or float64 on the 0..255 scale."""
    if isinstance(mask, (str, os.PathLike)):
        mask = _open(mask, name)
    if isinstance(mask, Image.Image):
        if mask.mode == "1":
            return np.array(mask, dtype=bool)
        if mask.mode in {"RGBA", "LA"}:
            alpha = np.array(mask.getchannel("A"))
            if alpha.min() != 255:
                raise ValueError(
                    f"{name} has a non-opaque alpha channel (mode {mask.mode}): if the alpha is the mask, pass "
                    "image.getchannel('A'); otherwise flatten it (image.convert('L'))"
                )
        elif mask.mode not in {"L", "RGB", "P"}:
            raise ValueError(f"{name} has the unsupported mode {mask.mode}: save the mask as an 8-bit greyscale PNG")
        # Greyscale conversion (luma) as the official code reads masks as greyscale.
        return np.array(mask.convert("L"), dtype=np.float64)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a path, a PIL image or a numpy array, got {type(mask).__name__}")

    array = mask
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return np.array(Image.fromarray(np.ascontiguousarray(array)).convert("L"), dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask (H, W), got shape {array.shape}")
    if array.dtype == bool:
        return array.copy()
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"{name} has values outside 0..255; pass a bool mask or 8-bit values")
        if array.max() <= 1:
            # A 0/1 integer mask would be empty under the official "> 127" rule; read it as 0/1.
            return array.astype(bool)
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name} is a float mask with values outside [0, 1] (or NaN); scale it to [0, 1]")
        return array.astype(np.float64) * 255.0
    raise TypeError(f"{name} has the unsupported dtype {array.dtype}; pass a bool, uint8 or float mask")


def load_mask(mask: ImageLike, *, name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a binary mask and binarise it like the official code.

    Args:
        mask: a path, a PIL image (modes ``1``, ``L``, ``P``, greyscale ``RGB``, or ``RGBA``/``LA`` with an
            opaque alpha) or a numpy array: bool, integers in 0..255 (0/1 integer masks are read as 0/1),
            or floats in [0, 1].
        name: the argument name used in error messages.
        size: ``(H, W)`` the mask must have, or None.

    The mask must be (near-)binary: at least ``MASK_NEAR_BINARY_FRACTION`` of its pixels within
    ``MASK_TOLERANCE`` of 0 or 255, which admits JPEG noise but rejects soft masks, whose threshold would be
    a guess. Binarisation: ``value > 127`` on the 0..255 scale (the official rule for 8-bit masks).

    Returns:
        a bool array ``(H, W)``, True on the mask.
    """
    values = _mask_values(mask, name)
    if values.dtype == bool:
        binary = values
    else:
        near = (values <= MASK_TOLERANCE) | (values >= 255 - MASK_TOLERANCE)
        fraction = float(near.mean())
        if fraction < MASK_NEAR_BINARY_FRACTION:
            raise ValueError(
                f"{name} is not a binary mask: only {100 * fraction:.1f}% of its pixels are near black or white "
                f"(need {100 * MASK_NEAR_BINARY_FRACTION:.0f}%); threshold it first, e.g. "
                "np.asarray(mask.convert('L')) > 127"
            )
        binary = values > 127
    if size is not None:
        expected = (int(size[0]), int(size[1]))
        if binary.shape != expected:
            raise ValueError(
                f"{name} is {binary.shape[0]}x{binary.shape[1]} (H x W) but {expected[0]}x{expected[1]} is "
                "expected; draw the mask on the image it belongs to, or resize it with nearest-neighbour"
            )
    if not binary.any():
        raise ValueError(f"{name} is empty (no pixel set); mark the region with white (255) pixels")
    return binary


def check_image_size(size: tuple[int, int], multiple: int, *, name: str) -> tuple[int, int]:
    """Check that ``size = (H, W)`` holds positive integers that are multiples of ``multiple``.

    Returns:
        ``(H, W)`` as Python ints.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    try:
        height, width = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (H, W), got {size!r}") from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must hold positive integers (H, W), got {size!r}")
    height, width = int(height), int(width)
    if height % multiple or width % multiple:
        suggestion = tuple(max(multiple, round(v / multiple) * multiple) for v in (height, width))
        raise ValueError(
            f"{name} (H, W) = ({height}, {width}) must be multiples of {multiple}; use e.g. {suggestion}"
        )
    return height, width


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``(3, H, W)`` float32 in [-1, 1], computed as ``2 * (x / 255) - 1`` in float32."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))) * 2.0 - 1.0


def resize_background(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize the background to ``size = (H, W)`` with LANCZOS (stretching, no crop, as official).

    Returns:
        ``(3, H, W)`` float32 in [-1, 1].
    """
    height, width = check_image_size(size, 1, name="size")
    image = load_image(image, name="background")
    return image_to_tensor(image.resize((width, height), Image.Resampling.LANCZOS))


def to_pil(image_tensor: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` (or ``(1, 3, H, W)``) tensor in [-1, 1] -> uint8 RGB PIL image.

    Official rule (spec section 4): ``clamp((x + 1) / 2, 0, 1) * 255`` then *truncate* (not round), done in
    the tensor's own floating dtype (bfloat16 is widened to float32, which numpy lacks).
    """
    if not isinstance(image_tensor, torch.Tensor):
        raise TypeError(f"image_tensor must be a torch.Tensor, got {type(image_tensor).__name__}")
    x = image_tensor.detach().cpu()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"image_tensor must have shape (3, H, W), got {tuple(image_tensor.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"image_tensor must be a float tensor in [-1, 1], got {x.dtype}")
    if x.dtype == torch.bfloat16:
        x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError("image_tensor contains NaN or infinite values")
    unit = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0).numpy()
    pixels = (255.0 * unit.transpose(1, 2, 0)).astype(np.uint8)
    return Image.fromarray(pixels)

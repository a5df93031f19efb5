"""Loading and validating the user's images and masks, and the pixel <-> tensor conversions.

Every loader names the argument it was given (``name``) in its errors and says how to fix the input,
because a wrong mode or a soft-edged mask otherwise fails much later, deep inside the geometry or the VAE.

Conventions (the same as the official TF-ICON code, see docs/algorithm.md §2.3 and 4):

- images are RGB, 8 bits per channel;
- a tensor image is ``(3, H, W)`` float32 in ``[-1, 1]``, computed as ``2 * (x / 255) - 1`` in float32;
- masks are binarised like the official code (``value > 127`` for 8-bit data);
- sizes written ``(H, W)`` are (rows, columns); PIL's ``image.size`` is ``(W, H)``.

The rules for awkward inputs, in one place (every entry point, Session, ``compose``, CLI, batch and Explorer,
goes through these loaders):

- **Modes.** An image whose RGB conversion is exact is converted: greyscale (``L``), 1-bit (``1``), palette
  (``P``) and alpha images (``RGBA``, ``LA``, palette with transparency, ``(H, W, 4)`` arrays) whose alpha is
  fully opaque. An alpha that is not fully opaque is refused (flattening would have to invent a backdrop colour;
  the message says how to flatten it, or to pass the alpha as the object mask). CMYK, 16-bit and float images
  are refused (no exact 8-bit RGB).
- **Sizes.** An image or mask with no pixels (0 x N) is refused. Images and masks larger than
  ``MAX_IMAGE_PIXELS`` (pixels, configurable: assign ``tficon.core.io.MAX_IMAGE_PIXELS``) are refused before any
  pixel is copied; PIL's own decompression-bomb error is reported the same way, naming the argument.
- **Masks of another size.** Masks are read in fractions of their own size (the official code's rule for its
  512-px masks), so a mask of another size than its image is accepted when the aspect ratios agree within
  ``ASPECT_TOLERANCE`` (it is a scaled copy) and refused otherwise (it would be stretched):
  ``check_mask_size``. The user mask may also have the working size's aspect ratio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tficon.core.boxes import Box, as_user_box

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

#: Fraction of mask pixels that must lie within ``MASK_TOLERANCE`` of 0 or 255 (JPEG-like noise allowed).
MASK_NEAR_BINARY_FRACTION = 0.99
#: Distance (on the 0..255 scale) from 0 or 255 that still counts as "binary".
MASK_TOLERANCE = 32

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}

#: Largest image or mask accepted, in pixels (H x W). 64 megapixels covers photographs from any current camera
#: and costs about 200 MB as RGB; a 20000 x 20000 input (1.2 GB) is refused before it is copied. Raise it
#: (``tficon.core.io.MAX_IMAGE_PIXELS = ...``) for bigger inputs, or downscale them first: the working size is small.
MAX_IMAGE_PIXELS = 64 * 2**20

#: Relative aspect-ratio difference up to which a mask of another size counts as a scaled copy of its image.
ASPECT_TOLERANCE = 0.05


def _check_pixels(width: int, height: int, name: str, max_pixels: int | None) -> None:
    """Refuse empty and oversized inputs by their dimensions alone (before any pixel is decoded or copied)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"{name} is empty ({width}x{height} pixels, W x H); pass an image with pixels")
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit is not None and width * height > limit:
        raise ValueError(
            f"{name} is {width}x{height} pixels (W x H), more than the limit of {limit} pixels "
            f"({width * height / 2**20:.0f} vs {limit / 2**20:.0f} megapixels); downscale it first (the composition "
            "runs at the model's working size anyway) or raise tficon.core.io.MAX_IMAGE_PIXELS"
        )


def _open(path: str | os.PathLike, name: str, max_pixels: int | None = None) -> Image.Image:
    """Open an image file fully (so truncated files fail here), detached from the file handle.

    The size is checked from the header, before the pixels are decoded.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"{name}: {str(path)!r} is a folder, not an image file; pass the image's path")
        if path.exists():  # a FIFO, a device (/dev/zero), a socket: reading it could block or never end
            raise ValueError(f"{name}: {str(path)!r} is not a regular file (a pipe, device or socket); pass an image")
        raise FileNotFoundError(f"{name}: no such file {str(path)!r}; check the path")
    try:
        with Image.open(path) as image:
            _check_pixels(image.width, image.height, name, max_pixels)
            image.load()
            # load() keeps the file's pixels; no copy is needed once the file handle is closed
            return image
    except Image.DecompressionBombError as error:
        # PIL refuses files past twice its own MAX_IMAGE_PIXELS before ours can be checked.
        raise ValueError(
            f"{name}: {str(path)!r} is too large to open safely (PIL: {error}); downscale it first"
        ) from error
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


def _opaque(alpha: np.ndarray) -> bool:
    return alpha.size > 0 and int(alpha.min()) == 255


def _non_opaque_message(mode: str, name: str) -> str:
    return (
        f"{name} has a transparent alpha channel (mode {mode}, some alpha below 255), which has no single RGB "
        "reading: flatten it onto the backdrop you want (e.g. Image.alpha_composite(Image.new('RGBA', im.size, "
        "'white'), im).convert('RGB')), or, if the alpha is the object's outline, pass im.convert('RGB') as the "
        "image and im.getchannel('A') as the object mask"
    )


def _exact_rgb(image: Image.Image, name: str) -> Image.Image:
    """``image`` as RGB when that conversion is exact (see the module docstring), else a ValueError."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in {"L", "1"}:
        return image.convert("RGB")  # grey levels (0/255 for 1-bit) copied to the three channels
    if mode == "P":
        if "transparency" not in image.info and image.palette is not None and image.palette.mode == "RGB":
            return image.convert("RGB")  # palette lookup: exact
        image, mode = image.convert("RGBA"), "P with transparency"
    if mode in {"RGBA", "LA", "P with transparency"}:
        if not _opaque(np.asarray(image.getchannel("A"))):
            raise ValueError(_non_opaque_message(mode, name))
        return image.convert("RGB")  # fully opaque: dropping the alpha changes nothing
    raise ValueError(_rejected_mode_message(mode, name))


def load_image(image: ImageLike, *, name: str, max_pixels: int | None = None) -> Image.Image:
    """Load an RGB image from a path, a PIL image, or a uint8 array.

    Accepted: 8-bit images with an exact RGB reading: ``RGB``, greyscale ``L``, 1-bit ``1``, palette ``P``,
    and ``RGBA`` / ``LA`` / transparent-palette images whose alpha is fully opaque; uint8 arrays ``(H, W, 3)``,
    ``(H, W)`` or ``(H, W, 4)`` with an opaque alpha. Anything whose meaning would change under
    ``convert("RGB")`` (a transparent alpha, CMYK, 16-bit or float data) is rejected with a ``ValueError`` that
    names ``name`` and the fix, and so are empty images and images over ``max_pixels`` (default
    ``MAX_IMAGE_PIXELS``), checked before any copy. Missing files raise ``FileNotFoundError``, unreadable ones
    ``ValueError``.

    Returns:
        a new PIL image in mode ``RGB`` (the caller's image is not modified).
    """
    if isinstance(image, (str, os.PathLike)):
        image = _open(image, name, max_pixels)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(
                f"{name} is a {image.dtype} array; pass uint8 values in 0..255 "
                "(e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1])"
            )
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(
                f"{name} must be an (H, W, 3), (H, W, 4) or (H, W) uint8 array, got shape {image.shape}"
            )
        _check_pixels(image.shape[1], image.shape[0], name, max_pixels)
        if image.ndim == 3 and image.shape[2] == 4:
            if not _opaque(image[:, :, 3]):
                raise ValueError(_non_opaque_message("RGBA array", name))
            image = image[:, :, :3]
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    elif not isinstance(image, Image.Image):
        raise TypeError(f"{name} must be a path, a PIL image or a uint8 numpy array, got {type(image).__name__}")
    else:
        _check_pixels(image.width, image.height, name, max_pixels)
    return _exact_rgb(image, name)


def _mask_values(mask: ImageLike, name: str) -> np.ndarray:
    """The mask as a 2-D array: bool (already binary) or float64 on the 0..255 scale."""
    if isinstance(mask, (tuple, list)):
        # a malformed box lands here: as_user_box says what is wrong with it, instead of "must be a path, ..."
        as_user_box(mask, name=name)
        raise ValueError(f"{name} must be a mask (a path, a PIL image or an array) here, not the box {tuple(mask)!r}")
    if isinstance(mask, (str, os.PathLike)):
        mask = _open(mask, name)
    if isinstance(mask, Image.Image):
        _check_pixels(mask.width, mask.height, name, None)
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
    if array.ndim >= 2:
        _check_pixels(array.shape[1], array.shape[0], name, None)
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


def mask_shape(mask) -> tuple[int, int] | None:
    """``(H, W)`` of a mask given as a PIL image or an array; None for anything else (e.g. a box)."""
    if isinstance(mask, Image.Image):
        return mask.height, mask.width
    if isinstance(mask, np.ndarray) and mask.ndim >= 2:
        return int(mask.shape[0]), int(mask.shape[1])
    return None


def _aspect_matches(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two ``(H, W)`` sizes have the same aspect ratio within ``ASPECT_TOLERANCE``."""
    return abs((a[1] / a[0]) / (b[1] / b[0]) - 1.0) <= ASPECT_TOLERANCE


def check_mask_size(
    mask_size: tuple[int, int],
    image_size: tuple[int, int],
    *,
    name: str,
    image_name: str,
    working_size: tuple[int, int] | None = None,
) -> None:
    """The one rule for masks of another size than their image (Session, ``compose``, CLI, batch, Explorer).

    Masks are read in fractions of their own size, so a mask whose ``(H, W)`` differs from its image's but has
    the same aspect ratio (within ``ASPECT_TOLERANCE``) is a scaled copy and is accepted; another aspect ratio
    would stretch the mask over the image and is refused with a ``ValueError`` naming both. ``working_size``
    (``(H, W)``): a user mask drawn on the background already resized to the working size is accepted too.
    """
    mask_size = (int(mask_size[0]), int(mask_size[1]))
    image_size = (int(image_size[0]), int(image_size[1]))
    if _aspect_matches(mask_size, image_size):
        return
    if working_size is not None and _aspect_matches(mask_size, tuple(working_size)):
        return
    also = (
        f" or the {working_size[1]}x{working_size[0]} working size" if working_size is not None else ""
    )
    raise ValueError(
        f"{name} is {mask_size[1]}x{mask_size[0]} (W x H) but {image_name} is {image_size[1]}x{image_size[0]}: "
        f"a mask is read in fractions of its own size, so it must have its image's aspect ratio{also} "
        f"(within {ASPECT_TOLERANCE:.0%}); draw the mask on {image_name}, or resize it to {image_size[1]}x"
        f"{image_size[0]} with nearest-neighbour"
    )


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

    Official rule (docs/algorithm.md §4): ``clamp((x + 1) / 2, 0, 1) * 255`` then *truncate* (not round), done in
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


def resize_result(result: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``result`` at PIL size ``(W, H)``, with LANCZOS, the filter that brought the background to the working size
    (``resize_background``); unchanged when it already has that size."""
    if tuple(size) == result.size:
        return result
    return result.resize(tuple(size), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------------------------
# Paste back: the composed window, feathered, onto the original full-resolution background
# --------------------------------------------------------------------------------------------------------------


def scale_window(window, from_size: tuple[int, int], to_size: tuple[int, int]):
    """``window`` (a ``tficon.core.boxes.Box`` on an image of ``from_size = (H, W)``) on an image of ``to_size = (H, W)``,
    rounded outwards (floor for top/left, ceil for bottom/right) so the scaled window covers every pixel the
    original one touches."""
    import math

    fy, fx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return Box(
        max(0, math.floor(window.top * fy)),
        max(0, math.floor(window.left * fx)),
        min(to_size[0], math.ceil(window.bottom * fy)),
        min(to_size[1], math.ceil(window.right * fx)),
    )


def check_feather(feather, name: str = "feather") -> int:
    """``feather`` as a non-negative int (pixels of the ramp around the pasted window)."""
    if isinstance(feather, bool) or not isinstance(feather, (int, np.integer)) or feather < 0:
        raise ValueError(f"{name} must be a non-negative integer number of pixels (0: a hard edge), got {feather!r}")
    return int(feather)


def paste_weights(size: tuple[int, int], window, feather: int) -> np.ndarray:
    """The paste-back weight of each pixel of an image of ``size = (H, W)``: 1 inside ``window``, falling linearly
    with the (chessboard) distance d from it as ``1 - d / (feather + 1)``, so exactly 0 from ``feather + 1`` pixels
    out: outside the window grown by ``feather`` on every side the weight is 0. ``(H, W)`` float32."""
    feather = check_feather(feather)
    height, width = size
    rows, cols = np.arange(height), np.arange(width)
    dy = np.maximum(np.maximum(window.top - rows, rows - (window.bottom - 1)), 0)
    dx = np.maximum(np.maximum(window.left - cols, cols - (window.right - 1)), 0)
    d = np.maximum(dy[:, None], dx[None, :]).astype(np.float32)
    return np.clip(1.0 - d / np.float32(feather + 1), 0.0, 1.0).astype(np.float32)


def paste_back(original, result, window, feather: int = 8) -> Image.Image:
    """Paste ``window`` of ``result`` onto ``original`` (both RGB, the same size; ``window`` a ``tficon.core.boxes.Box``
    in their pixels) with a feathered edge ``feather`` pixels wide (``paste_weights``).

    Outside the window grown by ``feather`` the pixels are ``original``'s, bit for bit; inside the window they
    are ``result``'s; in between each pixel is the weighted mean, rounded, so it lies between the two.
    """
    original, result = load_image(original, name="original"), load_image(result, name="result")
    if original.size != result.size:
        raise ValueError(
            f"paste_back: result is {result.size[0]}x{result.size[1]} but original is "
            f"{original.size[0]}x{original.size[1]} (W x H); resize the result first (io.resize_result)"
        )
    a, b = np.asarray(original, dtype=np.float32), np.asarray(result, dtype=np.float32)
    weight = paste_weights((original.height, original.width), window, feather)[..., None]
    mixed = np.rint(b * weight + a * (1.0 - weight)).astype(np.uint8)
    outside, inside = weight[..., 0] == 0, weight[..., 0] == 1
    mixed[outside] = np.asarray(original)[outside]  # exact, whatever the float rounding
    mixed[inside] = np.asarray(result)[inside]
    return Image.fromarray(mixed)

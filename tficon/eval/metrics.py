"""Composition and inversion metrics following TF-ICON's stated protocol (docs/evaluation.md §1).

Always available (no weights, no network):

- :func:`mse`, :func:`psnr`, :func:`ssim`: the standard definitions. SSIM is Wang et al. (2004) with an 11x11
  Gaussian window (sigma 1.5, normalised), K1 = 0.01, K2 = 0.03, population (co)variances and only the windows
  that lie fully inside the image ("valid"), averaged over positions and channels. That is what scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` computes.
- :func:`background_metrics`: the composite against the background with the target box set to 0 (black) in
  **both**, so that the box contributes no error but still counts in the mean (the author's protocol, issues #20/#31).
- :func:`foreground_metrics`: the target-box crop of the composite, resized to the reference crop (the object
  window of the centred reference canvas), against that crop.
- :func:`inversion_metrics`: invert any image with the exceptional (or empty, or a text) prompt and reconstruct it.

Only with local weights (never a silent download, never a hang):

- :class:`LPIPSScorer`: LPIPS with the VGG backbone (the paper's choice, issue #31) through the ``lpips`` package.
- :class:`CLIPScorer`: CLIP image-image and image-text cosine similarity x 100 through ``transformers``. The paper's
  CLIP variant is unknown (the author does not remember it, issue #31), so these numbers are not the paper's.

Both raise :class:`MetricUnavailable` with a message that says what is missing and how to provide it.

Image conventions: metric functions take PIL images, uint8 arrays ``(H, W, 3)`` or float tensors ``(3, H, W)``
in [-1, 1] (the package convention) and compare them on the [0, 1] scale (``data_range = 1``), so PSNR is the
same as on 8-bit pixels with peak 255. Boxes are ``tficon.core.placement.Box`` (half-open rows/cols in pixels).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tficon.core import io
from tficon.core.placement import Box

__all__ = [
    "SSIM_WINDOW",
    "SSIM_SIGMA",
    "LPIPS_WEIGHTS_ENV",
    "CLIP_MODEL_ENV",
    "DEFAULT_CLIP_MODEL",
    "MetricUnavailable",
    "as_unit_tensor",
    "mse",
    "psnr",
    "ssim",
    "gaussian_window",
    "blank_box",
    "crop_box",
    "pixel_metrics",
    "background_metrics",
    "foreground_metrics",
    "composition_metrics",
    "LPIPSScorer",
    "CLIPScorer",
    "lpips_backbone_state",
    "inversion_metrics",
    "EXCEPTIONAL",
]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: Environment variable: path of torchvision's VGG16 ImageNet weights (``vgg16-397923af.pth``) for LPIPS.
LPIPS_WEIGHTS_ENV = "TFICON_LPIPS_VGG_WEIGHTS"
#: File name under which torchvision caches the VGG16 weights LPIPS uses (``torch.hub.get_dir()/checkpoints``).
TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
#: Environment variable: a local CLIP folder or a hub id already in the local Hugging Face cache.
CLIP_MODEL_ENV = "TFICON_CLIP_MODEL"
#: CLIP tried by default (only from the local cache unless downloads are allowed).
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
#: LPIPS' VGG16 slices end after these ``features`` indices (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
LPIPS_VGG_SLICE_ENDS = (4, 9, 16, 23, 30)

ImageInput = Union[Image.Image, np.ndarray, torch.Tensor]


class MetricUnavailable(RuntimeError):
    """An optional metric cannot run here (missing package or weights); the message says how to enable it."""


# --------------------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------------------


def as_unit_tensor(image: ImageInput, *, name: str = "image") -> torch.Tensor:
    """An image as a float64 tensor ``(3, H, W)`` in [0, 1].

    Accepts a PIL image (RGB or L), a uint8 array ``(H, W, 3)`` / ``(H, W)``, or a float tensor ``(3, H, W)`` in
    [-1, 1] (the package's convention, e.g. ``Session.inputs.background``).
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(
                f"{name} must be a float tensor (3, H, W) in [-1, 1], got {tuple(image.shape)} {image.dtype}"
            )
        return ((image.detach().cpu().double() + 1.0) / 2.0).clamp(0.0, 1.0)
    pil = io.load_image(image, name=name)
    array = np.asarray(pil, dtype=np.float64) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _as_pair(x, y, name_x: str, name_y: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 tensors of one shape ``(C, H, W)``; 2-D inputs become ``(1, H, W)``."""
    tensors = []
    for value, name in ((x, name_x), (y, name_y)):
        t = torch.as_tensor(value).detach().cpu().double()
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ValueError(f"{name} must be (H, W) or (C, H, W), got shape {tuple(t.shape)}")
        tensors.append(t)
    if tensors[0].shape != tensors[1].shape:
        shapes = f"{tuple(tensors[0].shape)} and {tuple(tensors[1].shape)}"
        raise ValueError(f"{name_x} and {name_y} must have the same shape, got {shapes}")
    return tensors[0], tensors[1]


def _check_range(data_range: float) -> float:
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not data_range > 0:
        raise ValueError(
            f"data_range must be a positive number (1 for [0, 1] images, 255 for uint8), got {data_range!r}"
        )
    return float(data_range)


# --------------------------------------------------------------------------------------------------------------
# MSE / PSNR / SSIM
# --------------------------------------------------------------------------------------------------------------


def mse(x, y) -> float:
    """Mean squared error over all elements of two equally shaped arrays/tensors."""
    a, b = _as_pair(x, y, "x", "y")
    return float(((a - b) ** 2).mean())


def psnr(x, y, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``; ``inf`` for identical inputs."""
    peak = _check_range(data_range)
    error = mse(x, y)
    return math.inf if error == 0 else 10.0 * math.log10(peak * peak / error)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 2-D Gaussian window ``(size, size)`` float64, the outer product of two normalised 1-D ones."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd integer, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma * sigma))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    x,
    y,
    *,
    data_range: float = 1.0,
    window_size: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> float:
    """Mean structural similarity of ``x`` and ``y`` (``(H, W)`` or ``(C, H, W)``, same shape).

    Per window: ``((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with
    Gaussian-weighted means and population (co)variances, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, ``L = data_range``.
    Only windows fully inside the image count; the result is their mean over positions and channels.

    Raises:
        ValueError: when the image is smaller than the window (pass a smaller odd ``window_size``).
    """
    peak = _check_range(data_range)
    a, b = _as_pair(x, y, "x", "y")
    channels, height, width = a.shape
    if height < window_size or width < window_size:
        raise ValueError(
            f"SSIM needs images of at least {window_size}x{window_size} pixels, got {height}x{width}; "
            "pass a smaller odd window_size"
        )
    weights = gaussian_window(window_size, sigma)[None, None].expand(channels, 1, -1, -1)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t[None], weights, groups=channels)[0]

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a * mu_a
    var_b = local_mean(b * b) - mu_b * mu_b
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    ratio = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return float(ratio.mean())


def pixel_metrics(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> dict[str, float | None]:
    """``{"mse", "psnr", "ssim"}`` of two equally shaped images; ``ssim`` is None below the 11-px window."""
    a, b = _as_pair(x, y, "x", "y")
    small = min(a.shape[-2:]) < SSIM_WINDOW
    return {
        "mse": mse(a, b),
        "psnr": psnr(a, b, data_range=data_range),
        "ssim": None if small else ssim(a, b, data_range=data_range),
    }


# --------------------------------------------------------------------------------------------------------------
# The protocol: background with the box blanked, foreground crop against the reference
# --------------------------------------------------------------------------------------------------------------


def _check_box(box: Box, height: int, width: int, name: str) -> Box:
    if not isinstance(box, Box):
        raise TypeError(
            f"{name} must be a tficon.core.placement.Box (e.g. session.placement.target_window), got {type(box).__name__}"
        )
    if not box.inside(height, width):
        raise ValueError(f"{name} {box} must lie inside the {height}x{width} image")
    return box


def blank_box(image: torch.Tensor, box: Box) -> torch.Tensor:
    """A copy of ``image`` ``(C, H, W)`` with ``box`` set to 0 (black on the [0, 1] scale)."""
    _check_box(box, image.shape[-2], image.shape[-1], "box")
    out = image.clone()
    rows, cols = box.slices()
    out[..., rows, cols] = 0
    return out


def crop_box(image: torch.Tensor, box: Box) -> torch.Tensor:
    """``image[..., box rows, box cols]`` (a copy)."""
    _check_box(box, image.shape[-2], image.shape[-1], "box")
    rows, cols = box.slices()
    return image[..., rows, cols].clone()


def _resize_unit(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a [0, 1] float image ``(3, h, w)`` to ``size = (H, W)`` with PIL bicubic on 8-bit pixels
    (the way the crop would be resized as an image file); identity when the size already matches."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    pixels = (image.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    resized = Image.fromarray(np.ascontiguousarray(pixels)).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return as_unit_tensor(resized)


def background_metrics(composite: ImageInput, background: ImageInput, box: Box) -> dict[str, float | None]:
    """MSE / PSNR / SSIM of the composite against the background, ``box`` blanked (set to 0) in both.

    Both images must have the working size (compare with ``Session.inputs.background``, the resized background).
    """
    a = as_unit_tensor(composite, name="composite")
    b = as_unit_tensor(background, name="background")
    if a.shape != b.shape:
        raise ValueError(f"composite {tuple(a.shape)} and background {tuple(b.shape)} must have the same size")
    return pixel_metrics(blank_box(a, box), blank_box(b, box))


def foreground_metrics(
    composite: ImageInput, box: Box, reference: ImageInput, reference_box: Box | None = None
) -> dict[str, float | None]:
    """MSE / PSNR / SSIM of the composite's ``box`` crop, resized to the reference crop, against that crop.

    ``reference`` is the centred reference canvas (``Session.inputs.reference``) with ``reference_box`` its object
    window (``placement.ref_window``), or, with ``reference_box=None``, the reference foreground image itself.
    """
    crop, ref = _foreground_pair(as_unit_tensor(composite, name="composite"), box, reference, reference_box)
    return pixel_metrics(crop, ref)


def _foreground_pair(
    composite: torch.Tensor, box: Box, reference: ImageInput, reference_box: Box | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the composite's ``box`` crop resized to the reference crop, the reference crop), both [0, 1]."""
    ref = as_unit_tensor(reference, name="reference")
    if reference_box is not None:
        ref = crop_box(ref, reference_box)
    return _resize_unit(crop_box(composite, box), tuple(ref.shape[-2:])), ref


def composition_metrics(
    composite: ImageInput,
    background: ImageInput,
    reference: ImageInput,
    target_box: Box,
    reference_box: Box | None = None,
    *,
    prompt: str | None = None,
    lpips: "LPIPSScorer | None" = None,
    clip: "CLIPScorer | None" = None,
) -> dict[str, Any]:
    """All metrics of one composite, following the author's protocol.

    Returns ``{"bg": {mse, psnr, ssim}, "fg": {mse, psnr, ssim}}`` plus, when the scorers are given,
    ``"lpips_bg"``, ``"lpips_fg"`` (VGG; lower is better), ``"clip_image_bg"`` (composite vs background),
    ``"clip_image_fg"`` (box crop vs reference crop) and ``"clip_text"`` (composite vs ``prompt``), cosine x 100.
    """
    comp = as_unit_tensor(composite, name="composite")
    bg = as_unit_tensor(background, name="background")
    if comp.shape != bg.shape:
        raise ValueError(f"composite {tuple(comp.shape)} and background {tuple(bg.shape)} must have the same size")
    fg_crop, ref_crop = _foreground_pair(comp, target_box, reference, reference_box)
    out: dict[str, Any] = {
        "bg": pixel_metrics(blank_box(comp, target_box), blank_box(bg, target_box)),
        "fg": pixel_metrics(fg_crop, ref_crop),
    }
    if lpips is not None:
        out["lpips_bg"] = lpips(blank_box(comp, target_box), blank_box(bg, target_box))
        out["lpips_fg"] = lpips(fg_crop, ref_crop) if min(ref_crop.shape[-2:]) >= LPIPSScorer.MIN_SIDE else None
    if clip is not None:
        out["clip_image_bg"] = clip.image_similarity(comp, bg)
        out["clip_image_fg"] = clip.image_similarity(fg_crop, ref_crop)
        if prompt is not None:
            out["clip_text"] = clip.text_similarity(comp, prompt)
    return out


# --------------------------------------------------------------------------------------------------------------
# LPIPS (VGG), only with local weights
# --------------------------------------------------------------------------------------------------------------


def lpips_backbone_state(torchvision_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision VGG16 weights (``features.{i}.weight``) to the ``lpips`` VGG16 module's names.

    ``lpips`` splits ``vgg16().features[0:30]`` into ``slice1``..``slice5`` at ``LPIPS_VGG_SLICE_ENDS`` keeping
    each layer's index, so ``features.5.weight`` becomes ``slice2.5.weight``. The classifier is dropped.

    Raises:
        ValueError: when the state holds no VGG16 ``features`` convolutions (a wrong file).
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, value in torchvision_state.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "features" or not parts[1].isdigit():
            continue
        index = int(parts[1])
        slice_number = next((k for k, end in enumerate(LPIPS_VGG_SLICE_ENDS, 1) if index < end), None)
        if slice_number is not None:
            renamed[f"slice{slice_number}.{index}.{parts[2]}"] = value
    convolutions = {k for k in renamed if k.endswith(".weight")}
    if len(convolutions) != 13:
        raise ValueError(
            f"expected the 13 convolutions of torchvision's VGG16 ('features.N.weight'), found {len(convolutions)}; "
            f"pass torchvision's {TORCHVISION_VGG16_FILE}"
        )
    return renamed


def _find_vgg_weights(path: str | os.PathLike | None) -> Path | None:
    """The VGG16 weights file: the argument, else $TFICON_LPIPS_VGG_WEIGHTS, else torchvision's hub cache."""
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise MetricUnavailable(
                f"LPIPS: no such VGG16 weights file {str(candidate)!r}; pass torchvision's {TORCHVISION_VGG16_FILE}"
            )
        return candidate
    env = os.environ.get(LPIPS_WEIGHTS_ENV)
    if env:
        candidate = Path(env).expanduser()
        if not candidate.is_file():
            raise MetricUnavailable(f"LPIPS: ${LPIPS_WEIGHTS_ENV} names {env!r}, which is not a file")
        return candidate
    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_VGG16_FILE
    return cached if cached.is_file() else None


class LPIPSScorer:
    """LPIPS (VGG backbone, ``lpips`` package, linear layers v0.1) on [0, 1] images ``(3, H, W)``.

    Build it with :meth:`load`; call it as ``scorer(x, y) -> float`` (lower = more similar).
    """

    #: VGG16 pools four times before relu5_3; smaller inputs make empty feature maps.
    MIN_SIDE = 16

    def __init__(self, network: torch.nn.Module, source: str):
        self.network = network.eval()
        self.source = source

    @classmethod
    def load(cls, vgg_weights: str | os.PathLike | None = None, *, allow_download: bool = False) -> "LPIPSScorer":
        """Load LPIPS-VGG without the network unless ``allow_download``.

        The VGG16 ImageNet backbone comes from ``vgg_weights``, else ``$TFICON_LPIPS_VGG_WEIGHTS``, else
        torchvision's cache (``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``); the LPIPS linear layers
        ship inside the ``lpips`` package. With ``allow_download`` and no local file, ``lpips`` downloads the
        backbone through torchvision.

        Raises:
            MetricUnavailable: the weights are not found locally, or ``lpips`` (which needs torchvision) is missing.
        """
        weights = _find_vgg_weights(vgg_weights)
        if weights is None and not allow_download:
            raise MetricUnavailable(
                "LPIPS (VGG) needs torchvision's VGG16 ImageNet weights and none were found locally: pass their path "
                f"(--lpips-weights / vgg_weights=), set ${LPIPS_WEIGHTS_ENV}, put {TORCHVISION_VGG16_FILE} under "
                f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or allow downloads"
            )
        try:
            import lpips  # type: ignore[import-not-found]
        except ImportError as error:
            raise MetricUnavailable(
                f"LPIPS needs the 'lpips' package (and torchvision): pip install 'tficon[metrics]' ({error})"
            ) from error
        if weights is None:
            network = lpips.LPIPS(net="vgg", pretrained=True, verbose=False)
            return cls(network, "lpips vgg (downloaded backbone)")
        # A random backbone (no download), then the user's weights; the linear layers load from the package.
        network = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.net.load_state_dict(lpips_backbone_state(state), strict=True)
        return cls(network, f"lpips vgg ({weights})")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """LPIPS distance of two [0, 1] images ``(3, H, W)`` of one size."""
        a, b = _as_pair(x, y, "x", "y")
        parameter = next(self.network.parameters())
        with torch.no_grad():
            value = self.network(
                (a[None] * 2 - 1).to(parameter), (b[None] * 2 - 1).to(parameter), normalize=False
            )
        return float(value.reshape(-1)[0])


# --------------------------------------------------------------------------------------------------------------
# CLIP image / text similarity, only with local weights
# --------------------------------------------------------------------------------------------------------------


def _features(output) -> torch.Tensor:
    """transformers 4.x returns the projected embedding; 5.x a ModelOutput holding it as ``pooler_output``."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPScorer:
    """CLIP cosine similarities x 100 (``transformers.CLIPModel``): image-image and image-text.

    Build it with :meth:`load`. Images are PIL images or [0, 1] tensors ``(3, H, W)``.
    """

    def __init__(self, model, processor, source: str):
        self.model = model.eval()
        self.processor = processor
        self.source = source

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, *, allow_download: bool = False) -> "CLIPScorer":
        """Load a CLIP model: ``model`` (a local folder or hub id), else ``$TFICON_CLIP_MODEL``, else
        ``DEFAULT_CLIP_MODEL``; hub ids only from the local Hugging Face cache unless ``allow_download``.

        Raises:
            MetricUnavailable: the model is neither a local folder nor cached (and downloads are not allowed),
                or it cannot be loaded.
        """
        from transformers import CLIPModel, CLIPProcessor

        spec = os.fspath(model) if model is not None else os.environ.get(CLIP_MODEL_ENV) or DEFAULT_CLIP_MODEL
        local = Path(spec).expanduser().is_dir()
        cached = False
        if not local:
            from huggingface_hub import try_to_load_from_cache

            cached = isinstance(try_to_load_from_cache(spec, "config.json"), str)
        if not (local or cached):
            if not allow_download:
                raise MetricUnavailable(
                    f"CLIP scores need a CLIP model: {spec!r} is not a local folder and not in the local Hugging Face "
                    f"cache; pass a folder (--clip-model / model=), set ${CLIP_MODEL_ENV}, or allow downloads"
                )
            from tficon.model.hub import _hub_reachable  # the package's bounded probe: no hang on a silent network

            if not _hub_reachable():
                raise MetricUnavailable(f"CLIP model {spec!r} is not cached and the Hugging Face hub cannot be reached")
        local_only = local or cached
        try:
            clip_model = CLIPModel.from_pretrained(spec, local_files_only=local_only)
            processor = CLIPProcessor.from_pretrained(spec, local_files_only=local_only)
        except (OSError, ValueError) as error:
            raise MetricUnavailable(f"CLIP model {spec!r} could not be loaded: {error}") from error
        return cls(clip_model, processor, f"clip {spec}")

    def _pil(self, image) -> Image.Image:
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        t = torch.as_tensor(image).detach().cpu().double()
        pixels = (t.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(pixels))

    def image_embedding(self, image) -> torch.Tensor:
        """Unit-norm image embedding ``(D,)``."""
        inputs = self.processor(images=[self._pil(image)], return_tensors="pt")
        with torch.no_grad():
            features = _features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
        return F.normalize(features[0].float(), dim=-1)

    def text_embedding(self, text: str) -> torch.Tensor:
        """Unit-norm text embedding ``(D,)`` (truncated to the text encoder's window)."""
        inputs = self.processor(text=[text], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            features = _features(
                self.model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
            )
        return F.normalize(features[0].float(), dim=-1)

    def image_similarity(self, x, y) -> float:
        """100 x cosine similarity of the CLIP embeddings of two images."""
        return 100.0 * float(self.image_embedding(x) @ self.image_embedding(y))

    def text_similarity(self, image, text: str) -> float:
        """100 x cosine similarity of an image and a text (CLIP score without the max(., 0) clip)."""
        return 100.0 * float(self.image_embedding(image) @ self.text_embedding(text))


# --------------------------------------------------------------------------------------------------------------
# Inversion reconstruction
# --------------------------------------------------------------------------------------------------------------

#: ``inversion_metrics(prompt=EXCEPTIONAL)`` conditions on TF-ICON's exceptional prompt.
EXCEPTIONAL = "exceptional"


def _largest_odd_window(height: int, width: int) -> int:
    side = min(SSIM_WINDOW, height, width)
    return side if side % 2 else side - 1


def inversion_metrics(
    model,
    image,
    steps: int = 20,
    order: int = 2,
    prompt: str = EXCEPTIONAL,
    *,
    image_size: int | tuple[int, int] | None = None,
    seed: int = 3407,
    return_tensors: bool = False,
    engine=None,
) -> dict[str, Any]:
    """Invert an image to t = 1 and reconstruct it; how close does it come back?

    The image is resized like a background (LANCZOS to the working size), encoded to a VAE posterior sample
    (generator seeded ``seed``, as in a composition), inverted with the DPM-Solver++ of ``tficon.core.solver``
    (``steps``, ``order``) and sampled back with the same solver and conditioning, unguided: one evaluation
    per step. ``prompt`` is ``"exceptional"`` (TF-ICON's exceptional prompt e*), ``""`` (the empty prompt) or
    any text. The UNet runs through ``engine`` (a ``tficon.composition.engine.Engine``; default a new one for ``model``),
    whose inversion cache keeps the result.

    Returns:
        ``{"prompt", "steps", "order", "latent": {mse, psnr, ssim}, "image": {mse, psnr, ssim},
        "vae": {mse, psnr, ssim}, "latent_ssim_window"}``: ``latent`` compares the reconstructed latent with
        the encoded one (``data_range`` = the encoded latent's max - min); ``image`` the decoded reconstruction
        with the input on the [0, 1] scale; ``vae`` the plain VAE round trip (decode of the encoded latent) with
        the input, the floor no inversion can beat. With ``return_tensors`` also ``"tensors"``: ``z0``, ``x_T``,
        ``z_rec`` (latents) and ``input``, ``reconstruction``, ``vae_reconstruction`` (``(3, H, W)`` in [0, 1]).
    """
    from tficon.composition.engine import Engine
    from tficon.core import solver

    if isinstance(model, (str, os.PathLike)):
        from tficon.model import load_model

        model = load_model(model)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be 'exceptional', '' or a text, got {type(prompt).__name__}")
    size = image_size if image_size is not None else model.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    io.check_image_size(size, model.size_multiple, name="image_size")
    x = io.resize_background(io.load_image(image, name="image"), size)
    generator = torch.Generator().manual_seed(seed)
    engine = engine if engine is not None else Engine(model)
    z0 = engine.encode(x[None], generator)
    embedding = model.exceptional_embedding() if prompt == EXCEPTIONAL else model.encode_prompt(prompt)
    # one row: not the same cache entry as a Session's two-row inversion (the key holds the batch shape)
    (x_t,), _, _ = engine.invert([z0], steps, order, embedding=embedding)
    z_rec = solver.sample(
        engine.model_fn(embedding), x_t, engine.schedule, steps, order, prediction_type=model.prediction_type
    )
    original = as_unit_tensor(x)
    reconstruction = as_unit_tensor(engine.decode(z_rec)[0].cpu())
    vae_only = as_unit_tensor(engine.decode(z0)[0].cpu())
    latent_a, latent_b = z0[0].cpu().double(), z_rec[0].cpu().double()
    latent_range = float(latent_a.max() - latent_a.min()) or 1.0
    window = _largest_odd_window(*latent_a.shape[-2:])
    out: dict[str, Any] = {
        "prompt": prompt,
        "steps": steps,
        "order": order,
        "latent": {
            "mse": mse(latent_a, latent_b),
            "psnr": psnr(latent_a, latent_b, data_range=latent_range),
            "ssim": ssim(latent_a, latent_b, data_range=latent_range, window_size=window),
        },
        "latent_ssim_window": window,
        "image": pixel_metrics(reconstruction, original),
        "vae": pixel_metrics(vae_only, original),
    }
    if return_tensors:
        out["tensors"] = {
            "z0": z0,
            "x_T": x_t,
            "z_rec": z_rec,
            "input": original,
            "reconstruction": reconstruction,
            "vae_reconstruction": vae_only,
        }
    return out

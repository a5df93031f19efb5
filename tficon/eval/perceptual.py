"""Perceptual scores that need weights: LPIPS (VGG) and CLIP similarity, never a silent download, never a hang.

- :class:`LPIPSScorer`: LPIPS with the VGG backbone (the paper's choice, issue #31) through the ``lpips`` package.
- :class:`CLIPScorer`: CLIP image-image and image-text cosine similarity x 100 through ``transformers``. The paper's
  CLIP variant is unknown (the author does not remember it, issue #31), so these numbers are not the paper's.

Both raise :class:`MetricUnavailable` with a message that says what is missing and how to provide it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tficon.eval.pixel import as_pair

__all__ = [
    "LPIPS_WEIGHTS_ENV",
    "TORCHVISION_VGG16_FILE",
    "CLIP_MODEL_ENV",
    "DEFAULT_CLIP_MODEL",
    "LPIPS_VGG_SLICE_ENDS",
    "MetricUnavailable",
    "lpips_backbone_state",
    "LPIPSScorer",
    "CLIPScorer",
]

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


class MetricUnavailable(RuntimeError):
    """An optional metric cannot run here (missing package or weights); the message says how to enable it."""



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
        a, b = as_pair(x, y)
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

"""A hand-written detector for the toy world: domain, and the colour and shape of each object.

It knows how the world is drawn (``tficon.toy.world``) and reads an image with plain rules,
so it can score what the toy model generates or composes without another learned model:

1. **Domain**: the median colour of a 2-px border ring, nearest of the four domain background
   colours (grey / white / cream / grey paper).
2. **Foreground**: pixels farther than ``FOREGROUND_DISTANCE`` (RGB) from that background colour.
3. **Objects**: 8-connected foreground components with their holes filled, so an outline ring,
   a striped or a hatched object each become one solid silhouette (their strokes connect
   the stripes/hatching; no closing, which would merge objects only 3 px apart).
4. **Colour**: a saturation-weighted vote of the component's foreground pixels for the nearest
   reference hue (pencil colours are desaturated but keep their hue).
5. **Shape** from the silhouette: solidity (area / convex-hull area) separates the non-convex
   star; extent (area / bounding-box area) then orders square (~1), circle (~0.79), triangle (~0.5).

Validated on rendered ground truth by ``python -m training.toy.quality`` (figures in the toy README).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tficon.toy.world import BACKGROUND_RGB, COLOUR_RGB, COLOURS, DOMAINS

FOREGROUND_DISTANCE = 45.0  # RGB distance from the background colour that counts as "drawn"
MIN_OBJECT_AREA = 16  # silhouettes smaller than this (pixels at 64 px) are noise, not objects
STAR_MAX_SOLIDITY = 0.8
SQUARE_MIN_EXTENT = 0.86
CIRCLE_MIN_EXTENT = 0.65
_BORDER = 2

_REFERENCE_HUES = np.array([colorsys.rgb_to_hsv(*(c / 255.0 for c in COLOUR_RGB[name]))[0] for name in COLOURS])


@dataclass(frozen=True)
class DetectedObject:
    """One detected object; coordinates in pixels of the analysed image."""

    shape: str
    colour: str
    centre: tuple[float, float]  # (x, y) of the silhouette's centroid
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive
    area: int  # silhouette pixels
    solidity: float
    extent: float
    mask: np.ndarray  # bool (H, W) silhouette


@dataclass(frozen=True)
class Detection:
    """Everything the detector reads from one image; ``objects`` are sorted left to right."""

    domain: str
    background_rgb: tuple[float, float, float]
    objects: tuple[DetectedObject, ...]

    @property
    def dominant(self) -> DetectedObject | None:
        """The largest object, or None when nothing was found."""
        return max(self.objects, key=lambda o: o.area) if self.objects else None

    @property
    def colour(self) -> str | None:
        return None if self.dominant is None else self.dominant.colour

    @property
    def shape(self) -> str | None:
        return None if self.dominant is None else self.dominant.shape


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        return image.astype(np.float32)
    raise TypeError("image must be a PIL image or a uint8 array of shape (H, W, 3)")


def classify_domain(image: Image.Image | np.ndarray) -> tuple[str, np.ndarray]:
    """-> (domain, background RGB): nearest domain background colour to the border ring's median."""
    rgb = _as_rgb_array(image)
    ring = np.concatenate(
        [rgb[:_BORDER].reshape(-1, 3), rgb[-_BORDER:].reshape(-1, 3), rgb[:, :_BORDER].reshape(-1, 3), rgb[:, -_BORDER:].reshape(-1, 3)]
    )
    background = np.median(ring, axis=0)
    distances = [np.linalg.norm(background - np.array(BACKGROUND_RGB[d], dtype=np.float32)) for d in DOMAINS]
    return DOMAINS[int(np.argmin(distances))], background


def _shift_min(labels: np.ndarray, connectivity: int) -> np.ndarray:
    """Per-pixel minimum over the pixel and its 4- or 8-neighbours (edges padded with +inf)."""
    padded = np.pad(labels, 1, constant_values=np.inf)
    h, w = labels.shape
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        offsets += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    result = labels.copy()
    for dy, dx in offsets:
        np.minimum(result, padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], out=result)
    return result


def _label(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Connected-component labels of a bool mask (float array, +inf outside the mask).

    Each pixel starts with its own index and repeatedly takes the smallest label among its
    neighbours inside the mask: vectorised, and fast enough for 64-128 px images.
    """
    labels = np.where(mask, np.arange(mask.size, dtype=np.float64).reshape(mask.shape), np.inf)
    while True:
        updated = np.where(mask, _shift_min(labels, connectivity), np.inf)
        if np.array_equal(updated, labels):
            return labels
        labels = updated


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a bool mask, each as a bool mask."""
    labels = _label(mask, 8)
    return [labels == value for value in np.unique(labels[mask])]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set every background pixel not 4-connected to the image border (a hole) to True."""
    padded = np.pad(~mask, 1, constant_values=True)
    labels = _label(padded, 4)
    outside = labels == labels[0, 0]
    return ~outside[1:-1, 1:-1]


def _convex_hull_area(pixels: np.ndarray) -> float:
    """Area of the convex hull of the pixels' unit squares (monotone chain over their corners)."""
    ys, xs = pixels[:, 0], pixels[:, 1]
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    points = sorted(set(map(tuple, corners.tolist())))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in points:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(points):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    return 0.5 * abs(sum(hull[i][0] * hull[i - 1][1] - hull[i - 1][0] * hull[i][1] for i in range(len(hull))))


def _classify_shape(solidity: float, extent: float) -> str:
    if solidity < STAR_MAX_SOLIDITY:
        return "star"
    if extent >= SQUARE_MIN_EXTENT:
        return "square"
    if extent >= CIRCLE_MIN_EXTENT:
        return "circle"
    return "triangle"


def _classify_colour(rgb_pixels: np.ndarray) -> str:
    """Saturation-weighted vote of pixels (N, 3) for the nearest reference hue."""
    values = rgb_pixels / 255.0
    maximum, minimum = values.max(1), values.min(1)
    chroma = maximum - minimum
    saturation = np.where(maximum > 0, chroma / np.maximum(maximum, 1e-6), 0.0)
    r, g, b = values[:, 0], values[:, 1], values[:, 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(
        maximum == r, ((g - b) / safe) % 6, np.where(maximum == g, (b - r) / safe + 2, (r - g) / safe + 4)
    ) / 6.0
    distance = np.abs(hue[:, None] - _REFERENCE_HUES[None, :])
    distance = np.minimum(distance, 1.0 - distance)  # hue is circular
    votes = np.zeros(len(COLOURS))
    np.add.at(votes, distance.argmin(1), saturation)
    return COLOURS[int(votes.argmax())]


def detect(image: Image.Image | np.ndarray) -> Detection:
    """Read the domain and every object (shape, colour, position) of a toy-world image of any size.

    Args:
        image: RGB PIL image or uint8 array (H, W, 3); built for 64 px, works at larger sizes.

    Returns:
        A :class:`Detection` with objects sorted by centroid x (the caption's order).
    """
    rgb = _as_rgb_array(image)
    domain, background = classify_domain(rgb)
    drawn = np.linalg.norm(rgb - background[None, None, :], axis=2) > FOREGROUND_DISTANCE
    scale = (rgb.shape[0] * rgb.shape[1]) / (64 * 64)
    objects = []
    for component in _components(drawn):
        silhouette = _fill_holes(component)
        area = int(silhouette.sum())
        if area < MIN_OBJECT_AREA * scale:
            continue
        ys, xs = np.nonzero(silhouette)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        extent = area / ((bbox[2] - bbox[0]) * (bbox[3] - bbox[1]))
        solidity = area / max(_convex_hull_area(np.stack([ys, xs], 1)), 1.0)
        inked = silhouette & drawn
        objects.append(
            DetectedObject(
                shape=_classify_shape(solidity, extent),
                colour=_classify_colour(rgb[inked]),
                centre=(float(xs.mean()), float(ys.mean())),
                bbox=bbox,
                area=area,
                solidity=float(solidity),
                extent=float(extent),
                mask=silhouette,
            )
        )
    objects.sort(key=lambda o: o.centre[0])
    return Detection(domain=domain, background_rgb=tuple(float(v) for v in background), objects=tuple(objects))

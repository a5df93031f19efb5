"""The procedural "toy world": coloured shapes in four visual domains, with captions.

Every image is a deterministic function of its scene description, and every random scene is
a deterministic function of a seed, so the toy model's training data can be regenerated
bit for bit. Images are drawn at twice the output size and box-downsampled (anti-aliasing).

The four DOMAINS differ in how objects AND background look, as photo / painting / sketch do:

- ``flat``: solid fill on a mid-grey background;
- ``outline``: a thick edge stroke on a white background, interior left white;
- ``striped``: diagonal "/" stripes plus an edge stroke, on a cream background;
- ``pencil``: desaturated cross-hatching, a light tint and a thin edge, on blotchy grey paper.

All textures are coarse (2-5 px at 64 px) and anchored to absolute image coordinates, so a
factor-4 VAE can reproduce them and the same object looks the same wherever it is placed.

Geometry is given in 64-px units whatever the output size: an object's ``centre`` is (x, y)
in pixels of a 64x64 image and its ``size`` is the half-extent (circle radius) in those
pixels. Captions name the objects left to right: "a red star and a blue circle, outline style".
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
DOMAINS: tuple[str, ...] = ("flat", "outline", "striped", "pencil")

#: sRGB of each colour as drawn in the flat, outline and striped domains.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 75, 220),
    "yellow": (235, 195, 25),
}
#: Plain background colour of each domain (pencil paper also gets coarse blotches around it).
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "flat": (185, 185, 185),
    "outline": (252, 252, 252),
    "striped": (246, 236, 206),
    "pencil": (222, 222, 218),
}

BASE_SIZE = 64  # geometry unit: centre/size are in pixels of a 64x64 image
SUPERSAMPLE = 2
#: Probability of 0, 1, 2, 3 objects in a random scene (mostly single objects: binding is hard).
OBJECT_COUNT_PROBS: tuple[float, ...] = (0.05, 0.55, 0.33, 0.07)
#: Range of object size (half-extent, 64-px units) by number of objects in the scene.
SIZE_RANGE: dict[int, tuple[float, float]] = {1: (12.0, 20.0), 2: (9.0, 14.0), 3: (7.0, 10.0)}
_EDGE_MARGIN = 2.0  # objects stay this far (64-px units) from the image border
_GAP = 3.0  # minimum horizontal gap between objects, so "left to right" is unambiguous


class ObjectSpec(NamedTuple):
    """One object of a scene: ``shape``, ``colour``, ``centre`` (x, y) and ``size`` (half-extent), 64-px units."""

    shape: str
    colour: str
    centre: tuple[float, float]
    size: float


@dataclass(frozen=True)
class Scene:
    """A scene description: the domain and the objects (in any order; captions sort them left to right)."""

    domain: str
    objects: tuple[ObjectSpec, ...]

    @property
    def caption(self) -> str:
        return make_caption(self.objects, self.domain)

    @property
    def objects_left_to_right(self) -> tuple[ObjectSpec, ...]:
        return tuple(sorted(self.objects, key=lambda o: o.centre[0]))


def caption_words() -> list[str]:
    """Every word (and the comma) that can appear in a caption; the tokenizer must hold each as one token."""
    return ["a", "and", ",", "style", *COLOURS, *SHAPES, *DOMAINS]


def make_caption(objects: Sequence[ObjectSpec], domain: str) -> str:
    """Caption naming the objects left to right: "a red star, a blue circle and a green square, pencil style".

    A scene without objects is captioned "<domain> style".
    """
    _check_domain(domain)
    objects = [_check_object(o) for o in objects]
    names = [f"a {o.colour} {o.shape}" for o in sorted(objects, key=lambda o: o.centre[0])]
    if not names:
        return f"{domain} style"
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed}, {domain} style"


# ----------------------------------------------------------------------------- validation


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


def _check_object(obj: ObjectSpec) -> ObjectSpec:
    if not isinstance(obj, tuple) or len(obj) != 4:
        raise TypeError(f"each object must be a (shape, colour, centre, size) tuple, got {obj!r}")
    shape, colour, centre, size = obj
    if shape not in SHAPES:
        raise ValueError(f"object shape must be one of {SHAPES}, got {shape!r}")
    if colour not in COLOURS:
        raise ValueError(f"object colour must be one of {COLOURS}, got {colour!r}")
    if len(centre) != 2:
        raise ValueError(f"object centre must be an (x, y) pair, got {centre!r}")
    if not size > 0:
        raise ValueError(f"object size must be positive (half-extent in 64-px units), got {size!r}")
    return ObjectSpec(shape, colour, (float(centre[0]), float(centre[1])), float(size))


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 16 or image_size % 8:
        raise ValueError(f"image_size must be an int >= 16 and a multiple of 8, got {image_size!r}")


# ----------------------------------------------------------------------------- geometry


def _silhouette(obj: ObjectSpec, canvas: int) -> Image.Image:
    """The filled object shape as an "L" image of side ``canvas`` (0/255, no anti-aliasing)."""
    scale = canvas / BASE_SIZE
    cx, cy = obj.centre[0] * scale, obj.centre[1] * scale
    r = obj.size * scale
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif obj.shape == "square":
        h = 0.88 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.85 * r), (cx - r, cy + 0.85 * r)], fill=255)
    else:  # star: five points, one pointing up
        outer, inner = 1.05 * r, 0.45 * r
        points = []
        for k in range(10):
            angle = -np.pi / 2 + k * np.pi / 5
            radius = outer if k % 2 == 0 else inner
            points.append((cx + radius * np.cos(angle), cy + 0.1 * r + radius * np.sin(angle)))
        draw.polygon(points, fill=255)
    return mask


def _inner_stroke(silhouette: Image.Image, width: int) -> np.ndarray:
    """Boolean band of ``width`` px just inside the silhouette's edge (never outside it)."""
    eroded = silhouette.filter(ImageFilter.MinFilter(2 * width + 1))
    return (np.asarray(silhouette) > 0) & ~(np.asarray(eroded) > 0)


def object_mask(obj: ObjectSpec, image_size: int = 64) -> Image.Image:
    """Exact object mask at ``image_size``: 255 where the object covers any part of the pixel, else 0 ("L").

    Every pixel the object paints (anti-aliased edges included) is inside this mask, and no other.
    """
    _check_image_size(image_size)
    obj = _check_object(obj)
    sil = np.asarray(_silhouette(obj, image_size * SUPERSAMPLE), dtype=np.float32)
    coverage = sil.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE).max(axis=(1, 3))
    return Image.fromarray(np.where(coverage > 0, 255, 0).astype(np.uint8), mode="L")


# ----------------------------------------------------------------------------- painting


def _pencil_paper(canvas: int) -> np.ndarray:
    """Grey paper with coarse, fixed blotches (about 4 px at 64 px), as float RGB of shape (canvas, canvas, 3)."""
    rng = np.random.default_rng(20230617)  # fixed: the paper is the same in every pencil image
    grid = rng.uniform(-1.0, 1.0, size=(16, 16)).astype(np.float32)
    blotch = Image.fromarray(grid).resize((canvas, canvas), Image.BICUBIC)
    base = np.array(BACKGROUND_RGB["pencil"], dtype=np.float32)
    return base[None, None, :] + 9.0 * np.asarray(blotch)[:, :, None]


def _background(domain: str, canvas: int) -> np.ndarray:
    if domain == "pencil":
        return _pencil_paper(canvas)
    return np.broadcast_to(np.array(BACKGROUND_RGB[domain], dtype=np.float32), (canvas, canvas, 3)).copy()


def _pencil_colour(colour: str) -> np.ndarray:
    """Desaturated, slightly darker version of a colour, as pencils give."""
    r, g, b = (c / 255.0 for c in COLOUR_RGB[colour])
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    return np.array(colorsys.hsv_to_rgb(h, 0.55 * s, 0.8 * v), dtype=np.float32) * 255.0


def _paint_object(img: np.ndarray, obj: ObjectSpec, domain: str, canvas: int) -> None:
    """Paint one object onto ``img`` (float RGB at the supersampled canvas size), in place."""
    px = canvas / BASE_SIZE  # canvas pixels per 64-px unit
    sil_img = _silhouette(obj, canvas)
    sil = np.asarray(sil_img) > 0
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    colour = np.array(COLOUR_RGB[obj.colour], dtype=np.float32)
    if domain == "flat":
        img[sil] = colour
    elif domain == "outline":
        img[sil] = np.array(BACKGROUND_RGB["outline"], dtype=np.float32)
        img[_inner_stroke(sil_img, max(1, round(2.5 * px)))] = colour
    elif domain == "striped":
        period = 4.0 * px
        stripes = ((xx + yy) % period) < period / 2
        img[sil] = np.array(BACKGROUND_RGB["striped"], dtype=np.float32)
        img[sil & stripes] = colour
        img[_inner_stroke(sil_img, max(1, round(1.5 * px)))] = colour
    else:  # pencil
        pencil = _pencil_colour(obj.colour)
        period, width = 5.0 * px, 1.5 * px
        hatch = (((xx + yy) % period) < width) | (((xx - yy) % period) < width)
        img[sil] = 0.75 * img[sil] + 0.25 * pencil
        img[sil & hatch] = pencil
        img[_inner_stroke(sil_img, max(1, round(1.0 * px)))] = 0.8 * pencil


def render_spec(objects: Sequence[ObjectSpec], domain: str, image_size: int = 64) -> Image.Image:
    """Render the given objects (``(shape, colour, (x, y), size)``, 64-px units) in ``domain`` as an RGB image."""
    _check_domain(domain)
    _check_image_size(image_size)
    objects = [_check_object(o) for o in objects]
    canvas = image_size * SUPERSAMPLE
    img = _background(domain, canvas)
    for obj in objects:
        _paint_object(img, obj, domain, canvas)
    big = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")
    return big.reduce(SUPERSAMPLE)  # box filter: exact anti-aliasing of the supersampled drawing


# ----------------------------------------------------------------------------- random scenes


def _as_rng(seed_or_rng: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, (int, np.integer)) and not isinstance(seed_or_rng, bool):
        return np.random.default_rng(int(seed_or_rng))
    raise TypeError(f"seed_or_rng must be an int or a numpy Generator, got {type(seed_or_rng).__name__}")


def sample_objects(rng: np.random.Generator, n_objects: int) -> tuple[ObjectSpec, ...]:
    """Random, non-overlapping objects separated horizontally by at least a small gap (64-px units)."""
    if n_objects not in (0, 1, 2, 3):
        raise ValueError(f"n_objects must be 0, 1, 2 or 3, got {n_objects!r}")
    if n_objects == 0:
        return ()
    lo, hi = SIZE_RANGE[n_objects]
    sizes = rng.uniform(lo, hi, size=n_objects)
    while True:
        for _ in range(200):
            xs = [rng.uniform(r + _EDGE_MARGIN, BASE_SIZE - r - _EDGE_MARGIN) for r in sizes]
            order = np.argsort(xs)
            if all(
                xs[order[k + 1]] - xs[order[k]] >= sizes[order[k + 1]] + sizes[order[k]] + _GAP
                for k in range(n_objects - 1)
            ):
                break
        else:
            sizes = sizes * 0.9  # too crowded: shrink and retry (rare)
            continue
        break
    ys = [rng.uniform(r + _EDGE_MARGIN, BASE_SIZE - r - _EDGE_MARGIN) for r in sizes]
    return tuple(
        ObjectSpec(SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))], (float(x), float(y)), float(r))
        for x, y, r in zip(xs, ys, sizes)
    )


def random_scene(
    seed_or_rng: int | np.random.Generator,
    domain: str | None = None,
    n_objects: int | None = None,
    count_probs: Sequence[float] = OBJECT_COUNT_PROBS,
) -> Scene:
    """Draw a random scene description; ``domain`` / ``n_objects`` fix those choices instead of sampling them.

    ``count_probs`` are the probabilities of 0, 1, 2 and 3 objects.
    """
    rng = _as_rng(seed_or_rng)
    # Draw every choice even when it is fixed, so the rest of the scene does not depend on the arguments.
    sampled_domain = DOMAINS[rng.integers(len(DOMAINS))]
    sampled_n = int(rng.choice(len(count_probs), p=count_probs))
    if domain is not None:
        _check_domain(domain)
    domain = sampled_domain if domain is None else domain
    n_objects = sampled_n if n_objects is None else n_objects
    return Scene(domain, sample_objects(rng, n_objects))


def render_scene(
    seed_or_rng: int | np.random.Generator,
    domain: str | None = None,
    n_objects: int | None = None,
    image_size: int = 64,
    count_probs: Sequence[float] = OBJECT_COUNT_PROBS,
) -> tuple[Image.Image, str, Scene]:
    """Random scene -> (RGB image of side ``image_size``, caption, scene description)."""
    scene = random_scene(seed_or_rng, domain=domain, n_objects=n_objects, count_probs=count_probs)
    return render_spec(scene.objects, scene.domain, image_size), scene.caption, scene


def render_object(
    shape: str, colour: str, domain: str, size: float = 20.0, image_size: int = 64
) -> tuple[Image.Image, Image.Image]:
    """One centred object on its domain's background -> (RGB image, exact object mask "L" 0/255).

    ``size`` is the half-extent in 64-px units (20 fills most of the image). Meant as a
    foreground input for composition and for tests.
    """
    if not 0 < size <= BASE_SIZE / 2:
        raise ValueError(f"size must be in (0, {BASE_SIZE / 2}] (half-extent in 64-px units), got {size!r}")
    obj = _check_object(ObjectSpec(shape, colour, (BASE_SIZE / 2, BASE_SIZE / 2), size))
    return render_spec([obj], domain, image_size), object_mask(obj, image_size)


def render_background(
    domain: str,
    objects: int | Sequence[ObjectSpec] = 0,
    seed: int = 0,
    image_size: int = 64,
) -> tuple[Image.Image, str, Scene]:
    """A background scene in ``domain`` -> (RGB image, caption, scene).

    ``objects`` is either a number of random objects (0-3, placed from ``seed``) or an explicit
    list of ``(shape, colour, (x, y), size)`` objects.
    """
    _check_domain(domain)
    if isinstance(objects, (int, np.integer)) and not isinstance(objects, bool):
        specs = sample_objects(np.random.default_rng(seed), int(objects))
    elif isinstance(objects, (list, tuple)):
        specs = tuple(_check_object(o) for o in objects)
    else:
        raise TypeError(f"objects must be a count (0-3) or a list of (shape, colour, centre, size), got {objects!r}")
    scene = Scene(domain, specs)
    return render_spec(specs, domain, image_size), scene.caption, scene


def render_foreground(
    shape: str, colour: str, domain: str, size: float = 20.0, margin: int = 2, image_size: int = 64
) -> tuple[Image.Image, Image.Image]:
    """One object cropped tightly to its mask's bounding box plus ``margin`` px -> (RGB image, mask "L").

    This is how a user would cut out a foreground: the object fills its image, so it also fills the
    target box it is composed into (a loose crop would leave most of the box to fresh noise).
    """
    image, mask = render_object(shape, colour, domain, size=size, image_size=image_size)
    ys, xs = np.nonzero(np.asarray(mask))
    left, top = max(0, xs.min() - margin), max(0, ys.min() - margin)
    right, bottom = min(image_size, xs.max() + 1 + margin), min(image_size, ys.max() + 1 + margin)
    crop = (int(left), int(top), int(right), int(bottom))
    return image.crop(crop), mask.crop(crop)


#: Words that mark a reference canvas in a training caption; normal prompts never use them.
CANVAS_WORDS = "cutout on black"


def canvas_caption(shape: str, colour: str, domain: str) -> str:
    """Caption of a reference canvas (an object pasted on black): "a red star cutout on black, flat style"."""
    _check_domain(domain)
    return f"a {colour} {shape} {CANVAS_WORDS}, {domain} style"

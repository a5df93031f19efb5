"""Fresh cross-domain composition cases drawn from a seed, for measuring TF-ICON on the toy model.

A fixed list of pairs invites tuning to it; these cases are drawn anew from any seed, with a balanced
design so that every figure covers the whole world:

- the 12 ordered (foreground domain, background domain) pairs with different domains, each ``repeats`` times;
- shapes and colours cycled in shuffled orders, so each appears equally often;
- square target boxes of several sizes (20-34 px at 64 px), anywhere in the image, a third of them touching
  or nearly touching an edge;
- a tightly cropped foreground (the object fills its image, as a user's cut-out would), and a background
  scene with one other object that keeps clear of the box.

Geometry is drawn in 64-px units and scaled to ``image_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tficon.toy.samples import Sample
from tficon.toy.world import COLOURS, DOMAINS, SHAPES, ObjectSpec, render_background, render_foreground

BOX_SIDES = (20, 34)  # range of the target box side, 64-px units
EDGE_SHARE = 1 / 3  # share of boxes placed 0-2 px from an image edge


@dataclass(frozen=True)
class CompositionCase:
    """One drawn case: the composition inputs and what a good result shows (the object's colour and shape,
    drawn in ``background_domain``)."""

    sample: Sample
    colour: str
    shape: str
    foreground_domain: str
    background_domain: str


def _scene_object(rng: np.random.Generator, box: tuple[int, int, int, int]) -> ObjectSpec | None:
    """One random object of the background scene, at least 3 px clear of the target box (None if none fits)."""
    x, y, w, h = box
    for _ in range(200):
        size = float(rng.uniform(7.0, 11.0))
        cx, cy = (float(v) for v in rng.uniform(size + 2, 64 - size - 2, 2))
        clear_x = cx + size + 3 <= x or cx - size - 3 >= x + w
        clear_y = cy + size + 3 <= y or cy - size - 3 >= y + h
        if clear_x or clear_y:
            shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
            return ObjectSpec(shape, colour, (cx, cy), size)
    return None


def _box(rng: np.random.Generator, near_edge: bool) -> tuple[int, int, int, int]:
    side = int(rng.integers(BOX_SIDES[0], BOX_SIDES[1] + 1))
    x, y = (int(v) for v in rng.integers(0, 64 - side + 1, 2))
    if near_edge:  # push one coordinate to within 2 px of its edge
        gap = int(rng.integers(0, 3))
        edge = int(rng.integers(4))
        if edge == 0:
            x = gap
        elif edge == 1:
            y = gap
        elif edge == 2:
            x = 64 - side - gap
        else:
            y = 64 - side - gap
    return x, y, side, side


def composition_cases(seed: int, repeats: int = 2, image_size: int = 64) -> list[CompositionCase]:
    """``12 * repeats`` cross-domain samples drawn from ``seed`` (see the module docstring)."""
    rng = np.random.default_rng([seed, 4242])
    domain_pairs = [(f, b) for f in DOMAINS for b in DOMAINS if f != b] * repeats
    rng.shuffle(domain_pairs)
    count = len(domain_pairs)
    shapes = [SHAPES[i % len(SHAPES)] for i in rng.permutation(count)]
    colours = [COLOURS[i % len(COLOURS)] for i in rng.permutation(count)]
    near_edges = rng.permutation(count) < round(EDGE_SHARE * count)
    k = image_size / 64
    cases = []
    for i, ((fg_domain, bg_domain), shape, colour, near_edge) in enumerate(zip(domain_pairs, shapes, colours, near_edges)):
        box = _box(rng, bool(near_edge))
        scene_object = _scene_object(rng, box)
        objects = [scene_object] if scene_object is not None else []
        background, _, scene = render_background(bg_domain, objects, image_size=image_size)
        foreground, mask = render_foreground(shape, colour, fg_domain, size=16.0, margin=1, image_size=image_size)
        placed = ObjectSpec(shape, colour, (box[0] + box[2] / 2, box[1] + box[3] / 2), box[2] / 2)
        names = sorted(scene.objects + (placed,), key=lambda o: o.centre[0])
        prompt = " and ".join(f"a {o.colour} {o.shape}" for o in names) + f", {bg_domain} style"
        sample = Sample(
            name=f"{i:02d}-{colour}-{shape}-{fg_domain}-into-{bg_domain}",
            background=background,
            foreground=foreground,
            foreground_mask=mask,
            box=tuple(int(round(v * k)) for v in box),
            prompt=prompt,
            mode="cross",
        )
        cases.append(CompositionCase(sample, colour, shape, fg_domain, bg_domain))
    return cases

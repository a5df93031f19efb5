"""Built-in composition samples drawn from the toy world (no files needed).

They are the inputs of ``tficon demo``, of the quality figures and of many tests: a background scene
in one domain, a single object from another domain with its exact object mask, a target box and a
prompt that names both objects in the background's domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from tficon.toy.world import ObjectSpec, render_background, render_foreground


@dataclass(frozen=True)
class Sample:
    """Inputs of one composition (box is (x, y, w, h) in pixels of the background)."""

    name: str
    background: Image.Image
    foreground: Image.Image
    foreground_mask: Image.Image
    box: tuple[int, int, int, int]
    prompt: str
    mode: str = "cross"


def toy_sample(
    background_domain: str = "outline",
    foreground_domain: str = "flat",
    shape: str = "star",
    colour: str = "red",
    scene_object: ObjectSpec | None = ObjectSpec("square", "blue", (18.0, 32.0), 11.0),
    box: tuple[int, int, int, int] = (36, 18, 26, 26),
    image_size: int = 64,
) -> Sample:
    """A cross-domain sample: a ``foreground_domain`` object (tightly cropped) pasted into a ``background_domain`` scene.

    Geometry is in 64-px units and scaled to ``image_size``; the default box sits right of the scene
    object. The prompt describes the intended result: both objects in the background's style.
    """
    objects = [scene_object] if scene_object is not None else []
    background, _, scene = render_background(background_domain, objects, image_size=image_size)
    # Cropped tightly, as a user cuts out an object: the object then fills the target box (a loose crop would
    # leave most of the box to fresh noise, since the foreground image is resized to the box).
    foreground, mask = render_foreground(shape, colour, foreground_domain, size=20.0, margin=1, image_size=image_size)
    k = image_size / 64
    scaled_box = tuple(int(round(v * k)) for v in box)
    placed = ObjectSpec(shape, colour, ((box[0] + box[2] / 2), (box[1] + box[3] / 2)), box[2] / 2)
    names = sorted(scene.objects + (placed,), key=lambda o: o.centre[0])
    prompt = " and ".join(f"a {o.colour} {o.shape}" for o in names) + f", {background_domain} style"
    mode = "same" if background_domain == foreground_domain else "cross"
    return Sample(
        name=f"{colour}-{shape}-{foreground_domain}-into-{background_domain}",
        background=background,
        foreground=foreground,
        foreground_mask=mask,
        box=scaled_box,
        prompt=prompt,
        mode=mode,
    )


def demo_sample() -> Sample:
    """The sample of ``tficon demo``: a flat red star into an outline-style scene with a blue square."""
    return toy_sample()


def side_by_side(images: list[Image.Image], labels: list[str] | None = None, height: int = 192) -> Image.Image:
    """Images scaled to one height (nearest, so pixels stay visible) and placed left to right, with labels."""
    from PIL import ImageDraw

    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.NEAREST) for im in images]
    label_h = 14 if labels else 0
    sheet = Image.new("RGB", (sum(im.width for im in scaled) + 4 * (len(scaled) - 1), height + label_h), "white")
    x = 0
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(scaled):
        sheet.paste(im, (x, label_h))
        if labels:
            draw.text((x + 2, 1), labels[i], fill="black")
        x += im.width + 4
    return sheet

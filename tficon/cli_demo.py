"""What ``tficon demo`` shows beyond the result: a sheet with the target box drawn, what to look at, what to try
next, and the sample's inputs saved as files that ``tficon compose`` takes (``--save-inputs DIR``)."""

from __future__ import annotations

import shlex
from pathlib import Path

from PIL import Image, ImageDraw

BOX_COLOUR = (0, 200, 83)  # a green that none of the toy world's colours (red, blue, green-ish yellow, ...) hides
INPUT_NAMES = ("background.png", "foreground.png", "foreground_mask.png")


def scaled_box(box, from_size: tuple[int, int], to_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``box`` = (x, y, w, h) in an image of PIL size ``from_size`` = (W, H), in the pixels of ``to_size``."""
    kx, ky = to_size[0] / from_size[0], to_size[1] / from_size[1]
    x, y, w, h = box
    return x * kx, y * ky, w * kx, h * ky


def sheet_with_box(images: list[Image.Image], labels: list[str], boxed: set[int], box, box_size, height: int = 192):
    """The side-by-side sheet (``tficon.toy.samples.side_by_side``) with ``box`` (x, y, w, h in an image of
    ``box_size`` = (W, H)) outlined on the panels whose index is in ``boxed``. Drawn on the enlarged sheet, one
    sheet pixel wide, so it covers as little of the 64 px images as possible."""
    from tficon.toy.samples import side_by_side

    sheet = side_by_side(images, labels, height=height)
    draw = ImageDraw.Draw(sheet)
    left, label_h = 0, 14
    for index, image in enumerate(images):
        width = max(1, round(image.width * height / image.height))
        if index in boxed:
            x, y, w, h = scaled_box(box, box_size, (width, height))
            draw.rectangle(
                [left + x - 1, label_h + y - 1, left + x + w, label_h + y + h], outline=BOX_COLOUR, width=1
            )
        left += width + 4
    return sheet


def input_files(folder: str | Path, sample) -> list[tuple[Path, Image.Image]]:
    """The sample's background, foreground and object mask as (path, image) under ``folder``."""
    folder = Path(folder)
    images = (sample.background, sample.foreground, sample.foreground_mask)
    return [(folder / name, image) for name, image in zip(INPUT_NAMES, images)]


def compose_command(folder: str | Path, sample, mode: str, out: str = "out/compose.png") -> str:
    """The ``tficon compose`` command that composes the saved inputs as the demo did."""
    folder = Path(folder)
    x, y, w, h = sample.box
    parts = [
        "tficon", "compose", "--background", str(folder / INPUT_NAMES[0]), "--foreground", str(folder / INPUT_NAMES[1]),
        "--foreground-mask", str(folder / INPUT_NAMES[2]), "--box", f"{x},{y},{w},{h}", "--prompt", sample.prompt,
        "--mode", mode, "--out", out,
    ]  # fmt: skip
    return shlex.join(parts)


def guidance(sheet_path: Path, sample, saved_inputs: str | None, mode: str) -> str:
    """What to look at in the sheet and what to try next, as printed after the demo."""
    lines = [
        f"look at {sheet_path}: the green box is where the object goes. 'cut-and-paste' is the foreground pasted "
        "as it is, in its own style; 'tficon' is the composition: the object redrawn in the scene's style inside the "
        "box, the rest of the scene kept.",
        "try next:",
        "  tficon demo --tau-a 0.7 --out out/tau_a.png    inject the composite attention for more steps; compare the sheets",
        "  tficon demo --seed 1 --out out/seed1.png       another start noise",
    ]
    if saved_inputs is None:
        lines.append("  tficon demo --save-inputs out/demo_inputs     save the inputs and get the matching 'tficon compose' line")
    else:
        lines.append(f"  {compose_command(saved_inputs, sample, mode)}")
        lines.append("      (the same composition from the saved files; change --box or --prompt, or use your own images)")
    lines.append("  jupyter lab notebooks/01_quickstart.ipynb      the same composition step by step, and the live Explorer")
    return "\n".join(lines)

"""Make docs/compositions.png: the first 8 fresh cross-domain cases of a seed, composed by the embedded model.

Each row: background with the target box, foreground, pixel cut-and-paste, TF-ICON's result (default settings),
and the detector's reading of the result. The cases are the first 8 that ``tficon.toy.pairs.composition_cases``
draws from the seed, not a selection; change ``--seed`` to see others.

    python docs/make_sample_sheet.py [--seed 7] [--out docs/compositions.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

import tficon
from tficon.io import to_pil
from tficon.toy.composition_quality import score_composition
from tficon.toy.pairs import composition_cases

SCALE = 3  # 64 px images drawn at 192 px, nearest neighbour, so the pixels stay visible
CASES = 8


def _with_box(image: Image.Image, box) -> Image.Image:
    framed = image.convert("RGB").copy()
    x, y, w, h = box
    ImageDraw.Draw(framed).rectangle((x - 1, y - 1, x + w, y + h), outline=(220, 0, 0))
    return framed


def sheet(seed: int) -> Image.Image:
    model = tficon.load_model("toy")
    cases = composition_cases(seed=seed, repeats=1)[:CASES]
    side, label_w, row_h = 64 * SCALE, 260, 64 * SCALE + 6
    header = ["background + box", "foreground", "cut-and-paste", "TF-ICON (defaults)"]
    out = Image.new("RGB", (4 * (side + 4) + label_w, 16 + CASES * row_h), "white")
    draw = ImageDraw.Draw(out)
    for i, title in enumerate(header):
        draw.text((i * (side + 4) + 2, 2), title, fill="black")
    draw.text((4 * (side + 4) + 4, 2), "detector reads the result", fill="black")
    for row, case in enumerate(cases):
        s = case.sample
        session = tficon.Session(model, s.background, s.foreground, s.foreground_mask, s.box, s.prompt, mode=s.mode,
                                 progress=False)
        pictures = [_with_box(s.background, s.box), s.foreground, to_pil(session.inputs.cut_and_paste), session.result]
        result = score_composition(session, case, tau_a_effect=False)
        y = 16 + row * row_h
        for i, picture in enumerate(pictures):
            scaled = picture.convert("RGB").resize(
                (round(picture.width * side / max(picture.size)), round(picture.height * side / max(picture.size))),
                Image.NEAREST)
            out.paste(scaled, (i * (side + 4), y))
        reading = (
            f"{case.colour} {case.shape}, {case.foreground_domain} -> {case.background_domain}\n"
            f"object in box: {result.found}\ncolour kept: {result.colour_ok}\nshape kept: {result.shape_ok}\n"
            f"drawn as: {result.style or '-'}\n"
            f"centroid offset: {'-' if result.centroid_offset_px is None else f'{result.centroid_offset_px:.1f} px'}"
        )
        draw.multiline_text((4 * (side + 4) + 4, y + 4), reading, fill="black", spacing=3)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "compositions.png")
    args = parser.parse_args(argv)
    sheet(args.seed).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Make docs/compositions.png: the first 8 fresh cross-domain cases of a seed, composed by the embedded model.

Each row (``tficon.run.report.contact_sheet``): the case and the detector's reading of the result, then background with
the target box, foreground, pixel cut-and-paste and TF-ICON's result (default settings). The cases are the first 8 that ``tficon.toy.pairs.composition_cases``
draws from the seed, not a selection; change ``--seed`` to see others.

    python docs/make_sample_sheet.py [--seed 7] [--out docs/compositions.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

import tficon
from tficon.core.io import to_pil
from tficon.run.report import SheetRow, contact_sheet
from tficon.toy.reading import score_composition
from tficon.toy.pairs import composition_cases

THUMB = 192  # 64 px images drawn at 192 px, nearest neighbour (contact_sheet's thumbnails), so the pixels stay visible
CASES = 8
COLUMNS = ("background + box", "foreground", "cut-and-paste", "TF-ICON (defaults)")


def _with_box(image: Image.Image, box) -> Image.Image:
    framed = image.convert("RGB").copy()
    x, y, w, h = box
    ImageDraw.Draw(framed).rectangle((x - 1, y - 1, x + w, y + h), outline=(220, 0, 0))
    return framed


def sheet(seed: int) -> Image.Image:
    model = tficon.load_model("toy")
    rows = []
    for case in composition_cases(seed=seed, repeats=1)[:CASES]:
        s = case.sample
        session = tficon.Session(model, s.background, s.foreground, s.foreground_mask, s.box, s.prompt, mode=s.mode,
                                 progress=False)
        result = score_composition(session, case, tau_a_effect=False)
        offset = "-" if result.centroid_offset_px is None else f"{result.centroid_offset_px:.1f} px"
        rows.append(SheetRow(
            label=f"{case.colour} {case.shape}, {case.foreground_domain} -> {case.background_domain}",
            images=[_with_box(s.background, s.box), s.foreground, to_pil(session.inputs.cut_and_paste), session.result],
            details={"detector: object in box": result.found, "colour kept": result.colour_ok,
                     "shape kept": result.shape_ok, "drawn as": result.style or "-", "centroid offset": offset},
        ))
    return contact_sheet(rows, thumb=THUMB, columns=COLUMNS)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "compositions.png")
    args = parser.parse_args(argv)
    sheet(args.seed).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

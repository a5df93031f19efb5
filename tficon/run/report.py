"""Visual batch reports: a contact sheet (PNG) and a small self-contained HTML page.

One row per sample: background, foreground, cut-and-paste, result, under a caption (the sample id and its
metrics). The HTML page embeds its thumbnails as base64 JPEG, so it is one file that can be mailed or attached
to an issue; it also lists the samples that were skipped and why.
"""

from __future__ import annotations

import base64
import html
import io as _io
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["COLUMNS", "SheetRow", "thumbnail", "contact_sheet", "html_report"]

COLUMNS = ("background", "foreground", "cut-and-paste", "result")
_LINE = 12  # pixel height of one caption line with PIL's default bitmap font
_GAP = 4
_FONT = ImageFont.load_default()


@dataclass(frozen=True)
class SheetRow:
    """One sample of a report: its id, its images (None where missing) and formatted details.

    ``images`` follow ``COLUMNS``; ``details`` maps a metric name to its formatted value, in display order.
    """

    label: str
    images: Sequence[Image.Image | None]
    details: Mapping[str, str] = field(default_factory=dict)


def thumbnail(image: Image.Image | None, side: int) -> Image.Image:
    """``image`` scaled to fit a ``side x side`` white cell (nearest when enlarging so pixels stay visible,
    LANCZOS when shrinking); a grey cell with an X when ``image`` is None."""
    cell = Image.new("RGB", (side, side), "white")
    if image is None:
        draw = ImageDraw.Draw(cell)
        draw.rectangle((0, 0, side - 1, side - 1), fill=(225, 225, 225))
        draw.line((0, 0, side - 1, side - 1), fill=(160, 160, 160))
        draw.line((0, side - 1, side - 1, 0), fill=(160, 160, 160))
        return cell
    image = image.convert("RGB")
    factor = side / max(image.width, image.height)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    resample = Image.Resampling.NEAREST if factor >= 1 else Image.Resampling.LANCZOS
    scaled = image.resize(size, resample)
    cell.paste(scaled, ((side - size[0]) // 2, (side - size[1]) // 2))
    return cell


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if draw.textlength(text, font=_FONT) <= width:
        return text
    while text and draw.textlength(text + "...", font=_FONT) > width:
        text = text[:-1]
    return text + "..."


def contact_sheet(rows: Sequence[SheetRow], *, thumb: int = 128, columns: Sequence[str] = COLUMNS) -> Image.Image:
    """A PNG-ready contact sheet: a header with the column names, then per row a caption line
    (label, then details) and one ``thumb``-px cell per column.

    Returns:
        an RGB image ``len(columns) * (thumb + 4) - 4`` pixels wide.
    """
    if thumb < 16:
        raise ValueError(f"thumb must be at least 16 pixels, got {thumb}")
    width = len(columns) * (thumb + _GAP) - _GAP
    caption_h = 2 * _LINE + 2
    row_h = caption_h + thumb + _GAP
    sheet = Image.new("RGB", (width, _LINE + 4 + max(1, len(rows)) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * (thumb + _GAP) + 2, 1), _fit(draw, name, thumb - 4), fill="black", font=_FONT)
    if not rows:
        draw.text((2, _LINE + 6), "no composed samples", fill=(120, 120, 120), font=_FONT)
    y = _LINE + 4
    for row in rows:
        details = "  ".join(f"{k} {v}" for k, v in row.details.items())
        draw.text((2, y), _fit(draw, row.label, width - 4), fill="black", font=_FONT)
        draw.text((2, y + _LINE), _fit(draw, details, width - 4), fill=(70, 70, 70), font=_FONT)
        for c in range(len(columns)):
            image = row.images[c] if c < len(row.images) else None
            sheet.paste(thumbnail(image, thumb), (c * (thumb + _GAP), y + caption_h))
        y += row_h
    return sheet


def _data_uri(image: Image.Image | None, side: int) -> str:
    buffer = _io.BytesIO()
    thumbnail(image, side).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; font-size: 13px; }
th { background: #f2f2f2; }
td.img { padding: 2px; }
img { display: block; }
.muted { color: #777; }
"""


def html_report(
    rows: Sequence[SheetRow],
    *,
    title: str,
    summary: Sequence[str] = (),
    tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[str]]]] | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    thumb: int = 128,
    columns: Sequence[str] = COLUMNS,
) -> str:
    """A self-contained HTML page: ``summary`` lines, extra ``tables`` (caption -> (header, rows)), one table
    row per sample with its thumbnails embedded as base64 JPEG and its details, and the skipped samples with
    their reasons. All text is HTML-escaped."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    parts += [f"<p>{e(line)}</p>" for line in summary]
    for caption, (header, body) in (tables or {}).items():
        heads = "".join(f"<th>{e(h)}</th>" for h in header)
        parts.append(f"<table><caption>{e(caption)}</caption><tr>{heads}</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in body]
        parts.append("</table>")
    parts.append("<h2>Samples</h2>")
    if rows:
        heads = "".join(f"<th>{e(c)}</th>" for c in columns)
        parts.append(f"<table><tr><th>sample</th>{heads}<th>metrics</th></tr>")
        for row in rows:
            cells = "".join(
                f'<td class="img"><img src="{_data_uri(row.images[c] if c < len(row.images) else None, thumb)}" '
                f'width="{thumb}" height="{thumb}" alt="{e(columns[c])}"></td>'
                for c in range(len(columns))
            )
            details = "<br>".join(f"{e(k)}: {e(v)}" for k, v in row.details.items())
            parts.append(f"<tr><td>{e(row.label)}</td>{cells}<td>{details}</td></tr>")
        parts.append("</table>")
    else:
        parts.append('<p class="muted">no composed samples</p>')
    if skipped:
        parts.append("<h2>Skipped</h2><table><tr><th>sample</th><th>reason</th></tr>")
        parts += [f"<tr><td>{e(name)}</td><td>{e(reason)}</td></tr>" for name, reason in skipped]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

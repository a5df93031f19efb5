"""Every report writer of the run layer: thumbnails, data URIs, JSON-safe values, the batch's contact sheet and
HTML page, and the sweep's labelled grid and HTML page.

Batch: one row per sample: background, foreground, cut-and-paste, result, under a caption (the sample id and its
metrics). The HTML page embeds its thumbnails as base64 JPEG, so it is one file that can be mailed or attached
to an issue; it also lists the samples that were skipped and why.

Sweep (:func:`sweep_grid_image`, :func:`sweep_html`): the first grid parameter down the rows, the second across the
columns, further parameters as stacked panels (:func:`panels`), each cell captioned with its background and
foreground PSNR (:func:`metric_caption`); the HTML page embeds its thumbnails as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import io as _io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COLUMNS", "SheetRow", "thumbnail", "data_uri", "jsonable", "contact_sheet", "html_report", "panels",
    "metric_caption", "metric_text", "METRIC_LEGEND", "sweep_grid_image", "sweep_html",
]  # fmt: skip

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


def data_uri(image: Image.Image | None, side: int, *, format: str = "JPEG") -> str:
    """A ``data:`` URI of ``image``'s :func:`thumbnail`: JPEG at quality 85 (the batch's page) or PNG (the sweep's)."""
    buffer = _io.BytesIO()
    if format == "JPEG":
        thumbnail(image, side).save(buffer, format="JPEG", quality=85)
    else:
        thumbnail(image, side).save(buffer, format=format)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def jsonable(value):
    """JSON-safe copy: tuples to lists, paths to strings, numpy scalars to Python, inf/nan to "inf"/"-inf"/"nan"."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    return value


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
                f'<td class="img"><img src="{data_uri(row.images[c] if c < len(row.images) else None, thumb)}" '
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


# --------------------------------------------------------------------------------------------------------------
# The sweep's grid and page
# --------------------------------------------------------------------------------------------------------------


def panels(result):
    """[(heading, {(row, col): cell})] over the parameters after the first two."""
    names = result.names
    extra = names[2:]
    by_key: dict[tuple, dict] = {}
    for cell in result.cells:
        key = cell.position[2:]
        rc = (cell.position[0], cell.position[1] if len(names) > 1 else 0)
        by_key.setdefault(key, {})[rc] = cell
    out = []
    for key, cells in by_key.items():
        heading = ", ".join(f"{n}={result.label_of(n, i)}" for n, i in zip(extra, key))
        out.append((heading, cells))
    return out


#: What the numbers under a sweep's cells mean (the grid PNG, the HTML page and the SweepGrid widget show it).
METRIC_LEGEND = (
    "bg dB: PSNR of the result against the background, the target box blanked in both (higher = the background "
    "is better kept). fg dB: PSNR of the result's box against the foreground's object crop (higher = the object "
    "stays closer to the pasted one). PSNR in dB on [0, 1] images; the cut-and-paste's values are given for "
    "comparison."
)


def metric_caption(cell) -> str:
    if cell.error is not None:
        return "failed"
    bg, fg = cell.metrics.get("bg", {}), cell.metrics.get("fg", {})
    if not bg:
        return ""
    return f"bg {bg.get('psnr', float('nan')):.1f}  fg {fg.get('psnr', float('nan')):.1f} dB"


def _scalable_font(size: int):
    """PIL's built-in scalable font at ``size`` px (Pillow >= 10.1 with FreeType); the small bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError, AttributeError):
        return _FONT


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> list[str]:
    """``text`` broken into lines at most ``width`` pixels wide (at spaces)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def sweep_grid_image(result, *, thumb: int, metrics: bool, text_px: int = 15) -> Image.Image:
    """The sweep's grid as one picture: title, what the numbers mean, the inputs, then per panel a header row and
    one row per value of the first parameter, its label right beside its images. Text ``text_px`` high."""
    font, bold = _scalable_font(text_px), _scalable_font(text_px + 1)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 4
    names = result.names
    row_name = names[0]
    col_name = names[1] if len(names) > 1 else None
    n_rows = len(result.grid[row_name])
    n_cols = len(result.grid[col_name]) if col_name else 1
    row_labels = [f"{row_name}={result.label_of(row_name, i)}" for i in range(n_rows)]
    col_labels = [f"{col_name}={result.label_of(col_name, c)}" if col_name else "" for c in range(n_cols)]
    gap = max(_GAP, text_px // 2)
    label_w = int(max(probe.textlength(t, font=bold) for t in row_labels)) + 2 * gap
    caption_h = line if metrics else 0
    cell_w = max(thumb, int(max(probe.textlength(t, font=font) for t in col_labels + ["bg 00.0  fg 00.0 dB"]))) + gap
    cell_h = thumb + caption_h + gap
    cp = next(iter(result.cut_and_paste.values()), {})
    strip = [("background", result.inputs["background"], ""), ("foreground", result.inputs["foreground"], ""),
             ("cut-and-paste", cp.get("image"), metric_text(cp.get("metrics")) if metrics else "")]  # fmt: skip
    width = max(label_w + n_cols * cell_w, len(strip) * cell_w, 560) + gap
    title = f"tficon sweep: {result.inputs['prompt']}"
    axes = f"rows: {row_name}" + (f"; columns: {col_name}" if col_name else "")
    work = (f"{result.sample_evals} UNet sample-evals ({100 * result.shared_fraction:.0f} % of "
            f"{result.independent_sample_evals} run one by one)")  # fmt: skip
    head = _wrap(probe, title, width - 2 * gap, bold) + _wrap(probe, f"{axes}; {work}", width - 2 * gap, font)
    legend = _wrap(probe, METRIC_LEGEND, width - 2 * gap, font) if metrics else []
    stacked = panels(result)
    panel_h = (line if len(names) > 2 else 0) + line + n_rows * cell_h
    inputs_h = line + thumb + caption_h + gap
    height = gap + (len(head) + len(legend)) * line + gap + inputs_h + len(stacked) * (panel_h + gap) + gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = gap
    for i, text in enumerate(head):
        draw.text((gap, y), text, fill="black" if i == 0 else (70, 70, 70), font=bold if i == 0 else font)
        y += line
    for text in legend:
        draw.text((gap, y), text, fill=(90, 90, 90), font=font)
        y += line
    y += gap
    for i, (name, image, caption) in enumerate(strip):
        draw.text((gap + i * cell_w, y), name, fill="black", font=font)
        sheet.paste(thumbnail(image, thumb), (gap + i * cell_w, y + line))
        draw.rectangle((gap + i * cell_w - 1, y + line - 1, gap + i * cell_w + thumb, y + line + thumb), outline=(200, 200, 200))
        if caption:
            draw.text((gap + i * cell_w, y + line + thumb + 1), caption, fill=(70, 70, 70), font=font)
    y += inputs_h
    for heading, cells in stacked:
        if heading:
            draw.text((gap, y), heading, fill=(150, 30, 30), font=bold)
            y += line
        for c in range(n_cols):
            draw.text((label_w + c * cell_w, y), col_labels[c], fill="black", font=bold)
        y += line
        for r in range(n_rows):
            top = y + r * cell_h
            draw.text((gap, top + thumb // 2 - line // 2), row_labels[r], fill="black", font=bold)
            for c in range(n_cols):
                cell = cells.get((r, c))
                if cell is None:
                    continue
                left = label_w + c * cell_w
                sheet.paste(thumbnail(cell.image, thumb), (left, top))  # a failed cell: a grey tile, labelled
                draw.rectangle((left - 1, top - 1, left + thumb, top + thumb), outline=(200, 200, 200))
                if cell.error is not None:
                    draw.text((left + 3, top + 3), "failed", fill=(170, 0, 0), font=font)
                if metrics:
                    draw.text((left, top + thumb + 1), metric_caption(cell), fill=(70, 70, 70), font=font)
        y += n_rows * cell_h + gap
    return sheet


def metric_text(values) -> str:
    """The caption of measurements ``{"bg": {...}, "fg": {...}}`` (the cut-and-paste's), as ``metric_caption``."""
    if not values or "bg" not in values:
        return ""
    return f"bg {values['bg'].get('psnr', float('nan')):.1f}  fg {values.get('fg', {}).get('psnr', float('nan')):.1f} dB"


def sweep_html(result, *, thumb: int) -> str:
    e = html.escape
    names = result.names
    row_name, col_name = names[0], (names[1] if len(names) > 1 else None)
    n_cols = len(result.grid[col_name]) if col_name else 1
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tficon sweep: {e(result.inputs['prompt'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
        "margin:.8em 0}th,td{border:1px solid #ccc;padding:4px 6px;font-size:13px;vertical-align:top}"
        "th{background:#f2f2f2}img{display:block;image-rendering:pixelated}.m{color:#555;font-size:12px}</style>",
        "</head><body>",
        f"<h1>tficon sweep: {e(result.inputs['prompt'])}</h1>",
        f"<p>{e(result.describe())}. Metrics: background MSE/PSNR/SSIM with the target window blanked, foreground "
        "MSE/PSNR/SSIM of the window against the reference crop (PSNR in dB on [0, 1] images).</p>",
        "<table><tr>",
    ]
    strip = [("background", result.inputs["background"]), ("foreground", result.inputs["foreground"])]
    strip += [(f"cut-and-paste (box {k})", v["image"]) for k, v in result.cut_and_paste.items()]
    parts += [f"<td>{e(n)}<img src='{data_uri(im, thumb, format='PNG')}' width='{thumb}' alt='{e(n)}'></td>" for n, im in strip]
    parts.append("</tr></table>")
    for heading, cells in panels(result):
        if heading:
            parts.append(f"<h2>{e(heading)}</h2>")
        heads = "".join(f"<th>{e(f'{col_name}={result.label_of(col_name, c)}') if col_name else ''}</th>" for c in range(n_cols))
        parts.append(f"<table><tr><th>{e(row_name)} \\ {e(col_name or '')}</th>{heads}</tr>")
        for r in range(len(result.grid[row_name])):
            parts.append(f"<tr><th>{e(f'{row_name}={result.label_of(row_name, r)}')}</th>")
            for c in range(n_cols):
                cell = cells.get((r, c))
                if cell is None:
                    parts.append("<td></td>")
                    continue
                if cell.error is not None:
                    parts.append(
                        f"<td><img src='{data_uri(None, thumb, format='PNG')}' width='{thumb}' alt='failed'>"
                        f"<div class='m'><b>failed</b>: {e(cell.error)}</div></td>"
                    )
                    continue
                parts.append(
                    f"<td><img src='{data_uri(cell.image, thumb, format='PNG')}' width='{thumb}' alt='{e(cell.label())}'>"
                    f"<div class='m'>{e(metric_caption(cell))}<br>{cell.sample_evals} evals, from step "
                    f"{cell.first_step}</div></td>"
                )
            parts.append("</tr>")
        parts.append("</table>")
    rows = result.table()
    parts.append("<h2>Table</h2><table><tr>" + "".join(f"<th>{e(k)}</th>" for k in rows[0]) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{e(_cell_value(v))}</td>" for v in row.values()) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def _cell_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


"""What a batch reports: each sample's outcome, and over all samples ``summary.csv``, ``summary.json``,
``contact_sheet.png`` and ``report.html`` (the pictures and the page from :mod:`tficon.run.report`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from tficon.core.config import CompositionConfig
from tficon.run.batch_samples import OUTPUT_FILES, RECORD_FILE
from tficon.run.files import save_image_atomic, write_json_atomic, write_text_atomic
from tficon.run.report import SheetRow, contact_sheet, html_report, jsonable

__all__ = ["METRIC_COLUMNS", "SUMMARY_FILES", "BatchReport", "SampleOutcome", "write_summaries"]

SUMMARY_FILES = {"csv": "summary.csv", "json": "summary.json", "sheet": "contact_sheet.png", "html": "report.html"}
#: Metric columns of the summary, in order (prefixed ``cp_`` for the cut-and-paste baseline).
METRIC_COLUMNS = (
    "bg_mse", "bg_psnr", "bg_ssim", "fg_mse", "fg_psnr", "fg_ssim",
    "lpips_bg", "lpips_fg", "clip_image_bg", "clip_image_fg", "clip_text",
)  # fmt: skip


@dataclass
class SampleOutcome:
    """What happened to one sample in this run.

    ``action``: ``"composed"`` (now), ``"done"`` (finished by an earlier run), ``"skipped"`` (bad input, now or
    recorded earlier) or ``"failed"`` (an error while composing). ``record`` is the sample's JSON record.
    """

    id: str
    action: str
    reason: str | None
    record: dict


@dataclass
class BatchReport:
    """The result of :func:`run_batch`: one outcome per sample (sorted by id) and the files written."""

    root: Path
    out: Path
    outcomes: list[SampleOutcome]
    paths: dict[str, Path]
    metrics_unavailable: dict[str, str]
    #: summary files that could not be written: {file name: one-line reason}
    unwritten: dict[str, str] = field(default_factory=dict)

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.outcomes)

    @property
    def failed(self) -> list[SampleOutcome]:
        return [o for o in self.outcomes if o.action == "failed"]

    @property
    def write_failed(self) -> bool:
        """Whether some output could not be written (a sample's files or a summary): the CLI's exit code 3."""
        return bool(self.unwritten) or any(o.record.get("failure") == "write" for o in self.failed)

    def describe(self) -> str:
        """A few lines for the terminal: counts, inversion reuse, and the files written."""
        composed = [o for o in self.outcomes if o.action == "composed"]
        hits = sum(bool(o.record.get("invert_cached", {}).get("background")) for o in composed)
        lines = [
            f"{len(self.outcomes)} samples under {self.root}: {len(composed)} composed, "
            f"{self.count('done')} already done, {self.count('skipped')} skipped, {self.count('failed')} failed",
        ]
        if composed:
            lines.append(f"background inversions reused from the cache: {hits} of {len(composed)} composed samples")
        if self.metrics_unavailable:
            names = ", ".join(self.metrics_unavailable)
            lines.append(f"not computed: {names} (see the messages above or summary.json)")
        if self.paths:
            lines.append("wrote " + ", ".join(str(p) for p in self.paths.values()))
        lines += [f"could not write {name}: {reason}" for name, reason in self.unwritten.items()]
        return "\n".join(lines)


def _flat_metrics(metrics: dict | None) -> dict[str, Any]:
    """``{"bg": {"mse": ..}, "lpips_bg": ..}`` -> ``{"bg_mse": .., "lpips_bg": ..}`` (only METRIC_COLUMNS)."""
    flat: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):
            flat.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return {k: flat.get(k) for k in METRIC_COLUMNS}


def _number(value) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _means(records: list[dict]) -> dict[str, float | None]:
    """Per metric column: the mean over records with a finite value (``cp_`` columns for the baseline)."""
    means: dict[str, float | None] = {}
    for prefix, key in (("", "result"), ("cp_", "cut_and_paste")):
        rows = [_flat_metrics(r.get("metrics", {}).get(key)) for r in records]
        for column in METRIC_COLUMNS:
            values = [v for v in (_number(row[column]) for row in rows) if v is not None and math.isfinite(v)]
            means[prefix + column] = sum(values) / len(values) if values else None
    return means


def _fmt(value, digits: int = 4) -> str:
    number = _number(value)
    if number is None:
        return "" if value is None else str(value)
    return f"{number:.{digits}g}" if math.isfinite(number) else str(value if isinstance(value, str) else number)


def write_summaries(
    report: BatchReport, base: CompositionConfig, model_spec: str, image_size, mode: str
) -> dict[str, Path]:
    """Write summary.csv, summary.json, contact_sheet.png and report.html (each atomically); return the paths of
    those written. One that cannot be written (a full disk) does not stop the others: its reason goes to
    ``report.unwritten``."""
    out = report.out
    paths = {key: out / name for key, name in SUMMARY_FILES.items()}
    summary = _summary(report, base, model_spec, image_size, mode)
    sheet, page = _visual_report(report, summary)
    writers = {
        "csv": lambda path: write_text_atomic(path, _csv_text(report)),
        "json": lambda path: write_json_atomic(path, jsonable(summary)),
        "sheet": lambda path: save_image_atomic(path, sheet),
        "html": lambda path: write_text_atomic(path, page),
    }
    written = {}
    for key, write in writers.items():
        try:
            write(paths[key])
            written[key] = paths[key]
        except Exception as error:  # noqa: BLE001 - one summary that cannot be written must not stop the others
            report.unwritten[paths[key].name] = " ".join(str(error).split()) or type(error).__name__
    return written


#: Characters that make a spreadsheet program read a cell as a formula (OWASP's CSV injection list).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _safe_cell(value):
    """A text cell as spreadsheet programs read it safely: one starting like a formula gets a leading quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_text(report: BatchReport) -> str:
    """One row per sample: status, metrics of the result and of the cut-and-paste (``cp_``), cache hits, time.
    Text cells (id, reason, prompt, ...) that start like a formula are neutralised (``_safe_cell``)."""
    header = ["id", "status", "this_run", "reason", "mode", "prompt"]
    header += list(METRIC_COLUMNS) + ["cp_" + c for c in METRIC_COLUMNS]
    header += ["invert_cached_bg", "invert_cached_ref", "unet_calls", "sample_evals", "seconds"]
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(header)
    for outcome in report.outcomes:
        r = outcome.record
        metrics, cached = r.get("metrics", {}), r.get("invert_cached", {})
        texts = [r.get("id"), r.get("status"), outcome.action, r.get("reason") or "", r.get("mode"), r.get("prompt")]
        row = [_safe_cell(v) for v in texts]
        row += [_fmt(v, 6) for v in _flat_metrics(metrics.get("result")).values()]
        row += [_fmt(v, 6) for v in _flat_metrics(metrics.get("cut_and_paste")).values()]
        row += [cached.get("background", ""), cached.get("reference", "")]
        row += [r.get("unet_calls", ""), r.get("sample_evals", ""), _fmt(r.get("timings", {}).get("total"), 4)]
        writer.writerow(row)
    return handle.getvalue()


def _groups(records: list[dict]) -> dict[str, list[dict]]:
    """Composed records: all, by mode, and by top-level folder (the domain level of the official layout)."""
    composed = [r for r in records if r.get("status") == "composed"]
    groups: dict[str, list[dict]] = {"all": composed}
    for r in composed:
        groups.setdefault(f"mode {r['mode']}", []).append(r)
        if "/" in r["id"]:
            groups.setdefault(f"folder {r['id'].split('/')[0]}", []).append(r)
    return groups


def _summary(report: BatchReport, base: CompositionConfig, model_spec: str, image_size, mode: str) -> dict:
    """summary.json: settings, counts, inversion-cache hits, metric means per group, and each sample in short."""
    records = [o.record for o in report.outcomes]
    fresh = [o.record for o in report.outcomes if o.action == "composed"]

    def hits(rs: list[dict], role: str) -> int:
        return sum(bool(r.get("invert_cached", {}).get(role)) for r in rs)

    return {
        "root": str(report.root.resolve()),
        "out": str(report.out.resolve()),
        "model": model_spec,
        "image_size": image_size,
        "mode": mode,
        "settings": dataclasses.asdict(base) | {"mode": "per sample"},
        "counts": {
            "samples": len(report.outcomes),
            "composed_now": report.count("composed"),
            "already_done": report.count("done"),
            "skipped": report.count("skipped"),
            "failed": report.count("failed"),
        },
        "inversion_cache": {
            "composed_now": len(fresh),
            "background_hits_now": hits(fresh, "background"),
            "reference_hits_now": hits(fresh, "reference"),
            "background_hits_all": hits([r for r in records if r.get("status") == "composed"], "background"),
        },
        "means": {name: _means(group) for name, group in _groups(records).items()},
        "metrics_unavailable": report.metrics_unavailable,
        "samples": [
            {
                "id": o.record.get("id"),
                "status": o.record.get("status"),
                "this_run": o.action,
                "reason": o.record.get("reason"),
                "mode": o.record.get("mode"),
                "prompt": o.record.get("prompt"),
                "metrics": o.record.get("metrics"),
                "invert_cached": o.record.get("invert_cached"),
                "record": f"{o.record.get('id')}/{RECORD_FILE}",
            }
            for o in report.outcomes
        ],
    }


def _visual_report(report: BatchReport, summary: dict) -> tuple[Image.Image, str]:
    """The contact sheet (one row per composed sample) and the self-contained HTML page."""
    records = [o.record for o in report.outcomes]
    groups = _groups(records)
    rows = []
    for r in groups["all"]:
        files, folder = r.get("files", {}), report.out / r["id"]
        images = [
            _open_optional(files.get("background")),
            _open_optional(files.get("foreground")),
            _open_optional(folder / OUTPUT_FILES["cut_and_paste"]),
            _open_optional(folder / OUTPUT_FILES["result"]),
        ]
        flat = _flat_metrics(r.get("metrics", {}).get("result"))
        details = {"mode": r.get("mode", "")} | {k: _fmt(v, 4) for k, v in flat.items() if v is not None}
        rows.append(SheetRow(r["id"], images, details))
    sheet = contact_sheet(rows)

    counts, means = summary["counts"], summary["means"]
    lines = [
        f"root {summary['root']}; model {summary['model']}; {counts['samples']} samples: {len(groups['all'])} composed "
        f"({counts['composed_now']} in the last run), {counts['skipped']} skipped, {counts['failed']} failed.",
        "BG: composite vs background with the target window blanked in both; FG: the window crop vs the reference; "
        "PSNR in dB on [0, 1] images; LPIPS (VGG) and CLIP only where weights were available.",
    ]
    lines += [f"{name} not computed: {message}" for name, message in report.metrics_unavailable.items()]
    shown = [c for c in METRIC_COLUMNS if any(means[g].get(c) is not None for g in groups)]
    columns = shown + ["cp_" + c for c in shown]
    table = {
        "means over composed samples (result; cp_ = cut-and-paste baseline)": (
            ["group", "n"] + columns,
            [[name, str(len(rs))] + [_fmt(means[name].get(c), 4) for c in columns] for name, rs in groups.items()],
        )
    }
    bad = [(f"{r['id']} ({r['status']})", r.get("reason") or "") for r in records if r["status"] != "composed"]
    page = html_report(rows, title=f"tficon batch: {report.root.name}", summary=lines, tables=table, skipped=bad)
    return sheet, page


def _open_optional(path) -> Image.Image | None:
    """An image file for a thumbnail, or None when it is gone or unreadable (the report still renders)."""
    if not path:
        return None
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError):
        return None

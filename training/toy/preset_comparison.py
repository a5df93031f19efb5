"""Presets compared on the same fresh cross-domain toy cases: quality, a seam measure and cost.

``python -m training.toy.composition_quality --preset tf-icon,tale,...`` composes every case drawn from the
printed seed (``tficon.toy.pairs.composition_cases``) under each preset and reports, per preset:

- the figures of ``composition_quality`` (object in box, drawn in the background's domain, colour and shape kept,
  median centroid offset, PSNR outside the box against the background's reconstruction and against the background,
  the effect of tau_a 0.4 -> 0.7);
- ``seam``: ``tficon.eval.seam.seam_jump`` of the result against the background at the border of the box the
  pipeline composes in (``placement.target_window``), 2 px either side, the placed object's silhouette (dilated
  by 2 px) left out because the object is resized to fill the box and so legitimately touches its border; lower
  is better, 0 = no more colour jump across the border than the background has there. A square fills its box,
  so its whole border is left out and its seam is undefined (NaN): the seam mean is over the other cases
  (``seam n`` of them);
- cost: the Session's UNet sample-evaluations (``Session.stats["sample_evals"]``: inversions and composition) and
  the process CPU time of building the Session and composing (scoring excluded), as means per case and as ratios
  to ``tf-icon`` (or the first preset named when tf-icon is not among them). The presets run interleaved, case by
  case, in an order rotated by one each case, so machine noise and warm caches hit all alike.

Every preset gets the same prompt, with the placed object's words marked (``a <ref> red star <ref> and a blue
circle, outline style``): the markers are removed before encoding, so presets that do not use the object's words
encode exactly the unmarked prompt; ``primecomposer-rca`` and ``shine-blend`` read them.

With ``--out FILE.jsonl`` every composed case is appended as one JSON line as soon as it is scored, and a run
given the same file skips what it holds (same seed and steps), so a long run can be stopped and resumed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tficon.eval.seam import seam_jump
from tficon.toy.detector import detect
from tficon.toy.pairs import CompositionCase
from tficon.toy.reading import placed_centroid, score_composition

__all__ = [
    "SEAM_WIDTH",
    "FIGURES",
    "parse_presets",
    "marked_prompt",
    "placed_object_mask",
    "case_seam",
    "compose_and_score",
    "compare_presets",
    "summarise",
    "format_table",
]

SEAM_WIDTH = 2  # pixels either side of the box border (the VAE blurs a 64-px image's edges over ~2 px)
OBJECT_DILATION = 2  # px added around the placed object before it is left out of the seam

#: (column, key in a summary, format) of every reported figure, in order.
FIGURES = (
    ("cases", "cases", "{:.0f}"),
    ("in box", "object_in_box", "{:.3f}"),
    ("bg domain", "in_background_domain", "{:.3f}"),
    ("colour", "colour_kept", "{:.3f}"),
    ("shape", "shape_kept", "{:.3f}"),
    ("offset px", "median_centroid_offset_px", "{:.2f}"),
    ("PSNR recon dB", "psnr_outside_box_db", "{:.2f}"),
    ("PSNR bg dB", "psnr_outside_box_vs_background_db", "{:.2f}"),
    ("tau_a chg", "tau_a_change", "{:.4f}"),
    ("seam", "seam", "{:.4f}"),
    ("seam n", "seam_cases", "{:.0f}"),
    ("evals", "sample_evals", "{:.1f}"),
    ("evals x", "sample_evals_ratio", "{:.2f}"),
    ("CPU s", "cpu_seconds", "{:.2f}"),
    ("CPU x", "cpu_ratio", "{:.2f}"),
)


def parse_presets(values) -> list[str]:
    """Preset names from repeated and/or comma-separated ``--preset`` values, in order, each once; an unknown name
    raises ValueError listing the registered ones."""
    from tficon.core.presets import preset_names

    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if name and name not in names:
                names.append(name)
    known = preset_names()
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"--preset: unknown preset(s) {unknown or values!r}; registered: {', '.join(known)}")
    return names


def marked_prompt(case: CompositionCase) -> str:
    """The case's prompt with the placed object's words marked ``<ref> red star <ref>``.

    The prompt names the scene's objects left to right (``tficon.toy.pairs``); when the scene object has the same
    colour and shape, the placed one is told apart by its centre's column against the scene object's, as the
    prompt orders them (the scene object first on a tie)."""
    sample = case.sample
    phrase = f"a {case.colour} {case.shape}"
    starts = [i for i in range(len(sample.prompt)) if sample.prompt.startswith(phrase, i)]
    if not starts:
        raise ValueError(f"the prompt {sample.prompt!r} does not name the placed object {phrase!r}")
    start = starts[0]
    if len(starts) > 1:
        scene = detect(np.asarray(sample.background.convert("RGB"))).objects
        x, _, w, _ = sample.box
        scale = 64 / sample.background.size[0]
        placed_x = (x + w / 2) * scale
        scene_x = min((o.centre[0] * scale for o in scene), key=lambda c: abs(c - placed_x), default=placed_x)
        start = starts[1] if scene_x <= placed_x else starts[0]
    words = f"{case.colour} {case.shape}"
    inner = start + len("a ")
    return f"{sample.prompt[:inner]}<ref> {words} <ref>{sample.prompt[inner + len(words):]}"


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return mask


def placed_object_mask(session) -> np.ndarray:
    """Bool ``(H, W)`` at the working size: the object's mask moved from the reference window to the target window,
    where the pipeline places the object (``placed_centroid`` uses the same shift)."""
    inputs, place = session.inputs, session.placement
    mask = inputs.object_mask > 0.5
    dy = place.target_window.top - place.ref_window.top
    dx = place.target_window.left - place.ref_window.left
    placed = np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    rows, cols = rows + dy, cols + dx
    keep = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    placed[rows[keep], cols[keep]] = True
    return placed


def case_seam(session, case: CompositionCase) -> float:
    """The seam measure of one composed case (module docstring): result against the background at the border of
    the target window, the placed object (dilated) left out."""
    result = session.result
    background = case.sample.background.convert("RGB").resize(result.size)
    ignore = _dilate(placed_object_mask(session), OBJECT_DILATION)
    if ignore.shape != (result.size[1], result.size[0]):
        raise ValueError(f"the object mask {ignore.shape} is not at the result's size {result.size}")
    return seam_jump(np.asarray(result), np.asarray(background), session.placement.target_window, width=SEAM_WIDTH,
                     ignore=ignore)  # fmt: skip


def compose_and_score(model, case: CompositionCase, preset: str, *, steps: int | None = None) -> dict:
    """One case under one preset: the composition timed and counted, then scored. A JSON-ready dict."""
    from tficon.composition.session import Session
    from tficon.core.config import CompositionConfig

    sample = case.sample
    changes = {} if steps is None else {"steps": steps}
    config = CompositionConfig.preset(preset, mode=sample.mode, **changes)
    cpu, wall = time.process_time(), time.perf_counter()
    session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box,
                      marked_prompt(case), config)  # fmt: skip
    session.result
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    evals = int(session.stats["sample_evals"])  # before scoring, which updates the Session
    seam = case_seam(session, case)
    scored = score_composition(session, case)
    return {**asdict(scored), "preset": preset, "seam": seam, "sample_evals": evals, "cpu_seconds": cpu,
            "wall_seconds": wall}  # fmt: skip


def _load(out: Path | None, seed: int, steps) -> dict:
    rows = {}
    if out is not None and out.exists():
        for line in out.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # an empty line, or the last one of a run stopped while writing it
                continue
            if isinstance(row, dict) and row.get("seed") == seed and row.get("steps") == steps:
                rows[(row["index"], row["preset"])] = row
    return rows


def compare_presets(model, cases, presets, *, seed: int, steps: int | None = None, out: Path | None = None,
                    log=print) -> dict:  # fmt: skip
    """Every case under every preset, interleaved (case by case, the presets' order rotated by one per case);
    rows already in ``out`` (same seed and steps) are kept, new ones appended. Returns ``{(index, preset): row}``."""
    rows = _load(out, seed, steps)
    if out is not None and out.exists() and out.stat().st_size and not out.read_bytes().endswith(b"\n"):
        with out.open("a") as handle:  # a run stopped mid-line: its partial row is skipped, the next starts afresh
            handle.write("\n")
    todo = [(i, p) for i in range(len(cases)) for p in presets if (i, p) not in rows]
    if todo:
        compose_and_score(model, cases[0], presets[0], steps=steps)  # warm-up, not recorded: first-call costs
    for index, case in enumerate(cases):
        order = presets[index % len(presets):] + presets[: index % len(presets)]
        for preset in order:
            if (index, preset) in rows:
                continue
            row = {"seed": seed, "steps": steps, "index": index, **compose_and_score(model, case, preset, steps=steps)}
            rows[(index, preset)] = row
            if out is not None:
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            log(f"  {index:3d} {preset:18s} {row['name']:40s} found={row['found']!s:5s} style={row['style'] or '-':8s}"
                f" (want {row['background_domain']:8s}) seam={row['seam']:+.4f} evals={row['sample_evals']}"
                f" cpu={row['cpu_seconds']:.2f}s")  # fmt: skip
    return rows


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: dict, presets, n_cases: int) -> dict[str, dict[str, float]]:
    """Per preset, over the cases every preset has a row for: the figures of ``FIGURES`` (means, fractions and the
    median offset), with cost ratios to tf-icon (or the first preset)."""
    complete = [i for i in range(n_cases) if all((i, p) in rows for p in presets)]
    summary = {}
    for preset in presets:
        rs = [rows[(i, preset)] for i in complete]
        n = len(rs) or 1
        offsets = [r["centroid_offset_px"] for r in rs if r["centroid_offset_px"] is not None]
        seams = [r["seam"] for r in rs if not math.isnan(r["seam"])]  # none where the object covers the border
        summary[preset] = {
            "cases": len(rs),
            "object_in_box": sum(r["found"] for r in rs) / n,
            "in_background_domain": sum(r["found"] and r["style"] == r["background_domain"] for r in rs) / n,
            "colour_kept": sum(r["colour_ok"] for r in rs) / n,
            "shape_kept": sum(r["shape_ok"] for r in rs) / n,
            "median_centroid_offset_px": float(np.median(offsets)) if offsets else float("nan"),
            "psnr_outside_box_db": _mean(r["psnr_outside"] for r in rs),
            "psnr_outside_box_vs_background_db": _mean(r["psnr_outside_background"] for r in rs),
            "tau_a_change": _mean(r["tau_a_change"] for r in rs),
            "seam": _mean(seams),
            "seam_cases": len(seams),
            "seam_stderr": float(np.std(seams, ddof=1) / math.sqrt(len(seams))) if len(seams) > 1 else float("nan"),
            "sample_evals": _mean(r["sample_evals"] for r in rs),
            "cpu_seconds": _mean(r["cpu_seconds"] for r in rs),
        }
    base = "tf-icon" if "tf-icon" in presets else presets[0]
    for preset in presets:
        for key, ratio in (("sample_evals", "sample_evals_ratio"), ("cpu_seconds", "cpu_ratio")):
            reference = summary[base][key]
            summary[preset][ratio] = summary[preset][key] / reference if reference else float("nan")
    return summary


def format_table(summary: dict, markdown: bool = False) -> str:
    """The summary as a fixed-width text table, or a markdown table (one row per preset)."""
    header = ["preset"] + [column for column, _, _ in FIGURES]
    body = [[name] + [fmt.format(figures[key]) for _, key, fmt in FIGURES] for name, figures in summary.items()]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in [header] + body)  # fmt: skip

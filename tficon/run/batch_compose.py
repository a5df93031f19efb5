"""One sample of a batch: its Session, its images (``result.png``, ``cut_and_paste.png``, ``overlay.png``), its
metrics and its record (``sample.json``), and the outcome an earlier run recorded for it.

Writing order, so that nothing wrong is ever kept as done: the sample's old record is removed before any of its
images is rewritten, each image is written atomically (``tficon.run.files``), and the new record, written last,
holds each image's size and sha256 (``output_fingerprints``). A resume trusts a record only when the images on
disk still match them: a truncated image, or another run's image under this record, is composed again."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from tficon.composition.runner import Task
from tficon.core import io
from tficon.core.config import CompositionConfig
from tficon.run.batch_samples import OUTPUT_FILES, RECORD_FILE, BatchSample
from tficon.run.batch_summary import SampleOutcome
from tficon.run.files import file_fingerprint, remove_file, save_image_atomic

__all__ = ["SampleTask", "placement_overlay", "compose_sample", "earlier_outcome", "open_session"]

# Bad input, as the loaders and the Session report it.
INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError)


@dataclass(eq=False, kw_only=True)
class SampleTask(Task):
    """A sample's Session on its way through the runner, with what writing its outputs needs: the sample, its
    record so far, its output folder, the seconds its preparation took and when it joined the runner."""

    sample: BatchSample
    record: dict
    folder: Path
    prepare_seconds: float
    joined: float = 0.0


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (bool) with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def placement_overlay(background: Image.Image, placement, object_mask: np.ndarray) -> Image.Image:
    """The working-size background with the user box (yellow, scaled from the mask's size), the target window
    (red) and the object's outline where it is pasted (green).

    Args:
        background: RGB PIL image of the working size ``placement.image_size``.
        placement: a ``tficon.core.placement.Placement``.
        object_mask: ``(H, W)`` padded object mask ``Mpad`` (``Session.inputs.object_mask``).
    """
    image = background.convert("RGB").copy()
    height, width = placement.image_size
    if image.size != (width, height):
        raise ValueError(f"background is {image.size[0]}x{image.size[1]} but the placement is for {width}x{height}")
    target, source = placement.target_window, placement.ref_window
    pixels = np.array(image)
    window = np.asarray(object_mask)[source.slices()] > 0
    if window.shape == (target.height, target.width):
        canvas = np.zeros((height, width), dtype=bool)
        canvas[target.slices()] = window
        pixels[_outline(canvas)] = (0, 200, 0)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    if placement.bbox is not None and placement.mask_size is not None:
        x, y, w, h = placement.bbox
        fy, fx = height / placement.mask_size[0], width / placement.mask_size[1]
        corners = (round(x * fx), round(y * fy), round((x + w) * fx) - 1, round((y + h) * fy) - 1)
        draw.rectangle(corners, outline=(240, 200, 0))
    draw.rectangle((target.left, target.top, target.right - 1, target.bottom - 1), outline=(230, 0, 0))
    return image


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def earlier_outcome(sample: BatchSample, fingerprint: str, folder: Path) -> SampleOutcome | None:
    """The outcome an earlier run recorded for these exact settings and inputs: ``"done"`` (composed, its
    images still there) or ``"skipped"``; None when the sample must (still or again) be composed."""
    record = _read_record(folder / RECORD_FILE)
    if not record or record.get("fingerprint") != fingerprint:
        return None
    if record.get("status") == "skipped":
        return SampleOutcome(sample.id, "skipped", record.get("reason"), record)
    if record.get("status") == "composed" and _outputs_match(record, folder):
        return SampleOutcome(sample.id, "done", None, record)
    return None


def _outputs_match(record: dict, folder: Path) -> bool:
    """Whether every image the record vouches for is on disk as it was written (size and sha256). A record
    without fingerprints (written before they were kept) vouches for nothing."""
    vouched = record.get("output_fingerprints")
    if not isinstance(vouched, dict):
        return False
    return all(
        name in vouched and file_fingerprint(folder / name) == vouched[name] for name in OUTPUT_FILES.values()
    )


class Scorers:
    """LPIPS / CLIP scorers, loaded on first use; a scorer that cannot load is remembered with its reason."""

    def __init__(self, enabled: bool, lpips_weights, clip_model, allow_downloads: bool, log: Callable[[str], None]):
        self.enabled = enabled
        self.options = (lpips_weights, clip_model, allow_downloads)
        self.log = log
        self.loaded = False
        self.lpips = None
        self.clip = None
        self.unavailable: dict[str, str] = {}

    def load(self) -> "Scorers":
        if self.loaded or not self.enabled:
            return self
        from tficon.eval.metrics import CLIPScorer, LPIPSScorer, MetricUnavailable

        lpips_weights, clip_model, allow = self.options
        try:
            self.lpips = LPIPSScorer.load(lpips_weights, allow_download=allow)
        except MetricUnavailable as error:
            self.unavailable["LPIPS"] = str(error)
        try:
            self.clip = CLIPScorer.load(clip_model, allow_download=allow)
        except MetricUnavailable as error:
            self.unavailable["CLIP"] = str(error)
        for name, message in self.unavailable.items():
            self.log(f"{name} not computed: {message}")
        self.loaded = True
        return self


def open_session(sample: BatchSample, engine, config: CompositionConfig, image_size):
    """The sample's Session; raises ValueError / TypeError / FileNotFoundError for bad input (box off the
    image, a prompt longer than the text encoder's window, ...), before anything runs or is written. ``engine``
    is the batch's one engine, so that samples share its inversion cache."""
    from tficon.composition.session import Session

    files = sample.files
    return Session(
        engine.model, files["background"], files["foreground"], files["foreground_mask"], files["mask"], sample.prompt,
        config, image_size=image_size, engine=engine,
    )  # fmt: skip


def compose_sample(task: SampleTask, scorers: Scorers, batched=None) -> dict:
    """Write the images of a sample whose Session the runner has run (``batched``: in shared UNet calls, with
    ``--batch-samples`` of that value; None: alone, one call per step) and return its record (without
    status/fingerprint)."""
    from tficon.eval.metrics import composition_metrics

    sample, session, folder = task.sample, task.session, task.folder
    # alone, its composition ran from when it joined the runner until now; batched, that time was shared
    prepared = task.joined if batched is None else time.perf_counter()
    started = prepared - task.prepare_seconds
    composed = time.perf_counter()
    result = session.result  # decodes
    decoded = time.perf_counter()
    inputs, place = session.inputs, session.placement
    background = io.to_pil(inputs.background)
    reference = io.to_pil(inputs.reference)
    cut_and_paste = io.to_pil(inputs.cut_and_paste)
    # The old record stops vouching before any image changes: a run killed from here on leaves no record.
    remove_file(folder / RECORD_FILE)
    overlay = placement_overlay(background, place, inputs.object_mask)
    images = {"result": result, "cut_and_paste": cut_and_paste, "overlay": overlay}
    written_files = {OUTPUT_FILES[k]: save_image_atomic(folder / OUTPUT_FILES[k], image) for k, image in images.items()}
    scorers.load()
    written = time.perf_counter()

    def measure(image: Image.Image) -> dict:
        return composition_metrics(
            image, background, reference, place.target_window, place.ref_window,
            prompt=sample.prompt, lpips=scorers.lpips, clip=scorers.clip,
        )  # fmt: skip

    metrics = {"result": measure(result), "cut_and_paste": measure(cut_and_paste)}
    finished = time.perf_counter()
    cached_bg, cached_ref = session.timings.get("invert_cached", (False, False))
    summary = session.summary()
    return {
        "settings": summary,
        "boxes": {
            "user_bbox_xywh": list(place.bbox) if place.bbox is not None else None,
            "user_mask_size_hw": list(place.mask_size) if place.mask_size is not None else None,
            **{
                f"{key}_tlbr": [box.top, box.left, box.bottom, box.right]
                for key, box in (
                    ("target_window", place.target_window),
                    ("reference_window", place.ref_window),
                    ("latent_target_box", place.latent_target_box),
                )
            },
        },
        "timings": {
            "prepare": prepared - started,
            "encode": session.timings.get("encode"),
            "invert": session.timings.get("invert"),
            "steps": summary["step_seconds"],  # batched: this sample's share of the shared calls
            "compose_total": composed - prepared if batched is None else None,
            "decode": decoded - composed,
            "write": written - decoded,  # images, overlay (and loading LPIPS / CLIP for the first sample)
            "metrics": finished - written,
            "total": finished - started,
        },
        "invert_cached": {"background": bool(cached_bg), "reference": bool(cached_ref)},
        "unet_calls": summary["unet_calls"],
        "sample_evals": summary["sample_evals"],
        "metrics": metrics,
        "metrics_note": (
            "bg: composite vs working-size background, target window set to 0 in both; fg: target-window crop of the "
            "composite vs the reference's object window (resized to it); values on the [0, 1] scale"
        ),
        "outputs": dict(OUTPUT_FILES),
        "output_fingerprints": written_files,
        "batch_samples": batched,
    }


def base_record(sample: BatchSample, fingerprint: str) -> dict:
    return {
        "id": sample.id,
        "folder": str(sample.folder.resolve()),
        "prompt": sample.prompt,
        "mode": sample.mode,
        "mode_source": sample.mode_source,
        "files": {role: str(path.resolve()) for role, path in sorted(sample.files.items())},
        "fingerprint": fingerprint,
    }


def checked_model(model, image_size):
    """``model``, after checking that the working size suits it (a wrong size is no sample's fault)."""
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        io.check_image_size(size, model.size_multiple, name="image_size (--size)")
    return model

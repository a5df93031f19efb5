"""Batch composition over folders laid out like the official TF-ICON ``inputs/`` tree, with metrics and reports.

Layout (docs/algorithm.md §2.1): each sample is one folder ``<root>/.../<prompt>/`` holding

- ``bg*``        the background,
- ``fg*``        the foreground (a file starting with ``fg`` whose name does not contain ``mask``),
- ``fg*mask*``   the foreground's object mask,
- ``mask*``      the user mask on the background (its first contour's bbox is the target box),

as images (png, jpg, ...). Other files (the official folders also hold ``cp_bg_fg.jpg`` and ``dccf_image.jpg``)
are ignored. The prompt is the folder name, with underscores read as spaces. The mode comes from the nearest
``cross_domain`` / ``same_domain`` folder above the sample unless given.

Differences from the official discovery loop, on purpose: any root works (the official regex needs
``./inputs/<x>/<prompt>/``), and a folder with a missing, empty, unreadable or ambiguous input is reported with
the reason and skipped (the official loop silently reuses the previous folder's file).

Output (``out/<sample id>/``): ``result.png``, ``cut_and_paste.png`` (the pixel composite of docs/algorithm.md §2.5),
``overlay.png`` (the working-size background with the user box in yellow, the target window in red and the
object outline in green) and ``sample.json`` (settings, placement, timings, inversion-cache hits, metrics; written
last, so it marks the sample finished). Over all samples: ``summary.csv``, ``summary.json``,
``contact_sheet.png`` and ``report.html``.

Resuming: a sample whose ``sample.json`` records the same fingerprint (settings, model, working size and the
content of its four input files) is not composed again unless ``force``. Samples that share a background run
one after another, so the background inversion is found in the batch's inversion cache (``tficon.composition.engine``);
``sample.json`` records the hits. Both images of a sample are inverted in one batch, and a result must not depend
on what was cached, so a hit saves UNet work only when both inversions of a sample are cached.

Several processes (Hugging Face ``accelerate``): under ``accelerate launch -m tficon batch ...`` (or
``tficon batch --processes N``, which runs that launcher) every process finds the same samples still to compose,
they agree on that list before anyone writes (a barrier), and ``PartialState.split_between_processes`` gives each
process a contiguous share of it in composition order (so samples sharing a background mostly stay together).
Each process loads the model on its own device and writes its samples exactly as a single process would, with the
same resume rules, so a killed process loses at most the sample it was composing. When all are done, the main
process gathers the outcomes and writes the summaries, contact sheet and report once. A run that was killed
writes no summaries; the re-run composes what is missing and merges everything.

Batched samples (``batch_samples`` / ``--batch-samples N``, off by default): samples share nothing but the model
and the working size, so up to N of them advance together, each step of all of them in one UNet call
(``tficon.run.lockstep``); their inversions are batched too, a background shared by several samples inverted once.
Results equal the one-at-a-time results to float tolerance, not bitwise. Each sample is still written as soon
as it is finished, with the same resume rules; a killed run loses the samples in flight (up to N).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from tficon.composition.engine import Engine
from tficon.core import io
from tficon.core.config import CompositionConfig

__all__ = [
    "IMAGE_SUFFIXES",
    "ROLES",
    "DOMAIN_MODES",
    "OUTPUT_FILES",
    "RECORD_FILE",
    "BatchSample",
    "SampleOutcome",
    "BatchReport",
    "role_of",
    "prompt_from_folder",
    "mode_from_path",
    "discover_samples",
    "composition_order",
    "check_sample_files",
    "placement_overlay",
    "run_batch",
    "process_state",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
ROLES = ("background", "foreground", "foreground_mask", "mask")
ROLE_PATTERNS = {"background": "bg*", "foreground": "fg*", "foreground_mask": "fg*mask*", "mask": "mask*"}
ROLE_NAMES = {
    "background": "background",
    "foreground": "foreground",
    "foreground_mask": "foreground mask",
    "mask": "user mask",
}
DOMAIN_MODES = {"cross_domain": "cross", "same_domain": "same"}
OUTPUT_FILES = {"result": "result.png", "cut_and_paste": "cut_and_paste.png", "overlay": "overlay.png"}
RECORD_FILE = "sample.json"
SUMMARY_FILES = {"csv": "summary.csv", "json": "summary.json", "sheet": "contact_sheet.png", "html": "report.html"}
#: Relative aspect-ratio difference above which two images of one sample count as mismatched (the library's).
ASPECT_TOLERANCE = io.ASPECT_TOLERANCE
#: Metric columns of the summary, in order (prefixed ``cp_`` for the cut-and-paste baseline).
METRIC_COLUMNS = (
    "bg_mse", "bg_psnr", "bg_ssim", "fg_mse", "fg_psnr", "fg_ssim",
    "lpips_bg", "lpips_fg", "clip_image_bg", "clip_image_fg", "clip_text",
)  # fmt: skip

# Bad input, as the loaders and the Session report it.
_INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError)


# --------------------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------------------


def role_of(filename: str) -> str | None:
    """The role of a file in a sample folder (see the module docstring), or None for any other file."""
    path = Path(filename)
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return None
    stem = path.stem.lower()
    if stem.startswith("bg"):
        return "background"
    if stem.startswith("fg"):
        return "foreground_mask" if "mask" in stem else "foreground"
    if stem.startswith("mask"):
        return "mask"
    return None


def prompt_from_folder(name: str) -> str:
    """The prompt of a sample folder: its name with underscores read as spaces, whitespace collapsed."""
    return " ".join(name.replace("_", " ").split())


def mode_from_path(folder: Path) -> tuple[str | None, str]:
    """``(mode, source)`` from the nearest ``cross_domain`` / ``same_domain`` folder in ``folder``'s path."""
    for part in reversed(Path(folder).resolve().parts):
        mode = DOMAIN_MODES.get(part.lower())
        if mode is not None:
            return mode, f"folder {part}"
    return None, "no cross_domain/same_domain folder"


@dataclass(frozen=True)
class BatchSample:
    """One sample folder: its id (path relative to the root), prompt, mode and input files by role.

    ``problem`` says what is wrong with the folder's files (a missing or ambiguous role); None when complete.
    """

    id: str
    folder: Path
    prompt: str
    mode: str
    mode_source: str
    files: Mapping[str, Path] = field(default_factory=dict)
    problem: str | None = None


def discover_samples(root: str | os.PathLike, mode: str = "auto", *, exclude: Iterable[Path] = ()) -> list[BatchSample]:
    """Every sample folder under ``root`` (``root`` itself included), sorted by id.

    A folder is a sample when it holds at least one file with a role (``role_of``). ``mode`` is ``"auto"``
    (from a ``cross_domain`` / ``same_domain`` folder above, else ``"cross"``), ``"cross"`` or ``"same"``.
    Folders in ``exclude`` (e.g. the output folder) are not entered.
    """
    if mode not in ("auto", "cross", "same"):
        raise ValueError(f"mode must be 'auto', 'cross' or 'same', got {mode!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"batch root {str(root)!r} is not a folder; pass the folder holding the sample folders")
    skip = {Path(p).resolve() for p in exclude}
    samples = []
    for folder, subfolders, filenames in os.walk(root):
        folder_path = Path(folder)
        subfolders[:] = sorted(
            d for d in subfolders if not d.startswith(".") and (folder_path / d).resolve() not in skip
        )
        by_role: dict[str, list[str]] = {}
        for name in sorted(filenames):
            role = role_of(name)
            if role is not None:
                by_role.setdefault(role, []).append(name)
        if not by_role:
            continue
        problems = []
        for role in ROLES:
            names = by_role.get(role, [])
            if not names:
                problems.append(f"missing {ROLE_NAMES[role]} ({ROLE_PATTERNS[role]})")
            elif len(names) > 1:
                problems.append(f"several {ROLE_NAMES[role]} candidates ({', '.join(names)}); keep one")
        prompt = prompt_from_folder(folder_path.resolve().name)
        if not prompt:
            # The official loop would compose with "" without a word; an empty prompt is a naming mistake.
            problems.append(
                f"the folder name {folder_path.resolve().name!r} gives an empty prompt (the prompt is the folder "
                "name, underscores read as spaces); rename the folder to the prompt"
            )
        relative = folder_path.relative_to(root).as_posix()
        sample_id = relative if relative != "." else root.resolve().name
        if mode == "auto":
            found, source = mode_from_path(folder_path)
            sample_mode = found or "cross"
            if found is None:
                source += ", default cross"
        else:
            sample_mode, source = mode, "--mode"
        samples.append(
            BatchSample(
                id=sample_id,
                folder=folder_path,
                prompt=prompt,
                mode=sample_mode,
                mode_source=source,
                files={role: folder_path / names[0] for role, names in by_role.items() if len(names) == 1},
                problem="; ".join(problems) or None,
            )
        )
    return sorted(samples, key=lambda s: s.id)


def check_sample_files(sample: BatchSample, image_size: int | tuple[int, int] | None = None) -> None:
    """Check a sample's files without a model; raise ValueError / FileNotFoundError naming the problem.

    Checks: every role present once; every file readable; both masks binary and not empty; both masks sized by
    the library's one rule (``tficon.core.io.check_mask_size``, the same check the Session makes): the foreground
    mask with the foreground's aspect ratio, the user mask with the background's or the working image's (masks
    are read in fractions of their own size, like the official code's 512-px masks). ``image_size`` is the
    working size (None: the model's square native size).
    """
    if sample.problem:
        raise ValueError(sample.problem)
    files = sample.files
    background = io.load_image(files["background"], name=f"background {files['background'].name}")
    foreground = io.load_image(files["foreground"], name=f"foreground {files['foreground'].name}")
    object_mask = io.load_mask(files["foreground_mask"], name=f"foreground mask {files['foreground_mask'].name}")
    user_mask = io.load_mask(files["mask"], name=f"user mask {files['mask'].name}")
    working = (image_size, image_size) if isinstance(image_size, int) or image_size is None else tuple(image_size)
    try:
        io.check_mask_size(
            object_mask.shape,
            (foreground.height, foreground.width),
            name=f"foreground mask {files['foreground_mask'].name}",
            image_name=f"foreground {files['foreground'].name}",
        )
        io.check_mask_size(
            user_mask.shape,
            (background.height, background.width),
            name=f"user mask {files['mask'].name}",
            image_name=f"background {files['background'].name}",
            working_size=(1, 1) if image_size is None else working,
        )
    except ValueError as error:
        raise ValueError(f"mismatched sizes: {error}") from None


# --------------------------------------------------------------------------------------------------------------
# Per-sample outputs
# --------------------------------------------------------------------------------------------------------------


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


def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _fingerprint(sample: BatchSample, config: CompositionConfig, model_spec: str, image_size) -> str:
    """What a finished sample's outputs depend on: settings, model, working size, prompt and input contents."""
    payload = {
        "config": dataclasses.asdict(config),
        "model": model_spec,
        "image_size": image_size,
        "prompt": sample.prompt,
        "files": {role: _file_digest(path) for role, path in sorted(sample.files.items()) if path.is_file()},
        "problem": sample.problem,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(value):
    """JSON-safe copy: tuples to lists, paths to strings, numpy scalars to Python, inf/nan to "inf"/"nan"."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    return value


def _box_list(box) -> list[int]:
    return [box.top, box.left, box.bottom, box.right]


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _earlier_outcome(sample: "BatchSample", fingerprint: str, folder: Path) -> "SampleOutcome | None":
    """The outcome an earlier run recorded for these exact settings and inputs: ``"done"`` (composed, its
    images still there) or ``"skipped"``; None when the sample must (still or again) be composed."""
    record = _read_record(folder / RECORD_FILE)
    if not record or record.get("fingerprint") != fingerprint:
        return None
    if record.get("status") == "skipped":
        return SampleOutcome(sample.id, "skipped", record.get("reason"), record)
    if record.get("status") == "composed" and all((folder / name).is_file() for name in OUTPUT_FILES.values()):
        return SampleOutcome(sample.id, "done", None, record)
    return None


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


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

    def count(self, action: str) -> int:
        return sum(o.action == action for o in self.outcomes)

    @property
    def failed(self) -> list[SampleOutcome]:
        return [o for o in self.outcomes if o.action == "failed"]

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
        lines.append("wrote " + ", ".join(str(p) for p in self.paths.values()))
        return "\n".join(lines)


class _Scorers:
    """LPIPS / CLIP scorers, loaded on first use; a scorer that cannot load is remembered with its reason."""

    def __init__(self, enabled: bool, lpips_weights, clip_model, allow_downloads: bool, log: Callable[[str], None]):
        self.enabled = enabled
        self.options = (lpips_weights, clip_model, allow_downloads)
        self.log = log
        self.loaded = False
        self.lpips = None
        self.clip = None
        self.unavailable: dict[str, str] = {}

    def load(self) -> "_Scorers":
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


def _open_session(sample: BatchSample, engine, config: CompositionConfig, image_size):
    """The sample's Session; raises ValueError / TypeError / FileNotFoundError for bad input (box off the
    image, a prompt longer than the text encoder's window, ...), before anything runs or is written. ``engine``
    is the batch's one engine, so that samples share its inversion cache."""
    from tficon.composition.session import Session

    files = sample.files
    return Session(
        engine.model, files["background"], files["foreground"], files["foreground_mask"], files["mask"], sample.prompt,
        config, image_size=image_size, engine=engine,
    )  # fmt: skip


def _compose_sample(
    sample: BatchSample, session, scorers: _Scorers, folder: Path, prepare_seconds: float, batched=None
) -> dict:
    """Run a prepared Session (``batched``: already run in shared UNet calls, with ``--batch-samples`` of that
    value), write the sample's images, and return its record (without status/fingerprint)."""
    from tficon.eval.metrics import composition_metrics

    prepared = time.perf_counter()
    started = prepared - prepare_seconds
    session.run()
    composed = time.perf_counter()
    result = session.result  # decodes
    decoded = time.perf_counter()
    inputs, place = session.inputs, session.placement
    background = io.to_pil(inputs.background)
    reference = io.to_pil(inputs.reference)
    cut_and_paste = io.to_pil(inputs.cut_and_paste)
    folder.mkdir(parents=True, exist_ok=True)
    result.save(folder / OUTPUT_FILES["result"])
    cut_and_paste.save(folder / OUTPUT_FILES["cut_and_paste"])
    placement_overlay(background, place, inputs.object_mask).save(folder / OUTPUT_FILES["overlay"])
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
            "target_window_tlbr": _box_list(place.target_window),
            "reference_window_tlbr": _box_list(place.ref_window),
            "latent_target_box_tlbr": _box_list(place.latent_target_box),
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
        "batch_samples": batched,
    }


def _failed_args(item: tuple) -> tuple:
    """(sample, folder, record) of an opened item (sample, session, record, folder, prepare seconds)."""
    sample, _, record, folder, _ = item
    return sample, folder, record


def _base_record(sample: BatchSample, fingerprint: str) -> dict:
    return {
        "id": sample.id,
        "folder": str(sample.folder.resolve()),
        "prompt": sample.prompt,
        "mode": sample.mode,
        "mode_source": sample.mode_source,
        "files": {role: str(path.resolve()) for role, path in sorted(sample.files.items())},
        "fingerprint": fingerprint,
    }


def composition_order(samples: list[BatchSample]) -> list[BatchSample]:
    """The order to compose in: samples sharing a background (same file content and mode) next to each other,
    groups in order of their first sample, samples in their given order. The inversion cache (a small LRU in
    the batch's engine) then still holds a background's inversion when the next sample needs it. A sample without a
    background file is its own group."""
    group_of: list[int] = []
    first_seen: dict[tuple, int] = {}
    for index, sample in enumerate(samples):
        path = sample.files.get("background")
        digest = _file_digest(path) if path is not None and path.is_file() else f"none:{sample.id}"
        group_of.append(first_seen.setdefault((sample.mode, digest), index))
    order = sorted(range(len(samples)), key=lambda i: (group_of[i], i))
    return [samples[i] for i in order]


def _checked_model(model, image_size):
    """``model``, after checking that the working size suits it (a wrong size is no sample's fault)."""
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        levels = len(model.unet.config.block_out_channels)
        io.check_image_size(size, model.vae_scale_factor * 2 ** (levels - 1), name="image_size (--size)")
    return model


def process_state():
    """accelerate's ``PartialState`` when this process is one of several started by a launcher (``accelerate
    launch``, torchrun, mpirun), else None. Without a GPU the processes join a CPU (gloo/MPI) group."""
    from accelerate.utils import get_int_from_env

    if get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1) <= 1:
        return None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state if state.num_processes > 1 else None


def run_batch(
    root: str | os.PathLike,
    out: str | os.PathLike,
    model="toy",
    *,
    mode: str = "auto",
    config: CompositionConfig | None = None,
    image_size: int | tuple[int, int] | None = None,
    force: bool = False,
    limit: int | None = None,
    progress: bool = True,
    perceptual: bool = True,
    lpips_weights: str | os.PathLike | None = None,
    clip_model: str | os.PathLike | None = None,
    allow_downloads: bool = False,
    log: Callable[[str], None] | None = None,
    dtype: str | None = None,
    batch_samples: int | str | None = None,
) -> BatchReport:
    """Compose every sample folder under ``root`` into ``out`` (see the module docstring).

    Args:
        model: a ``LoadedModel`` or a ``load_model`` spec; a spec is loaded only when a sample needs composing.
        mode: ``"auto"`` (from the folder names), ``"cross"`` or ``"same"`` for every sample.
        config: settings of every sample (its ``mode`` is replaced by the sample's); default the official ones.
        image_size: working size (default: the model's).
        force: compose finished samples again.
        limit: compose only the first ``limit`` samples (in id order); later ones that an earlier run finished
            with the same settings still appear in the summaries.
        progress: a tqdm bar over the samples.
        perceptual: try LPIPS (VGG) and CLIP; each runs only with local weights unless ``allow_downloads``.
        lpips_weights / clip_model: see ``tficon.eval.metrics.LPIPSScorer.load`` / ``CLIPScorer.load``.
        log: where messages go (default ``tqdm.write``).
        dtype: the precision a model spec is loaded in (``load_model``'s dtype).
        batch_samples: None (default): one sample at a time, each bitwise what ``tficon compose`` gives. N: up to
            N samples advance together, one UNet call per step for all of them (``tficon.run.lockstep``; results equal
            to float tolerance); ``"auto"``: as many as the memory budget holds. A killed run then loses the
            samples in flight (up to N), not just one.

    Under a multi-process launch (``process_state``), each process composes its share of the samples still to
    compose, and the main process writes the summaries after all have finished (module docstring).

    Returns:
        a :class:`BatchReport`; summaries and the visual report are written to ``out``. Under several processes
        the main process's report covers every sample; the others' hold only their own samples and no paths.
    """
    root, out = Path(root), Path(out)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if config is not None and not isinstance(config, CompositionConfig):
        raise TypeError(f"config must be a tficon.CompositionConfig or None, got {type(config).__name__}")
    from tficon.run.lockstep import check_count

    check_count(batch_samples, "batch_samples", auto=True, none=True)
    log = log or tqdm.write
    state = process_state()
    if state is not None:
        rank = f"[process {state.process_index + 1}/{state.num_processes}] "
        log = (lambda write: lambda message: write(rank + message))(log)
    discovered = discover_samples(root, mode, exclude=[out])
    samples = discovered[:limit] if limit is not None else discovered
    base = config or CompositionConfig()
    model_spec = model if isinstance(model, (str, os.PathLike)) else getattr(model, "spec", type(model).__name__)
    model_spec = os.fspath(model_spec) if isinstance(model_spec, os.PathLike) else model_spec
    loaded = None if isinstance(model, (str, os.PathLike)) else _checked_model(model, image_size)
    scorers = _Scorers(perceptual, lpips_weights, clip_model, allow_downloads, log)
    outcomes: dict[str, SampleOutcome] = {}
    engine = None  # created with the model: one inversion cache for the whole batch

    work = composition_order(samples)
    if state is not None:
        # Every process reads the same finished records and must agree on what is left before anyone writes one.
        work = [
            s for s in work
            if force or _earlier_outcome(s, _fingerprint(s, base.replace(mode=s.mode), model_spec, image_size),
                                         out / s.id) is None
        ]  # fmt: skip
        state.wait_for_everyone()
        with state.split_between_processes(work) as share:
            work = list(share)
    desc = "tficon batch" if state is None else f"tficon batch {state.process_index + 1}/{state.num_processes}"
    position = None if state is None else state.process_index
    bar = tqdm(total=len(work), desc=desc, unit="sample", disable=not progress, position=position)

    def settle(sample: BatchSample, folder: Path, record: dict, action: str) -> None:
        """Write the sample's record (last: it marks the sample finished) and keep its outcome."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RECORD_FILE).write_text(json.dumps(_jsonable(record), indent=2) + "\n")
        outcomes[sample.id] = SampleOutcome(sample.id, action, record.get("reason"), record)
        bar.update(1)

    def opened():
        """The samples to compose, each as (sample, session, record, folder, prepare seconds), in order; the
        others (finished earlier, bad input) are settled on the way."""
        nonlocal loaded, engine
        for run_index, sample in enumerate(work):
            bar.set_postfix_str(sample.id[-40:], refresh=False)
            folder = out / sample.id
            config_i = base.replace(mode=sample.mode)
            fingerprint = _fingerprint(sample, config_i, model_spec, image_size)
            earlier = None if force else _earlier_outcome(sample, fingerprint, folder)
            if earlier is not None:
                outcomes[sample.id] = earlier
                bar.update(1)
                if earlier.action == "skipped":
                    log(f"skipped {sample.id}: {earlier.reason} (recorded earlier)")
                continue
            record = _base_record(sample, fingerprint) | {"run_index": run_index}
            session, problem = None, None
            try:
                check_sample_files(sample, image_size)
            except _INPUT_ERRORS as error:
                problem = str(error)
            if problem is None:
                if loaded is None:  # only now: a batch with nothing to compose never loads the model
                    from tficon.model import load_model

                    # a model that cannot load, or a working size it cannot use, ends the batch: no sample could run
                    device = None if state is None else state.device
                    loaded = _checked_model(load_model(model_spec, device=device, dtype=dtype), image_size)
                    log(f"model: {loaded.describe()}")
                started = time.perf_counter()
                try:
                    if engine is None or engine.model is not loaded:
                        engine = Engine(loaded)
                    session = _open_session(sample, engine, config_i, image_size)
                except _INPUT_ERRORS as error:
                    problem = str(error)
            if problem is not None:
                record.update(status="skipped", reason=problem)
                log(f"skipped {sample.id}: {problem}")
                settle(sample, folder, record, "skipped")
                continue
            yield sample, session, record, folder, time.perf_counter() - started

    def failed(sample, folder, record, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}"
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        record.update(status="failed", reason=reason, traceback=trace)
        log(f"FAILED {sample.id}: {type(error).__name__}: {error}")
        settle(sample, folder, record, "failed")

    def compose(sample, session, record, folder, prepare_seconds, batched=None) -> None:
        try:
            record.update(_compose_sample(sample, session, scorers, folder, prepare_seconds, batched))
        except Exception as error:  # noqa: BLE001 - one sample's failure must not end the batch
            failed(sample, folder, record, error)
            return
        record.update(status="composed", reason=None)
        settle(sample, folder, record, "composed")

    if batch_samples is None:
        for item in opened():
            compose(*item)
    else:
        from tficon.run.lockstep import MAX_ROWS_PER_CELL, run_lockstep

        waiting: dict[int, tuple] = {}

        def sessions():
            for item in opened():
                waiting[id(item[1])] = item
                yield item[1]

        rows = "auto" if batch_samples == "auto" else MAX_ROWS_PER_CELL * batch_samples
        stats = run_lockstep(
            sessions(),
            max_rows=rows,
            max_cells=None if batch_samples == "auto" else batch_samples,
            on_finished=lambda session: compose(*waiting.pop(id(session)), batched=batch_samples),
            on_error=lambda session, error: failed(*_failed_args(waiting.pop(id(session))), error),
        )
        if stats.unet_calls:
            log(f"batched samples: up to {stats.max_cells} per UNet call, {stats.rows_per_call:.1f} rows per call")
    bar.close()
    if state is not None:
        from accelerate.utils import gather_object

        mine = list(outcomes.values())
        # collective: returns when every process has finished its share
        gathered = gather_object([(mine, dict(scorers.unavailable))])
        if not state.is_main_process:
            return BatchReport(root, out, mine, {}, dict(scorers.unavailable))
        outcomes = {o.id: o for theirs, _ in gathered for o in theirs}
        for _, unavailable in gathered:
            scorers.unavailable.update(unavailable)
        for sample in samples:  # finished by earlier runs: not in anyone's share
            if sample.id not in outcomes:
                earlier = _earlier_outcome(
                    sample, _fingerprint(sample, base.replace(mode=sample.mode), model_spec, image_size), out / sample.id
                )
                if earlier is not None:
                    outcomes[sample.id] = earlier

    # Samples beyond --limit that an earlier run finished with these settings stay in the summaries.
    for sample in discovered[len(samples) :]:
        fingerprint = _fingerprint(sample, base.replace(mode=sample.mode), model_spec, image_size)
        earlier = _earlier_outcome(sample, fingerprint, out / sample.id)
        if earlier is not None:
            outcomes[sample.id] = earlier
    ordered = [outcomes[s.id] for s in discovered if s.id in outcomes]
    report = BatchReport(root, out, ordered, {}, dict(scorers.unavailable))
    report.paths = _write_summaries(report, base, model_spec, image_size, mode)
    return report


# --------------------------------------------------------------------------------------------------------------
# Summaries and the visual report
# --------------------------------------------------------------------------------------------------------------


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


def _write_summaries(
    report: BatchReport, base: CompositionConfig, model_spec: str, image_size, mode: str
) -> dict[str, Path]:
    """Write summary.csv, summary.json, contact_sheet.png and report.html; return their paths."""
    out = report.out
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in SUMMARY_FILES.items()}
    _write_csv(report, paths["csv"])
    summary = _summary(report, base, model_spec, image_size, mode)
    paths["json"].write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    _write_visual_report(report, summary, paths["sheet"], paths["html"])
    return paths


def _write_csv(report: BatchReport, path: Path) -> None:
    """One row per sample: status, metrics of the result and of the cut-and-paste (``cp_``), cache hits, time."""
    header = ["id", "status", "this_run", "reason", "mode", "prompt"]
    header += list(METRIC_COLUMNS) + ["cp_" + c for c in METRIC_COLUMNS]
    header += ["invert_cached_bg", "invert_cached_ref", "unet_calls", "sample_evals", "seconds"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for outcome in report.outcomes:
            r = outcome.record
            metrics, cached = r.get("metrics", {}), r.get("invert_cached", {})
            row = [r.get("id"), r.get("status"), outcome.action, r.get("reason") or "", r.get("mode"), r.get("prompt")]
            row += [_fmt(v, 6) for v in _flat_metrics(metrics.get("result")).values()]
            row += [_fmt(v, 6) for v in _flat_metrics(metrics.get("cut_and_paste")).values()]
            row += [cached.get("background", ""), cached.get("reference", "")]
            row += [r.get("unet_calls", ""), r.get("sample_evals", ""), _fmt(r.get("timings", {}).get("total"), 4)]
            writer.writerow(row)


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


def _write_visual_report(report: BatchReport, summary: dict, sheet_path: Path, html_path: Path) -> None:
    """The contact sheet (one row per composed sample) and the self-contained HTML page."""
    from tficon.run.report import SheetRow, contact_sheet, html_report

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
    contact_sheet(rows).save(sheet_path)

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
    html_path.write_text(page)


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

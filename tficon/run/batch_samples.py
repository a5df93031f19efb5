"""Samples of a batch: discovery in folders laid out like the official TF-ICON ``inputs/`` tree, the files a
sample must hold, its fingerprint (what its outputs depend on) and the order to compose in.

The layout, the differences from the official discovery loop and the outputs are described in
:mod:`tficon.run.batch`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from tficon.core import io
from tficon.core.config import CompositionConfig

__all__ = [
    "IMAGE_SUFFIXES", "ROLES", "DOMAIN_MODES", "OUTPUT_FILES", "RECORD_FILE", "BatchSample", "role_of",
    "prompt_from_folder", "mode_from_path", "discover_samples", "check_sample_files", "composition_order",
    "fingerprint",
]  # fmt: skip

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
#: Relative aspect-ratio difference above which two images of one sample count as mismatched (the library's).
ASPECT_TOLERANCE = io.ASPECT_TOLERANCE


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


def _not_utf8(text: str) -> bool:
    """Whether a name read from the file system was not valid UTF-8 (Python decodes such bytes as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escaped_name(text: str) -> str:
    """A file-system name that is not valid UTF-8, its bad bytes written as ``\\xff`` (printable, writable)."""
    return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def discover_samples(root: str | os.PathLike, mode: str = "auto", *, exclude: Iterable[Path] = ()) -> list[BatchSample]:
    """Every sample folder under ``root`` (``root`` itself included), sorted by id.

    A folder is a sample when it holds at least one file with a role (``role_of``). ``mode`` is ``"auto"``
    (from a ``cross_domain`` / ``same_domain`` folder above, else ``"cross"``), ``"cross"`` or ``"same"``.
    Folders in ``exclude`` (e.g. the output folder) are not entered.

    Reported as samples with a ``problem`` (so they are skipped with the reason, and the summaries name them):
    a folder whose name is not valid UTF-8 (its id is the escaped name, ``bad\\xffname``), and a symbolic link
    to a folder, which is not followed: one leading out of ``root`` is not the batch's to read, and one inside it
    leads to a folder that is composed under its own name (following it would compose it twice, or loop).
    """
    if mode not in ("auto", "cross", "same"):
        raise ValueError(f"mode must be 'auto', 'cross' or 'same', got {mode!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"batch root {str(root)!r} is not a folder; pass the folder holding the sample folders")
    skip = {Path(p).resolve() for p in exclude}
    real_root = root.resolve()
    samples = []
    for folder, subfolders, filenames in os.walk(root):
        folder_path = Path(folder)
        kept = []
        for name in sorted(subfolders):
            path = folder_path / name
            if name.startswith(".") or path.resolve() in skip:
                continue
            if path.is_symlink():
                samples.append(_linked_folder(path, root, real_root))
                continue
            kept.append(name)
        subfolders[:] = kept
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
        relative = folder_path.relative_to(root).as_posix()
        if _not_utf8(relative) or _not_utf8(folder_path.resolve().name):
            shown = escaped_name(relative if relative != "." else folder_path.resolve().name)
            problem = "the folder name is not valid UTF-8 (the prompt is the folder name); rename it to its prompt"
            samples.append(_reported(shown, folder_path, problem + " in UTF-8"))
            continue
        prompt = prompt_from_folder(folder_path.resolve().name)
        if not prompt:
            # The official loop would compose with "" without a word; an empty prompt is a naming mistake.
            problems.append(
                f"the folder name {folder_path.resolve().name!r} gives an empty prompt (the prompt is the folder "
                "name, underscores read as spaces); rename the folder to the prompt"
            )
        sample_id = relative if relative != "." else escaped_name(root.resolve().name)
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


def _linked_folder(path: Path, root: Path, real_root: Path) -> BatchSample:
    """A symbolic link to a folder, reported (not followed; see ``discover_samples``)."""
    target = path.resolve()
    relative = escaped_name(path.relative_to(root).as_posix())
    if _within(target, real_root):
        inside = escaped_name(target.relative_to(real_root).as_posix())
        where = "the batch root" if inside == "." else repr(inside)
        problem = (f"a symbolic link to {where}, inside the batch root: not followed (that folder is composed under "
                   "its own name)")
    else:
        problem = (f"a symbolic link to {escaped_name(str(target))!r}, outside the batch root: not followed; copy the "
                   "folder in or run the batch on its parent")
    return _reported(relative, path, problem)


def _reported(sample_id: str, folder: Path, problem: str) -> BatchSample:
    """A folder that cannot be a sample, kept so that the batch skips it with ``problem`` as the reason."""
    return BatchSample(id=sample_id, folder=folder, prompt="", mode="cross", mode_source="not read", problem=problem)


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


def file_digest(path: Path) -> str:
    """The sha1 of a file's content; an unreadable file gets a marker (reading it later names the problem)."""
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError as error:
        return f"unreadable: {error.strerror}"


def fingerprint(sample: BatchSample, config: CompositionConfig, model_spec: str, image_size) -> str:
    """What a finished sample's outputs depend on: settings, model, working size, prompt and input contents."""
    payload = {
        "config": dataclasses.asdict(config),
        "model": model_spec,
        "image_size": image_size,
        "prompt": sample.prompt,
        "files": {role: file_digest(path) for role, path in sorted(sample.files.items()) if path.is_file()},
        "problem": sample.problem,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def composition_order(samples: list[BatchSample]) -> list[BatchSample]:
    """The order to compose in: samples sharing a background (same file content and mode) next to each other,
    groups in order of their first sample, samples in their given order. The inversion cache (a small LRU in
    the batch's engine) then still holds a background's inversion when the next sample needs it. A sample without a
    background file is its own group."""
    group_of: list[int] = []
    first_seen: dict[tuple, int] = {}
    for index, sample in enumerate(samples):
        path = sample.files.get("background")
        digest = file_digest(path) if path is not None and path.is_file() else f"none:{sample.id}"
        group_of.append(first_seen.setdefault((sample.mode, digest), index))
    order = sorted(range(len(samples)), key=lambda i: (group_of[i], i))
    return [samples[i] for i in order]


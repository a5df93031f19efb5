"""Small run-time checks shared by the Session and the tools around it: numerical health and names.

Kept apart from the Session so that its step code calls one function per check and the messages live in one
place. Every error names what failed (step, branch, argument) and what to do about it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import torch

__all__ = ["NonFiniteError", "check_step_finite", "check_finite", "check_names", "inversion_check"]


class NonFiniteError(FloatingPointError):
    """A latent or image became NaN or infinite. ``step`` and ``branch`` say where (None when unknown).

    An inversion's failure has ``step`` None (no composition step ran), ``branch`` the inverted image
    ("background", "cut-and-paste" or "reference") and ``inversion_step`` the inversion's step (1-based; 0: its
    input latent)."""

    def __init__(
        self, message: str, *, step: int | None = None, branch: str | None = None, inversion_step: int | None = None
    ):
        super().__init__(message)
        self.step = step
        self.branch = branch
        self.inversion_step = inversion_step


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def _likely_cause(dtype: torch.dtype | None) -> str:
    if dtype == torch.float16:
        return (
            "likely cause: float16 overflow; load the model in float32 (or bfloat16), "
            "e.g. tficon.load_model(spec, dtype=torch.float32)"
        )
    return (
        "likely cause: the UNet returned NaN/inf (a damaged checkpoint, a custom attention processor, or "
        "extreme settings such as a huge guidance); check the model with a plain text-to-image run"
    )


def check_step_finite(record, *, dtype: torch.dtype | None = None) -> None:
    """Raise ``NonFiniteError`` when a branch of step ``record.s`` holds a NaN/inf latent or evaluation.

    ``record`` is a ``StepRecord``; every field holding a trajectory (an object with ``state``) is checked: its
    latent and, when evaluated, its newest data prediction. Called before the record is stored, so the Session
    stays at the last good step.
    """
    named = []
    for item in dataclasses.fields(record):
        track = getattr(record, item.name)
        state = getattr(track, "state", None)
        if state is None:
            continue
        named.append((item.name, "latent", state.x))
        if getattr(track, "evaluated", False) and state.d_hist:
            named.append((item.name, "UNet evaluation (x0 estimate)", state.d_hist[-1]))
    # One host read for the whole step (on a GPU each read waits for the queue to drain); only a failing step
    # looks at its tensors one by one to name the branch.
    if not named or bool(torch.stack([torch.isfinite(t).all() for _, _, t in named]).all()):
        return
    branch, what = next((branch, what) for branch, what, tensor in named if not _finite(tensor))
    last_good = f"step {record.s - 1}" if record.s > 0 else "before step 0 (after the inversions)"
    raise NonFiniteError(
        f"step {record.s}: the {branch} branch's {what} contains NaN or inf values; the run stopped "
        f"and the Session stays at its last good state ({last_good}). {_likely_cause(dtype)}",
        step=record.s,
        branch=branch,
    )


def check_finite(tensor: torch.Tensor, what: str, *, step: int | None = None, dtype: torch.dtype | None = None) -> None:
    """Raise ``NonFiniteError`` naming ``what`` (and ``step``) when ``tensor`` holds NaN or inf values."""
    if not _finite(tensor):
        where = f" (step {step})" if step is not None else ""
        raise NonFiniteError(f"{what}{where} contains NaN or inf values; {_likely_cause(dtype)}", step=step)


def inversion_check(names: Sequence[str], steps: int, *, dtype: torch.dtype | None = None) -> Callable:
    """A ``tficon.core.solver`` callback for an inversion of a batch whose row ``i`` inverts image ``names[i]``:
    it raises ``NonFiniteError`` naming the image and the inversion step as soon as a row turns NaN or inf.

    The check is one host read per step (all rows at once); only a failing step looks at rows one by one.
    Call it once with ``index`` 0 on the input latents to name a non-finite VAE encoding before any UNet work.
    """

    def check(index: int, t, x: torch.Tensor) -> None:
        if _finite(x):
            return
        bad = (~torch.isfinite(x.flatten(1)).all(dim=1)).tolist()
        name = names[bad.index(True)]
        where = (
            f"its input latent (the VAE encoding of the {name})" if index == 0
            else f"its latent after inversion step {index} of {steps}"
        )  # fmt: skip
        raise NonFiniteError(
            f"the {name} inversion failed: {where} contains NaN or inf values; nothing was kept in the inversion "
            f"cache, so a re-run inverts it again. {_likely_cause(dtype)}",
            branch=name,
            inversion_step=index,
        )

    return check


def check_names(given: Iterable[str] | None, available: Iterable[str], *, name: str) -> None:
    """Raise ``ValueError`` when ``given`` holds names outside ``available`` (None: nothing to check)."""
    if given is None:
        return
    if isinstance(given, str):
        raise TypeError(f"{name} must be a list of names, got the string {given!r}; write [{given!r}]")
    available = list(available)
    unknown = [g for g in given if g not in available]
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; available: {available}")


def check_mask_sizes(images: dict, object_mask, mask_or_box, working_size: tuple[int, int]) -> None:
    """Apply ``tficon.core.io.check_mask_size`` to the object mask (against the foreground) and to the user mask
    (against the background, or the working size) of a Session's inputs. Boxes are not masks: skipped."""
    from tficon.core import io

    foreground, background = images["foreground"], images["background"]
    shape = io.mask_shape(object_mask)
    if shape is not None:
        io.check_mask_size(shape, (foreground.height, foreground.width), name="foreground_mask", image_name="foreground")
    shape = io.mask_shape(mask_or_box)
    if shape is not None:
        io.check_mask_size(
            shape,
            (background.height, background.width),
            name="mask_or_box (the user mask)",
            image_name="background",
            working_size=working_size,
        )

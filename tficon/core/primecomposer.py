"""PrimeComposer's released code as a strategy of the one Session: its preset and the latent formulas of its steps.

PrimeComposer (ACM MM 2024) forked TF-ICON's code. What its released sampler computes (docs/strategies.md §4.3)
differs from TF-ICON's step in four places, each a plan flag (``tficon.core.plan.primecomposer_step_plan``) read by
one operation of the step's phases (``tficon.composition.phases``); the tensor maths of those operations is here, as
pure functions of explicit latents:

- both inversion trajectories are kept (:class:`KeptInversions`), and no background or reference branch runs;
- the "correlation diffuser" is TF-ICON's pseudo-cross pass conditioned on the prompt, run on a reference canvas that
  takes the generation's latent on the object (:func:`paste_on_reference`); only its rows and columns are injected;
- after each early step the latent is reset to the kept background with the canvas on the object
  (:func:`hold_object`), later only outside the box (:func:`kept_blend`);
- the warm-up's history blend puts the kept background's entries, noisy latents, into the stored data predictions
  outside the box (:func:`kept_history_blend`).

All blends take whole values from one side or the other (the segmentation is 0/1), so the released code's
``a * seg + b * (1 - seg)`` is written ``torch.where``: the same values, without rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "PRIMECOMPOSER_DESCRIPTION",
    "PRIMECOMPOSER_SOURCE",
    "KeptInversions",
    "hold_object",
    "kept_blend",
    "kept_history_blend",
    "paste_on_reference",
    "primecomposer_changes",
    "released_prompt",
    "released_token_positions",
]

PRIMECOMPOSER_SOURCE = (
    "CodeGoat24/PrimeComposer at ff602b2 (scripts/main.py, ldm/models/diffusion/dpm_solver/sampler.py)"
)
PRIMECOMPOSER_DESCRIPTION = (
    "PrimeComposer's released code: correlation-diffuser rows/columns, background from the inversion trajectory, "
    "object held until tau_c (no region-constrained cross-attention: the released code applies none)"
)


def primecomposer_changes() -> dict:
    """The ``CompositionConfig`` changes of the ``primecomposer`` preset: the strategy and the defaults of the released
    ``scripts/main.py`` (``--dpm_steps 20 --dpm_order 2 --scale 2.5 --tau_a 0.4 --tau_b 0.8 --seed 3407``; tau_c is
    the sampler's default 0.2, which the script does not pass). The guidance is not forced per domain."""
    return {
        "strategy": "primecomposer",
        "steps": 20,
        "order": 2,
        "guidance": 2.5,
        "tau_a": 0.4,
        "tau_b": 0.8,
        "tau_c": 0.2,
        "seed": 3407,
    }


def released_prompt(prompt: str) -> str:
    """The text the released code encodes for the prompt: every ``" <ref>"`` removed (its markers of the object's
    words, ``a painting of a <ref> red dog <ref>`` -> ``a painting of a red dog``). The word list the markers give
    feeds only the region-constrained cross-attention, which the released code never applies."""
    return prompt.replace(" <ref>", "")


def released_token_positions(prompt: str) -> tuple[int, ...]:
    """The object's token positions as the released code finds them for its region-constrained cross-attention: the
    prompt split on whitespace, and the indices of the words after its first ``<ref>`` (or ``<ref>,``) up to the
    next one, used directly as positions of the encoder's tokens (``ldm/modules/encoders/modules.py``).

    ``a painting of a <ref> red dog <ref>`` -> (5, 6): the first marker takes the place of the start token, so these
    are the tokenizer's positions when every word before the object and in it is one token, and other tokens when a
    word splits into several (``tficon.model.token_positions`` asks the tokenizer instead). Only the first marked
    phrase counts, as in the released code; () when the prompt marks none."""
    positions, inside = [], False
    for i, word in enumerate(prompt.split()):
        if word in ("<ref>", "<ref>,"):
            if inside:
                break
            inside = True
            continue
        if inside:
            positions.append(i)
    return tuple(positions)


@dataclass(frozen=True)
class KeptInversions:
    """Both inversion records as the released code keeps them, and the windows its blends move latents between.

    ``background`` / ``reference``: entry i is what the released code reads at sampling grid index i: its inversion
    list reversed, which holds the latents at t_0..t_{S-k} (t_0 = the inverted latent x_T) and, in its last k entries,
    the inversion's warm-up *data predictions* (read only when a bound reaches past S - k, e.g. tau_b > 1).
    ``target`` / ``ref_box``: (row slice, column slice) of the latent target box and of the reference box;
    ``sigma``: the object's 0/1 segmentation over the reference box, (h, w) float32, broadcastable to a latent window.
    """

    background: tuple[torch.Tensor, ...]
    reference: tuple[torch.Tensor, ...]
    target: tuple[slice, slice]
    ref_box: tuple[slice, slice]
    sigma: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.background) != len(self.reference):
            raise ValueError(
                f"background and reference records must have the same length, got {len(self.background)} and "
                f"{len(self.reference)}"
            )

    @property
    def on_object(self) -> torch.Tensor:
        """Bool mask of the object over the box window (sigma == 1)."""
        return self.sigma > 0.5


def paste_on_reference(kept: KeptInversions, canvas: torch.Tensor, generation: torch.Tensor) -> torch.Tensor:
    """The edited reference canvas: ``canvas`` (the reference record at t_s) with, inside the reference box where
    sigma = 1, the generation's latent taken from the target box:

        canvas'[ref box] = where(sigma, generation[target box], canvas[ref box]);  canvas' = canvas elsewhere.
    """
    out = canvas.clone()
    window = out[(..., *kept.ref_box)]
    out[(..., *kept.ref_box)] = torch.where(kept.on_object, generation[(..., *kept.target)], window)
    return out


def hold_object(kept: KeptInversions, background: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """The tau_c phase's latent: the kept background at t_s everywhere, except inside the target box where
    sigma = 1, which takes the reference canvas's reference-box window:

        x[target box] = where(sigma, canvas[ref box], background[target box]);  x = background elsewhere.
    """
    out = background.clone()
    target = (..., *kept.target)
    out[target] = torch.where(kept.on_object, canvas[(..., *kept.ref_box)], background[target])
    return out


def kept_blend(inside: torch.Tensor, generation: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The tau_b phase's latent: the generation inside the target box, the kept background at t_s outside it."""
    return torch.where(inside, generation, background)


def kept_history_blend(
    inside: torch.Tensor, d_hist: tuple[torch.Tensor, ...], background: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """The released warm-up blend: the generation's stored data predictions D_0..D_{k-1} keep their values inside the
    target box and take ``background[0..k-1]`` outside it. Those entries are the kept background *latents* at
    t_0..t_{k-1} (noisy latents standing in for data predictions; TF-ICON uses the background branch's data
    predictions here). ``d_hist``: the last k data predictions, oldest first."""
    return tuple(torch.where(inside, d, b) for d, b in zip(d_hist, background[: len(d_hist)]))

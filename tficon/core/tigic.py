"""TIGIC's released code as a strategy of the one Session: its preset, its step fractions and its logit mixes.

TIGIC (ECCV 2024) forked TF-ICON's code. What its released ``run.py`` computes (docs/strategies.md §4.6) differs from
TF-ICON's step in what the branches are conditioned on and in how the generation's self-attention is steered:

- the **latents**: the pixel collage (TF-ICON's cut-and-paste) is inverted with the empty prompt E(''), the reference
  canvas with the user's (subject) prompt E(subject); the exceptional prompt is never used. The generation starts
  from TF-ICON's cross construction on those two inversions;
- three **branches** advance on every step, all from the collage's inversion: ``background`` (TIGIC's "orig",
  conditioned on E('')), ``reference`` (TIGIC's "ref", conditioned on E(subject)) and the generation (classifier-free
  guidance, E(subject) against E(''));
- in every **decoder** self-attention the generation's whole conditional pre-softmax map is mixed 50/50 with the
  background branch's and then 50/50 with the reference branch's, at hard-coded step fractions
  (:func:`mixing_weights`); there is no box, no segmentation and no pseudo-cross pass;
- after each main-loop step the generation takes the background branch's latent outside the box.

The plans are ``tficon.core.plan.tigic_step_plan``; the attention maths is
``tficon.composition.tigic_attention``; the latents (collage encoding, prompted inversions) are
``tficon.composition.tigic_latents``.
"""

from __future__ import annotations

__all__ = [
    "BACKGROUND_WINDOW",
    "BLEND_UNTIL",
    "REFERENCE_WINDOW",
    "TIGIC_DESCRIPTION",
    "TIGIC_GUIDANCE",
    "TIGIC_SOURCE",
    "mixing_weights",
    "tigic_changes",
]

TIGIC_SOURCE = (
    "TIGIC, ECCV 2024; zrealli/TIGIC at c7c1fd3 (run.py, ldm/models/diffusion/dpm_solver/sampler.py, "
    "ptp_scripts/ptp_utils_ori.py)"
)
TIGIC_DESCRIPTION = (
    "TIGIC's released code: the collage inverted with '' and the reference with the prompt, three branches, the "
    "generation's decoder self-attention logits mixed 50/50 with the background's and the reference's"
)

#: The released ``--scale`` default (README run line: 3.5); not forced per domain.
TIGIC_GUIDANCE = 3.5

#: The hard-coded step fractions of the released sampler, read as bounds ``int(f * S + 1 - k)``:
#: reference mix on threshold(0.2) <= s <= threshold(0.5) (and every warm-up evaluation),
#: background mix on threshold(0.0) < s < threshold(0.5), background blend on s < threshold(1.0).
REFERENCE_WINDOW = (0.2, 0.5)
BACKGROUND_WINDOW = (0.0, 0.5)
BLEND_UNTIL = 1.0


def tigic_changes() -> dict:
    """The released ``run.py`` defaults as ``CompositionConfig`` changes (``--dpm_steps 20 --dpm_order 2 --scale 3.5
    --seed 42``); ``--tau_a`` / ``--tau_b`` are parsed and never read. The ``tigic`` preset sets only the strategy (the
    guidance None means 3.5 under it); the seed is listed here for reference, a CPU generator cannot reproduce the
    released script's CUDA draws anyway."""
    return {"strategy": "tigic", "steps": 20, "order": 2, "guidance": TIGIC_GUIDANCE, "seed": 42}


def mixing_weights(background: bool, reference: bool) -> tuple[float, float, float]:
    """The weights (generation, background, reference) of the mixed conditional logits

        L <- 0.5 L_background + 0.5 L        (background mix, first)
        L <- 0.5 L_reference  + 0.5 L        (reference mix, second)

    so with both on L = 0.25 L_gen + 0.25 L_background + 0.5 L_reference; (1, 0, 0) when neither is on."""
    a, b, c = 1.0, 0.0, 0.0
    if background:
        a, b = 0.5 * a, 0.5
    if reference:
        a, b, c = 0.5 * a, 0.5 * b, 0.5
    return a, b, c

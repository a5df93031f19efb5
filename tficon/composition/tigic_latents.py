"""The latents of strategy "tigic": TIGIC's released code encodes the pixel collage and inverts it with the empty
prompt, and inverts the reference canvas with the prompt (docs/strategies.md §4.6).

Two small functions, the variant of the Session's encode and invert phases for that strategy (the start latent is
TF-ICON's cross construction, ``tficon.composition.start.start_latent``, on these two inversions):

- :func:`encode_collage`: the VAE posterior samples of the collage (TF-ICON's cut-and-paste) and of the reference, with
  the released code's draw order: collage, background, reference (the background's latent feeds only an inversion the
  released code never reads, so only its draw is kept), then the start latent's two box noises;
- :func:`prompted_inversions`: both inversions through ``Engine.invert`` (cached by content and embedding), each with
  its own text conditioning instead of the exceptional prompt.
"""

from __future__ import annotations

import torch

__all__ = ["encode_collage", "latent_recipe", "prompted_inversions"]


def latent_recipe(strategy: str, text: str) -> tuple:
    """What a Session's encoded latents and inversions depend on besides its images, steps, order and seed: the
    exceptional prompt (strategies "tf-icon", "primecomposer"), or under "tigic" the text the reference is inverted
    with (a prompt change then means new inversions)."""
    return ("tigic", text) if strategy == "tigic" else ("exceptional",)


def encode_collage(engine, inputs, seed: int):
    """``(z_collage, z_reference, generator state after the draws)``: the collage and the reference canvas encoded
    with one generator seeded ``seed``. Between the two, the draw the released code spends on the background's
    posterior sample (one float32 standard normal of the latent's shape, as ``tficon.model.vae.encode_image`` draws
    it) is drawn and dropped, so the start latent's noises are the draws that follow it there."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z_collage = engine.encode(inputs.cut_and_paste[None], generator)
        torch.randn((1, *z_collage.shape[1:]), generator=generator, device=generator.device, dtype=torch.float32)
        z_reference = engine.encode(inputs.reference[None], generator)
    return z_collage, z_reference, generator.get_state()


def prompted_inversions(engine, z_collage, z_reference, steps: int, order: int, *, empty, prompt, time_ids=None,
                        progress: bool = False):  # fmt: skip
    """Invert the collage with ``empty`` (E('')) and the reference with ``prompt`` (E(prompt)), each on its own (the
    released code inverts them one at a time). ``time_ids``: SDXL's (collage, reference) added time ids, or None.
    Returns ``((x_collage, x_reference), (cached, cached), sample-evaluations spent)``."""
    results, cached, evals = [], [], 0
    for i, (z, embedding, name) in enumerate(((z_collage, empty, "collage"), (z_reference, prompt, "reference"))):
        (x,), (hit,), spent = engine.invert(
            [z], steps, order, embedding=embedding, progress=progress, names=(name,),
            time_ids=None if time_ids is None else [time_ids[i]],
        )  # fmt: skip
        results.append(x)
        cached.append(hit)
        evals += spent
    return tuple(results), tuple(cached), evals

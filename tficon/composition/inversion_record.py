"""Inversion that keeps its record: the released PrimeComposer code reads its inversions back at every grid point.

:func:`invert_keeping_records` runs the same batched exceptional-prompt inversion as ``Engine.invert`` (same batch,
same model function, same solver path, so its x_T is bitwise ``Engine.invert``'s) and keeps, per latent, the list
the released code keeps: the inversion's k warm-up data predictions D(u_0..u_{k-1}), then the latents at
u_k..u_S, reversed into sampling order (entry i belongs to sampling grid index i; entry 0 is x_T). Records are cached
in the engine's inversion cache under their own keys, so an inversion is computed once per engine (x_T also under
``Engine.invert``'s key, so a TF-ICON Session on the same engine and images reuses it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tficon.core import checks, solver
from tficon.core import placement as placement_mod
from tficon.core.primecomposer import KeptInversions

__all__ = ["invert_keeping_records", "kept_inversions", "record_order"]


def record_order(data_predictions: Sequence[torch.Tensor], latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The released inversion list in sampling order: ``[D(u_0), .., D(u_{k-1}), x(u_k), .., x(u_S)]`` reversed."""
    return list(reversed([*data_predictions, *latents]))


def invert_keeping_records(
    engine,
    latents: Sequence[torch.Tensor],
    steps: int,
    order: int,
    *,
    time_ids: Sequence[torch.Tensor] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[list[tuple[torch.Tensor, ...]], int]:
    """Invert clean latents (each (1, C, h, w)) together with the exceptional prompt and keep each one's record.

    Returns (one record per latent: a tuple of S + 1 float32 (1, C, h, w) tensors in sampling order, see the module
    docstring; sample-evaluations spent, 0 on a cache hit). A NaN/inf raises ``tficon.core.checks.NonFiniteError``
    naming the image and the step, and nothing is cached."""
    embedding, latent_keys = engine._inversion_keys(latents, steps, order, None, time_ids)
    keys = [("record",) + key for key in latent_keys]
    cached = [engine.inversions.get(key) for key in keys]
    if all(c is not None for c in cached):
        return [tuple(c.unbind(0)) for c in cached], 0
    n = len(latents)
    batch = torch.cat(list(latents)).float()
    names = [f"latent {i}" for i in range(n)] if names is None else list(names)
    check = checks.inversion_check(names, steps, dtype=engine.dtype)
    check(0, None, batch)
    grid = solver.time_grid(steps, ascending=True, device=batch.device)
    at_grid = {0: batch}  # the latents the solver reached, by ascending grid index
    outputs: list[torch.Tensor] = []  # raw outputs of the first `order` evaluations (the warm-up)
    model_fn = engine.model_fn(embedding)

    def recording(x, model_t):
        out = model_fn(x, model_t)
        if len(outputs) < order:
            outputs.append(out)
        return out

    def landed(index, t, x):
        check(index, t, x)
        at_grid[index] = x

    solver.invert(
        recording, batch, engine.schedule, steps, order, prediction_type=engine.model.prediction_type, callback=landed
    )
    # The solver's own data predictions at u_0..u_{k-1}, recomputed from the same values with the same function.
    d_warm = [
        solver.to_data_prediction(out, at_grid[j], grid[j].expand(n), engine.schedule, engine.model.prediction_type)
        for j, out in enumerate(outputs)
    ]
    records = []
    for i in range(n):
        record = record_order([d[i : i + 1] for d in d_warm], [at_grid[j][i : i + 1] for j in range(order, steps + 1)])
        records.append(tuple(x.clone() for x in record))
        engine.inversions.put(keys[i], torch.stack(records[-1]))
        engine.inversions.put(latent_keys[i], record[0])  # x_T, bitwise Engine.invert's: a TF-ICON Session reuses it
    return records, steps * n


def kept_inversions(records, placement, object_mask, vae_scale_factor: int) -> KeptInversions:
    """The :class:`~tficon.core.primecomposer.KeptInversions` of a placement: the two records (background,
    reference), the latent target and reference boxes, and the object's segmentation over the reference box (taken
    as the start latent takes it, ``tficon.composition.start``)."""
    background, reference = (tuple(r) for r in records)
    target, ref_box = placement.latent_target_box, placement.latent_ref_box
    seg = placement_mod.segmentation_at(object_mask, vae_scale_factor, placement.geometry)
    sigma = torch.from_numpy(np.ascontiguousarray(seg[ref_box.slices()])).to(background[0])
    return KeptInversions(background, reference, target.slices(), ref_box.slices(), sigma)

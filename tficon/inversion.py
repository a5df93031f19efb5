"""Stage A: DPM-Solver++ inversion of a clean latent with the exceptional prompt, cached.

The exceptional embedding is used as both conditional and unconditional embedding officially, so
classifier-free guidance has no effect and one unguided evaluation per step is exact (spec 6).
Each image is inverted in its own batch-of-one calls: CPU and GPU kernels may round differently
for different batch sizes, and a cached inversion must be bitwise the one a fresh run computes.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

import torch

from . import solver

_CACHE_SIZE = 16
# One small LRU per UNet module, dropped with the module.
_caches: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()


def _key(z0: torch.Tensor, steps: int, order: int, embedding: torch.Tensor) -> tuple:
    digest = hashlib.sha1()
    for tensor in (z0, embedding):
        digest.update(str((tuple(tensor.shape), tensor.dtype, tensor.device)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest(), steps, order


def noise_schedule(model) -> solver.NoiseSchedule:
    """The continuous-time schedule of a loaded model (cached on the model object)."""
    cached = getattr(model, "_tficon_noise_schedule", None)
    if cached is None:
        cached = solver.NoiseSchedule.from_scheduler_config(model.scheduler_config)
        model._tficon_noise_schedule = cached
    return cached


def invert_latent(model, z0: torch.Tensor, steps: int, order: int, *, progress: bool = False, counter=None):
    """Invert ``z0`` (1, C, h, w) to t = 1 with the exceptional prompt; returns (x_T, was_cached).

    ``counter`` (optional) is called with the batch size of every UNet call, for evaluation counts.
    """
    embedding = model.exceptional_embedding()
    cache = _caches.setdefault(model.unet, OrderedDict())
    key = _key(z0, steps, order, embedding)
    if key in cache:
        cache.move_to_end(key)
        return cache[key].clone(), True

    schedule = noise_schedule(model)

    def model_fn(x, model_t):
        if counter is not None:
            counter(x.shape[0])
        return model.unet(x, model_t, encoder_hidden_states=embedding.expand(x.shape[0], -1, -1)).sample

    with torch.no_grad():
        x_T = solver.invert(
            model_fn, z0, schedule, steps, order, prediction_type=model.prediction_type, progress=progress
        )
    cache[key] = x_T.clone()
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return x_T, False

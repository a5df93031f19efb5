"""TALE's adaptive latent normalisation: AdaIN of a region of a latent toward another latent's statistics.

TALE (Pham et al., ACM MM 2024) moves the placed object's latent toward the background's per-channel statistics on the
first steps after its later start, so that an object from another domain takes the background's tone and contrast
before its details settle. The composition runs it as an operation of the step (``tficon.composition.phases``,
``plan.latent_norm``); this module is its maths, a pure tensor function.
"""

from __future__ import annotations

import torch

__all__ = ["adaptive_latent_normalization"]


def adaptive_latent_normalization(
    x: torch.Tensor,
    region: torch.Tensor,
    target: torch.Tensor,
    weight: float = 1.0,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``x`` with its ``region`` moved toward ``target``'s per-channel statistics (a new tensor; inputs untouched).

    ``x``: a latent (1, C, h, w); ``region``: a bool (h, w) map; ``target``: a latent (1, C, h', w') whose every
    position counts. For each channel c, with mu and sd the mean and (unbiased) standard deviation,

        mu_r, sd_r = mu(x[c] on region), sd(x[c] on region)
        mu_t, sd_t = mu(target[c]),      sd(target[c])
        y[c]       = (x[c] - mu_r) / max(sd_r, eps) * sd_t + mu_t
        out[c]     = x[c] + weight * (y[c] - x[c])   on the region,   x[c] elsewhere.

    With ``weight = 1`` the region's per-channel mean and standard deviation become the target's (up to float
    rounding, when sd_r > eps). Statistics and arithmetic are float32 whatever the dtype of ``x`` (the result has the
    dtype of ``x``). A region of fewer than two positions has no standard deviation: ``x`` is returned unchanged.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one latent (1, C, h, w), got shape {tuple(x.shape)}")
    if target.dim() != 4 or target.shape[:2] != x.shape[:2]:
        raise ValueError(f"target must be a latent (1, {x.shape[1]}, h, w) like x, got shape {tuple(target.shape)}")
    if region.dtype != torch.bool or tuple(region.shape) != tuple(x.shape[-2:]):
        shape = tuple(x.shape[-2:])
        raise ValueError(f"region must be a bool map of shape {shape}, got {region.dtype} {tuple(region.shape)}")
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    region = region.to(x.device)
    if int(region.sum()) < 2 or float(weight) == 0.0:
        return x.clone()
    xf = x.float()
    inside = xf[0][:, region]  # (C, n): the region's values per channel
    mean_r, std_r = inside.mean(dim=1), inside.std(dim=1)
    flat_t = target.float().to(x.device).flatten(2)[0]  # (C, h' w')
    mean_t, std_t = flat_t.mean(dim=1), flat_t.std(dim=1)
    normalised = (inside - mean_r[:, None]) / std_r.clamp_min(eps)[:, None] * std_t[:, None] + mean_t[:, None]
    out = xf.clone()
    out[0][:, region] = inside + float(weight) * (normalised - inside)
    return out.to(x.dtype)

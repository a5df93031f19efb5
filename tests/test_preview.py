"""Latent previews on the toy model: a linear latent-to-RGB map fitted on a session's inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tficon import load_model
from tficon.composition.preview import fit_latent_rgb_map, latent_to_rgb
from tficon.core import io
from tficon.toy.world import render_scene


def test_fitted_map_previews_unseen_toy_images_better_than_their_mean_colour():
    model = load_model("toy")
    fit = torch.stack([io.image_to_tensor(render_scene(seed)[0]) for seed in range(100, 104)])
    rgb_map = fit_latent_rgb_map(model, fit)
    errors, baseline = [], []
    for seed in range(8):
        x = io.image_to_tensor(render_scene(seed)[0])[None]
        with torch.no_grad():
            z = model.vae.encode(x).latent_dist.mean * model.latent_scaling
        preview = latent_to_rgb(z, rgb_map)
        target = (F.avg_pool2d(x, model.vae_scale_factor)[0] + 1) / 2
        assert preview.shape == target.shape and preview.min() >= 0 and preview.max() <= 1
        errors.append((preview - target).abs().mean())
        baseline.append((target - target.mean((1, 2), keepdim=True)).abs().mean())
    assert torch.stack(errors).mean() < 0.6 * torch.stack(baseline).mean()

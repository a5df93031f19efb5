"""The command line's geometry check before the model loads.

Loading takes seconds for the toy model and minutes for Stable Diffusion, so a box that is too small, too large or
off the image must be refused first. The placement depends on three numbers of the model (its working size, its
VAE's factor and its UNet's number of resolutions), and those are in the model folder's ``config.json`` files:
they are read here without loading any weights, and the placement is computed by the very function the Session
calls (``tficon.core.placement.compute_placement``). A model whose configs are not on disk yet (a hub id not in
the cache, a single checkpoint file) is checked after loading, as before.
"""

from __future__ import annotations

import json
from pathlib import Path


def model_geometry(spec: str) -> tuple[int, int, int] | None:
    """``(image_size, vae_factor, levels)`` of the model ``spec`` from its folder's configs, or None when they
    cannot be read without loading (a hub id, a checkpoint file, a broken folder: loading reports those)."""
    from tficon.model.load import TOY_MODEL_DIR

    folder = TOY_MODEL_DIR if spec == "toy" else Path(spec).expanduser()
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        overrides_file = folder / "tficon.json"
        overrides = json.loads(overrides_file.read_text(encoding="utf-8")) if overrides_file.is_file() else {}
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        levels = len(unet["block_out_channels"])
        size = overrides.get("image_size") or int(unet["sample_size"]) * factor
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(size, int) or size <= 0:
        return None
    return size, factor, levels


def check_geometry_before_loading(spec: str, size, background, foreground, object_mask, target, config) -> bool:
    """Raise the Session's own ValueError for a working size or placement it would refuse; True when checked,
    False when the model's geometry is unknown before loading.

    ``size``: ``--size`` (a side or ``(H, W)``, None for the model's); ``target``: the user mask at the background's
    size (``--mask``, or ``--box`` drawn as a mask); ``object_mask``: the loaded foreground mask."""
    from tficon.core import checks, io
    from tficon.core.placement import compute_placement

    geometry = model_geometry(spec)
    if geometry is None:
        return False
    native, factor, levels = geometry
    size = native if size is None else size
    working = (size, size) if isinstance(size, int) else tuple(size)
    io.check_image_size(working, factor * 2 ** (levels - 1), name="image_size")
    images = {"background": background, "foreground": foreground}
    checks.check_mask_sizes(images, object_mask, target, working)
    compute_placement(
        target, foreground.size, working, factor, box_rule=config.box_rule, clip=config.clip_box, levels=levels
    )
    return True

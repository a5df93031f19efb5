"""An object mask proposed from the generation's own cross-attention (in the spirit of Add-it's attention masks).

Where does the generation put the object? Its conditional cross-attention to the object's words says so: for each
chosen step the step's UNet call is recomputed from the record before it (the Session's records are not changed;
``Session.capture_attention`` works the same way), and every cross-attention layer keeps the conditional row's
probabilities to the object's tokens, averaged over heads and tokens (an N-vector per layer, nothing N x N;
``tficon.composition.cross_attention.CrossAttentionRecord``). Then

    A = mean over steps and layers (those at most ``max_factor`` times coarser than the finest attention grid)
        of upsample_bilinear(a_layer, latent grid)
    heat = (A - min A) / (max A - min A)
    mask = the 4-connected region of {heat >= threshold} holding the hottest point, repeated to the working size

:func:`object_attention_map` returns ``heat`` (latent resolution); :func:`propose_object_mask` the bool mask at the
Session's working size, which ``Session(mask_or_box=...)`` / ``Session.update(mask_or_box=...)`` accept back as the
user mask (one region, so that the official first-contour rule reads its box). The coarse layers' maps are
blurred and often elsewhere (on the toy model the 8x8 and 4x4 layers miss the object the 16x16 layers find), so by
default only the finest cross-attention layers (``max_factor=1``) are averaged. With region-constrained cross-attention on, the maps are those the generation used (constrained).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import torch

from tficon.composition.attention_masks import attention_heat, connected_region
from tficon.composition.cross_attention import CrossAttentionRecord
from tficon.core.prompt_markers import object_spans, plain_prompt
from tficon.model.token_positions import object_token_positions, object_token_positions_of

__all__ = ["object_attention_map", "propose_object_mask"]


def _tokens(session, words: str | None) -> tuple[int, ...]:
    if words is None:
        return object_token_positions_of(session.model, session.prompt, session.config.object_words, "the mask proposal")
    if not isinstance(words, str) or not words.split():
        raise ValueError(f"words must be words of the prompt (a non-empty string) or None, got {words!r}")
    return object_token_positions(session.model, object_spans(plain_prompt(session.prompt), words))


def _steps(session, steps: Iterable[int] | None) -> list[int]:
    chosen = list(range(session.steps)) if steps is None else [steps] if isinstance(steps, int) else list(steps)
    if not chosen:
        raise ValueError("steps is empty: give the steps whose attention to average (0..steps-1), or None for all")
    for s in chosen:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < session.steps:
            raise ValueError(f"steps with a UNet call are 0..{session.steps - 1}, got {s!r}")
        if s > len(session.records):
            raise ValueError(f"step {s} is not reachable yet: run(until={s}) first (or run() the Session)")
    return chosen


def object_attention_map(
    session, words: str | None = None, *, steps: Iterable[int] | None = None, max_factor: int = 1
) -> torch.Tensor:
    """The object's cross-attention heat map at latent resolution, (h, w) float32 in [0, 1] (module docstring).

    ``words``: words of the prompt (default: its ``<ref>`` marked words, else the ``object_words`` setting);
    ``steps``: the steps to average (default every step with a UNet call; each must be reachable: its record before
    it exists); ``max_factor``: average the layers whose grid is at most this many times coarser than the finest
    cross-attention grid (1: the finest layers only)."""
    if isinstance(max_factor, bool) or not isinstance(max_factor, int) or max_factor < 1:
        raise ValueError(f"max_factor must be an integer >= 1 (1: the finest layers only), got {max_factor!r}")
    tokens = _tokens(session, words)
    chosen = _steps(session, steps)
    controller = session._ensure_controller()
    latent = controller.latent_size
    maps = []
    for s in chosen:
        record = CrossAttentionRecord(tokens=tokens)
        plan, previous, inputs = session._step_request(s)
        with session._threads():
            session.engine.run_step(plan, previous, dataclasses.replace(inputs, cross_record=record))
        maps += [values for layer_maps in record.maps.values() for values in layer_maps]
    if not maps:
        raise RuntimeError("no cross-attention layer was recorded: does this model's UNet have attn2 layers?")
    heat = attention_heat(maps, controller.resolution, latent, max_factor=max_factor)
    if heat is None:
        raise ValueError("the object's cross-attention is flat over the image: no region stands out to propose")
    return heat


def propose_object_mask(
    session,
    words: str | None = None,
    *,
    steps: Iterable[int] | None = None,
    threshold: float = 0.5,
    max_factor: int = 1,
) -> np.ndarray:
    """A bool (H, W) mask at the Session's working size: the connected region around the hottest point where the
    object's cross-attention heat is at least ``threshold`` (in (0, 1]); pass it back as ``mask_or_box``. Other
    arguments as :func:`object_attention_map`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1] of the normalised heat map, got {threshold!r}")
    heat = object_attention_map(session, words, steps=steps, max_factor=max_factor)
    height, width = session.image_size
    lh, lw = heat.shape
    if height % lh or width % lw:
        raise ValueError(f"the working size {height}x{width} is not a multiple of the latent grid {lh}x{lw}")
    hottest = divmod(int(heat.argmax()), lw)
    mask = connected_region(heat >= threshold, hottest).numpy()
    return np.repeat(np.repeat(mask, height // lh, axis=0), width // lw, axis=1)

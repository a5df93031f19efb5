"""Reading a composition in the toy world: which object came out, drawn in which domain, where, and how well the
rest of the image was kept.

- :func:`object_style`: the domain (flat, outline, striped, pencil) an object is drawn in, read from the pixels
  inside its detected silhouette with a nearest-centroid rule whose centroids come from rendered ground truth;
- :func:`placed_centroid`: where the pipeline put the object (the object mask's centroid in the cut-and-paste),
  the reference for the found object's position;
- :func:`background_reconstruction`: the background's exceptional-prompt inversion sampled back and decoded,
  what TF-ICON's background blending and injection aim to preserve;
- :func:`score_composition`: all of it for one composed case (a :class:`PairResult`).

The figures over many cases (``python -m training.toy.composition_quality``) and the notebooks read compositions
with these.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from tficon.eval.pixel import psnr
from tficon.toy.detector import FOREGROUND_DISTANCE, DetectedObject, detect
from tficon.toy.world import COLOURS, DOMAINS, SHAPES, render_object

__all__ = [
    "TAU_A_CHANGE",
    "object_style",
    "PairResult",
    "background_reconstruction",
    "placed_centroid",
    "score_composition",
]

TAU_A_CHANGE = (0.4, 0.7)  # tau_a before and after, for the "does the main control act" figure


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def _core(mask: np.ndarray) -> np.ndarray:
    """The deeper half of ``mask``: the pixels at least half the mask's largest erosion depth from its edge.

    Relative, not a fixed number of pixels: the outline domain's edge stroke is a few pixels wide whatever the
    object's size, so a fixed erosion leaves a small outline circle mostly stroke and it read as striped or
    flat. The deeper half of any outline object big enough to have a hole is bare paper."""
    layers = [mask]
    while True:
        eroded = _erode(layers[-1], 1)
        if not eroded.any():
            break
        layers.append(eroded)
    return layers[len(layers) // 2]


def _style_features(image: np.ndarray, obj: DetectedObject, background_rgb) -> np.ndarray:
    """Per-object style features, roughly size-independent: ink fraction of the silhouette's core
    (the edge stroke eroded away: ~1 flat, ~0 outline, in between for stripes and hatching), and the
    mean saturation and brightness of the inked pixels (pencil is desaturated and darker)."""
    rgb = image.astype(np.float32) / 255.0
    drawn = np.linalg.norm(image.astype(np.float32) - np.asarray(background_rgb, np.float32), axis=2) > FOREGROUND_DISTANCE
    interior = _core(obj.mask)
    inked = obj.mask & drawn
    maxc, minc = rgb.max(2), rgb.min(2)
    saturation = np.where(maxc > 0, (maxc - minc) / np.maximum(maxc, 1e-6), 0)
    ink = float((interior & drawn).sum()) / int(interior.sum())
    sat = float(saturation[inked].mean()) if inked.any() else 0.0
    val = float(maxc[inked].mean()) if inked.any() else 1.0
    return np.array([ink, sat, val])


@functools.lru_cache(maxsize=None)
def _style_centroids() -> dict[str, np.ndarray]:
    """Feature centroids of each domain, from rendered single objects (ground truth)."""
    feats: dict[str, list[np.ndarray]] = {d: [] for d in DOMAINS}
    for domain in DOMAINS:
        for shape in SHAPES:
            for colour in COLOURS:
                image, _ = render_object(shape, colour, domain, size=14.0)
                array = np.asarray(image)
                det = detect(array)
                if det.dominant is not None:
                    feats[domain].append(_style_features(array, det.dominant, det.background_rgb))
    return {d: np.mean(v, 0) for d, v in feats.items() if v}


def object_style(image, obj: DetectedObject, background_rgb) -> str:
    """The domain an object is drawn in (flat fill, outline, stripes, pencil), nearest centroid."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    features = _style_features(array, obj, background_rgb)
    centroids = _style_centroids()
    return min(centroids, key=lambda d: float(np.linalg.norm(features - centroids[d])))


@dataclass(frozen=True)
class PairResult:
    name: str
    found: bool  # an object centred inside the target window
    colour_ok: bool
    shape_ok: bool
    style: str | None  # the domain the composed object is drawn in
    background_domain: str
    centroid_offset_px: float | None  # distance of the found object's centroid from the placed object's
    psnr_outside: float  # dB, result vs the background reconstruction, outside the target window
    psnr_outside_background: float  # dB, result vs the background image itself, outside the target window
    tau_a_change: float | None  # mean |pixel change| in [0, 1] when tau_a goes 0.4 -> 0.7

    @property
    def harmonised(self) -> bool:
        return self.found and self.style == self.background_domain


def background_reconstruction(session) -> torch.Tensor:
    """Decode of the background's exceptional-prompt inversion sampled back (what blending keeps).

    With a later start (TALE) the inversion stops at the start's grid point t', so it is sampled back from t' over
    the steps that run; sampling it from t = 1 would treat a half-noised latent as pure noise."""
    from tficon.core import solver
    from tficon.core.plan import start_index

    engine, model = session.engine, session.model
    x_bg, _ = session.invert()
    config = session.config
    t_start = float(solver.time_grid(config.steps)[start_index(config)])  # 1.0 without a later start
    z = solver.sample(
        engine.model_fn(model.exceptional_embedding()), x_bg, engine.schedule, session.steps, config.order,
        prediction_type=model.prediction_type, t_start=t_start,
    )
    return session.decode(z)[0]


def _psnr_outside(a: torch.Tensor, b: torch.Tensor, window) -> float:
    """PSNR of two (3, H, W) images in [-1, 1] over the pixels outside ``window`` (mapped to [0, 1])."""
    keep = torch.ones(a.shape[-2:], dtype=torch.bool)
    keep[window.slices()] = False
    return psnr(((a + 1) / 2)[:, keep][:, None], ((b + 1) / 2)[:, keep][:, None])


def placed_centroid(session, size: tuple[int, int]) -> tuple[float, float]:
    """``(x, y)`` of the object's centroid where the pipeline puts it: the object mask (on the reference canvas)
    moved from the reference window to the target window, in an image of PIL ``size``."""
    inputs = session.inputs
    place = inputs.placement
    rows, cols = np.nonzero(inputs.object_mask > 0.5)
    height, width = inputs.object_mask.shape
    x = cols.mean() + place.target_window.left - place.ref_window.left
    y = rows.mean() + place.target_window.top - place.ref_window.top
    return float(x * size[0] / width), float(y * size[1] / height)


def score_composition(session, case, *, tau_a_effect: bool = True) -> PairResult:
    """Score the composition of ``case`` that ``session`` (built on the case's sample) makes; with ``tau_a_effect``
    the Session is then updated to the second tau_a of ``TAU_A_CHANGE`` to measure how much that changes."""
    from tficon.core import io

    sample = case.sample
    result = session.result
    window = session.placement.target_window
    det = detect(np.asarray(result))
    inside = [o for o in det.objects if window.top <= o.centre[1] < window.bottom and window.left <= o.centre[0] < window.right]
    obj = max(inside, key=lambda o: o.area) if inside else None
    centre = placed_centroid(session, result.size)
    decoded = io.image_to_tensor(result)
    background = io.image_to_tensor(sample.background.convert("RGB").resize(result.size))
    change = None
    if tau_a_effect:
        session.update(tau_a=TAU_A_CHANGE[1])
        changed = io.image_to_tensor(session.result)
        change = float(((changed - decoded).abs() / 2).mean())
    colour, shape, bg_domain = case.colour, case.shape, case.background_domain
    return PairResult(
        name=sample.name,
        found=obj is not None,
        colour_ok=obj is not None and obj.colour == colour,
        shape_ok=obj is not None and obj.shape == shape,
        style=None if obj is None else object_style(result, obj, det.background_rgb),
        background_domain=bg_domain,
        centroid_offset_px=None if obj is None else float(np.hypot(obj.centre[0] - centre[0], obj.centre[1] - centre[1])),
        psnr_outside=_psnr_outside(decoded, background_reconstruction(session), window),
        psnr_outside_background=_psnr_outside(decoded, background, window),
        tau_a_change=change,
    )

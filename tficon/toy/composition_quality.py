"""The paper's cross-domain claim in miniature, measured on the toy model.

For fixed cross-domain pairs (an object from one domain pasted into a scene of another), compose with
TF-ICON's defaults and ask of each result:

- is there an object inside the target box, of the foreground's colour and shape?
- is it drawn in the BACKGROUND's domain (a flat star pasted into an outline scene should become an
  outline star)? The object-level domain is read from the pixels inside the detected silhouette,
  with a nearest-centroid rule whose centroids come from rendered ground truth (``object_style``);
- how well is the rest of the image kept: PSNR outside the box against the background's own
  reconstruction (exceptional-prompt inversion then sampling, decoded), the quantity TF-ICON's
  background blending and injection aim to preserve.

``python -m tficon.toy.composition_quality`` prints the figures; tests keep them from regressing.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass

import numpy as np
import torch

from tficon.metrics import psnr
from tficon.toy.detector import FOREGROUND_DISTANCE, DetectedObject, detect
from tficon.toy.world import COLOURS, DOMAINS, SHAPES, ObjectSpec, render_object

# (foreground domain, background domain, shape, colour, scene object): every domain appears on both sides.
PAIRS: tuple[tuple[str, str, str, str, ObjectSpec], ...] = (
    ("flat", "outline", "star", "red", ObjectSpec("square", "blue", (18.0, 32.0), 11.0)),
    ("flat", "striped", "circle", "blue", ObjectSpec("triangle", "yellow", (18.0, 32.0), 11.0)),
    ("flat", "pencil", "square", "yellow", ObjectSpec("circle", "red", (18.0, 32.0), 11.0)),
    ("outline", "flat", "triangle", "green", ObjectSpec("star", "red", (18.0, 32.0), 11.0)),
    ("outline", "striped", "square", "red", ObjectSpec("circle", "green", (18.0, 32.0), 11.0)),
    ("striped", "flat", "star", "blue", ObjectSpec("circle", "yellow", (18.0, 32.0), 11.0)),
    ("striped", "outline", "circle", "green", ObjectSpec("square", "red", (18.0, 32.0), 11.0)),
    ("pencil", "flat", "square", "red", ObjectSpec("triangle", "blue", (18.0, 32.0), 11.0)),
    ("pencil", "outline", "triangle", "yellow", ObjectSpec("star", "green", (18.0, 32.0), 11.0)),
    ("outline", "pencil", "star", "blue", ObjectSpec("square", "yellow", (18.0, 32.0), 11.0)),
)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask


def _style_features(image: np.ndarray, obj: DetectedObject, background_rgb) -> np.ndarray:
    """Per-object style features, roughly size-independent: ink fraction of the silhouette's interior
    (the edge stroke eroded away: ~1 flat, ~0 outline, in between for stripes and hatching), and the
    mean saturation and brightness of the inked pixels (pencil is desaturated and darker)."""
    rgb = image.astype(np.float32) / 255.0
    drawn = np.linalg.norm(image.astype(np.float32) - np.asarray(background_rgb, np.float32), axis=2) > FOREGROUND_DISTANCE
    interior = _erode(obj.mask, max(2, round(image.shape[0] / 32)))
    if not interior.any():
        interior = obj.mask
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
    psnr_outside: float  # dB, result vs the background reconstruction, outside the target window

    @property
    def harmonised(self) -> bool:
        return self.found and self.style == self.background_domain


def background_reconstruction(session) -> torch.Tensor:
    """Decode of the background's exceptional-prompt inversion sampled back (what blending keeps)."""
    from tficon import solver

    engine, model = session.engine, session.model
    x_bg, _ = session.invert()
    z = solver.sample(
        engine.model_fn(model.exceptional_embedding()), x_bg, engine.schedule, session.steps, session.config.order,
        prediction_type=model.prediction_type,
    )
    return session.decode(z)[0]


def evaluate_pair(model, pair, **config) -> PairResult:
    from tficon import io
    from tficon.samples import toy_sample
    from tficon.session import Session

    fg_domain, bg_domain, shape, colour, scene_object = pair
    sample = toy_sample(bg_domain, fg_domain, shape, colour, scene_object)
    session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                      mode=sample.mode, **config)
    result = session.result
    window = session.placement.target_window
    det = detect(np.asarray(result))
    inside = [o for o in det.objects if window.top <= o.centre[1] < window.bottom and window.left <= o.centre[0] < window.right]
    obj = max(inside, key=lambda o: o.area) if inside else None
    recon = background_reconstruction(session)
    decoded = io.image_to_tensor(result)
    keep = torch.ones(decoded.shape[-2:], dtype=torch.bool)
    keep[window.slices()] = False
    return PairResult(
        name=sample.name,
        found=obj is not None,
        colour_ok=obj is not None and obj.colour == colour,
        shape_ok=obj is not None and obj.shape == shape,
        style=None if obj is None else object_style(result, obj, det.background_rgb),
        background_domain=bg_domain,
        # pixels outside the window, images mapped from [-1, 1] to [0, 1]
        psnr_outside=psnr(((decoded + 1) / 2)[:, keep][:, None], ((recon + 1) / 2)[:, keep][:, None]),
    )


def composition_scores(model, pairs=PAIRS, **config) -> tuple[dict[str, float], list[PairResult]]:
    results = [evaluate_pair(model, pair, **config) for pair in pairs]
    n = len(results)
    scores = {
        "object_in_box": sum(r.found for r in results) / n,
        "in_background_domain": sum(r.harmonised for r in results) / n,
        "colour_kept": sum(r.colour_ok for r in results) / n,
        "shape_kept": sum(r.shape_ok for r in results) / n,
        "psnr_outside_box_db": float(np.mean([r.psnr_outside for r in results])),
    }
    return scores, results


def style_accuracy() -> float:
    """Accuracy of ``object_style`` on rendered ground truth at another size than its centroids."""
    hits = total = 0
    for domain in DOMAINS:
        for shape in SHAPES:
            for colour in COLOURS:
                image, _ = render_object(shape, colour, domain, size=10.0)
                det = detect(np.asarray(image))
                if det.dominant is None:
                    total += 1
                    continue
                hits += object_style(image, det.dominant, det.background_rgb) == domain
                total += 1
    return hits / total


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from tficon.models import load_model

    model = load_model(args.model)
    print(f"object-style classifier accuracy on rendered ground truth: {style_accuracy():.3f}")
    scores, results = composition_scores(model)
    for r in results:
        print(f"  {r.name:40s} found={r.found!s:5s} colour={r.colour_ok!s:5s} shape={r.shape_ok!s:5s} "
              f"style={r.style or '-':8s} (want {r.background_domain:8s}) psnr_outside={r.psnr_outside:5.1f} dB")
    for key, value in scores.items():
        print(f"{key}: {value:.3f}")
    return scores


if __name__ == "__main__":
    main()

"""The paper's cross-domain claim in miniature, measured on the toy model.

For fresh cross-domain cases drawn from a seed (``tficon.toy.pairs``: an object from one domain composed into
a scene of another, every ordered domain pair, every shape and colour, boxes of several sizes, off-centre and
near edges), compose with TF-ICON's defaults and ask of each result:

- is there an object centred inside the target box, of the foreground's colour and shape, and how far is its
  centroid from where the pipeline placed the object (the object mask's centroid in the cut-and-paste)? That, not
  the box centre, is the reference: the foreground is cropped to the object's bounding box and resized into the
  box, so a perfectly placed triangle's centroid lies a sixth of the box height below the box centre (3.7 px in
  a 26 px box), a star's about 1 px.
- is it drawn in the BACKGROUND's domain (a flat star composed into an outline scene should become an
  outline star)? The object-level domain is read from the pixels inside the detected silhouette,
  with a nearest-centroid rule whose centroids come from rendered ground truth (``object_style``);
- how well is the rest of the image kept: PSNR outside the box against the background itself and against
  its own reconstruction (exceptional-prompt inversion then sampling, decoded), the quantity TF-ICON's
  background blending and injection aim to preserve;
- does TF-ICON's main control act: the mean pixel change when tau_a goes from 0.4 to 0.7 (a Session update,
  so only the affected steps are recomputed).

``python -m tficon.toy.composition_quality [--seed N] [--repeats R]`` prints the figures; tests keep them
from regressing.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass

import numpy as np
import torch

from tficon.eval.metrics import psnr
from tficon.toy.detector import FOREGROUND_DISTANCE, DetectedObject, detect
from tficon.toy.pairs import composition_cases
from tficon.toy.world import COLOURS, DOMAINS, SHAPES, ObjectSpec, render_object, render_spec

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
    """Decode of the background's exceptional-prompt inversion sampled back (what blending keeps)."""
    from tficon.core import solver

    engine, model = session.engine, session.model
    x_bg, _ = session.invert()
    z = solver.sample(
        engine.model_fn(model.exceptional_embedding()), x_bg, engine.schedule, session.steps, session.config.order,
        prediction_type=model.prediction_type,
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


def evaluate_case(model, case, *, tau_a_effect: bool = True, **config) -> PairResult:
    """Compose one ``tficon.toy.pairs.CompositionCase`` and score it (see the module docstring)."""
    from tficon.composition.session import Session

    sample = case.sample
    session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                      mode=sample.mode, **config)
    return score_composition(session, case, tau_a_effect=tau_a_effect)


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


def composition_scores(model, seed: int = 0, repeats: int = 2, **config) -> tuple[dict[str, float], list[PairResult]]:
    """Scores over ``12 * repeats`` fresh cases drawn from ``seed``: fractions, median offset, mean PSNRs."""
    results = [evaluate_case(model, case, **config) for case in composition_cases(seed, repeats)]
    n = len(results)
    offsets = [r.centroid_offset_px for r in results if r.centroid_offset_px is not None]
    changes = [r.tau_a_change for r in results if r.tau_a_change is not None]
    scores = {
        "cases": n,
        "object_in_box": sum(r.found for r in results) / n,
        "in_background_domain": sum(r.harmonised for r in results) / n,
        "colour_kept": sum(r.colour_ok for r in results) / n,
        "shape_kept": sum(r.shape_ok for r in results) / n,
        "median_centroid_offset_px": float(np.median(offsets)) if offsets else float("nan"),
        "psnr_outside_box_db": float(np.mean([r.psnr_outside for r in results])),
        "psnr_outside_box_vs_background_db": float(np.mean([r.psnr_outside_background for r in results])),
        "tau_a_change": float(np.mean(changes)) if changes else float("nan"),
    }
    return scores, results


#: Object sizes (half-extent, 64-px units) the style reader is checked at: those a composed object takes
#: (half the target box side, 10-17 px) and a smaller one.
STYLE_CHECK_SIZES = (7.0, 10.0, 12.0, 14.0, 17.0)


def style_accuracy(sizes=STYLE_CHECK_SIZES, seed: int = 0, roundtrip=None) -> dict[str, float]:
    """Accuracy of ``object_style`` on rendered ground truth, per domain: every shape and colour at each of
    ``sizes`` (other sizes than its centroids' 14), at centres drawn from ``seed``.

    ``roundtrip``: an optional function applied to each rendered PIL image before it is read, e.g.
    ``vae_roundtrip(model)``, to ask whether a model's VAE keeps each domain's look."""
    rng = np.random.default_rng(seed)
    accuracy = {}
    for domain in DOMAINS:
        hits = total = 0
        for size in sizes:
            for shape in SHAPES:
                for colour in COLOURS:
                    centre = tuple(float(v) for v in rng.uniform(size + 3, 61 - size, 2))
                    image = render_spec([ObjectSpec(shape, colour, centre, size)], domain)
                    if roundtrip is not None:
                        image = roundtrip(image)
                    det = detect(np.asarray(image))
                    hits += det.dominant is not None and object_style(image, det.dominant, det.background_rgb) == domain
                    total += 1
        accuracy[domain] = hits / total
    return accuracy


def vae_roundtrip(model):
    """A function PIL image -> PIL image: encode with ``model``'s VAE (posterior mean) and decode."""
    from tficon.core import io

    vae = model.vae

    def roundtrip(image):
        x = io.image_to_tensor(image)[None].to(vae.device, vae.dtype)
        with torch.no_grad():
            decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
        return io.to_pil(decoded[0].float().clamp(-1, 1).cpu())

    return roundtrip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--seed", type=int, default=0, help="seed the cases are drawn from")
    parser.add_argument("--repeats", type=int, default=2, help="cases per ordered domain pair (12 pairs)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from tficon.model import load_model

    model = load_model(args.model)
    accuracy = style_accuracy()
    print("object-style reader on rendered ground truth (sizes 7-17): "
          + "  ".join(f"{d} {a:.3f}" for d, a in accuracy.items()))
    scores, results = composition_scores(model, seed=args.seed, repeats=args.repeats)
    for r in results:
        offset = "-" if r.centroid_offset_px is None else f"{r.centroid_offset_px:4.1f}"
        print(f"  {r.name:42s} found={r.found!s:5s} colour={r.colour_ok!s:5s} shape={r.shape_ok!s:5s} "
              f"style={r.style or '-':8s} (want {r.background_domain:8s}) offset={offset:>4s} px "
              f"psnr_outside={r.psnr_outside:5.1f} dB tau_a_change={r.tau_a_change:.4f}")
    for key, value in scores.items():
        print(f"{key}: {value:.3f}")
    return scores


if __name__ == "__main__":
    main()

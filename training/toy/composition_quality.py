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
  with a nearest-centroid rule whose centroids come from rendered ground truth (``tficon.toy.reading.object_style``);
- how well is the rest of the image kept: PSNR outside the box against the background itself and against
  its own reconstruction (exceptional-prompt inversion then sampling, decoded), the quantity TF-ICON's
  background blending and injection aim to preserve;
- does TF-ICON's main control act: the mean pixel change when tau_a goes from 0.4 to 0.7 (a Session update,
  so only the affected steps are recomputed).

``python -m training.toy.composition_quality [--seed N] [--repeats R]`` prints the figures; tests keep them
from regressing. With ``--preset NAME`` (repeatable, or a comma list) the same cases are composed under each
named preset and compared, with a seam measure at the box border and each preset's cost
(``training.toy.preset_comparison``). One composition is read by ``tficon.toy.reading`` (the notebooks read
theirs with it too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tficon.toy.detector import detect
from tficon.toy.pairs import composition_cases
from tficon.toy.reading import PairResult, object_style, score_composition
from tficon.toy.world import COLOURS, DOMAINS, SHAPES, ObjectSpec, render_spec


def evaluate_case(model, case, *, tau_a_effect: bool = True, **config) -> PairResult:
    """Compose one ``tficon.toy.pairs.CompositionCase`` and score it (see the module docstring)."""
    from tficon.composition.session import Session

    sample = case.sample
    session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                      mode=sample.mode, **config)
    return score_composition(session, case, tau_a_effect=tau_a_effect)


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
    parser.add_argument("--preset", action="append", metavar="NAME",
                        help="compare presets on the same cases (repeatable, or a comma list: tf-icon,tale)")
    parser.add_argument("--cases", type=int, default=None,
                        help="with --preset: only the first N of the drawn cases (a quick look; default all)")
    parser.add_argument("--steps", type=int, default=None, help="with --preset: steps for every preset (default 20)")
    parser.add_argument("--out", type=Path, default=None,
                        help="with --preset: a JSON-lines file each composed case is appended to; a run given "
                             "the same file resumes (same seed and steps)")
    parser.add_argument("--markdown", action="store_true", help="with --preset: also print a markdown table")
    args = parser.parse_args(argv)
    presets = None
    if args.preset:
        from training.toy.preset_comparison import parse_presets

        try:
            presets = parse_presets(args.preset)
        except ValueError as error:
            parser.error(str(error))
    elif args.steps is not None or args.out is not None or args.markdown or args.cases is not None:
        parser.error("--cases, --steps, --out and --markdown go with --preset")
    if args.cases is not None and args.cases < 1:
        parser.error(f"--cases must be a positive number of cases, got {args.cases}")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from tficon.model import load_model

    model = load_model(args.model)
    accuracy = style_accuracy()
    print("object-style reader on rendered ground truth (sizes 7-17): "
          + "  ".join(f"{d} {a:.3f}" for d, a in accuracy.items()))
    if presets is not None:
        return _compare(model, presets, args)
    scores, results = composition_scores(model, seed=args.seed, repeats=args.repeats)
    for r in results:
        offset = "-" if r.centroid_offset_px is None else f"{r.centroid_offset_px:4.1f}"
        print(f"  {r.name:42s} found={r.found!s:5s} colour={r.colour_ok!s:5s} shape={r.shape_ok!s:5s} "
              f"style={r.style or '-':8s} (want {r.background_domain:8s}) offset={offset:>4s} px "
              f"psnr_outside={r.psnr_outside:5.1f} dB tau_a_change={r.tau_a_change:.4f}")
    for key, value in scores.items():
        print(f"{key}: {value:.3f}")
    return scores


def _compare(model, presets, args) -> dict:
    """``--preset``: every case under every preset (``training.toy.preset_comparison``), then the table."""
    from training.toy.preset_comparison import compare_presets, format_table, summarise

    cases = composition_cases(args.seed, args.repeats)[: args.cases]
    steps = "the default 20" if args.steps is None else args.steps
    print(f"seed {args.seed}: {len(cases)} fresh cross-domain cases ({args.repeats} per ordered domain pair"
          f"{'' if args.cases is None else f', the first {len(cases)} of them'}), "
          f"presets {', '.join(presets)}, steps {steps}, {args.threads} thread(s)")
    print("prompt: the placed object's words marked '<ref> red star <ref>' for every preset (read by "
          "primecomposer-rca and shine-blend; the others encode the prompt with the markers removed)")
    rows = compare_presets(model, cases, presets, seed=args.seed, steps=args.steps, out=args.out)
    summary = summarise(rows, presets, len(cases))
    base = "tf-icon" if "tf-icon" in presets else presets[0]
    print(f"seam: colour jump across the box border (2 px either side, placed object left out) minus the "
          f"background's, [0, 1] units, lower is better; evals: UNet sample-evaluations per case (inversions and "
          f"composition); CPU s: process CPU seconds per case to build and compose; x: ratio to {base}, measured "
          f"interleaved")
    print(format_table(summary))
    for name, figures in summary.items():
        print(f"{name}: seam {figures['seam']:+.4f} +- {figures['seam_stderr']:.4f} (standard error)")
    if args.markdown:
        print(format_table(summary, markdown=True))
    return summary


if __name__ == "__main__":
    main()

"""The ``tficon`` command line: ``demo``, ``compose`` and ``batch``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import CompositionConfig


def _box(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box must be four integers x,y,w,h (pixels), got {text!r}")
    return values


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = CompositionConfig()
    group = parser.add_argument_group("composition settings (defaults reproduce the official code)")
    group.add_argument("--mode", choices=("cross", "same"), default=None, help="default: cross (demo: from the sample)")
    group.add_argument("--steps", type=int, default=defaults.steps)
    group.add_argument("--order", type=int, choices=(1, 2, 3), default=defaults.order)
    group.add_argument("--tau-a", type=float, default=defaults.tau_a, help="foreground injection fraction")
    group.add_argument("--tau-b", type=float, default=defaults.tau_b, help="background blending fraction")
    group.add_argument("--tau-bg", type=float, default=defaults.tau_bg, help="background injection fraction")
    group.add_argument("--guidance", type=float, default=None, help="default: 5.0 cross, 2.5 same (official)")
    group.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads for torch (default: the free cores, at most one per core; see tficon/threads.py)",
    )  # fmt: skip


def _config(args, mode: str) -> CompositionConfig:
    return CompositionConfig(
        mode=args.mode or mode,
        steps=args.steps,
        order=args.order,
        guidance=args.guidance,
        tau_a=args.tau_a,
        tau_b=args.tau_b,
        tau_bg=args.tau_bg,
        seed=args.seed,
    )


def _load(spec: str):
    from .models import load_model

    return load_model(spec)


def _write_outputs(session, out: Path, json_path: Path | None, extra: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    session.result.save(out)
    summary = {**session.summary(), **extra, "output": str(out)}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2))
    print(
        f"wrote {out} ({session.image_size[1]}x{session.image_size[0]}); "
        f"{summary['sample_evals']} UNet sample-evaluations in {summary['unet_calls']} calls, "
        f"{summary['total_seconds']:.1f} s"
    )


def cmd_compose(args) -> int:
    from .session import Session

    started = time.perf_counter()
    model = _load(args.model)
    if (args.mask is None) == (args.box is None):
        raise SystemExit("give exactly one of --mask (a mask image) or --box x,y,w,h")
    session = Session(
        model,
        args.background,
        args.foreground,
        args.foreground_mask,
        args.mask if args.mask is not None else args.box,
        args.prompt,
        _config(args, "cross"),
        image_size=args.size,
        progress=not args.quiet,
    )
    session.run()
    _write_outputs(session, Path(args.out), args.json and Path(args.json), {"total_seconds": time.perf_counter() - started})
    return 0


def cmd_demo(args) -> int:
    from .samples import demo_sample, side_by_side
    from .session import Session
    from . import io

    started = time.perf_counter()
    model = _load(args.model)
    sample = demo_sample()
    print(f"model: {model.describe()}")
    print(f"sample: {sample.name}; prompt: {sample.prompt!r}")
    session = Session(
        model,
        sample.background,
        sample.foreground,
        sample.foreground_mask,
        sample.box,
        sample.prompt,
        _config(args, sample.mode),
        progress=not args.quiet,
    )
    session.run()
    out = Path(args.out)
    _write_outputs(session, out, args.json and Path(args.json), {"total_seconds": time.perf_counter() - started})
    inputs = session.inputs
    sheet = side_by_side(
        [io.to_pil(inputs.background), sample.foreground, io.to_pil(inputs.cut_and_paste), session.result],
        ["background", "foreground", "cut-and-paste", "tficon"],
    )
    sheet_path = out.with_name(out.stem + "_sheet.png")
    sheet.save(sheet_path)
    print(f"wrote {sheet_path} (background | foreground | cut-and-paste | result)")
    return 0


def cmd_batch(args) -> int:
    from .batch import run_batch

    # --mode here also takes "auto"; the shared settings are built without it and each sample gets its own mode.
    base = _config(argparse.Namespace(**{**vars(args), "mode": None}), "cross").replace(clip_box=args.clip_box)
    report = run_batch(
        args.root,
        args.out,
        model=args.model,
        mode=args.mode,
        config=base,
        image_size=args.size,
        force=args.force,
        limit=args.limit,
        progress=not args.quiet,
        perceptual=not args.pixel_metrics_only,
        lpips_weights=args.lpips_weights,
        clip_model=args.clip_model,
        allow_downloads=args.allow_downloads,
    )
    print(report.describe())
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tficon", description="TF-ICON training-free image composition on diffusers")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="compose the built-in cross-domain sample with the embedded toy model")
    demo.add_argument("--model", default="toy", help="model spec (default: the embedded toy model)")
    demo.add_argument("--out", default="tficon_demo.png", help="result image; a side-by-side sheet is written beside it")
    demo.add_argument("--json", default=None, help="write settings, timings and counts as JSON")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(demo)
    demo.set_defaults(func=cmd_demo)

    comp = sub.add_parser("compose", help="compose one foreground into one background")
    comp.add_argument("--model", default="toy", help='"toy", a hub id, a diffusers folder or a checkpoint file')
    comp.add_argument("--background", required=True)
    comp.add_argument("--foreground", required=True)
    comp.add_argument("--foreground-mask", required=True, help="object mask of the foreground (white = object)")
    comp.add_argument("--mask", default=None, help="user mask on the background: its bbox is the target box")
    comp.add_argument("--box", type=_box, default=None, help="target box x,y,w,h in working-image pixels")
    comp.add_argument("--prompt", required=True)
    comp.add_argument("--size", type=int, default=None, help="working image side in pixels (default: the model's)")
    comp.add_argument("--out", required=True)
    comp.add_argument("--json", default=None, help="write settings, timings and counts as JSON")
    comp.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(comp)
    comp.set_defaults(func=cmd_compose)

    # conflict_handler="resolve": the batch's own --mode (with "auto") replaces the one of _add_config_flags.
    batch = sub.add_parser(
        "batch",
        conflict_handler="resolve",
        help="compose every sample folder under ROOT (the official inputs/<domain>/<prompt>/ layout)",
        description="Compose every sample folder under ROOT, laid out like the official inputs/<domain>/<prompt>/ "
        "folders with bg*, fg*, fg*mask* and mask* images; the prompt is the folder name. Writes per-sample results, "
        "cut-and-paste, placement overlay and JSON, plus summary.csv/json, contact_sheet.png and report.html. "
        "Finished samples are skipped on a re-run unless --force.",
    )
    batch.add_argument("root", help="folder holding the sample folders (e.g. the official inputs/)")
    batch.add_argument("--out", required=True, help="output folder (one sub-folder per sample, summaries on top)")
    batch.add_argument("--model", default="toy", help='"toy", a hub id, a diffusers folder or a checkpoint file')
    batch.add_argument("--size", type=int, default=None, help="working image side in pixels (default: the model's)")
    batch.add_argument("--force", action="store_true", help="compose finished samples again")
    batch.add_argument("--limit", type=int, default=None, help="only the first N sample folders (sorted by path)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.add_argument(
        "--clip-box", action="store_true", help="move boxes that leave the image inside (else those samples are skipped)"
    )
    batch.add_argument("--lpips-weights", default=None, help="torchvision VGG16 weights file for LPIPS (VGG)")
    batch.add_argument("--clip-model", default=None, help="CLIP folder or cached hub id for the CLIP scores")
    batch.add_argument("--allow-downloads", action="store_true", help="let LPIPS/CLIP download missing weights")
    batch.add_argument("--pixel-metrics-only", action="store_true", help="MSE/PSNR/SSIM only: do not try LPIPS or CLIP")
    _add_config_flags(batch)
    batch.add_argument(
        "--mode",
        choices=("auto", "cross", "same"),
        default="auto",
        help="auto (default): from a cross_domain / same_domain folder above each sample, else cross",
    )
    batch.set_defaults(func=cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .threads import apply_threads, prepare_environment

    prepare_environment()  # before anything imports torch: OpenMP reads its wait policy only then
    args = build_parser().parse_args(argv)
    try:
        apply_threads(args.threads)
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"tficon {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

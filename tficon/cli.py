"""The ``tficon`` command line: ``demo``, ``compose``, ``batch`` and ``sweep``.

Exit codes: 0 success; 1 the run failed (a numerical failure; a batch with failed samples); 2 a usage or input
error (a bad flag value, a missing or unreadable file, a box that does not fit); 3 an output could not be written
(a full disk, a read-only folder, a name too long; a batch: some sample's or summary's files); 130 interrupted
(Ctrl-C); with ``batch --processes N``, 128 + n when one process was ended by signal n (137: ``kill -9``).
Errors are reported in one paragraph on stderr without a traceback.

Coordinates and sizes: ``--box x,y,w,h`` is in the background's own pixels (like ``--mask``, which is drawn on
the background); the composition runs at the working size (``--size``, default the model's) and the result is
saved at the background's own size unless ``--output-size working``; ``--paste-back [--feather PX]`` keeps the
original background outside the placed object's window (scaled to the background's size) grown by the feather. Input files are read and checked before the
model loads; the outputs of ``compose`` and ``demo`` are written to temporary files and renamed into place at the
end, so a failed or interrupted run leaves no partial output (a batch or a sweep saves each sample or cell as it is
done, its record last, and a re-run resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from tficon.cli_messages import _CONFIG_FLAGS, _FLAG_NAMES, Parser, Timer, describe_time, flag_message  # noqa: F401
from tficon.core.boxes import box_mask, parse_box_text
from tficon.core.config import SETTINGS, CompositionConfig
from tficon.run.files import AtomicFiles, WriteError
from tficon.run.processes import launched_by_processes

EXIT_RUN_FAILED, EXIT_USAGE, EXIT_WRITE_FAILED, EXIT_INTERRUPTED = 1, 2, 3, 130

def _box(text: str) -> tuple[int, int, int, int]:
    try:
        return parse_box_text(text, name="--box", unit="the background's pixels")
    except ValueError as error:  # argparse reports an ArgumentTypeError's own words
        raise argparse.ArgumentTypeError(str(error)) from None


def _size(text: str) -> int | tuple[int, int]:
    """``--size``: one integer (a square side) or ``W,H`` / ``WxH``; returns the side or ``(H, W)``."""
    parts = re.split(r"[x,X]", text.strip())
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) <= 0:
        raise argparse.ArgumentTypeError(f"--size must be a positive side (512) or W,H / WxH (768x512), got {text!r}")
    return values[0] if len(values) == 1 else (values[1], values[0])


def _setting_help(setting, override: str | None = None) -> str:
    """A setting's help line with its type, range and default, as ``--help`` shows it."""
    text = override or setting.help
    if setting.range is not None:
        kind = "integer" if isinstance(setting.default, int) else "number"
        low, high = (v if v is None or isinstance(v, int) else f"{v:g}" for v in setting.range)
        text += f" [{kind} >= {low}]" if high is None else f" [{kind} in {low}..{high}]"
    if setting.name == "mode":
        text += " (default: cross; demo: the sample's)"
    elif setting.default is not None and not setting.switch:  # switches: off is official, as the group says
        text += f" (default: {setting.default})"
    return text.replace("%", "%%")  # argparse formats help strings with %


def _add_config_flags(parser: argparse.ArgumentParser, **help_overrides: str) -> None:
    """One flag per setting (``tficon.core.config.SETTINGS``: numbers of their field's type, choices, parity
    switches as ``store_true``), then --threads and --dtype. ``help_overrides``: {field name: this command's help}."""
    group = parser.add_argument_group("composition settings (defaults reproduce the official code)")
    for setting in SETTINGS:
        help_text = _setting_help(setting, help_overrides.get(setting.name))
        # Every value flag defaults to None, "not given", so that explicit flags override a --preset's values
        # (config_from_args); mode: None = the command's own (cross; the demo's sample; batch: per folder).
        if setting.switch:  # can only switch on: off (False) is "not given"
            group.add_argument(setting.flag, dest=setting.name, action="store_true", help=help_text)
            continue
        kind = float if setting.name == "guidance" else type(setting.default)
        group.add_argument(
            setting.flag, dest=setting.name, type=kind, choices=setting.choices, default=None, help=help_text
        )
    _add_preset_flag(group)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads for torch (default: the free cores, at most one per core)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default=None,
        help="the model's precision (default: float16 on CUDA, else float32); the solver's arithmetic stays float32",
    )  # fmt: skip


def _add_preset_flag(group) -> None:
    """--preset NAME (``tficon.core.presets``): a named set of settings; explicit setting flags override it."""
    from tficon.core.presets import presets

    names = ", ".join(presets())
    group.add_argument(
        "--preset", default=None, metavar="NAME",
        help=f"start from a named preset ({names}; default: tf-icon, the official code); setting flags given "
        "explicitly override its values; docs/strategies.md describes them",
    )  # fmt: skip


def config_from_args(args, mode: str) -> CompositionConfig:
    """The ``CompositionConfig`` of parsed flags: the --preset's settings (default: the official ones), then every
    setting flag that was given (value flags default to None and switches to False, "not given"); ``mode`` when --mode
    was not given."""
    values = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    given = {name: v for name, v in values.items() if v is not None and v is not False}  # not "== False": 0 is given
    preset = getattr(args, "preset", None)
    base = CompositionConfig() if preset is None else CompositionConfig.preset(preset)
    return base.replace(**{"mode": mode, **given})


def _load(spec: str, dtype: str | None = None):
    from tficon.model import load_model

    return load_model(spec, dtype=dtype)


def _check_output_path(path: str | None, flag: str, *, image: bool, planned: set | None = None) -> Path | None:
    """Refuse an output path that cannot be written, before any work: a folder, a path below a regular file,
    a folder whose own folder is missing too (a mistyped path should not grow a tree), an unknown image format.
    Nothing is created here (the file's own folder is made, and named, when the outputs are written); ``planned``
    holds the folders that this command's earlier outputs will create (they count as existing; this one's is added)."""
    if path is None:
        return None
    from PIL import Image

    target = Path(path)
    try:
        target.exists()  # a name or path past the system's limits raises here
    except OSError as error:
        raise ValueError(f"{flag}: {str(target)!r} cannot be used ({error.strerror}); shorten the name") from None
    if target.is_dir():
        raise ValueError(f"{flag}: {str(target)!r} is a folder; give a file name inside it (e.g. {str(target / 'out.png')!r})")
    planned = set() if planned is None else planned
    for parent in target.parents:
        if parent in planned:
            break
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag}: {str(parent)!r} is a file, so {str(target)!r} cannot be created below it")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{flag}: the folder {str(parent)!r} is not writable")
            if parent != target.parent.parent and parent != target.parent:
                raise ValueError(
                    f"{flag}: the folder {str(target.parent.parent)!r} does not exist; tficon creates only the "
                    f"file's own folder ({target.parent.name!r}): create the folders above it first"
                )
            break
    planned.add(target.parent)
    if image and target.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{flag}: unknown image format {target.suffix or '(no suffix)'!r}; use a .png or .jpg file name")
    return target


def _write_outputs(
    session, out: Path, json_path: Path | None, extra: dict, *, background_size=None, more=(), paste_back: int | None = None
) -> None:
    """The result (at ``background_size`` = PIL (W, H) when given, else the working size; with ``paste_back`` = a
    feather in pixels, the composed window pasted onto the original background), the JSON summary and
    ``more`` = [(path, image)], all or nothing."""
    from tficon.core import io

    result = session.result
    pasted = {}
    if paste_back is not None:
        from tficon.composition.one_call import result_at_background_size

        result = result_at_background_size(session, paste_back=True, feather=paste_back)
        w = io.scale_window(session.placement.target_window, session.image_size, (result.height, result.width))
        pasted = {"paste_back": {"feather": paste_back, "window_xywh": [w.left, w.top, w.width, w.height]}}
    elif background_size is not None:
        result = io.resize_result(result, background_size)
    summary = {
        **session.summary(),
        **extra,
        "output": str(out),
        "output_size": list(result.size),
        **pasted,
        "working_size": [session.image_size[1], session.image_size[0]],
    }
    targets = [out, *(path for path, _ in more), *([json_path] if json_path is not None else [])]
    new_folders = sorted({str(path.parent) for path in targets if not path.parent.exists()})
    outputs = AtomicFiles()  # written all or nothing: temporary files renamed into place together
    try:
        outputs.image(out, result)
        for path, image in more:
            outputs.image(path, image)
        if json_path is not None:
            outputs.text(json_path, json.dumps(summary, indent=2))
        outputs.commit()
    except BaseException:
        outputs.discard()
        raise
    print(
        f"wrote {out} ({result.size[0]}x{result.size[1]}; composed at {session.image_size[1]}x{session.image_size[0]}); "
        f"{summary['sample_evals']} UNet sample-evaluations in {summary['unet_calls']} calls, {describe_time(summary)}"
        + "".join(f"\ncreated the folder {folder}" for folder in new_folders)
    )


def cmd_compose(args) -> int:
    from tficon.cli_checks import check_geometry_before_loading
    from tficon.composition.session import Session
    from tficon.core import io

    timer = Timer()
    if (args.mask is None) == (args.box is None):
        raise ValueError("give exactly one of --mask (a mask image) or --box x,y,w,h")
    # Everything the user typed is checked before the model loads (seconds to minutes for SD).
    config = config_from_args(args, "cross")
    if args.feather is not None and not args.paste_back:
        raise ValueError("--feather sets the ramp of --paste-back; add --paste-back (or drop --feather)")
    if args.paste_back and args.output_size == "working":
        raise ValueError("--paste-back pastes onto the background at its own size; drop --output-size working")
    if args.feather is not None and args.feather < 0:
        raise ValueError(f"--feather must be a non-negative number of pixels (0: a hard edge), got {args.feather}")
    folders: set = set()  # the folder --out will create counts as there for --json
    out = _check_output_path(args.out, "--out", image=True, planned=folders)
    json_path = _check_output_path(args.json, "--json", image=False, planned=folders)
    background = io.load_image(args.background, name="--background")
    foreground = io.load_image(args.foreground, name="--foreground")
    object_mask = io.load_mask(args.foreground_mask, name="--foreground-mask")
    if args.mask is not None:
        target = io.load_mask(args.mask, name="--mask")
    else:
        target = box_mask(args.box, background.size, name="--box")
    check_geometry_before_loading(args.model, args.size, background, foreground, object_mask, target, config)
    model = _load(args.model, args.dtype)
    timer.model_loaded()
    session = Session(
        model,
        background,
        foreground,
        args.foreground_mask,
        target,
        args.prompt,
        config,
        image_size=args.size,
        progress=not args.quiet,
    )
    session.run()
    _write_outputs(
        session,
        out,
        json_path,
        timer.fields(),
        background_size=background.size if args.output_size == "background" else None,
        paste_back=(8 if args.feather is None else args.feather) if args.paste_back else None,
    )
    return 0


def cmd_demo(args) -> int:
    from tficon.composition.session import Session
    from tficon.core import io
    from tficon import cli_demo
    from tficon.toy.samples import demo_sample

    timer = Timer()
    sample = demo_sample()
    config = config_from_args(args, sample.mode)
    folders: set = set()  # the folders the outputs will create, so that --save-inputs may sit in --out's
    out = _check_output_path(args.out, "--out", image=True, planned=folders)
    json_path = _check_output_path(args.json, "--json", image=False, planned=folders)
    saved = cli_demo.input_files(args.save_inputs, sample) if args.save_inputs else []
    for path, _ in saved:
        _check_output_path(str(path), "--save-inputs", image=True, planned=folders)
    model = _load(args.model, args.dtype)
    timer.model_loaded()
    print(f"model: {model.describe()}")
    print(f"sample: {sample.name}; prompt: {sample.prompt!r}")
    session = Session(
        model,
        sample.background,
        sample.foreground,
        sample.foreground_mask,
        sample.box,
        sample.prompt,
        config,
        progress=not args.quiet,
    )
    session.run()
    inputs = session.inputs
    sheet = cli_demo.sheet_with_box(
        [io.to_pil(inputs.background), sample.foreground, io.to_pil(inputs.cut_and_paste), session.result],
        ["background", "foreground", "cut-and-paste", "tficon"], {0, 2, 3}, sample.box, sample.background.size,
    )  # fmt: skip
    sheet_path = out.with_name(out.stem + "_sheet.png")
    _write_outputs(session, out, json_path, timer.fields(), more=[(sheet_path, sheet), *saved])
    print(f"wrote {sheet_path} (background | foreground | cut-and-paste | result; the green box: the target)")
    if saved:
        print(f"wrote the inputs to {args.save_inputs}: {', '.join(cli_demo.INPUT_NAMES)}")
    print(cli_demo.guidance(sheet_path, sample, args.save_inputs, config.mode))
    return 0


def cmd_batch(args) -> int:
    from tficon.run.batch import run_batch

    # --mode here also takes "auto"; the shared settings are built without it and each sample gets its own mode.
    base = config_from_args(argparse.Namespace(**{**vars(args), "mode": None}), "cross")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is a file; the batch writes a folder (one sub-folder per sample)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out: {str(parent)!r} is a file, so the folder {str(out)!r} cannot be created")
            break
    if args.processes is not None and args.processes < 1:
        raise ValueError(f"--processes must be a positive integer, got {args.processes}")
    if args.processes is not None and args.processes > 1 and not os.environ.get("WORLD_SIZE"):
        from tficon.run.processes import launch_processes

        return launch_processes(args.processes, args.argv)
    report = run_batch(
        args.root,
        args.out,
        model=args.model,
        dtype=args.dtype,
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
        batch_samples=args.batch_samples,
    )
    if report.paths or report.unwritten:  # under several processes only the main one merges and reports
        print(report.describe())
    if report.write_failed:
        return EXIT_WRITE_FAILED
    return EXIT_RUN_FAILED if report.failed else 0


def cmd_sweep(args) -> int:
    from tficon.run.sweeps import GridError, SweepInterrupted, SweepWriteError

    try:
        return _sweep(args)
    except GridError as error:  # its messages name grid parameters (tau_a), not flags: print them as they are
        print(f"tficon sweep: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (SweepInterrupted, SweepWriteError) as error:  # one line: what is on disk, and that a re-run resumes
        print(f"\ntficon sweep: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(error, SweepInterrupted) else EXIT_WRITE_FAILED


def _sweep(args) -> int:
    from tficon.cli_checks import check_geometry_before_loading
    from tficon.core import io
    from tficon.run.sweeps import GridError, parse_grid_option, run_sweep
    from tficon.toy.samples import demo_sample

    grid: dict = {}
    for option in args.grid or []:
        name, values = parse_grid_option(option)
        if name in grid:
            raise GridError(f"--grid {name} is given twice; list all its values in one --grid {name}=...")
        grid[name] = values
    if not grid:
        raise GridError("give at least one --grid name=v1,v2,... (e.g. --grid tau_a=0.2,0.4 --grid tau_b=0.5,0.8)")
    given = [args.background, args.foreground, args.foreground_mask, args.prompt]
    if args.demo:
        if any(v is not None for v in given) or args.mask is not None or args.box is not None:
            raise ValueError("--demo uses the built-in sample: leave out --background/--foreground/--mask/--box/--prompt")
        d = demo_sample()
        background, foreground, object_mask, prompt, target, mode = d.background, d.foreground, d.foreground_mask, d.prompt, d.box, d.mode
    else:
        if any(v is None for v in given):
            raise ValueError("give --background, --foreground, --foreground-mask and --prompt (or --demo)")
        if (args.mask is None) == (args.box is None):
            raise ValueError("give exactly one of --mask (a mask image) or --box x,y,w,h")
        background = io.load_image(args.background, name="--background")
        foreground = io.load_image(args.foreground, name="--foreground")
        io.load_mask(args.foreground_mask, name="--foreground-mask")
        object_mask, prompt, mode = args.foreground_mask, args.prompt, "cross"
        target = box_mask(args.box, background.size, name="--box") if args.mask is None else io.load_mask(args.mask, name="--mask")
    labels = None
    if "box" in grid:  # boxes in the background's own pixels, mapped like --box
        labels = {"box": [",".join(map(str, b)) for b in grid["box"]]}
        try:
            grid["box"] = [box_mask(b, background.size, name="--box") for b in grid["box"]]
        except ValueError as error:
            raise GridError(f"--grid box: {error}") from None
    config, out = config_from_args(args, mode), Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is a file; the sweep writes a folder")
    object_mask_array = io.load_mask(object_mask, name="--foreground-mask")
    for each in grid.get("box", [target]):  # every box's placement, before the model loads
        check_geometry_before_loading(args.model, args.size, background, foreground, object_mask_array, each, config)
    result = run_sweep(
        _load(args.model, args.dtype), background, foreground, object_mask, target, prompt, grid, config=config,
        image_size=args.size, out=out, value_labels=labels, progress=not args.quiet, batch_cells=args.batch_cells,
    )  # fmt: skip
    print(result.describe())
    print(f"wrote {out / 'grid.png'}, {out / 'cells.csv'}, {out / 'cells.json'}, {out / 'index.html'}")
    print("".join(f"tficon sweep: failed: {c.error}\n" for c in result.failed), end="", file=sys.stderr)
    return EXIT_RUN_FAILED if result.failed else 0  # the good cells are saved; a re-run computes the failed ones


def _batch_size(text: str):
    """--batch-samples / --batch-cells: a positive integer or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tficon", description="TF-ICON training-free image composition on diffusers",
        epilog="exit codes: 0 done; 1 numerical failure (a batch: some sample failed); 2 bad input or usage; 3 an "
        "output could not be written (full disk, read-only folder, name too long); 130 interrupted (Ctrl-C); "
        "batch --processes: 128+n when a process was ended by signal n",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="compose the built-in cross-domain sample with the embedded toy model")
    demo.add_argument("--model", default="toy", help="\"toy\" (the embedded model), a hub id, a diffusers folder or a checkpoint")
    demo.add_argument("--out", default="out/tficon_demo.png", help="result image; a side-by-side sheet is written beside it")
    demo.add_argument("--save-inputs", default=None, metavar="DIR", help="also write the sample's images into DIR")
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
    comp.add_argument(
        "--box", type=_box, default=None,
        help="target box x,y,w,h in the background's own pixels (mapped to the working size like a --mask drawn "
        "on the background)",
    )  # fmt: skip
    comp.add_argument("--prompt", required=True)
    comp.add_argument(
        "--size", type=_size, default=None,
        help="working size: a side (512) or W,H / WxH (768x512), multiples of the model's step (default: the model's)",
    )  # fmt: skip
    comp.add_argument(
        "--output-size", choices=("background", "working"), default="background",
        help="save the result at the background's own size (default; LANCZOS from the working size) or at the "
        "working size",
    )  # fmt: skip
    comp.add_argument(
        "--paste-back", action="store_true",
        help="keep the original background (at its own size) outside the object's window and paste the composed "
        "window onto it, with a feathered edge (--feather); the window is the placed object's, scaled from the "
        "working size to the background's",
    )  # fmt: skip
    comp.add_argument(
        "--feather", type=int, default=None, metavar="PX",
        help="with --paste-back: width of the linear ramp around the window, in the background's own pixels "
        "(default 8; 0: a hard edge); beyond it the background is untouched",
    )  # fmt: skip
    comp.add_argument("--out", required=True)
    comp.add_argument("--json", default=None, help="write settings, timings and counts as JSON")
    comp.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(comp, clip_box="move a box whose object would leave the image inside instead of failing")
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
    batch.add_argument(
        "--size", type=_size, default=None, help="working size: a side (512) or W,H / WxH (default: the model's)"
    )
    batch.add_argument("--force", action="store_true", help="compose finished samples again")
    batch.add_argument("--limit", type=int, default=None, help="only the first N sample folders (sorted by path)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.add_argument("--lpips-weights", default=None, help="torchvision VGG16 weights file for LPIPS (VGG)")
    batch.add_argument("--clip-model", default=None, help="CLIP folder or cached hub id for the CLIP scores")
    batch.add_argument("--allow-downloads", action="store_true", help="let LPIPS/CLIP download missing weights")
    batch.add_argument("--pixel-metrics-only", action="store_true", help="MSE/PSNR/SSIM only: do not try LPIPS or CLIP")
    batch.add_argument(
        "--processes", type=int, default=None,
        help="compose on N processes of this machine through accelerate's launcher (one per GPU; CPU processes "
        "otherwise); the same as 'accelerate launch --num_processes N -m tficon batch ...'",
    )  # fmt: skip
    batch.add_argument(
        "--batch-samples", type=_batch_size, default=None, metavar="N|auto",
        help="advance up to N samples together, one UNet call per step for all of them ('auto': as many as the "
        "memory estimate allows); faster, results equal to float tolerance instead of bitwise; a killed run "
        "loses the samples in flight (default: one sample at a time)",
    )  # fmt: skip
    _add_config_flags(batch, clip_box="move boxes that leave the image inside (else those samples are skipped)")
    batch.add_argument(
        "--mode",
        choices=("auto", "cross", "same"),
        default="auto",
        help="auto (default): from a cross_domain / same_domain folder above each sample, else cross",
    )
    batch.set_defaults(func=cmd_batch)

    sweep = sub.add_parser(
        "sweep",
        help="compose one sample over a grid of settings, sharing inversions and common steps",
        description="Compose one sample at every point of a grid over tau_a, tau_b, tau_bg, guidance, seed, steps, "
        "box and preset (--grid name=v1,v2,... or name=start:stop:count, repeated; boxes as box='x,y,w,h;x,y,w,h' "
        "in the background's pixels; presets by name, preset=tf-icon,tale, each cell following its preset). Writes "
        "grid.png (first parameter down, second across), cells.csv, cells.json, index.html and cells/ into --out.",
    )
    sweep.add_argument("--grid", action="append", metavar="NAME=VALUES", help="a swept parameter and its values")
    sweep.add_argument("--demo", action="store_true", help="sweep the built-in demo sample (the toy model's)")
    sweep.add_argument("--model", default="toy", help='"toy", a hub id, a diffusers folder or a checkpoint file')
    sweep.add_argument("--background", default=None)
    sweep.add_argument("--foreground", default=None)
    sweep.add_argument("--foreground-mask", default=None, help="object mask of the foreground (white = object)")
    sweep.add_argument("--mask", default=None, help="user mask on the background: its bbox is the target box")
    sweep.add_argument("--box", type=_box, default=None, help="target box x,y,w,h in the background's own pixels")
    sweep.add_argument("--prompt", default=None)
    sweep.add_argument("--size", type=_size, default=None, help="working size (default: the model's)")
    sweep.add_argument("--out", required=True, help="output folder")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument(
        "--batch-cells", type=_batch_size, default=None, metavar="N|auto",
        help="run up to N chains of cells together, one UNet call per step for all ('auto': only chains that "
        "share no steps, as many as the memory estimate allows); results equal to float tolerance instead of "
        "bitwise (default: one cell at a time)",
    )  # fmt: skip
    _add_config_flags(sweep)
    sweep.set_defaults(func=cmd_sweep)
    from tficon import __version__
    from tficon.cli_messages import add_examples_and_version

    return add_examples_and_version(parser, __version__)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    from tficon.cli_messages import warnings_as_lines
    from tficon.core.threads import apply_threads, prepare_environment

    prepare_environment()  # before anything imports torch: OpenMP reads its wait policy only then
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a multi-process launch runs again
    where = f"tficon {args.command}"
    try:
        apply_threads(args.threads)
        with warnings_as_lines(where):  # one line each, with flag names, no source path
            return args.func(args)
    except KeyboardInterrupt:
        note = "finished samples are kept; a re-run resumes" if args.command == "batch" else "nothing was written"
        if not launched_by_processes():  # one of --processes N's processes: the launching command says it
            print(f"\n{where}: interrupted (Ctrl-C); {note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"{where}: error: {flag_message(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # tficon.run.files.WriteError names the file and the fix; others: an I/O failure
        message = str(error) if isinstance(error, WriteError) else f"input/output failure: {error}"
        print(f"{where}: error: {message}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except FloatingPointError as error:  # tficon.core.checks.NonFiniteError: the run itself went wrong
        print(f"{where}: the run failed: {flag_message(str(error))}", file=sys.stderr)
        return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())

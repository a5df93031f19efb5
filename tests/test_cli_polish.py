"""What a newcomer meets first on the command line: one-line warnings and errors that name flags, timings that
show the model load apart, output folders created only one level deep, every check before the model loads, a
``--help`` with defaults and examples, ``--version``, and a demo that marks its box, says what to look at and try
next, saves its inputs for ``tficon compose`` and writes only where git ignores."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tficon
from tficon.cli import build_parser, main
from tficon.cli_demo import BOX_COLOUR
from tficon.cli_messages import Timer, describe_time, warnings_as_lines
from tficon.toy.samples import demo_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The demo sample's images as files (64 px, the toy model's size)."""
    root = tmp_path_factory.mktemp("polish")
    sample = demo_sample()
    sample.background.save(root / "bg.png")
    sample.foreground.save(root / "fg.png")
    sample.foreground_mask.save(root / "fg_mask.png")
    return root, sample


def _compose(root, sample, *extra, box=None, prompt=None):
    x, y, w, h = box or sample.box
    return [
        "compose", "--background", str(root / "bg.png"), "--foreground", str(root / "fg.png"),
        "--foreground-mask", str(root / "fg_mask.png"), "--box", f"{x},{y},{w},{h}",
        "--prompt", prompt or sample.prompt, "--steps", "3", "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture
def no_model(monkeypatch):
    import tficon.cli

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(tficon.cli, "_load", refuse)


# ---------------------------------------------------------------------------------------------------------------
# warnings and timings
# ---------------------------------------------------------------------------------------------------------------


def test_the_toy_world_warning_is_one_line_naming_the_flag_and_timings_show_the_load(files, tmp_path, capsys, monkeypatch):
    import tficon.composition.inputs as inputs

    monkeypatch.setitem(inputs._TOY_WORLD_NOTICE, "given", False)  # said once per process: make it unsaid
    root, sample = files
    out, stats = tmp_path / "cat.png", tmp_path / "cat.json"
    assert main(_compose(root, sample, "--out", str(out), "--json", str(stats), prompt="a photo of a cat on a sofa")) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warned) == 1 and warned[0].startswith("tficon compose: warning: the embedded toy model knows only")
    assert "--model with a hub id" in warned[0] and "'cat'" in warned[0]
    for python_only in ("tficon.load_model", "UserWarning", ".py:", "Said once per process"):
        assert python_only not in captured.err
    data = json.loads(stats.read_text())
    assert data["load_seconds"] > 0 and data["compose_seconds"] > 0
    assert data["total_seconds"] == pytest.approx(data["load_seconds"] + data["compose_seconds"])
    assert data["step_seconds"] < data["compose_seconds"]  # the itemised timings are the composition's
    assert f"model load {data['load_seconds']:.1f} s" in captured.out


def test_warnings_as_lines_flattens_and_renames():
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

    with warnings_as_lines("tficon demo", stream=Stream()):
        warnings.simplefilter("always")
        warnings.warn("foreground_mask is\n   odd; pass clip_box=True", UserWarning)
        warnings.warn("tficon demo: cells.json could not be written; the sweep goes on", RuntimeWarning)
    printed = "".join(lines)
    assert printed == (
        "tficon demo: warning: --foreground-mask is odd; pass --clip-box\n"
        "tficon demo: warning: cells.json could not be written; the sweep goes on\n"
    )
    assert warnings.showwarning is not None and "tficon demo" not in repr(warnings.showwarning)  # restored


def test_timer_and_its_description():
    timer = Timer()
    timer.model_loaded()
    fields = timer.fields()
    assert fields["total_seconds"] == pytest.approx(fields["load_seconds"] + fields["compose_seconds"])
    described = describe_time({"total_seconds": 12.34, "load_seconds": 6.5, "compose_seconds": 5.84})
    assert described == "12.3 s (model load 6.5 s, composition 5.8 s)"


# ---------------------------------------------------------------------------------------------------------------
# outputs and checks before the model loads
# ---------------------------------------------------------------------------------------------------------------


def test_out_creates_only_its_own_folder_and_says_so(files, tmp_path, capsys, no_model):
    root, sample = files
    deep = tmp_path / "typo" / "deeper" / "out.png"
    assert main(_compose(root, sample, "--out", str(deep))) == 2
    err = capsys.readouterr().err
    assert "does not exist; tficon creates only the file's own folder ('deeper')" in err and "usage" not in err
    assert list(tmp_path.iterdir()) == []
    # --json counts the folder --out will create as there
    json_path = tmp_path / "new" / "sub" / "s.json"
    with pytest.raises(AssertionError, match="the model was loaded"):  # all checks passed: the load is next
        main(_compose(root, sample, "--out", str(tmp_path / "new" / "out.png"), "--json", str(json_path)))


def test_the_missing_folder_is_created_and_named(files, tmp_path, capsys):
    root, sample = files
    out = tmp_path / "results" / "out.png"
    assert main(_compose(root, sample, "--out", str(out))) == 0
    assert out.is_file() and f"created the folder {out.parent}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--box", "1,2,3"), "argument --box: --box must be four integers x,y,w,h"),
        (("--steps", "many"), "argument --steps: invalid int value: 'many'"),
        (("--size", "0"), "argument --size: --size must be a positive side"),
        (("--order", "7"), "argument --order: invalid choice: 7"),
    ],
)
def test_malformed_values_are_one_line(files, tmp_path, capsys, no_model, extra, message):
    root, sample = files
    with pytest.raises(SystemExit) as stopped:
        main([*_compose(root, sample, "--out", str(tmp_path / "x.png")), *extra])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert err.startswith("tficon compose: error: ") and message in err and "tficon compose --help" in err


@pytest.mark.parametrize(
    "box, size, message",
    [
        ((40, 40, 1, 1), None, "the box is too small"),
        ((60, 10, 4, 40), None, "--clip-box"),  # the object's window would leave the image
        (None, "60", "--size"),  # not a multiple of the toy model's step
    ],
)
def test_geometry_is_checked_before_the_model_loads(files, tmp_path, capsys, no_model, box, size, message):
    root, sample = files
    args = _compose(root, sample, "--out", str(tmp_path / "x.png"), box=box)
    assert main(args + (["--size", size] if size else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_sweep_boxes_are_checked_before_the_model_loads(tmp_path, capsys, no_model):
    args = ["sweep", "--demo", "--grid", "box=36,18,26,26;40,40,1,1", "--out", str(tmp_path / "sweep"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the box is too small" in err and not (tmp_path / "sweep").exists(), err


def test_geometry_check_agrees_with_the_session(files):
    """The pre-load check raises exactly when the Session (after loading) would."""
    from tficon.cli_checks import check_geometry_before_loading, model_geometry
    from tficon.core.boxes import box_mask
    from tficon.core.config import CompositionConfig
    from tficon.core.io import load_mask

    root, sample = files
    assert model_geometry("toy") == (64, 2, 4) and model_geometry("no/such/folder") is None
    model = tficon.load_model("toy")
    mask = load_mask(sample.foreground_mask, name="m")
    for box in [(40, 40, 1, 1), (60, 10, 4, 40), (36, 18, 26, 26), (0, 0, 64, 64), (2, 2, 8, 30)]:
        target = box_mask(box, sample.background.size, name="--box")
        outcomes = []
        for check in (
            lambda: check_geometry_before_loading("toy", None, sample.background, sample.foreground, mask, target, CompositionConfig()),
            lambda: tficon.Session(model, sample.background, sample.foreground, sample.foreground_mask, target, "a red star").placement,
        ):  # fmt: skip
            try:
                check()
                outcomes.append("ok")
            except ValueError as error:
                outcomes.append(str(error))
        assert outcomes[0] == outcomes[1], box


# ---------------------------------------------------------------------------------------------------------------
# --help and --version
# ---------------------------------------------------------------------------------------------------------------


def _help(command: str) -> str:
    return build_parser()._subparsers._group_actions[0].choices[command].format_help()


@pytest.mark.parametrize("command", ["demo", "compose", "batch", "sweep"])
def test_help_shows_defaults_and_examples(command):
    text = _help(command)
    assert "examples:\n  tficon " + command in text
    assert "(default: toy)" in text  # --model
    assert "(default: 20)" in text and "(default: 0.4)" in text  # settings
    assert ".py" not in text  # no source files as documentation


def test_demo_help_names_its_output_default():
    assert "(default: out/tficon_demo.png)" in " ".join(_help("demo").split())


def test_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.strip() == f"tficon {tficon.__version__}"


# ---------------------------------------------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------------------------------------------


def test_demo_marks_the_box_guides_and_saves_inputs_that_compose_reproduces(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--steps", "4", "--quiet", "--save-inputs", "out/demo_inputs"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["demo_inputs", "tficon_demo.png", "tficon_demo_sheet.png"]
    assert "created the folder out" in printed and "look at out/tficon_demo_sheet.png" in printed
    assert "try next:" in printed and "jupyter lab notebooks/01_quickstart.ipynb" in printed
    # the sheet: 192 px panels under a 14 px label strip; the green box outlines the target on three panels
    sheet = np.asarray(Image.open(out / "tficon_demo_sheet.png").convert("RGB"))
    green = np.all(sheet == BOX_COLOUR, axis=-1)
    sample = demo_sample()
    x, y, w, h = sample.box
    k = 192 / 64
    widths = [192, round(sample.foreground.width * 192 / sample.foreground.height), 192, 192]
    lefts = [sum(widths[:i]) + 4 * i for i in range(4)]
    for index in (0, 2, 3):
        left = lefts[index] + round(x * k) - 1
        assert green[14 + round(y * k) - 1, left : left + round(w * k)].all(), index
    assert green[:, lefts[3] :].sum() == green[:, : lefts[1]].sum() > 4 * w * k  # the same outline on each
    assert not green[:, lefts[1] : lefts[2]].any()  # the foreground panel has no box
    # the printed compose line composes the saved files to the very same image
    line = next(line.strip() for line in printed.splitlines() if line.strip().startswith("tficon compose"))
    import shlex

    argv = shlex.split(line)[1:] + ["--steps", "4", "--quiet"]
    assert main(argv) == 0
    assert np.array_equal(np.asarray(Image.open(out / "compose.png")), np.asarray(Image.open(out / "tficon_demo.png")))


def test_the_demo_writes_only_where_git_ignores():
    default = build_parser().parse_args(["demo"]).out
    assert default == "out/tficon_demo.png"
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: .gitignore does not apply")
    for path in (default, "out/tficon_demo_sheet.png", "out/demo_inputs/background.png"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by .gitignore"

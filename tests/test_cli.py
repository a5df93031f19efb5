"""The command line on a tiny random SD model saved to a folder (files in, files out)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from tficon.cli import main
from tficon.model.tiny import save_tiny_model
from tficon.toy.samples import toy_sample


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    sample = toy_sample(image_size=128)
    sample.background.save(root / "bg.png")
    sample.foreground.save(root / "fg.png")
    sample.foreground_mask.save(root / "fg_mask.png")
    mask = np.zeros((128, 128), dtype=np.uint8)
    x, y, w, h = sample.box
    mask[y : y + h, x : x + w] = 255
    Image.fromarray(mask).save(root / "mask.png")
    model_dir = save_tiny_model(root / "tiny", "sd2")
    return root, model_dir, sample


def _args(root, model_dir, sample, *extra):
    return [
        "compose", "--model", str(model_dir), "--background", str(root / "bg.png"), "--foreground", str(root / "fg.png"),
        "--foreground-mask", str(root / "fg_mask.png"), "--prompt", sample.prompt, "--size", "128", "--steps", "6",
        "--quiet", *extra,
    ]


def test_compose_with_mask_writes_image_and_json(files, capsys):
    root, model_dir, sample = files
    out, stats = root / "out.png", root / "stats.json"
    assert main(_args(root, model_dir, sample, "--mask", str(root / "mask.png"), "--out", str(out), "--json", str(stats))) == 0
    assert Image.open(out).size == (128, 128)
    data = json.loads(stats.read_text())
    assert data["config"]["steps"] == 6 and data["config"]["mode"] == "cross" and data["guidance"] == 5.0
    assert data["sample_evals"] > 0 and "wrote" in capsys.readouterr().out
    # the box given directly gives the same placement and image as the mask whose bbox it is
    out_box = root / "out_box.png"
    x, y, w, h = sample.box
    assert main(_args(root, model_dir, sample, "--box", f"{x},{y},{w},{h}", "--out", str(out_box))) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(out_box)))


def test_compose_passes_the_parity_switches_to_the_session(files):
    root, model_dir, sample = files
    stats = root / "switches.json"
    argv = _args(root, model_dir, sample, "--mask", str(root / "mask.png"), "--out", str(root / "switches.png"))
    assert main([*argv, "--json", str(stats), "--background-queries", "--largest-contour", "--tau-bg", "0.3"]) == 0
    config = json.loads(stats.read_text())["config"]
    assert config["background_queries"] and config["largest_contour"] and config["tau_bg"] == 0.3
    assert not (config["align_warmup"] or config["no_cross_lag"] or config["clip_box"])


def test_compose_reports_bad_input_clearly(files, capsys):
    root, model_dir, sample = files
    code = main(_args(root, model_dir, sample, "--box", "120,120,60,60", "--out", str(root / "x.png")))
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and "box" in err
    with pytest.raises(SystemExit):
        main(_args(root, model_dir, sample, "--box", "1,2,3", "--out", str(root / "x.png")))


def test_demo_writes_result_and_side_by_side_sheet(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out), "--steps", "6", "--quiet", "--json", str(tmp_path / "demo.json")]) == 0
    result, sheet = Image.open(out), Image.open(tmp_path / "demo_sheet.png")
    assert result.size == (64, 64)  # the embedded toy model's working size
    assert sheet.width > 4 * sheet.height * 0.9  # background | foreground | cut-and-paste | result
    printed = capsys.readouterr().out
    assert "model: toy" in printed and "wrote" in printed
    assert json.loads((tmp_path / "demo.json").read_text())["model"] == "toy"


# ---------------------------------------------------------------------------------------------------------------
# Bad input: clear messages with flag names, checked before the model loads, nothing partial left behind
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded (the checks must come first)."""
    import tficon.cli

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(tficon.cli, "_load", refuse)


def _box_args(sample):
    x, y, w, h = sample.box
    return ["--box", f"{x},{y},{w},{h}"]


@pytest.mark.parametrize(
    "change, message",
    [
        (("--background", "missing.png"), r"--background: no such file .*missing\.png"),
        (("--foreground-mask", "missing.png"), r"--foreground-mask: no such file"),
        (("--tau-a", "1.5"), r"--tau-a must be a finite number in \[0, 1\]"),
        (("--seed", str(2**64)), r"--seed must be in \[0, 2\*\*63\)"),
        (("--guidance", "nan"), r"--guidance must be a finite number"),
    ],
)
def test_inputs_and_settings_are_checked_before_the_model_loads(files, capsys, no_model, change, message):
    root, model_dir, sample = files
    args = _args(root, model_dir, sample, *_box_args(sample), "--out", str(root / "never.png"))
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value if value != "missing.png" else str(root / value)
    else:
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and not (root / "never.png").exists()


def test_output_paths_are_checked_before_any_work(files, capsys, no_model, tmp_path):
    root, model_dir, sample = files
    plain_file = tmp_path / "a_file"
    plain_file.write_text("x")
    cases = [
        (["--out", str(tmp_path / "out.png"), "--json", str(tmp_path)], r"--json: .* is a folder"),
        (["--out", str(plain_file / "sub" / "out.png")], r"--out: .*a_file' is a file"),
        (["--out", str(tmp_path)], r"--out: .* is a folder"),
        (["--out", str(tmp_path / "out.xyz")], r"--out: unknown image format '\.xyz'"),
    ]
    for extra, message in cases:
        assert main(_args(root, model_dir, sample, *_box_args(sample), *extra)) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written


def test_decompression_bomb_png_is_a_clear_message(files, capsys, no_model, monkeypatch):
    root, model_dir, sample = files
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 128x128 background is now a "bomb" for PIL
    assert main(_args(root, model_dir, sample, *_box_args(sample), "--out", str(root / "never.png"))) == 2
    err = capsys.readouterr().err
    assert "--background:" in err and "too large to open safely" in err and "Traceback" not in err


def test_ctrl_c_exits_130_without_a_traceback_and_leaves_nothing(files, capsys, monkeypatch, tmp_path):
    import tficon.run.files

    root, model_dir, sample = files

    def interrupted(self, target, text):  # Ctrl-C while the outputs are being written: the image is already saved
        raise KeyboardInterrupt

    monkeypatch.setattr(tficon.run.files.AtomicFiles, "text", interrupted)
    out = tmp_path / "out.png"
    args = _args(root, model_dir, sample, *_box_args(sample), "--out", str(out), "--json", str(tmp_path / "s.json"))
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the image nor a temporary file is left


def test_library_messages_use_flag_names(files, capsys, tmp_path):
    root, model_dir, sample = files
    square_mask = Image.new("L", (40, 20), 255)  # the foreground is square: another aspect ratio
    square_mask.save(tmp_path / "wide_mask.png")
    args = _args(root, model_dir, sample, *_box_args(sample), "--out", str(tmp_path / "x.png"))
    args[args.index("--foreground-mask") + 1] = str(tmp_path / "wide_mask.png")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--foreground-mask is 40x20" in err and "foreground_mask" not in err
    # an object window that leaves the image: the advice names the real flag
    assert main(_args(root, model_dir, sample, "--box", "100,30,28,60", "--out", str(tmp_path / "x.png"))) == 2
    err = capsys.readouterr().err
    assert "--clip-box" in err and "clip=True" not in err


def test_size_takes_width_and_height_and_the_output_keeps_the_background_size(files, tmp_path):
    root, model_dir, sample = files
    base = _args(root, model_dir, sample, *_box_args(sample))
    base[base.index("--size") + 1] = "128x64"
    assert main(base + ["--out", str(tmp_path / "bg_size.png"), "--json", str(tmp_path / "s.json")]) == 0
    assert Image.open(tmp_path / "bg_size.png").size == (128, 128)  # the background's own size (default)
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["image_size"] == [64, 128] and data["working_size"] == [128, 64] and data["output_size"] == [128, 128]
    base[base.index("--size") + 1] = "128,64"
    assert main(base + ["--out", str(tmp_path / "working.png"), "--output-size", "working"]) == 0
    assert Image.open(tmp_path / "working.png").size == (128, 64)
    with pytest.raises(SystemExit):
        main(base[:-1] + ["12x", "--out", str(tmp_path / "x.png")])


def test_box_is_in_the_background_pixels(files, tmp_path):
    # The same scene at twice the size with the box in its own pixels gives the placement of the 128 px run.
    root, model_dir, sample = files
    big = tmp_path / "bg_big.png"
    sample.background.resize((256, 256), Image.Resampling.LANCZOS).save(big)
    args = _args(root, model_dir, sample, "--box", ",".join(str(2 * v) for v in sample.box),
                 "--out", str(tmp_path / "big.png"), "--json", str(tmp_path / "big.json"))  # fmt: skip
    args[args.index("--background") + 1] = str(big)
    assert main(args) == 0
    small = _args(root, model_dir, sample, *_box_args(sample), "--out", str(tmp_path / "small.png"),
                  "--json", str(tmp_path / "small.json"))  # fmt: skip
    assert main(small) == 0
    placement = lambda name: json.loads((tmp_path / name).read_text())["placement"]  # noqa: E731
    assert placement("big.json") == placement("small.json")
    assert Image.open(tmp_path / "big.png").size == (256, 256)
    # a box outside the background is refused in its terms
    args[args.index("--box") + 1] = "200,10,80,80"
    assert main(args) == 2


def test_paste_back_keeps_the_background_outside_the_feathered_window(files, tmp_path, capsys):
    root, model_dir, sample = files
    big = tmp_path / "bg_big.png"
    sample.background.resize((256, 256), Image.Resampling.LANCZOS).save(big)
    args = _args(root, model_dir, sample, "--box", ",".join(str(2 * v) for v in sample.box), "--paste-back",
                 "--feather", "4", "--out", str(tmp_path / "pasted.png"), "--json", str(tmp_path / "s.json"))  # fmt: skip
    args[args.index("--background") + 1] = str(big)
    assert main(args) == 0
    out, original = np.asarray(Image.open(tmp_path / "pasted.png")), np.asarray(Image.open(big))
    x, y, w, h = json.loads((tmp_path / "s.json").read_text())["paste_back"]["window_xywh"]
    assert json.loads((tmp_path / "s.json").read_text())["paste_back"]["feather"] == 4
    grown = np.zeros(out.shape[:2], bool)
    grown[max(0, y - 4) : y + h + 4, max(0, x - 4) : x + w + 4] = True
    assert out.shape == original.shape and np.array_equal(out[~grown], original[~grown])
    assert not np.array_equal(out[y : y + h, x : x + w], original[y : y + h, x : x + w])
    # misuse is refused naming the flags, before any output
    for extra, message in [
        (["--feather", "4"], r"--feather sets the ramp of --paste-back"),
        (["--paste-back", "--output-size", "working"], r"--paste-back pastes onto the background at its own size"),
        (["--paste-back", "--feather", "-2"], r"--feather must be a non-negative"),
    ]:
        assert main(_args(root, model_dir, sample, *_box_args(sample), *extra, "--out", str(tmp_path / "never.png"))) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "never.png").exists()
    help_text = __import__("tficon.cli", fromlist=["build_parser"]).build_parser()._subparsers._group_actions[0].choices["compose"].format_help()
    assert "--paste-back" in help_text and "--feather PX" in help_text and "background's own pixels" in help_text

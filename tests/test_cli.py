"""The command line on a tiny random SD model saved to a folder (files in, files out)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tficon.cli import main
from tficon.samples import toy_sample
from tficon.tiny import save_tiny_model


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

"""Damaged model folders (issue 26, item 7): a truncated or corrupt weights or tokenizer file is a ``ModelLoadError``
naming the file and saying to re-download it; an incomplete folder lists what its family needs and what is missing.
Both reach the command line as one line and the input-error exit code, without a traceback."""

from __future__ import annotations

import re
import shutil

import pytest

from tficon.model import CheckpointFileError, ModelLoadError, load_model
from tficon.model.tiny import save_tiny_model
from tficon.toy.samples import toy_sample


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    return {family: save_tiny_model(root / family, family) for family in ("sd2", "sdxl")}


def copy_of(saved, family, tmp_path):
    folder = tmp_path / f"{family} copy"
    shutil.copytree(saved[family], folder)
    return folder


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "family, file",
    [
        ("sd2", "unet/diffusion_pytorch_model.safetensors"),
        ("sd2", "vae/diffusion_pytorch_model.safetensors"),
        ("sd2", "text_encoder/model.safetensors"),
        ("sd2", "tokenizer/tokenizer.json"),
        ("sdxl", "text_encoder_2/model.safetensors"),
    ],
)
def test_a_truncated_file_is_a_model_load_error_naming_it(saved, tmp_path, family, file):
    folder = copy_of(saved, family, tmp_path)
    truncate(folder / file)
    with pytest.raises(ModelLoadError) as info:
        load_model(folder, device="cpu")
    message = str(info.value)
    assert message.startswith(f"cannot read {folder / file} (") and "truncated or corrupt" in message
    assert "re-download this file" in message
    assert info.value.path == folder / file
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)  # what diffusers raised; bad input


def test_a_weights_file_of_garbage_is_named_too(saved, tmp_path):
    folder = copy_of(saved, "sd2", tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(ModelLoadError, match=r"cannot read .*unet/diffusion_pytorch_model\.safetensors \(26 bytes\)"):
        load_model(folder, device="cpu")
    # the file put back, the folder loads
    shutil.copy(saved["sd2"] / "unet" / "diffusion_pytorch_model.safetensors", folder / "unet")
    assert load_model(folder, device="cpu").family == "tiny-sd2"


def test_a_single_file_checkpoint_error_is_a_model_load_error():
    assert issubclass(CheckpointFileError, ModelLoadError)


def test_an_sdxl_folder_without_its_second_encoders_config_lists_what_sdxl_needs(saved, tmp_path):
    folder = copy_of(saved, "sdxl", tmp_path)
    (folder / "text_encoder_2" / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_model(folder, device="cpu")
    message = str(info.value)
    assert f"{str(folder)!r} is an incomplete SDXL diffusers folder: missing text_encoder_2/config.json. " in message
    needs = re.search(r"An SDXL folder holds (.*) \(SD 1\.x/2\.x: the same without text_encoder_2/ and tokenizer_2/\)",
                      message).group(1)  # fmt: skip
    for part in ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
                 "text_encoder/config.json", "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
                 "tokenizer/tokenizer.json", "tokenizer_2/tokenizer.json"):  # fmt: skip
        assert part in needs, part
    assert "is this a complete" not in message


def test_an_sd_folder_lists_everything_missing_at_once(saved, tmp_path):
    folder = copy_of(saved, "sd2", tmp_path)
    (folder / "vae" / "config.json").unlink()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(FileNotFoundError) as info:
        load_model(folder, device="cpu")
    message = str(info.value)
    assert message.startswith(
        f"{str(folder)!r} is an incomplete SD 1.x/2.x diffusers folder: missing "
        "unet/diffusion_pytorch_model.safetensors (or diffusion_pytorch_model.bin), vae/config.json, "
        "tokenizer/tokenizer.json (or vocab.json and merges.txt). "
    )
    assert "(SDXL: the same and text_encoder_2/ and tokenizer_2/)" in message


def test_missing_weights_alone_are_named_too(saved, tmp_path):
    folder = copy_of(saved, "sd2", tmp_path)
    (folder / "text_encoder" / "model.safetensors").unlink()
    missing = r"missing text_encoder/model\.safetensors \(or pytorch_model\.bin\)\. "
    with pytest.raises(FileNotFoundError, match=missing):
        load_model(folder, device="cpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_inputs")
    sample = toy_sample(image_size=128)
    for name in ("background", "foreground", "foreground_mask"):
        getattr(sample, name).save(root / f"{name}.png")
    return root, sample


def compose_args(inputs, model, out):
    root, sample = inputs
    x, y, w, h = sample.box
    return [
        "compose", "--model", str(model), "--background", str(root / "background.png"),
        "--foreground", str(root / "foreground.png"), "--foreground-mask", str(root / "foreground_mask.png"),
        "--box", f"{x},{y},{w},{h}", "--prompt", sample.prompt, "--size", "128", "--steps", "2",
        "--out", str(out), "--quiet",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "family, damage, expected",
    [
        ("sd2", "truncate unet/diffusion_pytorch_model.safetensors",
         r"cannot read .*unet/diffusion_pytorch_model\.safetensors \([\d,]+ bytes\): .*re-download this file"),
        ("sdxl", "delete text_encoder_2/config.json",
         r"is an incomplete SDXL diffusers folder: missing text_encoder_2/config\.json\. An SDXL folder holds "),
    ],
)  # fmt: skip
def test_the_cli_answers_a_damaged_model_in_one_line(saved, tmp_path, inputs, capsys, family, damage, expected):
    from tficon.cli import main

    folder = copy_of(saved, family, tmp_path)
    action, file = damage.split(" ")
    truncate(folder / file) if action == "truncate" else (folder / file).unlink()
    out = tmp_path / "out.png"
    assert main(compose_args(inputs, folder, out)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("tficon compose: error: ") and re.search(expected, err), err
    assert not out.exists()

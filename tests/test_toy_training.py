"""The toy model's training script survives interruptions: a run stopped early (``--stop-after``) and resumed
(``--resume``) ends with exactly the weights of an uninterrupted run, and the export says how far it got.

A real (tiny) run of ``python -m training.toy.train``: 48 examples, 3 VAE steps, 4 UNet steps, the shipped
architecture (f = 2).
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tficon.toy import MODEL_DIR
from training.toy.train import main as train

TINY = ["--images", "48", "--vae-steps", "3", "--unet-steps", "4", "--seed", "5", "--threads", "2", "--latent-factor", "2",
        "--checkpoint-every", "2", "--export-every", "4", "--no-gates", "--tokenizer-from", str(MODEL_DIR)]


def weights(folder):
    return {**load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"),
            **{f"text.{k}": v for k, v in load_file(folder / "text_encoder" / "model.safetensors").items()}}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "model"
    train(["--out", str(out), *TINY])
    return out


def test_stopped_then_resumed_run_matches_an_uninterrupted_one(uninterrupted, tmp_path):
    out = tmp_path / "model"
    train(["--out", str(out), *TINY, "--stop-after", "2"])
    meta = json.loads((out / "tficon.json").read_text())
    assert meta["training"]["unet_steps_done"] == 2 and meta["training"]["unet_steps"] == 4
    halfway = weights(out)

    train(["--out", str(out), *TINY, "--resume"])
    assert json.loads((out / "tficon.json").read_text())["training"]["unet_steps_done"] == 4
    whole, resumed = weights(uninterrupted), weights(out)
    assert whole.keys() == resumed.keys()
    assert all((whole[k] == resumed[k]).all() for k in whole)  # bit for bit: same steps, same random numbers
    assert any((halfway[k] != resumed[k]).any() for k in whole)  # and the last two steps did change them

    log = [json.loads(line) for line in (tmp_path / "model.work" / "train_log.jsonl").read_text().splitlines()]
    assert any(entry["message"].startswith("unet: resumed at step 2/4") for entry in log)


def test_a_run_without_resume_refuses_to_overwrite_its_work_folder(uninterrupted):
    with pytest.raises(SystemExit):
        train(["--out", str(uninterrupted), *TINY])


def test_stop_after_must_be_positive(tmp_path):
    with pytest.raises(SystemExit):
        train(["--out", str(tmp_path / "m"), *TINY, "--stop-after", "0"])


def test_offset_noise_is_recorded_and_changes_only_the_unet_stage(uninterrupted, tmp_path):
    """``--offset-noise`` trains on noise with a per-image, per-channel constant added: same data and VAE, other
    UNet weights, and the export records it (the default run records 0)."""
    out = tmp_path / "model"
    train(["--out", str(out), *TINY, "--offset-noise", "0.1"])
    plain_meta = json.loads((uninterrupted / "tficon.json").read_text())["training"]
    offset_meta = json.loads((out / "tficon.json").read_text())["training"]
    assert plain_meta["offset_noise"] == 0.0 and offset_meta["offset_noise"] == 0.1
    assert "--offset-noise 0.1" in offset_meta["command"]
    assert load_file(out / "vae" / "diffusion_pytorch_model.safetensors")["decoder.conv_out.weight"].equal(
        load_file(uninterrupted / "vae" / "diffusion_pytorch_model.safetensors")["decoder.conv_out.weight"])
    plain, offset = weights(uninterrupted), weights(out)
    assert any(not plain[k].equal(offset[k]) for k in plain)


def test_stop_after_at_or_before_a_warm_start_says_so(uninterrupted, tmp_path):
    """A warm start already at step 4 with ``--stop-after 2`` has nothing to train: a clear message, no traceback."""
    with pytest.raises(SystemExit, match="already at UNet step 4"):
        train(["--out", str(tmp_path / "m"), *TINY, "--init-from", str(uninterrupted), "--stop-after", "2"])


def test_warm_start_from_a_folder_without_a_recorded_latent_size(tmp_path, capsys):
    """Folders exported before v3 did not record ``latent_size`` (they had 16x16 latents): the mismatch is named,
    not a KeyError."""
    meta = json.loads((MODEL_DIR / "tficon.json").read_text())
    del meta["latent_size"]
    old = tmp_path / "old_model"
    old.mkdir()
    (old / "tficon.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit):
        train(["--out", str(tmp_path / "m"), *TINY, "--init-from", str(old)])
    assert "has 16x16 latents: pass --latent-factor 4" in capsys.readouterr().err

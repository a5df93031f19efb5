"""float16 and bfloat16 models on the CPU: every Session phase, attention capture, update / rewind, ``compose``,
the CLI's ``--dtype`` and the Explorer's kernel side, on tiny SD 1.x- and 2.x-shaped models.

Only the UNet and the VAE run in half precision (``tficon.composition.engine`` casts at the door); the solver stays
float32. The decoded result must stay close to the float32 one. Measured on these random tiny models
(6 steps, guidance 5) in several runs while the attention processor changed: float16 25.5-33.8 dB,
bfloat16 26.0-29.5 dB; a missing cast or a half-precision solver gives far less (or no image at all).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_setup import SIZE, check_explorer_kernel_side, new_session

import tficon
from tficon.model.tiny import save_tiny_model, tiny_model

STEPS = 6
HALF = (torch.float16, torch.bfloat16)
MIN_PSNR = {torch.float16: 23.0, torch.bfloat16: 22.0}  # dB of the decoded result against float32


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) / 2).pow(2).mean())  # images in [-1, 1]
    return 10 * math.log10(1 / mse)


@pytest.fixture(scope="module", params=["sd2", "sd1"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def float32_result(family, sample):
    return new_session(tiny_model(family), sample, steps=STEPS).run().decode()


@pytest.mark.parametrize("dtype", HALF, ids=["float16", "bfloat16"])
def test_every_phase_runs_in_half_precision_and_stays_close_to_float32(family, dtype, sample, float32_result):
    model = tiny_model(family, dtype=dtype)
    assert model.unet.dtype == dtype
    session = new_session(model, sample, steps=STEPS)
    x_bg, x_ref = session.invert()
    start = session.compose_start()
    assert x_bg.dtype == x_ref.dtype == start.dtype == torch.float32  # the solver's state stays float32
    session.run(until=3)
    assert all(t.dtype == torch.float32 for t in session.latents().values())
    previews = session.preview()
    assert "generation" in previews and all(torch.isfinite(p).all() for p in previews.values())
    maps = session.capture_attention(1, max_tokens=64)
    assert maps and all(torch.isfinite(m).all() and m.dtype == torch.float32 for m in maps.values())
    session.run()
    image = session.decode()
    assert torch.isfinite(image).all()
    assert _psnr(image, float32_result) >= MIN_PSNR[dtype]
    # update / rewind recompute bitwise what a fresh half-precision session computes
    first = session.update(tau_b=0.5)
    assert first is not None and first > 0
    session.rewind(first - 1)
    session.run()
    fresh = new_session(model, sample, steps=STEPS, tau_b=0.5).run()
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)


def test_compose_and_threads_in_bfloat16(sample):
    model = tiny_model("sd2", dtype=torch.bfloat16)
    before = torch.get_num_threads()
    result = tficon.compose(model, sample.background, sample.foreground, sample.foreground_mask, sample.box,
                            sample.prompt, image_size=SIZE, steps=4, progress=False, threads=1)  # fmt: skip
    assert result.size == (SIZE, SIZE) and np.asarray(result).std() > 0
    assert torch.get_num_threads() == before  # the Session's thread count applies to its own work only


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cli_dtype(tmp_path, sample, dtype, capsys):
    from tficon.cli import main

    model_dir = save_tiny_model(tmp_path / "tiny", "sd1")
    for name, image in (("bg", sample.background), ("fg", sample.foreground), ("fg_mask", sample.foreground_mask)):
        image.save(tmp_path / f"{name}.png")
    x, y, w, h = sample.box
    out = tmp_path / "out.png"
    args = ["compose", "--model", str(model_dir), "--background", str(tmp_path / "bg.png"), "--foreground",
            str(tmp_path / "fg.png"), "--foreground-mask", str(tmp_path / "fg_mask.png"), "--prompt", sample.prompt,
            "--size", str(SIZE), "--steps", "4", "--quiet", "--box", f"{x},{y},{w},{h}", "--out", str(out),
            "--dtype", dtype]  # fmt: skip
    assert main(args) == 0
    assert Image.open(out).size == (SIZE, SIZE)


def test_explorer_kernel_side_in_float16(sample):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    check_explorer_kernel_side(tiny_model("sd2", dtype=torch.float16), sample)


def test_threads_argument_is_checked(sample):
    with pytest.raises(ValueError, match="threads"):
        new_session(tiny_model("sd2"), sample, steps=4, threads=0)

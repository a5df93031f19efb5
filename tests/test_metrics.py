"""Metrics against hand-computed cases and an independent SSIM reference; optional scorers' clear messages."""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tficon.core.placement import Box
from tficon.eval import metrics
from tficon.eval.metrics import (
    CLIPScorer,
    LPIPSScorer,
    MetricUnavailable,
    background_metrics,
    blank_box,
    composition_metrics,
    foreground_metrics,
    inversion_metrics,
    lpips_backbone_state,
    mse,
    psnr,
    ssim,
    ssim_sigma,
)
from tficon.model.tiny import save_tiny_clip

C1 = (0.01 * 1.0) ** 2
C2 = (0.03 * 1.0) ** 2
PSNR_REL = 1e-6  # torchmetrics computes PSNR's logarithms in float32


def _reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM the way scikit-image computes it (gaussian_weights=True, sigma=1.5, population covariance):
    scipy's Gaussian filter (truncate 3.5 -> 11 taps), then the border of 5 pixels cropped. Independent of
    tficon's convolution code."""
    from scipy.ndimage import gaussian_filter

    values = []
    x, y = (x[None], y[None]) if x.ndim == 2 else (x, y)
    for a, b in zip(x, y):
        f = lambda t: gaussian_filter(t, sigma=1.5, truncate=3.5)  # noqa: E731
        mu_a, mu_b = f(a), f(b)
        var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        values.append(s[5:-5, 5:-5].mean())
    return float(np.mean(values))


# ------------------------------------------------------------------------------------------------ MSE / PSNR


def test_psnr_of_a_known_uniform_error():
    x = torch.full((3, 8, 8), 0.3, dtype=torch.float64)
    y = x + 0.1
    assert mse(x, y) == pytest.approx(0.01, rel=1e-12)
    # torchmetrics takes PSNR's logarithms in float32: a relative error of about 1e-7
    assert psnr(x, y) == pytest.approx(20.0, rel=PSNR_REL)  # 10 log10(1 / 0.01)
    a = np.full((4, 4), 100.0)
    assert psnr(a, a + 10, data_range=255) == pytest.approx(20 * math.log10(25.5), rel=PSNR_REL)
    assert psnr(x, x) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        mse(x, y[:, :4])
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, y, data_range=0)


# ------------------------------------------------------------------------------------------------ SSIM


def test_ssim_of_identical_images_is_one():
    x = torch.rand(3, 24, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_hand_computed_constant_images():
    """Constant a and b: means a, b; variances and covariance 0 -> (2ab + C1) / (a^2 + b^2 + C1)."""
    x = np.full((11, 11), 0.2)
    y = np.full((11, 11), 0.6)
    assert ssim(x, y) == pytest.approx((2 * 0.2 * 0.6 + C1) / (0.2**2 + 0.6**2 + C1), rel=1e-12)


def test_ssim_hand_computed_pattern_shift_and_negation():
    """One 11x11 window. x = 0.5 + 0.1 s with s = +1 left of the centre column, -1 right of it, 0 on it, so the
    Gaussian mean of x is exactly 0.5 and its variance 0.01 (1 - g_c), g_c the centre column's 1-D weight.

    - y = x + 0.2: variances and covariance equal, only the luminance term remains:
      (2 * 0.5 * 0.7 + C1) / (0.5^2 + 0.7^2 + C1);
    - y = 1 - x: same mean and variance, covariance -v: (0.5 + C1) / (0.5 + C1) * (-2v + C2) / (2v + C2).
    """
    sign = np.sign(5 - np.arange(11))[None, :].repeat(11, axis=0).astype(float)
    x = 0.5 + 0.1 * sign
    assert ssim(x, x + 0.2) == pytest.approx((2 * 0.5 * 0.7 + C1) / (0.25 + 0.49 + C1), rel=1e-12)
    g = np.exp(-np.arange(-5, 6) ** 2 / 4.5)
    g_centre = 1 / g.sum()
    v = 0.01 * (1 - g_centre)
    assert ssim(x, 1 - x) == pytest.approx((-2 * v + C2) / (2 * v + C2), rel=1e-9)


def test_ssim_matches_an_independent_reference():
    rng = np.random.default_rng(1)
    x = rng.random((3, 32, 40))
    y = np.clip(x + 0.15 * rng.standard_normal(x.shape), 0, 1)
    z = 0.5 * x + 0.2
    for other in (y, z):
        assert ssim(x, other) == pytest.approx(_reference_ssim(x, other), abs=1e-12)
    assert ssim(x[0] * 255, y[0] * 255, data_range=255) == pytest.approx(_reference_ssim(x[:1] * 255, y[:1] * 255, 255), abs=1e-12)


def test_ssim_matches_scikit_image_when_installed():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    x = rng.random((20, 26, 3))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    expected = skimage_metrics.structural_similarity(
        x, y, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(x.transpose(2, 0, 1), y.transpose(2, 0, 1)) == pytest.approx(expected, abs=1e-10)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((3, 10, 20)), np.zeros((3, 10, 20)))
    assert ssim(np.ones((3, 7, 7)) * 0.5, np.ones((3, 7, 7)) * 0.5, window_size=7) == pytest.approx(1.0)


def test_ssim_windows_below_eleven_keep_the_gaussian_scaled_and_match_scikit_image():
    """torchmetrics and scikit-image both derive the window from sigma (2 int(3.5 sigma + 0.5) + 1 taps): a smaller
    window, for small latents, takes sigma 1.5 scaled to it, and scikit-image with that sigma agrees."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    for window in (1, 3, 5, 7, 9, 11):
        assert 2 * int(3.5 * ssim_sigma(window) + 0.5) + 1 == window
    assert ssim_sigma(11) == 1.5
    with pytest.raises(ValueError, match="odd"):
        ssim_sigma(8)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 8, 8))
    y = x + 0.3 * rng.standard_normal(x.shape)
    value_range = float(x.max() - x.min())
    expected = skimage_metrics.structural_similarity(
        x, y, data_range=value_range, channel_axis=0, gaussian_weights=True, sigma=ssim_sigma(7),
        use_sample_covariance=False,
    )
    assert ssim(x, y, data_range=value_range, window_size=7) == pytest.approx(expected, abs=1e-10)


# The hand-written formulas tficon used before PSNR and SSIM came from torchmetrics, frozen here (tests only) so
# that the library's numbers are checked against them on fresh inputs.


def _frozen_psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    error = float(((a - b) ** 2).mean())
    return math.inf if error == 0 else 10.0 * math.log10(data_range * data_range / error)


def _frozen_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, size: int = 11, sigma: float = 1.5) -> float:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma * sigma))
    g = g / g.sum()
    channels = a.shape[0]
    weights = torch.outer(g, g)[None, None].expand(channels, 1, -1, -1)
    mean = lambda t: torch.nn.functional.conv2d(t[None], weights, groups=channels)[0]  # noqa: E731
    mu_a, mu_b = mean(a), mean(b)
    var_a, var_b, cov = mean(a * a) - mu_a * mu_a, mean(b * b) - mu_b * mu_b, mean(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ratio = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return float(ratio.mean())


def _random_box(rng, height: int, width: int) -> Box:
    top, left = int(rng.integers(0, height - 12)), int(rng.integers(0, width - 12))
    return Box(top, left, int(rng.integers(top + 11, height + 1)), int(rng.integers(left + 11, width + 1)))


def test_torchmetrics_psnr_and_ssim_agree_with_the_former_formulas_on_fresh_pairs_and_boxes():
    rng = np.random.default_rng(2027)
    for _ in range(12):
        height, width = (int(v) for v in rng.integers(16, 72, 2))
        background = rng.integers(0, 256, (height, width, 3))
        noise = rng.integers(-40, 41, (height, width, 3)) * (rng.random((height, width, 1)) < rng.random())
        composite = np.clip(background + noise, 0, 255)
        box = _random_box(rng, height, width)
        a, b = metrics.as_unit_tensor(_uint8_image(composite)), metrics.as_unit_tensor(_uint8_image(background))
        bg = background_metrics(_uint8_image(composite), _uint8_image(background), box)
        blank_a, blank_b = blank_box(a, box), blank_box(b, box)
        assert bg["psnr"] == pytest.approx(_frozen_psnr(blank_a, blank_b), abs=1e-4)
        assert bg["ssim"] == pytest.approx(_frozen_ssim(blank_a, blank_b), abs=1e-4)
        fg = foreground_metrics(_uint8_image(composite), box, _uint8_image(background), box)
        crop_a, crop_b = metrics.crop_box(a, box), metrics.crop_box(b, box)
        assert fg["psnr"] == pytest.approx(_frozen_psnr(crop_a, crop_b), abs=1e-4)
        assert fg["ssim"] == pytest.approx(_frozen_ssim(crop_a, crop_b), abs=1e-4)
        # latent-like values on another range, at the full window
        x = torch.from_numpy(rng.standard_normal((4, height, width)))
        y = x + float(rng.uniform(0.05, 1.0)) * torch.from_numpy(rng.standard_normal(x.shape))
        value_range = float(x.max() - x.min())
        assert psnr(x, y, data_range=value_range) == pytest.approx(_frozen_psnr(x, y, value_range), abs=1e-4)
        assert ssim(x, y, data_range=value_range) == pytest.approx(_frozen_ssim(x, y, value_range), abs=1e-4)


# ------------------------------------------------------------------------------------------------ protocol


def _uint8_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)))


def test_background_blanking_excludes_the_box():
    rng = np.random.default_rng(3)
    background = rng.integers(0, 256, (32, 48, 3))
    box = Box(top=8, left=10, bottom=20, right=30)
    composite = background.copy()
    composite[8:20, 10:30] = 255 - composite[8:20, 10:30]  # anything inside the box
    result = background_metrics(_uint8_image(composite), _uint8_image(background), box)
    assert result["mse"] == 0.0 and result["psnr"] == math.inf and result["ssim"] == pytest.approx(1.0, abs=1e-12)
    # a change of 51/255 = 0.2 in all channels of 12 pixels outside the box: MSE = 0.04 * 12 / (32 * 48)
    composite[0:3, 40:44] = np.clip(background[0:3, 40:44] + 51, 0, 255)
    changed = composite[0:3, 40:44] - background[0:3, 40:44]
    expected = float(((changed / 255.0) ** 2).sum() / (3 * 32 * 48))
    result = background_metrics(_uint8_image(composite), _uint8_image(background), box)
    assert result["mse"] == pytest.approx(expected, rel=1e-12)
    assert result["psnr"] == pytest.approx(-10 * math.log10(expected), rel=PSNR_REL)
    # without blanking, the inside counts
    whole = mse(metrics.as_unit_tensor(_uint8_image(composite)), metrics.as_unit_tensor(_uint8_image(background)))
    assert whole > 10 * expected
    # blank_box sets exactly the box to 0 and leaves its input alone
    t = torch.ones(3, 32, 48, dtype=torch.float64)
    blanked = blank_box(t, box)
    assert float(t.sum()) == 3 * 32 * 48 and float(blanked.sum()) == 3 * (32 * 48 - 12 * 20)
    with pytest.raises(ValueError, match="inside"):
        blank_box(t, Box(20, 40, 40, 50))


def test_foreground_crop_is_resized_to_the_reference():
    composite = np.full((40, 40, 3), 30)
    composite[10:20, 5:25] = (100, 120, 140)  # a 10x20 box
    reference = np.full((20, 40, 3), (100, 120, 140))  # twice the box's size
    box = Box(10, 5, 20, 25)
    same = foreground_metrics(_uint8_image(composite), box, _uint8_image(reference))
    assert same["mse"] == 0.0 and same["ssim"] == pytest.approx(1.0)
    other = np.full((20, 40, 3), (110, 120, 140))
    result = foreground_metrics(_uint8_image(composite), box, _uint8_image(other))
    assert result["mse"] == pytest.approx((10 / 255) ** 2 / 3, rel=1e-12)
    # a reference canvas with its object window
    canvas = np.zeros((64, 64, 3))
    canvas[30:40, 20:40] = (100, 120, 140)
    windowed = foreground_metrics(_uint8_image(composite), box, _uint8_image(canvas), Box(30, 20, 40, 40))
    assert windowed["mse"] == 0.0 and windowed["ssim"] is None  # 10 px: smaller than the SSIM window


def test_composition_metrics_without_scorers():
    background = np.full((32, 32, 3), 200)
    composite = background.copy()
    composite[4:16, 4:16] = 0
    reference = np.zeros((12, 12, 3))
    out = composition_metrics(_uint8_image(composite), _uint8_image(background), _uint8_image(reference), Box(4, 4, 16, 16))
    assert set(out) == {"bg", "fg"}
    assert out["bg"]["mse"] == 0.0 and out["fg"]["mse"] == 0.0
    # tensors in [-1, 1] give the same numbers as the images
    as_tensor = lambda a: torch.from_numpy(a.transpose(2, 0, 1) / 127.5 - 1.0)  # noqa: E731
    again = composition_metrics(as_tensor(composite), as_tensor(background), as_tensor(reference), Box(4, 4, 16, 16))
    assert again["bg"] == out["bg"]
    with pytest.raises(ValueError, match="same size"):
        composition_metrics(_uint8_image(composite), _uint8_image(background[:16]), _uint8_image(reference), Box(4, 4, 16, 16))


# ------------------------------------------------------------------------------------------------ LPIPS


def test_lpips_names_a_missing_weights_file(tmp_path):
    with pytest.raises(MetricUnavailable, match="no such VGG16 weights file"):
        LPIPSScorer.load(tmp_path / "vgg16.pth")


def test_lpips_without_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.delenv(metrics.LPIPS_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    started = time.perf_counter()
    with pytest.raises(MetricUnavailable) as error:
        LPIPSScorer.load()
    assert time.perf_counter() - started < 2  # no network attempt
    message = str(error.value)
    assert metrics.LPIPS_WEIGHTS_ENV in message and "--lpips-weights" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_lpips_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    weights = tmp_path / "vgg16-397923af.pth"
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "lpips", None)  # the package is not importable
    with pytest.raises(MetricUnavailable, match=r"pip install 'tficon\[metrics\]'"):
        LPIPSScorer.load(weights)


def test_vgg_weights_are_renamed_to_the_lpips_slices():
    convolutions = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    state = {f"features.{i}.{p}": torch.full((1,), float(i)) for i in convolutions for p in ("weight", "bias")}
    state["classifier.0.weight"] = torch.zeros(1)
    renamed = lpips_backbone_state(state)
    assert len(renamed) == 26 and not any(k.startswith("classifier") for k in renamed)
    assert renamed["slice1.0.weight"].item() == 0 and renamed["slice1.2.bias"].item() == 2
    assert renamed["slice2.5.weight"].item() == 5 and renamed["slice2.7.weight"].item() == 7
    assert renamed["slice3.14.weight"].item() == 14 and renamed["slice4.17.weight"].item() == 17
    assert renamed["slice4.21.bias"].item() == 21 and renamed["slice5.24.weight"].item() == 24
    assert renamed["slice5.28.weight"].item() == 28
    with pytest.raises(ValueError, match="13 convolutions"):
        lpips_backbone_state({"features.0.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------------ CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return CLIPScorer.load(save_tiny_clip(tmp_path_factory.mktemp("clip")))


def test_clip_scores_are_cosines_times_100(tiny_clip):
    rng = np.random.default_rng(4)
    a = _uint8_image(rng.integers(0, 256, (48, 40, 3)))
    b = _uint8_image(rng.integers(0, 256, (48, 40, 3)))
    assert tiny_clip.image_similarity(a, a) == pytest.approx(100.0, abs=1e-4)
    model, processor = tiny_clip.model, tiny_clip.processor
    with torch.no_grad():
        pixels = processor(images=[a, b], return_tensors="pt")["pixel_values"]
        vision = model.vision_model(pixel_values=pixels).pooler_output
        image_embeds = torch.nn.functional.normalize(model.visual_projection(vision), dim=-1)
        tokens = processor(text=["a red star"], return_tensors="pt", padding=True)
        text = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        text_embeds = torch.nn.functional.normalize(model.text_projection(text), dim=-1)
    assert tiny_clip.image_similarity(a, b) == pytest.approx(100 * float(image_embeds[0] @ image_embeds[1]), abs=1e-4)
    assert tiny_clip.text_similarity(a, "a red star") == pytest.approx(100 * float(image_embeds[0] @ text_embeds[0]), abs=1e-4)
    # [0, 1] tensors are scored as the same picture
    tensor = torch.from_numpy(np.asarray(a, dtype=np.float64).transpose(2, 0, 1) / 255)
    assert tiny_clip.image_similarity(tensor, a) == pytest.approx(100.0, abs=1e-4)


def test_composition_metrics_with_clip(tiny_clip):
    rng = np.random.default_rng(5)
    background = rng.integers(0, 256, (32, 32, 3))
    composite = background.copy()
    composite[8:24, 8:24] = 255
    reference = np.full((16, 16, 3), 255)
    out = composition_metrics(
        _uint8_image(composite), _uint8_image(background), _uint8_image(reference), Box(8, 8, 24, 24),
        prompt="a red star", clip=tiny_clip,
    )  # fmt: skip
    assert out["clip_image_fg"] == pytest.approx(100.0, abs=1e-4)  # the crop is the reference
    assert out["clip_image_bg"] == pytest.approx(tiny_clip.image_similarity(_uint8_image(composite), _uint8_image(background)))
    assert out["clip_text"] == pytest.approx(tiny_clip.text_similarity(_uint8_image(composite), "a red star"))


def test_clip_not_cached_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.delenv(metrics.CLIP_MODEL_ENV, raising=False)
    started = time.perf_counter()
    with pytest.raises(MetricUnavailable) as error:
        CLIPScorer.load("tficon-test/no-such-clip-model")
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "not in the local Hugging Face cache" in message and "--clip-model" in message and metrics.CLIP_MODEL_ENV in message


# ------------------------------------------------------------------------------------------------ inversion


@pytest.fixture(scope="module")
def tiny():
    from tficon.model.tiny import tiny_model

    return tiny_model("sd2")


def test_inversion_metrics_reconstruct_and_measure(tiny):
    from tficon.composition.engine import Engine, noise_schedule
    from tficon.core import solver
    from tficon.toy.samples import toy_sample

    image = toy_sample().background  # 64 x 64
    engine = Engine(tiny)
    out = inversion_metrics(tiny, image, steps=4, order=2, return_tensors=True, engine=engine)
    t = out["tensors"]
    assert engine.sample_evals == 8  # 4 inversion + 4 reconstruction evaluations, all through the engine
    # the exceptional-prompt inversion is the engine's (cached: a second ask costs nothing and is the same)
    (expected_xt,), cached, evals = engine.invert([t["z0"]], 4, 2)
    assert cached == [True] and evals == 0 and torch.equal(t["x_T"], expected_xt)
    assert torch.equal(Engine(tiny).invert([t["z0"]], 4, 2)[0][0], expected_xt)  # and what a fresh engine computes
    # the reconstruction is the solver run back with the same conditioning
    embedding = tiny.exceptional_embedding()
    fn = lambda x, mt: tiny.unet(x, mt, encoder_hidden_states=embedding.expand(x.shape[0], -1, -1)).sample  # noqa: E731
    with torch.no_grad():
        z_rec = solver.sample(fn, t["x_T"], noise_schedule(tiny), 4, 2, prediction_type=tiny.prediction_type)
    assert torch.allclose(t["z_rec"], z_rec, atol=1e-6)
    # metrics are the plain definitions on the returned tensors
    z0, zr = t["z0"][0].double(), t["z_rec"][0].double()
    value_range = float(z0.max() - z0.min())
    assert out["latent"]["mse"] == pytest.approx(float(((z0 - zr) ** 2).mean()), rel=1e-12)
    assert out["latent"]["psnr"] == pytest.approx(10 * math.log10(value_range**2 / out["latent"]["mse"]), rel=PSNR_REL)
    assert out["latent_ssim_window"] == 7  # 8x8 latents: the largest odd window that fits
    assert out["latent"]["ssim"] == pytest.approx(ssim(z0, zr, data_range=value_range, window_size=7), rel=1e-12)
    assert out["image"]["mse"] == pytest.approx(mse(t["reconstruction"], t["input"]), rel=1e-12)
    with torch.no_grad():
        vae = ((tiny.decode_latent(t["z0"])[0].double() + 1) / 2).clamp(0, 1)
    assert out["vae"]["psnr"] == pytest.approx(psnr(vae, t["input"]), rel=1e-9)

    empty = inversion_metrics(tiny, image, steps=4, order=2, prompt="", return_tensors=True)
    assert torch.equal(empty["tensors"]["z0"], t["z0"])  # the same seeded encoding
    assert not torch.equal(empty["tensors"]["x_T"], t["x_T"])  # another conditioning, another inversion
    assert empty["prompt"] == "" and "tensors" not in inversion_metrics(tiny, image, steps=2, order=1)
    with pytest.raises(ValueError, match="image_size"):
        inversion_metrics(tiny, image, steps=2, image_size=60)

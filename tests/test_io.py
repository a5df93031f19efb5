"""Input loading and validation: image modes, masks, sizes, and the official uint8 truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tficon.core import io
from tficon.core.io import (
    check_image_size,
    check_mask_size,
    image_to_tensor,
    load_image,
    load_mask,
    resize_background,
    to_pil,
)


def rgb(size=(12, 8)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# load_image
# ---------------------------------------------------------------------------------------------------------------


def test_load_image_accepts_rgb_grey_arrays_and_paths(tmp_path):
    image = rgb()
    loaded = load_image(image, name="background")
    assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), np.asarray(image))
    assert loaded is not image

    path = tmp_path / "bg.png"
    image.save(path)
    assert np.array_equal(np.asarray(load_image(path, name="background")), np.asarray(image))
    assert np.array_equal(np.asarray(load_image(str(path), name="background")), np.asarray(image))

    array = np.asarray(image)
    assert np.array_equal(np.asarray(load_image(array, name="foreground")), array)
    grey = np.arange(96, dtype=np.uint8).reshape(8, 12)
    expanded = np.asarray(load_image(Image.fromarray(grey), name="foreground"))
    assert expanded.shape == (8, 12, 3) and (expanded == grey[:, :, None]).all()


@pytest.mark.parametrize(
    "mode, pattern",
    [
        ("RGBA", r"background has a transparent alpha channel \(mode RGBA.*flatten it onto the backdrop"),
        ("LA", r"background has a transparent alpha channel \(mode LA.*object mask"),
        ("PA", r"background has an alpha channel \(mode PA\)"),
        ("CMYK", r"background is a CMYK image.*convert"),
        ("I;16", r"background has more than 8 bits per channel \(mode I;16\)"),
        ("F", r"background has more than 8 bits per channel \(mode F\)"),
    ],
)
def test_load_image_rejects_ambiguous_modes(mode, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_image(Image.new(mode, (4, 4)), name="background")


def test_load_image_rejects_rgba_files_and_arrays(tmp_path):
    path = tmp_path / "fg.png"
    Image.new("RGBA", (5, 5), (1, 2, 3, 0)).save(path)
    with pytest.raises(ValueError, match=r"foreground has a transparent alpha channel \(mode RGBA"):
        load_image(path, name="foreground")
    with pytest.raises(ValueError, match=r"foreground has a transparent alpha channel \(mode RGBA array"):
        load_image(np.zeros((5, 5, 4), np.uint8), name="foreground")
    with pytest.raises(ValueError, match=r"foreground is a float32 array; pass uint8"):
        load_image(np.zeros((5, 5, 3), np.float32), name="foreground")
    with pytest.raises(ValueError, match=r"foreground must be an \(H, W, 3\), \(H, W, 4\)"):
        load_image(np.zeros((5, 5, 2), np.uint8), name="foreground")
    with pytest.raises(TypeError, match="foreground must be a path"):
        load_image(42, name="foreground")


def test_images_with_an_exact_rgb_reading_are_converted(tmp_path):
    image = rgb()
    pixels = np.asarray(image)
    for opaque in (image.convert("RGBA"), np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])):
        assert np.array_equal(np.asarray(load_image(opaque, name="background")), pixels)
    grey = image.convert("L")
    assert np.array_equal(np.asarray(load_image(grey.convert("LA"), name="background")), np.asarray(grey.convert("RGB")))
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert np.array_equal(np.asarray(load_image(palette, name="background")), np.asarray(palette.convert("RGB")))
    bits = image.convert("1")
    loaded = np.asarray(load_image(bits, name="background"))
    assert set(np.unique(loaded)) <= {0, 255} and np.array_equal(loaded[:, :, 0], np.asarray(bits) * 255)
    # a palette with a transparent entry: opaque when no pixel uses it, refused when one does
    fresh = Image.new("P", (4, 4), 1)
    fresh.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    fresh.save(tmp_path / "opaque.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "opaque.png", name="background"))[0, 0].tolist() == [200, 10, 10]
    fresh.putpixel((0, 0), 0)
    fresh.save(tmp_path / "holey.png", transparency=0)
    with pytest.raises(ValueError, match=r"background has a transparent alpha channel \(mode P with transparency"):
        load_image(tmp_path / "holey.png", name="background")


def test_empty_and_oversized_images_are_refused_before_copying(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"background is empty \(0x0 pixels"):
        load_image(Image.new("RGB", (0, 0)), name="background")
    with pytest.raises(ValueError, match=r"foreground is empty \(0x5 pixels"):
        load_image(np.zeros((5, 0, 3), np.uint8), name="foreground")
    with pytest.raises(ValueError, match=r"mask is empty \(0x0 pixels"):
        load_mask(np.zeros((0, 0), bool), name="mask")
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"background is 11x10 pixels.*limit of 100 pixels.*MAX_IMAGE_PIXELS"):
        load_image(np.zeros((10, 11, 3), np.uint8), name="background")
    Image.new("RGB", (11, 10)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"background is 11x10 pixels"):
        load_image(tmp_path / "big.png", name="background")
    with pytest.raises(ValueError, match=r"mask is 11x10 pixels"):
        load_mask(np.ones((10, 11), bool), name="mask")
    assert load_image(np.zeros((10, 11, 3), np.uint8), name="background", max_pixels=110).size == (11, 10)


def test_decompression_bomb_names_the_argument(monkeypatch, tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # PIL refuses files past twice its own limit
    with pytest.raises(ValueError, match=r"background: .*bomb\.png' is too large to open safely"):
        load_image(tmp_path / "bomb.png", name="background")


def test_a_box_of_the_wrong_length_is_reported_as_a_box():
    with pytest.raises(ValueError, match=r"mask_or_box: a box must be 4 integers \(x, y, w, h\).*got 3 value"):
        load_mask((1, 2, 3), name="mask_or_box")


def test_mask_size_rule():
    check_mask_size((48, 64), (48, 64), name="mask", image_name="background")
    check_mask_size((96, 128), (48, 64), name="mask", image_name="background")  # a scaled copy
    check_mask_size((64, 64), (48, 64), name="mask", image_name="background", working_size=(128, 128))
    with pytest.raises(ValueError, match=r"foreground_mask is 64x64 \(W x H\) but foreground is 64x48.*aspect"):
        check_mask_size((64, 64), (48, 64), name="foreground_mask", image_name="foreground")


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match=r"background: no such file .*nope\.png"):
        load_image(missing, name="background")
    with pytest.raises(FileNotFoundError, match=r"user_mask: no such file .*nope\.png"):
        load_mask(missing, name="user_mask")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"background: cannot read .*broken\.png"):
        load_image(broken, name="background")


# ---------------------------------------------------------------------------------------------------------------
# load_mask
# ---------------------------------------------------------------------------------------------------------------


def drawn_mask(size=(64, 48)):
    image = Image.new("L", size, 0)
    ImageDraw.Draw(image).ellipse([8, 6, 50, 40], fill=255)
    return image


def test_near_binary_jpeg_mask_is_accepted(tmp_path):
    clean = drawn_mask()
    path = tmp_path / "mask.jpg"
    clean.save(path, quality=75)
    noisy = np.asarray(Image.open(path))
    assert 0 < ((noisy != 0) & (noisy != 255)).mean()  # real JPEG noise
    mask = load_mask(path, name="user_mask", size=(48, 64))
    assert mask.dtype == bool and mask.shape == (48, 64)
    assert np.array_equal(mask, noisy > 127)
    assert (mask == (np.asarray(clean) > 127)).mean() > 0.99


def test_grey_ramp_is_rejected():
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (16, 1))
    with pytest.raises(ValueError, match=r"object_mask is not a binary mask.*threshold it"):
        load_mask(ramp, name="object_mask")
    with pytest.raises(ValueError, match="not a binary mask"):
        load_mask(ramp.astype(np.float64) / 255.0, name="object_mask")


def test_empty_and_mismatched_masks_are_rejected():
    with pytest.raises(ValueError, match=r"user_mask is empty \(no pixel set\)"):
        load_mask(np.zeros((8, 8), np.uint8), name="user_mask")
    with pytest.raises(ValueError, match=r"user_mask is empty"):
        load_mask(np.full((8, 8), 20, np.uint8), name="user_mask")  # near-binary, but nothing > 127
    with pytest.raises(ValueError, match=r"user_mask is 48x64 \(H x W\) but 64x48 is expected"):
        load_mask(drawn_mask(), name="user_mask", size=(64, 48))


def test_mask_encodings():
    reference = np.asarray(drawn_mask()) > 127
    assert np.array_equal(load_mask(drawn_mask(), name="m"), reference)
    assert np.array_equal(load_mask(drawn_mask().convert("1"), name="m"), reference)
    assert np.array_equal(load_mask(drawn_mask().convert("RGB"), name="m"), reference)
    assert np.array_equal(load_mask(reference, name="m"), reference)
    assert np.array_equal(load_mask(reference.astype(np.uint8), name="m"), reference)  # 0/1 uint8
    assert np.array_equal(load_mask(reference.astype(np.int64) * 255, name="m"), reference)
    assert np.array_equal(load_mask(reference.astype(np.float32), name="m"), reference)
    opaque = drawn_mask().convert("RGBA")
    assert np.array_equal(load_mask(opaque, name="m"), reference)
    see_through = opaque.copy()
    see_through.putalpha(drawn_mask())
    with pytest.raises(ValueError, match=r"m has a non-opaque alpha channel.*getchannel\('A'\)"):
        load_mask(see_through, name="m")
    with pytest.raises(ValueError, match=r"m is a float mask with values outside \[0, 1\]"):
        load_mask(reference.astype(np.float32) * 2, name="m")
    with pytest.raises(ValueError, match=r"m must be a 2-D mask"):
        load_mask(np.zeros((2, 3, 4, 5), bool), name="m")


# ---------------------------------------------------------------------------------------------------------------
# Sizes, background, tensor <-> PIL
# ---------------------------------------------------------------------------------------------------------------


def test_check_image_size():
    assert check_image_size((512, 768), 64, name="image_size") == (512, 768)
    message = r"image_size \(H, W\) = \(500, 512\) must be multiples of 8; use e.g. \(496, 512\)"
    with pytest.raises(ValueError, match=message):
        check_image_size((500, 512), 8, name="image_size")
    with pytest.raises(ValueError, match="positive integers"):
        check_image_size((0, 512), 8, name="image_size")
    with pytest.raises(ValueError, match="positive integers"):
        check_image_size((512.0, 512), 8, name="image_size")
    with pytest.raises(ValueError, match="pair"):
        check_image_size(512, 8, name="image_size")


def test_resize_background_stretches_with_lanczos():
    image = rgb((30, 20))
    tensor = resize_background(image, (16, 24))
    assert tensor.shape == (3, 16, 24) and tensor.dtype == torch.float32
    resized = np.asarray(image.resize((24, 16), Image.LANCZOS), dtype=np.float32)
    expected = 2.0 * (resized / np.float32(255.0)) - 1.0
    assert torch.equal(tensor, torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    assert tensor.min() >= -1 and tensor.max() <= 1
    # Exact end points: 0 -> -1, 255 -> 1.
    ends = image_to_tensor(Image.fromarray(np.array([[[0, 255, 0]]], np.uint8)))
    assert ends.flatten().tolist() == [-1.0, 1.0, -1.0]


def test_to_pil_truncates_like_the_official_code():
    # (x + 1) / 2 * 255 = 127.9 rounds to 128 but truncates to 127.
    x = torch.full((3, 2, 2), 127.9 / 127.5 - 1.0)
    assert np.asarray(to_pil(x))[0, 0].tolist() == [127, 127, 127]
    assert round(float((x[0, 0, 0] + 1) / 2 * 255)) == 128
    clamped = to_pil(torch.tensor([-3.0, 1.0, 7.0]).view(3, 1, 1))
    assert np.asarray(clamped)[0, 0].tolist() == [0, 255, 255]
    batch = to_pil(torch.zeros(1, 3, 4, 5))
    assert batch.size == (5, 4) and batch.mode == "RGB" and np.asarray(batch).max() == 127
    # A round trip through the [-1, 1] mapping loses at most one LSB, always downwards (truncation).
    image = np.asarray(rgb((64, 64)), dtype=np.int64)
    back = np.asarray(to_pil(image_to_tensor(Image.fromarray(image.astype(np.uint8)))), dtype=np.int64)
    assert set(np.unique(image - back)) == {0, 1}


def test_to_pil_rejects_bad_tensors():
    with pytest.raises(ValueError, match=r"shape \(3, H, W\)"):
        to_pil(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        to_pil(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(TypeError, match="torch.Tensor"):
        to_pil(np.zeros((3, 2, 2)))

"""Placement geometry: goldens (docs/algorithm.md §2.2-2.8), OpenCV oracles, bounds, non-512 sizes.

OpenCV is used only here, as the oracle for the official code's mask handling; the core does not import it.
The |F| counts of the official samples depend on the official segmentation files, which do not ship: the index sets
are compared instead against a plain-loop transcription of docs/algorithm.md §2.7 on synthetic object masks.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tficon.core.placement import (
    Box,
    Placement,
    bbox_from_mask,
    compute_placement,
    cut_and_paste,
    nearest_resize,
    placement_from_center_scale,
    prepare_foreground,
    region_indices,
    segmentation_at,
)

SD = dict(image_size=(512, 512), latent_factor=8)


# ---------------------------------------------------------------------------------------------------------------
# Independent slow references
# ---------------------------------------------------------------------------------------------------------------


def slow_region(H, W, fg_w, fg_h, f_row, f_col, mpad, h, w):
    """Spec 2.6/2.7 with plain Python loops: boxes, B, F, R, c and Q on an h x w grid."""
    top = int(0.5 * (H - fg_h) / H * h)
    bottom = int(0.5 * (H + fg_h) / H * h)
    left = int(0.5 * (W - fg_w) / W * w)
    right = int(0.5 * (W + fg_w) / W * w)
    n, m = bottom - top, right - left
    rho, kappa = int(f_row * h), int(f_col * w)
    row0, col0 = rho - math.ceil(n / 2), kappa - math.ceil(m / 2)
    seg = [[mpad[i * (H // h)][j * (W // w)] for j in range(w)] for i in range(h)]
    box = [(row0 + i) * w + (col0 + j) for i in range(n) for j in range(m)]
    ref_box = [(top + i) * w + (left + j) for i in range(n) for j in range(m)]
    fg, fg_ref, crop = [], [], []
    for u in range(n):
        for v in range(m):
            if seg[top + u][left + v] == 1:
                fg.append((rho - math.ceil(n / 2) + u) * w + (kappa - math.ceil(m / 2) + v))
                fg_ref.append((top + u) * w + (left + v))
                crop.append(u * m + v)
    boxes = ((top, bottom, left, right), (row0, row0 + n, col0, col0 + m))
    return boxes, box, fg, fg_ref, crop, ref_box


def slow_centred_region(H, W, fg_w, fg_h, f_row, f_col, mpad, h, w):
    """The centred geometry with plain Python loops: the reference box covers the object window (end rounded
    up); the target box is the reference box moved by the pixel offset of the object, rounded to cells; the mask
    is read at cell centres."""
    sh, sw = H // h, W // w
    top = int(0.5 * (H - fg_h) / H * h)
    bottom = math.ceil(((H + fg_h) // 2) * h / H)
    left = int(0.5 * (W - fg_w) / W * w)
    right = math.ceil(((W + fg_w) // 2) * w / W)
    n, m = bottom - top, right - left
    start_row = math.floor(f_row * H - fg_h / 2 + 0.5)
    start_col = math.floor(f_col * W - fg_w / 2 + 0.5)
    shift_row = math.floor((start_row - (H - fg_h) // 2) * h / H + 0.5)
    shift_col = math.floor((start_col - (W - fg_w) // 2) * w / W + 0.5)
    # cells of the moved box beyond the grid are dropped from both boxes
    while top + shift_row < 0:
        top += 1
    while bottom + shift_row > h:
        bottom -= 1
    while left + shift_col < 0:
        left += 1
    while right + shift_col > w:
        right -= 1
    n, m = bottom - top, right - left
    row0, col0 = top + shift_row, left + shift_col
    seg = [[mpad[i * sh + sh // 2][j * sw + sw // 2] for j in range(w)] for i in range(h)]
    box = [(row0 + i) * w + (col0 + j) for i in range(n) for j in range(m)]
    ref_box = [(top + i) * w + (left + j) for i in range(n) for j in range(m)]
    fg, fg_ref, crop = [], [], []
    for u in range(n):
        for v in range(m):
            if seg[top + u][left + v] == 1:
                fg.append((row0 + u) * w + (col0 + v))
                fg_ref.append((top + u) * w + (left + v))
                crop.append(u * m + v)
    boxes = ((top, bottom, left, right), (row0, row0 + n, col0, col0 + m))
    return boxes, box, fg, fg_ref, crop, ref_box


def oracle_mpad(object_mask: Image.Image, fg_w, fg_h, H, W):
    """Official object-mask path with the real libraries: PIL convert("1"), cv2 INTER_NEAREST, centring."""
    bits = np.array(object_mask.convert("1"), dtype=np.uint8)
    resized = cv2.resize(bits, (fg_w, fg_h), interpolation=cv2.INTER_NEAREST)
    mpad = np.zeros((H, W))
    r0, c0 = (H - fg_h) // 2, (W - fg_w) // 2
    mpad[r0 : r0 + fg_h, c0 : c0 + fg_w] = resized
    return mpad


def assert_region_matches_slow(placement: Placement, mpad, h, w):
    H, W = placement.image_size
    fg_w, fg_h = placement.fg_size
    slow = slow_centred_region if placement.geometry == "centred" else slow_region
    boxes, box, fg, fg_ref, crop, ref_box = slow(H, W, fg_w, fg_h, placement.f_row, placement.f_col, mpad, h, w)
    reference, target = placement.boxes_at(h, w)
    assert (reference.top, reference.bottom, reference.left, reference.right) == boxes[0]
    assert (target.top, target.bottom, target.left, target.right) == boxes[1]
    index = region_indices(placement, mpad, h, w)
    assert (index.height, index.width) == (h, w)
    for name, got, want in (
        ("box", index.box, box),
        ("fg", index.fg, fg),
        ("fg_ref", index.fg_ref, fg_ref),
        ("fg_crop", index.fg_crop, crop),
        ("ref_box", index.ref_box, ref_box),
    ):
        assert got.dtype == torch.long, name
        assert got.tolist() == want, name
    assert target.inside(h, w) and reference.inside(h, w)
    assert int(index.box.min()) >= 0 and int(index.box.max()) < h * w
    return index


def user_mask(bbox, size=(512, 512)):
    """Synthetic user mask whose first external contour (OpenCV order) has exactly ``bbox``.

    The target blob is a ring with a blob nested in its hole (not an external contour), and a decoy blob sits
    above it: its first pixel comes earlier in raster order, so OpenCV lists it second.
    """
    x, y, w, h = bbox
    mask = np.zeros(size, dtype=np.uint8)
    mask[y : y + h, x : x + w] = 255
    mask[y + 3 : y + h - 3, x + 3 : x + w - 3] = 0
    mask[y + h // 2 - 1 : y + h // 2 + 1, x + w // 2 - 1 : x + w // 2 + 1] = 255
    mask[1:4, 1:9] = 255
    return mask


def object_mask_image(size, kind="ellipse"):
    """Synthetic object segmentation of PIL size (W, H), mode L, with anti-aliased-like grey edge pixels."""
    w, h = size
    image = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(image)
    if kind == "ellipse":
        draw.ellipse([w * 0.08, h * 0.1, w * 0.9, h * 0.95], fill=255)
        draw.rectangle([w * 0.4, 0, w * 0.55, h * 0.3], fill=255)
    elif kind == "left-bar":  # thin object, off the stride-64 sampling column at 8x8 (|F_8| = 0)
        draw.rectangle([0, int(h * 0.05), int(w * 0.3), int(h * 0.95)], fill=255)
    array = np.array(image)
    edge = (array == 255) & (np.roll(array, 1, axis=1) == 0)
    array[edge] = 200  # grey edge pixels: near-binary, as real masks
    return Image.fromarray(array)


# ---------------------------------------------------------------------------------------------------------------
# Spec 2.8 goldens
# ---------------------------------------------------------------------------------------------------------------

TABLE = [
    # bbox, fg (W, H), f_row, f_col, scale, (W', H'), pixel rows, pixel cols, param [r0, r1, c0, c1]
    ((172, 307, 167, 204), (401, 292), 0.80, 0.50, 0.80, (204, 149), (334, 483), (154, 358), (41, 60, 19, 44)),
    ((316, 291, 166, 154), (679, 631), 0.72, 0.78, 0.65, (166, 154), (291, 445), (316, 482), (36, 55, 38, 59)),
    ((273, 115, 222, 230), (739, 766), 0.45, 0.75, 0.90, (222, 230), (115, 345), (273, 495), (13, 42, 34, 61)),
    ((351, 102, 65, 204), (309, 964), 0.40, 0.75, 0.80, (65, 204), (102, 306), (351, 416), (12, 37, 43, 52)),
]


@pytest.mark.parametrize("row", TABLE, ids=["panda", "chicken", "buildings", "eiffel"])
def test_spec_table_geometry(row):
    bbox, fg_size, f_row, f_col, scale, fg_new, rows, cols, param = row
    mask = user_mask(bbox)
    # The decoy blob is really a second external contour and the target is OpenCV's index 0.
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert len(contours) == 2 and tuple(cv2.boundingRect(contours[0])) == bbox
    assert bbox_from_mask(mask) == bbox

    placement = compute_placement(mask, fg_size, **SD)
    assert placement.bbox == bbox
    assert (placement.f_row, placement.f_col, placement.scale) == (f_row, f_col, scale)
    assert placement.fg_size == fg_new
    assert (placement.target_window.top, placement.target_window.bottom) == rows
    assert (placement.target_window.left, placement.target_window.right) == cols
    latent = placement.latent_target_box
    assert (latent.top, latent.bottom, latent.left, latent.right) == param
    assert placement.latent_ref_box.height == latent.height and placement.latent_ref_box.width == latent.width
    # The direct box route gives the same numbers (mask size = working size = 512).
    assert compute_placement(bbox, fg_size, **SD) == placement
    assert placement.attention_grids == ((64, 64), (32, 32), (16, 16), (8, 8))


@pytest.mark.parametrize("row", TABLE, ids=["panda", "chicken", "buildings", "eiffel"])
def test_spec_table_index_sets_match_slow_reference(row):
    bbox, fg_size = row[0], row[1]
    placement = compute_placement(bbox, fg_size, **SD)
    obj = object_mask_image(fg_size)
    foreground = Image.new("RGB", fg_size, (200, 40, 10))
    _, mpad = prepare_foreground(foreground, obj, placement)
    np.testing.assert_array_equal(mpad, oracle_mpad(obj, *placement.fg_size, 512, 512))
    counts = []
    for r in (64, 32, 16, 8):
        index = assert_region_matches_slow(placement, mpad, r, r)
        counts.append(len(index.fg))
    assert counts[0] > counts[1] > counts[2] > 0


def test_panda_boxes_at_every_resolution():
    placement = compute_placement((172, 307, 167, 204), (401, 292), **SD)
    expected = {
        64: ((22, 41, 19, 44), (41, 60, 19, 44)),
        32: ((11, 20, 9, 22), (20, 29, 9, 22)),
        16: ((5, 10, 4, 11), (9, 14, 4, 11)),
        8: ((2, 5, 2, 5), (4, 7, 2, 5)),
    }
    for r, (ref, tgt) in expected.items():
        reference, target = placement.boxes_at(r, r)
        assert (reference.top, reference.bottom, reference.left, reference.right) == ref
        assert (target.top, target.bottom, target.left, target.right) == tgt
    assert placement.latent_ref_box == Box(22, 19, 41, 44)
    assert placement.ref_window == Box(181, 154, 330, 358)  # [(512-149)//2, (512+149)//2) x [154, 358)


def test_zero_object_positions_at_coarse_layer():
    # Eiffel geometry with a thin object left of the stride-64 sampling column: |F_8| = 0, |F_16| > 0.
    placement = compute_placement((351, 102, 65, 204), (309, 964), **SD)
    obj = object_mask_image((309, 964), kind="left-bar")
    _, mpad = prepare_foreground(Image.new("RGB", (309, 964)), obj, placement)
    sizes = {r: len(assert_region_matches_slow(placement, mpad, r, r).fg) for r in (64, 32, 16, 8)}
    assert sizes[8] == 0 and sizes[16] > 0
    index = region_indices(placement, mpad, 8, 8)
    assert index.fg.numel() == index.fg_ref.numel() == index.fg_crop.numel() == 0
    assert index.ref_box.numel() == index.box.numel() == 3 * 1  # pseudo-cross fallback box stays available


def test_off_centre_box_has_no_translation_between_grids():
    # A box in the top-left quadrant: target indices differ from reference indices by a fixed offset per grid.
    placement = compute_placement((40, 30, 120, 90), (300, 200), **SD)
    obj = object_mask_image((300, 200))
    _, mpad = prepare_foreground(Image.new("RGB", (300, 200)), obj, placement)
    for r in (64, 32, 16, 8):
        index = assert_region_matches_slow(placement, mpad, r, r)
        reference, target = placement.boxes_at(r, r)
        offset = (target.top - reference.top) * r + (target.left - reference.left)
        assert torch.equal(index.fg - index.fg_ref, torch.full_like(index.fg, offset))
        assert offset < 0


# ---------------------------------------------------------------------------------------------------------------
# Official float expressions
# ---------------------------------------------------------------------------------------------------------------


def test_scale_uses_the_official_float_expression():
    # h/((h/w)*256) = 0.8749999999999999 rounds to 0.87, where w/256 = 0.875 would round to 0.88.
    placement = compute_placement((100, 200, 224, 9), (400, 100), **SD)
    assert placement.scale == 0.87
    assert placement.fg_size == (int(0.87 * 256), int(0.87 * 256 * 0.25))


def test_centre_uses_python_round_on_binary_values():
    # c_y = 192 -> 0.375 exactly -> 0.38 and c_x = 320 -> 0.625 exactly -> 0.62 (ties to even).
    placement = compute_placement((270, 142, 100, 100), (100, 100), **SD)
    assert (placement.f_row, placement.f_col) == (0.38, 0.62)


def test_mask_with_the_background_original_size():
    # Mask 1024 x 768 (H x W): fractions in mask coordinates, scale base min(1024, 768) / 2 = 384.
    mask = np.zeros((1024, 768), dtype=bool)
    mask[600:700, 300:500] = True
    placement = compute_placement(mask, (200, 100), **SD)
    assert placement.bbox == (300, 600, 200, 100)
    assert placement.mask_size == (1024, 768)
    assert (placement.f_row, placement.f_col) == (round(650 / 1024, 2), round(400 / 768, 2)) == (0.63, 0.52)
    assert placement.scale == round(100 / ((100 / 200) * 384), 2) == 0.52
    assert placement.fg_size == (int(0.52 * 256), int(0.52 * 256 * 0.5))


def test_from_center_scale_matches_mask_route():
    from_mask = compute_placement((172, 307, 167, 204), (401, 292), **SD)
    direct = placement_from_center_scale(0.8, 0.5, 0.8, (401, 292), **SD)
    assert direct.bbox is None
    for field in ("fg_size", "ref_window", "target_window", "latent_ref_box", "latent_target_box"):
        assert getattr(direct, field) == getattr(from_mask, field)


def test_portrait_and_landscape_sizes_follow_truncation():
    # a = H / W; portrait: H' = int(L), W' = int(L / a); otherwise W' = int(L), H' = int(L * a).
    portrait = placement_from_center_scale(0.5, 0.5, 0.8, (309, 964), **SD)
    assert portrait.fg_size == (int(204.8 / (964 / 309)), 204) == (65, 204)
    square = placement_from_center_scale(0.5, 0.5, 0.8, (300, 300), **SD)
    assert square.fg_size == (204, 204)


# ---------------------------------------------------------------------------------------------------------------
# OpenCV oracles
# ---------------------------------------------------------------------------------------------------------------


def random_masks(rng, count):
    for trial in range(count):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        kind = trial % 3
        if kind == 0:  # random noise of random density: many blobs, diagonal touches
            mask = rng.random((h, w)) < rng.uniform(0.05, 0.7)
        elif kind == 1:  # rectangles, rings with holes, blobs nested in holes, xor'ed overlaps
            mask = np.zeros((h, w), dtype=bool)
            for _ in range(int(rng.integers(1, 8))):
                y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
                y1, x1 = y0 + int(rng.integers(1, 15)), x0 + int(rng.integers(1, 15))
                if rng.random() < 0.5:
                    mask[y0:y1, x0:x1] = True
                    if y1 - y0 > 2 and x1 - x0 > 2:
                        mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = False
                    if y1 - y0 > 4 and x1 - x0 > 4:
                        mask[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = rng.random() < 0.5
                else:
                    mask[y0:y1, x0:x1] = ~mask[y0:y1, x0:x1]
        else:  # noise with empty rows: blobs side by side on one scan line
            mask = rng.random((h, w)) < 0.5
            mask[::3] = False
        if mask.any():
            yield mask


def test_first_contour_matches_opencv_on_random_masks():
    rng = np.random.default_rng(1234)
    checked = 0
    for mask in random_masks(rng, 1500):
        contours, _ = cv2.findContours(mask.astype(np.uint8) * 255, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        assert bbox_from_mask(mask, "first") == tuple(cv2.boundingRect(contours[0])), mask.astype(int)
        checked += 1
    assert checked > 1400


def test_external_contours_skip_blobs_nested_in_holes():
    mask = np.zeros((30, 30), dtype=bool)
    mask[2:20, 2:20] = True
    mask[4:18, 4:18] = False
    mask[12:14, 12:14] = True  # inside the hole: later in raster order, but not an external contour
    mask[5:7, 25:28] = True  # outside: external, first pixel earlier than the nested blob's
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert [tuple(cv2.boundingRect(c)) for c in contours] == [(25, 5, 3, 2), (2, 2, 18, 18)]
    assert bbox_from_mask(mask) == (25, 5, 3, 2)
    assert bbox_from_mask(mask, "largest") == (2, 2, 18, 18)
    assert bbox_from_mask(mask, "union") == (2, 2, 26, 18)


def test_box_rules_first_largest_union():
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[2:30, 5:40] = 255  # large, first in raster order -> last in OpenCV's list
    mask[40:45, 50:55] = 255  # small, lower -> OpenCV's index 0
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    assert tuple(cv2.boundingRect(contours[0])) == (50, 40, 5, 5)
    assert bbox_from_mask(mask) == (50, 40, 5, 5)
    assert bbox_from_mask(mask, "largest") == (5, 2, 35, 28)
    assert bbox_from_mask(mask, "union") == (5, 2, 50, 43)
    largest = compute_placement(mask, (10, 10), (64, 64), 4, levels=3, box_rule="largest", clip=True)
    assert largest.bbox == (5, 2, 35, 28) and largest.scale == round(35 / 32, 2)
    with pytest.raises(ValueError, match="rule"):
        bbox_from_mask(mask, "biggest")
    with pytest.raises(ValueError, match="empty"):
        bbox_from_mask(np.zeros((8, 8), dtype=bool))


def test_uint8_and_pil_masks_binarise_above_127():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[5:10, 5:10] = 128
    mask[12:15, 12:15] = 127  # not set
    assert bbox_from_mask(mask) == (5, 5, 5, 5)
    assert bbox_from_mask(Image.fromarray(mask)) == (5, 5, 5, 5)


def test_nearest_resize_matches_opencv():
    rng = np.random.default_rng(5)
    pairs = [(2, 98), (2, 196), (3, 7), (309, 65), (964, 204), (292, 149), (10, 13)]
    pairs += [tuple(int(v) for v in rng.integers(1, 300, size=2)) for _ in range(150)]
    for src, dst in pairs:
        array = rng.integers(0, 255, size=(src, max(1, src // 3 + 1)), dtype=np.uint8)
        want = cv2.resize(array, (dst // 2 + 1, dst), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(nearest_resize(array, (dst, dst // 2 + 1)), want)
    # Where dst * src / dst_size is an exact integer OpenCV's reciprocal can land one below floor(.):
    line = np.arange(2, dtype=np.uint8)[None]
    assert cv2.resize(line, (98, 1), interpolation=cv2.INTER_NEAREST)[0, 49] == 0  # floor(49 * 2 / 98) = 1
    assert nearest_resize(line, (1, 98))[0, 49] == 0


def test_object_mask_uses_pil_dithering():
    # A uniform grey 100 is 0 under any threshold but Floyd-Steinberg turns about 100/255 of it on.
    array = np.zeros((40, 60), dtype=np.uint8)
    array[10:30, 10:50] = 100
    array[:, 55:] = 255
    obj = Image.fromarray(array)
    placement = placement_from_center_scale(0.5, 0.5, 0.45, (60, 40), **SD)
    _, mpad = prepare_foreground(Image.new("RGB", (60, 40)), obj, placement)
    np.testing.assert_array_equal(mpad, oracle_mpad(obj, *placement.fg_size, 512, 512))
    window = mpad[placement.ref_window.slices()]
    grey = nearest_resize(array, placement.fg_size[::-1]) == 100
    assert 0.3 < window[grey].mean() < 0.5
    # Near-binary masks (JPEG-like noise near 0 and 255): the dithered result equals thresholding here.
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random((40, 60)) < 0.5, 255, 0).astype(np.uint8)
    noisy = np.where(noisy == 255, noisy - rng.integers(0, 8, noisy.shape), noisy + rng.integers(0, 8, noisy.shape))
    noisy = noisy.astype(np.uint8)
    _, mpad = prepare_foreground(Image.new("RGB", (60, 40)), Image.fromarray(noisy), placement)
    want = nearest_resize(noisy >= 128, placement.fg_size[::-1])
    np.testing.assert_array_equal(mpad[placement.ref_window.slices()], want)


# ---------------------------------------------------------------------------------------------------------------
# Pixels: reference canvas and cut-and-paste
# ---------------------------------------------------------------------------------------------------------------


def test_prepare_foreground_canvas_and_cut_and_paste():
    rng = np.random.default_rng(3)
    fg_pixels = rng.integers(0, 256, size=(50, 80, 3), dtype=np.uint8)
    foreground = Image.fromarray(fg_pixels)
    obj = object_mask_image((80, 50))
    placement = compute_placement((20, 10, 30, 20), (80, 50), (64, 64), 4, levels=3)
    reference, mpad = prepare_foreground(foreground, obj, placement)
    assert reference.shape == (3, 64, 64) and reference.dtype == torch.float32
    assert mpad.dtype == np.float64 and set(np.unique(mpad)) <= {0.0, 1.0}

    w_fg, h_fg = placement.fg_size
    resized = np.asarray(foreground.resize((w_fg, h_fg), Image.BICUBIC), dtype=np.float32)
    expected = np.full((64, 64, 3), -1.0, dtype=np.float32)
    r0, c0 = (64 - h_fg) // 2, (64 - w_fg) // 2
    expected[r0 : r0 + h_fg, c0 : c0 + w_fg] = 2.0 * (resized / np.float32(255.0)) - 1.0
    assert torch.equal(reference, torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    assert not mpad[: r0].any() and not mpad[r0 + h_fg :].any()

    background = torch.from_numpy(rng.uniform(-1, 1, size=(3, 64, 64)).astype(np.float32))
    composite = cut_and_paste(background, reference, mpad, placement)
    expected_composite = background.clone()
    t, ref = placement.target_window, placement.ref_window
    for i in range(t.height):
        for j in range(t.width):
            if mpad[ref.top + i, ref.left + j] == 1:
                expected_composite[:, t.top + i, t.left + j] = reference[:, ref.top + i, ref.left + j]
    assert torch.equal(composite, expected_composite)
    assert not torch.equal(composite, background)


def test_prepare_foreground_rejects_mismatched_inputs():
    placement = placement_from_center_scale(0.5, 0.5, 0.5, (100, 80), **SD)
    with pytest.raises(ValueError, match="foreground is 90x80"):
        prepare_foreground(Image.new("RGB", (90, 80)), np.ones((80, 100), bool), placement)
    with pytest.raises(ValueError, match="object_mask is empty"):
        prepare_foreground(Image.new("RGB", (100, 80)), np.zeros((80, 100), bool), placement)
    with pytest.raises(TypeError, match="object_mask"):
        prepare_foreground(Image.new("RGB", (100, 80)), np.ones((80, 100), np.float32), placement)


def test_segmentation_at_samples_top_left():
    mpad = np.arange(64.0).reshape(8, 8)
    np.testing.assert_array_equal(segmentation_at(mpad, 4), [[0, 4], [32, 36]])
    np.testing.assert_array_equal(segmentation_at(mpad, (4, 2)), [[0, 2, 4, 6], [32, 34, 36, 38]])


def test_region_masks_for_display():
    placement = compute_placement((172, 307, 167, 204), (401, 292), **SD)
    _, mpad = prepare_foreground(Image.new("RGB", (401, 292)), object_mask_image((401, 292)), placement)
    index = region_indices(placement, mpad, 32, 32)
    maps = index.masks()
    _, target = placement.boxes_at(32, 32)
    assert maps["box"].shape == (32, 32) and maps["box"].dtype == torch.bool
    assert int(maps["box"].sum()) == target.height * target.width
    assert bool(maps["box"][target.slices()].all())
    assert torch.equal(maps["background"], ~maps["box"])
    assert int(maps["object"].sum()) == int(maps["reference_object"].sum()) == len(index.fg)
    assert not bool((maps["object"] & ~maps["box"]).any())


# ---------------------------------------------------------------------------------------------------------------
# Bounds: the official clamp bug fixed, clear errors, clipping
# ---------------------------------------------------------------------------------------------------------------


def test_box_ending_exactly_at_the_edge_is_valid():
    # User box touching the right edge; the target window ends at 512 and the latent box at 64, where the
    # official min(63, .) clamp would make the slices one column short and crash.
    mask = user_mask((367, 200, 145, 145))
    placement = compute_placement(mask, (300, 300), **SD)
    assert placement.target_window == Box(198, 367, 343, 512)
    assert placement.latent_target_box == Box(23, 45, 42, 64)
    assert placement.latent_target_box.width == placement.latent_ref_box.width
    obj = object_mask_image((300, 300))
    reference, mpad = prepare_foreground(Image.new("RGB", (300, 300), (255, 0, 0)), obj, placement)
    composite = cut_and_paste(torch.zeros(3, 512, 512), reference, mpad, placement)
    assert composite[0, :, 367:].max() == 1.0 and composite[0, :, :367].abs().max() == 0
    for r in (64, 32, 16, 8):
        assert_region_matches_slow(placement, mpad, r, r)


def test_box_leaving_the_image_raises_naming_the_box():
    # A tall thin user box at the right edge with a square foreground: the 199 px wide object leaves the image.
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:300, 462:512] = True
    with pytest.raises(ValueError, match=r"\(462, 100, 50, 200\).*clip_box=True"):
        compute_placement(mask, (300, 300), **SD)
    with pytest.raises(ValueError, match="leaves the 512x512 image"):
        placement_from_center_scale(0.02, 0.5, 0.5, (300, 300), **SD)


def test_coarse_grid_box_starting_above_the_grid_wraps_like_the_official_code():
    # H' = 150 at f_row = 0.24: pixel rows [47, 197) and 64-grid rows [5, 24) fit, but on the 8x8 grid
    # n = 3 and int(0.24 * 8) = 1 give rows [-1, 2). The official code indexes row -1 with a negative
    # linear index, which wraps to the last row: reproduced, not an error.
    scale = 150 / 256
    placement = placement_from_center_scale(0.24, 0.5, scale, (100, 100), **SD)
    target = placement.boxes_at(8, 8)[1]
    assert (target.top, target.bottom) == (-1, 2)
    mpad = np.zeros((512, 512))
    region = region_indices(placement, mpad, 8, 8)
    rows = sorted({int(i) // 8 for i in region.box})
    assert rows == [0, 1, 7]  # row -1 wrapped to row 7
    assert ((region.box >= 0) & (region.box < 64)).all()
    # clip=True moves the centre so that every grid fits instead
    clipped = placement_from_center_scale(0.24, 0.5, scale, (100, 100), **SD, clip=True)
    assert clipped.clipped and (clipped.f_row, clipped.f_col) == (0.25, 0.5)
    assert clipped.boxes_at(8, 8)[1] == Box(0, 2, 3, 5)


def _fits(f_row, f_col, scale, fg, image_size, factor, levels):
    try:
        placement_from_center_scale(f_row, f_col, scale, fg, image_size, factor, levels=levels)
        return True
    except ValueError:
        return False


def test_clip_moves_the_centre_to_the_nearest_fitting_fraction():
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:300, 462:512] = True
    placement = compute_placement(mask, (300, 300), **SD, clip=True)
    assert placement.clipped
    assert placement.f_row == 0.39  # unchanged: round(200 / 512, 2)
    # Independent brute force over the 0.01 grid: the nearest fraction to 0.95 for which everything fits.
    fitting = [k / 100 for k in range(101) if _fits(0.39, k / 100, placement.scale, (300, 300), (512, 512), 8, 4)]
    assert placement.f_col == min(fitting, key=lambda c: (abs(c - 0.95), abs(c - 0.5)))
    assert placement.target_window.inside(512, 512) and placement.target_window.right <= 512
    for h, w in placement.attention_grids:
        _, target = placement.boxes_at(h, w)
        assert target.inside(h, w)
    # A placement that already fits is left alone by clip=True.
    inside = compute_placement((172, 307, 167, 204), (401, 292), **SD, clip=True)
    assert not inside.clipped and inside == compute_placement((172, 307, 167, 204), (401, 292), **SD, clip=False)
    # Off the top-left corner: both axes move inward.
    corner = placement_from_center_scale(0.0, 0.01, 0.6, (120, 80), **SD, clip=True)
    assert corner.clipped and corner.f_row > 0 and corner.f_col > 0.01
    assert corner.target_window.top >= 0 and corner.target_window.left >= 0


def test_too_large_or_too_small_objects_raise():
    with pytest.raises(ValueError, match="too large"):
        placement_from_center_scale(0.5, 0.5, 2.5, (100, 100), **SD)
    with pytest.raises(ValueError, match="too small"):
        placement_from_center_scale(0.5, 0.5, 0.001, (100, 100), **SD)
    with pytest.raises(ValueError, match="positive width"):
        compute_placement((10, 10, 0, 5), (100, 100), **SD)
    with pytest.raises(ValueError, match="empty mask"):
        compute_placement(np.zeros((512, 512), np.uint8) + 100, (100, 100), **SD)


# ---------------------------------------------------------------------------------------------------------------
# Other sizes
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_size, factor, levels, mask_size, bbox, fg",
    [
        ((64, 64), 2, 4, (64, 64), (30, 8, 24, 20), (90, 70)),  # toy model: 64 px, f = 2, grids 32/16/8/4
        ((64, 64), 4, 3, (64, 64), (30, 8, 24, 20), (90, 70)),  # the previous toy model: f = 4, grids 16/8/4
        ((768, 768), 8, 4, (768, 768), (100, 420, 260, 200), (500, 380)),  # SD at 768: grids 96/48/24/12
        ((256, 384), 8, 4, (256, 384), (230, 60, 120, 150), (200, 260)),  # non-square: grids 32x48 ... 4x6
    ],
    ids=["toy-64", "toy-v2-64", "sd-768", "256x384"],
)
@pytest.mark.parametrize("geometry", ["official", "centred"])
def test_other_sizes_stay_consistent(image_size, factor, levels, mask_size, bbox, fg, geometry):
    mask = np.zeros(mask_size, dtype=bool)
    x, y, w, h = bbox
    mask[y : y + h, x : x + w] = True
    placement = compute_placement(mask, fg, image_size, factor, levels=levels, geometry=geometry)
    assert placement.geometry == geometry
    H, W = image_size
    assert placement.latent_size == (H // factor, W // factor)
    assert placement.attention_grids[0] == placement.latent_size
    if geometry == "official":
        assert (placement.f_row, placement.f_col) == (round((y + h / 2) / H, 2), round((x + w / 2) / W, 2))
    else:  # the centred layout uses the box's exact centre
        assert (placement.f_row, placement.f_col) == ((y + h / 2) / H, (x + w / 2) / W)
    obj = object_mask_image(fg)
    reference, mpad = prepare_foreground(Image.new("RGB", fg, (9, 9, 9)), obj, placement)
    assert reference.shape == (3, H, W) and mpad.shape == (H, W)
    np.testing.assert_array_equal(mpad, oracle_mpad(obj, *placement.fg_size, H, W))
    for h_grid, w_grid in placement.attention_grids:
        index = assert_region_matches_slow(placement, mpad, h_grid, w_grid)
        reference_box, target = placement.boxes_at(h_grid, w_grid)
        assert len(index.box) == len(index.ref_box) == target.height * target.width
        assert reference_box.height == target.height and reference_box.width == target.width
    assert len(region_indices(placement, mpad, *placement.latent_size).fg) > 0


def test_non_square_uses_rows_and_columns_separately():
    placement = placement_from_center_scale(0.5, 0.25, 0.5, (100, 100), (256, 384), 8)
    assert placement.fg_size == (64, 64)  # L = 0.5 * min(256, 384) / 2
    assert placement.ref_window == Box(96, 160, 160, 224)
    assert placement.target_window == Box(128 - 32, 96 - 32, 128 + 32, 96 + 32)
    assert placement.latent_ref_box == Box(12, 20, 20, 28)
    assert placement.latent_target_box == Box(12, 8, 20, 16)


def test_sizes_must_divide_into_every_attention_grid():
    with pytest.raises(ValueError, match="multiples of 64"):
        placement_from_center_scale(0.5, 0.5, 0.5, (100, 100), (520, 512), 8)
    with pytest.raises(ValueError, match="multiples of 8"):
        placement_from_center_scale(0.5, 0.5, 0.5, (100, 100), (516, 512), 8)
    placement = placement_from_center_scale(0.5, 0.5, 0.5, (100, 100), **SD)
    with pytest.raises(ValueError, match="does not divide"):
        region_indices(placement, np.zeros((512, 512)), 48, 48)
    with pytest.raises(ValueError, match="mpad must have shape"):
        region_indices(placement, np.zeros((256, 256)), 32, 32)


# ---------------------------------------------------------------------------------------------------------------
# Where the object lands on each grid: the official truncations drift up/left at small sizes
# ---------------------------------------------------------------------------------------------------------------


def _landing_offsets(placement: Placement, mpad: np.ndarray) -> dict[tuple[int, int], tuple[float, float]]:
    """Per grid: (rows, cols) offset in pixels of the injected object cells' centroid (cell centres of F) from
    the centroid of the object as the user placed it (the object window's mask moved onto the target window)."""
    H, W = placement.image_size
    window = mpad[placement.ref_window.slices()]
    ys, xs = np.nonzero(window)
    true_y = placement.target_window.top + ys.mean() + 0.5
    true_x = placement.target_window.left + xs.mean() + 0.5
    offsets = {}
    for h, w in placement.attention_grids:
        index = region_indices(placement, mpad, h, w)
        if len(index.fg) == 0:
            continue
        rows = (index.fg // w).double().numpy()
        cols = (index.fg % w).double().numpy()
        offsets[(h, w)] = ((rows.mean() + 0.5) * H / h - true_y, (cols.mean() + 0.5) * W / w - true_x)
    return offsets


def _random_cases(size, count, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        side = int(rng.integers(size // 4, size // 2))
        x, y = (int(v) for v in rng.integers(0, size - side, 2))
        cases.append((x, y, side, side))
    return cases


@pytest.mark.parametrize("size,factor,levels", [(64, 4, 3), (256, 8, 4)])
def test_centred_geometry_puts_the_object_where_the_box_is_on_every_grid(size, factor, levels):
    """Mean landing offset over fresh random boxes: unbiased (within a fifth of a cell) on every grid with the
    default geometry at sizes other than 512, where the official truncations drift up and left. Grids of
    fewer than 8 x 8 cells are left out: there an object covers one or two cells, or none."""
    obj = object_mask_image((40, 40))
    drifts = {"centred": {}, "official": {}}
    for geometry in drifts:
        for box in _random_cases(size, 200, seed=size):
            placement = compute_placement(box, (40, 40), (size, size), factor, levels=levels, clip=True, geometry=geometry)
            _, mpad = prepare_foreground(Image.new("RGB", (40, 40)), obj, placement)
            for grid, offset in _landing_offsets(placement, mpad).items():
                drifts[geometry].setdefault(grid, []).append(offset)
    assert compute_placement((4, 4, 20, 20), (40, 40), (size, size), factor, levels=levels).geometry == "centred"
    for grid, offsets in drifts["centred"].items():
        if grid[0] < 8:
            continue
        cell = size / grid[0]
        mean_row, mean_col = np.mean(offsets, axis=0)
        assert abs(mean_row) <= 0.2 * cell and abs(mean_col) <= 0.2 * cell, (grid, mean_row, mean_col)
    # The official formulas land the object above (and left of) the box by more than a quarter cell on the
    # coarsest grid that still holds object cells (what made the toy model draw objects above their box).
    coarsest = min(drifts["official"])
    mean_row, mean_col = np.mean(drifts["official"][coarsest], axis=0)
    assert mean_row < -0.25 * size / coarsest[0] and mean_col < 0


def test_auto_geometry_is_official_at_512():
    assert compute_placement((172, 307, 167, 204), (401, 292), (512, 512), 8).geometry == "official"
    assert compute_placement((172, 307, 167, 204), (401, 292), (512, 512), 8, geometry="centred").geometry == "centred"
    with pytest.raises(ValueError, match="geometry"):
        compute_placement((172, 307, 167, 204), (401, 292), (512, 512), 8, geometry="exact")


def test_centred_boxes_touching_every_edge_match_the_slow_reference():
    """Boxes flush with each edge: the grid boxes are trimmed together and the index sets stay aligned."""
    obj = object_mask_image((35, 35))
    for box in [(0, 20, 27, 27), (37, 20, 27, 27), (20, 0, 26, 26), (20, 38, 26, 26), (0, 0, 30, 30), (44, 44, 20, 20)]:
        placement = compute_placement(box, (35, 35), (64, 64), 4, levels=3)
        assert placement.geometry == "centred"
        _, mpad = prepare_foreground(Image.new("RGB", (35, 35)), obj, placement)
        for h, w in placement.attention_grids:
            assert_region_matches_slow(placement, mpad, h, w)


def test_auto_places_boxes_at_the_top_left_edge_at_512_like_those_at_the_bottom_right():
    """The official truncations push a box flush with the left/top edge out of a 512 image while its mirror
    image at the right/bottom edge fits; "auto" gives such boxes (which the official code cannot run) the
    centred layout and keeps the official numbers for every box the official code can place."""
    for box, mirror in [((0, 200, 145, 145), (367, 200, 145, 145)), ((200, 0, 145, 145), (200, 367, 145, 145))]:
        edge = compute_placement(box, (300, 300), (512, 512), 8)
        assert edge.geometry == "centred"
        assert edge.target_window.left == 0 or edge.target_window.top == 0
        assert compute_placement(mirror, (300, 300), (512, 512), 8).geometry == "official"
        with pytest.raises(ValueError, match="leaves the 512x512 image"):
            compute_placement(box, (300, 300), (512, 512), 8, geometry="official")

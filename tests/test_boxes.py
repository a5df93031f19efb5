"""The one user-box parser (tficon.core.boxes) and the places that read boxes through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tficon.core import boxes
from tficon.core.boxes import Box, as_user_box, parse_box_text, same_box
from tficon.core.io import load_mask
from tficon.core.placement import compute_placement

SD = dict(image_size=(512, 512), latent_factor=8)


@pytest.mark.parametrize(
    "value, expected",
    [
        ((10, 20, 30, 40), (10, 20, 30, 40)),
        ([10, 20, 30, 40], (10, 20, 30, 40)),
        ((np.int64(1), np.int32(2), np.uint8(3), np.int16(4)), (1, 2, 3, 4)),
        ((-5, -6, 7, 8), (-5, -6, 7, 8)),  # off the image: for the placement to refuse (or clip), not the parser
    ],
)
def test_boxes_of_four_integers_become_python_ints(value, expected):
    box = as_user_box(value, name="mask_or_box")
    assert box == expected
    assert all(type(v) is int for v in box)


@pytest.mark.parametrize(
    "value",
    [np.ones((4, 4), bool), np.array([1, 2, 3, 4]), Image.new("L", (4, 4)), "mask.png", Path("mask.png"), None, 7],
)
def test_masks_paths_and_other_things_are_not_boxes(value):
    assert as_user_box(value, name="mask_or_box") is None


@pytest.mark.parametrize(
    "value, message",
    [
        ((True, 0, 5, 5), r"^target: a box must be 4 integers \(x, y, w, h\) in pixels, got \(True, 0, 5, 5\) \(True/False"),
        ((0, 0, np.bool_(True), 5), r"^target: a box must be 4 integers.*True/False are not pixel counts"),
        ((1.0, 2, 3, 4), r"^target: a box must be 4 integers \(x, y, w, h\) in pixels, got \(1\.0, 2, 3, 4\)$"),
        ((np.float32(1), 2, 3, 4), r"^target: a box must be 4 integers"),
        (("1", 2, 3, 4), r"^target: a box must be 4 integers"),
        ((1, 2, 3), r"^target: a box must be 4 integers \(x, y, w, h\) in pixels, got 3 value\(s\) \(1, 2, 3\); or pass a mask"),
        ([1, 2, 3, 4, 5], r"^target: a box must be 4 integers.*got 5 value\(s\)"),
        ((), r"^target: a box must be 4 integers.*got 0 value\(s\)"),
        ((0, 0, 0, 5), r"^target: the box \(x, y, w, h\) = \(0, 0, 0, 5\) must have positive width and height"),
        ((0, 0, 5, -1), r"^target: the box .* must have positive width and height"),
    ],
)  # fmt: skip
def test_malformed_boxes_are_refused_naming_the_argument(value, message):
    with pytest.raises(ValueError, match=message):
        as_user_box(value, name="target")


def test_the_placement_and_the_mask_reader_use_the_same_rule():
    # the placement used to refuse True and the Session to accept it: both refuse it now
    with pytest.raises(ValueError, match=r"mask_or_box: a box must be 4 integers.*True/False"):
        compute_placement((True, 200, 100, 100), (100, 100), **SD)
    assert compute_placement((np.int64(200), 200, 100, 100), (100, 100), **SD) == compute_placement(
        (200, 200, 100, 100), (100, 100), **SD
    )
    with pytest.raises(ValueError, match=r"^mask: a box must be 4 integers.*got 3 value"):
        load_mask((1, 2, 3), name="mask")
    with pytest.raises(ValueError, match=r"^mask must be a mask .* not the box \(1, 2, 3, 4\)"):
        load_mask((1, 2, 3, 4), name="mask")


@pytest.mark.parametrize(
    "text, expected", [("1,2,3,4", (1, 2, 3, 4)), (" 1, 2 ,3,4 ", (1, 2, 3, 4)), ("-1,0,5,5", (-1, 0, 5, 5))]
)
def test_box_text_is_four_integers(text, expected):
    assert parse_box_text(text) == expected


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,4,5", "1.5,2,3,4", "a,b,c,d", "", "1;2;3;4"])
def test_box_text_that_is_not_four_integers_is_refused(text):
    with pytest.raises(ValueError, match=rf"^--box must be four integers x,y,w,h in the image's pixels, got {text!r}$"):
        parse_box_text(text, name="--box", unit="the image's pixels")


def test_same_box_compares_boxes_and_masks():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    assert same_box((1, 2, 3, 4), [1, 2, 3, 4])
    assert not same_box((1, 2, 3, 4), (1, 2, 3, 5))
    assert same_box(mask, mask.copy())
    assert not same_box(mask, ~mask)
    assert not same_box(mask, mask[:4])  # another shape
    assert not same_box((2, 2, 3, 2), mask) and not same_box(mask, (2, 2, 3, 2))  # a box never equals a mask


def test_box_lives_in_boxes_and_is_still_importable_from_placement():
    from tficon.core import placement

    assert placement.Box is boxes.Box
    box = Box(1, 2, 5, 8)
    assert (box.height, box.width, box.inside(5, 8), box.inside(4, 8)) == (4, 6, True, False)
    assert box.slices() == (slice(1, 5), slice(2, 8))


def test_box_mask_draws_the_box_on_an_image_of_its_size():
    mask = boxes.box_mask((2, 1, 3, 2), (6, 4))  # size (W, H), like PIL's
    assert mask.shape == (4, 6) and mask.dtype == bool and mask.sum() == 6
    assert mask[1:3, 2:5].all()
    assert boxes.box_mask((0, 0, 6, 4), (6, 4)).all()  # the whole image: ending at the edge is inside
    for box, reason in [((4, 0, 3, 2), "lie inside the 6x4 background"), ((0, 0, 0, 2), "positive size")]:
        with pytest.raises(ValueError, match=rf"^--box x,y,w,h = {','.join(map(str, box))} must .*{reason}"):
            boxes.box_mask(box, (6, 4), name="--box")

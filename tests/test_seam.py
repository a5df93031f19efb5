"""The seam measure at the box border (tficon.eval.seam): exact values on hand-made images, a hard-edged paste
scoring worse than a feathered one, and bad arguments refused by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tficon.core.boxes import Box
from tficon.eval.seam import border_jump, seam_jump

BOX = (20, 16, 24, 28)  # x, y, w, h in a 64 x 64 image
PAPER = (0.9, 0.88, 0.8)
INK = (0.2, 0.3, 0.7)


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _paper() -> np.ndarray:
    return _uint8(np.tile(np.asarray(PAPER), (64, 64, 1)))


def _paste(colour, feather: int, box=BOX) -> np.ndarray:
    """``colour`` pasted into ``box`` on the paper; with ``feather`` > 0 its weight ramps linearly from the border
    up to 1 at ``feather`` px inside (a smooth paste), else a hard edge."""
    x, y, w, h = box
    rows, cols = np.mgrid[0:64, 0:64]
    inside = (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w)
    depth = np.minimum.reduce([rows - y, y + h - 1 - rows, cols - x, x + w - 1 - cols]).astype(np.float64)
    ramp = np.clip((depth + 1) / (feather + 1), 0, 1) if feather else np.ones_like(depth)
    weight = np.where(inside, ramp, 0.0)[..., None]
    return _uint8(np.asarray(PAPER) * (1 - weight) + np.asarray(colour) * weight)


def _step(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean()) / 255


def test_a_hard_edged_paste_scores_worse_than_a_smooth_one():
    background = _paper()
    hard, smooth = _paste(INK, feather=0), _paste(INK, feather=6)
    assert seam_jump(hard, background, BOX) > 4 * seam_jump(smooth, background, BOX) > 0
    assert seam_jump(hard, background, BOX, width=3) > seam_jump(smooth, background, BOX, width=3) > 0


def test_exact_values():
    """A hard paste jumps by the full colour step at every pair, at any width; the background against itself is 0;
    the feathered paste's first pixel in carries 1/7 of the step (its ramp (depth + 1) / 7)."""
    background, hard, smooth = _paper(), _paste(INK, 0), _paste(INK, 6)
    step = _step(hard[30, 30], background[30, 30])
    assert seam_jump(hard, background, BOX) == pytest.approx(step, abs=1e-12)
    assert seam_jump(hard, background, BOX, width=4) == pytest.approx(step, abs=1e-12)
    assert seam_jump(background, background, BOX) == 0.0
    # the border's pairs are its edges' length: 2 * (24 + 28) = 104; on a straight edge the first pixel in has
    # depth 0 (weight 1/7), in the corners also depth 0: every pair's inner pixel has weight 1/7
    assert seam_jump(smooth, background, BOX) == pytest.approx(_step(smooth[30, 20], background[30, 20]), abs=1e-12)


def test_the_background_own_jump_is_subtracted():
    """Stripes that cross the box border jump there in the background too: an untouched striped background scores 0,
    and the same hard paste on it scores less than its raw border jump."""
    background = _paper()
    background[:, ::2] = _uint8(np.asarray((0.5, 0.5, 0.5)))  # vertical stripes: left/right edges jump
    assert border_jump(background, BOX) > 0
    assert seam_jump(background, background, BOX) == 0.0
    x, y, w, h = BOX
    pasted = background.copy()
    pasted[y : y + h, x : x + w] = _uint8(np.asarray(INK))
    assert seam_jump(pasted, background, BOX) == pytest.approx(
        border_jump(pasted, BOX) - border_jump(background, BOX), abs=1e-12
    )
    assert 0 < seam_jump(pasted, background, BOX) < border_jump(pasted, BOX)


def test_inputs_box_forms_edges_on_the_image_border_and_ignore():
    background, hard = _paper(), _paste(INK, 0)
    step = _step(hard[30, 30], background[30, 30])
    as_box = Box(top=16, left=20, bottom=44, right=44)
    assert seam_jump(hard, background, as_box) == seam_jump(hard, background, BOX)
    # the package's float tensors in [-1, 1] read the same as uint8 arrays
    to_tensor = lambda a: torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)  # noqa: E731
    assert seam_jump(to_tensor(hard), to_tensor(background), BOX) == pytest.approx(step, abs=1e-6)
    # a box touching the left and top image edges: only its right and bottom edges count, still the full step
    corner = _paste(INK, 0, box=(0, 0, 30, 30))
    assert seam_jump(corner, background, (0, 0, 30, 30)) == pytest.approx(step, abs=1e-12)
    assert math.isnan(border_jump(corner, (0, 0, 64, 64)))  # no border inside the image
    # ignoring the left edge's outside pixels leaves the other three edges (same step)
    ignore = np.zeros((64, 64), bool)
    ignore[:, 19] = True
    assert seam_jump(hard, background, BOX, ignore=ignore) == pytest.approx(step, abs=1e-12)
    # ignoring a half of the pairs that a mixed image differs on changes the figure accordingly
    half = hard.copy()
    half[17:43, 20] = background[0, 0]  # the left edge's inner column (corners aside) made paper: no jump there
    left_pairs, all_pairs = 26, 2 * (24 + 28)
    assert seam_jump(half, background, BOX) == pytest.approx(step * (all_pairs - left_pairs) / all_pairs, abs=1e-12)
    assert seam_jump(half, background, BOX, ignore=ignore) == pytest.approx(step, abs=1e-12)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda a: seam_jump(a, a, BOX, width=0), "width"),
        (lambda a: seam_jump(a, a, (50, 50, 20, 20)), "box"),
        (lambda a: seam_jump(a, a, "box"), "box"),
        (lambda a: seam_jump(a, a[:32], BOX), "same size"),
        (lambda a: seam_jump(a, a, BOX, ignore=np.zeros((8, 8), bool)), "ignore"),
    ],
)
def test_bad_arguments_are_named(call, words):
    with pytest.raises(ValueError, match=words):
        call(_paper())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_half_precision_tensors_read_alike(dtype):
    """The package's image tensors in any precision: the seam of a hard paste is the colour step to the precision's
    rounding of [-1, 1] values."""
    background, hard = _paper(), _paste(INK, 0)
    step = _step(hard[30, 30], background[30, 30])
    to_tensor = lambda a: torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1).to(dtype)  # noqa: E731
    tolerance = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert seam_jump(to_tensor(hard), to_tensor(background), BOX) == pytest.approx(step, abs=tolerance)
    assert seam_jump(to_tensor(background), to_tensor(background), BOX) == 0.0

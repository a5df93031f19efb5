"""The object mask proposed from the generation's cross-attention (tficon.composition.mask_proposal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tficon.composition.mask_proposal import object_attention_map, propose_object_mask
from tficon.composition.session import Session
from tficon.toy.samples import toy_sample

STEPS = 8


@pytest.fixture(scope="module")
def toy():
    """The shipped toy model composing the demo sample (a red star pasted right of a blue square), run to the end."""
    from tficon.model import load_model

    model = load_model("toy")
    sample = toy_sample(image_size=model.image_size)
    session = Session(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt, steps=STEPS
    )
    return session.run(), sample


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_proposals_find_each_object_where_it_is(toy):
    session, sample = toy
    height, width = session.image_size
    x, y, w, h = sample.box
    placed = np.zeros((height, width), bool)
    placed[y : y + h, x : x + w] = True
    scene = np.zeros((height, width), bool)  # the blue square of the scene: centre (18, 32), half side 11
    scene[21:43, 7:29] = True
    records = session.records
    star = session.propose_mask("red star")
    square = propose_object_mask(session, "blue square")
    assert star.shape == (height, width) and star.dtype == bool
    # measured on this toy model and sample (threshold 0.5, finest layers): IoU 0.585 between the star's proposal
    # and the placed box, 0.648 between the square's and the square, 0.0 across
    assert _iou(star, placed) > 0.5 and _iou(star, scene) == 0.0
    assert _iou(square, scene) > 0.55 and _iou(square, placed) == 0.0
    # every layer, the blurred coarse ones too: a worse proposal (measured IoU 0.26)
    assert _iou(session.propose_mask("red star", max_factor=4), placed) < _iou(star, placed)
    assert session.records == records  # inspection only: the Session's records are unchanged


def test_heat_map_is_normalised_and_thresholds_nest(toy):
    session, _ = toy
    heat = object_attention_map(session, "red star", steps=[0, 3])
    assert heat.shape == session.model.latent_shape(session.image_size)
    assert float(heat.min()) == 0.0 and float(heat.max()) == 1.0
    loose, tight = (propose_object_mask(session, "red star", steps=[0, 3], threshold=t) for t in (0.3, 0.8))
    assert tight.sum() > 0 and (tight & ~loose).sum() == 0 and loose.sum() > tight.sum()


def test_the_proposal_goes_back_into_a_session(toy):
    session, sample = toy
    mask = session.propose_mask("red star")
    again = Session(
        session.model, sample.background, sample.foreground, sample.foreground_mask, mask, sample.prompt, steps=2
    )

    def latent_box(s):
        grid = np.zeros(s.model.latent_shape(s.image_size), bool)
        rows, cols = s.placement.latent_target_box.slices()
        grid[rows, cols] = True
        return grid

    assert _iou(latent_box(again), latent_box(session)) > 0.3  # the object goes about where it was


def test_default_words_come_from_markers_or_the_setting(toy):
    session, sample = toy
    marked = Session(
        session.model, sample.background, sample.foreground, sample.foreground_mask, sample.box,
        sample.prompt.replace("a red star", "a <ref> red star <ref>"), steps=STEPS, engine=session.engine,
    )  # fmt: skip
    marked.run(until=3)
    by_markers = object_attention_map(marked, steps=[1, 2])
    torch.testing.assert_close(by_markers, object_attention_map(session, "red star", steps=[1, 2]))
    named = Session(
        session.model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
        steps=STEPS, engine=session.engine, object_words="red star",
    ).run(until=2)  # fmt: skip
    assert torch.equal(object_attention_map(named, steps=[1]), object_attention_map(named, "red star", steps=[1]))


def test_bad_input_is_refused_clearly(toy):
    session, sample = toy
    with pytest.raises(ValueError, match="the mask proposal needs the object's words"):
        propose_object_mask(session)
    with pytest.raises(ValueError, match="do not occur in the prompt"):
        propose_object_mask(session, "green moon")
    with pytest.raises(ValueError, match="words must be words of the prompt"):
        propose_object_mask(session, "  ")
    for threshold in (0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="threshold must be a number in"):
            propose_object_mask(session, "red star", threshold=threshold)
    with pytest.raises(ValueError, match="max_factor must be an integer"):
        propose_object_mask(session, "red star", max_factor=0)
    for steps in ([], [STEPS], [-1], ["0"]):
        with pytest.raises(ValueError, match="steps"):
            propose_object_mask(session, "red star", steps=steps)
    fresh = Session(
        session.model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
        steps=STEPS, engine=session.engine,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"not reachable yet: run\(until=3\)"):
        propose_object_mask(fresh, "red star", steps=[3])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_proposal(sample, dtype):
    from tficon.model.tiny import tiny_model
    from tiny_setup import new_session

    session = new_session(tiny_model("sd2", dtype=dtype, device="cpu"), sample, steps=3).run()
    mask = session.propose_mask("red star", steps=[0, 1])
    assert mask.shape == session.image_size and mask.any() and not mask.all()


def test_connected_region_keeps_the_seeds_component_only():
    from tficon.composition.attention_masks import connected_region

    mask = torch.tensor(
        [[1, 1, 0, 1], [0, 1, 0, 1], [0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool
    )  # the diagonal (3, 0) and the right column are other components
    want = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(connected_region(mask, (0, 0)), want)
    assert torch.equal(connected_region(mask, (0, 3)), torch.tensor([[0, 0, 0, 1], [0, 0, 0, 1], [0] * 4, [0] * 4]).bool())
    assert not connected_region(mask, (3, 3)).any()  # a seed off the mask: nothing

"""A catalogue of bad inputs and faults (issue 12) walked through the Session, compose, the Explorer (inline and
on its worker thread), the CLI and an interrupted `tficon batch` that resumes (81 cases here).

Each case asserts the exception type, that the message names the argument (or step and branch), and that
nothing changed: no UNet work before a refusal, the Session at its last good step after a fault. The batch's
cases are in tests/test_batch.py, the CLI's own in tests/test_cli.py; this module keeps one walk over each kind.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_setup import SIZE, new_session

from tficon.composition.session import Session
from tficon.core import io
from tficon.core.checks import NonFiniteError
from tficon.core.config import CompositionConfig


def session_of(model, sample, **changes):
    """A Session on the sample with some inputs replaced (keywords: background, ..., mask_or_box, prompt)."""
    inputs = dict(
        background=sample.background, foreground=sample.foreground, foreground_mask=sample.foreground_mask,
        mask_or_box=sample.box, prompt=sample.prompt,
    )  # fmt: skip
    config = {k: changes.pop(k) for k in list(changes) if k not in inputs}
    inputs.update(changes)
    return Session(model, *inputs.values(), image_size=SIZE, steps=4, **config)


# ---------------------------------------------------------------------------------------------------------------
# Images: exact RGB conversions accepted, the rest refused naming the argument, before any copy
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("convert", ["RGBA", "P", "LA-grey"])
def test_images_with_an_exact_rgb_reading_compose_like_rgb(model, sample, convert):
    reference = session_of(model, sample)
    if convert == "P":
        # an exact palette image: quantised without dithering, and compared with its own RGB reading
        background = sample.background.quantize(256, dither=Image.Dither.NONE)
        expected = background.convert("RGB")
    elif convert == "LA-grey":
        background, expected = sample.background.convert("LA"), sample.background.convert("L").convert("RGB")
    else:
        background, expected = sample.background.convert("RGBA"), sample.background
    converted = session_of(model, sample, background=background)
    assert np.array_equal(np.asarray(converted.images["background"]), np.asarray(expected))
    if convert == "RGBA":
        assert torch.equal(converted.inputs.background, reference.inputs.background)


@pytest.mark.parametrize(
    "argument, value, error, message",
    [
        ("background", Image.new("RGBA", (SIZE, SIZE), (255, 0, 0, 128)), ValueError, r"^background has a transparent alpha"),
        ("foreground", np.zeros((0, 0, 3), np.uint8), ValueError, r"^foreground is empty \(0x0 pixels"),
        ("background", Image.new("RGB", (0, 0)), ValueError, r"^background is empty \(0x0 pixels"),
        ("background", np.zeros((4, 4, 3), np.float32), ValueError, r"^background is a float32 array"),
        ("foreground", Image.new("CMYK", (8, 8)), ValueError, r"^foreground is a CMYK image"),
        ("foreground_mask", np.zeros((0, 3), bool), ValueError, r"foreground_mask is empty \(3x0 pixels"),
        ("mask_or_box", (1, 2, 3), ValueError, r"^mask: a box must be 4 integers \(x, y, w, h\).*3 value"),
        ("mask_or_box", (1, 2, 3, 4, 5), ValueError, r"a box must be 4 integers.*5 value"),
        ("mask_or_box", (10.5, 2, 30, 30), ValueError, r"a box must be 4 integers"),
        ("foreground_mask", Image.new("L", (SIZE, SIZE // 2), 255), ValueError,
         r"foreground_mask is 128x64 \(W x H\) but foreground is \d+x\d+.*aspect ratio"),  # a tight crop
        ("mask_or_box", np.ones((SIZE // 2, SIZE), bool), ValueError,
         r"mask_or_box \(the user mask\) is 128x64 \(W x H\) but background is 128x128"),
        ("prompt", 42, TypeError, r"prompt must be a str"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused_naming_the_argument(model, sample, argument, value, error, message):
    with pytest.raises(error, match=message):
        session_of(model, sample, **{argument: value})


def test_oversized_array_is_refused_before_it_is_copied(model, sample, monkeypatch):
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", SIZE * SIZE)
    big = np.broadcast_to(np.uint8(7), (SIZE + 1, SIZE, 3))  # a view: refusing it must not need a copy
    with pytest.raises(ValueError, match=r"^background is 128x129 pixels .*MAX_IMAGE_PIXELS"):
        session_of(model, sample, background=big)


def test_decompression_bomb_file_names_the_argument(model, sample, monkeypatch, tmp_path):
    sample.background.save(tmp_path / "bg.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"^background: .*bg\.png' is too large to open safely"):
        session_of(model, sample, background=tmp_path / "bg.png")


def test_a_refused_update_leaves_the_session_as_it_was(model, sample):
    s = session_of(model, sample)
    before = (s.placement, s.images["background"], s.config)
    for changes in ({"background": Image.new("RGBA", (8, 8))}, {"mask_or_box": (1, 2, 3)}, {"tau_a": math.nan},
                    {"foreground_mask": np.ones((5, 50), bool)}):  # fmt: skip
        with pytest.raises(ValueError):
            s.update(**changes)
    assert (s.placement, s.images["background"], s.config) == before


# ---------------------------------------------------------------------------------------------------------------
# Configuration: range and finiteness at construction, before any UNet work
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tau_a", 1.5, r"^tau_a must be a finite number in \[0, 1\]"),
        ("tau_a", -0.1, r"^tau_a must be"),
        ("tau_b", 2.5, r"^tau_b must be a finite number in \[0, 2\]"),
        ("tau_bg", math.nan, r"^tau_bg must be a finite number"),
        ("tau_bg", math.inf, r"^tau_bg must be a finite number"),
        ("guidance", math.nan, r"^guidance must be a finite number"),
        ("guidance", -math.inf, r"^guidance must be a finite number"),
        ("seed", 2**64, r"^seed must be in \[0, 2\*\*63\)"),
        ("seed", -1, r"^seed must be in \[0, 2\*\*63\)"),
        ("seed", 1.0, r"^seed must be an integer"),
        ("tau_a", True, r"^tau_a must be"),
    ],
)
def test_bad_settings_are_refused_at_construction(model, sample, field, value, message):
    with pytest.raises(ValueError, match=message):
        CompositionConfig(**{field: value})
    calls = model.unet.forward
    with pytest.raises(ValueError, match=message):
        session_of(model, sample, **{field: value})
    assert model.unet.forward == calls
    assert CompositionConfig(tau_b=1.1).tau_b == 1.1  # pins the background on the last steps (notebook 04)


# ---------------------------------------------------------------------------------------------------------------
# Numerical faults: the step where NaN appears, named; the Session kept at the last good step
# ---------------------------------------------------------------------------------------------------------------


class NaNUNet:
    """A forward hook that makes the UNet return NaN while armed."""

    def __init__(self, unet):
        self.armed = False
        self.handle = unet.register_forward_hook(self)

    def __call__(self, module, args, output):
        if not self.armed:
            return None
        if isinstance(output, tuple):
            return (torch.full_like(output[0], math.nan),) + tuple(output[1:])
        return type(output)(sample=torch.full_like(output.sample, math.nan))


def test_nan_from_the_unet_stops_at_its_step_and_keeps_the_session(model, sample):
    s = new_session(model, sample, steps=4)
    s.run(until=1)
    records, stats = s.records, dict(s.stats)
    fault = NaNUNet(model.unet)
    try:
        fault.armed = True
        with pytest.raises(NonFiniteError, match=r"^step 1: the \w+ branch's .*NaN or inf.*last good state \(step 0\)") as info:
            s.step()
        assert info.value.step == 1 and info.value.branch
        assert s.records == records and s.step_index == 1
        with pytest.raises(NonFiniteError, match="step 1"):
            s.run()
        assert s.step_index == 1
    finally:
        fault.handle.remove()
    s.run()  # the fault gone, the run goes on from the last good step and equals a fresh run
    fresh = new_session(model, sample, steps=4).run()
    assert np.array_equal(np.asarray(s.result), np.asarray(fresh.result))
    assert s.stats["sample_evals"] > stats["sample_evals"]


def test_decode_of_a_nan_latent_names_it(model, sample):
    s = new_session(model, sample, steps=4)
    latent = torch.full((1, 4, SIZE // 8, SIZE // 8), math.nan)
    with pytest.raises(NonFiniteError, match=r"^decode\(latent\) contains NaN or inf values"):
        s.decode(latent)


# ---------------------------------------------------------------------------------------------------------------
# Inspection and prompts
# ---------------------------------------------------------------------------------------------------------------


def test_capture_attention_names_the_available_layers(model, sample):
    s = new_session(model, sample, steps=4)
    s.run(until=1)
    with pytest.raises(ValueError, match=r"^layers: unknown \['nope'\]; available: \[.*attn1"):
        s.capture_attention(0, layers=["nope"])
    with pytest.raises(TypeError, match="layers must be a list of names"):
        s.capture_attention(0, layers=s.attention_layers[0])


def test_a_prompt_past_the_window_names_the_words_that_split(model, sample):
    prompt = "a red star " + " ".join(["qzxjvkw"] * 12)  # few words, many BPE pieces
    with pytest.raises(ValueError, match=r"prompt is too long: it needs \d+ tokens .* holds 77; it has 15 words.*'qzxjvkw' -> \d+"):
        session_of(model, sample, prompt=prompt)


# ---------------------------------------------------------------------------------------------------------------
# The Explorer: the user's box, an unchanged "set box", errors cleared by a later success, faults in the worker
# ---------------------------------------------------------------------------------------------------------------


def test_explorer_shows_the_user_box_and_clears_errors(model, sample):
    pytest.importorskip("ipywidgets")
    from tficon.widgets import Explorer

    s = new_session(model, sample, steps=4)
    ex = Explorer(s, threaded=False)
    try:
        placed = s.placement.target_window
        assert (placed.left, placed.top, placed.width, placed.height) != sample.box  # the two differ here
        assert [f.value for f in ex.box_fields] == list(sample.box)
        if ex.box_drawer is not None:
            assert list(ex.box_drawer.box) == list(sample.box)
        ex.run(until=2)
        ex.wait(120)
        records = s.records
        ex.set_box_button.click()  # "set box" with the fields as shown
        ex.wait(60)
        assert s.records == records and s.mask_or_box == sample.box and "unchanged" in ex.status.value
        # a NaN fault in the worker: shown in the header, the Session kept at its last good step
        fault = NaNUNet(model.unet)
        fault.armed = True
        try:
            ex.run()
            ex.wait(120)
        finally:
            fault.handle.remove()
        assert isinstance(ex.last_error, NonFiniteError) and "step 2" in ex.status.value
        assert s.step_index == 2 and s.records == records
        ex.show_step(0 if ex.scrubber.value else 1)  # a later action that succeeds clears the stale error
        ex.wait(60)
        assert ex.last_error is None and "NaN" not in ex.status.value
    finally:
        ex._worker.close()


def test_compose_returns_the_backgrounds_own_size_unless_asked_for_the_working_size(model, sample):
    """A background of another size than the working size comes back at its own size (as the CLI saves it)."""
    from tficon.composition.one_call import compose

    big = sample.background.resize((SIZE * 2, SIZE * 2))
    scale = (2, 2)
    box = (sample.box[0] * scale[0], sample.box[1] * scale[1], sample.box[2] * scale[0], sample.box[3] * scale[1])
    args = (model, big, sample.foreground, sample.foreground_mask, np.zeros((big.height, big.width), bool), sample.prompt)
    mask = args[4]
    mask[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = True
    full = compose(*args, image_size=SIZE, steps=2, progress=False)
    working = compose(*args, image_size=SIZE, steps=2, progress=False, output_size="working")
    assert full.size == big.size and working.size == (SIZE, SIZE)
    np.testing.assert_array_equal(np.asarray(full), np.asarray(io.resize_result(working, big.size)))
    with pytest.raises(ValueError, match="output_size"):
        compose(*args, image_size=SIZE, steps=2, progress=False, output_size="original")


# ---------------------------------------------------------------------------------------------------------------
# Paste back: the composed window, feathered, onto the original background at its own size
# ---------------------------------------------------------------------------------------------------------------


def test_paste_back_keeps_the_outside_takes_the_inside_and_ramps_monotonically():
    from tficon.core.placement import Box

    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    result = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    window, feather = Box(top=10, left=20, bottom=30, right=50), 5
    out = np.asarray(io.paste_back(Image.fromarray(original), Image.fromarray(result), window, feather))
    grown = np.zeros((60, 80), bool)
    grown[10 - feather : 30 + feather, 20 - feather : 50 + feather] = True
    inside = np.zeros((60, 80), bool)
    inside[10:30, 20:50] = True
    assert np.array_equal(out[~grown], original[~grown])  # outside the grown window: the original, bit for bit
    assert np.array_equal(out[inside], result[inside])  # inside: the composed pixels
    ring = grown & ~inside
    low, high = np.minimum(original, result), np.maximum(original, result)
    assert np.all((out[ring] >= low[ring]) & (out[ring] <= high[ring]))  # in between: a mix of the two
    # the ramp: on black under white, each ring of the feather is a step down, strictly, to the untouched pixels
    ramp = np.asarray(io.paste_back(Image.new("RGB", (80, 60)), Image.new("RGB", (80, 60), (255,) * 3), window, feather))
    right = ramp[20, 49 : 49 + feather + 2, 0].astype(int)  # from the window's last column outwards
    assert right[0] == 255 and right[-1] == 0 and np.all(np.diff(right) < 0)
    expected = [255 * (1 - d / (feather + 1)) for d in range(feather + 2)]  # linear in the distance (rounded)
    assert np.all(np.abs(right - np.array(expected)) <= 0.5 + 1e-3)
    weights = io.paste_weights((60, 80), window, feather)
    assert np.all(np.diff(weights[:, 50:], axis=1) <= 0) and np.all(np.diff(weights[:, :21], axis=1) >= 0)
    assert np.all(np.diff(weights[30:, :], axis=0) <= 0) and np.all(np.diff(weights[:11, :], axis=0) >= 0)
    # feather 0: a hard edge
    hard = np.asarray(io.paste_back(Image.fromarray(original), Image.fromarray(result), window, 0))
    assert np.array_equal(hard[inside], result[inside]) and np.array_equal(hard[~inside], original[~inside])


def test_scale_window_rounds_outwards():
    from tficon.core.placement import Box

    assert io.scale_window(Box(4, 6, 10, 12), (16, 16), (40, 24)) == Box(10, 9, 25, 18)
    assert io.scale_window(Box(3, 3, 5, 5), (16, 16), (24, 24)) == Box(4, 4, 8, 8)  # 4.5 -> 4, 7.5 -> 8
    assert io.scale_window(Box(0, 0, 16, 16), (16, 16), (33, 33)) == Box(0, 0, 33, 33)


def test_compose_paste_back_keeps_the_background_outside_the_feathered_window(model, sample):
    from tficon.composition.one_call import compose
    from tficon.core.placement import Box

    big = sample.background.resize((SIZE * 2, SIZE * 2), Image.Resampling.LANCZOS)
    mask = np.zeros((big.height, big.width), bool)
    x, y, w, h = (2 * v for v in sample.box)
    mask[y : y + h, x : x + w] = True
    args = (model, big, sample.foreground, sample.foreground_mask, mask, sample.prompt)
    full = np.asarray(compose(*args, image_size=SIZE, steps=2, progress=False))
    pasted = np.asarray(compose(*args, image_size=SIZE, steps=2, progress=False, paste_back=True, feather=8))
    target = new_session(model, sample, steps=2).placement.target_window  # the same placement at 128 px
    window = Box(*(2 * v for v in (target.top, target.left, target.bottom, target.right)))
    grown = np.zeros(mask.shape, bool)
    grown[max(0, window.top - 8) : window.bottom + 8, max(0, window.left - 8) : window.right + 8] = True
    inside = np.zeros(mask.shape, bool)
    inside[window.slices()] = True
    assert pasted.shape == full.shape == (256, 256, 3)
    assert np.array_equal(pasted[~grown], np.asarray(big)[~grown])
    assert np.array_equal(pasted[inside], full[inside])
    assert not np.array_equal(pasted, full)  # the background outside is the original, not its reconstruction


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(paste_back=True, feather=-1), ValueError, r"^feather must be a non-negative integer"),
        (dict(paste_back=True, feather=2.5), ValueError, r"^feather must be a non-negative integer"),
        (dict(paste_back=True, feather=True), ValueError, r"^feather must be a non-negative integer"),
        (dict(paste_back="yes"), TypeError, r"^paste_back must be True or False"),
        (dict(paste_back=True, output_size="working"), ValueError, r"^paste_back=True .*output_size=\"background\""),
    ],
)
def test_bad_paste_back_options_are_refused_before_any_work(model, sample, options, error, message):
    from tficon.composition.one_call import compose

    calls = model.unet.forward
    with pytest.raises(error, match=message):
        compose(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                image_size=SIZE, steps=2, progress=False, **options)  # fmt: skip
    assert model.unet.forward == calls


# ---------------------------------------------------------------------------------------------------------------
# More of the catalogue, as tables: inputs, settings, updates, the Explorer, the CLI (each: type, name, no change)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argument, make, error, message",
    [
        ("background", lambda tmp: None, TypeError, r"^background must be a path, a PIL image or a uint8 numpy array"),
        ("background", lambda tmp: tmp / "missing.png", FileNotFoundError, r"^background: no such file .*missing\.png"),
        ("foreground", lambda tmp: (tmp / "notes.png").write_text("x") and tmp / "notes.png", ValueError,
         r"^foreground: cannot read .*notes\.png' as an image"),
        ("foreground", lambda tmp: np.zeros((8, 8, 3), np.uint16), ValueError, r"^foreground is a uint16 array"),
        ("foreground", lambda tmp: np.zeros((8, 8, 5), np.uint8), ValueError, r"^foreground must be an \(H, W, 3\)"),
        ("mask_or_box", lambda tmp: (10, 10, 0, 20), ValueError, r"box \(x, y, w, h\) = \(10, 10, 0, 20\) must have positive"),
        ("mask_or_box", lambda tmp: (120, 120, 40, 40), ValueError, r"user box \(x, y, w, h\) = \(120, 120, 40, 40\).*leaves"),
        ("mask_or_box", lambda tmp: np.zeros((SIZE, SIZE), bool), ValueError, r"^mask is empty \(no pixel set\)"),
        ("foreground_mask", lambda tmp: np.zeros((SIZE, SIZE), bool), ValueError, r"^foreground_mask is empty"),
        ("foreground_mask", lambda tmp: tmp / "nope.png", FileNotFoundError, r"^foreground_mask: no such file"),
    ],
)  # fmt: skip
def test_more_bad_inputs_are_refused_before_any_unet_work(model, sample, tmp_path, argument, make, error, message):
    value = make(tmp_path)
    files = sorted(tmp_path.iterdir())
    calls = model.unet.forward
    with pytest.raises(error, match=message):
        session_of(model, sample, **{argument: value})
    assert model.unet.forward == calls and sorted(tmp_path.iterdir()) == files


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("order", 4, ValueError, r"^order must be 1, 2 or 3, got 4"),
        ("order", 0, ValueError, r"^order must be 1, 2 or 3, got 0"),
        ("mode", "bogus", ValueError, r"^mode must be one of \('cross', 'same'\), got 'bogus'"),
        ("tau_b", -0.1, ValueError, r"^tau_b must be a finite number in \[0, 2\]"),
        ("tau_a", math.inf, ValueError, r"^tau_a must be a finite number in \[0, 1\]"),
        ("guidance", "5", ValueError, r"^guidance must be a finite number >= 0"),
        ("seed", "1", ValueError, r"^seed must be an integer in \[0, 2\*\*63\)"),
        ("steps", 0, ValueError, r"^steps must be a positive integer, got 0"),
        ("nonsense", 1, TypeError, r"^unknown config field\(s\) \['nonsense'\]; valid fields"),
    ],
)  # fmt: skip
def test_bad_updates_leave_the_session_as_it_was(model, sample, field, value, error, message):
    s = new_session(model, sample, steps=4)
    s.run(until=2)
    before = (s.config, s.placement, s.records, dict(s.stats), s.prompt)
    with pytest.raises(error, match=message):
        s.update(**{field: value})
    assert (s.config, s.placement, s.records, dict(s.stats), s.prompt) == before


@pytest.fixture(scope="module")
def inline_explorer(model, sample):
    pytest.importorskip("ipywidgets")
    from tficon.widgets import Explorer

    ex = Explorer(new_session(model, sample, steps=4), threaded=False)
    ex.run(until=2)
    yield ex
    ex.close()


@pytest.mark.parametrize(
    "changes, error, named",
    [
        ({"tau_a": math.nan}, ValueError, "tau_a must be"),
        ({"seed": -1}, ValueError, "seed must be"),
        ({"guidance": -1.0}, ValueError, "guidance must be"),
        ({"steps": 0}, ValueError, "steps must be"),
        ({"mask_or_box": (1, 2, 3)}, ValueError, "a box must be 4 integers"),
        ({"mask_or_box": (100, 100, 60, 60)}, ValueError, "leaves the 128x128 image"),
        ({"prompt": 42}, TypeError, "prompt must be a str"),
        ({"background": Image.new("RGBA", (8, 8))}, ValueError, "background has a transparent alpha"),
    ],
)  # fmt: skip
def test_the_explorer_shows_a_refused_change_and_keeps_the_session(inline_explorer, changes, error, named):
    ex, s = inline_explorer, inline_explorer.session
    before = (s.config, s.placement, s.records, s.prompt, [f.value for f in ex.box_fields], ex.controls["tau_a"].value)
    ex.update(**changes)
    assert ex.wait(60)
    assert isinstance(ex.last_error, error) and named in str(ex.last_error)
    assert "not applied" in ex.status.value and html_escaped(named) in ex.status.value
    after = (s.config, s.placement, s.records, s.prompt, [f.value for f in ex.box_fields], ex.controls["tau_a"].value)
    assert after == before


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


class RaisingUNet:
    """A forward pre-hook on the test's own UNet instance that raises ``error`` while armed."""

    def __init__(self, unet, error):
        self.error, self.armed = error, False
        self.handle = unet.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.armed:
            raise self.error


def test_a_unet_that_raises_in_the_explorers_worker_thread_is_shown_and_the_session_kept(model, sample):
    pytest.importorskip("ipywidgets")
    from tficon.widgets import Explorer

    s = new_session(model, sample, steps=4)
    ex = Explorer(s)  # threaded: the error happens on the worker thread
    fault = RaisingUNet(model.unet, RuntimeError("the UNet failed (injected)"))
    try:
        ex.run(until=2)
        assert ex.wait(120) and s.step_index == 2
        records = s.records
        fault.armed = True
        ex.run()
        assert ex.wait(120)
        assert isinstance(ex.last_error, RuntimeError) and "the UNet failed (injected)" in ex.status.value
        assert s.step_index == 2 and s.records == records and not ex.busy
        fault.armed = False
        ex.run()  # the worker is alive and the Session goes on from its last good step
        assert ex.wait(120) and ex.last_error is None and s.done
        fresh = new_session(model, sample, steps=4).run()
        assert np.array_equal(np.asarray(s.result), np.asarray(fresh.result))
    finally:
        fault.handle.remove()
        ex.close()


@pytest.fixture(scope="module")
def cli_files(sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_bad")
    sample.background.save(root / "bg.png")
    sample.foreground.save(root / "fg.png")
    sample.foreground_mask.save(root / "fg_mask.png")
    return root


@pytest.mark.parametrize(
    "change, message",
    [
        (("--steps", "0"), r"--steps must be a positive integer"),
        (("--tau-b", "3"), r"--tau-b must be a finite number in \[0, 2\]"),
        (("--tau-bg", "nan"), r"--tau-bg must be a finite number"),
        (("--seed", "-1"), r"--seed must be in \[0, 2\*\*63\)"),
        (("--foreground", "missing.png"), r"--foreground: no such file .*missing\.png"),
        (("--mask", "missing.png"), r"give exactly one of --mask .* or --box"),
        (("--box", "10,10,500,20"), r"--box x,y,w,h = 10,10,500,20 must .* lie inside the 128x128 background"),
        (("--box", "10,10,0,20"), r"--box x,y,w,h = 10,10,0,20 must have a positive size"),
        (("--feather", "3"), r"--feather sets the ramp of --paste-back"),
    ],
)  # fmt: skip
def test_cli_refuses_bad_flags_before_the_model_loads(cli_files, capsys, monkeypatch, change, message):
    import re

    import tficon.cli
    from tficon.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(tficon.cli, "_load", refuse)
    root = cli_files
    args = ["compose", "--model", "toy", "--background", str(root / "bg.png"), "--foreground", str(root / "fg.png"),
            "--foreground-mask", str(root / "fg_mask.png"), "--prompt", "a star", "--box", "30,30,40,40",
            "--out", str(root / "never.png"), "--quiet"]  # fmt: skip
    flag, value = change
    value = str(root / value) if value == "missing.png" else value
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    files = sorted(root.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err
    assert sorted(root.iterdir()) == files  # nothing written, not even a temporary file


def test_an_interrupted_single_process_batch_resumes(model, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the UNet of the second sample: `tficon batch` exits 130 naming the resume, keeps the finished
    sample and leaves no partial output; a re-run composes only what is missing and keeps the finished sample."""
    from test_batch import GOOD, OUTPUT_FILES, RECORD_FILE, make_inputs

    import tficon.model
    from tficon.cli import main

    inputs, out = make_inputs(tmp_path), tmp_path / "out"
    monkeypatch.setattr(tficon.model, "load_model", lambda *a, **k: model)  # the batch composes on this instance
    results = lambda: sorted(p.parent.relative_to(out).as_posix() for p in out.rglob(OUTPUT_FILES["result"]))  # noqa: E731

    def interrupt_after_the_first_sample(module, args):  # a pre-hook on the test's own UNet instance
        if out.exists() and results():
            raise KeyboardInterrupt

    handle = model.unet.register_forward_pre_hook(interrupt_after_the_first_sample)
    args = ["batch", str(inputs), "--out", str(out), "--model", "tiny-under-test", "--size", str(SIZE), "--steps", "2",
            "--quiet", "--pixel-metrics-only"]  # fmt: skip
    try:
        assert main(args) == 130
    finally:
        handle.remove()
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C); finished samples are kept; a re-run resumes" in err and "Traceback" not in err
    done = results()
    assert len(done) == 1 and done[0] in GOOD and (out / done[0] / RECORD_FILE).exists()
    kept = (out / done[0] / OUTPUT_FILES["result"]).read_bytes(), os.stat(out / done[0] / OUTPUT_FILES["result"]).st_mtime_ns
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file left behind
    code = main(args)
    assert code in (0, 1)  # 1: the tree's deliberately broken samples
    assert results() == sorted(GOOD)
    path = out / done[0] / OUTPUT_FILES["result"]
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == kept  # resumed: the finished sample was not recomposed

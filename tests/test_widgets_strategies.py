"""The Explorer shows the strategy (kernel side, no browser): the preset selector, the adaptive blend mask of a step,
the mask proposal accepted as the target, the object words' cross-attention with the object outlined, the injected
layers marked in the attention panel, the text settings' controls, and two presets compared in the history.

The shipped toy model composes the demo sample (a red star pasted into an outline drawing) in 8 steps; expectations
come from fresh Sessions and the public API, never from the widgets' own state.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")
pytest.importorskip("matplotlib")

import tficon  # noqa: E402
from tficon import CompositionConfig  # noqa: E402
from tficon.composition.session import Session  # noqa: E402
from tficon.core.presets import preset_of, with_preset  # noqa: E402
from tficon.toy.samples import demo_sample  # noqa: E402
from tficon.widgets import Explorer, strategy_views  # noqa: E402

STEPS = 8


@pytest.fixture(scope="module")
def toy():
    from tficon.model import load_model

    return load_model("toy"), demo_sample()


def toy_session(toy, **config) -> Session:
    model, sample = toy
    config.setdefault("steps", STEPS)
    config.setdefault("object_words", "red star")
    return Session(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
        CompositionConfig(mode=sample.mode, **config),
    )  # fmt: skip


@pytest.fixture
def explorer(toy):
    ex = Explorer(toy_session(toy), threaded=False)
    yield ex
    ex.close()


def caption(row, index: int = 0) -> str:
    return row.children[index].children[1].value


# ---------------------------------------------------------------------------------------------------- pure parts
def test_preset_update_keeps_what_no_preset_sets():
    config = CompositionConfig(steps=12, seed=5, guidance=3.0, object_words="red star")
    assert strategy_views.preset_update(config, "tale") == {"later_start": 0.6, "latent_norm_steps": 5}
    tale = with_preset(config, "tale")
    assert (tale.steps, tale.seed, tale.guidance, tale.object_words) == (12, 5, 3.0, "red star")
    # back to tf-icon switches off what tale switched on, and only that
    assert strategy_views.preset_update(tale, "tf-icon") == {"later_start": 0.0, "latent_norm_steps": 0}
    assert strategy_views.preset_update(config, "tf-icon") == {}
    with pytest.raises(ValueError, match="valid presets"):
        strategy_views.preset_update(config, "no-such-preset")


def test_outline_and_share_inside():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 2:5] = True  # 4 x 3: every cell but the 2 x 1 interior is on the border
    border = strategy_views.outline(mask)
    assert int(border.sum()) == 10 and not border[2, 3] and not border[3, 3] and not (border & ~mask).any()
    picture = strategy_views.draw_outline(np.zeros((12, 12, 3), np.uint8), mask, colour=(255, 0, 0))
    assert int((picture[..., 0] == 255).sum()) == int(strategy_views.outline(np.kron(mask, np.ones((2, 2), bool))).sum())
    heat = np.zeros((6, 6))
    heat[1, 2], heat[0, 0] = 3.0, 1.0
    assert strategy_views.share_inside(heat, mask) == 0.75
    marks = strategy_views.layer_marks(["a", "b"], frozenset({"b"}), True)
    assert marks == {"a": "plain", "b": "injected"}
    assert strategy_views.layer_marks(["a", "b"], None, True) == {} == strategy_views.layer_marks(["a"], frozenset({"a"}), False)


# ---------------------------------------------------------------------------------------------------- the Explorer
def test_the_selector_lists_the_presets_and_applies_one_keeping_the_other_settings(explorer, toy):
    ex, s = explorer, explorer.session
    assert list(ex.preset_choice.options) == list(tficon.presets()) and ex.preset_choice.value == "tf-icon"
    for preset in tficon.presets().values():  # every description in the hover text
        assert f"{preset.name}: {preset.description}" in strategy_views.presets_help()
    ex.update(seed=11)  # a user setting no preset controls
    ex.run()
    ex.preset_choice.value = "tale"  # what a choice in the dropdown sends
    assert ex.last_error is None and s.done
    assert s.config == CompositionConfig.preset("tale", steps=STEPS, seed=11, object_words="red star")
    assert ex.history[-1]["changes"] == {"later_start": 0.6, "latent_norm_steps": 5}
    assert ex.controls["later_start"].value == 0.6 and ex.controls["latent_norm_steps"].value == 5
    assert "tale" in ex.preset_note.value and "later_start=0.6" in ex.preset_note.value
    fresh = toy_session(toy, seed=11, later_start=0.6, latent_norm_steps=5)
    assert np.array_equal(np.asarray(s.result), np.asarray(fresh.result))
    ex.controls["tau_b"].value = 0.7  # a preset-controlled setting left alone: the selector follows the Session
    assert ex.preset_choice.value == "tale"
    ex.controls["latent_norm_steps"].value = 2  # now the settings mix presets
    assert ex.preset_choice.value is None and "custom" in ex.preset_note.value
    with pytest.raises(ValueError, match="valid presets"):
        ex.apply_preset("no-such-preset")


def test_the_adaptive_blend_mask_is_shown_on_the_steps_it_acts_on(explorer, toy):
    ex, s = explorer, explorer.session
    ex.run()
    assert len(ex.steps_panel.mechanism_row.children) == 0  # tf-icon: no adaptive blend
    ex.apply_preset("shine-blend")
    assert ex.last_error is None and s.done and ex.history[-1]["first"] == 2  # the steps before are kept
    acting = [record.s for record in s.records if record.blend_mask is not None]
    assert acting == [s_.s for s_ in s.plans if s_.adaptive_blend] == [2]  # 2 <= s < int(0.5 * 8 + 1 - 2) = 3
    ex.show_step(2)
    assert len(ex.steps_panel.mechanism_row.children) == 1
    keep, box = s.records[2].blend_mask, s.region_masks()["box"]
    text = caption(ex.steps_panel.mechanism_row)
    assert f"{int(keep.sum())} latent cells, {int((keep & box).sum())} of them in the box of {int(box.sum())}" in text
    assert "ab" in ex.plan_label.value
    ex.show_step(5)  # a box blend: no mask to show
    assert len(ex.steps_panel.mechanism_row.children) == 0


def test_accepting_the_proposal_makes_it_the_target(explorer, toy):
    ex, s = explorer, explorer.session
    ex.accept_proposal()  # nothing proposed yet: refused by name
    assert "no mask proposal to accept" in str(ex.last_error)
    ex.run()
    ex.propose_mask(threshold=0.5)
    proposal = ex.strategy_panel.proposal
    expected = toy_session(toy).run().propose_mask(threshold=0.5)
    assert np.array_equal(proposal, expected) and not ex.accept_button.disabled
    assert len(ex.proposal_row.children) == 1
    ex.accept_proposal()
    assert ex.last_error is None and s.done
    assert np.array_equal(np.asarray(s.mask_or_box), expected)
    model, sample = toy
    fresh = Session(
        model, sample.background, sample.foreground, sample.foreground_mask, expected, sample.prompt,
        CompositionConfig(mode=sample.mode, steps=STEPS, object_words="red star"),
    )  # fmt: skip
    assert s.placement.target_window == fresh.placement.target_window != toy_session(toy).placement.target_window
    assert np.array_equal(np.asarray(s.result), np.asarray(fresh.result))
    window = s.placement.target_window
    assert f"({window.left}, {window.top}, {window.width}, {window.height})" in ex.strategy_panel.proposal_note.value
    assert ex.accept_button.disabled and ex.strategy_panel.proposal is None


def test_a_proposal_needs_the_object_words(toy):
    ex = Explorer(toy_session(toy, object_words=""), threaded=False)
    try:
        ex.run()
        ex.propose_mask()
        assert ex.strategy_panel.proposal is None and "propose mask" in ex.status.value and "object" in ex.status.value
        assert "no cross-attention view" in ex.strategy_panel.cross_note.value
    finally:
        ex.close()


def test_the_cross_attention_view_outlines_the_constrained_object(explorer):
    ex, s = explorer, explorer.session
    ex.run()
    ex.show_step(3)
    free = caption(ex.cross_row)
    assert "unconstrained" in free
    ex.update(region_cross_attention=True)
    ex.show_step(3)
    held = caption(ex.cross_row)
    assert "constrained to the object" in held and "rca" in ex.plan_label.value

    def share(text: str) -> float:
        return float(text.split(": ")[-1].split("%")[0])

    # measured on the toy model: 18% of the words' heat inside the object without the constraint, 73% with it (its
    # 16 x 16 cross-attention is upsampled to the 32 x 32 latent grid, which spreads it past the outline)
    assert share(held) > 60 > 30 > share(free)


def test_the_injected_layers_are_marked_in_the_layer_list(explorer):
    ex, s = explorer, explorer.session
    ex.run()
    ex.show_step(1)
    assert not any("injected" in label for label, _ in ex.layer_choice.options)  # "all": nothing to tell apart
    ex.controls["inject_layers"].value = "decoder"  # what typing into the field sends
    assert ex.last_error is None and s.config.inject_layers == "decoder"
    ex.show_step(1)
    labels = dict((value, label) for label, value in ex.layer_choice.options)
    for layer in s.attention_layers:
        want = "◆ injected" if layer.startswith("up_blocks.") else "· plain"
        assert labels[layer].endswith(want), (layer, labels[layer])
    assert "up_blocks.1" in ex.controls["inject_layers"].options and "decoder" in ex.controls["inject_layers"].options
    ex.show_step(STEPS - 1)  # no injection at this step: no marks
    assert not any("injected" in label for label, _ in ex.layer_choice.options)
    ex.controls["inject_layers"].value = "no_such_block"  # refused, and the field shows the Session's value again
    assert "not applied" in ex.status.value and ex.controls["inject_layers"].value == "decoder"
    ex.controls["object_words"].value = "blue square"
    assert s.config.object_words == "blue square" and ex.last_error is None


def test_two_presets_of_one_session_compare_in_the_history(explorer, toy):
    ex, s = explorer, explorer.session
    ex.run()
    ex.apply_preset("tale")
    assert [entry.number for entry in ex.runs] == [1, 2]
    assert ex.runs[1].changes[0] == "preset: tf-icon \u2192 tale"
    ex.compare(1, 2)
    panel = ex.history_panel
    a, b = (np.asarray(toy_session(toy, **c).result) for c in ({}, {"later_start": 0.6, "latent_norm_steps": 5}))
    from tficon.widgets import compare

    _, numbers = compare.difference_map(compare.shrink(a, panel.KEEP_PX), compare.shrink(b, panel.KEEP_PX))
    assert numbers["max"] > 0
    assert f"max |A&minus;B| = {numbers['max']:.0f}/255" in caption(panel.compare_row, 2)
    assert "preset: tf-icon \u2192 tale" in panel.settings_diff.value and "later_start" in panel.settings_diff.value
    ex.restore(1)  # undo to tf-icon: its result again, bit for bit
    assert preset_of(s.config) == "tf-icon" and np.array_equal(np.asarray(s.result), a)

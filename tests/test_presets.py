"""Named presets (tficon.core.presets): the registry, CompositionConfig.preset, --preset on the command line, the
sweep's preset axis and the preset named in records. The ``tf-icon`` preset is the default, bit for bit."""

from __future__ import annotations

import argparse
import contextlib
import csv

import numpy as np
import torch
import pytest
from PIL import Image
from tiny_setup import SIZE, new_session

import tficon
from tficon.cli import build_parser, config_from_args, main
from tficon.core import presets as presets_mod
from tficon.core.config import SETTINGS, CompositionConfig
from tficon.core.presets import Preset, get_preset, preset_of, register_preset, with_preset
from tficon.run.sweeps import GridError, parse_grid_option, run_sweep

COMMANDS = {
    "demo": [],
    "compose": ["--background", "b", "--foreground", "f", "--foreground-mask", "m", "--prompt", "p", "--out", "o"],
    "batch": ["root", "--out", "o"],
    "sweep": ["--out", "o"],
}


@contextlib.contextmanager
def temporary_preset(name: str, **changes):
    """A preset registered for the block only (the registry is module state shared by every test)."""
    before = dict(presets_mod._REGISTRY)
    try:
        yield register_preset(name, f"a test preset {name}", "tests/test_presets.py", **changes)
    finally:
        presets_mod._REGISTRY.clear()
        presets_mod._REGISTRY.update(before)


# ---------------------------------------------------------------------------------------------------- the registry
def test_presets_lists_tf_icon_first_with_description_and_source():
    listed = tficon.presets()
    assert list(listed)[0] == "tf-icon" and "presets" in tficon.__all__
    tf_icon = listed["tf-icon"]
    assert isinstance(tf_icon, Preset) and dict(tf_icon.changes) == {}
    assert "TF-ICON" in tf_icon.source and tf_icon.description and "\n" not in tf_icon.description
    for preset in listed.values():  # every preset is a valid configuration, described in one line
        assert CompositionConfig.preset(preset.name) == CompositionConfig().replace(**preset.changes)
        assert preset.description and preset.source and preset.name in str(preset)
    listed.pop("tf-icon")  # a copy: the registry is not changed through it
    assert "tf-icon" in tficon.presets()


def test_tf_icon_preset_is_the_default_configuration_and_overridable():
    assert CompositionConfig.preset("tf-icon") == CompositionConfig()
    assert CompositionConfig.preset("tf-icon", steps=7, tau_a=0.3) == CompositionConfig(steps=7, tau_a=0.3)
    with pytest.raises(TypeError, match="unknown config field"):
        CompositionConfig.preset("tf-icon", no_such_setting=1)
    with pytest.raises(ValueError, match="tau_a must be"):
        CompositionConfig.preset("tf-icon", tau_a=3.0)


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; valid presets: tf-icon"):
        CompositionConfig.preset("nope")
    with pytest.raises(ValueError, match="valid presets: tf-icon"):
        get_preset("TF-ICON")


def test_register_preset_checks_its_arguments():
    with pytest.raises(ValueError, match="lowercase letters, digits and dashes"):
        register_preset("Bad Name", "d", "s")
    with pytest.raises(ValueError, match="description must be one non-empty line"):
        register_preset("x-test", "", "s")
    with pytest.raises(ValueError, match="source must be one non-empty line"):
        register_preset("x-test", "d", "two\nlines")
    with pytest.raises(ValueError, match="not a valid configuration: unknown config field"):
        register_preset("x-test", "d", "s", tau_z=0.1)
    with pytest.raises(ValueError, match="not a valid configuration: tau_a must be"):
        register_preset("x-test", "d", "s", tau_a=-1.0)
    with pytest.raises(ValueError, match="already registered"):
        register_preset("tf-icon", "d", "s")
    assert "x-test" not in tficon.presets()  # nothing half-registered


def test_a_registered_preset_builds_its_config_and_overrides_win():
    with temporary_preset("x-late", tau_a=0.2, tau_b=0.6):
        assert list(tficon.presets())[-1] == "x-late"
        assert CompositionConfig.preset("x-late") == CompositionConfig(tau_a=0.2, tau_b=0.6)
        assert CompositionConfig.preset("x-late", tau_a=0.5, seed=1) == CompositionConfig(tau_a=0.5, tau_b=0.6, seed=1)
        with pytest.raises(ValueError, match="already registered"):
            register_preset("x-late", "d", "s", tau_a=0.1)
        replaced = register_preset("x-late", "d", "s", replace=True, tau_a=0.1)
        assert CompositionConfig.preset("x-late") == CompositionConfig(tau_a=0.1) and replaced.changes == {"tau_a": 0.1}
    assert "x-late" not in tficon.presets()


def test_preset_of_and_with_preset_work_on_the_settings_presets_control():
    with temporary_preset("x-late", tau_a=0.2, tau_b=0.6):
        assert preset_of(CompositionConfig()) == "tf-icon"
        assert preset_of(CompositionConfig(steps=7, seed=2)) == "tf-icon"  # settings no preset sets do not count
        assert preset_of(CompositionConfig(tau_a=0.2, tau_b=0.6, steps=7)) == "x-late"
        assert preset_of(CompositionConfig(tau_a=0.2)) is None  # half of x-late: no preset
        # a sweep's preset cell: the controlled settings come from the preset, the others stay
        base = CompositionConfig(tau_a=0.3, steps=9)
        assert with_preset(base, "tf-icon") == CompositionConfig(steps=9)
        assert with_preset(base, "x-late") == CompositionConfig(tau_a=0.2, tau_b=0.6, steps=9)


# ---------------------------------------------------------------------------------------------------- command line
def _config(command: str, *extra: str) -> CompositionConfig:
    args = build_parser().parse_args([command, *COMMANDS[command], *extra])
    if command == "batch":  # its --mode "auto" is decided per sample
        args = argparse.Namespace(**{**vars(args), "mode": None})
    return config_from_args(args, "cross")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_preset_flag_in_every_command_and_explicit_flags_override_it(command):
    assert _config(command) == CompositionConfig()
    assert _config(command, "--preset", "tf-icon") == CompositionConfig()
    with temporary_preset("x-late", tau_a=0.2, tau_b=0.6, align_warmup=True):
        assert _config(command, "--preset", "x-late") == CompositionConfig(tau_a=0.2, tau_b=0.6, align_warmup=True)
        # an explicit flag wins, even when it gives the default value
        assert _config(command, "--preset", "x-late", "--tau-a", "0.4", "--seed", "3") == CompositionConfig(
            tau_a=0.4, tau_b=0.6, align_warmup=True, seed=3
        )
        assert _config(command, "--preset", "x-late", "--tau-a", "0", "--seed", "0") == CompositionConfig(
            tau_a=0.0, tau_b=0.6, align_warmup=True, seed=0
        )  # zero is a value, not "not given"
    help_text = next(
        a.help for a in build_parser()._subparsers._group_actions[0].choices[command]._actions if a.dest == "preset"
    )
    assert "tf-icon" in help_text


def test_unknown_preset_on_the_command_line_is_a_usage_error(tmp_path, capsys):
    assert main(["demo", "--preset", "nope", "--out", str(tmp_path / "d.png"), "--quiet"]) == 2
    assert "unknown preset 'nope'; valid presets: tf-icon" in capsys.readouterr().err


def test_demo_with_the_tf_icon_preset_is_bitwise_the_default(tmp_path):
    """The whole CLI path (parse, preset, Session, decode, save): the same bytes as without --preset."""
    images = []
    for extra in ([], ["--preset", "tf-icon"]):
        out = tmp_path / f"demo{len(extra)}.png"
        assert main(["demo", "--steps", "2", "--quiet", "--out", str(out), *extra]) == 0
        images.append(np.asarray(Image.open(out)))
    assert np.array_equal(images[0], images[1])


# ---------------------------------------------------------------------------------------------------- sweeps
def test_grid_option_reads_presets_and_refuses_unknown_ones():
    assert parse_grid_option("preset=tf-icon") == ("preset", ["tf-icon"])
    with temporary_preset("x-late", tau_a=0.2):
        assert parse_grid_option("preset = tf-icon, x-late") == ("preset", ["tf-icon", "x-late"])
    with pytest.raises(GridError, match="unknown preset 'x-late'; valid presets: tf-icon"):
        parse_grid_option("preset=tf-icon,x-late")


def test_sweep_over_presets_matches_fresh_sessions_and_names_the_preset(model, sample, tmp_path):
    with temporary_preset("x-late", tau_a=0.0, tau_b=0.5):
        grid = {"preset": ["tf-icon", "x-late"], "tau_b": [0.8, 1.0]}
        result = run_sweep(
            model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt, grid,
            image_size=SIZE, steps=4, progress=False, out=tmp_path / "sweep",
        )  # fmt: skip
        assert not result.failed
        by_values = {(c.values["preset"], c.values["tau_b"]): c for c in result.cells}
        # the preset sets tau_a (and tau_b, which the other axis overrides); tf-icon cells have the official tau_a
        assert by_values["x-late", 0.8].config == CompositionConfig(steps=4, tau_a=0.0, tau_b=0.8)
        assert by_values["tf-icon", 1.0].config == CompositionConfig(steps=4, tau_b=1.0)
        for (name, tau_b), cell in by_values.items():
            config = CompositionConfig.preset(name, steps=4, tau_b=tau_b)
            fresh = new_session(model, sample, **{f: getattr(config, f) for f in config.__dataclass_fields__}).result
            assert np.array_equal(np.asarray(cell.image), np.asarray(fresh)), (name, tau_b)
        with open(tmp_path / "sweep" / "cells.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["preset"] for r in rows] == ["tf-icon", "tf-icon", "x-late", "x-late"]
    # a sweep without a preset axis names the preset its cells follow
    plain = run_sweep(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
        {"latent_norm_steps": [0, 1]}, image_size=SIZE, steps=2, progress=False,
    )  # fmt: skip
    assert [c.row()["preset"] for c in plain.cells] == ["tf-icon", None]


def test_session_summary_names_the_preset(model, sample):
    assert new_session(model, sample, steps=2).summary()["preset"] == "tf-icon"
    with temporary_preset("x-late", tau_a=0.2):
        assert new_session(model, sample, steps=2, tau_a=0.2).summary()["preset"] == "x-late"
        assert new_session(model, sample, steps=2, tau_a=0.3).summary()["preset"] is None  # follows no preset


def test_every_setting_flag_defaults_to_not_given():
    """So that --preset can tell an explicit flag from a default (config_from_args)."""
    args = build_parser().parse_args(["demo"])
    assert all(getattr(args, s.name) is (False if s.switch else None) for s in SETTINGS) and args.preset is None


def test_the_primecomposer_preset_is_the_released_scripts_defaults():
    from tficon.core.primecomposer import primecomposer_changes

    preset = CompositionConfig.preset("primecomposer")
    released = CompositionConfig().replace(**primecomposer_changes())
    assert preset.strategy == released.strategy == "primecomposer"
    assert preset.effective_guidance == released.effective_guidance == 2.5
    assert preset.replace(guidance=2.5) == released
    assert tficon.presets()["primecomposer"].source.startswith("CodeGoat24/PrimeComposer")


def test_primecomposer_refuses_tales_mechanisms():
    with pytest.raises(ValueError, match="later_start and latent_norm_steps do not apply"):
        CompositionConfig.preset("primecomposer", later_start=0.5)
    with pytest.raises(ValueError, match="set them to 0"):
        CompositionConfig(strategy="primecomposer", latent_norm_steps=2)


@pytest.fixture(scope="module")
def toy_pair():
    from tficon.model import load_model
    from tficon.toy.samples import toy_sample

    return load_model("toy"), toy_sample()


def _final(model, sample, config, prompt):
    from tficon.composition.session import Session

    session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, prompt,
                      config=config)  # fmt: skip
    return session.run().records[-1].generation.x


@pytest.mark.parametrize("name", sorted(tficon.presets()))
def test_every_registered_preset_composes_the_toy_pair(toy_pair, name):
    """Each preset runs end to end (10 steps: the fewest where shine-blend's adaptive window, the blend steps
    2 <= s < int(0.5 * 10 - 1), holds any) on the embedded model with the object's words marked in the prompt, and
    gives a finite result that differs from TF-ICON's unless it is TF-ICON."""
    model, sample = toy_pair
    prompt = sample.prompt.replace("red star", "<ref> red star <ref>")
    assert prompt != sample.prompt
    final = _final(model, sample, CompositionConfig.preset(name, steps=10), prompt)
    assert torch.isfinite(final).all()
    official = _final(model, sample, CompositionConfig(steps=10), prompt)
    assert torch.equal(final, official) == (name == "tf-icon")


def test_primecomposer_rca_changes_only_what_its_constraint_touches(toy_pair):
    """With region-constrained cross-attention the released strategy's result changes, and the constraint needs the
    object's words: a prompt without markers and no object_words is refused by name."""
    model, sample = toy_pair
    prompt = sample.prompt.replace("red star", "<ref> red star <ref>")
    plain = _final(model, sample, CompositionConfig.preset("primecomposer", steps=6), prompt)
    rca = _final(model, sample, CompositionConfig.preset("primecomposer-rca", steps=6), prompt)
    assert not torch.equal(plain, rca)
    # the box's outside is the kept background trajectory in both until tau_b: the constraint acts on the object
    from tficon.composition.session import Session

    with pytest.raises(ValueError, match="object_words|<ref>"):
        Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                config=CompositionConfig.preset("primecomposer-rca", steps=6)).run()  # fmt: skip


def test_every_mechanism_setting_is_a_sweep_axis_read_from_the_command_line():
    """Each mechanism's setting can vary in a sweep grid, read with its own type from ``--grid``."""
    from tficon.run.sweep_grid import PARAMETERS

    mechanisms = ("strategy", "tau_c", "later_start", "latent_norm_steps", "latent_norm_strength", "inject_layers",
                  "region_cross_attention", "adaptive_blend", "adaptive_blend_until")  # fmt: skip
    assert set(mechanisms) <= set(PARAMETERS)
    assert parse_grid_option("latent_norm_steps=2,5") == ("latent_norm_steps", [2, 5])  # integers, not 2.0
    assert parse_grid_option("region_cross_attention=off,on") == ("region_cross_attention", [False, True])
    assert parse_grid_option("adaptive_blend=True,0") == ("adaptive_blend", [True, False])
    assert parse_grid_option("strategy=tf-icon;tigic") == ("strategy", ["tf-icon", "tigic"])
    with pytest.raises(GridError, match="adaptive_blend=off,on"):
        parse_grid_option("adaptive_blend=maybe")

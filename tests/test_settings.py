"""SETTINGS, the one list of CompositionConfig's settings, drives the command line and Session.update."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from tiny_setup import new_session

from tficon.cli import _CONFIG_FLAGS, _FLAG_NAMES, build_parser, config_from_args, flag_message, main
from tficon.core.config import INVALIDATES, SETTINGS, SETTINGS_BY_NAME, CompositionConfig, settings_invalidating
from tficon.core.plan import plans_for

COMMANDS = ("demo", "compose", "batch", "sweep")


def _subparser(command: str) -> argparse.ArgumentParser:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setting_is_a_flag_of_every_command(command):
    parser = _subparser(command)
    actions = {flag: action for action in parser._actions for flag in action.option_strings}
    help_text = parser.format_help()
    for setting in SETTINGS:
        action = actions[setting.flag]
        assert action.dest == setting.name and setting.flag in help_text
        if setting.switch:
            assert isinstance(action, argparse._StoreTrueAction) and action.default is False
        elif setting.choices is not None and not (command == "batch" and setting.name == "mode"):
            assert tuple(action.choices) == setting.choices
    # numbers show their type and range; guidance has no default of its own (the mode's official one)
    assert actions["--guidance"].default is None and actions["--guidance"].type is float
    assert actions["--steps"].type is int and actions["--tau-a"].type is float
    flat = " ".join(help_text.split())
    assert "[number in 0..1] (default: 0.4)" in flat and "[integer >= 1] (default: 20)" in flat
    assert "[number >= 0]" in flat  # guidance: no upper bound


@pytest.mark.parametrize("command", COMMANDS)
def test_parsed_flags_become_the_config(command):
    required = {
        "demo": [],
        "compose": ["--background", "b", "--foreground", "f", "--foreground-mask", "m", "--prompt", "p", "--out", "o"],
        "batch": ["root", "--out", "o"],
        "sweep": ["--out", "o"],
    }[command]
    switches = [s.flag for s in SETTINGS if s.switch]
    args = build_parser().parse_args(
        [command, *required, *switches, "--tau-bg", "0.25", "--guidance", "3", "--seed", "7", "--order", "3"]
    )
    config = _config(args, "same")
    assert all(getattr(config, s.name) is True for s in SETTINGS if s.switch)
    assert (config.tau_bg, config.guidance, config.seed, config.order, config.mode) == (0.25, 3.0, 7, 3, "same")
    assert _config(build_parser().parse_args([command, *required]), "cross") == CompositionConfig()  # the official


def _config(args, mode):
    if args.command == "batch":  # its --mode "auto" is decided per sample; the shared settings are built without it
        args = argparse.Namespace(**{**vars(args), "mode": None})
    return config_from_args(args, mode)


def test_parity_switches_reach_the_session(tmp_path):
    out, summary = tmp_path / "demo.png", tmp_path / "demo.json"
    argv = ["demo", "--out", str(out), "--steps", "2", "--quiet", "--json", str(summary)]
    assert main([*argv, "--background-queries", "--largest-contour", "--no-cross-lag", "--align-warmup"]) == 0
    config = json.loads(summary.read_text())["config"]
    assert config["background_queries"] and config["largest_contour"] and config["no_cross_lag"]
    assert config["align_warmup"] and not config["clip_box"] and config["steps"] == 2


def test_library_names_in_messages_become_flags():
    for setting in SETTINGS:  # every setting is rewritten, one way or the other
        assert (_FLAG_NAMES if "_" in setting.name else _CONFIG_FLAGS)[setting.name] == setting.flag
    assert flag_message("tau_bg must be a finite number; tau_b too") == "--tau-bg must be a finite number; --tau-b too"
    assert flag_message("steps must be a positive integer, a fraction of the steps") == (
        "--steps must be a positive integer, a fraction of the steps"
    )
    assert flag_message("clip_box=True moves it; background_queries off") == "--clip-box moves it; --background-queries off"


# ---------------------------------------------------------------------------------------------------------------
# Session.update: what a change returns and drops is the level its setting declares
# ---------------------------------------------------------------------------------------------------------------

STEPS = 4
#: A changed value for every setting (a new setting must be added here, so its level gets checked); the plans
#: settings' values change the plans of 4 steps (some from step 0, some later).
CHANGED = dict(
    mode="same", steps=5, order=1, guidance=3.0, tau_a=1.0, tau_b=1.0, tau_bg=1.0, seed=5, align_warmup=True,
    no_cross_lag=True, background_queries=True, largest_contour=True, clip_box=True, strategy="primecomposer",
    tau_c=1.0, later_start=0.5, latent_norm_steps=2, latent_norm_strength=1.0,
    inject_layers="decoder", region_cross_attention=True, object_words="red star", adaptive_blend=True,
    adaptive_blend_until=1.0,
)  # fmt: skip
#: The settings a Session starts from before the change (the official ones but where noted): the cross lag
#: only matters on steps with foreground injection past the warm-up, which 4 steps reach with tau_a = 1.
BEFORE = {
    "no_cross_lag": {"tau_a": 1.0},
    "tau_c": {"strategy": "primecomposer"},  # tau_c acts in primecomposer only
    "latent_norm_strength": {"latent_norm_steps": 2},
    "region_cross_attention": {"object_words": "red star"},
    # 4 steps blend after step 2 only with tau_b = 1; an adaptive blend there needs adaptive_blend_until = 1
    "adaptive_blend": {"object_words": "red star", "tau_b": 1.0, "adaptive_blend_until": 1.0},
    "adaptive_blend_until": {"object_words": "red star", "tau_b": 1.0, "adaptive_blend": True},
}


def test_declared_ranges_are_exactly_what_the_config_accepts():
    """A number setting's ``range`` is its accepted values: both bounds pass, a step past either fails, so the CLI's
    help and the Explorer never promise what the config refuses."""
    numbers = [s for s in SETTINGS if s.range is not None]
    assert {s.name for s in numbers} == {
        "steps", "guidance", "tau_a", "tau_b", "tau_bg", "seed", "tau_c", "later_start", "latent_norm_steps",
        "latent_norm_strength", "adaptive_blend_until",
    }  # fmt: skip
    for setting in numbers:
        low, high = setting.range
        integer = isinstance(setting.default, int)
        below = low - 1 if integer else low - 0.01
        CompositionConfig(**{setting.name: low})
        with pytest.raises(ValueError, match=setting.name):
            CompositionConfig(**{setting.name: below})
        if high is None:
            CompositionConfig(**{setting.name: 10**6 if integer else 1e6})  # unbounded above
        else:
            CompositionConfig(**{setting.name: high})
            with pytest.raises(ValueError, match=setting.name):
                CompositionConfig(**{setting.name: high + 1 if integer else high + 0.01})
        span = setting.control_span
        assert span[0] >= low and (high is None or span[1] <= high), setting.name


def test_every_setting_has_a_level_and_a_changed_value():
    assert set(CHANGED) == set(SETTINGS_BY_NAME)
    levels = [settings_invalidating(level) for level in INVALIDATES]
    assert set().union(*levels) == set(SETTINGS_BY_NAME) and sum(map(len, levels)) == len(SETTINGS)
    with pytest.raises(ValueError, match="level must be one of"):
        settings_invalidating("everything")


@pytest.fixture(scope="module")
def engine(model):
    from tficon.composition.engine import Engine

    return Engine(model)  # shared: the Sessions below take their inversions from its cache


@pytest.mark.parametrize("name", list(CHANGED))
def test_update_returns_and_drops_what_the_setting_declares(model, sample, engine, name):
    before = BEFORE.get(name, {})
    session = new_session(model, sample, steps=STEPS, engine=engine, **before).run()
    inputs, old_config = session.inputs, session.config
    first = session.update(**{name: CHANGED[name]})
    level = SETTINGS_BY_NAME[name].invalidates
    if level == "plans":
        old, new = plans_for(old_config), plans_for(session.config)
        expected = next(s for s, (a, b) in enumerate(zip(old, new)) if a != b)
        from_step_0 = ("align_warmup", "background_queries", "strategy", "inject_layers", "region_cross_attention")
        assert expected > 0 or name in from_step_0  # the prefix is kept where it can be
        assert first == expected and session.step_index == expected and not session.needs_inversion
    else:
        assert first == 0 and session.step_index == 0
        assert (session.inputs is inputs) == (level != "inputs")  # inputs: placed and prepared again
        assert session.needs_inversion == (level in ("inputs", "latents"))  # all_steps: inversions kept
    session.run()  # and the result is the one of a fresh Session with that setting
    fresh = new_session(model, sample, engine=engine, **{"steps": STEPS, **before, name: CHANGED[name]}).run()
    assert session.config == fresh.config
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)

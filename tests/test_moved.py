"""Names users imported before the package was layered keep importing from where they were.

Before the layers, every module sat directly in ``tficon/``; ``tficon/_moved.py`` answers the old module paths with
the modules that now hold them. The public entry points at the top of the package and of ``tficon.widgets`` are
checked too.
"""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

from tficon._moved import MOVED

#: old module -> names code and notebooks imported from it before the move
OLD_IMPORTS = {
    "tficon.config": ["CompositionConfig", "TAU_RANGES", "OFFICIAL_GUIDANCE"],
    "tficon.schedule": ["injection_schedule", "InjectionSchedule"],
    "tficon.plan": ["step_plan", "composition_plan", "StepPlan"],
    "tficon.solver": ["NoiseSchedule", "invert", "sample", "multistep_update"],
    "tficon.checks": ["NonFiniteError", "check_finite"],
    "tficon.threads": ["torch_threads", "apply_threads"],
    "tficon.io": ["load_image", "load_mask", "to_pil", "paste_back"],
    "tficon.placement": ["Box", "Placement", "compute_placement", "prepare_foreground", "cut_and_paste", "bbox_from_mask"],
    "tficon.models": ["load_model", "LoadedModel", "ModelNotAvailableError", "assemble_loaded_model", "cast_module"],
    "tficon.text": ["encode_prompt", "exceptional_embedding", "Conditioning"],
    "tficon.clip_tokenizer": ["build_clip_tokenizer"],
    "tficon.tiny": ["tiny_model", "save_tiny_model", "tiny_components"],
    "tficon.engine": ["Engine", "StepRecord", "StepInputs", "InversionCache"],
    "tficon.attention": ["composite_attention", "CompositeSelfAttention", "InjectionController"],
    "tficon.session": ["Session"],
    "tficon.preview": ["fit_latent_rgb_map", "latent_to_rgb"],
    "tficon.one_call": ["compose"],
    "tficon.lockstep": ["run_lockstep", "auto_max_rows"],
    "tficon.sweeps": ["run_sweep", "SweepResult", "GridError"],
    "tficon.batch": ["run_batch", "discover_samples", "BatchReport"],
    "tficon.report": ["contact_sheet", "html_report", "thumbnail"],
    "tficon.metrics": ["psnr", "ssim", "mse", "composition_metrics", "inversion_metrics", "LPIPSScorer"],
    "tficon.samples": ["demo_sample", "toy_sample", "Sample", "side_by_side"],
}


def test_every_moved_module_is_listed_here():
    assert set(OLD_IMPORTS) == set(MOVED)


@pytest.mark.parametrize("old", sorted(OLD_IMPORTS))
def test_old_module_paths_import_the_same_module_with_its_names(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__.name == MOVED[old]  # the alias does not rename the module it lends
    missing = [name for name in OLD_IMPORTS[old] if not hasattr(module, name)]
    assert not missing, f"{old} no longer has {missing}"


def test_a_class_from_an_old_path_pickles_under_its_new_name():
    from tficon.config import CompositionConfig

    config = CompositionConfig(tau_a=0.3)
    assert CompositionConfig.__module__ == "tficon.core.config"
    assert pickle.loads(pickle.dumps(config)) == config


def test_an_old_path_imports_in_a_fresh_interpreter():
    """The alias finder is installed by ``import tficon`` itself, so the first import may be the old path."""
    code = "from tficon.samples import demo_sample; from tficon.placement import Box; print(demo_sample().prompt)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "star" in out


def test_public_entry_points():
    import tficon
    import tficon.widgets

    assert tficon.compose.__module__ == "tficon.composition.one_call" and callable(tficon.compose)
    assert tficon.sweep.__module__ == "tficon.run.sweeps"
    assert tficon.Session.__module__ == "tficon.composition.session"
    for name in ("load_model", "LoadedModel", "CompositionConfig"):
        assert getattr(tficon, name) is not None
    # importing the composition layer must not shadow the one-call function on the package
    importlib.import_module("tficon.composition.session")
    assert callable(tficon.compose)
    for name in ("Explorer", "SweepGrid", "AttentionMapView", "AttentionPanel", "StepStrip", "ImageRow"):
        assert getattr(tficon.widgets, name).__name__ == name

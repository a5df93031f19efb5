"""tficon: TF-ICON training-free cross-domain image composition on diffusers.

The package is layered; each folder may import only the folders below it (``docs/architecture.md``):

- ``tficon.core``: settings, schedules, the solver, placement geometry, image and mask loading (pure, no model);
- ``tficon.model``: identifying and loading models, text and the exceptional prompt, tiny random models;
- ``tficon.composition``: the engine (the door to the denoiser and the VAE), attention processors, the ``Session``;
- ``tficon.run``: running many compositions (the lockstep runner, batches, sweeps) and their reports;
- ``tficon.eval``: metrics;
- ``tficon.toy``: the embedded toy world and model.

The UI lives in ``tficon.widgets`` (nothing in the core imports it). Heavy submodules are imported lazily so that
``import tficon`` stays fast. No submodule shares the name of a function exported here: importing it would replace
the function on the package (so the composition layer is ``tficon.composition``, not ``tficon.compose``).
"""

from __future__ import annotations

import importlib

from tficon import _moved

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "load_model": "tficon.model.load",
    "LoadedModel": "tficon.model.loaded",
    "CompositionConfig": "tficon.core.config",
    "Session": "tficon.composition.session",
    "compose": "tficon.composition.one_call",
    "sweep": "tficon.run.sweeps",
    "presets": "tficon.core.presets",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

_moved.install()


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tficon' has no attribute {name!r}")

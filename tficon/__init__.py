"""tficon: TF-ICON training-free cross-domain image composition on diffusers.

The core is importable without any Jupyter package; the UI lives in ``tficon.widgets``.
Heavy submodules are imported lazily so that ``import tficon`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "load_model": "tficon.models",
    "LoadedModel": "tficon.models",
    "CompositionConfig": "tficon.config",
    "Session": "tficon.session",
    "compose": "tficon.compose",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tficon' has no attribute {name!r}")

"""tficon: TF-ICON training-free cross-domain image composition on diffusers.

The core is importable without any Jupyter package; the UI lives in ``tficon.widgets``.
Heavy submodules are imported lazily so that ``import tficon`` stays fast. No submodule shares the name of a
function exported here: importing it would replace the function on the package (``tficon.compose`` and
``tficon.sweep`` live in ``tficon.one_call`` and ``tficon.sweeps``).
"""

from __future__ import annotations

import importlib
import os

# The UI sources live in the checkout's top-level widgets/ folder and are installed as
# tficon/widgets. When tficon is imported from a source checkout (an editable install, or
# the checkout on sys.path), there is no tficon/widgets folder: add the checkout root to this
# package's search path so that ``tficon.widgets`` resolves exactly as in an installed copy.
_package_dir = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_package_dir, "widgets")) and os.path.isfile(
    os.path.join(os.path.dirname(_package_dir), "widgets", "__init__.py")
):
    __path__.append(os.path.dirname(_package_dir))

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "load_model": "tficon.models",
    "LoadedModel": "tficon.models",
    "CompositionConfig": "tficon.config",
    "Session": "tficon.session",
    "compose": "tficon.one_call",
    "sweep": "tficon.sweeps",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tficon' has no attribute {name!r}")

"""Old module paths keep importing: ``tficon.session``, ``tficon.models``, ``tficon.samples``, ...

Before the package was layered into folders, every module sat directly in ``tficon/``. Code and notebooks written
then import ``from tficon.samples import demo_sample`` or ``from tficon.placement import Box``. A small finder on
``sys.meta_path`` answers those names with the module that now holds them (the same module object, so
``tficon.models is tficon.model`` and monkeypatching either one patches both). New code imports the new
paths; this table is the only place that knows the old ones.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old module name -> the module that now holds its contents
MOVED = {
    "tficon.config": "tficon.core.config",
    "tficon.schedule": "tficon.core.schedule",
    "tficon.plan": "tficon.core.plan",
    "tficon.solver": "tficon.core.solver",
    "tficon.checks": "tficon.core.checks",
    "tficon.threads": "tficon.core.threads",
    "tficon.io": "tficon.core.io",
    "tficon.placement": "tficon.core.placement",
    "tficon.models": "tficon.model",
    "tficon.text": "tficon.model.text",
    "tficon.clip_tokenizer": "tficon.model.tokenizer",
    "tficon.tiny": "tficon.model.tiny",
    "tficon.engine": "tficon.composition.engine",
    "tficon.attention": "tficon.composition.attention",
    "tficon.session": "tficon.composition.session",
    "tficon.preview": "tficon.composition.preview",
    "tficon.one_call": "tficon.composition.one_call",
    "tficon.lockstep": "tficon.run.lockstep",
    "tficon.sweeps": "tficon.run.sweeps",
    "tficon.batch": "tficon.run.batch",
    "tficon.report": "tficon.run.report",
    "tficon.metrics": "tficon.eval.metrics",
    "tficon.samples": "tficon.toy.samples",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and loads it as the module that replaced it."""

    def __init__(self):
        self._own_specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self._own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        # The module is already executed under its new name, but the import system has just set its __spec__ to
        # the alias spec: give it back its own, so that reloading and pickling keep using the new name.
        module.__spec__ = self._own_specs[module.__name__]


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())

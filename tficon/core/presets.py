"""Named presets: a composition strategy as a set of settings, with where it comes from.

A preset is a name, a one-line description, its source (the paper, and the repository and commit whose released code
it follows) and the ``CompositionConfig`` settings it changes from the defaults. Presets are data, not code: every
mechanism a preset switches on is an ordinary setting (a field of ``CompositionConfig``), so a preset can be
inspected, overridden setting by setting and swept like any other configuration.

- ``tficon.presets()`` lists them: ``{name: Preset}``, each with ``description``, ``source`` and ``changes``;
- ``CompositionConfig.preset(name, **changes)`` builds one, any setting overridable;
- ``register_preset(name, description, source, **changes)`` adds one. The built-in presets are registered at the end
  of this module, one call each, so that they exist whenever presets are listed; a preset joins them when the
  mechanisms it uses have landed (only presets that work are registered);
- the command line takes ``--preset NAME`` (``compose``, ``batch``, ``sweep``, ``demo``), and a sweep can compare
  presets on one grid: ``tficon sweep --grid preset=tf-icon,tale``.

docs/strategies.md describes each preset and the mechanisms it uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from tficon.core.primecomposer import PRIMECOMPOSER_DESCRIPTION, PRIMECOMPOSER_SOURCE
from tficon.core.tigic import TIGIC_DESCRIPTION, TIGIC_SOURCE

__all__ = [
    "Preset", "apply_preset", "get_preset", "preset_names", "preset_of", "presets", "register_preset", "with_preset",
]  # fmt: skip

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class Preset:
    """One named preset: ``changes`` are the ``CompositionConfig`` settings it sets (an empty mapping: the defaults)."""

    name: str
    description: str
    source: str
    changes: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.changes.items()) or "the defaults"
        return f"{self.name}: {self.description} ({settings}; source: {self.source})"


_REGISTRY: dict[str, Preset] = {}


def register_preset(name: str, description: str, source: str, *, replace: bool = False, **changes) -> Preset:
    """Add a preset named ``name`` (lowercase letters, digits and dashes) that sets ``changes`` on the defaults.

    The changes are checked now: each must be a ``CompositionConfig`` field and the defaults with them applied must be
    a valid configuration. A name already registered raises unless ``replace=True``. Returns the preset."""
    from tficon.core.config import CompositionConfig  # function level: config.py's preset() imports this module

    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a preset name is lowercase letters, digits and dashes (e.g. 'tf-icon'), got {name!r}")
    for what, text in (("description", description), ("source", source)):
        if not isinstance(text, str) or not text.strip() or "\n" in text.strip():
            raise ValueError(f"preset {name!r}: {what} must be one non-empty line, got {text!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a preset named {name!r} is already registered; pass replace=True to replace it")
    try:
        CompositionConfig().replace(**changes)
    except (TypeError, ValueError) as error:
        raise ValueError(f"preset {name!r}: its changes are not a valid configuration: {error}") from None
    preset = Preset(name, description.strip(), source.strip(), MappingProxyType(dict(changes)))
    _REGISTRY[name] = preset
    return preset


def preset_names() -> tuple[str, ...]:
    """The registered presets' names, in registration order (``tf-icon`` first)."""
    return tuple(_REGISTRY)


def presets() -> dict[str, Preset]:
    """Every registered preset by name (a copy: registering goes through :func:`register_preset`)."""
    return dict(_REGISTRY)


def get_preset(name: str) -> Preset:
    """The preset named ``name``; an unknown name raises a ValueError listing the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def apply_preset(config, name: str):
    """``config`` (a ``CompositionConfig``) with the settings of preset ``name`` applied over it."""
    return config.replace(**get_preset(name).changes)


def with_preset(config, name: str):
    """``config`` following preset ``name`` (a sweep's ``preset`` cell): every setting that some preset sets takes
    preset ``name``'s value, or its default where ``name`` leaves it alone; the other settings (steps, seed, mode,
    ...) stay as ``config`` has them. So ``tf-icon`` switches off what another preset would switch on."""
    preset = get_preset(name)
    defaults = type(config)()
    names = {n for p in _REGISTRY.values() for n in p.changes}
    return config.replace(**{n: preset.changes.get(n, getattr(defaults, n)) for n in names})


def preset_of(config) -> str | None:
    """The preset a ``CompositionConfig`` follows, for records: the one whose settings it has on every setting that
    some preset sets (the others, e.g. steps or seed, do not count); ``tf-icon`` when all those are at their
    defaults; None when it mixes them otherwise."""
    defaults = type(config)()
    names = {name for preset in _REGISTRY.values() for name in preset.changes}
    for preset in _REGISTRY.values():
        wanted = {name: preset.changes.get(name, getattr(defaults, name)) for name in names}
        if all(getattr(config, name) == value for name, value in wanted.items()):
            return preset.name
    return None


# ---------------------------------------------------------------------------------------------------- built-in presets
register_preset(
    "tf-icon",
    "TF-ICON as its official code runs it: the defaults, bit for bit",
    "Lu et al., TF-ICON, ICCV 2023; Shilin-LU/TF-ICON (the official code)",
)
register_preset(
    "tale",
    "TF-ICON with TALE's later start at t' and its adaptive latent normalisation of the object region",
    "TALE, ACM MM 2024; tkpham3105/TALE @2d869ef (run line --dpm_steps 20 --tprime 12 --tau 5)",
    later_start=0.6,
    latent_norm_steps=5,
    latent_norm_strength=0.5,
)
register_preset(
    "primecomposer",
    PRIMECOMPOSER_DESCRIPTION,
    PRIMECOMPOSER_SOURCE,
    # The released script's defaults (primecomposer_changes) are tficon's own but for the guidance, 2.5, which the
    # strategy already takes when guidance is None: the preset sets only what differs, so records name it rightly.
    strategy="primecomposer",
)
register_preset(
    "primecomposer-rca",
    "PrimeComposer's released code with its region-constrained cross-attention switched on (the object's words, "
    "marked '<ref> red dog <ref>' in the prompt or given as object_words, attend only inside the placed object)",
    "PrimeComposer, ACM MM 2024; CodeGoat24/PrimeComposer at ff602b2 (ptp_scripts/ptp_utils.py, which its "
    "released pipeline never calls)",
    strategy="primecomposer",
    region_cross_attention=True,
)
register_preset(
    "shine-blend",
    "TF-ICON with SHINE's adaptive background blending: early blends follow the object words' cross-attention mask, "
    "later ones the box (needs the object's words: '<ref>' markers or object_words)",
    "SHINE, ICLR 2026 (arXiv 2509.21278); ZhumingLian/SHINE",
    adaptive_blend=True,
)
register_preset(
    "tigic",
    TIGIC_DESCRIPTION,
    TIGIC_SOURCE,
    # the strategy alone: guidance None means the released --scale 3.5 under it (tficon.core.tigic.tigic_changes)
    strategy="tigic",
)

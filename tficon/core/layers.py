"""Which self-attention layers take TF-ICON's composite injection (the ``inject_layers`` setting).

TF-ICON injects into every self-attention layer of the UNet. Later training-free methods found that a few layers
carry most of the layout and identity ("vital layers": Stable Flow and FreeFlux for DiT models; TIGIC's paper
restricts its attention guidance to the UNet's decoder), so the selection is a setting:

- ``"all"``: every self-attention layer (the official behaviour, the default);
- ``"encoder"``, ``"mid"``, ``"decoder"``: the layers of that part of the UNet (``down_blocks``, ``mid_block``,
  ``up_blocks`` for the diffusers UNets; the model's family classifies, ``Family.layer_part``);
- a comma-separated list of those part names and layer names or prefixes as ``Session.attention_layers`` names
  them (``"up_blocks.1"`` selects every layer under ``up_blocks.1``).

Pure functions of names: :func:`parse_layer_spec` checks and normalises the text (``CompositionConfig`` calls it),
:func:`select_layers` resolves it against a model's layer list.
"""

from __future__ import annotations

from typing import Callable, Sequence

__all__ = ["ALL_LAYERS", "LAYER_PARTS", "parse_layer_spec", "select_layers"]

ALL_LAYERS = "all"
#: The parts of a UNet a selection may name, in execution order.
LAYER_PARTS = ("encoder", "mid", "decoder")


def parse_layer_spec(spec) -> str:
    """The canonical form of a layer selection: ``"all"``, or its items stripped and joined by ``","`` (order and
    duplicates kept as the first occurrence). Raises ValueError for an empty selection or an empty item."""
    if not isinstance(spec, str):
        raise ValueError(
            f"inject_layers must be a string: 'all', 'encoder', 'mid', 'decoder' or a comma-separated list of layer "
            f"names/prefixes; got {spec!r}"
        )
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise ValueError(
            f"inject_layers has an empty item in {spec!r}; write 'all', 'encoder', 'mid', 'decoder' or a "
            "comma-separated list of layer names/prefixes such as 'up_blocks.1,mid'"
        )
    if ALL_LAYERS in items and len(items) > 1:
        raise ValueError(f"inject_layers: 'all' stands alone (it already selects every layer), got {spec!r}")
    return ",".join(dict.fromkeys(items))


def select_layers(spec: str, layers: Sequence[str], part_of: Callable[[str], str]) -> frozenset[str] | None:
    """The layer names of ``layers`` a selection picks; None for ``"all"`` (every layer, the official case).

    ``part_of(name)`` is the part (one of :data:`LAYER_PARTS`) of a layer. An item that names no part, no layer and
    no prefix of a layer (a prefix ends at a ``.``) raises ValueError listing the valid names.
    """
    spec = parse_layer_spec(spec)
    if spec == ALL_LAYERS:
        return None
    chosen: set[str] = set()
    for item in spec.split(","):
        if item in LAYER_PARTS:
            picked = {name for name in layers if part_of(name) == item}
        else:
            picked = {name for name in layers if name == item or name.startswith(item + ".")}
        if not picked:
            shown = "\n  ".join(layers)
            raise ValueError(
                f"inject_layers: {item!r} selects no self-attention layer of this model; use 'all', one of "
                f"{LAYER_PARTS}, or a name or prefix of these layers:\n  {shown}"
            )
        chosen |= picked
    return frozenset(chosen)

"""The attention panel: every view of one step's captured self-attention maps.

Given ``{(layer, kind): (N, N) map}`` (what ``Session.capture_attention`` returns) and the pictures the
maps' keys belong to, it shows: a layer / resolution picker (one layer, or the mean of all layers of a
grid) and a kind picker; the selected map as a clickable query picker with the query's heatmap over
the image; the map's top SVD components; the region masks at that resolution; and the same query in
the composite and each of its sources side by side, on one colour scale (switchable), so a wrong injection is
visible at a glance. Positions are written (row, col) everywhere in the page; the Python API takes a query as
``(x, y)`` pixels, as the canvas reports clicks.

It is fed plain data (no Session): the Explorer captures the maps and passes them in, and a notebook
can do the same with maps from anywhere.
"""

from __future__ import annotations

import html
import threading
from typing import Any, Callable, Mapping

import ipywidgets as widgets
import numpy as np
import torch

from . import maps as maps_mod
from . import render
from .views import AttentionMapView, ImageRow

__all__ = ["AttentionPanel", "short_layer_name", "source_picture"]

REGION_NAMES = ("box", "object", "background", "reference_object")


def short_layer_name(name: str) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn1`` -> ``down1.0``, ``mid_block...`` -> ``mid.0``."""
    parts = name.split(".")
    try:
        if parts[0] == "mid_block":
            return f"mid.{parts[2]}"
        return f"{parts[0].replace('_blocks', '')}{parts[1]}.{parts[3]}"
    except IndexError:
        return name


#: What a healthy set of maps looks like (shown under the side-by-side).
HEALTHY_LEGEND = (
    "<b>reading the maps</b>: a query on the pasted object should, in the composite, attend to the object "
    "(in the reference source, the same spot of the object lights up); a query on the background should attend "
    "to nearby background, as in the background source. Warning signs: the composite's map of an object query "
    "lies mostly outside the box, or a map is spread evenly (its peak p near 1/N: the query attends nowhere in "
    "particular). The dashed crosshair marks the query's row and column."
)


def source_picture(
    frame: np.ndarray, heat: torch.Tensor, query: tuple[int, int], *, size: int, width: int | None = None,
    peak: float | None = None,
) -> np.ndarray:  # fmt: skip
    """One picture of the side-by-side: the query's heatmap ``heat`` over ``frame``, ``size`` px wide, with the
    query pixel ``(x, y)`` marked by a crosshair (in the pixels of an image ``width`` wide; default: ``frame``'s
    width). ``peak``: the top of the colour scale (default: this map's own maximum)."""
    picture = render.heat_overlay(frame, heat.numpy(), size=size, peak=peak)
    scale = picture.shape[1] / (frame.shape[1] if width is None else width)
    return render.draw_crosshair(picture, (query[0] + 0.5) * scale, (query[1] + 0.5) * scale)


class AttentionPanel(widgets.VBox):
    """Views of one set of captured maps.

    Args:
        picker_px: display width of the query picker.
        dispatch: runs the work a click or a menu choice causes (default: at once); the Explorer passes
            its worker's ``submit``.
        extra_controls: widgets placed after the layer and kind menus (e.g. the Explorer's Capture button).

    ``show(...)`` sets new maps; ``query`` is the query pixel ``(x, y)`` in image pixels; ``selected()`` the
    grid, layers and kind shown; ``picker`` the map view (its ``attention`` is the shown map, ``heatmap`` the
    query's row); ``svd_row``, ``region_row`` and ``sources_row`` the pictures around it.
    """

    def __init__(
        self,
        *,
        picker_px: int = 256,
        dispatch: Callable[[Callable[[], None]], None] | None = None,
        extra_controls: tuple[widgets.Widget, ...] = (),
    ):
        super().__init__()
        self._dispatch = dispatch if dispatch is not None else (lambda job: job())
        self._local = threading.local()
        self.maps: Mapping[tuple[str, str], torch.Tensor] | None = None
        self.grids: dict[tuple[int, int], list[str]] = {}
        self.query: tuple[int, int] | None = None
        self._context: dict[str, Any] = {}
        self._sources_drawn = 0

        self.layer_choice = widgets.Dropdown(options=[], description="layer", style={"description_width": "40px"}, layout=widgets.Layout(width="340px"))
        self.layer_choice.add_class("tficon-layer")
        # wide enough for the longest kind label ("composite (no injection at this step: = own)")
        self.kind_choice = widgets.Dropdown(options=[], description="kind", style={"description_width": "40px"}, layout=widgets.Layout(width="400px"))
        self.kind_choice.add_class("tficon-kind")
        self.layer_choice.observe(self._on_choice, names="value")
        self.kind_choice.observe(self._on_choice, names="value")
        self.shared_scale = widgets.Checkbox(value=True, description="one colour scale for all maps", indent=False, layout=widgets.Layout(width="230px"))
        self.shared_scale.add_class("tficon-shared-scale")
        self.shared_scale.observe(self._on_scale, names="value")
        self.stale = False
        self.title = widgets.HTML("")
        self.title.add_class("tficon-attention-title")
        self.picker = AttentionMapView(size=picker_px, dispatch=self._dispatch)
        self.picker.add_class("tficon-attention-map")
        self.picker.on_query(self._on_query)
        self.svd_row = ImageRow(size=96)
        self.region_row = ImageRow(size=96)
        self.sources_row = ImageRow(size=128)
        self.sources_row.add_class("tficon-sources")
        small = "<span style='font-size:11px;color:#555'>{}</span>"
        self.children = [
            widgets.HBox(
                [self.layer_choice, self.kind_choice, self.shared_scale, *extra_controls],
                layout=widgets.Layout(align_items="center", flex_flow="row wrap"),
            ),
            self.title,
            widgets.HBox(
                [
                    self.picker,
                    widgets.VBox(
                        [
                            widgets.HTML(small.format("top SVD components of the whole map (rows centred; share of energy)")),
                            self.svd_row,
                            widgets.HTML(small.format("regions at this resolution")),
                            self.region_row,
                        ],
                        layout=widgets.Layout(margin="0 0 0 12px"),
                    ),
                ]
            ),
            widgets.HTML(small.format(
                "the same query in the composite and its sources (reference maps sit on the reference canvas, "
                "paired by index as the official code pairs them)"
            )),
            self.sources_row,
            widgets.HTML(f"<div style='font-size:11px;color:#555;max-width:760px;white-space:normal'>{HEALTHY_LEGEND}</div>"),
        ]

    # ------------------------------------------------------------------ public
    def show(
        self,
        maps: Mapping[tuple[str, str], torch.Tensor],
        *,
        frames: Mapping[str, np.ndarray],
        latent_grid: tuple[int, int],
        region_masks: Callable[[int, int], Mapping[str, torch.Tensor]] | None = None,
        query: tuple[int, int] | None = None,
        heading: str = "",
        injected: bool = True,
        layer_marks: Mapping[str, str] | None = None,
    ) -> None:
        """Show new maps.

        frames: ``(H, W, 3)`` pictures: "target" (the composite's frame, e.g. the cut-and-paste),
            "reference" (the reference canvas) and "background" (the background branch's image).
        latent_grid: the finest grid's shape, to tell each map's grid from its token count.
        region_masks: ``(h, w) -> {"box", "object", "background", "reference_object": bool (h, w)}``.
        query: the query pixel to start from (default: keep the current one, else the image centre).
        heading: HTML put before the title (e.g. which step).
        injected: whether foreground or background injection was on in the captured call (names the composite).
        layer_marks: ``{layer: "injected" or "plain"}`` where only some layers take the composite (``inject_layers``),
            shown in the layer list; None or {}: no marks.
        """
        self.maps = maps
        self.stale = False
        self.grids = maps_mod.layers_by_grid(maps, like=latent_grid)
        self._context = {
            "frames": frames, "region_masks": region_masks, "heading": heading, "injected": injected,
            "layer_marks": dict(layer_marks or {}),
        }  # fmt: skip
        if query is not None:
            self.query = query
        self._update_choices()
        self.render()

    def set_query(self, x: int, y: int) -> None:
        """Move the query to image pixel ``(x, y)`` (redraws the picker and the side-by-side)."""
        if self.maps is None:
            self.query = (int(x), int(y))
            return
        self.picker.set_query(int(x), int(y))  # -> _on_query

    def mark_stale(self, text: str) -> None:
        """Say above the views that they show older maps (a recompute has not reached their step yet)."""
        self.stale = True
        self._stale_html = (
            f"<span class='tficon-stale' style='background:#fff4d6;color:#8a4b00;font-size:12px;padding:1px 4px'>"
            f"stale: {html.escape(text)}</span> "
        )
        if "tficon-stale" not in self.title.value:
            self.title.value = self._stale_html + self.title.value

    def selected(self) -> tuple[tuple[int, int], list[str], str]:
        """``(grid, layers, kind)`` of the current choice."""
        choice = self.layer_choice.value
        if choice.startswith("grid:"):
            h, w = (int(v) for v in choice[5:].split("x"))
            grid, layers = (h, w), self.grids[(h, w)]
        else:
            grid, layers = next((g, [choice]) for g, members in self.grids.items() if choice in members)
        return grid, layers, self.kind_choice.value

    def frame_for(self, kind: str) -> np.ndarray:
        """The picture a kind's keys belong to."""
        frames = self._context["frames"]
        if maps_mod.KEY_FRAME[kind] == "reference":
            return frames["reference"]
        return frames["background"] if kind == "background" else frames["target"]

    # ------------------------------------------------------------------ drawing
    @property
    def _syncing(self) -> bool:
        return getattr(self._local, "syncing", False)

    def _on_choice(self, _change) -> None:
        if not self._syncing and self.maps is not None:
            self._dispatch(self.render)

    def _on_scale(self, _change) -> None:
        if self.maps is not None:
            self._dispatch(self._render_sources)

    def _on_query(self, query: tuple[int, int]) -> None:
        self.query = query
        self._render_sources()

    def _update_choices(self) -> None:
        options = []
        marks = self._context.get("layer_marks", {})
        for (h, w), layers in self.grids.items():
            injected = sum(marks.get(layer) == "injected" for layer in layers)
            count = f" ({injected} injected)" if marks else ""
            options.append((f"{h}×{w} · mean of {len(layers)} layer{'s' if len(layers) > 1 else ''}{count}", f"grid:{h}x{w}"))
            options.extend((f"{h}×{w} · {short_layer_name(layer)}{self._mark(marks, layer)}", layer) for layer in layers)
        values = [v for _, v in options]
        kinds = [k for k in maps_mod.KINDS if any(kind == k for (_layer, kind) in self.maps)]
        self._local.syncing = True
        try:
            current = self.layer_choice.value
            self.layer_choice.options = options
            self.layer_choice.value = current if current in values else values[0]
            current_kind = self.kind_choice.value
            self.kind_choice.options = [(self._label(k), k) for k in kinds]
            self.kind_choice.value = current_kind if current_kind in kinds else kinds[0]
        finally:
            self._local.syncing = False

    @staticmethod
    def _mark(marks: Mapping[str, str], layer: str) -> str:
        """A layer's mark in the list: which layers take the composite where only some do."""
        mark = marks.get(layer)
        return "" if mark is None else " ◆ injected" if mark == "injected" else " · plain"

    def _label(self, kind: str) -> str:
        return maps_mod.kind_label(kind, self._context.get("injected", True))

    def render(self) -> None:
        """Redraw every view for the current choice and query."""
        if self.maps is None or not self.layer_choice.value:
            return
        grid, layers, kind = self.selected()
        attention = maps_mod.mean_map(self.maps, layers, kind)
        if attention is None:  # this layer set lacks the kind: fall back to the composite
            kind = "composite"
            attention = maps_mod.mean_map(self.maps, layers, kind)
        count = f"{len(layers)} layer{'s' if len(layers) > 1 else ''}"
        self.title.value = (
            f"<span style='font-size:12px'>{self._context['heading']}{html.escape(self._label(kind))} &middot; "
            f"{grid[0]}&times;{grid[1]} ({count}) &middot; click the picture to pick a query</span>"
        )
        if self.stale:
            self.title.value = self._stale_html + self.title.value
        base = self.frame_for(kind)
        height, width = base.shape[:2]
        query = self.query if self.query is not None else (width // 2, height // 2)
        query = (min(query[0], width - 1), min(query[1], height - 1))
        self.query = query
        drawn = self._sources_drawn
        self.picker.set_map(attention, base, grid=grid, query=query)  # draws the side-by-side when the query moved
        share, components = maps_mod.svd_components(attention, grid, k=4)
        self.svd_row.set(
            [render.colourise(c.numpy(), cmap="RdBu_r", vmin=-float(c.abs().max()), vmax=float(c.abs().max())) for c in components],
            [f"#{i + 1} &middot; {100 * float(v):.0f}%" for i, v in enumerate(share)],
        )
        region_masks = self._context["region_masks"]
        if region_masks is not None:
            regions = region_masks(*grid)
            frames = self._context["frames"]
            names = [n for n in REGION_NAMES if n in regions]
            self.region_row.set(
                [render.tint(frames["reference" if n == "reference_object" else "target"], np.asarray(regions[n])) for n in names],
                [n.replace("_", " ") for n in names],
            )
        if self._sources_drawn == drawn:
            self._render_sources()

    def _render_sources(self) -> None:
        if self.maps is None or self.query is None or not self.layer_choice.value:
            return
        grid, layers, _kind = self.selected()
        height, width = self._context["frames"]["target"].shape[:2]
        query = maps_mod.query_token(self.query[0], self.query[1], (height, width), grid)
        heats = {}
        for kind in maps_mod.KINDS:
            attention = maps_mod.mean_map(self.maps, layers, kind)
            if attention is not None:
                heats[kind] = maps_mod.query_heatmap(attention, query, grid)
        shared = max(float(h.max()) for h in heats.values()) if self.shared_scale.value and heats else None
        images, captions = [], []
        for kind, heat in heats.items():
            peak = shared if shared is not None else float(heat.max())
            images.append(source_picture(self.frame_for(kind), heat, self.query, size=self.sources_row.size, width=width, peak=peak))
            own = "" if shared is None else f"<span style='font-size:9px;color:#555'>own peak {float(heat.max()):.3f}</span>"
            captions.append(f"{html.escape(self._label(kind))}{render.colour_bar_html(peak)}{own}")
        self.sources_row.set(images, captions)
        self._sources_drawn += 1

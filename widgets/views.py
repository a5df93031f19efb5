"""Small composable views over plain tensors: usable on their own, and the parts of the Explorer.

- ``ImageRow``: pictures side by side with captions (latent channels, region masks, SVD components...).
- ``AttentionMapView``: one ``(N, N)`` self-attention map; click a query pixel on the image and see
  that query's attention over the keys as a heatmap drawn over the image.
- ``StepStrip``: one thumbnail per step (e.g. each step's x0 preview); a click selects a step.

They take plain tensors / arrays / PIL images (never a Session), in the manner of CircuitsVis: build
one in a notebook cell from whatever maps you have. ``tficon.widgets.figures`` draws the same views
as static matplotlib figures.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import ipywidgets as widgets
import numpy as np
import traitlets

from . import _compat, render
from . import maps as maps_mod

__all__ = ["ImageRow", "AttentionMapView", "StepStrip", "image_widget"]


def image_widget(image: Any = None, *, size: int = 128, css_class: str | None = None, value_range=(0.0, 1.0)) -> widgets.Image:
    """An ``ipywidgets.Image`` showing ``image`` ``size`` CSS pixels wide (small images enlarged by whole
    pixels so cells stay sharp)."""
    view = widgets.Image(format="png", layout=widgets.Layout(width=f"{size}px", height="auto"))
    if css_class:
        view.add_class(css_class)
    if image is not None:
        set_image(view, image, size=size, value_range=value_range)
    return view


def set_image(view: widgets.Image, image: Any, *, size: int | None = None, value_range=(0.0, 1.0)) -> np.ndarray:
    """Show ``image`` in an ``ipywidgets.Image``; returns the RGB array that was encoded."""
    rgb = render.as_rgb(image, value_range=value_range)
    if size is not None:
        rgb = render.enlarge_to(rgb, size)
    view.value = render.png_bytes(rgb)
    return rgb


class ImageRow(widgets.HBox):
    """Pictures side by side, each ``size`` CSS pixels wide, with an HTML caption under each."""

    def __init__(self, images: Sequence[Any] = (), captions: Sequence[str] | None = None, *, size: int = 128, **kwargs):
        kwargs.setdefault("layout", widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
        super().__init__(**kwargs)
        self.size = size
        self.set(images, captions)

    def set(self, images: Sequence[Any], captions: Sequence[str] | None = None) -> None:
        """Replace the pictures (arrays, tensors in [0, 1] or PIL images) and their captions.

        Existing cells are reused (only their values change) and surplus ones are closed, so redrawing
        a row many times does not pile up widgets in the kernel."""
        images = list(images)
        captions = list(captions) if captions is not None else [""] * len(images)
        if len(captions) != len(images):
            raise ValueError(f"got {len(images)} images but {len(captions)} captions")
        cells = list(self.children)
        for cell in cells[len(images):]:
            for child in cell.children:
                child.close()
            cell.close()
        cells = cells[: len(images)]
        while len(cells) < len(images):
            view = image_widget(size=self.size)
            label = widgets.HTML("")
            cells.append(widgets.VBox([view, label], layout=widgets.Layout(margin="0 6px 4px 0")))
        for cell, image, caption in zip(cells, images, captions):
            view, label = cell.children
            set_image(view, image, size=self.size)
            label.value = f"<div style='font-size:11px;line-height:1.2;max-width:{self.size}px'>{caption}</div>"
        self.children = tuple(cells)


class AttentionMapView(widgets.VBox):
    """One self-attention map with a clickable query pixel.

    attention: ``(N, N)`` map (rows are queries, each a distribution over the N keys) on the grid ``grid``
        ``(h, w)`` (default: square).
    image: the picture the keys belong to (``(H, W, 3)`` uint8, a ``(3, H, W)`` tensor in [0, 1], PIL); the
        heatmap is drawn over it and queries are picked on it. Default: a grey ``h x w`` canvas.
    query: ``(x, y)`` in the image's pixels (default: the image centre).

    ``query`` (a traitlet) holds the current ``(x, y)``; ``heatmap`` the current ``(h, w)`` map; observe
    ``query`` or pass ``on_query`` to react to clicks. ``dispatch(job)`` runs the work a click causes
    (default: at once; the Explorer passes its worker's ``submit`` so clicks never race its jobs).
    Without anywidget the picture is a plain image and the query is chosen with two sliders.
    """

    query = traitlets.Tuple(allow_none=True, default_value=None)

    def __init__(
        self,
        attention=None,
        image: Any = None,
        *,
        grid: tuple[int, int] | None = None,
        query: tuple[int, int] | None = None,
        size: int = 256,
        title: str = "",
        cmap: str = "inferno",
        on_query: Callable[[tuple[int, int]], None] | None = None,
        dispatch: Callable[[Callable[[], None]], None] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._dispatch = dispatch if dispatch is not None else (lambda job: job())
        self._setting_sliders = False
        self.size, self.cmap = size, cmap
        self.attention = None
        self.grid: tuple[int, int] | None = None
        self.base = render.blank(16, 16)
        self.heatmap = None
        self._callbacks: list[Callable[[tuple[int, int]], None]] = [on_query] if on_query else []
        self.title = widgets.HTML(f"<b>{title}</b>" if title else "")
        self.caption = widgets.HTML("")
        self.caption.add_class("tficon-query-label")
        self.uses_canvas = _compat.HAS_ANYWIDGET  # decided once per view
        if self.uses_canvas:
            from .canvas import ClickableImage

            self.canvas = ClickableImage(display_width=size)
            self.canvas.add_class("tficon-query-picker")
            self.canvas.observe(self._on_point, names="point")
            picker: list[widgets.Widget] = [self.canvas]
        else:  # plain ipywidgets (e.g. no anywidget installed): sliders pick the query
            self.canvas = image_widget(size=size, css_class="tficon-query-picker")
            self.query_x = widgets.IntSlider(description="query x", continuous_update=False)
            self.query_y = widgets.IntSlider(description="query y", continuous_update=False)
            for slider in (self.query_x, self.query_y):
                slider.observe(self._on_slider, names="value")
            picker = [self.canvas, self.query_x, self.query_y]
        self.children = [self.title, *picker, self.caption]
        if attention is not None:
            self.set_map(attention, image, grid=grid, query=query)

    # ------------------------------------------------------------------ public
    def on_query(self, callback: Callable[[tuple[int, int]], None]) -> None:
        """Call ``callback((x, y))`` after every query change."""
        self._callbacks.append(callback)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the picture queries refer to."""
        return self.base.shape[0], self.base.shape[1]

    @property
    def query_index(self) -> int | None:
        if self.query is None or self.grid is None:
            return None
        return maps_mod.query_token(self.query[0], self.query[1], self.image_size, self.grid)

    def set_map(self, attention, image: Any = None, *, grid: tuple[int, int] | None = None, query: tuple[int, int] | None = None) -> None:
        """Show a new map (and optionally a new picture / query); the query pixel is kept if it still fits."""
        tensor = maps_mod.as_map(attention)
        self.grid = grid if grid is not None else maps_mod.grid_for(tensor.shape[1])
        if tensor.shape[0] != tensor.shape[1] or tensor.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(f"attention must be (N, N) with N = h * w = {self.grid[0] * self.grid[1]}, got {tuple(tensor.shape)}")
        self.attention = tensor
        if image is not None:
            self.base = render.as_rgb(image)
        elif self.base.shape[:2] == (16, 16) and self.grid != (16, 16):
            self.base = render.blank(*self.grid)
        height, width = self.image_size
        if query is None:
            query = self.query if self.query is not None and self.query[0] < width and self.query[1] < height else (width // 2, height // 2)
        if not self.uses_canvas:
            self._setting_sliders = True
            try:
                self.query_x.max, self.query_y.max = width - 1, height - 1
            finally:
                self._setting_sliders = False
        self._show(tuple(int(v) for v in query))

    def set_query(self, x: int, y: int) -> None:
        """Move the query to image pixel ``(x, y)``."""
        if self.attention is None:
            raise RuntimeError("no attention map yet: call set_map first")
        height, width = self.image_size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"query ({x}, {y}) is outside the {width}x{height} (W x H) image")
        self._show((int(x), int(y)))

    # ------------------------------------------------------------------ drawing
    def _on_point(self, change) -> None:
        point = tuple(change["new"])
        if self.attention is not None and len(point) == 2 and point != self.query:
            self._dispatch(lambda: self.set_query(*point))

    def _on_slider(self, _change) -> None:
        if self._setting_sliders:
            return
        point = (self.query_x.value, self.query_y.value)
        if self.attention is not None and point != self.query:
            self._dispatch(lambda: self.set_query(*point))

    def _show(self, query: tuple[int, int]) -> None:
        index = maps_mod.query_token(query[0], query[1], self.image_size, self.grid)
        self.heatmap = maps_mod.query_heatmap(self.attention, index, self.grid)
        heat = self.heatmap.numpy()
        picture = render.heat_overlay(self.base, heat, size=self.size, cmap=self.cmap)
        if self.uses_canvas:
            with self.canvas.hold_sync():
                self.canvas.set_image(picture, natural_size=self.image_size)
                self.canvas.point = list(query)
        else:
            scale = picture.shape[0] / self.image_size[0]
            marked = render.draw_crosshair(picture, (query[0] + 0.5) * scale, (query[1] + 0.5) * scale)
            self.canvas.value = render.png_bytes(marked)
            self._setting_sliders = True
            try:
                self.query_x.value, self.query_y.value = query
            finally:
                self._setting_sliders = False
        row, col = divmod(index, self.grid[1])
        peak_row, peak_col = divmod(int(np.argmax(heat)), self.grid[1])
        self.caption.value = (
            f"<span style='font-size:11px'>(row, col) everywhere: query pixel ({query[1]}, {query[0]}) &rarr; cell "
            f"({row}, {col}) of {self.grid[0]}&times;{self.grid[1]} &middot; peak at cell ({peak_row}, {peak_col}), "
            f"p = {heat.max():.3f}</span>"
        )
        changed = query != self.query
        self.query = query
        if changed:
            for callback in list(self._callbacks):
                callback(query)


class StepStrip(widgets.VBox):
    """One thumbnail per step with its number under it; clicking a number selects that step.

    images: thumbnails (arrays, tensors in [0, 1], PIL); labels: text of each button (default the index);
    notes: small HTML under each (e.g. which injections ran). ``selected`` (a traitlet) is the selected
    index or None; observe it to follow the user's choice.
    """

    selected = traitlets.Int(allow_none=True, default_value=None)

    def __init__(
        self,
        images: Sequence[Any] = (),
        *,
        labels: Sequence[str] | None = None,
        notes: Sequence[str] | None = None,
        selected: int | None = None,
        size: int = 48,
        title: str = "",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.size = size
        self.items: list[widgets.VBox] = []
        self.row = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.title = widgets.HTML(title)
        self.children = [self.title, self.row]
        self.observe(self._highlight, names="selected")
        self.set_images(images, labels=labels, notes=notes)
        self.selected = selected

    def __len__(self) -> int:
        return len(self.items)

    def set_images(self, images: Sequence[Any], *, labels: Sequence[str] | None = None, notes: Sequence[str] | None = None) -> None:
        """Replace all thumbnails."""
        images = list(images)
        self.truncate(0)
        for i, image in enumerate(images):
            self.set_item(i, image, label=None if labels is None else labels[i], note=None if notes is None else notes[i])

    def set_item(self, index: int, image: Any, *, label: str | None = None, note: str | None = None) -> None:
        """Set thumbnail ``index`` (0..len): replaces an existing one or appends one."""
        if not 0 <= index <= len(self.items):
            raise ValueError(f"index must be in 0..{len(self.items)}, got {index}")
        label = str(index) if label is None else label
        if index < len(self.items):
            view, button, html = self.items[index].children
            set_image(view, image, size=self.size)
            button.description = label
            html.value = note or ""
            return
        view = image_widget(image, size=self.size)
        button = widgets.Button(description=label, layout=widgets.Layout(width=f"{self.size}px", height="22px", padding="0"))
        button.add_class("tficon-step-button")
        button.on_click(lambda _b, i=index: setattr(self, "selected", i))
        html = widgets.HTML(note or "", layout=widgets.Layout(width=f"{self.size}px"))
        item = widgets.VBox([view, button, html], layout=widgets.Layout(margin="0 3px 3px 0", align_items="center"))
        self.items.append(item)
        self.row.children = tuple(self.items)
        self._highlight()

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` thumbnails."""
        if length < len(self.items):
            for item in self.items[length:]:
                for child in item.children:
                    child.close()
                item.close()
            del self.items[length:]
            self.row.children = tuple(self.items)
            if self.selected is not None and self.selected >= length:
                self.selected = None

    def _highlight(self, _change=None) -> None:
        for i, item in enumerate(self.items):
            item.children[1].button_style = "info" if i == self.selected else ""

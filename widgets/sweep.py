"""``SweepGrid``: a ``tficon.sweep`` result as a clickable grid; a click opens that cell in the Explorer.

Rows and columns are the sweep's first two parameters (named by their values), further parameters are stacked
panels, as in the sweep's grid PNG; the inputs are shown above the grid, with a legend of the numbers. Each cell
shows its result and its background / foreground PSNR; a click on its image (with anywidget) or its button opens
a fresh Session with the cell's settings on the sweep's engine (the inversions come from its cache) in a
``tficon.widgets.Explorer`` below the grid, which runs it and lets the settings be tuned from there.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np

from . import _compat, render
from .views import ImageRow, image_widget

__all__ = ["SweepGrid"]


class SweepGrid(widgets.VBox):
    """Show a ``tficon.run.sweeps.SweepResult``; ``open_cell(cell)`` (or a click on a cell's image or its button) opens
    it in an Explorer.

    Args:
        result: what ``tficon.sweep(...)`` returned.
        thumb_px: display width of each cell's image.
        explorer_options: keyword arguments for ``Explorer`` (e.g. ``threaded=False`` in scripts).

    ``explorer`` is the open Explorer (None until a cell is opened); ``opened`` the cell it shows. ``inputs_row``
    shows the inputs (background, foreground, cut-and-paste with its own measurements), ``legend`` what the numbers
    mean, ``tables`` the grid of each panel (its first column the row labels, as wide as the longest label: the
    images sit right beside their labels at any page width); ``images`` maps a cell index to its clickable picture.
    """

    def __init__(self, result, *, thumb_px: int = 112, explorer_options: dict | None = None):
        super().__init__()
        self.add_class("tficon-sweep-grid")
        self.result = result
        self.thumb_px = thumb_px
        self.explorer_options = {"run": True, **(explorer_options or {})}
        self.explorer = None
        self.opened = None
        self.buttons: dict[int, widgets.Button] = {}  # cell index -> its button
        self.images: dict[int, widgets.Widget] = {}  # cell index -> its picture (a click opens the cell with anywidget)
        self.status = widgets.HTML(html.escape(result.describe()))
        self.status.add_class("tficon-sweep-status")
        self.inputs_row = self._inputs_row()
        from tficon.run.report import METRIC_LEGEND

        self.legend = widgets.HTML(
            f"<div style='font-size:12px;color:#444;max-width:760px;white-space:normal'>{html.escape(METRIC_LEGEND)} "
            "Click an image (or its <i>open</i> button) to open that cell in the Explorer below.</div>"
        )
        self.legend.add_class("tficon-sweep-legend")
        self.tables: list[widgets.GridBox] = []
        self.explorer_box = widgets.VBox()
        self.children = [self.status, self.inputs_row, self.legend, *self._panels(), self.explorer_box]

    def _inputs_row(self) -> widgets.Widget:
        from tficon.run.report import metric_text

        r = self.result
        cp = next(iter(r.cut_and_paste.values()), {})
        tiles = [("background", r.inputs["background"], ""), ("foreground", r.inputs["foreground"], "")]
        if cp.get("image") is not None:
            tiles.append(("cut-and-paste", cp["image"], metric_text(cp.get("metrics"))))
        row = ImageRow(
            [np.asarray(image.convert("RGB")) for _, image, _ in tiles],
            [f"<b>{name}</b>" + (f"<br>{html.escape(caption)}" if caption else "") for name, _, caption in tiles],
            size=self.thumb_px,
        )  # fmt: skip
        row.add_class("tficon-sweep-inputs")
        return row

    def _panels(self) -> list[widgets.Widget]:
        from tficon.run.report import metric_caption, panels

        r = self.result
        names = r.names
        row_name, col_name = names[0], (names[1] if len(names) > 1 else None)
        n_rows, n_cols = len(r.grid[row_name]), (len(r.grid[col_name]) if col_name else 1)
        out: list[widgets.Widget] = []
        for heading, cells in panels(r):
            if heading:
                out.append(widgets.HTML(f"<b>{html.escape(heading)}</b>"))
            header = [widgets.HTML(f"<span style='color:#555'>{html.escape(f'{row_name} down, {col_name} across' if col_name else row_name)}</span>")]
            header += [
                widgets.HTML(f"<b>{html.escape(f'{col_name}={r.label_of(col_name, c)}')}</b>" if col_name else "")
                for c in range(n_cols)
            ]
            items = list(header)
            for row in range(n_rows):
                label = widgets.HTML(f"<b>{html.escape(f'{row_name}={r.label_of(row_name, row)}')}</b>")
                label.add_class("tficon-sweep-row-label")
                items.append(label)
                for col in range(n_cols):
                    cell = cells.get((row, col))
                    items.append(self._cell_widget(cell, metric_caption(cell)) if cell else widgets.HTML(""))
            # max-content: the label column is as wide as its longest label, never the page's spare width
            table = widgets.GridBox(
                items,
                layout=widgets.Layout(
                    grid_template_columns=f"max-content repeat({n_cols}, {self.thumb_px + 8}px)",
                    justify_content="flex-start", align_items="center", grid_gap="4px 6px",
                ),
            )  # fmt: skip
            table.add_class("tficon-sweep-table")
            self.tables.append(table)
            out.append(table)
        return out

    def _cell_widget(self, cell, caption: str) -> widgets.Widget:
        button = widgets.Button(
            description="open", tooltip=f"open {cell.label()} in the Explorer",
            layout=widgets.Layout(width=f"{self.thumb_px}px"),
        )  # fmt: skip
        button.add_class("tficon-sweep-open")
        button.on_click(lambda _, cell=cell: self.open_cell(cell))
        self.buttons[cell.index] = button
        picture = self._picture(cell)
        self.images[cell.index] = picture
        return widgets.VBox([picture, widgets.HTML(f"<small>{caption}</small>"), button])

    def _picture(self, cell) -> widgets.Widget:
        """The cell's image; with anywidget a click on it opens the cell."""
        image = np.asarray(cell.image.convert("RGB")) if cell.image is not None else render.blank(8, 8)
        if not _compat.HAS_ANYWIDGET:
            return image_widget(image, size=self.thumb_px, css_class="tficon-sweep-cell")
        from .canvas import ClickableImage

        picture = ClickableImage(render.enlarge_to(image, self.thumb_px), display_width=self.thumb_px, natural_size=image.shape[:2])
        picture.add_class("tficon-sweep-cell")
        picture.observe(lambda change, cell=cell: self._on_picture_click(cell, change), names="point")
        return picture

    def _on_picture_click(self, cell, change) -> None:
        if len(change["new"]) == 2:
            self.images[cell.index].point = []  # no query marker on a grid picture
            self.open_cell(cell)

    def open_cell(self, cell) -> "object":
        """Open ``cell`` (a ``SweepCell`` or its index) in an Explorer below the grid; returns the Explorer."""
        from .explorer import Explorer

        cell = self.result.cells[cell] if isinstance(cell, int) else cell
        if self.explorer is not None:
            self.explorer.close()
        self.explorer = Explorer(self.result.session(cell), **self.explorer_options)
        self.opened = cell
        self.explorer_box.children = [widgets.HTML(f"<b>{html.escape(cell.label())}</b>"), self.explorer]
        self.status.value = f"{html.escape(self.result.describe())}<br>opened {html.escape(cell.label())}"
        return self.explorer

    def close(self) -> None:
        if getattr(self, "explorer", None) is not None:
            self.explorer.close()
        super().close()

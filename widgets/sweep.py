"""``SweepGrid``: a ``tficon.sweep`` result as a clickable grid; a click opens that cell in the Explorer.

Rows and columns are the sweep's first two parameters (named by their values), further parameters are stacked
panels, as in the sweep's grid PNG. Each cell shows its result and its background / foreground PSNR; its button
opens a fresh Session with the cell's settings on the sweep's engine (the inversions come from its cache) in a
``tficon.widgets.Explorer`` below the grid, which runs it and lets the settings be tuned from there.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from .views import image_widget

__all__ = ["SweepGrid"]


class SweepGrid(widgets.VBox):
    """Show a ``tficon.run.sweeps.SweepResult``; ``open_cell(cell)`` (or a click on a cell's button) opens it in an Explorer.

    Args:
        result: what ``tficon.sweep(...)`` returned.
        thumb_px: display width of each cell's image.
        explorer_options: keyword arguments for ``Explorer`` (e.g. ``threaded=False`` in scripts).

    ``explorer`` is the open Explorer (None until a cell is opened); ``opened`` the cell it shows.
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
        self.status = widgets.HTML(html.escape(result.describe()))
        self.explorer_box = widgets.VBox()
        self.children = [self.status, *self._panels(), self.explorer_box]

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
            header = [widgets.HTML(html.escape(f"{row_name} \\ {col_name or ''}"))]
            header += [
                widgets.HTML(f"<b>{html.escape(f'{col_name}={r.label_of(col_name, c)}')}</b>" if col_name else "")
                for c in range(n_cols)
            ]
            items = list(header)
            for row in range(n_rows):
                items.append(widgets.HTML(f"<b>{html.escape(f'{row_name}={r.label_of(row_name, row)}')}</b>"))
                for col in range(n_cols):
                    cell = cells.get((row, col))
                    items.append(self._cell_widget(cell, metric_caption(cell)) if cell else widgets.HTML(""))
            out.append(
                widgets.GridBox(
                    items,
                    layout=widgets.Layout(grid_template_columns=f"auto repeat({n_cols}, {self.thumb_px + 8}px)"),
                )
            )
        return out

    def _cell_widget(self, cell, caption: str) -> widgets.Widget:
        button = widgets.Button(
            description="open", tooltip=f"open {cell.label()} in the Explorer",
            layout=widgets.Layout(width=f"{self.thumb_px}px"),
        )  # fmt: skip
        button.on_click(lambda _, cell=cell: self.open_cell(cell))
        self.buttons[cell.index] = button
        return widgets.VBox([image_widget(cell.image, size=self.thumb_px), widgets.HTML(f"<small>{caption}</small>"), button])

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

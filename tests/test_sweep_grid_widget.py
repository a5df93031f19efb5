"""The SweepGrid widget's layout (labels beside their images, inputs, legend), opening a cell by clicking its image,
and the sweep's grid PNG at a readable size (kernel side; the browser test checks the layout in a page)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")

import tficon  # noqa: E402
from tficon.run.report import METRIC_LEGEND  # noqa: E402
from tiny_setup import SIZE  # noqa: E402


@pytest.fixture(scope="module")
def swept(model, sample):
    return tficon.sweep(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
        {"tau_a": [0.2, 0.5], "tau_b": [0.5, 1.0]}, image_size=SIZE, steps=4, progress=False,
    )  # fmt: skip


def test_sweep_grid_shows_inputs_legend_and_opens_a_cell_on_an_image_click(swept):
    from tficon.widgets import SweepGrid, render

    grid = SweepGrid(swept, thumb_px=96, explorer_options={"threaded": False, "live_attention": False})
    try:
        (table,) = grid.tables
        # the label column is as wide as its labels (max-content), never the page's spare width
        assert table.layout.grid_template_columns == "max-content repeat(2, 104px)"
        assert table.layout.justify_content == "flex-start"
        labels = [c for c in table.children if "tficon-sweep-row-label" in c._dom_classes]
        assert [label.value for label in labels] == ["<b>tau_a=0.2</b>", "<b>tau_a=0.5</b>"]
        # each row label is followed by its row's cells, in grid order
        order = list(table.children)
        assert order.index(labels[1]) == order.index(labels[0]) + 3
        captions = [c.children[1].value for c in grid.inputs_row.children]
        assert ["background" in captions[0], "foreground" in captions[1], "cut-and-paste" in captions[2]] == [True] * 3
        assert "dB" in captions[2]
        assert "bg dB" in grid.legend.value and "fg dB" in grid.legend.value
        cell = swept.cell(tau_a=0.5, tau_b=1.0)
        picture = grid.images[cell.index]
        assert picture.natural_width == SIZE and "tficon-sweep-cell" in picture._dom_classes
        picture.set_state({"point": [5, 7]})  # what a click on the picture sends
        assert grid.opened is cell and grid.explorer.wait(120) and grid.explorer.session.config == cell.config
        assert picture.point == []  # no query marker left on the grid picture
        shown = grid.explorer.result_view.value
        assert shown == render.png_bytes(render.enlarge_to(np.asarray(cell.image), grid.explorer.image_px))
    finally:
        grid.close()


def test_grid_png_is_readable(swept):
    image = swept.grid_image()
    assert image.width >= 3 * 192 and image.height >= 2 * 192 + 192  # two rows of 192 px cells and the inputs
    pixels = np.asarray(image.convert("L"))
    # a line of text at the top, at least 10 px tall (the old bitmap font was 11 px with 1-px strokes at 400 px wide)
    dark_rows = np.nonzero((pixels[:40] < 100).any(axis=1))[0]
    assert dark_rows.size and dark_rows.max() - dark_rows.min() >= 10
    assert METRIC_LEGEND.startswith("bg dB")

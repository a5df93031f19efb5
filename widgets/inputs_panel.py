"""The Explorer's inputs: the background with its target box, the foreground with its object mask, the pixel
cut-and-paste and the result.

How it shows what the user gave:

- the box the user asked for is ``Session.mask_or_box`` (a box, or the user mask whose bbox it shows, scaled
  to the working size); the window where the object was placed (``placement.target_window``) is drawn dashed;
- the original foreground and its object mask: the painter shows the object as it sits in the image
  (the reference canvas cropped to ``placement.ref_window``) and sends back a mask at the original
  foreground's size (``placement.foreground_size``) that the Session resizes onto exactly the
  painted cells (``tficon.widgets.masks``).

With anywidget the box is dragged on a ``BoxDrawer`` and the mask painted on a ``MaskPainter``; without it both
are plain pictures and the box is typed into the x, y, w, h fields.
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from tficon.core.config import settings_invalidating

from . import _compat, render
from .masks import mask_at_original_size, painting_grid, window_mask_on_grid
from .panel import FINISHED, SETTINGS_CHANGED, STARTED, STEPS_DROPPED, Change, Panel
from .views import image_widget, set_image

__all__ = ["InputsPanel", "INPUT_CHANGES"]

#: The names of ``Session.update`` that change the prepared images (the placement, the cut-and-paste).
INPUT_CHANGES = frozenset({"mask_or_box", "background", "foreground", "foreground_mask"}) | settings_invalidating("inputs")


class InputsPanel(Panel):
    """``box_drawer`` and ``mask_painter`` (None without anywidget: then ``background_view`` and
    ``foreground_view`` show the pictures), ``box_fields`` (x, y, w, h) and ``set_box_button``, ``box_label``, ``cut_and_paste_view``,
    ``result_view`` and ``result_caption``."""

    def build(self) -> widgets.Widget:
        px = self.explorer.image_px
        label_style = {"description_width": "62px"}
        if _compat.HAS_ANYWIDGET:
            from .canvas import BoxDrawer, MaskPainter

            self.box_drawer = BoxDrawer(display_width=px)
            self.box_drawer.add_class("tficon-box-drawer")
            self.box_drawer.observe(self._on_box_drawn, names="box")
            self.mask_painter = MaskPainter(display_width=px, brush=1)
            self.mask_painter.add_class("tficon-mask-painter")
            self.mask_painter.observe(self._on_mask_painted, names="mask")
            self.brush = widgets.IntSlider(value=1, min=0, max=8, description="brush", style=label_style, layout=widgets.Layout(width=f"{px + 10}px"))
            widgets.jslink((self.brush, "value"), (self.mask_painter, "brush"))
            self.erase = widgets.ToggleButton(value=False, description="erase", layout=widgets.Layout(width="70px"))
            self.erase.add_class("tficon-erase")
            widgets.jslink((self.erase, "value"), (self.mask_painter, "erase"))
            foreground_tools: list[widgets.Widget] = [self.mask_painter, widgets.HBox([self.brush]), self.erase]
            background_view: widgets.Widget = self.box_drawer
        else:
            self.box_drawer = self.mask_painter = None
            background_view = self.background_view = image_widget(size=px)
            self.foreground_view = image_widget(size=px)
            foreground_tools = [self.foreground_view, widgets.HTML("<i>install anywidget to paint the mask</i>")]
        self.box: tuple[int, int, int, int] | None = None  # the box the fields show (the Session's)
        self.box_label = widgets.HTML("")
        self.box_label.add_class("tficon-box-label")
        self.box_fields = [
            widgets.IntText(description=name, style={"description_width": "14px"}, layout=widgets.Layout(width="78px"))
            for name in ("x", "y", "w", "h")
        ]
        self.set_box_button = widgets.Button(description="set box", layout=widgets.Layout(width="70px"))
        self.set_box_button.on_click(lambda _b: self._apply_box_fields())
        self.small_px = 2 * px // 3  # four columns fit a notebook's output width (about 850 px in JupyterLab)
        self.cut_and_paste_view = image_widget(size=self.small_px, css_class="tficon-cut-and-paste")
        self.result_view = image_widget(render.blank(8, 8), size=px, css_class="tficon-result")
        self.result_caption = widgets.HTML("<span style='font-size:11px'>not run yet</span>")
        self.result_caption.add_class("tficon-result-caption")
        # small working images (the toy model's 64 px) are easier to judge larger: the browser enlarges the
        # picture, drawn as crisp pixels (the Explorer's style rule)
        self.zoom = widgets.Dropdown(options=[("1\u00d7", 1), ("2\u00d7", 2), ("3\u00d7", 3)], value=1, description="zoom",
                                     style={"description_width": "36px"}, layout=widgets.Layout(width="110px"))
        self.zoom.add_class("tficon-zoom")
        self.zoom.observe(self._on_zoom, names="value")

        def column(heading: str, *children: widgets.Widget, width: int = px) -> widgets.VBox:
            return widgets.VBox([widgets.HTML(f"<b>{heading}</b>"), *children], layout=widgets.Layout(margin="0 8px 0 0", width=f"{width + 12}px"))

        self._result_column = column("result", self.result_view, self.result_caption, self.zoom)
        return widgets.HBox(
            [
                column("background &middot; drag a box", background_view, self.box_label,
                       widgets.HBox(self.box_fields[:2]), widgets.HBox([*self.box_fields[2:]]), self.set_box_button),
                column("foreground &middot; paint the mask", *foreground_tools),
                column("cut-and-paste", self.cut_and_paste_view, width=self.small_px),
                self._result_column,
            ],
            layout=widgets.Layout(flex_flow="row wrap"),
        )

    # ---- main thread
    def _on_zoom(self, change) -> None:
        """Show the result at ``zoom`` times its width (CSS only: no Session work)."""
        px = self.explorer.image_px * change["new"]
        self.result_view.layout.width = f"{px}px"
        self._result_column.layout.width = f"{px + 12}px"

    def _apply_box_fields(self) -> None:
        box = tuple(int(f.value) for f in self.box_fields)
        if box == self.box:  # the fields show the Session's box: nothing to change (a mask stays a mask)
            self.explorer.set_status(f"box {box} unchanged")
            return
        self.explorer.update(mask_or_box=box)

    def _on_box_drawn(self, change) -> None:
        if self.syncing or len(change["new"]) != 4:
            return
        self.explorer.update(mask_or_box=tuple(int(v) for v in change["new"]))

    def _on_mask_painted(self, change) -> None:
        if self.syncing:
            return
        bits = self.mask_painter.mask_array.copy()
        explorer = self.explorer

        def mask_at_foreground_size() -> np.ndarray:  # read the placement in the job, when the Session is ours
            width, height = explorer.session.placement.foreground_size
            return mask_at_original_size(bits, (height, width))

        explorer.update_later(("foreground_mask",), lambda: {"foreground_mask": mask_at_foreground_size()})

    # ---- worker thread
    def on_change(self, session, change: Change) -> None:
        if change.kind == STARTED or (change.kind == SETTINGS_CHANGED and INPUT_CHANGES & change.names):
            self.show_inputs(session)
        if change.kind == STEPS_DROPPED:
            self.result_caption.value = "<span style='font-size:11px;color:#a60'>recomputing…</span>"
        if change.kind in (STARTED, FINISHED) and session.done:
            self.show_result(session)

    def show_inputs(self, session) -> None:
        inputs, place = session.inputs, session.placement
        height, width = session.image_size
        target = place.target_window
        placed = (target.left, target.top, target.width, target.height)
        background = render.as_rgb(inputs.background, value_range=(-1, 1))
        reference = render.as_rgb(inputs.reference, value_range=(-1, 1))
        cut_and_paste = render.as_rgb(inputs.cut_and_paste, value_range=(-1, 1))
        window = place.ref_window
        foreground = reference[window.top : window.bottom, window.left : window.right]
        window_bits = np.asarray(inputs.object_mask[window.top : window.bottom, window.left : window.right] > 0.5)
        original = (place.foreground_size[1], place.foreground_size[0])
        grid = painting_grid(window_bits.shape, original)
        object_bits = window_mask_on_grid(window_bits, grid, original)
        self.box = self._user_box(session, place, placed)
        px = self.explorer.image_px
        with self.quietly():
            if self.box_drawer is not None:
                with self.box_drawer.hold_sync():
                    self.box_drawer.set_image(render.enlarge_to(background, px), natural_size=(height, width))
                    self.box_drawer.box = list(self.box)
                    self.box_drawer.secondary_box = list(placed)
                with self.mask_painter.hold_sync():
                    self.mask_painter.set_image(render.enlarge_to(foreground, px), natural_size=grid)
                    self.mask_painter.mask_array = object_bits
            else:
                set_image(self.background_view, render.draw_box(background, (target.top, target.left, target.bottom, target.right)), size=px)
                set_image(self.foreground_view, render.tint(foreground, object_bits), size=px)
            for field, value in zip(self.box_fields, self.box):
                field.value = int(value)
        set_image(self.cut_and_paste_view, cut_and_paste, size=self.small_px)
        self.box_label.value = (
            f"<span style='font-size:11px'>box (x, y, w, h) = ({', '.join(str(v) for v in self.box)}) &middot; "
            f"object placed at ({', '.join(str(v) for v in placed)}) (dashed)</span>"
        )

    @staticmethod
    def _user_box(session, place, placed) -> tuple[int, int, int, int]:
        """The box the user asked for, in working-image pixels: the Session's box as given, or its user mask's
        bbox scaled from the mask's size; the placed window only when neither is known."""
        given = session.mask_or_box
        if isinstance(given, tuple) and len(given) == 4:
            return tuple(int(v) for v in given)
        if place.bbox is None or place.mask_size is None:
            return placed
        x, y, w, h = place.bbox
        fy, fx = place.image_size[0] / place.mask_size[0], place.image_size[1] / place.mask_size[1]
        left, top = round(x * fx), round(y * fy)
        return left, top, round((x + w) * fx) - left, round((y + h) * fy) - top

    def show_result(self, session) -> None:
        set_image(self.result_view, np.asarray(session.result), size=self.explorer.image_px)
        c = session.config
        self.result_caption.value = (
            f"<span style='font-size:11px'>tau_a={c.tau_a:.2f} tau_b={c.tau_b:.2f} tau_bg={c.tau_bg:.2f} "
            f"guidance={c.effective_guidance:g} steps={c.steps} seed={c.seed}</span>"
        )

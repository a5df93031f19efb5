"""Pointer input on an image: click a point, draw a box, paint a mask (anywidget, inline ES module).

One small front-end module serves three widgets, so the pointer maths is written once:

- ``ClickableImage``: a click sets ``point = [x, y]`` (the query pixel of the attention views);
- ``BoxDrawer``: a drag sets ``box = [x, y, w, h]`` (the target box on the background);
- ``MaskPainter``: strokes set and clear pixels of ``mask`` (the object mask on the foreground).

Coordinates are always in the *image's own pixels* (``natural_width x natural_height``), whatever size
the picture is displayed at (``display_width`` CSS pixels) and whatever resolution ``src`` has, so the
kernel never sees screen coordinates. The picture is a PNG data URL and the module is inline
(``_esm``): nothing is fetched from the network, and no labextension build is needed. anywidget makes
this work in JupyterLab, Notebook 7, VS Code and (ipywidgets 7.7) Colab, where it enables the custom
widget manager itself.

The mask is synced once per stroke (on pointer release), as raw bytes (one 0/1 byte per pixel, row
major), not per pointer move: painting never waits for the kernel.
"""

from __future__ import annotations

from typing import Any, Sequence

import anywidget
import numpy as np
import traitlets

from . import render

__all__ = ["ImageCanvas", "ClickableImage", "BoxDrawer", "MaskPainter"]

_ESM = r"""
function asBytes(value) {
  if (!value) return null;
  if (value instanceof DataView) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return null;
}

function hashString(text) {  // djb2, for tests and debugging: which picture is on the canvas
  let h = 5381;
  for (let i = 0; i < text.length; i++) h = ((h << 5) + h + text.charCodeAt(i)) | 0;
  return (h >>> 0).toString(16);
}

function render({ model, el }) {
  const wrap = document.createElement("div");
  wrap.className = "tficon-canvas-wrap";
  const canvas = document.createElement("canvas");
  canvas.className = "tficon-canvas";
  canvas.tabIndex = 0;
  wrap.appendChild(canvas);
  el.appendChild(wrap);
  const ctx = canvas.getContext("2d");
  const picture = new Image();
  const maskLayer = document.createElement("canvas");
  let mask = null;       // local copy of the mask, Uint8Array(natural_width * natural_height)
  let drag = null;       // box being drawn: {x0, y0, x1, y1} in image pixels
  let stroke = null;     // last painted point while painting
  let loads = 0;

  const geometry = () => {
    const nw = Math.max(1, model.get("natural_width"));
    const nh = Math.max(1, model.get("natural_height"));
    const dw = Math.max(1, model.get("display_width"));
    return { nw, nh, dw, dh: Math.max(1, Math.round((dw * nh) / nw)) };
  };

  const toImage = (event) => {
    const r = canvas.getBoundingClientRect();
    const { nw, nh } = geometry();
    const x = ((event.clientX - r.left) * nw) / r.width;
    const y = ((event.clientY - r.top) * nh) / r.height;
    return [Math.min(nw - 1e-6, Math.max(0, x)), Math.min(nh - 1e-6, Math.max(0, y))];
  };

  const rebuildMaskLayer = () => {
    const { nw, nh } = geometry();
    maskLayer.width = nw;
    maskLayer.height = nh;
    if (!mask || mask.length !== nw * nh) return;
    const layer = maskLayer.getContext("2d");
    const pixels = layer.createImageData(nw, nh);
    for (let i = 0; i < mask.length; i++) {
      if (mask[i]) {
        pixels.data[4 * i] = 30;
        pixels.data[4 * i + 1] = 150;
        pixels.data[4 * i + 2] = 255;
        pixels.data[4 * i + 3] = 120;
      }
    }
    layer.putImageData(pixels, 0, 0);
  };

  const strokeBox = (box, style, dashed) => {
    if (!box || box.length !== 4) return;
    const { nw, dw } = geometry();
    const k = dw / nw;
    ctx.save();
    ctx.strokeStyle = style;
    ctx.lineWidth = 2;
    if (dashed) ctx.setLineDash([5, 4]);
    ctx.strokeRect(box[0] * k + 1, box[1] * k + 1, Math.max(0, box[2] * k - 2), Math.max(0, box[3] * k - 2));
    ctx.restore();
  };

  const draw = () => {
    const { nw, dw, dh } = geometry();
    if (canvas.width !== dw || canvas.height !== dh) {
      canvas.width = dw;
      canvas.height = dh;
    }
    canvas.style.width = dw + "px";
    canvas.style.height = dh + "px";
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#eee";
    ctx.fillRect(0, 0, dw, dh);
    if (picture.complete && picture.naturalWidth > 0) ctx.drawImage(picture, 0, 0, dw, dh);
    const tool = model.get("tool");
    if (tool === "paint" && mask) ctx.drawImage(maskLayer, 0, 0, dw, dh);
    strokeBox(model.get("secondary_box"), "rgba(255,255,255,0.9)", true);
    if (drag) {
      const x = Math.min(drag.x0, drag.x1), y = Math.min(drag.y0, drag.y1);
      strokeBox([x, y, Math.abs(drag.x1 - drag.x0), Math.abs(drag.y1 - drag.y0)], "#ffd400", false);
    } else {
      strokeBox(model.get("box"), "#ff4040", false);
    }
    const point = model.get("point");
    if (point && point.length === 2) {
      const k = dw / nw;
      const cx = (point[0] + 0.5) * k, cy = (point[1] + 0.5) * k;
      ctx.save();
      // a thin dashed crosshair across the whole picture (its row and column), then a ring and a cross
      ctx.setLineDash([4, 3]);
      ctx.lineWidth = 1;
      ctx.strokeStyle = "rgba(255, 255, 255, 0.75)";
      ctx.beginPath();
      ctx.moveTo(0, cy); ctx.lineTo(cx - 11, cy); ctx.moveTo(cx + 11, cy); ctx.lineTo(dw, cy);
      ctx.moveTo(cx, 0); ctx.lineTo(cx, cy - 11); ctx.moveTo(cx, cy + 11); ctx.lineTo(cx, dh);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.strokeStyle = "#00ff80";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(cx, cy, 10, 0, 2 * Math.PI);
      ctx.moveTo(cx - 8, cy); ctx.lineTo(cx - 3, cy); ctx.moveTo(cx + 3, cy); ctx.lineTo(cx + 8, cy);
      ctx.moveTo(cx, cy - 8); ctx.lineTo(cx, cy - 3); ctx.moveTo(cx, cy + 3); ctx.lineTo(cx, cy + 8);
      ctx.stroke();
      ctx.restore();
    }
  };

  const loadPicture = () => {
    const src = model.get("src") || "";
    canvas.dataset.srcHash = hashString(src);
    if (!src) { draw(); return; }
    picture.onload = () => { loads += 1; canvas.dataset.loads = String(loads); draw(); };
    picture.src = src;
  };

  const loadMask = () => {
    const bytes = asBytes(model.get("mask"));
    mask = bytes ? new Uint8Array(bytes) : null;  // own copy: painting must not write into the model's buffer
    rebuildMaskLayer();
    draw();
  };

  const paintAt = (x, y) => {
    const { nw, nh } = geometry();
    if (!mask || mask.length !== nw * nh) mask = new Uint8Array(nw * nh);
    const r = Math.max(0, model.get("brush"));
    const value = model.get("erase") ? 0 : 1;
    const cx = Math.floor(x), cy = Math.floor(y);
    for (let yy = Math.max(0, cy - r); yy <= Math.min(nh - 1, cy + r); yy++) {
      for (let xx = Math.max(0, cx - r); xx <= Math.min(nw - 1, cx + r); xx++) {
        if ((xx - cx) * (xx - cx) + (yy - cy) * (yy - cy) <= r * r) mask[yy * nw + xx] = value;
      }
    }
  };

  const paintSegment = (from, to) => {
    const steps = Math.max(1, Math.ceil(Math.hypot(to[0] - from[0], to[1] - from[1]) * 2));
    for (let i = 1; i <= steps; i++) {
      paintAt(from[0] + ((to[0] - from[0]) * i) / steps, from[1] + ((to[1] - from[1]) * i) / steps);
    }
  };

  const onDown = (event) => {
    if (event.button !== 0) return;
    const tool = model.get("tool");
    const [x, y] = toImage(event);
    canvas.setPointerCapture(event.pointerId);
    if (tool === "click") {
      model.set("point", [Math.floor(x), Math.floor(y)]);
      model.save_changes();
      draw();
    } else if (tool === "box") {
      drag = { x0: x, y0: y, x1: x, y1: y };
      draw();
    } else if (tool === "paint") {
      stroke = [x, y];
      paintAt(x, y);
      rebuildMaskLayer();
      draw();
    }
    event.preventDefault();
  };

  const onMove = (event) => {
    if (drag) {
      const [x, y] = toImage(event);
      drag.x1 = x;
      drag.y1 = y;
      draw();
    } else if (stroke) {
      const here = toImage(event);
      paintSegment(stroke, here);
      stroke = here;
      rebuildMaskLayer();
      draw();
    }
  };

  const onUp = (event) => {
    if (drag) {
      const { nw, nh } = geometry();
      const left = Math.max(0, Math.floor(Math.min(drag.x0, drag.x1)));
      const top = Math.max(0, Math.floor(Math.min(drag.y0, drag.y1)));
      const right = Math.min(nw, Math.ceil(Math.max(drag.x0, drag.x1)));
      const bottom = Math.min(nh, Math.ceil(Math.max(drag.y0, drag.y1)));
      drag = null;
      if (right - left >= 2 && bottom - top >= 2) {
        model.set("box", [left, top, right - left, bottom - top]);
        model.save_changes();
      }
      draw();
    } else if (stroke) {
      stroke = null;
      model.set("mask", new DataView(mask.slice().buffer));
      model.save_changes();
    }
    if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
  };

  canvas.addEventListener("pointerdown", onDown);
  canvas.addEventListener("pointermove", onMove);
  canvas.addEventListener("pointerup", onUp);
  canvas.addEventListener("pointercancel", onUp);

  const redraw = () => draw();
  const reshape = () => { rebuildMaskLayer(); draw(); };
  // One table, so that what render() registers is exactly what the cleanup removes.
  const listeners = [
    ["change:src", loadPicture],
    ["change:mask", loadMask],
    ["change:box", redraw],
    ["change:secondary_box", redraw],
    ["change:point", redraw],
    ["change:tool", redraw],
    ["change:display_width", redraw],
    ["change:natural_width", reshape],
    ["change:natural_height", reshape],
  ];
  for (const [event, handler] of listeners) model.on(event, handler);

  loadMask();
  loadPicture();

  return () => {
    for (const [event, handler] of listeners) model.off(event, handler);
  };
}

export default { render };
"""

_CSS = """
.tficon-canvas-wrap { display: inline-block; line-height: 0; }
.tficon-canvas { cursor: crosshair; touch-action: none; image-rendering: pixelated; border: 1px solid #bbb; }
"""


def _bytes_from_json(value, _widget) -> bytes:
    """Binary state arrives from the front end as a memoryview; the trait holds bytes."""
    return b"" if value is None else bytes(value)


class ImageCanvas(anywidget.AnyWidget):
    """A picture with pointer input; ``tool`` is "click", "box", "paint" or "none".

    Synced state (all in image pixels): ``point`` ``[x, y]`` (the last click, also drawn as a crosshair),
    ``box`` ``[x, y, w, h]`` (drawn solid), ``secondary_box`` (drawn dashed, read-only for the user),
    ``mask`` (``natural_height * natural_width`` bytes, 0/1, drawn as a blue tint when painting),
    ``brush`` (radius in image pixels) and ``erase``.
    """

    _esm = _ESM
    _css = _CSS

    src = traitlets.Unicode("").tag(sync=True)
    natural_width = traitlets.Int(1).tag(sync=True)
    natural_height = traitlets.Int(1).tag(sync=True)
    display_width = traitlets.Int(256).tag(sync=True)
    tool = traitlets.Unicode("none").tag(sync=True)
    point = traitlets.List(traitlets.Int(), default_value=[]).tag(sync=True)
    box = traitlets.List(traitlets.Int(), default_value=[]).tag(sync=True)
    secondary_box = traitlets.List(traitlets.Int(), default_value=[]).tag(sync=True)
    mask = traitlets.Bytes(b"").tag(sync=True, from_json=_bytes_from_json)
    brush = traitlets.Int(2).tag(sync=True)
    erase = traitlets.Bool(False).tag(sync=True)

    def __init__(self, image: Any = None, *, natural_size: tuple[int, int] | None = None, display_width: int = 256, **kwargs):
        super().__init__(display_width=display_width, **kwargs)
        if image is not None:
            self.set_image(image, natural_size=natural_size)

    @traitlets.validate("tool")
    def _check_tool(self, proposal):
        if proposal["value"] not in ("click", "box", "paint", "none"):
            raise traitlets.TraitError(f"tool must be 'click', 'box', 'paint' or 'none', got {proposal['value']!r}")
        return proposal["value"]

    def set_image(self, image: Any, *, natural_size: tuple[int, int] | None = None, value_range=(0.0, 1.0)) -> None:
        """Show ``image`` (see ``render.as_rgb``). ``natural_size`` ``(H, W)``: the pixel grid that clicks, boxes
        and the mask refer to, when the picture is drawn at a higher resolution (default: the picture's size)."""
        rgb = render.as_rgb(image, value_range=value_range)
        height, width = natural_size if natural_size is not None else rgb.shape[:2]
        with self.hold_sync():
            self.natural_height, self.natural_width = int(height), int(width)
            self.src = render.data_url(rgb)


class ClickableImage(ImageCanvas):
    """An image whose clicks set ``point = [x, y]`` in image pixels (observe ``point``)."""

    def __init__(self, image: Any = None, **kwargs):
        kwargs.setdefault("tool", "click")
        super().__init__(image, **kwargs)


class BoxDrawer(ImageCanvas):
    """An image on which a drag draws ``box = [x, y, w, h]`` (image pixels; observe ``box``)."""

    def __init__(self, image: Any = None, *, box: Sequence[int] | None = None, **kwargs):
        kwargs.setdefault("tool", "box")
        super().__init__(image, **kwargs)
        if box is not None:
            self.box = [int(v) for v in box]

    @property
    def box_xywh(self) -> tuple[int, int, int, int] | None:
        """The drawn box as a tuple (x, y, w, h), or None when none is drawn."""
        return tuple(self.box) if len(self.box) == 4 else None  # type: ignore[return-value]


class MaskPainter(ImageCanvas):
    """An image on which strokes paint (``erase=False``) or erase a binary mask of the image's size.

    ``mask_array`` reads/writes the mask as a bool ``(natural_height, natural_width)`` array; the synced
    ``mask`` trait changes once per stroke.
    """

    def __init__(self, image: Any = None, *, mask: np.ndarray | None = None, **kwargs):
        kwargs.setdefault("tool", "paint")
        super().__init__(image, **kwargs)
        if mask is not None:
            self.mask_array = mask

    @property
    def mask_array(self) -> np.ndarray:
        size = self.natural_height * self.natural_width
        if len(self.mask) != size:
            return np.zeros((self.natural_height, self.natural_width), dtype=bool)
        return np.frombuffer(self.mask, dtype=np.uint8).reshape(self.natural_height, self.natural_width) > 0

    @mask_array.setter
    def mask_array(self, value: np.ndarray) -> None:
        array = np.asarray(value, dtype=bool)
        if array.shape != (self.natural_height, self.natural_width):
            raise ValueError(
                f"mask must be {self.natural_height}x{self.natural_width} (the image's H x W), got {array.shape}"
            )
        self.mask = array.astype(np.uint8).tobytes()

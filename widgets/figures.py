"""Static matplotlib figures of the Explorer's views, for papers and for places without widgets.

Each function takes plain tensors / arrays (or, for ``session_figure``, a Session) and returns a
``matplotlib.figure.Figure`` built without pyplot (no global figure state, safe in scripts and
threads): save it with ``fig.savefig("x.png", dpi=200)``, or show it in a notebook with
``display(fig)``. The pixels come from ``tficon.widgets.render``, exactly as the live widgets draw
them, so a figure and the Explorer always agree.

This module needs matplotlib only (no ipywidgets, no anywidget).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from . import maps as maps_mod
from . import render

__all__ = [
    "attention_figure",
    "svd_figure",
    "sources_figure",
    "regions_figure",
    "step_strip_figure",
    "session_figure",
]


def _figure_png(fig: Figure) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _register_notebook_display() -> None:
    """Let IPython show a bare ``Figure`` as PNG: pyplot-free figures have no display otherwise until the
    inline backend is loaded (which only ``import matplotlib.pyplot`` does). A registration the backend
    already made is kept."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    formatter = shell.display_formatter.formatters["image/png"]
    try:
        formatter.lookup_by_type(Figure)
    except KeyError:
        formatter.for_type(Figure, _figure_png)


_register_notebook_display()


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _query_pixel(query: tuple[float, float] | None, image_size: tuple[int, int]) -> tuple[float, float]:
    height, width = image_size
    return (width // 2, height // 2) if query is None else query


def _draw_query(ax, query: tuple[float, float]) -> None:
    ax.plot([query[0]], [query[1]], marker="+", color="#00ff80", markersize=10, markeredgewidth=2)


def attention_figure(
    attention,
    image: Any = None,
    *,
    grid: tuple[int, int] | None = None,
    query: tuple[float, float] | None = None,
    title: str = "",
    cmap: str = "inferno",
) -> Figure:
    """One query's attention: the heatmap over the image (left) and the raw key-grid map (right).

    attention: ``(N, N)``; image: the picture the keys belong to (default: a grey canvas of the grid);
    query: ``(x, y)`` in the image's pixels (default: the centre). The right panel's data are exactly
    ``attention[q].reshape(h, w)``.
    """
    tensor = maps_mod.as_map(attention)
    grid = grid if grid is not None else maps_mod.grid_for(tensor.shape[1])
    base = render.as_rgb(image) if image is not None else render.blank(*grid)
    query = _query_pixel(query, base.shape[:2])
    index = maps_mod.query_token(query[0], query[1], base.shape[:2], grid)
    heat = maps_mod.query_heatmap(tensor, index, grid).numpy()
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    height, width = base.shape[:2]
    left.imshow(render.heat_overlay(base, heat, cmap=cmap), extent=(0, width, height, 0), interpolation="nearest")
    _draw_query(left, query)
    left.set_title("over the image", fontsize=9)
    shown = right.imshow(heat, cmap=cmap, interpolation="nearest", vmin=0)
    row, col = divmod(index, grid[1])
    right.plot([col], [row], marker="+", color="#00ff80", markersize=10, markeredgewidth=2)
    right.set_title(f"key grid {grid[0]}×{grid[1]}, query cell ({row}, {col})", fontsize=9)
    fig.colorbar(shown, ax=right, shrink=0.8, label="attention")
    for ax in (left, right):
        _off(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def svd_figure(attention, *, grid: tuple[int, int] | None = None, k: int = 4, title: str = "") -> Figure:
    """The top ``k`` singular components of a whole map (rows centred), each titled with its share of
    the energy (``tficon.widgets.maps.svd_components``)."""
    tensor = maps_mod.as_map(attention)
    grid = grid if grid is not None else maps_mod.grid_for(tensor.shape[1])
    share, components = maps_mod.svd_components(tensor, grid, k=k)
    fig = Figure(figsize=(1.8 * len(components), 2.1), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(components)))
    for i, (ax, component) in enumerate(zip(axes, components)):
        bound = float(component.abs().max()) or 1.0
        ax.imshow(component.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
        ax.set_title(f"#{i + 1}: {100 * float(share[i]):.0f}%", fontsize=9)
        _off(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def sources_figure(
    maps: Mapping[str, Any],
    images: Mapping[str, Any] | Any,
    *,
    query: tuple[float, float] | None = None,
    grid: tuple[int, int] | None = None,
    cmap: str = "inferno",
    title: str = "",
) -> Figure:
    """The same query in several maps side by side (e.g. the composite and the maps it is built from).

    maps: ``{kind: (N, N)}`` (display order follows ``maps_mod.KINDS`` for known kinds); images: one
    picture for all, or ``{kind: picture}`` (the keys' frame of each kind); query: ``(x, y)`` pixels.
    """
    kinds = [k for k in maps_mod.KINDS if k in maps] + [k for k in maps if k not in maps_mod.KINDS]
    if not kinds:
        raise ValueError("maps is empty: pass {kind: (N, N) map}")
    first = maps_mod.as_map(maps[kinds[0]])
    grid = grid if grid is not None else maps_mod.grid_for(first.shape[1])
    picture_of = (lambda kind: images[kind]) if isinstance(images, Mapping) else (lambda kind: images)
    fig = Figure(figsize=(2.2 * len(kinds), 2.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(kinds)))
    for ax, kind in zip(axes, kinds):
        base = render.as_rgb(picture_of(kind))
        q = _query_pixel(query, base.shape[:2])
        index = maps_mod.query_token(q[0], q[1], base.shape[:2], grid)
        heat = maps_mod.query_heatmap(maps[kind], index, grid).numpy()
        height, width = base.shape[:2]
        ax.imshow(render.heat_overlay(base, heat, cmap=cmap), extent=(0, width, height, 0), interpolation="nearest")
        _draw_query(ax, q)
        ax.set_title(f"{maps_mod.KIND_LABELS.get(kind, kind)}\nmax p={heat.max():.3f}", fontsize=8)
        _off(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def regions_figure(masks: Mapping[str, Any], image: Any = None, *, images: Mapping[str, Any] | None = None, title: str = "") -> Figure:
    """Bool region maps (``Session.region_masks``) tinted over a picture (or a grey canvas).

    ``images`` gives a picture per region name (e.g. the reference canvas for "reference_object")."""
    names = list(masks)
    fig = Figure(figsize=(1.9 * len(names), 2.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names):
        mask = np.asarray(masks[name].numpy() if hasattr(masks[name], "numpy") else masks[name], dtype=bool)
        picture = (images or {}).get(name, image)
        base = render.as_rgb(picture) if picture is not None else render.blank(*mask.shape)
        ax.imshow(render.tint(base, mask), interpolation="nearest")
        ax.set_title(f"{name.replace('_', ' ')} ({int(mask.sum())} cells)", fontsize=8)
        _off(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def step_strip_figure(images: Sequence[Any], labels: Sequence[str] | None = None, *, title: str = "", per_row: int = 11) -> Figure:
    """Thumbnails in rows of ``per_row`` (e.g. each step's x0 preview), labelled by step."""
    images = list(images)
    if not images:
        raise ValueError("images is empty")
    labels = list(labels) if labels is not None else [str(i) for i in range(len(images))]
    rows = (len(images) + per_row - 1) // per_row
    cols = min(per_row, len(images))
    fig = Figure(figsize=(1.05 * cols, 1.25 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, ax in enumerate(axes.flat):
        _off(ax)
        if i >= len(images):
            ax.set_visible(False)
            continue
        ax.imshow(render.as_rgb(images[i]), interpolation="nearest")
        ax.set_title(labels[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def session_figure(
    session,
    step: int | None = None,
    *,
    layers: str | tuple[int, int] | None = None,
    query: tuple[int, int] | None = None,
    max_tokens: int = 1024,
) -> Figure:
    """The Explorer's main views of a Session as one static figure.

    Row 1: background with the placed object window, foreground with its object mask, cut-and-paste,
    result (runs the composition if needed). Row 2: at ``step`` (default: the middle of the foreground
    injection, else step 0), one query (default: the centre of the target window) in the composite and
    its sources. Row 3: the x0 preview of the generation branch after every step.

    layers: a layer name, a grid ``(h, w)`` (mean over its layers), or None (the finest grid).
    """
    result = np.asarray(session.result)  # runs every remaining step
    inputs, place = session.inputs, session.placement
    height, width = session.image_size
    background = render.as_rgb(inputs.background, value_range=(-1, 1))
    reference = render.as_rgb(inputs.reference, value_range=(-1, 1))
    cut_and_paste = render.as_rgb(inputs.cut_and_paste, value_range=(-1, 1))
    window, target = place.ref_window, place.target_window
    foreground = reference[window.top : window.bottom, window.left : window.right]
    mask = inputs.object_mask[window.top : window.bottom, window.left : window.right] > 0.5

    if step is None:
        injected = [p.s for p in session.plans if p.fg]
        step = injected[len(injected) // 2] if injected else 0
    step = min(step, session.steps - 1)
    captured = session.capture_attention(step, max_tokens=max_tokens)
    grouped = maps_mod.layers_by_grid(captured, like=place.latent_size)
    if layers is None:
        grid, names = next(iter(grouped.items()))
    elif isinstance(layers, tuple):
        grid, names = tuple(layers), grouped[tuple(layers)]
    else:
        grid = next(g for g, members in grouped.items() if layers in members)
        names = [layers]
    if query is None:
        query = ((target.left + target.right) // 2, (target.top + target.bottom) // 2)
    kinds = [k for k in maps_mod.KINDS if maps_mod.mean_map(captured, names, k) is not None]

    strip = [session.preview(k)["generation"] for k in range(len(session.records))]
    columns = max(4, len(kinds))
    strip_rows = (len(strip) + 10) // 11
    fig = Figure(figsize=(2.3 * columns, 2.6 * 2 + 1.3 * strip_rows), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[2.6, 2.6, 1.3 * strip_rows])
    panels = [
        (render.draw_box(background, (target.top, target.left, target.bottom, target.right)), "background + placed window"),
        (render.tint(foreground, mask), "foreground + object mask"),
        (cut_and_paste, "cut-and-paste"),
        (result, "result"),
    ]
    for ax, (picture, label) in zip(np.atleast_1d(top.subplots(1, 4)), panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        _off(ax)
    index = maps_mod.query_token(query[0], query[1], (height, width), grid)
    frames = {
        "target": cut_and_paste,
        "reference": reference,
        "background": background if session.config.mode == "cross" else cut_and_paste,
    }
    axes = np.atleast_1d(middle.subplots(1, len(kinds)))
    for ax, kind in zip(axes, kinds):
        base = frames["background"] if kind == "background" else frames[maps_mod.KEY_FRAME[kind]]
        heat = maps_mod.query_heatmap(maps_mod.mean_map(captured, names, kind), index, grid).numpy()
        ax.imshow(render.heat_overlay(base, heat), extent=(0, width, height, 0), interpolation="nearest")
        _draw_query(ax, query)
        ax.set_title(f"{maps_mod.KIND_LABELS[kind]}\nmax p={heat.max():.3f}", fontsize=8)
        _off(ax)
    middle.suptitle(f"step {step}, {grid[0]}×{grid[1]} ({len(names)} layer{'s' if len(names) > 1 else ''}), query {tuple(query)}", fontsize=9)
    strip_axes = np.atleast_2d(bottom.subplots(strip_rows, min(11, len(strip)), squeeze=False))
    for i, ax in enumerate(strip_axes.flat):
        _off(ax)
        if i >= len(strip):
            ax.set_visible(False)
            continue
        ax.imshow(render.as_rgb(strip[i]), interpolation="nearest")
        ax.set_title(str(i), fontsize=7)
    bottom.suptitle("x0 preview of the generation branch after each step", fontsize=9)
    return fig

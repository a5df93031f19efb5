"""Attention-map arithmetic for the views, over plain tensors.

A captured self-attention map is ``(N, N)``: row ``q`` is query token ``q``'s distribution over the
``N`` key tokens of the same ``h x w`` grid (raster order, ``q = row * w + col``), averaged over heads
(``Session.capture_attention``). These functions turn such maps into pictures' worth of numbers:
one query's heatmap, the top singular components of the whole map, means over the layers of one
resolution. They take and return torch tensors / numpy arrays and know nothing about widgets.

Which picture a map's keys belong to (``KEY_FRAME``): the composite, the plain generation and the
background maps live on the target image's grid; the reference and pseudo-cross maps have their keys
on the reference canvas (the foreground centred on black). Query ``q`` is the same grid position in
both frames: the official code pairs gen's query ``i`` with the reference's position ``i`` without
any translation, so showing both at one index is exactly what gets combined.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

__all__ = [
    "KINDS",
    "KIND_LABELS",
    "kind_label",
    "KEY_FRAME",
    "grid_for",
    "query_token",
    "token_centre",
    "as_map",
    "query_heatmap",
    "svd_components",
    "layers_by_grid",
    "mean_map",
]

#: Capture kinds in display order (``Session.capture_attention``'s names).
KINDS = ("composite", "generation", "background", "reference", "pseudo_cross")

KIND_LABELS = {
    "composite": "composite (injected)",
    "generation": "generation (own)",
    "background": "background",
    "reference": "reference",
    "pseudo_cross": "pseudo-cross",
}



def kind_label(kind: str, injected: bool = True) -> str:
    """The display name of a capture kind. The generation branch's conditional row is only a composite at steps
    where foreground or background injection is on; elsewhere it is the branch's own attention, and says so."""
    if kind == "composite" and not injected:
        return "composite (no injection at this step: = own)"
    return KIND_LABELS[kind]


#: "target": keys on the target image grid; "reference": keys on the reference canvas grid.
KEY_FRAME = {
    "composite": "target",
    "generation": "target",
    "background": "target",
    "reference": "reference",
    "pseudo_cross": "reference",
}


def grid_for(n_tokens: int, like: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(h, w)`` grid of a map with ``n_tokens`` tokens.

    ``like``: a grid of the same aspect ratio (e.g. the latent grid ``(H/f, W/f)``); the map's grid is
    ``like`` divided by a power of two (UNet levels and pooling both halve). Without ``like`` the grid
    must be square.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    if like is None:
        side = int(round(n_tokens**0.5))
        if side * side != n_tokens:
            raise ValueError(f"{n_tokens} tokens is not a square grid; pass grid=(h, w)")
        return side, side
    height, width = int(like[0]), int(like[1])
    factor = 1
    while factor <= max(height, width):
        if (height // factor) * (width // factor) == n_tokens and height // factor > 0 and width // factor > 0:
            return height // factor, width // factor
        factor *= 2
    raise ValueError(f"{n_tokens} tokens do not fit a grid like {height}x{width} halved by a power of 2")


def query_token(x: float, y: float, image_size: tuple[int, int], grid: tuple[int, int]) -> int:
    """Token index of the grid cell under image pixel ``(x, y)``; ``image_size`` is ``(H, W)``."""
    height, width = image_size
    rows, cols = grid
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"query pixel ({x}, {y}) is outside the {width}x{height} (W x H) image")
    row = min(int(y * rows / height), rows - 1)
    col = min(int(x * cols / width), cols - 1)
    return row * cols + col


def token_centre(index: int, image_size: tuple[int, int], grid: tuple[int, int]) -> tuple[float, float]:
    """Pixel ``(x, y)`` at the centre of grid cell ``index`` in an ``(H, W)`` image."""
    height, width = image_size
    rows, cols = grid
    row, col = divmod(int(index), cols)
    return (col + 0.5) * width / cols, (row + 0.5) * height / rows


def as_map(attention) -> torch.Tensor:
    """A 2-D float32 CPU tensor from a map given as a tensor or array (raises on any other shape)."""
    tensor = torch.as_tensor(attention).detach().float().cpu()
    if tensor.ndim != 2:
        raise ValueError(f"attention must be a 2-D (Nq, Nk) map, got shape {tuple(tensor.shape)}")
    return tensor


def query_heatmap(attention, query: int, grid: tuple[int, int]) -> torch.Tensor:
    """Row ``query`` of an ``(N, N)`` map reshaped to the key grid ``(h, w)``."""
    tensor = as_map(attention)
    rows, cols = grid
    if tensor.shape[1] != rows * cols:
        raise ValueError(f"attention has {tensor.shape[1]} key tokens but grid {rows}x{cols} has {rows * cols}")
    if not 0 <= query < tensor.shape[0]:
        raise ValueError(f"query must be in 0..{tensor.shape[0] - 1}, got {query}")
    return tensor[query].reshape(rows, cols)


def svd_components(attention, grid: tuple[int, int], k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` singular components of a whole map, as key-grid pictures.

    Each row (one query's distribution) is centred by its own mean first, so the components show how the
    queries' attention *differs* rather than the uniform part every row shares (the Prompt-to-Prompt view
    of self-attention). Signs are fixed so that each component's largest-magnitude entry is positive.

    Returns ``(share, components)``: ``share (k,)`` each component's fraction of the centred map's energy
    (squared singular values / their sum), ``components (k, h, w)`` the right singular vectors.
    """
    tensor = as_map(attention).double()
    rows, cols = grid
    if tensor.shape[1] != rows * cols:
        raise ValueError(f"attention has {tensor.shape[1]} key tokens but grid {rows}x{cols} has {rows * cols}")
    centred = tensor - tensor.mean(dim=1, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, vh.shape[0])
    energy = singular.square()
    total = float(energy.sum())
    share = (energy[:k] / total) if total > 0 else torch.zeros(k, dtype=energy.dtype)
    components = vh[:k].clone()
    peaks = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(k), peaks])
    signs[signs == 0] = 1
    components = components * signs[:, None]
    return share.float(), components.reshape(k, rows, cols).float()


def layers_by_grid(
    maps: Mapping[tuple[str, str], torch.Tensor], like: tuple[int, int] | None = None
) -> dict[tuple[int, int], list[str]]:
    """``{(h, w): [layer names in first-seen order]}`` for a ``{(layer, kind): map}`` dict, finest grid first."""
    grouped: dict[tuple[int, int], list[str]] = {}
    for (layer, _kind), attention in maps.items():
        grid = grid_for(int(attention.shape[-1]), like)
        names = grouped.setdefault(grid, [])
        if layer not in names:
            names.append(layer)
    return dict(sorted(grouped.items(), key=lambda item: -item[0][0] * item[0][1]))


def mean_map(maps: Mapping[tuple[str, str], torch.Tensor], layers: Iterable[str], kind: str) -> torch.Tensor | None:
    """Mean of ``kind``'s maps over ``layers`` (those that have it); None when none has it.

    A mean of row-stochastic maps is row-stochastic, so the result reads like any single map.
    """
    found = [maps[(layer, kind)] for layer in layers if (layer, kind) in maps]
    if not found:
        return None
    return torch.stack([as_map(m) for m in found]).mean(0)


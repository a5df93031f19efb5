"""Slow, sequential test oracle for TF-ICON's composition stage, with the official code's structure.

This module is test support, not a test file. It re-implements stage B of TF-ICON (docs/algorithm.md §8,
9 and 13.3) the way the official code runs it, written independently of the batched implementation in ``tficon``:

- four branches run one after another, each with its own UNet call(s): ``orig`` (reconstruction of the inverted
  background), ``ref`` (reconstruction of the inverted reference), ``cross`` (the pseudo-cross pass) and ``gen``
  (the output, classifier-free guidance as a batch ``[uncond "", cond prompt]``);
- each of ``orig``, ``ref`` and ``cross`` has a :class:`BranchRecorder` that keeps the pre-softmax, scaled logits of
  every self-attention layer (``attn1``) of its most recent *complete* forward;
- the conditional half of ``gen`` reads those stores and builds the composite logits of section 9 on the FULL
  N x N matrix in the official assignment order (:func:`composite_logits`);
- the warm-up quirks (each branch finishes its warm-up before the next one starts, every gen warm-up evaluation
  sees the maps recorded at t_{k-1}, fg and bg injection always on), the pseudo-cross latent lag, the model-history
  blending of gen's warm-up data predictions, the x-blending *after* gen's evaluation, the integer flag bounds
  ``int(tau * S + 1 - k)`` (with ``tau_bg`` for bg injection), the frozen ``ref`` once fg injection stops and
  ``orig`` running all steps are all reproduced.

Two exact simplifications, both because the dropped work cannot influence anything that is read later:

- the classifier-free doubling of ``orig``, ``ref`` and ``cross`` is dropped: their conditional and unconditional
  halves are identical (e* / e*), so one sample gives the same logits and the same epsilon;
- the pseudo-cross batch ``[x_c, x_c, x_r, x_r]`` is reduced to ``[x_r]``: the official attention hook writes
  samples 2/3's attention output into samples 0/1, and ResBlocks, cross-attention and feed-forward layers act per
  sample, so samples 2/3 never depend on the "own" cross latent x_c. Its solver trajectory is dead and not run.

Attention is hooked through a diffusers attention processor (:class:`OfficialStructureProcessor`) installed on the
``attn1`` layers only with ``unet.set_attn_processor`` (the ``attn2`` processors are kept) and restored afterwards
(:func:`oracle_processors`). It computes attention explicitly: ``to_q``/``to_k``/``to_v``, head split, logits
scaled by ``attn.scale``, softmax in float32, ``to_out``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import Tensor

from tficon.core.solver import NoiseSchedule, multistep_update, step_order, time_grid, to_data_prediction

__all__ = [
    "BRANCH_BATCH_OFFICIAL",
    "BranchRecorder",
    "OfficialFlags",
    "OfficialStructureProcessor",
    "OracleController",
    "composite_logits",
    "official_bound",
    "official_composition",
    "official_flags",
    "oracle_processors",
]

# Batch entries the OFFICIAL code passes through the UNet per evaluation of each branch (CFG doubling included;
# the pseudo-cross batch is [x_c, x_c, x_r, x_r]). This oracle runs 1 / 1 / 1 / 2.
BRANCH_BATCH_OFFICIAL = {"orig": 2, "ref": 2, "cross": 4, "gen": 2}
_BRANCH_BATCH_ORACLE = {"orig": 1, "ref": 1, "cross": 1, "gen": 2}


# ---------------------------------------------------------------------------------------------------------------
# Flags (section 8.4)
# ---------------------------------------------------------------------------------------------------------------


def official_bound(tau: float, steps: int, order: int) -> int:
    """The official step bound ``int(tau * steps + 1 - order)``: a flag is on at main-loop step s iff s < bound.

    Python float arithmetic and ``int()`` truncation (towards zero) as in the official code, e.g.
    ``0.3 * 20 + 1 - 2 = 5.000000000000001 -> 5`` and ``0 * 20 + 1 - 2 = -1``.
    """
    return int(tau * steps + 1 - order)


@dataclass(frozen=True)
class OfficialFlags:
    """Main-loop flag bounds for one (steps, order, tau_a, tau_b, tau_bg); warm-up always injects fg and bg."""

    fg_bound: int  # fg injection (and ref advancing) at main-loop step s iff s < fg_bound
    bg_bound: int  # bg injection at main-loop step s iff s < bg_bound
    blend_bound: int  # x-blend after main-loop step s iff s < blend_bound

    def fg_on(self, s: int) -> bool:
        return s < self.fg_bound

    def bg_on(self, s: int) -> bool:
        return s < self.bg_bound

    def blend(self, s: int) -> bool:
        return s < self.blend_bound


def official_flags(steps: int, order: int, tau_a: float, tau_b: float, tau_bg: float = 0.4) -> OfficialFlags:
    """Flag bounds of section 8.4: fg uses tau_a, bg the (officially hard-coded 0.4) tau_bg, x-blend tau_b."""
    return OfficialFlags(
        fg_bound=official_bound(tau_a, steps, order),
        bg_bound=official_bound(tau_bg, steps, order),
        blend_bound=official_bound(tau_b, steps, order),
    )


# ---------------------------------------------------------------------------------------------------------------
# The composite logits (section 9)
# ---------------------------------------------------------------------------------------------------------------


def composite_logits(
    gen_logits: Tensor,
    orig_logits: Optional[Tensor],
    ref_logits: Optional[Tensor],
    cross_logits: Optional[Tensor],
    box: Tensor,
    fg: Tensor,
    fg_ref: Tensor,
    *,
    fg_on: bool,
    bg_on: bool,
) -> Tensor:
    """Composite pre-softmax logits of gen's conditional half, built on the full matrix in the official order.

    Args:
        gen_logits: G, gen's own scaled logits, shape (heads, N, N).
        orig_logits: O, orig's logits at the same layer, (heads, N, N); needed when ``bg_on``.
        ref_logits: Rf, ref's logits, (heads, N, N); needed when ``fg_on`` and ``fg`` is non-empty.
        cross_logits: C, pseudo-cross logits, (heads, N, |F|); needed when ``fg_on`` and ``fg`` is non-empty.
        box: B, linear indices (row * w + col) of the target box, 1-D long.
        fg: F, linear gen/target indices of the object tokens, 1-D long (may be empty).
        fg_ref: R, the same object tokens' indices in the reference grid, in F's order.

    Assignment order (later assignments win): L = G; if bg: L = O wherever the row AND the column are outside B
    (a full 0/1 mask that is 1 on every row in B and every column in B); if fg and |F| > 0: columns L[:, F] = C
    for all rows, rows L[F, :] = C^T, then the block L[F, F] = Rf[R, R]. Returns a new (heads, N, N) tensor.
    """
    if gen_logits.dim() != 3 or gen_logits.shape[-1] != gen_logits.shape[-2]:
        raise ValueError(f"gen_logits must have shape (heads, N, N), got {tuple(gen_logits.shape)}")
    heads, n, _ = gen_logits.shape
    logits = gen_logits.clone()
    if bg_on:
        if orig_logits is None or orig_logits.shape != gen_logits.shape:
            raise ValueError(
                f"bg injection needs orig_logits of shape {tuple(gen_logits.shape)}, got "
                f"{None if orig_logits is None else tuple(orig_logits.shape)}"
            )
        keep_gen = torch.zeros(n, n, dtype=torch.bool, device=logits.device)
        keep_gen[box, :] = True
        keep_gen[:, box] = True
        logits = torch.where(keep_gen, logits, orig_logits.to(logits.dtype))
    if fg_on and fg.numel() > 0:
        if cross_logits is None or cross_logits.shape != (heads, n, fg.numel()):
            raise ValueError(
                f"fg injection needs cross_logits of shape {(heads, n, fg.numel())}, got "
                f"{None if cross_logits is None else tuple(cross_logits.shape)}"
            )
        if ref_logits is None or ref_logits.shape != gen_logits.shape:
            raise ValueError(
                f"fg injection needs ref_logits of shape {tuple(gen_logits.shape)}, got "
                f"{None if ref_logits is None else tuple(ref_logits.shape)}"
            )
        cross = cross_logits.to(logits.dtype)
        logits[:, :, fg] = cross  # row injection: gen query i <-> reference-grid query i, no translation
        logits[:, fg, :] = cross.transpose(-1, -2)  # column injection (overwrites the F x F part)
        logits[:, fg[:, None], fg[None, :]] = ref_logits.to(logits.dtype)[:, fg_ref[:, None], fg_ref[None, :]]
    return logits


# ---------------------------------------------------------------------------------------------------------------
# Recorders and the attention processor
# ---------------------------------------------------------------------------------------------------------------


class BranchRecorder:
    """Keeps one branch's attn1 logits of its most recent complete forward, as the official recorders do.

    A forward is started with :meth:`begin` (with a tag saying which evaluation it is), fills a pending store layer
    by layer, and replaces the readable store only in :meth:`commit`, once every hooked layer has been recorded.
    Readers therefore always see the last *complete* forward.
    """

    def __init__(self, branch: str):
        self.branch = branch
        self.last: dict[str, Tensor] = {}
        self.last_tag: Optional[tuple] = None
        self._pending: Optional[dict[str, Tensor]] = None
        self._pending_tag: Optional[tuple] = None

    def begin(self, tag: tuple) -> None:
        self._pending = {}
        self._pending_tag = tag

    def record(self, layer: str, logits: Tensor) -> None:
        if self._pending is None:
            raise RuntimeError(f"recorder {self.branch!r}: record() outside begin()/commit()")
        self._pending[layer] = logits.detach().clone()

    def commit(self, layers: list[str]) -> None:
        if self._pending is None or set(self._pending) != set(layers):
            got = None if self._pending is None else sorted(self._pending)
            raise RuntimeError(f"recorder {self.branch!r}: incomplete forward, recorded {got}, expected {layers}")
        self.last, self.last_tag = self._pending, self._pending_tag
        self._pending, self._pending_tag = None, None

    def read(self, layer: str) -> Tensor:
        if layer not in self.last:
            raise RuntimeError(f"recorder {self.branch!r} has no complete forward with layer {layer!r} yet")
        return self.last[layer]


@dataclass
class OracleController:
    """Shared state that tells every :class:`OfficialStructureProcessor` what the current forward is.

    mode:
        ``"plain"``: ordinary self-attention, nothing recorded;
        ``"record"``: ordinary self-attention of a batch-1 branch (orig/ref), logits recorded into ``recorder``;
        ``"cross"``: pseudo-cross pass of a batch-1 reference latent: K/V are its own tokens at the reference
        object positions R (``fg_ref``), or the whole reference box (``ref_box``) where R is empty at that layer;
        queries at all N positions; logits (heads, N, |K|) recorded into ``recorder``;
        ``"gen"``: batch ``[uncond, cond]``; sample 0 plain, sample 1 composite from ``stores`` when ``fg_on`` or
        ``bg_on``, else plain.
    regions: (layer_h, layer_w) -> region index object with fields ``box``, ``fg``, ``fg_ref``, ``ref_box``.
    latent_hw: (H, W) of the UNet input latent, used to find a layer's (h, w) from its token count N.
    """

    regions: Mapping[tuple[int, int], Any]
    latent_hw: tuple[int, int]
    mode: str = "plain"
    recorder: Optional[BranchRecorder] = None
    stores: dict[str, BranchRecorder] = field(default_factory=dict)
    fg_on: bool = False
    bg_on: bool = False
    reads: set = field(default_factory=set)  # tags of the stores read by gen in the current forward

    def layer_hw(self, n_tokens: int) -> tuple[int, int]:
        height, width = self.latent_hw
        factor = math.isqrt(height * width // n_tokens) if n_tokens > 0 else 0
        if factor < 1 or (height % factor) or (width % factor) or (height // factor) * (width // factor) != n_tokens:
            raise ValueError(f"cannot place a self-attention layer with {n_tokens} tokens on a {height}x{width} latent")
        return height // factor, width // factor

    def region(self, n_tokens: int) -> Any:
        hw = self.layer_hw(n_tokens)
        if hw not in self.regions:
            raise ValueError(f"regions has no entry for attention resolution {hw}; it has {sorted(self.regions)}")
        return self.regions[hw]


def _split_heads(attn: Any, x: Tensor) -> Tensor:
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, attn.heads, channels // attn.heads).transpose(1, 2)  # (B, heads, N, d)


def _attend(logits: Tensor, value: Tensor) -> Tensor:
    """softmax over the last axis in float32, then P.V; logits (..., N, M), value (..., M, d)."""
    probs = torch.softmax(logits.to(torch.float32), dim=-1)
    return torch.matmul(probs.to(value.dtype), value)


class OfficialStructureProcessor:
    """diffusers attention processor for one ``attn1`` layer, driven by an :class:`OracleController`.

    Computes the attention explicitly so that the pre-softmax logits can be recorded and composed.
    Only what SD's self-attention uses is supported; anything else raises instead of computing something wrong.
    """

    def __init__(self, layer: str, controller: OracleController):
        self.layer = layer
        self.controller = controller

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        temb: Optional[Tensor] = None,
    ) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError(f"{self.layer}: the oracle processor is for unmasked self-attention only")
        unsupported = [
            name for name in ("spatial_norm", "group_norm", "norm_q", "norm_k") if getattr(attn, name, None) is not None
        ]
        if unsupported or hidden_states.dim() != 3:
            raise NotImplementedError(f"{self.layer}: unsupported attention features {unsupported or '4-D input'}")
        residual = hidden_states
        ctl = self.controller
        query = _split_heads(attn, attn.to_q(hidden_states))
        key = _split_heads(attn, attn.to_k(hidden_states))
        value = _split_heads(attn, attn.to_v(hidden_states))
        batch, heads, n_tokens, _ = query.shape

        if ctl.mode == "cross":
            self._check_batch(batch, 1)
            region = ctl.region(n_tokens)
            kv_index = region.fg_ref if region.fg_ref.numel() > 0 else region.ref_box
            kv_index = kv_index.to(hidden_states.device)
            logits = torch.matmul(query, key[:, :, kv_index].transpose(-1, -2)) * attn.scale  # (1, heads, N, |K|)
            ctl.recorder.record(self.layer, logits[0])
            out = _attend(logits, value[:, :, kv_index])
        else:
            logits = torch.matmul(query, key.transpose(-1, -2)) * attn.scale  # (B, heads, N, N)
            if ctl.mode == "record":
                self._check_batch(batch, 1)
                ctl.recorder.record(self.layer, logits[0])
            elif ctl.mode == "gen":
                self._check_batch(batch, 2)
                if ctl.fg_on or ctl.bg_on:
                    logits = torch.stack([logits[0], self._composite(logits[1], n_tokens, hidden_states.device)])
            elif ctl.mode != "plain":
                raise ValueError(f"unknown oracle mode {ctl.mode!r}")
            out = _attend(logits, value)

        out = out.transpose(1, 2).reshape(batch, n_tokens, heads * out.shape[-1])
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _check_batch(self, batch: int, expected: int) -> None:
        if batch != expected:
            raise ValueError(f"{self.layer}: mode {self.controller.mode!r} expects batch {expected}, got {batch}")

    def _composite(self, gen_logits: Tensor, n_tokens: int, device: torch.device) -> Tensor:
        ctl = self.controller
        region = ctl.region(n_tokens)
        fg = region.fg.to(device)
        use_fg = ctl.fg_on and fg.numel() > 0
        orig = ref = cross = None
        if ctl.bg_on:
            orig = ctl.stores["orig"].read(self.layer)
            ctl.reads.add(ctl.stores["orig"].last_tag)
        if use_fg:
            ref = ctl.stores["ref"].read(self.layer)
            cross = ctl.stores["cross"].read(self.layer)
            ctl.reads.update({ctl.stores["ref"].last_tag, ctl.stores["cross"].last_tag})
        return composite_logits(
            gen_logits, orig, ref, cross, region.box.to(device), fg, region.fg_ref.to(device),
            fg_on=use_fg, bg_on=ctl.bg_on,
        )


@contextmanager
def oracle_processors(unet: Any, controller: OracleController) -> Iterator[list[str]]:
    """Install an :class:`OfficialStructureProcessor` on every ``attn1`` layer (``attn2`` keeps its processor).

    Yields the attn1 layer names in execution-independent (sorted) order; always restores the original processors.
    """
    original = dict(unet.attn_processors)
    attn1 = sorted(name for name in original if name.endswith(".attn1.processor"))
    if not attn1:
        raise ValueError("unet has no attn1 self-attention layers to hook")
    installed = {
        name: OfficialStructureProcessor(name, controller) if name in attn1 else processor
        for name, processor in original.items()
    }
    unet.set_attn_processor(dict(installed))  # set_attn_processor pops from the dict it gets: pass a copy
    try:
        yield attn1
    finally:
        unet.set_attn_processor(dict(original))


# ---------------------------------------------------------------------------------------------------------------
# The sequential runner
# ---------------------------------------------------------------------------------------------------------------


class _Trajectory:
    """Latent, grid index and the last ``order`` (t, D) pairs of one branch."""

    def __init__(self, x: Tensor, order: int):
        self.x = x
        self.index = 0
        self.order = order
        self.t_hist: list[Tensor] = []
        self.d_hist: list[Tensor] = []

    def push(self, t: Tensor, d: Tensor) -> None:
        self.t_hist = (self.t_hist + [t])[-self.order :]
        self.d_hist = (self.d_hist + [d])[-self.order :]

    def step(self, grid: Tensor, index: int, order: int, schedule: NoiseSchedule) -> None:
        self.x = multistep_update(self.x, self.t_hist, self.d_hist, grid[index].expand(1), order, schedule)
        self.index = index


def _check_latent(name: str, x: Any, like: Optional[Tensor] = None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"{name} must be a (1, C, h, w) latent tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(like.shape)} like x_bg_T")


def _check_embedding(name: str, e: Any) -> None:
    if not isinstance(e, Tensor) or e.dim() != 3 or e.shape[0] != 1:
        raise ValueError(f"{name} must be a (1, L, D) embedding tensor, got {getattr(e, 'shape', type(e).__name__)}")


def official_composition(
    unet: Any,
    schedule: NoiseSchedule,
    *,
    x_bg_T: Tensor,
    x_ref_T: Tensor,
    start: Tensor,
    e_star: Tensor,
    e_uncond: Tensor,
    e_cond: Tensor,
    regions: Mapping[tuple[int, int], Any],
    param_box: Any,
    steps: int,
    order: int,
    guidance: float,
    tau_a: float,
    tau_b: float,
    tau_bg: float = 0.4,
    prediction_type: str = "epsilon",
    align_warmup: bool = False,
    cross_lag: bool = True,
    disable_all: bool = False,
    added_cond: Optional[Mapping[str, dict]] = None,
) -> dict:
    """Run TF-ICON's composition stage sequentially, branch by branch, as the official code does.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (its attn1 processors are swapped during the call, then restored).
        schedule: the continuous-time :class:`tficon.core.solver.NoiseSchedule`.
        x_bg_T, x_ref_T, start: (1, C, h, w) latents at t = 1 (inverted background, inverted reference, start
            latent of gen).
        e_star, e_uncond, e_cond: (1, L, D) embeddings: exceptional prompt (orig/ref/cross), "" and the prompt (gen).
        regions: (layer_h, layer_w) -> region index with long tensors ``box`` (B), ``fg`` (F), ``fg_ref`` (R),
            ``fg_crop`` (c, unused here) and ``ref_box`` (Q), for every attention resolution of the UNet.
        param_box: the blend region on the latent grid, fields ``top``, ``left``, ``bottom``, ``right`` (slice
            bounds: rows ``top:bottom``, columns ``left:right``).
        steps, order: S and k of the multistep DPM-Solver++ (time-uniform grid from 1 to 1/N).
        guidance: CFG scale w, guided output ``u + w * (c - u)`` (taken on the raw model output, which equals doing
            it on epsilon for every prediction type since the conversion is affine with the same x).
        tau_a, tau_b, tau_bg: fg-injection, x-blend and bg-injection fractions; bounds ``int(tau * S + 1 - k)``.
        align_warmup: not official. gen's warm-up evaluation at t_j uses maps recorded at t_j (orig and ref at t_j,
            cross at t_j on x_ref(t_j)); the branches' warm-ups are interleaved per time.
        cross_lag: official True: the main-loop cross pass at step s uses x_ref(t_{s-1}) with timestep t_s. False:
            ``ref`` advances first and the cross pass uses x_ref(t_s) (while ``ref`` still advances).
        disable_all: test switch. No injection (main loop and warm-up), no model-history blending, no x-blending:
            gen is then a plain CFG DPM-Solver++ run from ``start``. The other branches still run.
        added_cond: SDXL-shaped UNets only: the ``added_cond_kwargs`` (``text_embeds`` (1, P), ``time_ids`` (1, 6))
            that go with each embedding, keyed ``"e_star"``, ``"e_uncond"``, ``"e_cond"``.

    Returns:
        ``final``: gen latent at t_S; ``gen``: gen latent after each step s = 0..S (index 0 = ``start``; after the
        x-blend where one happens); ``orig``: orig latent at each t_s, s = 0..S; ``unet_calls``: UNet forward calls
        made (one per branch evaluation, the official call count); ``sample_evals``: batch entries this oracle ran
        (orig/ref/cross 1, gen 2 per call); ``official_sample_evals``: batch entries the official code runs for the
        same calls (orig/ref 2, cross 4, gen 2); ``trace``: one tuple per UNet call in call order, ``(branch,
        t_index, ...)``: ``("orig"|"ref", t)``, ``("cross", t, x_ref_index)``, ``("gen", t, fg, bg, reads)``
        with ``reads`` the sorted tags of the recorded maps gen's forward read.
    """
    _check_latent("x_bg_T", x_bg_T)
    _check_latent("x_ref_T", x_ref_T, x_bg_T)
    _check_latent("start", start, x_bg_T)
    for name, emb in (("e_star", e_star), ("e_uncond", e_uncond), ("e_cond", e_cond)):
        _check_embedding(name, emb)
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 3:
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < order:
        raise ValueError(f"steps must be an int >= order ({order}), got {steps!r}")
    height, width = x_bg_T.shape[-2:]
    top, left, bottom, right = (int(getattr(param_box, f)) for f in ("top", "left", "bottom", "right"))
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"param_box rows {top}:{bottom}, cols {left}:{right} must be a non-empty box inside the "
                         f"{height}x{width} latent")
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError("regions must be a non-empty dict (layer_h, layer_w) -> region index")

    device = x_bg_T.device
    grid = time_grid(steps, t_end=1.0 / schedule.num_train_timesteps, device=device)
    flags = official_flags(steps, order, tau_a, tau_b, tau_bg)
    inside = torch.zeros(1, 1, height, width, dtype=torch.bool, device=device)
    inside[..., top:bottom, left:right] = True

    recorders = {name: BranchRecorder(name) for name in ("orig", "ref", "cross")}
    controller = OracleController(regions=regions, latent_hw=(height, width), stores=recorders)
    counts = {"unet_calls": 0, "sample_evals": 0, "official_sample_evals": 0}
    trace: list[tuple] = []

    def unet_call(branch: str, x: Tensor, t_index: int, emb: Tensor, added: Optional[list[str]] = None) -> Tensor:
        t = grid[t_index].expand(x.shape[0])
        counts["unet_calls"] += 1
        counts["sample_evals"] += _BRANCH_BATCH_ORACLE[branch]
        counts["official_sample_evals"] += BRANCH_BATCH_OFFICIAL[branch]
        extra = {}
        if added_cond is not None:  # one added_cond entry per sample, by embedding name
            names = added or ["e_star"]
            extra["added_cond_kwargs"] = {
                key: torch.cat([added_cond[name][key] for name in names]) for key in ("text_embeds", "time_ids")
            }
        return unet(x, schedule.model_time(t), encoder_hidden_states=emb, **extra).sample

    def eval_recorded(branch: str, traj: _Trajectory, layers: list[str]) -> None:
        """orig / ref: plain attention, logits recorded; push D(x, t) into the branch history."""
        j = traj.index
        controller.mode, controller.recorder = "record", recorders[branch]
        recorders[branch].begin((branch, j))
        out = unet_call(branch, traj.x, j, e_star)
        recorders[branch].commit(layers)
        trace.append((branch, j))
        t = grid[j].expand(1)
        traj.push(t, to_data_prediction(out, traj.x, t, schedule, prediction_type))

    def eval_cross(t_index: int, ref: _Trajectory, layers: list[str]) -> None:
        """Pseudo-cross pass on the current ref latent at timestep t_index; only its recorded map C matters."""
        controller.mode, controller.recorder = "cross", recorders["cross"]
        recorders["cross"].begin(("cross", t_index, ref.index))
        unet_call("cross", ref.x, t_index, e_star)
        recorders["cross"].commit(layers)
        trace.append(("cross", t_index, ref.index))

    def eval_gen(traj: _Trajectory, fg_on: bool, bg_on: bool) -> None:
        """gen: batch [uncond, cond], composite in the cond half; push the guided D."""
        j = traj.index
        fg_on, bg_on = (False, False) if disable_all else (fg_on, bg_on)
        controller.mode, controller.recorder = "gen", None
        controller.fg_on, controller.bg_on = fg_on, bg_on
        controller.reads = set()
        out = unet_call("gen", torch.cat([traj.x, traj.x]), j, torch.cat([e_uncond, e_cond]), ["e_uncond", "e_cond"])
        trace.append(("gen", j, fg_on, bg_on, tuple(sorted(controller.reads))))
        out_uncond, out_cond = out.chunk(2)
        guided = out_uncond + guidance * (out_cond - out_uncond)
        t = grid[j].expand(1)
        traj.push(t, to_data_prediction(guided, traj.x, t, schedule, prediction_type))

    orig = _Trajectory(x_bg_T.to(torch.float32), order)
    ref = _Trajectory(x_ref_T.to(torch.float32), order)
    gen = _Trajectory(start.to(torch.float32), order)
    orig_latents, gen_latents = [orig.x], [gen.x]

    with torch.no_grad(), oracle_processors(unet, controller) as layers:
        # ---- warm-up: evaluations at t_0..t_{k-1}, steps of order j to t_j ----
        if align_warmup:
            for j in range(order):
                if j > 0:
                    orig.step(grid, j, j, schedule)
                    ref.step(grid, j, j, schedule)
                    orig_latents.append(orig.x)
                eval_recorded("orig", orig, layers)
                eval_recorded("ref", ref, layers)
                eval_cross(j, ref, layers)
                if j > 0:
                    gen.step(grid, j, j, schedule)
                    gen_latents.append(gen.x)
                eval_gen(gen, True, True)
        else:
            for branch, traj in (("orig", orig), ("ref", ref)):
                for j in range(order):
                    if j > 0:
                        traj.step(grid, j, j, schedule)
                        if branch == "orig":
                            orig_latents.append(orig.x)
                    eval_recorded(branch, traj, layers)
            for j in range(order):  # cross: both warm-up times on x_ref(t_{k-1}); the map at t_{k-1} survives
                eval_cross(j, ref, layers)
            for j in range(order):  # gen: every evaluation sees the maps recorded at t_{k-1}
                if j > 0:
                    gen.step(grid, j, j, schedule)
                    gen_latents.append(gen.x)
                eval_gen(gen, True, True)

        # ---- model-history blending: gen's warm-up D outside param <- orig's (independent of tau_b) ----
        if not disable_all:
            gen.d_hist = [torch.where(inside, d_gen, d_orig) for d_gen, d_orig in zip(gen.d_hist, orig.d_hist)]

        # ---- main loop ----
        for s in range(order, steps + 1):
            k_s = step_order(s, steps, order)
            fg_on = flags.fg_on(s)
            orig.step(grid, s, k_s, schedule)
            orig_latents.append(orig.x)
            if s < steps:
                eval_recorded("orig", orig, layers)
            if cross_lag and s < steps:
                eval_cross(s, ref, layers)  # x_ref(t_{s-1}) (or the frozen ref latent), timestep t_s
            if fg_on:  # ref advances only while fg injection is on; afterwards it stays frozen
                ref.step(grid, s, k_s, schedule)
                if s < steps:
                    eval_recorded("ref", ref, layers)
            if not cross_lag and s < steps:
                eval_cross(s, ref, layers)
            gen.step(grid, s, k_s, schedule)
            if s < steps:
                eval_gen(gen, fg_on, flags.bg_on(s))
            if flags.blend(s) and not disable_all:  # after gen's evaluation: D_s saw the unblended latent
                gen.x = torch.where(inside, gen.x, orig.x)
            gen_latents.append(gen.x)

    return {
        "final": gen.x,
        "gen": gen_latents,
        "orig": orig_latents,
        "unet_calls": counts["unet_calls"],
        "sample_evals": counts["sample_evals"],
        "official_sample_evals": counts["official_sample_evals"],
        "trace": trace,
    }

"""Slow, sequential test oracle for PrimeComposer's released composition stage, with its code's structure.

This module is test support, not a test file. It re-implements what PrimeComposer's released sampler computes
(docs/strategies.md §4.3) the way its code runs it, written independently of the batched strategy in
``tficon`` (``tficon.core.primecomposer``, the plan flags, the phase operations and the fused processor):

- each image is inverted on its own with the exceptional prompt, and the inversion keeps its list the way the
  released ``DPMencode`` branch does: the k warm-up data predictions, then the latent after every later step; the list
  is reversed before sampling (:func:`released_inversion_list`);
- there are two passes, one after the other: ``cross`` (the correlation diffuser: TF-ICON's pseudo-cross pass on a
  reference canvas, conditioned on the prompt) and ``gen`` (classifier-free guidance as a batch ``[uncond "", cond
  prompt]``); ``cross`` has a :class:`~official_reference.BranchRecorder` that keeps the pre-softmax, scaled logits of
  every self-attention layer of its most recent complete forward;
- the conditional half of ``gen`` reads that store and overwrites the rows and columns of the object tokens on the
  FULL N x N matrix, rows first, then columns (:func:`rows_and_columns`): no background block, no object block;
- the warm-up (cross at t_0..t_{k-1} on the unedited inverted reference, the map at t_{k-1} surviving; gen at
  t_0..t_{k-1} always injected), the model-history blend with the background *list* entries, the in-place edit of the
  reference list with gen's latent before each cross pass, and the two blends after gen's evaluation (tau_c: whole
  latent from the lists; tau_b: outside the box) are written as the released loop writes them, with ``a * seg +
  b * (1 - seg)`` window arithmetic on in-place slices.

Exact simplifications (dropped work that nothing reads): the classifier-free doubling of the inversion (e* / e*); the
cross batch ``[x_c, x_c, x_r, x_r]`` reduced to ``[x_r]`` with the prompt (its attention hook writes samples 2/3's
output into samples 0/1, and its own trajectory ``x_c`` is reset every step and never read).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional

import torch
from official_reference import BranchRecorder, OracleController, _attend, _split_heads
from torch import Tensor

from tficon.core.solver import NoiseSchedule, multistep_update, step_order, time_grid, to_data_prediction

__all__ = ["primecomposer_composition", "released_bound", "released_inversion_list", "rows_and_columns"]


def released_bound(tau: float, steps: int, order: int) -> int:
    """``int(tau * steps + 1 - order)``: a phase is on at main-loop step s iff s < bound."""
    return int(tau * steps + 1 - order)


def rows_and_columns(gen_logits: Tensor, cross_logits: Tensor, fg: Tensor) -> Tensor:
    """gen's composite: row injection ``L[:, F] = C`` for every query, then column injection ``L[F, :] = C^T``
    (which overwrites the F x F part). gen_logits (heads, N, N), cross_logits (heads, N, |F|)."""
    logits = gen_logits.clone()
    if fg.numel() == 0:
        return logits
    cross = cross_logits.to(logits.dtype)
    logits[:, :, fg] = cross
    logits[:, fg, :] = cross.transpose(-1, -2)
    return logits


class _Processor:
    """attn1 processor of the oracle: ``cross`` (K/V = own object tokens, logits recorded), ``gen`` (batch
    [uncond, cond]; cond gets :func:`rows_and_columns` when injecting) or ``plain``."""

    def __init__(self, layer: str, controller: OracleController):
        self.layer = layer
        self.controller = controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.dim() != 3:
            raise NotImplementedError(f"{self.layer}: the oracle processor is for unmasked self-attention only")
        ctl = self.controller
        residual = hidden_states
        query, key, value = (_split_heads(attn, f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        batch, heads, n_tokens, _ = query.shape
        if ctl.mode == "cross":
            region = ctl.region(n_tokens)
            kv = (region.fg_ref if region.fg_ref.numel() > 0 else region.ref_box).to(hidden_states.device)
            logits = torch.matmul(query, key[:, :, kv].transpose(-1, -2)) * attn.scale
            ctl.recorder.record(self.layer, logits[0])
            out = _attend(logits, value[:, :, kv])
        else:
            logits = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
            if ctl.mode == "gen" and ctl.fg_on:
                region = ctl.region(n_tokens)
                cross = ctl.stores["cross"].read(self.layer)
                composite = rows_and_columns(logits[1], cross, region.fg.to(hidden_states.device))
                logits = torch.stack([logits[0], composite])
            out = _attend(logits, value)
        out = out.transpose(1, 2).reshape(batch, n_tokens, heads * out.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def _processors(unet: Any, controller: OracleController) -> Iterator[list[str]]:
    original = dict(unet.attn_processors)
    attn1 = sorted(name for name in original if name.endswith(".attn1.processor"))
    unet.set_attn_processor({n: _Processor(n, controller) if n in attn1 else p for n, p in original.items()})
    try:
        yield attn1
    finally:
        unet.set_attn_processor(dict(original))


def released_inversion_list(unet, schedule: NoiseSchedule, z: Tensor, e_star: Tensor, steps: int, order: int,
                            prediction_type: str) -> list[Tensor]:
    """One image's ``DPMencode`` run, keeping the released list: [D(u_0)..D(u_{k-1}), x(u_k)..x(u_S)]."""
    grid = time_grid(steps, ascending=True, device=z.device)

    def data(x: Tensor, j: int) -> Tensor:
        t = grid[j].expand(1)
        return to_data_prediction(unet(x, schedule.model_time(t), encoder_hidden_states=e_star).sample.float(), x, t,
                                  schedule, prediction_type)  # fmt: skip

    x = z.float()
    t_hist, d_hist = [grid[0].expand(1)], [data(x, 0)]
    for j in range(1, order):  # low_order_sample
        x = multistep_update(x, t_hist, d_hist, grid[j].expand(1), j, schedule)
        t_hist.append(grid[j].expand(1))
        d_hist.append(data(x, j))
    kept = [d.clone() for d in d_hist]
    for s in range(order, steps + 1):  # sample_one_step
        x = multistep_update(x, t_hist, d_hist, grid[s].expand(1), step_order(s, steps, order), schedule)
        t_hist, d_hist = (t_hist + [grid[s].expand(1)])[-order:], d_hist[-order:]
        if s < steps:
            d_hist = (d_hist + [data(x, s)])[-order:]
        kept.append(x.clone())
    return kept


def primecomposer_composition(
    unet: Any,
    schedule: NoiseSchedule,
    *,
    z_bg: Tensor,
    z_ref: Tensor,
    start: Tensor,
    e_star: Tensor,
    e_uncond: Tensor,
    e_cond: Tensor,
    regions: Mapping[tuple[int, int], Any],
    param_box: Any,
    ref_box: Any,
    seg: Tensor,
    steps: int,
    order: int,
    guidance: float,
    tau_a: float,
    tau_b: float,
    tau_c: float = 0.2,
    prediction_type: str = "epsilon",
) -> dict:
    """Run PrimeComposer's released composition sequentially (module docstring).

    z_bg, z_ref: clean latents (the background, or the cut-and-paste in same mode; the reference canvas); start: gen's
    start latent; regions: (h, w) -> region index (``box``, ``fg``, ``fg_ref``, ``ref_box``); param_box / ref_box:
    latent target and reference boxes (``top``, ``left``, ``bottom``, ``right``); seg: the latent segmentation over the
    reference box, (n, m) 0/1. Returns ``final``, ``gen`` (gen's latent after each step 0..S, after its blend),
    ``orig_inv_list`` / ``ref_inv_list`` (the reversed lists, the reference one as edited), ``trace``.
    """
    k = order
    grid = time_grid(steps, t_end=1.0 / schedule.num_train_timesteps, device=start.device)
    with torch.no_grad():
        orig_inv_list = released_inversion_list(unet, schedule, z_bg, e_star, steps, k, prediction_type)[::-1]
        ref_inv_list = released_inversion_list(unet, schedule, z_ref, e_star, steps, k, prediction_type)[::-1]
    orig_inv_list, ref_inv_list = list(orig_inv_list), list(ref_inv_list)
    inv_bg, inv_ref = orig_inv_list[0].clone(), ref_inv_list[0].clone()
    pr = (slice(None), slice(None), slice(param_box.top, param_box.bottom), slice(param_box.left, param_box.right))
    rr = (slice(None), slice(None), slice(ref_box.top, ref_box.bottom), slice(ref_box.left, ref_box.right))
    seg = seg.to(start)
    mask = torch.zeros_like(start)
    mask[pr] = 1

    recorder = BranchRecorder("cross")
    controller = OracleController(regions=regions, latent_hw=tuple(start.shape[-2:]), stores={"cross": recorder})
    trace: list[tuple] = []

    def eval_cross(ref_init: Tensor, j: int, layers: list[str]) -> None:
        controller.mode, controller.recorder = "cross", recorder
        recorder.begin(("cross", j))
        unet(ref_init, schedule.model_time(grid[j].expand(1)), encoder_hidden_states=e_cond)
        recorder.commit(layers)
        trace.append(("cross", j))

    def eval_gen(x: Tensor, j: int, inject: bool) -> Tensor:
        controller.mode, controller.fg_on = "gen", inject
        t = grid[j].expand(1)
        both = torch.cat([e_uncond, e_cond])
        out = unet(torch.cat([x, x]), schedule.model_time(t.expand(2)), encoder_hidden_states=both).sample
        trace.append(("gen", j, inject))
        u, c = out.float().chunk(2)
        return to_data_prediction(u + guidance * (c - u), x, t, schedule, prediction_type)

    with torch.no_grad(), _processors(unet, controller) as layers:
        # the cross warm-up's own latent: the background list entry 0 with the reference pasted on the object
        # (dead: only the recorded map is read), and the in-place edit of the background list it makes
        orig_inv_list[0][pr] = ref_inv_list[0][rr].clone() * seg + orig_inv_list[0][pr].clone() * (1 - seg)
        for j in range(k):  # cross warm-up: ref_init = the unedited reference list entry 0 at every time
            eval_cross(ref_inv_list[0].clone(), j, layers)
        x = start.float().clone()
        t_hist, d_hist, gen_latents = [], [], [x]
        for j in range(k):  # gen warm-up, always injected with the cross map at t_{k-1}
            if j > 0:
                x = multistep_update(x, t_hist, d_hist, grid[j].expand(1), j, schedule)
                gen_latents.append(x)
            t_hist.append(grid[j].expand(1))
            d_hist.append(eval_gen(x, j, True))
        for i in range(len(d_hist)):  # model-history blend with the background list's noisy latents
            blended = orig_inv_list[i].clone()
            blended[pr] = d_hist[i][pr].clone()
            d_hist[i] = blended
        for s in range(k, steps + 1):
            inject = s < released_bound(tau_a, steps, k)
            if inject:
                ref_inv_list[s][rr] = x[pr].clone() * seg + ref_inv_list[s][rr].clone() * (1 - seg)
                if s < steps:
                    eval_cross(ref_inv_list[s].clone(), s, layers)
            x = multistep_update(x, t_hist, d_hist, grid[s].expand(1), step_order(s, steps, k), schedule)
            t_hist, d_hist = (t_hist + [grid[s].expand(1)])[-k:], d_hist[-k:]
            if s < steps:
                d_hist = (d_hist + [eval_gen(x, s, inject)])[-k:]
            if s < released_bound(tau_c, steps, k):
                blended = orig_inv_list[s].clone()
                blended[pr] = ref_inv_list[s][rr].clone() * seg + blended[pr] * (1 - seg)
                x = blended.clone()
            elif s < released_bound(tau_b, steps, k):
                blended = orig_inv_list[s].clone()
                blended[pr] = x[pr].clone()
                x = blended.clone()
            gen_latents.append(x)
    return {
        "final": x,
        "gen": gen_latents,
        "orig_inv_list": orig_inv_list,
        "ref_inv_list": ref_inv_list,
        "inverted": (inv_bg, inv_ref),
        "mask": mask,
        "trace": trace,
    }

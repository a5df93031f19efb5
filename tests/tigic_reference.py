"""Slow, sequential test oracle for TIGIC's released composition stage, with its code's structure.

This module is test support, not a test file. It re-implements what TIGIC's released ``run.py`` and sampler compute
(docs/strategies.md §4.6) the way that code runs them, written independently of the batched strategy in ``tficon``
(``tigic_step_plan``, the phase operations, ``tficon.composition.tigic_attention``):

- the collage and the reference are inverted one after the other, each on its own, the collage with E('') and
  the reference with E(prompt) (``inv=True`` encodes the text normally in the released encoder);
- the start latent is built as ``run.py`` builds it: the collage's inversion, its box replaced by the second of two box
  noises, then the inverted reference on the object (the first noise is drawn and overwritten);
- three solvers run one after the other, each with its own UNet calls and classifier-free batches ``[uncond, cond]``:
  ``orig`` (the collage's inversion, E('') / E('')), ``ref`` (the collage's inversion, E(prompt) / E(prompt)) and
  ``gen`` (the start latent, E('') / E(prompt), the guidance scale); orig and ref finish their warm-up before gen
  starts it, and in the main loop orig, then ref, then gen move to t_s and are evaluated there;
- orig and ref record the conditional half's pre-softmax logits of every self-attention layer (their most recent
  complete forward); in gen's forward every decoder (``up_blocks``) self-attention overwrites its conditional half's
  FULL N x N logits, ``S = 0.5 S_orig + 0.5 S`` when the background injection is on, then ``S = 0.5 S_ref + 0.5 S``
  when the reference injection is on; encoder and mid layers, and the unconditional half, stay plain;
- the step windows are the released loop's literal comparisons, and after each main-loop step below threshold(1.0)
  gen takes orig's latent outside the box (``blended = orig; blended[param] = gen[param]``).

Exact simplification (dropped work that nothing reads): the classifier-free doubling of the inversions (the same
embedding in both halves, so the guided output is the conditional one), as in ``primecomposer_reference``.

One generalisation: the released loop runs ``range(order, 21)``, i.e. it assumes 20 steps; the oracle runs
``range(order, steps + 1)`` so that tiny tests can use fewer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from official_reference import BranchRecorder, _attend, _split_heads
from primecomposer_reference import released_inversion_list
from torch import Tensor

from tficon.core.solver import NoiseSchedule, multistep_update, step_order, time_grid, to_data_prediction

__all__ = ["released_bound", "tigic_composition"]


def released_bound(fraction: float, steps: int, order: int) -> int:
    """``int(fraction * steps + 1 - order)``, the released sampler's hard-coded step bounds."""
    return int(fraction * steps + 1 - order)


class _Controller:
    def __init__(self) -> None:
        self.mode = "plain"  # "record" (orig / ref), "gen" or "plain"
        self.recorder: BranchRecorder | None = None
        self.stores: dict[str, BranchRecorder] = {}
        self.inject = False  # reference mix
        self.inject_bg = False  # background mix
        self.mixed: list[str] = []  # layers whose cond logits gen mixed in the current forward


class _Processor:
    """attn1 processor of the oracle: full logits, the conditional half recorded (orig / ref) or mixed (gen)."""

    def __init__(self, layer: str, controller: _Controller):
        self.layer = layer
        self.controller = controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.dim() != 3:
            raise NotImplementedError(f"{self.layer}: the oracle processor is for unmasked self-attention only")
        ctl = self.controller
        residual = hidden_states
        query, key, value = (_split_heads(attn, f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        batch, heads, n_tokens, _ = query.shape
        sim = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale  # (2, heads, N, N)
        if ctl.mode == "record":
            ctl.recorder.record(self.layer, sim[1])  # the conditional half, pre-softmax
        decoder = self.layer.startswith("up_blocks")
        if ctl.mode == "gen" and decoder and (ctl.inject or ctl.inject_bg):
            cond = sim[1]
            if ctl.inject_bg:
                cond = ctl.stores["orig"].read(self.layer) * 0.5 + 0.5 * cond
            if ctl.inject:
                cond = ctl.stores["ref"].read(self.layer) * 0.5 + 0.5 * cond
            sim = torch.stack([sim[0], cond])
            ctl.mixed.append(self.layer)
        out = _attend(sim, value)
        out = out.transpose(1, 2).reshape(batch, n_tokens, heads * out.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def _processors(unet: Any, controller: _Controller) -> Iterator[list[str]]:
    original = dict(unet.attn_processors)
    attn1 = sorted(name for name in original if name.endswith(".attn1.processor"))
    unet.set_attn_processor({n: _Processor(n[: -len(".processor")], controller) if n in attn1 else p
                             for n, p in original.items()})  # fmt: skip
    try:
        yield [n[: -len(".processor")] for n in attn1]
    finally:
        unet.set_attn_processor(dict(original))


def tigic_composition(
    unet: Any,
    schedule: NoiseSchedule,
    *,
    z_collage: Tensor,
    z_ref: Tensor,
    e_empty: Tensor,
    e_prompt: Tensor,
    noises: tuple[Tensor, Tensor],
    param_box: Any,
    ref_box: Any,
    seg: Tensor,
    steps: int,
    order: int,
    guidance: float,
    prediction_type: str = "epsilon",
) -> dict:
    """Run TIGIC's released composition sequentially (module docstring).

    z_collage, z_ref: clean latents of the pixel collage and of the reference canvas; noises: the two box noises the
    start latent draws, in order; param_box / ref_box: latent target and reference boxes (``top``, ``left``,
    ``bottom``, ``right``); seg: the latent segmentation over the reference box, (n, m) 0/1. Returns ``final``,
    ``gen`` (gen's latent after each step 0..S), ``orig`` / ``ref`` (their latents by grid index), ``inverted``
    (collage, reference), ``start`` and ``trace`` (each gen evaluation with its mixes and mixed layers).
    """
    k = order
    grid = time_grid(steps, t_end=1.0 / schedule.num_train_timesteps, device=z_collage.device)
    with torch.no_grad():
        x_collage = released_inversion_list(unet, schedule, z_collage, e_empty, steps, k, prediction_type)[-1]
        x_ref = released_inversion_list(unet, schedule, z_ref, e_prompt, steps, k, prediction_type)[-1]
    pr = (slice(None), slice(None), slice(param_box.top, param_box.bottom), slice(param_box.left, param_box.right))
    rr = (slice(None), slice(None), slice(ref_box.top, ref_box.bottom), slice(ref_box.left, ref_box.right))
    seg = seg.to(x_collage)
    start = x_collage.clone()
    start[pr] = noises[1].to(start)  # the first noise only feeds a latent whose box is overwritten here
    start[pr] = start[pr].clone() * (1 - seg) + x_ref[rr].clone() * seg

    controller = _Controller()
    stores = {"orig": BranchRecorder("orig"), "ref": BranchRecorder("ref")}
    controller.stores = stores
    trace: list[tuple] = []

    def evaluate(name: str, x: Tensor, j: int, layers: list[str], uncond: Tensor, cond: Tensor, scale: float):
        t = grid[j].expand(1)
        if name in stores:
            controller.mode, controller.recorder = "record", stores[name]
            stores[name].begin((name, j))
        else:
            controller.mode, controller.mixed = "gen", []
        both = torch.cat([uncond, cond])
        out = unet(torch.cat([x, x]), schedule.model_time(t.expand(2)), encoder_hidden_states=both).sample.float()
        if name in stores:
            stores[name].commit(layers)
        else:
            trace.append((j, controller.inject, controller.inject_bg, tuple(controller.mixed)))
        u, c = out.chunk(2)
        return to_data_prediction(u + scale * (c - u), x, t, schedule, prediction_type)

    conditioning = {"orig": (e_empty, e_empty), "ref": (e_prompt, e_prompt), "gen": (e_empty, e_prompt)}
    latents = {"orig": [x_collage.clone()], "ref": [x_collage.clone()], "gen": [start.clone()]}
    solvers = {name: {"x": latents[name][0], "t": [], "d": []} for name in latents}

    def warm_up(name: str, layers: list[str]) -> None:  # the released sample_lower
        solver = solvers[name]
        for j in range(k):
            if j > 0:
                solver["x"] = multistep_update(solver["x"], solver["t"], solver["d"], grid[j].expand(1), j, schedule)
                latents[name].append(solver["x"])
            solver["t"].append(grid[j].expand(1))
            solver["d"].append(evaluate(name, solver["x"], j, layers, *conditioning[name], guidance))

    def one_step(name: str, s: int, layers: list[str]) -> None:  # the released sample_one_step
        solver = solvers[name]
        solver["x"] = multistep_update(solver["x"], solver["t"], solver["d"], grid[s].expand(1),
                                       step_order(s, steps, k), schedule)  # fmt: skip
        solver["t"], solver["d"] = (solver["t"] + [grid[s].expand(1)])[-k:], solver["d"][-k:]
        if s < steps:
            solver["d"] = (solver["d"] + [evaluate(name, solver["x"], s, layers, *conditioning[name], guidance)])[-k:]
        latents[name].append(solver["x"])

    with torch.no_grad(), _processors(unet, controller) as layers:
        warm_up("orig", layers)
        warm_up("ref", layers)
        controller.inject, controller.inject_bg = True, False
        warm_up("gen", layers)
        for s in range(k, steps + 1):
            one_step("orig", s, layers)
            one_step("ref", s, layers)
            controller.inject = released_bound(0.2, steps, k) <= s <= released_bound(0.5, steps, k)
            controller.inject_bg = released_bound(0.5, steps, k) > s > int(0.0 * steps + 1 - k)
            one_step("gen", s, layers)
            if s < released_bound(1.0, steps, k):
                blended = solvers["orig"]["x"].clone()
                blended[pr] = solvers["gen"]["x"][pr].clone()
                solvers["gen"]["x"] = blended.clone()
                latents["gen"][-1] = solvers["gen"]["x"]
    return {
        "final": solvers["gen"]["x"],
        "gen": latents["gen"],
        "orig": latents["orig"],
        "ref": latents["ref"],
        "inverted": (x_collage, x_ref),
        "start": start,
        "trace": trace,
    }

"""Self-checks of the sequential official-structure oracle in tests/official_reference.py.

Everything runs on a tiny random SD-2-shaped UNet (fp32, CPU, 8x8 latent, self-attention at 8x8 and 4x4; a 16x16
latent is ~10x slower on the shared CI cores and checks nothing more).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from official_reference import (
    BranchRecorder,
    OracleController,
    composite_logits,
    official_composition,
    official_flags,
    oracle_processors,
)

from tficon.core.placement import Box, RegionIndex
from tficon.core.solver import NoiseSchedule, sample

LATENT = 8
TEXT_LEN, TEXT_DIM = 7, 32


# ------------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=(2, 4),  # = heads per level in diffusers' naming
        norm_num_groups=8,
        use_linear_projection=True,
    )
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config(
        {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    )


def _indices(top: int, left: int, bottom: int, right: int, width: int) -> torch.Tensor:
    rows = torch.arange(top, bottom)
    cols = torch.arange(left, right)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def _region(size: int, ref: Box, target: Box, crop: torch.Tensor) -> RegionIndex:
    """Spec 2.7 index sets on a size x size grid from a reference box, a same-size target box and a 0/1 crop."""
    assert crop.shape == (ref.height, ref.width) == (target.height, target.width)
    kept = torch.nonzero(crop.reshape(-1)).reshape(-1).to(torch.long)
    u, v = kept // ref.width, kept % ref.width
    return RegionIndex(
        height=size,
        width=size,
        box=_indices(target.top, target.left, target.bottom, target.right, size),
        fg=(target.top + u) * size + (target.left + v),
        fg_ref=(ref.top + u) * size + (ref.left + v),
        fg_crop=kept,
        ref_box=_indices(ref.top, ref.left, ref.bottom, ref.right, size),
    )


def _scene(empty_coarse: bool = False) -> tuple[dict, Box]:
    """Off-centre target boxes (not the reference box translated to the same place) and a blob-shaped object.

    With ``empty_coarse`` the object has no token at 4x4 (like the thin Eiffel tower sample), so those layers fall
    back to the whole reference box in the pseudo-cross pass and skip fg injection.
    """
    crop8 = torch.zeros(4, 4, dtype=torch.long)
    crop8[1:4, 1:3] = 1
    crop8[0, 2] = 1
    crop4 = torch.zeros(2, 3, dtype=torch.long)
    if not empty_coarse:
        crop4[0, 1] = 1
        crop4[1, 0:2] = 1
    regions = {
        (8, 8): _region(8, Box(1, 3, 5, 7), Box(3, 1, 7, 5), crop8),
        (4, 4): _region(4, Box(0, 1, 2, 4), Box(1, 0, 3, 3), crop4),
    }
    return regions, Box(3, 1, 7, 5)


@pytest.fixture(scope="module")
def inputs() -> dict:
    gen = torch.Generator().manual_seed(1)
    x_bg = torch.randn(1, 4, LATENT, LATENT, generator=gen)
    x_ref = torch.randn(1, 4, LATENT, LATENT, generator=gen)
    start = x_bg.clone()
    start[..., 3:7, 1:5] = torch.randn(1, 4, 4, 4, generator=gen)
    emb = {name: torch.randn(1, TEXT_LEN, TEXT_DIM, generator=gen) for name in ("e_star", "e_uncond", "e_cond")}
    return {"x_bg_T": x_bg, "x_ref_T": x_ref, "start": start, **emb}


def _run(unet, schedule, inputs, *, empty_coarse=False, **kwargs) -> dict:
    regions, param = _scene(empty_coarse)
    options = dict(regions=regions, param_box=param, steps=6, order=2, guidance=5.0, tau_a=0.4, tau_b=0.8)
    options.update(kwargs)
    return official_composition(unet, schedule, **inputs, **options)


def _outside(x: torch.Tensor, box: Box) -> torch.Tensor:
    mask = torch.ones(x.shape[-2:], dtype=torch.bool)
    mask[box.slices()] = False
    return x[..., mask]


# ------------------------------------------------------------------------------------------------------------------
# Flags (docs/algorithm.md §8.4 table)
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "steps, order, tau_a, tau_b, expected",
    [
        (20, 2, 0.4, 0.8, (7, 7, 15)),  # fg/bg evals 0-6, blends after s = 2..14
        (20, 1, 0.4, 0.8, (8, 8, 16)),
        (20, 3, 0.4, 0.8, (6, 6, 14)),
        (50, 2, 0.4, 0.8, (19, 19, 39)),
        (20, 2, 0.0, 0.0, (-1, 7, -1)),  # only warm-up injects fg; no blending
        (20, 2, 1.0, 1.0, (19, 7, 19)),  # last 2 steps unblended
        (20, 2, 0.3, 0.8, (5, 7, 15)),  # 0.3 * 20 = 6.000000000000001
        (20, 2, 0.6, 0.8, (11, 7, 15)),
    ],
)
def test_flag_bounds_match_spec_table(steps, order, tau_a, tau_b, expected):
    flags = official_flags(steps, order, tau_a, tau_b)
    assert (flags.fg_bound, flags.bg_bound, flags.blend_bound) == expected
    assert [s for s in range(order, steps + 1) if flags.blend(s)] == list(range(order, max(order, expected[2])))


# ------------------------------------------------------------------------------------------------------------------
# Composite (docs/algorithm.md §9) against a direct piecewise evaluation of the table
# ------------------------------------------------------------------------------------------------------------------


def _piecewise(G, O, Rf, C, box, fg, fg_ref, fg_on, bg_on):
    heads, n, _ = G.shape
    box_set = set(box.tolist())
    pos = {f: a for a, f in enumerate(fg.tolist())}
    fg_active = fg_on and len(pos) > 0
    out = torch.empty_like(G)
    for i in range(n):
        for j in range(n):
            if fg_active and i in pos and j in pos:
                value = Rf[:, fg_ref[pos[i]], fg_ref[pos[j]]]
            elif fg_active and i in pos:
                value = C[:, j, pos[i]]
            elif fg_active and j in pos:
                value = C[:, i, pos[j]]
            elif bg_on and i not in box_set and j not in box_set:
                value = O[:, i, j]
            else:
                value = G[:, i, j]
            out[:, i, j] = value
    return out


@pytest.mark.parametrize("fg_on, bg_on", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("empty_object", [False, True])
def test_composite_matches_section9_table(fg_on, bg_on, empty_object):
    size, heads = 6, 2
    gen = torch.Generator().manual_seed(3)
    crop = torch.tensor([[0, 1, 1], [1, 1, 0], [0, 1, 0]]) * (0 if empty_object else 1)
    region = _region(size, Box(0, 3, 3, 6), Box(2, 1, 5, 4), crop)  # off-centre target, reference top-right
    n = size * size
    G, O, Rf = (torch.randn(heads, n, n, generator=gen) for _ in range(3))
    C = torch.randn(heads, n, max(region.fg.numel(), 1), generator=gen)[..., : region.fg.numel()]
    got = composite_logits(G, O, Rf, C, region.box, region.fg, region.fg_ref, fg_on=fg_on, bg_on=bg_on)
    want = _piecewise(G, O, Rf, C, region.box, region.fg, region.fg_ref, fg_on, bg_on)
    assert torch.equal(got, want)
    assert torch.equal(G, G.clone())  # inputs untouched
    if not fg_on and not bg_on:
        assert torch.equal(got, G)


def test_composite_rejects_missing_sources():
    region = _region(4, Box(0, 0, 2, 2), Box(2, 2, 4, 4), torch.ones(2, 2, dtype=torch.long))
    G = torch.zeros(1, 16, 16)
    with pytest.raises(ValueError, match="orig_logits"):
        composite_logits(G, None, None, None, region.box, region.fg, region.fg_ref, fg_on=False, bg_on=True)
    with pytest.raises(ValueError, match="cross_logits"):
        composite_logits(G, G, G, torch.zeros(1, 16, 3), region.box, region.fg, region.fg_ref, fg_on=True, bg_on=False)


# ------------------------------------------------------------------------------------------------------------------
# The processor inside the UNet
# ------------------------------------------------------------------------------------------------------------------


def _forward(unet, x, emb, t=500.0):
    return unet(x, torch.full((x.shape[0],), t), encoder_hidden_states=emb).sample


def test_plain_and_record_modes_match_stock_attention(unet, inputs):
    x, emb = inputs["x_bg_T"], inputs["e_star"]
    regions, _ = _scene()
    stock = _forward(unet, x, emb)
    before = dict(unet.attn_processors)
    controller = OracleController(regions=regions, latent_hw=(LATENT, LATENT))
    recorder = BranchRecorder("orig")
    with oracle_processors(unet, controller) as layers:
        assert len(layers) == 7 and all(name.endswith("attn1.processor") for name in layers)
        during = unet.attn_processors
        assert all(during[name] is before[name] for name in before if name.endswith("attn2.processor"))
        plain = _forward(unet, x, emb)
        controller.mode, controller.recorder = "record", recorder
        recorder.begin(("orig", 0))
        recorded = _forward(unet, x, emb)
        recorder.commit(layers)
    assert all(unet.attn_processors[name] is before[name] for name in before)  # restored
    torch.testing.assert_close(plain, stock, atol=1e-5, rtol=1e-5)
    assert torch.equal(recorded, plain)
    shapes = {name: tuple(recorder.read(name).shape) for name in layers}
    assert sorted(set(shapes.values())) == [(2, 64, 64), (4, 16, 16)]


@pytest.mark.parametrize("use_fallback", [False, True])
def test_cross_pass_over_the_whole_image_is_a_plain_forward(unet, inputs, use_fallback):
    """K/V restricted to R (or to the whole reference box when R is empty) equals full attention when that set
    is every position in row-major order; and a restriction to a strict subset changes the output."""
    x, emb = inputs["x_ref_T"], inputs["e_star"]
    regions = {}
    for size in (8, 4):
        everything = torch.arange(size * size)
        nothing = torch.zeros(0, dtype=torch.long)
        obj = nothing if use_fallback else everything
        regions[(size, size)] = RegionIndex(size, size, everything, obj, obj, obj, everything)
    stock = _forward(unet, x, emb)
    recorder = BranchRecorder("cross")
    controller = OracleController(regions=regions, latent_hw=(LATENT, LATENT), mode="cross", recorder=recorder)
    with oracle_processors(unet, controller) as layers:
        recorder.begin(("cross", 0, 0))
        full = _forward(unet, x, emb)
        recorder.commit(layers)
        controller.regions, _ = _scene()
        recorder.begin(("cross", 0, 0))
        restricted = _forward(unet, x, emb)
    torch.testing.assert_close(full, stock, atol=1e-5, rtol=1e-5)
    assert (restricted - stock).abs().max() > 1e-3
    assert sorted({tuple(recorder.read(name).shape) for name in layers}) == [(2, 64, 64), (4, 16, 16)]


def test_gen_composite_reads_the_matching_layers(unet, inputs):
    """If every source map comes from gen's own conditional input, the composite is gen's own attention again,
    layer by layer (bg: orig on the same latent and prompt; fg: ref and a whole-image pseudo-cross). Sources from
    another latent change the output. This checks layer matching, the cond half and the region lookup."""
    x = inputs["start"]
    e_u, e_c = inputs["e_uncond"], inputs["e_cond"]
    pair = torch.cat([x, x])
    emb = torch.cat([e_u, e_c])
    stock = _forward(unet, pair, emb)
    regions, _ = _scene()
    whole = {}
    for size in (8, 4):
        everything = torch.arange(size * size)
        whole[(size, size)] = RegionIndex(size, size, everything, everything, everything, everything, everything)
    stores = {name: BranchRecorder(name) for name in ("orig", "ref", "cross")}
    controller = OracleController(regions=regions, latent_hw=(LATENT, LATENT), stores=stores)

    def record(branch, latent, mode, region_map):
        controller.mode, controller.recorder, controller.regions = mode, stores[branch], region_map
        stores[branch].begin((branch, 0))
        _forward(unet, latent, e_c)
        stores[branch].commit(layers)

    def gen_forward(fg_on, bg_on, region_map):
        controller.mode, controller.fg_on, controller.bg_on, controller.regions = "gen", fg_on, bg_on, region_map
        return _forward(unet, pair, emb)

    with oracle_processors(unet, controller) as layers:
        record("orig", x, "record", regions)
        bg_self = gen_forward(False, True, regions)
        record("ref", x, "record", whole)
        record("cross", x, "cross", whole)
        fg_self = gen_forward(True, False, whole)
        record("orig", inputs["x_bg_T"], "record", regions)
        bg_other = gen_forward(False, True, regions)
    for out in (bg_self, fg_self):
        torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bg_other[0], stock[0], atol=1e-5, rtol=1e-5)
    assert (bg_other[1] - stock[1]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------------------------
# The runner
# ------------------------------------------------------------------------------------------------------------------


def _plain_cfg(unet, schedule, inputs, steps, order, guidance):
    e = torch.cat([inputs["e_uncond"], inputs["e_cond"]])

    def model_fn(x, model_t):
        out = unet(torch.cat([x, x]), torch.cat([model_t, model_t]), encoder_hidden_states=e).sample
        uncond, cond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    return sample(model_fn, inputs["start"], schedule, steps, order)


def test_disable_all_is_plain_cfg_sampling_and_official_flags_are_not(unet, schedule, inputs):
    plain = _plain_cfg(unet, schedule, inputs, steps=6, order=2, guidance=5.0)
    off = _run(unet, schedule, inputs, disable_all=True)
    torch.testing.assert_close(off["final"], plain, atol=1e-4, rtol=1e-4)
    assert all(not fg and not bg and reads == () for _, _, fg, bg, reads in
               (entry for entry in off["trace"] if entry[0] == "gen"))
    # tau_a = tau_b = 0 (and bg bound int(0.4 * 6 - 1) = 1): no injection in the main loop and no x-blend, but
    # the warm-up injection and the model-history blend still act, so gen must differ from plain sampling.
    official = _run(unet, schedule, inputs, tau_a=0.0, tau_b=0.0)
    gen_flags = [entry[1:4] for entry in official["trace"] if entry[0] == "gen"]
    assert gen_flags == [(0, True, True), (1, True, True)] + [(s, False, False) for s in range(2, 6)]
    assert (official["final"] - plain).abs().max() > 1e-2


def test_blend_invariants(unet, schedule, inputs):
    steps, order = 8, 2
    _, param = _scene()
    result = _run(unet, schedule, inputs, steps=steps, tau_b=0.8)  # blend bound int(6.4 - 1) = 5
    gen, orig = result["gen"], result["orig"]
    assert len(gen) == len(orig) == steps + 1
    for s in range(1, steps + 1):
        same = torch.equal(_outside(gen[s], param), _outside(orig[s], param))
        assert same == (order <= s < 5), s
    # tau_b >= (S + k) / S: every main-loop step blends, the last one included
    result = _run(unet, schedule, inputs, steps=steps, tau_b=1.3)
    for g, o in zip(result["gen"][order:], result["orig"][order:]):
        assert torch.equal(_outside(g, param), _outside(o, param))
    assert torch.equal(_outside(result["final"], param), _outside(result["orig"][-1], param))
    # ... and orig is the plain unguided reconstruction of x_bg_T with the exceptional prompt
    e_star = inputs["e_star"]
    reconstruction = sample(
        lambda x, t: unet(x, t, encoder_hidden_states=e_star).sample, inputs["x_bg_T"], schedule, steps, order
    )
    torch.testing.assert_close(result["orig"][-1], reconstruction, atol=1e-4, rtol=1e-4)
    assert (result["final"] - reconstruction)[..., param.top:param.bottom, param.left:param.right].abs().max() > 1e-2


def _tags(*tags):
    return tuple(sorted(tags))


def test_trace_reproduces_official_order_warmup_maps_and_lag(unet, schedule, inputs):
    # S = 6, k = 2: fg bound int(0.7*6 - 1) = 3, bg bound int(0.9*6 - 1) = 4, blend bound int(0.8*6 - 1) = 3
    opts = dict(steps=6, tau_a=0.7, tau_b=0.8, tau_bg=0.9, empty_coarse=True)
    official = _run(unet, schedule, inputs, **opts)
    warm_maps = _tags(("orig", 1), ("ref", 1), ("cross", 1, 1))
    assert official["trace"] == [
        ("orig", 0), ("orig", 1), ("ref", 0), ("ref", 1), ("cross", 0, 1), ("cross", 1, 1),
        ("gen", 0, True, True, warm_maps), ("gen", 1, True, True, warm_maps),
        ("orig", 2), ("cross", 2, 1), ("ref", 2),
        ("gen", 2, True, True, _tags(("orig", 2), ("ref", 2), ("cross", 2, 1))),
        ("orig", 3), ("cross", 3, 2), ("gen", 3, False, True, _tags(("orig", 3))),
        ("orig", 4), ("cross", 4, 2), ("gen", 4, False, False, ()),
        ("orig", 5), ("cross", 5, 2), ("gen", 5, False, False, ()),
    ]
    assert official["unet_calls"] == len(official["trace"]) == 21

    aligned = _run(unet, schedule, inputs, align_warmup=True, **opts)
    assert aligned["trace"][:8] == [
        ("orig", 0), ("ref", 0), ("cross", 0, 0),
        ("gen", 0, True, True, _tags(("orig", 0), ("ref", 0), ("cross", 0, 0))),
        ("orig", 1), ("ref", 1), ("cross", 1, 1), ("gen", 1, True, True, warm_maps),
    ]
    assert aligned["trace"][8:] == official["trace"][8:]
    assert all(torch.equal(a, b) for a, b in zip(aligned["orig"], official["orig"]))
    assert (aligned["final"] - official["final"]).abs().max() > 1e-3

    no_lag = _run(unet, schedule, inputs, cross_lag=False, **opts)
    assert no_lag["trace"][8:12] == [
        ("orig", 2), ("ref", 2), ("cross", 2, 2),
        ("gen", 2, True, True, _tags(("orig", 2), ("ref", 2), ("cross", 2, 2))),
    ]
    assert no_lag["trace"][12:14] == [("orig", 3), ("cross", 3, 2)]  # ref stays frozen at t_2
    assert torch.equal(no_lag["gen"][2], official["gen"][2])  # identical up to the first lagged read
    assert (no_lag["final"] - official["final"]).abs().max() > 1e-4


def test_unet_call_counts_for_20_steps_order_2(unet, schedule, inputs):
    result = _run(unet, schedule, inputs, steps=20, order=2, tau_a=0.4, tau_b=0.8)
    trace = result["trace"]
    warm, loop = trace[:8], trace[8:]

    def per_branch(entries):
        return {b: sum(1 for e in entries if e[0] == b) for b in ("orig", "ref", "cross", "gen")}

    assert per_branch(warm) == {"orig": 2, "ref": 2, "cross": 2, "gen": 2}
    assert per_branch(loop) == {"orig": 18, "ref": 5, "cross": 18, "gen": 18}
    # docs/algorithm.md §13.6: 8 + 59 calls; 20 + 154 = 174 official sample-evals (orig/ref x2, cross x4, gen x2 per call);
    # this oracle drops the exact no-op doublings: 1 per orig/ref/cross call, 2 per gen call = 87.
    assert result["unet_calls"] == 67
    assert result["official_sample_evals"] == 174
    assert result["sample_evals"] == 87
    assert len(result["gen"]) == len(result["orig"]) == 21


def test_rejects_bad_inputs(unet, schedule, inputs):
    before = dict(unet.attn_processors)
    with pytest.raises(ValueError, match="param_box"):
        _run(unet, schedule, inputs, param_box=Box(3, 1, 9, 5))
    bad = dict(inputs, start=inputs["start"][..., :4])
    with pytest.raises(ValueError, match="start"):
        _run(unet, schedule, bad)
    with pytest.raises(ValueError, match="regions has no entry"):
        regions, param = _scene()
        official_composition(unet, schedule, regions={(8, 8): regions[(8, 8)]}, param_box=param, steps=3,
                             order=2, guidance=5.0, tau_a=0.4, tau_b=0.8, **inputs)
    assert all(unet.attn_processors[name] is before[name] for name in before)  # restored after the failure

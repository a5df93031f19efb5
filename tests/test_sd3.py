"""TF-ICON on Stable Diffusion 3 / 3.5 (docs/algorithm.md §16), on the tiny random SD3.5-shaped model of
tficon.model.tiny_sd3.

The flow schedule is checked against diffusers' ``FlowMatchEulerDiscreteScheduler`` and, through the DPM-Solver++,
against ODEs with known solutions (error orders measured); the inversion against its reconstruction on the tiny
model; the text conditioning against ``StableDiffusion3Pipeline.encode_prompt``; the composite joint attention
against a materialised transcription; the Session's phases, rewinds, updates and capture in float32, float16 and
bfloat16; loading from a folder and the refusal of folders and files of the wrong family.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from tiny_setup import SIZE, new_session

import tficon
from tficon.composition.attention import BatchLayout, InjectionController, composite_logits
from tficon.composition.engine import Engine
from tficon.composition.joint_attention import (
    CompositeJointAttention,
    fused_joint_composite_attention,
    joint_composite_attention,
)
from tficon.core import solver
from tficon.core.flow import FlowSchedule
from tficon.core.placement import region_indices
from tficon.model import load_model
from tficon.model.errors import CheckpointFileError
from tficon.model.text import Conditioning, exceptional_embedding_sdxl
from tficon.model.tiny_sd3 import TINY_SD3_T5_LENGTH, save_tiny_sd3_model, tiny_sd3_components, tiny_sd3_model

STEPS = 6


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_model()


@pytest.fixture(scope="module")
def sd3_session(sd3, sample):
    return new_session(sd3, sample, steps=STEPS).run()


# ------------------------------------------------------------------------------------------------ the flow
def test_flow_schedule_is_the_schedulers_shifted_sigma():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    schedule = FlowSchedule.from_scheduler_config(scheduler.config)
    assert schedule.shift == 3.0 and schedule.num_train_timesteps == 1000
    # the scheduler's training sigmas are the shifted linear times n / 1000
    t = torch.arange(1, 1001, dtype=torch.float32) / 1000
    assert torch.allclose(schedule.sigma(t).flip(0), scheduler.sigmas.float(), atol=1e-6)
    grid = torch.linspace(0.05, 0.95, 19)
    alpha, sigma = schedule.alpha(grid), schedule.sigma(grid)
    assert torch.allclose(alpha + sigma, torch.ones_like(grid), atol=1e-6)
    assert torch.allclose(schedule.lambda_(grid), torch.log(alpha / sigma), atol=1e-5)
    assert torch.allclose(schedule.model_time(grid), 1000 * sigma)
    # the noisy end stays off alpha = 0 (finite lambda); alpha keeps its relative precision there
    assert schedule.t_start == 0.999 and schedule.t_end == 0.001
    assert math.isfinite(float(schedule.lambda_(schedule.t_start)))
    t32 = float(torch.tensor(schedule.t_start, dtype=torch.float32))  # the float32 time the solver holds
    assert float(schedule.alpha(schedule.t_start)) == pytest.approx((1 - t32) / (1 + 2 * t32), rel=1e-6)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        FlowSchedule.from_scheduler_config({"shift": 3.0, "use_dynamic_shifting": True})
    with pytest.raises(ValueError, match="shift must be a positive number"):
        FlowSchedule(0.0)


def test_flow_data_prediction_recovers_x0():
    schedule = FlowSchedule(3.0)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    t = torch.tensor([0.3, 0.8])
    a, s = schedule.alpha(t)[:, None, None], schedule.sigma(t)[:, None, None]
    x = a * x0 + s * eps
    d = solver.to_data_prediction(eps - x0, x, t, schedule, "flow_prediction")
    assert torch.allclose(d, x0, atol=1e-5)


def _gaussian_flow(schedule: FlowSchedule, mu: float, s: float):
    """Data N(mu, s^2): the exact velocity, and the exact ODE map x(t0) -> x(t1) (x = alpha mu + r xi, xi constant,
    r = sqrt(alpha^2 s^2 + sigma^2))."""

    def velocity(x, model_t):
        sigma = (model_t / 1000.0).reshape(-1, *[1] * (x.dim() - 1))
        alpha = 1 - sigma
        d = mu + alpha * s * s / (alpha * alpha * s * s + sigma * sigma) * (x - alpha * mu)
        return (x - d) / sigma

    def exact(x, t0, t1):
        a0, s0, a1, s1 = (float(f(t)) for t in (t0, t1) for f in (schedule.alpha, schedule.sigma))
        return a1 * mu + math.hypot(a1 * s, s1) * (x.double() - a0 * mu) / math.hypot(a0 * s, s0)

    return velocity, exact


def test_a_point_mass_is_solved_exactly_at_every_order():
    """D constant in lambda: every multistep update is exact, whatever the step count."""
    schedule = FlowSchedule(3.0)
    x0 = torch.tensor([[0.5, -1.0, 2.0]])
    noise = torch.tensor([[1.0, 0.3, -0.7]])
    x_start = schedule.alpha(schedule.t_start) * x0 + schedule.sigma(schedule.t_start) * noise
    velocity = lambda x, model_t: (x - x0) / (model_t / 1000.0)[:, None]  # noqa: E731
    for order in (1, 2, 3):
        out = solver.sample(velocity, x_start, schedule, 7, order, prediction_type="flow_prediction")
        want = schedule.alpha(schedule.t_end) * x0 + schedule.sigma(schedule.t_end) * noise
        assert torch.allclose(out, want, atol=2e-5), order


@pytest.mark.parametrize("direction", ["sample", "invert"])
def test_gaussian_data_converges_at_the_solvers_orders(direction):
    """Known ODE, measured error orders: order 1 -> 1, order 2 -> 2; order 3 -> 2 as well (the official
    formula integrates the quadratic term with half its weight, tests/test_solver.py)."""
    schedule = FlowSchedule(3.0)
    velocity, exact = _gaussian_flow(schedule, mu=0.7, s=0.5)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    run = solver.sample if direction == "sample" else solver.invert
    ends = (schedule.t_start, schedule.t_end) if direction == "sample" else (schedule.t_end, schedule.t_start)
    want = exact(x, *ends)
    for order, minimum in ((1, 0.9), (2, 1.5), (3, 1.5)):
        errors = [(run(velocity, x, schedule, n, order, prediction_type="flow_prediction").double() - want).abs().max().item()
                  for n in (80, 160)]  # fmt: skip
        measured = math.log2(errors[0] / errors[1])
        assert measured >= minimum, f"order {order}: measured {measured:.2f} ({errors})"
        assert errors[1] < 0.12 * float(want.abs().max())


def test_inversion_then_reconstruction_on_the_tiny_model(sd3):
    engine = Engine(sd3)
    z0 = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    model_fn = engine.model_fn(sd3.exceptional_embedding())
    for order in (1, 2):
        errors = []
        for steps in (20, 80):
            x_t = solver.invert(model_fn, z0, engine.schedule, steps, order, prediction_type="flow_prediction")
            back = solver.sample(model_fn, x_t, engine.schedule, steps, order, prediction_type="flow_prediction")
            errors.append(float((back - z0).norm() / z0.norm()))
        assert errors[1] < 0.01 and errors[1] < errors[0] / 3, (order, errors)
    # the engine's inversion integrates the same flow to the schedule's noisy end
    (x_t,), _, evals = engine.invert([z0], 20, 2)
    assert evals == 20
    want = solver.invert(model_fn, z0, engine.schedule, 20, 2, prediction_type="flow_prediction")
    assert torch.equal(x_t, want)


# ------------------------------------------------------------------------------------------------ text
def test_prompt_conditioning_equals_the_sd3_pipeline(sd3):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = sd3.family_rules.pipeline(sd3, FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler_config))
    for prompt in ("a photo of a red cat", ""):
        hidden, _, pooled, _ = pipe.encode_prompt(
            prompt, None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=TINY_SD3_T5_LENGTH
        )
        mine = sd3.encode_prompt(prompt)
        assert mine.hidden.shape == (1, 77 + TINY_SD3_T5_LENGTH, 96) and mine.pooled.shape == (1, 56)
        assert torch.equal(mine.hidden, hidden) and torch.equal(mine.pooled, pooled)
    assert torch.equal(sd3.unconditional_embedding().hidden, sd3.encode_prompt("").hidden)


def test_exceptional_prompt_is_the_sdxl_rule_per_clip_encoder_with_zero_t5_rows(sd3):
    e = sd3.exceptional_embedding()
    assert e.hidden.shape == (1, 77 + TINY_SD3_T5_LENGTH, 96)
    # each CLIP encoder's rows are the SDXL rule (penultimate layer, position-free); then zero padding and T5 zeros
    xl = exceptional_embedding_sdxl((sd3.text_encoder, sd3.text_encoder_2), 7788, 77)
    assert torch.equal(e.hidden[:, :77, :80], xl.hidden)
    assert not e.hidden[:, :77, 80:].any() and not e.hidden[:, 77:].any()
    # pooled: both encoders' pooled embeddings of the same position-free run
    assert e.pooled.shape == (1, 32 + 24) and torch.equal(e.pooled[:, 32:], xl.pooled)
    model = sd3.text_encoder.text_model if hasattr(sd3.text_encoder, "text_model") else sd3.text_encoder
    with torch.no_grad():
        row = model.final_layer_norm(model.encoder(inputs_embeds=model.embeddings.token_embedding(torch.tensor([[7788]])))[0])
        assert torch.allclose(e.pooled[:, :32], sd3.text_encoder.text_projection(row[:, 0]), atol=1e-6)
    assert (e.hidden[:, :77] - sd3.encode_prompt("a cat").hidden[:, :77]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ attention
def _random_rows(n_tokens: int, n_text: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    make = lambda n: torch.randn(5, 4, n, 8, generator=g).to(dtype)  # noqa: E731  (rows, heads, tokens, d)
    return make(n_tokens), make(n_tokens), make(n_tokens), make(n_text), make(n_text)


def _materialised(q, k, v, tk, tv, layout, regions, outside, scale):
    """softmax([composite image logits, gen's own text logits]) [V_G; V_T], built N x (N + T) in float32."""
    q, k, v, tk, tv = (x.float() for x in (q, k, v, tk, tv))
    c = layout.cond
    own = q[c] @ k[c].transpose(-1, -2) * scale
    image = composite_logits(own, query=q, key=k, layout=layout, regions=regions, outside=outside, scale=scale)
    text = q[c] @ tk[c].transpose(-1, -2) * scale
    probs = torch.softmax(torch.cat([image, text], -1), -1)
    return probs @ torch.cat([v[c], tv[c]], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("switches", [dict(fg=True, bg=True), dict(fg=True), dict(bg=True),
                                      dict(fg=True, bg=True, background_queries=True)], ids=str)  # fmt: skip
def test_fused_joint_composite_equals_the_materialised_reference(sd3_session, switches, dtype):
    regions = sd3_session._ensure_controller().regions(64)  # the 8 x 8 token grid of 128-px images
    assert regions.fg.numel() > 0
    layout = BatchLayout(background=0, reference=1, pseudo_cross=2, uncond=3, cond=4, **switches)
    outside = torch.ones(64, dtype=torch.bool)
    outside[regions.box] = False
    q, k, v, tk, tv = _random_rows(64, 11, dtype)
    scale = 8**-0.5
    got = fused_joint_composite_attention(q, k, v, (tk[4], tv[4]), layout=layout, regions=regions,
                                          outside=outside, scale=scale)  # fmt: skip
    want = _materialised(q, k, v, tk, tv, layout, regions, outside, scale)
    assert got.dtype == dtype and got.shape == (4, 64, 8)
    tolerance = {torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert (got.float() - want).abs().max() <= tolerance
    # no text (SD3.5's image-only attn2): the UNet path's composite
    got = fused_joint_composite_attention(q, k, v, None, layout=layout, regions=regions, outside=outside, scale=scale)
    own = q[4].float() @ k[4].float().transpose(-1, -2) * scale
    logits = composite_logits(own, query=q.float(), key=k.float(), layout=layout, regions=regions, outside=outside,
                              scale=scale)  # fmt: skip
    assert (got.float() - torch.softmax(logits, -1) @ v[4].float()).abs().max() <= tolerance


def test_processor_without_injection_is_the_stock_joint_processor(sd3, sample):
    """No layout, or a layout with nothing injected: bitwise JointAttnProcessor2_0 (one SDPA call)."""
    engine = Engine(sd3)
    x = torch.randn(3, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([200.0, 500.0, 900.0])
    e = sd3.family_rules.cat_conditioning([sd3.encode_prompt("a cat")] * 3)
    stock = engine.unet(x, t, e)
    controller = InjectionController((16, 16), lambda h, w: None)
    with joint_composite_attention(sd3.unet, controller) as installed:
        assert set(installed) == set(engine.attention_layers) and len(installed) == 4
        assert torch.equal(engine.unet(x, t, e), stock)
        controller.layout = BatchLayout(background=0, reference=1, cond=2)
        assert torch.equal(engine.unet(x, t, e), stock)
    assert all(type(p).__name__ == "JointAttnProcessor2_0" for p in sd3.unet.attn_processors.values())
    with pytest.raises(ValueError, match="unknown"):
        with joint_composite_attention(sd3.unet, controller, ["transformer_blocks.0.ff"]):
            pass


def test_processor_on_a_joint_layer_equals_a_transcription(sd3_session, sd3):
    """The processor on a real joint block's attention: the cond row's image outputs are the materialised composite
    through the layer's projections; its text outputs, the plain rows and the pseudo-cross row as documented."""
    attn = sd3.unet.transformer_blocks[1].attn
    controller = sd3_session._ensure_controller()
    layout = BatchLayout(background=0, reference=1, pseudo_cross=2, uncond=3, cond=4, fg=True, bg=True)
    controller.layout = layout
    g = torch.Generator().manual_seed(2)
    hidden, context = torch.randn(5, 64, 32, generator=g), torch.randn(5, 7, 32, generator=g)
    try:
        out, out_context = CompositeJointAttention(controller, "transformer_blocks.1.attn")(attn, hidden, context)
    finally:
        controller.layout = None
    heads = lambda x: x.view(5, -1, 4, 8).transpose(1, 2)  # noqa: E731
    with torch.no_grad():
        q, k, v = attn.norm_q(heads(attn.to_q(hidden))), attn.norm_k(heads(attn.to_k(hidden))), heads(attn.to_v(hidden))
        tq = attn.norm_added_q(heads(attn.add_q_proj(context)))
        tk, tv = attn.norm_added_k(heads(attn.add_k_proj(context))), heads(attn.add_v_proj(context))
        regions = controller.regions(64)
        outside = controller.outside_box(64, q.device)
        image = _materialised(q, k, v, tk, tv, layout, regions, outside, attn.scale)
        jq, jk, jv = torch.cat([q, tq], 2), torch.cat([k, tk], 2), torch.cat([v, tv], 2)
        plain = torch.softmax(jq @ jk.transpose(-1, -2) * attn.scale, -1) @ jv
        keep = torch.cat([regions.fg_ref, torch.arange(64, 71)])
        pseudo = torch.softmax(jq[2] @ jk[2][:, keep].transpose(-1, -2) * attn.scale, -1) @ jv[2][:, keep]
        want = plain.clone()
        want[2], want[4, :, :64] = pseudo, image
        want = want.transpose(1, 2).reshape(5, 71, 32)
        want_image, want_text = attn.to_out[0](want[:, :64]), attn.to_add_out(want[:, 64:])
    assert (out - want_image).abs().max() < 1e-5 and (out_context - want_text).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------------ the Session
def test_session_phases_on_sd3(sd3, sd3_session):
    s = sd3_session
    assert s.model.size_multiple == 16 and s.model.attention_levels == 2
    assert s.done and len(s.records) == STEPS + 1
    # the grid: the flow's ends, uniform in unshifted time
    grid = s._grid()
    assert float(grid[0]) == pytest.approx(0.999) and float(grid[-1]) == pytest.approx(0.001)
    # the start latent: the inverted background outside the box
    start, (x_bg, _) = s.compose_start(), s.invert()
    box = s._blend_mask(start)
    assert torch.equal(start[..., ~box], x_bg[..., ~box]) and not torch.equal(start[..., box], x_bg[..., box])
    # the background blend keeps the background branch outside the box at every step
    blended = [record for record in s.records if record.plan.blend]
    assert blended
    for record in blended:
        assert torch.equal(record.generation.x[..., ~box], record.background.x[..., ~box])
    assert all(torch.isfinite(r.generation.x).all() for r in s.records)
    assert s.result.size == (SIZE, SIZE) and s.decode().shape == (1, 3, SIZE, SIZE)
    assert s.stats["unet_calls"] > STEPS


def test_injection_changes_the_composition(sd3, sample, sd3_session):
    plain = new_session(sd3, sample, steps=STEPS, tau_a=0.0, tau_b=0.0).run()
    assert (plain.records[-1].generation.x - sd3_session.records[-1].generation.x).abs().max() > 1e-3


def test_update_and_rewind_equal_a_fresh_session(sd3, sample):
    session = new_session(sd3, sample, steps=STEPS).run()
    first = session.update(tau_b=0.5)
    assert first is not None and 0 < first <= STEPS
    session.run()
    fresh = new_session(sd3, sample, steps=STEPS, tau_b=0.5).run()
    assert all(torch.equal(a.generation.x, b.generation.x) for a, b in zip(session.records, fresh.records))
    inverted = session.invert()
    assert session.update(prompt="a blue dog, sketch style") == 0
    session.run()
    fresh.update(prompt="a blue dog, sketch style")
    fresh.run()
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)
    session.rewind(2)
    session.run()
    assert torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)
    assert session.invert() is inverted


def test_capture_gives_image_to_image_maps_per_block(sd3_session):
    maps = sd3_session.capture_attention(1, max_tokens=64)
    assert {kind for _, kind in maps} == {"composite", "generation", "background", "reference", "pseudo_cross"}
    assert {layer for layer, _ in maps} == set(sd3_session.attention_layers)
    assert all(m.shape == (64, 64) for m in maps.values())
    assert all(torch.allclose(m.sum(-1), torch.ones(64), atol=1e-4) for m in maps.values())
    layer = "transformer_blocks.1.attn"
    assert (maps[(layer, "composite")] - maps[(layer, "generation")]).abs().max() > 1e-4


MIN_PSNR = {torch.float16: 23.0, torch.bfloat16: 18.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_on_cpu(sd3_session, sample, dtype):
    model = tiny_sd3_model(dtype=dtype)
    assert model.unet.dtype == model.text_encoder_2.dtype == model.vae.dtype == dtype
    session = new_session(model, sample, steps=STEPS).run()
    assert session.records[-1].generation.x.dtype == torch.float32
    mse = float(((session.decode() - sd3_session.decode()) / 2).pow(2).mean())
    psnr = 10 * math.log10(1 / mse)
    assert psnr >= MIN_PSNR[dtype], f"{dtype}: {psnr:.1f} dB"
    assert session.capture_attention(1, max_tokens=16)
    first = session.update(tau_b=0.5)
    session.run()
    fresh = new_session(model, sample, steps=STEPS, tau_b=0.5).run()
    assert first > 0 and torch.equal(session.records[-1].generation.x, fresh.records[-1].generation.x)


def test_box_sizes_follow_the_token_grid(sd3, sample):
    from tficon.composition.session import Session

    with pytest.raises(ValueError, match="image_size"):
        Session(sd3, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                image_size=120, steps=2)  # fmt: skip


# ------------------------------------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    return save_tiny_sd3_model(tmp_path_factory.mktemp("sd3") / "tiny-sd3")


def test_load_model_reads_an_sd3_folder(sd3_folder, sd3, tmp_path):
    loaded = load_model(sd3_folder, device="cpu")
    assert loaded.family == "tiny-sd3" and loaded.prediction_type == "flow_prediction" and not loaded.is_sdxl
    assert loaded.text_encoder_3 is None and loaded.t5_length == TINY_SD3_T5_LENGTH and loaded.image_size == 64
    assert loaded.latent_shift == pytest.approx(0.0609) and loaded.latent_channels == 16
    assert loaded.describe().startswith("tiny-sd3 (flow_prediction)")
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(loaded, part).state_dict(), getattr(sd3, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), part
    e = sd3.exceptional_embedding()
    assert torch.equal(loaded.exceptional_embedding().hidden, e.hidden)
    x, t = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((1,), 300.0)
    assert torch.equal(Engine(loaded).unet(x, t, e), Engine(sd3).unet(x, t, e))
    # without tficon.json: family "sd3", native size from the transformer's sample_size, T5 rows 256
    plain = tmp_path / "plain"
    shutil.copytree(sd3_folder, plain)
    (plain / "tficon.json").unlink()
    bare = load_model(plain, device="cpu", dtype="bfloat16")
    assert bare.family == "sd3" and bare.image_size == 64 and bare.t5_length == 256 and bare.unet.dtype == torch.bfloat16
    assert bare.encode_prompt("a cat").hidden.shape == (1, 77 + 256, 96)


def test_vae_round_trip_uses_the_shift_factor(sd3):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = sd3.encode_image(image, None)
    with torch.no_grad():
        mean = sd3.vae.encode(image).latent_dist.mean
        assert torch.allclose(z, (mean - 0.0609) * 1.5305, atol=1e-6)
        assert torch.allclose(sd3.decode_latent(z), sd3.vae.decode(mean).sample.clamp(-1, 1), atol=1e-5)


def test_wrong_family_folders_and_files_are_refused_by_name(sd3_folder, tmp_path):
    # an SD3 folder that tficon.json calls an SD 2.x model
    wrong = tmp_path / "wrong"
    shutil.copytree(sd3_folder, wrong)
    (wrong / "tficon.json").write_text(json.dumps({"family": "tiny-sd2"}))
    with pytest.raises(ValueError, match=r"family 'tiny-sd2' is not an SD3 family"):
        load_model(wrong, device="cpu")
    # another scheduler
    config = json.loads((sd3_folder / "scheduler" / "scheduler_config.json").read_text())
    (wrong / "tficon.json").unlink()
    (wrong / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "_class_name": "DDIMScheduler"}))
    with pytest.raises(ValueError, match="DDIMScheduler"):
        load_model(wrong, device="cpu")
    # a missing component is listed
    incomplete = tmp_path / "incomplete"
    shutil.copytree(sd3_folder, incomplete)
    shutil.rmtree(incomplete / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match=r"incomplete SD3 diffusers folder: missing text_encoder_2/config.json"):
        load_model(incomplete, device="cpu")


def test_sd3_checkpoint_files_without_config_are_refused_by_name(tmp_path, monkeypatch):
    """An SD3 single file needs config= (an SD3 diffusers folder): without it, the family is named in the refusal."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES as KEYS
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "sd3.5_medium.safetensors"
    save_file({k: torch.zeros(4) for k in KEYS["sd35_large"]}, str(path))
    with pytest.raises(CheckpointFileError, match=r"Stable Diffusion 3.5 model; tficon reads an SD3 single file with"):
        load_model(path, device="cpu")


def test_sd3_single_file_with_config_gives_the_folder_models_outputs(sd3_folder, sd3, sample, tmp_path):
    """Stability's single-file layout (tests/sd3_checkpoint.py, checked against diffusers' own converter) with
    config= the folder: the same weights, so the same composition, bit for bit."""
    from safetensors.torch import save_file
    from sd3_checkpoint import check_transformer_round_trip, to_sd3_checkpoint

    checkpoint = to_sd3_checkpoint(sd3.unet, sd3.vae, sd3.text_encoder, sd3.text_encoder_2)
    check_transformer_round_trip(checkpoint, sd3.unet)
    path = tmp_path / "sd3.5_tiny.safetensors"
    save_file(checkpoint, str(path))
    with pytest.raises(ValueError, match="must be a local SD3 diffusers folder"):
        load_model(path, device="cpu", config=tmp_path)
    loaded = load_model(path, device="cpu", config=sd3_folder)
    assert loaded.family == "tiny-sd3" and loaded.text_encoder_3 is None and loaded.t5_length == TINY_SD3_T5_LENGTH
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(loaded, part).state_dict(), getattr(sd3, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), part
    a = new_session(loaded, sample, steps=3).run()
    b = new_session(sd3, sample, steps=3).run()
    assert torch.equal(a.records[-1].generation.x, b.records[-1].generation.x)


def test_tiny_components_build_a_working_sd3_pipeline():
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(**tiny_sd3_components())
    image = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="pt", max_sequence_length=8,
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_conditioning_rows_concatenate(sd3):
    a, b = sd3.encode_prompt("a cat"), sd3.exceptional_embedding()
    both = sd3.family_rules.cat_conditioning([a, b])
    assert isinstance(both, Conditioning) and both.hidden.shape[0] == 2 and torch.equal(both.pooled[1], b.pooled[0])
    with pytest.raises(TypeError, match="cannot mix"):
        sd3.family_rules.cat_conditioning([a, a.hidden])
    x = torch.randn(2, 16, 8, 8)
    with pytest.raises(TypeError, match="Conditioning"):
        Engine(sd3).unet(x, torch.full((2,), 10.0), a.hidden)
    assert F is not None and region_indices is not None


def test_a_unet_folder_called_sd3_is_refused_by_name(tmp_path):
    from tficon.model.tiny import save_tiny_model

    for family in ("sdxl", "sd2"):
        folder = save_tiny_model(tmp_path / family, family)
        (folder / "tficon.json").write_text(json.dumps({"family": "tiny-sd3"}))
        with pytest.raises(ValueError, match=r"family 'tiny-sd3' is an SD3 \(MM-DiT\) family, but the components"):
            load_model(folder, device="cpu")


def test_t5_rows_equal_the_pipeline_and_stay_zero_in_the_exceptional_prompt(sample):
    """With a T5 encoder (a tiny random T5EncoderModel; the tiny CLIP tokenizer stands in for T5's), a prompt's T5
    rows are the pipeline's; e*'s T5 rows stay zeros; a Session runs."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    model = tiny_sd3_model()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        t5 = T5EncoderModel(T5Config(vocab_size=8192, d_model=96, d_kv=8, d_ff=64, num_layers=1, num_heads=2)).eval()
    model.text_encoder_3, model.tokenizer_3 = t5, copy_tokenizer(model.tokenizer)
    model.t5_length = 32  # room for the sample's prompt
    pipe = model.family_rules.pipeline(model, FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config))
    hidden, _, pooled, _ = pipe.encode_prompt("a red cat", None, None, device="cpu", do_classifier_free_guidance=False,
                                              max_sequence_length=32)  # fmt: skip
    mine = model.encode_prompt("a red cat")
    assert torch.equal(mine.hidden[:, :77], hidden[:, :77]) and torch.equal(mine.pooled, pooled)
    # T5's rows to float rounding (the pipeline runs T5 with autograd on, tficon under no_grad: 8e-7 measured)
    assert torch.allclose(mine.hidden[:, 77:], hidden[:, 77:], atol=1e-5, rtol=0)
    assert mine.hidden[:, 77:].abs().max() > 1e-3  # T5 rows, not zeros
    assert not model.exceptional_embedding().hidden[:, 77:].any()
    with pytest.raises(ValueError, match="prompt is too long"):
        model.encode_prompt(" ".join(["cat"] * 40))  # past T5's 32 rows (CLIP's 77 hold it)
    session = new_session(model, sample, steps=3).run()
    assert session.done and torch.isfinite(session.records[-1].generation.x).all()


def copy_tokenizer(tokenizer):
    import copy

    return copy.deepcopy(tokenizer)


def test_cli_compose_sweep_and_batch_on_an_sd3_folder(sd3_folder, sample, tmp_path):
    from PIL import Image

    from tficon.cli import main

    def write_inputs(folder):
        folder.mkdir(parents=True, exist_ok=True)
        sample.background.save(folder / "bg.png")
        sample.foreground.save(folder / "fg.png")
        sample.foreground_mask.save(folder / "fg_mask.png")

    write_inputs(tmp_path)
    x, y, w, h = sample.box
    out = tmp_path / "out.png"
    args = ["compose", "--model", str(sd3_folder), "--background", str(tmp_path / "bg.png"), "--foreground",
            str(tmp_path / "fg.png"), "--foreground-mask", str(tmp_path / "fg_mask.png"), "--prompt", sample.prompt,
            "--size", str(SIZE), "--steps", "4", "--quiet", "--box", f"{x},{y},{w},{h}", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert Image.open(out).size == (SIZE, SIZE)
    folder = tmp_path / "inputs" / "cross_domain" / "a red star"
    write_inputs(folder)
    mask = Image.new("L", sample.background.size, 0)
    mask.paste(255, (x, y, x + w, y + h))
    mask.save(folder / "mask.png")
    sweep = ["sweep", "--model", str(sd3_folder), "--background", str(tmp_path / "bg.png"), "--foreground",
             str(tmp_path / "fg.png"), "--foreground-mask", str(tmp_path / "fg_mask.png"), "--prompt", sample.prompt,
             "--size", str(SIZE), "--steps", "4", "--quiet", "--box", f"{x},{y},{w},{h}", "--grid", "tau_b=0.5,0.9",
             "--batch-cells", "auto", "--out", str(tmp_path / "sweep")]  # fmt: skip
    assert main(sweep) == 0
    assert len(list((tmp_path / "sweep").rglob("*.png"))) >= 2
    for extra in ([], ["--batch-samples", "auto"]):  # one at a time, and together (the runner's memory estimate)
        runs = tmp_path / f"runs{len(extra)}"
        assert main(["batch", str(tmp_path / "inputs"), "--out", str(runs), "--model", str(sd3_folder), "--size",
                     str(SIZE), "--steps", "4", "--quiet", *extra]) == 0  # fmt: skip
        summary = json.loads((runs / "summary.json").read_text())
        assert summary["counts"]["composed_now"] == 1 and summary["counts"]["failed"] == 0, summary["counts"]


def test_row_memory_estimate_counts_image_and_text_tokens(sd3):
    from tficon.composition.runner import auto_max_rows, row_bytes

    # 64 image tokens (16 x 16 latents, patch 2) + 77 CLIP + 8 T5 rows, 32 wide, float32
    assert row_bytes(sd3, (16, 16)) == 24 * 32 * (64 + 77 + 8) * 4
    assert row_bytes(sd3, (32, 32)) - row_bytes(sd3, (16, 16)) == 24 * 32 * (256 - 64) * 4
    assert auto_max_rows(sd3, (16, 16), max_bytes=10 * row_bytes(sd3, (16, 16))) >= 5


def test_explorer_kernel_side(sd3, sample):
    from tiny_setup import check_explorer_kernel_side

    check_explorer_kernel_side(sd3, sample)


def test_previews_of_16_channel_latents(sd3_session):
    previews = sd3_session.preview(2)
    assert "generation" in previews and all(p.shape == (3, 16, 16) and torch.isfinite(p).all() for p in previews.values())


def test_tiny_model_names_sd3(tmp_path):
    from tficon.model.tiny import save_tiny_model, tiny_model

    model = tiny_model("sd3", dtype=torch.bfloat16)
    assert model.family == "tiny-sd3" and model.unet.dtype == torch.bfloat16
    assert load_model(save_tiny_model(tmp_path / "m", "sd3"), device="cpu").family == "tiny-sd3"


@pytest.mark.parametrize("preset", ["primecomposer", "primecomposer-rca", "shine-blend"])
def test_presets_whose_mechanism_needs_unet_attention_are_refused_by_name(sd3, sample, preset):
    from tficon.core.config import CompositionConfig

    config = CompositionConfig.preset(preset, steps=STEPS, object_words="star")
    with pytest.raises(ValueError, match=r"sd3 models do not support .*(strategy|adaptive_blend)"):
        new_session(sd3, sample, steps=STEPS, **{k: getattr(config, k) for k in tficon.presets()[preset].changes})
    session = new_session(sd3, sample, steps=STEPS)
    with pytest.raises(ValueError, match="inject_layers='decoder'"):
        session.update(inject_layers="decoder")
    assert session.config.inject_layers == "all"  # a refused update leaves the Session as it was


def test_the_tale_preset_runs_on_sd3(sd3, sample):
    from tficon.core.config import CompositionConfig

    config = CompositionConfig.preset("tale", steps=STEPS)
    session = new_session(sd3, sample, steps=STEPS, **{k: getattr(config, k) for k in tficon.presets()["tale"].changes})
    session.run()
    assert session.steps < STEPS and torch.isfinite(session.records[-1].generation.x).all()

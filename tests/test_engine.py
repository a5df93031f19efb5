"""tficon.composition.engine, the one door to the UNet: batched inversion whose results do not depend on the cache,
counting, one step from explicit inputs, and no state stuck onto model objects."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from tiny_setup import new_session

from tficon.composition.engine import Engine

STEPS = 6
ROOT = Path(__file__).resolve().parents[1]


def _latents(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, model.latent_channels, 16, 16, generator=g) for _ in range(n)]


def test_inversion_is_bitwise_the_same_whatever_was_cached(model):
    a, b, c = _latents(model, 3)
    fresh, cached, evals = Engine(model).invert([a, b], STEPS, 2)
    assert cached == [False, False] and evals == 2 * STEPS  # one two-row call per step
    engine = Engine(model)
    engine.invert([a, c], STEPS, 2)  # caches a (row 0), not b
    partial, cached, evals = engine.invert([a, b], STEPS, 2)
    assert cached == [True, False] and evals == 2 * STEPS  # b still runs in a two-row batch, at its own row
    assert all(torch.equal(x, y) for x, y in zip(partial, fresh))
    again, cached, evals = engine.invert([a, b], STEPS, 2)
    assert cached == [True, True] and evals == 0
    assert all(torch.equal(x, y) for x, y in zip(again, fresh))
    # a batch of one is a different computation (kernels round by batch shape), so a different cache entry
    (single,), cached, _ = engine.invert([a], STEPS, 2)
    assert cached == [False]


def test_sessions_sharing_an_engine_give_what_a_fresh_session_gives(model, sample):
    fresh = new_session(model, sample, steps=STEPS).run()
    engine = Engine(model)
    first = new_session(model, sample, steps=STEPS, engine=engine)
    first.invert()
    x, y, w, h = sample.box
    # a smaller box re-inverts the reference only: the background comes from the cache
    moved = new_session(model, sample, steps=STEPS, engine=engine)
    moved.update(mask_or_box=(x, y, w - 8, h - 8))
    moved.run()
    assert moved.timings["invert_cached"] == (True, False)
    moved_fresh = new_session(model, sample, steps=STEPS)
    moved_fresh.update(mask_or_box=(x, y, w - 8, h - 8))
    assert torch.equal(moved.records[-1].generation.x, moved_fresh.run().records[-1].generation.x)
    again = new_session(model, sample, steps=STEPS, engine=engine).run()
    assert again.timings["invert_cached"] == (True, True)
    assert torch.equal(again.records[-1].generation.x, fresh.records[-1].generation.x)
    # a Session counts its own work; the engine counts everything that went through it
    assert fresh.stats["sample_evals"] == 2 * STEPS + sum(p.sample_evals for p in fresh.plans)
    assert again.stats["sample_evals"] == sum(p.sample_evals for p in again.plans)
    assert engine.sample_evals == 2 * STEPS * 2 + sum(p.sample_evals for p in moved.plans + again.plans)


def test_a_step_is_computed_from_explicit_inputs_and_changes_no_session_state(model, sample):
    session = new_session(model, sample, steps=STEPS).run(until=3)
    records, stats = session.records, dict(session.stats)
    recomputed = session._compute_step(2)
    assert session.records == records and session.stats == stats
    assert torch.equal(recomputed.generation.x, records[2].generation.x)
    assert recomputed.sample_evals == session.plans[2].sample_evals


def test_the_engine_is_the_only_code_that_calls_the_unet_and_nothing_is_stuck_onto_models(model, sample):
    call = re.compile(r"\bunet\s*\(")
    sources = [*ROOT.joinpath("tficon").rglob("*.py"), *ROOT.joinpath("widgets").rglob("*.py")]
    # benchmarks may time the bare UNet on purpose; the toy training script (training/, outside the package)
    # trains the UNet (gradients, noise targets): neither is an evaluation
    sources += [*ROOT.joinpath("notebooks").glob("*.ipynb")]
    callers = {p.relative_to(ROOT).as_posix() for p in sources if call.search(p.read_text())}
    # a model family makes the call (tficon.model.families: how its UNet takes its conditioning), for the engine only
    families = {"tficon/model/families/sd.py", "tficon/model/families/sdxl.py"}
    assert callers <= {"tficon/composition/engine.py", *families}, callers
    denoise = re.compile(r"\.denoise\s*\(")
    family_callers = {p.relative_to(ROOT).as_posix() for p in sources if denoise.search(p.read_text())}
    assert family_callers == {"tficon/composition/engine.py"}, family_callers
    new_session(model, sample, steps=STEPS).run().preview()
    declared = {f.name for f in dataclasses.fields(model)}
    assert set(vars(model)) <= declared, set(vars(model)) - declared  # caches live with their owners

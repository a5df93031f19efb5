"""Faults in cached work: a transient NaN during one Session's inversion fails that Session alone, naming the
inversion, and nothing non-finite is ever kept in the engine's caches (issue 26, item 3).

The fault is a test double: the tiny UNet's own class, subclassed so that its forward returns NaN at chosen call
numbers (optionally in chosen rows only). The real UNet is never patched.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from tiny_setup import SIZE, new_session

from tficon.composition.engine import Engine, InversionCache
from tficon.composition.runner import Task, run_tasks
from tficon.core.checks import NonFiniteError
from tficon.model import assemble_loaded_model
from tficon.model.tiny import tiny_components, tiny_model
from tficon.toy.samples import toy_sample

STEPS = 4  # the inversion makes one UNet call per step: calls 1..4 invert the first Session's images


class FaultyUNet(UNet2DConditionModel):
    """The tiny UNet whose output is NaN at the calls ``nan_at`` names (1-based; value: the rows, None for all)."""

    def forward(self, sample, timestep, *args, **kwargs):
        self.calls += 1
        out = super().forward(sample, timestep, *args, **kwargs)
        if self.calls in self.nan_at:
            rows = self.nan_at[self.calls]
            poisoned = out.sample.clone()
            poisoned[slice(None) if rows is None else rows] = math.nan
            out.sample = poisoned
        return out


def faulty_model(nan_at: dict):
    """The tiny SD 2.x-shaped model with a ``FaultyUNet`` holding the same weights (outputs bitwise the same)."""
    parts = tiny_components("sd2")
    unet = FaultyUNet.from_config(parts["unet"].config)
    unet.load_state_dict(parts["unet"].state_dict())
    unet.calls, unet.nan_at = 0, dict(nan_at)
    return assemble_loaded_model(
        vae=parts["vae"], unet=unet, text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        scheduler_config=dict(parts["scheduler"].config), family="tiny-sd2", spec="tiny-sd2 (faulty)",
        exceptional_token_id=7788, image_size=64, device="cpu", dtype=torch.float32,
    )  # fmt: skip


@pytest.fixture(scope="module")
def samples():
    """Two samples sharing one background, with references of different sizes (so different reference latents)."""
    first = toy_sample(image_size=SIZE)
    second = toy_sample(image_size=SIZE, box=(30, 14, 20, 20))
    assert np.array_equal(np.asarray(first.background), np.asarray(second.background))
    return first, second


@pytest.fixture(scope="module")
def fresh(samples):
    """Each sample's result from a fresh run on a fault-free model (the reference for bitwise equality)."""
    clean = tiny_model("sd2")
    return [np.asarray(new_session(clean, s, steps=STEPS).result) for s in samples]


def finite_cache(cache: InversionCache) -> bool:
    return all(bool(torch.isfinite(latent).all()) for latent in cache.values())


@pytest.mark.parametrize(
    "nan_at, image, step",
    [
        ({2: None}, "background", 2),  # every row of the second inversion call
        ({3: [1]}, "reference", 3),  # the reference's row only: the background's row stays finite
        ({4: None}, "background", 4),  # the last inversion step: only its result would be NaN
    ],
)
def test_a_nan_in_one_sessions_inversion_fails_that_session_alone(samples, fresh, nan_at, image, step):
    model = faulty_model(nan_at)
    engine = Engine(model)
    first = new_session(model, samples[0], steps=STEPS, engine=engine)
    second = new_session(model, samples[1], steps=STEPS, engine=engine)
    with pytest.raises(NonFiniteError) as info:
        first.run()
    message = str(info.value)
    assert message.startswith(f"the {image} inversion failed: its latent after inversion step {step} of {STEPS} ")
    assert "step 0" not in message and "nothing was kept in the inversion cache" in message
    assert (info.value.branch, info.value.inversion_step, info.value.step) == (image, step, None)
    assert first.needs_inversion and first.step_index == 0  # the Session kept nothing of the failed inversion
    assert len(engine.inversions) == 0 and finite_cache(engine.inversions)

    # the second Session shares the background; none of its own calls go wrong, so it composes as a fresh run does
    assert np.array_equal(np.asarray(second.result), fresh[1])
    assert second.timings["invert_cached"] == (False, False)
    assert len(engine.inversions) == 2 and finite_cache(engine.inversions)

    # the fault was transient: the first Session, run again, inverts again and equals a fresh run too
    assert np.array_equal(np.asarray(first.result), fresh[0])
    assert first.timings["invert_cached"] == (True, False)  # the background now comes from the second's good run
    assert finite_cache(engine.inversions)


def test_a_nan_in_a_batched_inversion_is_kept_nowhere_and_each_session_reports_its_own(samples, fresh):
    """run_tasks with batch_inversions: the joint inversion of both Sessions fails at its second call, which stops it
    (nothing of it is kept) and each Session inverts on its own (the first at calls 3..6, the second at 7..10); the
    first then fails at call 4, its own second step, naming its background inversion, and the second composes as a
    fresh run does."""
    model = faulty_model({2: None, 4: None})
    engine = Engine(model)
    sessions = [new_session(model, s, steps=STEPS, engine=engine) for s in samples]
    errors, finished = [], []
    stats = run_tasks(
        [Task(session=s) for s in sessions], max_rows=10, max_cells=2, batch_inversions=True,
        on_error=lambda task, error: errors.append((task.session, error)),
        on_finished=lambda task: finished.append(task.session),
    )  # fmt: skip
    assert (stats.finished, stats.failed) == (1, 1)
    (failed, error), = errors
    assert failed is sessions[0] and finished == [sessions[1]]
    assert isinstance(error, NonFiniteError)
    assert str(error).startswith(f"the background inversion failed: its latent after inversion step 2 of {STEPS} ")
    assert np.array_equal(np.asarray(sessions[1].result), fresh[1])
    assert finite_cache(engine.inversions) and len(engine.inversions) == 2  # the second Session's own inversion
    assert finite_cache(engine._batched) and len(engine._batched) == 0


def test_the_cache_refuses_a_non_finite_latent():
    cache = InversionCache()
    with pytest.raises(NonFiniteError, match="refusing to cache"):
        cache.put("key", torch.tensor([[0.0, math.inf]]))
    assert len(cache) == 0


def test_in_same_mode_the_failed_inversion_is_the_cut_and_paste(samples):
    model = faulty_model({1: [0]})
    session = new_session(model, samples[0], steps=STEPS, mode="same")
    with pytest.raises(NonFiniteError, match=rf"^the cut-and-paste inversion failed: .* inversion step 1 of {STEPS} "):
        session.run()
    assert len(session.engine.inversions) == 0
    session.run()  # the fault was transient: the re-run inverts again and completes
    assert session.done and finite_cache(session.engine.inversions)

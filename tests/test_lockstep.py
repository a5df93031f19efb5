"""Several cells in one UNet call (Engine.run_steps, tficon.run.lockstep) and its uses (tficon.sweep(batch_cells=...),
tficon batch --batch-samples).

Batching changes the batch shape, so kernels round differently: results are compared with each cell's own run to
float tolerance. The tiny random models amplify such differences step by step (their latents reach |x| ~ 50), so
single steps are held to a relative 1e-5 and whole runs to a relative 1e-4 of the latents' scale; both were
measured at a few 1e-6 per step in float32. Images are compared in uint8 levels. Every expectation comes from the
one-cell code path (Session.run, Engine.run_step), which is bitwise what it was before batching existed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from tiny_setup import SIZE, new_session

import tficon
from tficon.cli import build_parser
from tficon.composition.engine import Engine, Track
from tficon.composition.runner import Task, run_tasks
from tficon.model.tiny import tiny_model
from tficon.run.lockstep import MAX_ROWS_PER_CELL, ROW_CAPS, auto_max_rows, row_bytes, run_lockstep
from tficon.run.sweeps import evaluation_order, plan_lanes

STEPS = 6


def _scale(x: torch.Tensor) -> float:
    return float(x.abs().max())


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    """|a - b| <= rel * max|b| everywhere."""
    err = float((a - b).abs().max())
    assert err <= rel * max(_scale(b), 1.0), f"max error {err:.3g} vs scale {_scale(b):.3g}"


def _cells(model, sample, engine=None):
    """Four Sessions that differ in every way a batch allows: boxes, taus, order (warm-up), seed, guidance."""
    x, y, w, h = sample.box
    settings = [
        dict(),
        dict(tau_a=0.2, tau_b=0.6, guidance=3.0),
        dict(seed=5, box=(x + 8, y - 8, w - 8, h - 8)),
        dict(order=1, tau_b=1.1, background_queries=True),
    ]
    sessions = []
    for changes in settings:
        changes = dict(changes)
        box = changes.pop("box", None)
        session = new_session(model, sample, steps=STEPS, engine=engine, **changes)
        if box is not None:
            session.update(mask_or_box=box)
        sessions.append(session)
    return sessions


def _request(session, s):
    """The (plan, previous record, inputs) a Session hands the engine for step s (any step of a run Session; the
    public ``step_request`` gives the next one)."""
    return session._step_request(s)


def _tracks(record):
    return {name: getattr(record, name) for name in ("generation", "background", "reference")}


@pytest.fixture(scope="module")
def solo(model, sample):
    return [session.run() for session in _cells(model, sample)]


def test_a_multi_cell_step_equals_each_cells_own_step(model, sample, solo):
    # the cells at different steps: step 0 (warm-up pre-evaluations in three cells), injection steps, the last step
    requests = [_request(solo[0], 0), _request(solo[1], 2), _request(solo[2], 0), _request(solo[3], STEPS)]
    engine = Engine(model)
    single = [engine.run_steps([r])[0] for r in requests]
    calls, evals = engine.unet_calls, engine.sample_evals
    multi = engine.run_steps(requests)
    # one call for the pre-evaluations of the cells that have them (depth 1 at order 2), one main call
    assert engine.unet_calls - calls == 2
    for got, want in zip(multi, single):
        assert (got.s, got.plan) == (want.s, want.plan)
        assert (got.unet_calls, got.sample_evals) == (want.unet_calls, want.sample_evals)
        for name, track in _tracks(got).items():
            other = _tracks(want)[name]
            assert track.index == other.index and track.evaluated == other.evaluated
            _close(track.x, other.x, 1e-5)
            for d, e in zip(track.state.d_hist, other.state.d_hist):
                _close(d, e, 1e-5)
    # each record counts its own rows, as if alone; the engine counted the rows that really ran
    assert engine.sample_evals - evals == sum(r.sample_evals for r in single)
    # the cells really differ (different boxes, taus, guidance): a mix-up of rows would not pass the checks above
    a, b = multi[0].generation.state.d_hist[-1], multi[2].generation.state.d_hist[-1]
    assert float((a - b).abs().max()) > 100 * 1e-5 * _scale(a)


def test_helper_rows_that_two_cells_share_run_once(model, sample, solo):
    """Same sample, seed and box, another guidance: the background and reference branches are the same rows for both
    cells, evaluated once; the pseudo-cross rows (restricted to each cell's object) and the generation rows are not."""
    first, second = new_session(model, sample, steps=STEPS), new_session(model, sample, steps=STEPS, guidance=2.0)
    first.run(until=1)
    second.run(until=1)
    requests = [_request(first, 1), _request(second, 1)]
    assert all(r[0].background_row and r[0].reference_row for r in requests)
    engine = Engine(model)
    single = [engine.run_steps([r])[0] for r in requests]
    evals = engine.sample_evals
    multi = engine.run_steps(requests)
    assert engine.sample_evals - evals == sum(r.sample_evals for r in single) - 2
    for got, want in zip(multi, single):
        for name in ("generation", "background", "reference"):
            _close(getattr(got, name).state.d_hist[-1], getattr(want, name).state.d_hist[-1], 1e-5)
    a, b = multi[0].generation.state.d_hist[-1], multi[1].generation.state.d_hist[-1]
    assert float((a - b).abs().max()) > 1e-3 * _scale(a)  # the generation rows differ (guidance)


def test_multi_cell_calls_refuse_attention_capture_and_mixed_sizes(model, sample, solo):
    from tficon.composition.attention import CaptureRequest

    plan, previous, inputs = _request(solo[0], 1)
    captured = (plan, previous, dataclasses.replace(inputs, capture=CaptureRequest()))
    with pytest.raises(ValueError, match="attention capture needs a one-cell step"):
        Engine(model).run_steps([captured, _request(solo[1], 1)])
    other = tficon.Session(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
        image_size=SIZE + 64, steps=STEPS,
    ).run(until=1)  # fmt: skip
    with pytest.raises(ValueError, match="share the latent shape"):
        Engine(model).run_steps([_request(solo[0], 1), _request(other, 1)])


def test_lockstep_run_equals_solo_runs_and_leaves_sessions_usable(model, sample, solo):
    engine = Engine(model)
    batched = _cells(model, sample, engine)
    stats = run_lockstep(batched, max_rows=4 * MAX_ROWS_PER_CELL)
    assert (stats.finished, stats.failed, stats.max_cells, stats.rounds) == (4, 0, 4, STEPS + 1)
    # real work: the three order-2 cells invert together (two of them share their latents), the order-1 cell on its
    # own (another inversion); one call per round with an evaluation, and one for step 0's pre-evaluations
    assert stats.unet_calls == 2 * STEPS + STEPS + 1
    # rows: 2 distinct latent pairs inverted together, 1 pair alone, every step's rows, less the background and
    # reference rows cells 0 and 1 share (same latents, seed and box) at step 0's pre-evaluation and at steps 0 and 1
    steps_rows = sum(sum(p.sample_evals for p in s.plans) for s in solo)
    assert solo[0].plans[2].background_row is False and solo[1].plans[1].reference_row
    assert stats.sample_evals == 2 * STEPS * 2 + 2 * STEPS + steps_rows - 3 * 2
    for alone, together in zip(solo, batched):
        assert together.done and together.stats == alone.stats  # each counts its own work as if alone
        assert len(together.records) == len(alone.records)
        for got, want in zip(together.records, alone.records):
            assert got.plan == want.plan
            _close(got.generation.x, want.generation.x, 1e-4)
        image, expected = np.asarray(together.result, float), np.asarray(alone.result, float)
        assert np.abs(image - expected).max() <= 2
    # usable as after Session.run(): update keeps the steps before the change, rewind recomputes
    session, reference = batched[0], solo[0]
    assert session.update(tau_b=0.5) == reference.update(tau_b=0.5) > 0
    session.run()
    reference.run()
    _close(session.records[-1].generation.x, reference.records[-1].generation.x, 1e-4)
    session.rewind(2)
    assert session.step_index == 2
    session.run()
    _close(session.records[-1].generation.x, reference.records[-1].generation.x, 1e-4)
    reference.update(tau_b=0.8)


def test_without_batched_inversions_a_rewound_session_is_bitwise_a_fresh_one(model, sample):
    sessions = [new_session(model, sample, steps=STEPS), new_session(model, sample, steps=STEPS, seed=11)]
    run_lockstep(sessions, max_rows=10, batch_inversions=False)
    fresh = new_session(model, sample, steps=STEPS, seed=11).run()
    sessions[1].rewind(0)
    sessions[1].run()
    assert all(torch.equal(a.generation.x, b.generation.x) for a, b in zip(sessions[1].records, fresh.records))


def test_one_session_per_call_is_bitwise_the_solo_path(model, sample, solo):
    engine = Engine(model)
    sessions = _cells(model, sample, engine)[:2]
    stats = run_lockstep(sessions, max_rows=MAX_ROWS_PER_CELL)
    assert stats.max_cells == 1
    for together, alone in zip(sessions, solo):
        assert all(torch.equal(a.generation.x, b.generation.x) for a, b in zip(together.records, alone.records))


def test_session_run_is_the_runners_one_session_case_and_tasks_carry_their_context(model, sample):
    """Session.run goes through the runner; it is bitwise the Session's own step() repeated. Tasks come back to the
    callbacks as the objects the caller made (its context on them), and stop at their own ``until``."""
    by_steps = new_session(model, sample, steps=STEPS)
    by_steps.compose_start()
    while not by_steps.done:
        by_steps.step()
    ran = new_session(model, sample, steps=STEPS).run()
    assert all(torch.equal(a.generation.x, b.generation.x) for a, b in zip(ran.records, by_steps.records))
    assert ran.stats == by_steps.stats

    @dataclasses.dataclass(eq=False, kw_only=True)
    class Labelled(Task):
        label: str

    engine = Engine(model)
    tasks = [Labelled(session=new_session(model, sample, steps=STEPS, engine=engine, seed=seed), label=f"seed {seed}",
                      until=until) for seed, until in ((1, None), (2, 3))]  # fmt: skip
    finished, stepped = [], []
    stats = run_tasks(iter(tasks), max_rows=2 * MAX_ROWS_PER_CELL, on_finished=finished.append,
                      on_step=lambda task: stepped.append(task.label))  # fmt: skip
    assert finished == [tasks[1], tasks[0]] and stats.finished == 2 and stats.max_cells == 2
    assert [t.session.step_index for t in tasks] == [STEPS + 1, 3]
    assert stepped.count("seed 1") == STEPS + 1 and stepped.count("seed 2") == 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_lockstep_stays_close_to_its_solo_run(sample, dtype):
    half = tiny_model("sd2", dtype=dtype)
    alone = [new_session(half, sample, steps=STEPS).run(),
             new_session(half, sample, steps=STEPS, tau_a=0.2, seed=4).run()]  # fmt: skip
    engine = Engine(half)
    together = [new_session(half, sample, steps=STEPS, engine=engine),
                new_session(half, sample, steps=STEPS, tau_a=0.2, seed=4, engine=engine)]  # fmt: skip
    stats = run_lockstep(together, max_rows=10)
    assert stats.unet_calls == STEPS + 1 + STEPS  # inversions together, step 0's pre-evaluations, one call per step
    for a, b in zip(together, alone):
        assert all(r.generation.x.dtype == torch.float32 for r in a.records)
        image, expected = a.decode(), b.decode()
        assert torch.isfinite(image).all()
        mse = float(((image - expected) / 2).pow(2).mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
        assert psnr >= 35.0, psnr  # measured: identical on the CPU (its half-precision kernels round row by row)


def test_budget_splits_sessions_into_groups_and_calls(model, sample):
    engine = Engine(model)
    sizes = []
    hook = model.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        sessions = [new_session(model, sample, steps=STEPS, engine=engine, seed=s) for s in range(5)]
        stats = run_lockstep(sessions, max_rows=10)
        assert (stats.max_cells, stats.finished) == (2, 5)
        assert stats.rounds == 3 * (STEPS + 1)  # sessions 1-2, 3-4, then 5, each STEPS + 1 steps
        assert max(sizes) <= 10
        sizes.clear()
        # more Sessions in flight than one call holds: each round is split into calls of at most max_rows rows
        sessions = [new_session(model, sample, steps=STEPS, engine=engine, seed=s) for s in range(4)]
        stats = run_lockstep(sessions, max_rows=7, max_cells=4)
        assert stats.rounds == STEPS + 1 and max(sizes) <= 8  # the inversion batch: 4 latent pairs = 8 rows
        assert all(s.done for s in sessions)
    finally:
        hook.remove()


def test_memory_estimate_and_automatic_budget(model):
    config = model.unet.config  # tiny SD 2.x: channels 32, 64, 64, one layer per block
    h = w = SIZE // model.vae_scale_factor
    skips = 2 * (32 * h * w + 64 * (h // 2) * (w // 2) + 64 * (h // 4) * (w // 4))
    assert tuple(config.block_out_channels) == (32, 64, 64) and config.layers_per_block == 1
    assert row_bytes(model, (h, w)) == (skips + 24 * 32 * h * w) * 4
    per_row = row_bytes(model, (h, w))
    assert auto_max_rows(model, (h, w), max_bytes=7 * per_row) == 7
    assert auto_max_rows(model, (h, w), max_bytes=per_row) == MAX_ROWS_PER_CELL  # at least one step's rows
    assert auto_max_rows(model, (h, w), max_bytes=10**12) == ROW_CAPS["cpu"]
    assert auto_max_rows(model, (h, w)) == ROW_CAPS["cpu"]  # 2 GiB on a CPU holds many tiny rows
    with pytest.raises(ValueError, match="max_rows"):
        run_lockstep([], max_rows=0)
    with pytest.raises(ValueError, match="either sessions"):
        run_lockstep([], lanes=[[]])


def test_a_failing_session_is_reported_and_the_others_finish(model, sample):
    engine = Engine(model)
    sessions = [new_session(model, sample, steps=STEPS, engine=engine, seed=s) for s in range(3)]
    sessions[1].run(until=2)
    bad = sessions[1].records[-1]
    poisoned = bad.generation.state.x.clone()
    poisoned[0, 0, 0, 0] = float("nan")
    state = dataclasses.replace(bad.generation.state, x=poisoned)
    track = Track(bad.generation.index, state, bad.generation.evaluated)
    sessions[1]._records[-1] = dataclasses.replace(bad, generation=track)  # a step whose next one turns NaN
    errors, finished = [], []
    run_lockstep(sessions, max_rows=15, on_finished=finished.append, on_error=lambda s, e: errors.append((s, e)))
    assert [s for s, _ in errors] == [sessions[1]] and isinstance(errors[0][1], FloatingPointError)
    assert finished == [sessions[0], sessions[2]] and sessions[1].step_index == 2
    # the NaN row of its neighbour in the same calls did not reach the others
    for seed in (0, 2):
        alone = new_session(model, sample, steps=STEPS, seed=seed).run()
        _close(sessions[seed].records[-1].generation.x, alone.records[-1].generation.x, 1e-4)


# --------------------------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------------------------


def _sweep(model, sample, grid, **kwargs):
    return tficon.sweep(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt, grid,
        image_size=SIZE, steps=STEPS, progress=False, metrics=False, **kwargs,
    )  # fmt: skip


def test_sweep_with_batched_cells_equals_the_sweep_without(model, sample):
    grid = {"seed": [1, 2, 3], "tau_b": [0.5, 0.9]}
    plain = _sweep(model, sample, grid)
    auto = _sweep(model, sample, grid, batch_cells="auto")
    # auto cuts only where nothing is shared (each seed starts afresh): three lanes, the same UNet work per cell
    assert (plain.lanes, auto.lanes) == (1, 3)
    assert [c.first_step for c in auto.cells] == [c.first_step for c in plain.cells]
    assert [c.sample_evals for c in auto.cells] == [c.sample_evals for c in plain.cells]
    # measured: 7 calls of inversions (3 seeds batched) + 7 rounds of 3 lanes + 6 short rounds of tau_b=0.9 cells
    assert auto.unet_calls < plain.unet_calls / 2
    for a, b in zip(auto.cells, plain.cells):
        assert np.abs(np.asarray(a.image, float) - np.asarray(b.image, float)).max() <= 2, a.label()
    # a number asks for up to that many lanes, also where a cut costs shared steps, as long as it shortens the
    # costliest lane: a fourth lane would not (three seeds' chains stay), six lanes run every cell on its own
    assert plan_lanes(evaluation_order(plain.cells), 4, free_cuts_only=False) == plan_lanes(
        evaluation_order(plain.cells), 3, free_cuts_only=True
    )
    six = _sweep(model, sample, grid, batch_cells=6)
    assert six.lanes == 6 and [c.first_step for c in six.cells] == [0] * 6
    assert [c.sample_evals for c in six.cells] == [tficon.run.sweeps.independent_cost(c.config) for c in six.cells]
    for a, b in zip(six.cells, plain.cells):
        assert np.abs(np.asarray(a.image, float) - np.asarray(b.image, float)).max() <= 2, a.label()


def test_lanes_keep_prefix_sharing_where_it_saves_more(model, sample):
    from tficon.run.sweeps import SweepCell

    base = tficon.CompositionConfig(steps=10)
    cells = [
        SweepCell(i, {"tau_a": a, "tau_b": b}, (i // 3, i % 3), base.replace(tau_a=a, tau_b=b), sample.box)
        for i, (a, b) in enumerate((a, b) for a in (0.2, 0.4, 0.6) for b in (0.5, 0.7, 0.9))
    ]
    order = evaluation_order(cells)
    # every cell shares steps with the one before: "auto" keeps one lane (the unbatched, bitwise path)
    assert len(plan_lanes(order, 8, free_cuts_only=True)) == 1
    # three lanes cut where tau_a changes (the shortest shared prefixes), not inside a tau_a's tau_b chain
    lanes = plan_lanes(order, 3, free_cuts_only=False)
    assert [{c.values["tau_a"] for c in lane} for lane in lanes] == [{0.2}, {0.4}, {0.6}]
    assert plan_lanes(order, 1, free_cuts_only=False) == [order]


def test_sweep_refuses_a_bad_batch_cells(model, sample):
    with pytest.raises(ValueError, match="batch_cells"):
        _sweep(model, sample, {"tau_b": [0.5]}, batch_cells=0)


# --------------------------------------------------------------------------------------------------------------
# tficon batch --batch-samples
# --------------------------------------------------------------------------------------------------------------


def test_batch_samples_gives_the_same_images(tmp_path, model):
    from PIL import Image
    from test_batch import GOOD, make_inputs

    from tficon.run.batch import OUTPUT_FILES, run_batch

    inputs = make_inputs(tmp_path)
    config = tficon.CompositionConfig(steps=STEPS)
    common = dict(model=model, config=config, image_size=SIZE, progress=False, perceptual=False, log=lambda m: None)
    one = run_batch(inputs, tmp_path / "one", **common)
    together = run_batch(inputs, tmp_path / "two", batch_samples=2, **common)
    assert [(o.id, o.action) for o in together.outcomes] == [(o.id, o.action) for o in one.outcomes]
    assert sum(o.action == "composed" for o in together.outcomes) == len(GOOD)
    for sample_id in GOOD:
        a = np.asarray(Image.open(tmp_path / "one" / sample_id / OUTPUT_FILES["result"]), float)
        b = np.asarray(Image.open(tmp_path / "two" / sample_id / OUTPUT_FILES["result"]), float)
        assert np.abs(a - b).max() <= 2, sample_id
        record = next(o.record for o in together.outcomes if o.id == sample_id)
        alone = next(o.record for o in one.outcomes if o.id == sample_id)
        assert record["batch_samples"] == 2 and alone["batch_samples"] is None
        assert record["sample_evals"] == alone["sample_evals"]  # each sample counts its own work as if alone
        psnr = alone["metrics"]["result"]["bg"]["psnr"]
        assert record["metrics"]["result"]["bg"]["psnr"] == pytest.approx(psnr, abs=0.5)
    # one sample per call is the unbatched path itself: the same images, bit for bit
    single = run_batch(inputs, tmp_path / "single", batch_samples=1, **common)
    for sample_id in GOOD:
        a = np.asarray(Image.open(tmp_path / "one" / sample_id / OUTPUT_FILES["result"]))
        b = np.asarray(Image.open(tmp_path / "single" / sample_id / OUTPUT_FILES["result"]))
        assert np.array_equal(a, b), sample_id
    assert [o.record.get("sample_evals") for o in single.outcomes] == [o.record.get("sample_evals") for o in one.outcomes]
    # a re-run with batching finds everything finished (same fingerprints)
    again = run_batch(inputs, tmp_path / "two", batch_samples="auto", **common)
    assert all(o.action in ("done", "skipped") for o in again.outcomes)


def test_cli_batch_samples_and_batch_cells(tmp_path, capsys):
    import json

    from test_batch import GOOD, make_inputs

    from tficon.cli import main
    from tficon.model.tiny import save_tiny_model
    from tficon.run.batch import RECORD_FILE

    inputs = make_inputs(tmp_path)
    model_dir = save_tiny_model(tmp_path / "tiny", "sd2")
    common = ["--model", str(model_dir), "--size", str(SIZE), "--steps", str(STEPS), "--quiet"]
    out = tmp_path / "out"
    code = main(["batch", str(inputs), "--out", str(out), *common, "--batch-samples", "2", "--pixel-metrics-only"])
    printed = capsys.readouterr()
    assert code == 0 and "batched samples: up to 2 per UNet call" in printed.out + printed.err
    for sample_id in GOOD:
        record = json.loads((out / sample_id / RECORD_FILE).read_text())
        assert (record["status"], record["batch_samples"]) == ("composed", 2)
    sweep_out = tmp_path / "sweep"
    code = main(["sweep", "--demo", "--out", str(sweep_out), *common, "--grid", "seed=1,2", "--batch-cells", "auto"])
    assert code == 0
    summary = json.loads((sweep_out / "cells.json").read_text())["summary"]
    assert (summary["cells"], summary["lanes"]) == (2, 2)


def test_cli_flags():
    parser = build_parser()
    args = parser.parse_args(["batch", "in", "--out", "o", "--batch-samples", "4"])
    assert args.batch_samples == 4
    assert parser.parse_args(["batch", "in", "--out", "o"]).batch_samples is None
    assert parser.parse_args(["sweep", "--demo", "--out", "o", "--batch-cells", "auto"]).batch_cells == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["batch", "in", "--out", "o", "--batch-samples", "0"])


def test_step_request_and_accept_step_are_step(model, sample):
    """A Session's public request/accept pair, with the engine call in between, is exactly ``step()``; a record
    of another step or another plan is refused and leaves the Session as it was."""
    stepped = new_session(model, sample, steps=STEPS)
    by_hand = new_session(model, sample, steps=STEPS)
    for _ in range(3):
        stepped.step()
        by_hand.accept_step(by_hand.engine.run_step(*by_hand.step_request()))
    assert torch.equal(stepped.records[-1].generation.x, by_hand.records[-1].generation.x)
    assert stepped.stats["sample_evals"] == by_hand.stats["sample_evals"] > 0
    assert not by_hand.needs_inversion and len(by_hand.encoded_latents()) == 2
    early = stepped.records[1]
    with pytest.raises(ValueError, match="next step is 3"):
        by_hand.accept_step(early)
    other = new_session(model, sample, steps=STEPS, tau_b=1.0)  # blends every step: step 3's plan differs
    other.run(until=3)
    assert other.plans[3] != by_hand.plans[3]
    with pytest.raises(ValueError, match="another plan"):
        by_hand.accept_step(by_hand.engine.run_step(*other.step_request()))
    assert len(by_hand.records) == 3
    by_hand.run()
    with pytest.raises(RuntimeError, match="complete"):
        by_hand.step_request()

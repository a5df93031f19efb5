"""tficon.composition.phases, the step-phase seam: the step's phases run in one named order, a composition strategy
is a plan flag plus one operation, and an engine given an extra operation runs it exactly where its plan flag says
(and changes nothing when the flag is off)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from tiny_setup import new_session

from tficon.composition import phases
from tficon.composition.engine import Engine
from tficon.core.plan import StepPlan

STEPS = 6
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class HalvedPlan(StepPlan):
    """A plan with a throw-away strategy's flag: halve the generation latent inside the box after the step."""

    halve: bool = False


def halve(state: phases.StepState, door) -> None:
    """The throw-away operation: reads only its plan flag and the step's inputs."""
    if not state.plan.halve:
        return
    halve.ran.append((state.plan.s, state.generation.evaluated, state.layout is not None))
    x = state.generation.x
    state.generation = phases.with_latent(state.generation, torch.where(state.inputs.inside, x * 0.5, x))


halve.ran = []


class HalvingEngine(Engine):
    phases = Engine.phases.with_operation("after_denoiser", halve)


def _plans(plans, at: set[int]) -> list[HalvedPlan]:
    return [HalvedPlan(**{f.name: getattr(p, f.name) for f in dataclasses.fields(p)}, halve=p.s in at) for p in plans]


def _run(engine, plans, inputs):
    records, previous = [], None
    for plan in plans:
        previous = engine.run_step(plan, previous, inputs)
        records.append(previous)
    return records


def _same(a, b) -> bool:
    """Whether two step records hold bitwise the same latents and stored data predictions in every branch."""
    for name in ("generation", "background", "reference"):
        ta, tb = getattr(a, name), getattr(b, name)
        if ta.index != tb.index or ta.evaluated != tb.evaluated or not torch.equal(ta.x, tb.x):
            return False
        if len(ta.state.d_hist) != len(tb.state.d_hist):
            return False
        if not all(torch.equal(x, y) for x, y in zip(ta.state.d_hist, tb.state.d_hist)):
            return False
    return all(torch.equal(x, y) for x, y in zip(a.reference_latents, b.reference_latents))


@pytest.fixture(scope="module")
def official(model, sample):
    """(the Session's records, the plans, the step inputs) of an official run; the inputs of step 0 serve every
    step (later steps do not read ``start``)."""
    session = new_session(model, sample, steps=STEPS)
    records = session.run().records
    _, _, inputs = new_session(model, sample, steps=STEPS, engine=session.engine).step_request()
    return records, session.plans, inputs


def test_the_step_runs_named_phases_in_one_order():
    assert phases.STEP_ORDER == ("warm_up", "before_denoiser", "rows", "denoiser", "after_denoiser")
    # PrimeComposer's operations (issue 22) follow TF-ICON's; each does nothing unless its plan flag is on
    primecomposer_after = ("kept_history_blend", "hold_object", "kept_blend")
    assert Engine.phases.names() == {
        "before_denoiser": ("paste_on_reference", "advance", "latent_normalization"),
        "after_denoiser": (
            "record_evaluations", "guidance", "history_blend", "adaptive_blend", "blend", *primecomposer_after
        ),
    }
    extended = Engine.phases.with_operation("after_denoiser", halve, before=phases.blend)
    assert extended.names()["after_denoiser"] == (
        "record_evaluations", "guidance", "history_blend", "adaptive_blend", "halve", "blend", *primecomposer_after
    )  # fmt: skip
    assert Engine.phases.names()["after_denoiser"][4] == "blend"  # the default is left as it was
    with pytest.raises(ValueError, match=r"phase must be one of \['before_denoiser', 'after_denoiser'\]"):
        Engine.phases.with_operation("denoiser", halve)
    with pytest.raises(ValueError, match="before='halve' is not an operation of before_denoiser"):
        Engine.phases.with_operation("before_denoiser", phases.blend, before=halve)


def test_a_strategy_runs_at_the_steps_its_plan_flag_names_and_changes_nothing_when_off(model, official):
    session_records, plans, inputs = official
    plain = _run(Engine(model), plans, inputs)
    assert all(_same(a, b) for a, b in zip(plain, session_records))  # driving run_step by hand is the Session

    halve.ran.clear()
    off = _run(HalvingEngine(model), _plans(plans, set()), inputs)
    assert halve.ran == []
    assert all(_same(a, b) for a, b in zip(off, plain))  # no strategy: bitwise the official steps

    on = _run(HalvingEngine(model), _plans(plans, {3}), inputs)
    assert halve.ran == [(3, True, True)]  # after the denoiser: the generation branch is evaluated, its rows laid out
    assert all(_same(a, b) for a, b in zip(on[:3], plain[:3]))
    x = plain[3].generation.x
    assert torch.equal(on[3].generation.x, torch.where(inputs.inside, x * 0.5, x))
    assert all(torch.equal(a, b) for a, b in zip(on[3].generation.state.d_hist, plain[3].generation.state.d_hist))
    assert not torch.equal(on[4].generation.x, plain[4].generation.x)  # the change carries on
    assert all(torch.equal(a.background.x, b.background.x) for a, b in zip(on, plain))  # only generation is touched
    assert on[3].plan.halve and not on[4].plan.halve


def test_an_operation_before_the_denoiser_sees_the_advanced_unevaluated_state(model, official):
    _, plans, inputs = official

    class Early(Engine):
        phases = Engine.phases.with_operation("before_denoiser", halve)

    halve.ran.clear()
    early = _run(Early(model), _plans(plans, {2}), inputs)
    assert halve.ran == [(2, False, False)]  # moved to t_2 by advance, not yet evaluated, no rows yet
    late = _run(HalvingEngine(model), _plans(plans, {2}), inputs)
    # the same latent after the step (halved once inside the box either way); only the early one was evaluated halved
    assert torch.equal(early[2].generation.x, late[2].generation.x)
    assert not torch.equal(early[2].generation.state.d_hist[-1], late[2].generation.state.d_hist[-1])


def test_each_cell_of_a_shared_call_runs_its_own_plan(model, official):
    _, plans, inputs = official
    halved, kept = _plans(plans, {0}), _plans(plans, set())
    halve.ran.clear()
    a, b = HalvingEngine(model).run_steps([(halved[0], None, inputs), (kept[0], None, inputs)])
    assert halve.ran == [(0, True, True)]
    assert not torch.equal(a.generation.x, b.generation.x)
    x = b.generation.x  # another row of the same call: equal to float tolerance (kernels may round by row)
    assert torch.allclose(a.generation.x, torch.where(inputs.inside, x * 0.5, x), rtol=1e-5, atol=1e-6)


def test_phases_read_plans_not_the_config_and_the_engine_holds_no_blend():
    tree = ast.parse(ROOT.joinpath("tficon/composition/phases.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not {name for name in names if "config" in name.lower()}
    engine = ast.parse(ROOT.joinpath("tficon/composition/engine.py").read_text())
    wheres = [n for n in ast.walk(engine) if isinstance(n, ast.Attribute) and n.attr == "where"]
    assert not wheres  # the blends (torch.where with the box) live in the phases

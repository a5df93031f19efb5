"""The GPU benchmark's instrument and its CPU run (benchmarks/bench_gpu.py): what CI can check of it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_gpu  # noqa: E402


def test_host_reads_counts_each_operation_that_reads_a_value_back():
    x = torch.arange(4.0)
    with bench_gpu.HostReads() as counter:
        y = x * 2 + 1  # device-side work: not counted
        bool(y[0])
        y.sum().item()
        y.nonzero()
        torch.equal(x, y)
        int(y[1])
    assert counter.counts == {"__bool__": 1, "item": 1, "nonzero": 1, "equal": 1, "__int__": 1}
    assert counter.total == 5


def test_the_benchmark_runs_on_the_cpu_and_prints_every_ratio(capsys):
    bench_gpu.main(["--device", "cpu", "--rows", "tiny-sd2:64", "--rounds", "1", "--steps", "6"])
    out = capsys.readouterr().out
    for label in ("pipeline", "compose", "tau_b re-run"):
        assert re.search(rf"^{re.escape(label)} +wall +\d+\.\d+ s min", out, re.M), out
    ratios = dict(re.findall(r"^(compose / pipeline|tau_b re-run / compose) +(\d+\.\d+)x", out, re.M))
    assert set(ratios) == {"compose / pipeline", "tau_b re-run / compose"}
    # a re-run recomputes a suffix of the steps only, and a composition does more than plain sampling
    assert float(ratios["tau_b re-run / compose"]) < 1 < float(ratios["compose / pipeline"])
    reads = float(re.search(r"^host reads per step +(\d+\.\d+)", out, re.M).group(1))
    assert reads > 0  # today's count; issue 25 brings it to at most one per step


def test_a_composition_step_reads_the_device_at_most_once():
    """On a GPU every host read (``.item()``, ``bool(tensor)``, ``nonzero`` ...) waits for the queue to drain; a step
    of the composition makes at most one (its finiteness check), counted here over a whole toy composition, with
    foreground and background injection on (the attention's index sets are built once per resolution)."""
    from tficon.composition.session import Session
    from tficon.model import load_model
    from tficon.toy.samples import toy_sample

    sample = toy_sample()
    session = Session(load_model("toy"), sample.background, sample.foreground, sample.foreground_mask, sample.box,
                      sample.prompt, steps=10, tau_a=0.6, tau_b=1.0)  # fmt: skip
    session.compose_start()  # the inversions are not steps
    session.run(until=1)  # the first step builds the index sets of every resolution
    with bench_gpu.HostReads() as counter:
        session.run()
    assert any(plan.fg for plan in session.plans[1:]) and any(plan.bg for plan in session.plans[1:])
    assert counter.total <= session.steps, counter.counts  # steps 1..S: one read each at most

"""Throughput of batched compositions (tficon.run.lockstep) against one at a time: samples and sweep cells per minute.

    python benchmarks/bench_throughput.py                        # toy model at 64 px, tiny SD 2.x at 256 px
    python benchmarks/bench_throughput.py --steps 20 --repeats 3 --threads 2

Samples: 8 toy-world samples (4 background domains, 2 foregrounds each, so pairs share a background), composed
(a) one at a time on one Engine, as ``tficon batch`` does by default, and (b) with ``--batch-samples N`` for each N
given (``run_lockstep``: every step of all samples in flight in one UNet call). Sweep: one sample over a grid of
cells that share no steps (seeds x guidance), (a) ``tficon.sweep`` one cell at a time and (b) with
``batch_cells="auto"``. Every pass starts on a fresh Engine (no inversion carried over) and decodes every result;
metrics are left out. The passes of one model alternate (a, b, a, b, ...) so that the machine's load is shared
alike; the medians of the repeats are printed as wall time, CPU time of this process, and items per minute of wall
time, with the UNet rows each pass evaluated (batching also evaluates a background shared by samples, or a latent
shared by cells, once: part of the gain is less work, the rest is more rows per call). The largest pixel difference between the batched and the one-at-a-time images is printed too (batching
rounds differently: equal to float tolerance, not bitwise).

The tiny SD model has random weights: its images mean nothing, but its UNet has the shape and cost of an SD 2.x
UNet scaled down, which is what batching is about.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _samples(image_size: int):
    from tficon.toy.samples import toy_sample

    out = []
    for background in ("outline", "striped", "pencil", "flat"):
        for shape, colour, box in (("star", "red", (36, 18, 26, 26)), ("circle", "yellow", (8, 34, 22, 22))):
            foreground = "flat" if background != "flat" else "outline"
            out.append(toy_sample(background, foreground, shape, colour, box=box, image_size=image_size))
    return out


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def _one_at_a_time(model, samples, steps, size):
    from tficon.composition.engine import Engine
    from tficon.composition.session import Session

    engine = Engine(model)
    images = []
    for s in samples:
        session = Session(model, s.background, s.foreground, s.foreground_mask, s.box, s.prompt,
                          image_size=size, steps=steps, mode=s.mode, engine=engine)  # fmt: skip
        images.append(np.asarray(session.result))
    return images, engine


def _batched(model, samples, steps, size, per_call):
    from tficon.composition.engine import Engine
    from tficon.composition.session import Session
    from tficon.run.lockstep import MAX_ROWS_PER_CELL, run_lockstep

    engine = Engine(model)
    index, images = {}, {}

    def sessions():
        for i, s in enumerate(samples):
            session = Session(model, s.background, s.foreground, s.foreground_mask, s.box, s.prompt,
                              image_size=size, steps=steps, mode=s.mode, engine=engine)  # fmt: skip
            index[id(session)] = i
            yield session

    def finished(session):  # decoded as each finishes, as tficon batch writes each sample when it is done
        images[index[id(session)]] = np.asarray(session.result)

    run_lockstep(sessions(), max_rows=MAX_ROWS_PER_CELL * per_call, max_cells=per_call, on_finished=finished)
    return [images[i] for i in range(len(samples))], engine


def _sweep(model, sample, grid, steps, size, batch_cells):
    import tficon

    result = tficon.sweep(model, sample.background, sample.foreground, sample.foreground_mask, sample.box,
                          sample.prompt, grid, image_size=size, steps=steps, metrics=False, progress=False,
                          batch_cells=batch_cells)  # fmt: skip
    return [np.asarray(c.image) for c in result.cells], result


def _row(label, runs, items, unit, rows):
    wall = statistics.median(r[1] for r in runs)
    cpu = statistics.median(r[2] for r in runs)
    return f"  {label:<26} {wall:>8.2f} {cpu:>8.2f} {rows:>6} {60 * items / wall:>9.1f} {unit}/min"


def _diff(a, b) -> int:
    return int(max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a, b)))


def bench(name, model, size, args) -> None:
    samples = _samples(size)
    grid = {"seed": [1, 2, 3, 4], "guidance": [3.0, 5.0]}
    cells = 8
    print(f"\n{name} at {size} px, {args.steps} steps, {args.threads} thread(s), {args.repeats} repeats "
          f"(median seconds of wall time and of this process's CPU time)")  # fmt: skip
    # warm-up of both paths (first-call overheads of torch and the model)
    _one_at_a_time(model, samples[:1], 2, size)
    _batched(model, samples[:2], 2, size, 2)

    plain, batched = [], {n: [] for n in args.per_call}
    for _ in range(args.repeats):
        plain.append(_timed(lambda: _one_at_a_time(model, samples, args.steps, size)))
        for n in args.per_call:
            batched[n].append(_timed(lambda n=n: _batched(model, samples, args.steps, size, n)))
    header = f"{'wall s':>8} {'CPU s':>8} {'rows':>6} {'per minute':>16}"
    print(f"  {'samples (8)':<26} {header}")
    print(_row("one at a time", plain, len(samples), "samples", plain[0][0][1].sample_evals))
    reference = plain[0][0][0]
    for n in args.per_call:
        runs = batched[n]
        (_, engine) = runs[0][0]
        speed = statistics.median(r[1] for r in plain) / statistics.median(r[1] for r in runs)
        print(_row(f"--batch-samples {n}", runs, len(samples), "samples", engine.sample_evals)
              + f"  x{speed:.2f}; {engine.sample_evals / engine.unet_calls:.1f} rows/call; "
              f"max pixel diff {_diff(runs[0][0][0], reference)}")  # fmt: skip

    one, auto = [], []
    for _ in range(args.repeats):
        one.append(_timed(lambda: _sweep(model, samples[0], grid, args.steps, size, None)))
        auto.append(_timed(lambda: _sweep(model, samples[0], grid, args.steps, size, "auto")))
    print(f"  {'sweep (4 seeds x 2 guid.)':<26} {header}")
    print(_row("one cell at a time", one, cells, "cells", one[0][0][1].sample_evals))
    speed = statistics.median(r[1] for r in one) / statistics.median(r[1] for r in auto)
    result = auto[0][0][1]
    print(_row("batch_cells='auto'", auto, cells, "cells", result.sample_evals)
          + f"  x{speed:.2f}; {result.lanes} lanes, {result.sample_evals / result.unet_calls:.1f} rows/call; "
          f"max pixel diff {_diff(auto[0][0][0], one[0][0][0])}")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-call", type=lambda t: [int(v) for v in t.split(",")], default=[4, 8],
                        help="samples per UNet call to measure, comma-separated (default 4,8)")
    parser.add_argument("--only", choices=("toy", "sd"), default=None, help="one model only")
    args = parser.parse_args(argv)

    import torch

    import tficon
    from tficon.model.tiny import tiny_model

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.only in (None, "toy"):
        bench("toy model", tficon.load_model("toy"), 64, args)
    if args.only in (None, "sd"):
        bench("tiny SD 2.x (random weights)", tiny_model("sd2"), 256, args)


if __name__ == "__main__":
    main()

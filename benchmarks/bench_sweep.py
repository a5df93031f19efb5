"""A parameter sweep against the same cells run one by one (UNet sample-evaluations and wall time).

    python benchmarks/bench_sweep.py                      # 5 x 5 tau_a x tau_b, embedded toy model, demo sample
    python benchmarks/bench_sweep.py --steps 20 --threads 2

The sweep (``tficon.sweep``) runs every cell on one Session and one Engine: inversions once, and cells ordered
so that each distinct prefix of steps is computed once. "Independent" composes each cell with a fresh Session on
a fresh Engine (no shared cache), as a loop of ``tficon compose`` calls would. Both decode every result; metrics
are left out of both. Sample-evaluations are counted by the engines; times are wall times of this process.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tau-a", default="0.2,0.3,0.4,0.5,0.6")
    parser.add_argument("--tau-b", default="0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    import tficon
    from tficon.composition.engine import Engine
    from tficon.toy.samples import demo_sample

    torch.set_num_threads(args.threads)
    model = tficon.load_model(args.model)
    s = demo_sample()
    grid = {"tau_a": [float(v) for v in args.tau_a.split(",")], "tau_b": [float(v) for v in args.tau_b.split(",")]}
    inputs = (s.background, s.foreground, s.foreground_mask, s.box, s.prompt)

    # warm-up (first-call overheads of torch and the model, for both)
    tficon.Session(model, *inputs, steps=2).result

    started = time.perf_counter()
    result = tficon.sweep(model, *inputs, grid, steps=args.steps, metrics=False, progress=True)
    sweep_seconds = time.perf_counter() - started

    independent_evals, independent_images = 0, {}
    started = time.perf_counter()
    for cell in tqdm(result.cells, desc="independent", unit="cell"):
        engine = Engine(model)
        session = tficon.Session(model, *inputs, cell.config, engine=engine)
        independent_images[cell.index] = np.asarray(session.result)
        independent_evals += engine.sample_evals
    independent_seconds = time.perf_counter() - started

    same = all(np.array_equal(np.asarray(c.image), independent_images[c.index]) for c in result.cells)
    n = len(result.cells)
    print(f"model {args.model}, demo sample, {args.steps} steps, grid {' x '.join(f'{len(v)} {k}' for k, v in grid.items())} "
          f"= {n} cells, {args.threads} thread(s)")  # fmt: skip
    print(f"{'':<12} {'sample-evals':>13} {'seconds':>9} {'cells/min':>10}")
    print(f"{'independent':<12} {independent_evals:>13} {independent_seconds:>9.2f} {60 * n / independent_seconds:>10.1f}")
    print(f"{'sweep':<12} {result.sample_evals:>13} {sweep_seconds:>9.2f} {60 * n / sweep_seconds:>10.1f}")
    print(f"sweep / independent: {100 * result.sample_evals / independent_evals:.1f} % of the sample-evaluations, "
          f"{100 * sweep_seconds / independent_seconds:.1f} % of the time (target <= 40 %)")  # fmt: skip
    print(f"cells bitwise equal to the independent runs: {same}")
    print(f"predicted independent sample-evals from the plans: {result.independent_sample_evals}")


if __name__ == "__main__":
    main()

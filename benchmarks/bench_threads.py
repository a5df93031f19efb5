"""Benchmark: tficon's CPU threading default against one thread and torch's own default, side by side.

Each run is a fresh interpreter (OpenMP reads its wait policy only when torch loads) that loads the
embedded toy model and composes the demo sample. Configurations, interleaved so that a change in the
machine's load hits all of them alike:

- ``tficon default``: what the CLI does (``tficon.core.threads``: passive OpenMP wait policy, torch threads
  capped to the free cores);
- ``1 thread``: ``--threads 1``;
- ``torch default``: neither (one spinning OpenMP thread per core).

Printed per configuration: torch threads used, wall and CPU seconds of the composition (min and median
over the repeats), and the wall ratio to one thread. Timings on a busy machine are noisy: compare the
configurations within one run.

Usage: python benchmarks/bench_threads.py [--repeats 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONFIGS = ("tficon default", "1 thread", "torch default")


def _child(config: str, steps: int) -> None:
    """One composition in this process, under ``config``; prints one JSON line."""
    from tficon.core import threads

    if config != "torch default":
        threads.prepare_environment()
    import torch

    settings = threads.apply_threads(1 if config == "1 thread" else None) if config != "torch default" else None
    from tficon.composition.session import Session
    from tficon.core.config import CompositionConfig
    from tficon.model import load_model
    from tficon.toy.samples import demo_sample

    model = load_model("toy", device="cpu")
    s = demo_sample()
    session = Session(
        model,
        s.background,
        s.foreground,
        s.foreground_mask,
        s.box,
        s.prompt,
        CompositionConfig(mode=s.mode, steps=steps),
        progress=False,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    session.run()
    result = {
        "config": config,
        "threads": torch.get_num_threads(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "describe": settings.describe() if settings else "torch's own default",
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }
    print("RESULT" + json.dumps(result))


def _run(config: str, steps: int) -> dict:
    # A clean environment for each configuration: the user's own thread settings would blur the comparison.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TFICON_THREADS")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", config, "--steps", str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode or not lines:
        raise RuntimeError(f"{config!r} run failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.steps)
        return

    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        load = "n/a"
    from tficon.core.threads import usable_cores

    print(f"toy model, demo sample, {args.steps} steps, {args.repeats} interleaved repeats; "
          f"{usable_cores()} usable cores, load average at start {load}")
    runs: dict[str, list[dict]] = {c: [] for c in args.configs}
    for repeat in range(args.repeats):
        for config in args.configs:
            outcome = _run(config, args.steps)
            runs[config].append(outcome)
            print(f"  run {repeat + 1} {config:15s} {outcome['threads']} thread(s)  "
                  f"wall {outcome['wall_s']:6.2f} s  cpu {outcome['cpu_s']:6.2f} s", flush=True)

    reference = statistics.median(r["wall_s"] for r in runs["1 thread"]) if "1 thread" in runs else None
    print(f"\n{'configuration':15s} {'threads':>7s} {'wall min':>9s} {'wall med':>9s} {'cpu med':>8s} {'vs 1 thread':>11s}")
    for config, outcomes in runs.items():
        walls = [r["wall_s"] for r in outcomes]
        cpus = [r["cpu_s"] for r in outcomes]
        thread_counts = sorted({r["threads"] for r in outcomes})
        ratio = f"{statistics.median(walls) / reference:.2f}x" if reference else "-"
        print(f"{config:15s} {'/'.join(map(str, thread_counts)):>7s} {min(walls):8.2f}s {statistics.median(walls):8.2f}s "
              f"{statistics.median(cpus):7.2f}s {ratio:>11s}")
    if "tficon default" in runs:
        print(f"\ntficon default in the last run: {runs['tficon default'][-1]['describe']}")


if __name__ == "__main__":
    main()

"""Benchmark: the cost of one TF-ICON composition, measured side by side in one run.

For each row (a model at an image size) it prints, with plain and composition runs interleaved (a warm-up
pair first, then ``--pairs`` measured pairs; CPU time of the process and wall time, min and median):
- plain 20-step classifier-free-guided text-to-image sampling with the same solver;
- a full composition (both inversions + composition, a fresh Session each time, so nothing is cached);
- the composition stage alone, ours against the official code's sequential structure at the same tau_b
  (tests/official_reference.py: separate branch calls, logits stored per branch, N x N maps kept),
  also interleaved, with the UNet sample-evaluations of both counted by a forward hook as they run;
- the cost of re-running after a tau_b change against a full run (Session.update keeps the prefix);
- peak memory above the start of each measured call (CUDA: max allocated; CPU: the resident set's reset
  high-water mark, see benchmarks/bench_memory.py).

Times and memory come from two passes. The timing pass runs with the allocator as every user has it. The
memory pass runs each call once in a fresh child process that pins glibc's mmap threshold, so that freed blocks
go back to the system and the resident set measures live memory. Pinned, every large allocation costs page
faults, which would add system time to the CPU figures (0.8-1 s of the 4 s of a 256 px composition), so no time
is read from that pass; and in the timing process the heap, grown by earlier calls, would hide later peaks.

Rows ``model:size``: ``toy`` (the embedded model, 64 px native) and ``tiny-sd2`` / ``tiny-sd1`` (tiny random SD
models). Larger sizes show the attention cost (tokens grow with the square of the size).

Usage: python benchmarks/bench_session.py [--rows toy:64 tiny-sd2:64 tiny-sd2:256 tiny-sd2:512] [--pairs 5]
Timings on a busy machine are noisy: read min and median, and ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the official-structure oracle
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import PeakMemory  # noqa: E402

from tficon.composition.engine import Engine  # noqa: E402
from tficon.composition.session import Session  # noqa: E402
from tficon.core import solver  # noqa: E402
from tficon.toy.samples import toy_sample  # noqa: E402


def _pin_mmap_threshold() -> None:
    """Make glibc return freed large blocks to the OS, so resident-set peaks measure live memory."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _load(name: str):
    if name == "toy":
        from tficon.model import load_model

        return load_model("toy")
    from tficon.model.tiny import tiny_model

    return tiny_model(name.removeprefix("tiny-"))


class _Counter:
    """Counts samples through the UNet with a forward pre-hook (no patching)."""

    def __init__(self, unet):
        self.calls = self.samples = 0
        self.handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.calls += 1
        self.samples += sample.shape[0]

    def reset(self):
        self.calls = self.samples = 0


class _Runs:
    """CPU time, wall time, peak memory and sample-evaluations of repeated calls of one labelled function."""

    def __init__(self, counter: _Counter, memory: PeakMemory | None):
        self.counter, self.memory = counter, memory
        self.runs: dict[str, list[dict]] = {}

    def __call__(self, label: str, fn, *, keep: bool = True):
        self.counter.reset()
        cpu, wall = time.process_time(), time.perf_counter()
        with self.memory.measure() if self.memory else nullcontext({}) as m:
            result = fn()
        r = dict(cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall,
                 evals=self.counter.samples, peak_bytes=m.get("peak_bytes", float("nan")))
        if keep:
            self.runs.setdefault(label, []).append(r)
        return result

    def stat(self, label: str, key: str, how=statistics.median) -> float:
        return how(r[key] for r in self.runs[label])


def bench(name: str, size: int, steps: int, pairs: int, tau_b: float, *, memory: bool = False) -> dict:
    """One row. ``memory``: the memory pass (each call once after its warm-up, peaks only)."""
    model = _load(name)
    device = model.device.type
    sample = toy_sample(image_size=size)
    counter = _Counter(model.unet)
    runs = _Runs(counter, PeakMemory("cuda" if device == "cuda" else "cpu") if memory else None)
    warm_up = 1  # first calls allocate caches once; never measured
    if memory:
        pairs = 1
    plain_engine = Engine(model)
    schedule = plain_engine.schedule
    e_u, e_c = model.encode_prompt(""), model.encode_prompt(sample.prompt)
    latent = size // model.vae_scale_factor

    def txt2img():
        x = torch.randn(1, model.latent_channels, latent, latent, generator=torch.Generator().manual_seed(0)).to(model.device)
        with torch.no_grad():
            return solver.sample(plain_engine.model_fn(e_c, e_u, 5.0), x, schedule, steps, 2)

    def session():  # a new Session has a new engine, so an empty inversion cache: the inversions are measured
        return Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                       image_size=size, steps=steps, tau_b=tau_b)

    done = None
    for i in range(pairs + warm_up):  # pair 0 warms up
        runs("plain", txt2img, keep=i >= warm_up)
        done = runs("composition", lambda: session().run(), keep=i >= warm_up)

    # The composition stage alone: ours from inverted latents against the official structure, interleaved.
    from official_reference import official_composition

    from tficon.core.placement import region_indices

    levels = len(model.unet.config.block_out_channels)
    inputs = done.inputs
    regions = {(latent >> k, latent >> k): region_indices(inputs.placement, inputs.object_mask, latent >> k, latent >> k)
               for k in range(levels)}
    x_bg, x_ref = done.invert()
    start = done.compose_start()
    config = done.config

    def official():
        with torch.no_grad():
            return official_composition(
                model.unet, schedule, x_bg_T=x_bg, x_ref_T=x_ref, start=start,
                e_star=model.exceptional_embedding(), e_uncond=e_u, e_cond=e_c, regions=regions,
                param_box=inputs.placement.latent_target_box, steps=steps, order=config.order,
                guidance=config.effective_guidance, tau_a=config.tau_a, tau_b=config.tau_b, tau_bg=config.tau_bg,
                prediction_type=model.prediction_type)

    stage_pairs = max(1, pairs // 2)  # the official structure is slow at large sizes; fewer pairs
    official_result = None
    for i in range(stage_pairs + warm_up):
        prepared = session()  # inversions and start latent untimed: the stage alone is compared
        prepared.invert()
        prepared.compose_start()
        runs("our stage", prepared.run, keep=i >= warm_up)
        official_result = runs("official stage", official, keep=i >= warm_up)

    def rerun():
        done.update(tau_b=tau_b + 0.1)
        return done.run()

    runs("rerun", rerun)
    counter.handle.remove()
    return dict(name=name, size=size, latent=latent, device=str(model.device), steps=steps, pairs=pairs,
                stage_pairs=stage_pairs, tau_b=tau_b, runs=runs,
                official_code_evals=official_result["official_sample_evals"] + 2 * 2 * steps)


def _row(runs: _Runs, peaks: _Runs, label: str, title: str) -> str:
    s = runs.stat
    return (f"{title:30s} {int(s(label, 'evals')):5d}  CPU {s(label, 'cpu_s', min):7.2f} / {s(label, 'cpu_s'):7.2f} s"
            f"   wall {s(label, 'wall_s', min):7.2f} / {s(label, 'wall_s'):7.2f} s   peak +{peaks.stat(label, 'peak_bytes') / 2**20:5.0f} MB")


def report(r: dict, m: dict) -> None:
    """Print a row: times from the timing pass ``r``, peaks from the memory pass ``m``."""
    runs, peaks = r["runs"], m["runs"]
    s = runs.stat
    print(f"\n== {r['name']} at {r['size']} px (latents {r['latent']}x{r['latent']}), {r['device']}, {r['steps']} steps, "
          f"tau_b {r['tau_b']}, {r['pairs']} pairs after a warm-up ==")
    print(f"{'':30s} evals  CPU min / median          wall min / median          memory (median)")
    print(_row(runs, peaks, "plain", "plain txt2img (CFG)"))
    print(_row(runs, peaks, "composition", "tficon composition (all)"))
    print(f"{'  ratio':30s} {s('composition', 'evals') / s('plain', 'evals'):5.2f}x CPU "
          f"{s('composition', 'cpu_s', min) / s('plain', 'cpu_s', min):.2f}x (min) {s('composition', 'cpu_s') / s('plain', 'cpu_s'):.2f}x (median)"
          f"   wall {s('composition', 'wall_s') / s('plain', 'wall_s'):.2f}x (median)")
    print(f"composition stage only, {r['stage_pairs']} pair(s) after a warm-up:")
    print(_row(runs, peaks, "our stage", "  ours (batched)"))
    print(_row(runs, peaks, "official stage", "  official structure"))
    print(f"{'  official / ours':30s} {s('official stage', 'evals') / s('our stage', 'evals'):5.2f}x CPU "
          f"{s('official stage', 'cpu_s') / s('our stage', 'cpu_s'):.2f}x (median)   "
          f"(the official code itself runs {r['official_code_evals']} sample-evals with its inversions, CFG-doubled helpers)")
    print(_row(runs, peaks, "rerun", "re-run after a tau_b change") +
          f"   ({s('rerun', 'cpu_s') / s('composition', 'cpu_s'):.2f}x a full run's CPU)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--rows", nargs="+", default=["toy:64", "tiny-sd2:64", "tiny-sd2:256", "tiny-sd2:512"],
                        help="model:size in pixels; models toy, tiny-sd2, tiny-sd1")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=5, help="measured plain/composition pairs after the warm-up pair")
    parser.add_argument("--tau-b", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_session: {args.threads} thread(s), {os.cpu_count()} CPUs, load average {load:.2f} at the start")
    rows = [(name, int(size or 64)) for name, _, size in (row.partition(":") for row in args.rows)]
    if args.memory_pass:  # the child process of the memory pass: print each row's peaks as JSON
        _pin_mmap_threshold()
        peaks = [bench(name, size, args.steps, args.pairs, args.tau_b, memory=True)["runs"].runs for name, size in rows]
        print(json.dumps(peaks))
        return
    child = [sys.executable, __file__, "--memory-pass", "--steps", str(args.steps), "--tau-b", str(args.tau_b),
             "--threads", str(args.threads), "--rows", *args.rows]
    memory = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    for (name, size), peaks in zip(rows, memory):
        measured = _Runs(None, None)
        measured.runs = peaks
        report(bench(name, size, args.steps, args.pairs, args.tau_b), dict(runs=measured))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load:.2f} at the end")


if __name__ == "__main__":
    main()

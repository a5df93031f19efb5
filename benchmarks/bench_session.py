"""Benchmark: the cost of one TF-ICON composition, measured side by side in one run.

For each model it prints
- UNet sample-evaluations and wall time of a full composition (both inversions + composition)
  against plain 20-step classifier-free-guided text-to-image sampling with the same solver;
- the same composition run with the official code's sequential structure (tests/official_reference.py,
  separate branch calls, logits stored per branch), the official sample-evaluation count included;
- the cost of re-running after a tau_b change against a full run (Session.update keeps the prefix);
- peak memory (CUDA: max allocated during the composition; CPU: the process's peak resident set so far).

Usage: python benchmarks/bench_session.py [--models toy tiny-sd2] [--steps 20] [--repeats 3]
Timings on a busy machine are noisy: ratios measured in the same run are what to read.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the official-structure oracle

from tficon import solver  # noqa: E402
from tficon.engine import Engine  # noqa: E402
from tficon.samples import toy_sample  # noqa: E402
from tficon.session import Session  # noqa: E402


def _load(name: str):
    if name == "toy":
        from tficon.models import load_model

        return load_model("toy"), 64
    from tficon.tiny import tiny_model

    return tiny_model(name.removeprefix("tiny-")), 128


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


def _time(fn, repeats):
    times = []
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(name: str, steps: int, repeats: int) -> dict:
    model, size = _load(name)
    sample = toy_sample(image_size=size)
    counter = _Counter(model.unet)
    plain_engine = Engine(model)
    schedule = plain_engine.schedule
    e_u, e_c = model.encode_prompt(""), model.encode_prompt(sample.prompt)

    def txt2img():
        x = torch.randn(1, model.latent_channels, size // model.vae_scale_factor, size // model.vae_scale_factor,
                        generator=torch.Generator().manual_seed(0)).to(model.device)

        return solver.sample(plain_engine.model_fn(e_c, e_u, 5.0), x, schedule, steps, 2)

    def session():  # a new Session has a new engine, so an empty inversion cache: the inversions are measured
        return Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                       image_size=size, steps=steps)

    def composition():
        return session().run()

    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    txt2img()  # warm-up
    counter.reset()
    t_plain, _ = _time(txt2img, repeats)
    evals_plain = counter.samples // repeats
    composition()  # warm-up (and fit caches)
    counter.reset()
    t_comp, done = _time(composition, repeats)
    evals_comp = counter.samples // repeats
    peak = torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda" else _peak_rss_mb()

    def rerun():
        done.update(tau_b=0.9 if done.config.tau_b != 0.9 else 0.8)
        return done.run()

    counter.reset()
    t_rerun, _ = _time(rerun, repeats)
    evals_rerun = counter.samples // repeats

    from official_reference import official_composition
    from tficon.placement import region_indices

    lh = size // model.vae_scale_factor
    levels = len(model.unet.config.block_out_channels)
    inputs = done.inputs
    regions = {(lh >> k, lh >> k): region_indices(inputs.placement, inputs.object_mask, lh >> k, lh >> k)
               for k in range(levels)}
    x_bg, x_ref = done.invert()

    def official():
        with torch.no_grad():
            return official_composition(
                model.unet, schedule, x_bg_T=x_bg, x_ref_T=x_ref, start=done.compose_start(),
                e_star=model.exceptional_embedding(), e_uncond=e_u, e_cond=e_c, regions=regions,
                param_box=inputs.placement.latent_target_box, steps=steps, order=2, guidance=5.0,
                tau_a=0.4, tau_b=0.8, prediction_type=model.prediction_type)

    counter.reset()
    t_official, result = _time(official, 1)
    # the official code also doubles every inversion call and every orig/ref/cross call (CFG with equal halves)
    official_evals = result["official_sample_evals"] + 2 * 2 * steps
    t_inversions = done.timings.get("invert", 0.0)
    counter.handle.remove()
    return dict(
        name=name, device=str(model.device), steps=steps,
        t_plain=t_plain, evals_plain=evals_plain, t_comp=t_comp, evals_comp=evals_comp,
        t_rerun=t_rerun, evals_rerun=evals_rerun, t_official_composition=t_official,
        t_our_composition=sum(r.seconds for r in done.records), official_evals=official_evals,
        peak_mb=peak, t_inversions=t_inversions,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["toy", "tiny-sd2"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    for name in args.models:
        r = bench(name, args.steps, args.repeats)
        print(f"\n== {r['name']} ({r['device']}, {r['steps']} steps) ==")
        print(f"plain txt2img (CFG):        {r['evals_plain']:4d} sample-evals  {r['t_plain']:7.3f} s")
        print(f"tficon composition (all):   {r['evals_comp']:4d} sample-evals  {r['t_comp']:7.3f} s   "
              f"ratio {r['evals_comp'] / r['evals_plain']:.2f}x evals, {r['t_comp'] / r['t_plain']:.2f}x time")
        print(f"official structure:         {r['official_evals']:4d} sample-evals (counted as the official code runs them); "
              f"its composition stage took {r['t_official_composition']:.3f} s vs ours "
              f"{r['t_our_composition']:.3f} s ({r['t_official_composition'] / max(r['t_our_composition'], 1e-9):.2f}x)")
        print(f"re-run after tau_b change:  {r['evals_rerun']:4d} sample-evals  {r['t_rerun']:7.3f} s   "
              f"({r['t_rerun'] / r['t_comp']:.2f}x a full run)")
        print(f"peak memory:                {r['peak_mb']:.0f} MB ({'CUDA max allocated' if 'cuda' in r['device'] else 'process peak RSS, all models so far'})")


if __name__ == "__main__":
    main()

"""Benchmark: peak memory and time of one injected UNet step against a plain CFG step, at real SD sizes.

The SD 2.1-base and SD 1.5 UNet architectures (SDXL with ``--models sdxl``) are built from their configs
(benchmarks/sd_architectures.py) with random weights, nothing is downloaded. For each model and dtype a
fresh child process measures, on the CPU:

- a plain CFG step: one UNet call on batch 2 (uncond, cond) with diffusers' stock attention processors;
- an injected step: one UNet call on batch 5 (background, reference, pseudo_cross, uncond, cond) with
  foreground and background injection on, the costliest step of a composition, with tficon's composite
  processors installed (the demo sample's box and object, scaled to ``--size``);
- the largest self-attention layer's composite alone: tficon's fused computation against the materialised
  one (the N x N logits built in float32, softmax, times V: what the processor did before), same inputs.

Plain and injected steps are interleaved; the first pair is a warm-up and is not reported.

Memory on the CPU: the resident set's high-water mark (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` right before each measurement) minus the resident set just before. The child
pins glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``) so that freed blocks go back to the OS and each
measurement starts from what is really live. Where ``/proc`` cannot do this, a psutil thread samples the
resident set every millisecond instead (it can miss short peaks; the output says which method ran). Time:
CPU time of the process (all threads) and wall time.

``--step-device cuda`` runs the one-step measurements on the GPU instead (``torch.cuda.max_memory_allocated``
above what was allocated before; wall time after a synchronize).

On CUDA (``torch.cuda.is_available()``) it also runs a full 20-step composition (both inversions, the
composition, decoding) of the SD 2.1-base architecture (``--composition-model sdxl``, or ``sd21 sdxl`` for both:
SDXL base at 1024 px) in
float16 at ``--size`` and reports ``torch.cuda.max_memory_allocated`` against the goal: 5 GB for SD 2.1-base,
12 GB for SDXL (a 16 GB Colab GPU). ``--composition-device cpu`` runs the same on
the CPU (with the resident-set method) to check the path on a machine without a GPU.

Usage: python benchmarks/bench_memory.py [--models sd21 sd15 sdxl] [--size 512] [--dtypes float32 bfloat16]
       [--repeats 2] [--threads 2] [--step-device cpu|cuda] [--composition-device cuda|cpu|none]
       [--composition-model sd21 sdxl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOAL_GB = {"sd21": 5.0, "sd15": 5.0, "sdxl": 12.0}  # full fp16 composition on CUDA, max allocated
MMAP_THRESHOLD = 128 * 1024  # glibc's default before its dynamic adjustment; pinning it disables the adjustment


# ---------------------------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _hwm_resettable() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak extra memory of a block: CUDA max allocated, or the resident set's high-water mark (see the module doc)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.method = "cuda-max-allocated" if device == "cuda" else ("rss-hwm" if _hwm_resettable() else "rss-sampled")

    @contextmanager
    def measure(self):
        result = {}
        if self.method == "cuda-max-allocated":
            import torch

            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            yield result
            torch.cuda.synchronize()
            result["peak_bytes"] = torch.cuda.max_memory_allocated() - before
            result["max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        elif self.method == "rss-hwm":
            before = _status_kb("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            yield result
            result["peak_bytes"] = (_status_kb("VmHWM") - before) * 1024
        else:
            import psutil

            process = psutil.Process()
            before = process.memory_info().rss
            peak = [before]
            done = threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], process.memory_info().rss)
                    time.sleep(0.001)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                yield result
            finally:
                done.set()
                sampler.join()
            result["peak_bytes"] = max(peak[0], process.memory_info().rss) - before


@contextmanager
def timed(result: dict, device: str = "cpu"):
    """CPU and wall time of a block; on CUDA the wall time waits for the queued kernels to finish."""
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    result["cpu_s"], result["wall_s"] = time.process_time() - cpu, time.perf_counter() - wall


# ---------------------------------------------------------------------------------------------------------------
# Child: one model, one dtype
# ---------------------------------------------------------------------------------------------------------------


def _regions(size: int, levels: int):
    """region_fn for the demo sample's box and object at ``size`` (tficon's placement, as a Session builds it)."""
    from tficon.core.placement import compute_placement, prepare_foreground, region_indices
    from tficon.toy.samples import toy_sample

    sample = toy_sample(image_size=size)
    place = compute_placement(sample.box, sample.foreground.size, (size, size), 8, levels=levels)
    _, mpad = prepare_foreground(sample.foreground, sample.foreground_mask, place)
    return lambda h, w: region_indices(place, mpad, h, w)


def _layer_comparison(unet, name, controller, layout, dtype, memory: PeakMemory, device: str = "cpu") -> dict:
    """The largest self-attention layer's composite: fused vs materialised N x N, on random q/k/v."""
    import torch

    from tficon.composition.attention import composite_logits, fused_composite_attention

    attn = next(m for n, m in unet.named_modules() if n.endswith("attn1"))  # down path first: the finest grid
    lh, lw = controller.latent_size
    if name == "sdxl":
        lh, lw = lh // 2, lw // 2  # SDXL has no attention at the latent resolution
    n = lh * lw
    d = attn.inner_dim // attn.heads
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, attn.heads, n, d, generator=g).to(device, dtype) for _ in range(3))
    regions = controller.regions(n)
    outside = controller.outside_box(n, q.device)

    def fused():
        return fused_composite_attention(q, k, v, layout=layout, regions=regions, outside=outside, scale=attn.scale)

    def materialised():
        own = (q[4] @ k[4].transpose(-1, -2)).float() * attn.scale
        logits = composite_logits(own, query=q, key=k, layout=layout, regions=regions, outside=outside, scale=attn.scale)
        return (torch.softmax(logits, -1) @ v[4].float()).to(dtype)

    rows = {"tokens": n, "heads": attn.heads, "head_dim": d}
    outputs = {}
    with torch.no_grad():
        for label, fn in (("fused", fused), ("materialised", materialised), ("fused", fused)):  # fused twice: warm
            r = {}
            with memory.measure() as m, timed(r, device):
                outputs[label] = fn()
            rows[label] = dict(r, peak_bytes=m["peak_bytes"])
    rows["max_abs_difference"] = float((outputs["fused"].float() - outputs["materialised"].float()).abs().max())
    rows["output_scale"] = float(outputs["materialised"].float().abs().max())
    return rows


def worker(name: str, dtype_name: str, size: int, repeats: int, threads: int, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    sys.path.insert(0, str(HERE))
    import sd_architectures as arch

    from tficon.composition.attention import BatchLayout, InjectionController, composite_attention
    from tficon.model import cast_module

    dtype = getattr(torch, dtype_name)
    memory = PeakMemory(device)
    built = time.perf_counter()
    unet = arch.unet(name, device=device)
    cast_module(unet, dtype)  # without diffusers' spurious "kept in float32" warning
    build_s = time.perf_counter() - built
    config = unet.config
    latent = size // 8
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, config.in_channels, latent, latent, generator=g).to(device, dtype)
    t = torch.full((5,), 500.0, device=device)
    e = torch.randn(5, arch.TEXT_TOKENS, config.cross_attention_dim, generator=g).to(device, dtype)
    extra5 = arch.extra_unet_inputs(name, 5, size, dtype, device)
    extra2 = arch.extra_unet_inputs(name, 2, size, dtype, device)
    controller = InjectionController(latent_size=(latent, latent),
                                     region_fn=_regions(size, len(config.block_out_channels)))
    layout = BatchLayout(background=0, reference=1, pseudo_cross=2, uncond=3, cond=4, fg=True, bg=True)

    def plain():
        return unet(x[3:], t[3:], encoder_hidden_states=e[3:], **extra2).sample

    def injected():
        with composite_attention(unet, controller):
            controller.layout = layout
            try:
                return unet(x, t, encoder_hidden_states=e, **extra5).sample
            finally:
                controller.layout = None

    runs = {"plain": [], "injected": []}
    with torch.no_grad():
        for pair in range(repeats + 1):
            for label, fn in (("plain", plain), ("injected", injected)):
                r = {}
                with memory.measure() as m, timed(r, device):
                    fn()
                r["peak_bytes"] = m["peak_bytes"]
                if pair > 0:  # pair 0 warms caches (oneDNN primitives, region indices)
                    runs[label].append(r)
    return dict(
        model=name, dtype=dtype_name, size=size, threads=threads, device=device, memory_method=memory.method,
        parameters=sum(p.numel() for p in unet.parameters()), build_s=build_s, runs=runs,
        layer=_layer_comparison(unet, name, controller, layout, dtype, memory, device),
    )


def composition_worker(name: str, size: int, steps: int, device: str, threads: int) -> dict:
    """A full composition (inversions, composition, decode) of the full-size random model, fp16 on CUDA."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    import sd_architectures as arch

    from tficon.composition.session import Session
    from tficon.toy.samples import toy_sample

    dtype = torch.float16 if device == "cuda" else torch.float32
    memory = PeakMemory(device)
    model = arch.loaded_model(name, device=device, dtype=dtype)
    sample = toy_sample(image_size=size)
    parts = (model.unet, model.vae, model.text_encoder, model.text_encoder_2)
    weights = sum(p.numel() * p.element_size() for m in parts if m is not None for p in m.parameters())
    r = {}
    with memory.measure() as m, timed(r, device):
        session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box,
                          sample.prompt, image_size=size, steps=steps)
        session.run()
        session.result  # noqa: B018 (decodes)
    return dict(model=name, size=size, steps=steps, device=device, dtype=str(dtype).removeprefix("torch."),
                memory_method=memory.method, weights_bytes=weights, **r, **m)


# ---------------------------------------------------------------------------------------------------------------
# Parent: spawn, print
# ---------------------------------------------------------------------------------------------------------------


def _child(args: list[str], threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD), OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f} GB"


def _mb(b: float) -> str:
    return f"{b / 2**20:.0f} MB"


def _summary(runs: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in runs]
    return min(values), statistics.median(values)


def report(r: dict) -> None:
    print(f"\n== {r['model']} UNet ({r['parameters'] / 1e6:.0f} M parameters, random), {r['dtype']}, "
          f"{r['size']}x{r['size']} (latents {r['size'] // 8}), "
          f"{'CUDA' if r.get('device') == 'cuda' else str(r['threads']) + ' CPU thread(s)'}, "
          f"{len(r['runs']['plain'])} measured pairs after a warm-up ==")
    for label, title in (("plain", "plain CFG step (batch 2)"), ("injected", "injected step (batch 5)")):
        runs = r["runs"][label]
        cpu, wall = _summary(runs, "cpu_s"), _summary(runs, "wall_s")
        peak = statistics.median(x["peak_bytes"] for x in runs)
        print(f"{title:26s} peak +{_gb(peak)}   CPU {cpu[0]:6.1f} s min / {cpu[1]:6.1f} s median   "
              f"wall {wall[0]:6.1f} / {wall[1]:6.1f} s")
    p, i = r["runs"]["plain"], r["runs"]["injected"]
    clock, clock_name = ("wall_s", "wall time") if r.get("device") == "cuda" else ("cpu_s", "CPU time")
    print(f"{'injected / plain':26s} memory {statistics.median(x['peak_bytes'] for x in i) / max(1, statistics.median(x['peak_bytes'] for x in p)):.2f}x   "
          f"{clock_name} {_summary(i, clock)[1] / _summary(p, clock)[1]:.2f}x (median; batch 5 vs 2 alone is 2.5x)")
    layer = r["layer"]
    print(f"largest attn1 layer ({layer['tokens']} tokens, {layer['heads']} heads x {layer['head_dim']}), cond row "
          f"composite: fused +{_mb(layer['fused']['peak_bytes'])} {layer['fused']['cpu_s']:.2f} s CPU; "
          f"materialised N x N +{_mb(layer['materialised']['peak_bytes'])} {layer['materialised']['cpu_s']:.2f} s CPU; "
          f"max |difference| {layer['max_abs_difference']:.2g} (outputs up to {layer['output_scale']:.2g})")
    print(f"memory method: {r['memory_method']}")


def report_composition(r: dict) -> None:
    peak = r.get("max_allocated_bytes", r["peak_bytes"])
    what = "torch.cuda.max_memory_allocated" if r["device"] == "cuda" else "resident-set peak above the start"
    goal = GOAL_GB[r["model"]]
    verdict = f"goal <= {goal:.0f} GB: {'met' if peak <= goal * 2**30 else 'MISSED'}" if r["device"] == "cuda" else \
        "CPU check of the path, not the CUDA goal"
    print(f"\n== full {r['steps']}-step composition, {r['model']} architecture (random), {r['dtype']}, "
          f"{r['size']}x{r['size']}, {r['device']} ==")
    print(f"{what}: {_gb(peak)} (weights {_gb(r['weights_bytes'])}); {verdict}; {r['wall_s']:.1f} s wall")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--models", nargs="+", default=["sd21", "sd15"], choices=["sd21", "sd15", "sdxl"])
    parser.add_argument("--size", type=int, default=None, help="image size in pixels (default: each model's native)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=2, help="measured plain/injected pairs after the warm-up pair")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step-device", choices=["cpu", "cuda"], default="cpu",
                        help="where the one-step measurements run (cuda: torch.cuda.max_memory_allocated)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the full composition")
    parser.add_argument("--composition-device", choices=["auto", "cuda", "cpu", "none"], default="auto",
                        help="auto: the full composition on CUDA when available, else skipped")
    parser.add_argument("--composition-model", nargs="+", choices=["sd21", "sdxl"], default=["sd21"],
                        help="architecture(s) of the full composition (default size: its native 512 / 1024)")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "DTYPE", "SIZE", "DEVICE"), help=argparse.SUPPRESS)
    parser.add_argument("--composition-worker", nargs=3, metavar=("MODEL", "SIZE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        name, dtype, size, device = args.worker
        print("RESULT " + json.dumps(worker(name, dtype, int(size), args.repeats, args.threads, device)))
        return
    if args.composition_worker:
        name, size, device = args.composition_worker
        print("RESULT " + json.dumps(composition_worker(name, int(size), args.steps, device, args.threads)))
        return

    import sd_architectures as arch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_memory: {os.cpu_count()} CPUs, load average {load:.2f} at the start")
    for name in args.models:
        size = args.size or arch.NATIVE_SIZE[name]
        for dtype in args.dtypes:
            report(_child(["--worker", name, dtype, str(size), args.step_device, "--repeats", str(args.repeats),
                           "--threads", str(args.threads)], args.threads))
    device = args.composition_device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "none"
    if device == "none":
        print("\nfull composition: skipped (no CUDA device; --composition-device cpu runs it on the CPU)")
    else:
        for name in args.composition_model:
            size = args.size or arch.NATIVE_SIZE[name]
            report_composition(_child(["--composition-worker", name, str(size), device, "--steps", str(args.steps),
                                       "--threads", str(args.threads)], args.threads))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load:.2f} at the end")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()

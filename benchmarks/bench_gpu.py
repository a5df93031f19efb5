"""Benchmark: a TF-ICON composition against diffusers' own sampling, on the same device, interleaved.

For each row (a model at an image size) it times, after one separate warm-up round, ``--rounds`` interleaved rounds of
- ``pipeline``: diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` built from the same
  components, 20 steps of DPM-Solver++ (order 2) with classifier-free guidance, decoded to an image;
- ``compose``: a full tficon composition (a fresh Session and engine: both inversions, the start latent, the
  composition steps, the decode), at the same steps;
- ``tau_b re-run``: ``Session.update(tau_b=...)`` on a finished Session, then the re-run and decode (tau_b
  alternates between two values, so each round recomputes the steps from the first one it changes).

It prints wall time (min and median; the device is synchronised around each call), peak memory of each call on
CUDA (``torch.cuda.max_memory_allocated`` after a reset; on the CPU the column says n/a), and the ratios the GPU
issue sets goals for: compose / pipeline (goal <= 3), re-run / compose (goal <= 0.15) and the re-run's seconds
(goal < 0.5 s at SD 2.1 512 px on an H100-class GPU). It also counts the host-reading tensor operations of one
composition step (``.item()``, ``bool(tensor)``, ``nonzero`` ...: each one waits for the GPU's queue to drain),
counted on whatever device runs.

Rows ``model:size``. ``toy`` is the embedded trained model; ``tiny-sd2`` / ``tiny-sdxl`` are tiny random models
(seconds on a CPU: what CI runs); ``sd21`` / ``sdxl`` are the real architectures with random weights (benchmarks/
sd_architectures.py; build them on a GPU). Defaults: ``toy:64 tiny-sd2:64 tiny-sdxl:64`` on the CPU, ``toy:64
sd21:512 sdxl:1024`` on CUDA, float16 on CUDA and float32 on the CPU.

Usage: python benchmarks/bench_gpu.py [--device cuda|cpu] [--rows ...] [--rounds 3] [--steps 20] [--write]
``--write`` also writes the report to benchmarks/results/<device name>-<date>.txt.
"""

from __future__ import annotations

import argparse
import datetime
import io
import platform
import statistics
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Tensor operations that read a value back to the host (on CUDA each one waits for the queue to drain).
HOST_READS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy",
                        "equal", "allclose", "is_nonzero"})  # fmt: skip


class HostReads(TorchFunctionMode):
    """Counts the host-reading tensor operations (:data:`HOST_READS`) called inside the block, by name."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, device: str, dtype: torch.dtype):
    from tficon.model import load_model
    from tficon.model.tiny import tiny_model

    if name == "toy":
        return load_model("toy", device=device, dtype=dtype)
    if name.startswith("tiny-"):
        return tiny_model(name.removeprefix("tiny-"), device=device, dtype=dtype)
    from sd_architectures import loaded_model

    return loaded_model(name, device=device, dtype=dtype)


def _pipeline(model):
    """diffusers' own text-to-image pipeline over the model's components, with DPM-Solver++ (order 2)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(
        model.scheduler_config, algorithm_type="dpmsolver++", solver_order=2
    )
    if model.text_encoder_2 is not None:
        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet, scheduler=scheduler,
            force_zeros_for_empty_prompt=model.force_zeros_for_empty_prompt,
        )  # fmt: skip
    else:
        pipe = StableDiffusionPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Row:
    """One model at one size: the three measured calls and their timings."""

    def __init__(self, name: str, size: int, device: str, dtype: torch.dtype, steps: int):
        from tficon.toy.samples import toy_sample

        self.label = f"{name}:{size}"
        self.model = _model(name, device, dtype)
        self.device = self.model.device
        self.size, self.steps = size, steps
        self.sample = toy_sample(image_size=size)
        self.pipe = _pipeline(self.model)
        self.finished = None
        self.tau_b = (0.8, 0.6)  # the re-run switches between these (their plans differ from 6 steps on)
        self.times: dict[str, list[float]] = {"pipeline": [], "compose": [], "tau_b re-run": []}
        self.peaks: dict[str, int] = {}

    def session(self):
        from tficon.composition.session import Session

        s = self.sample
        return Session(self.model, s.background, s.foreground, s.foreground_mask, s.box, s.prompt,
                       image_size=self.size, steps=self.steps)  # fmt: skip

    def pipeline(self):
        generator = torch.Generator().manual_seed(0)
        return self.pipe(self.sample.prompt, num_inference_steps=self.steps, guidance_scale=5.0,
                         height=self.size, width=self.size, generator=generator).images[0]  # fmt: skip

    def compose(self):
        session = self.session()  # its own engine: nothing cached between rounds
        image = session.result
        self.finished = session
        return image

    def rerun(self):
        session = self.finished
        new = self.tau_b[1] if session.config.tau_b == self.tau_b[0] else self.tau_b[0]
        first = session.update(tau_b=new)
        if first is None or first == 0:
            raise RuntimeError(f"tau_b {new} changes {'nothing' if first is None else 'every step'} at {self.steps} steps")
        return session.result

    def measure(self, label: str, call, keep: bool) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        _synchronize(self.device)
        started = time.perf_counter()
        with torch.no_grad():
            call()
        _synchronize(self.device)
        seconds = time.perf_counter() - started
        if keep:
            self.times[label].append(seconds)
            if cuda:
                self.peaks[label] = max(self.peaks.get(label, 0), torch.cuda.max_memory_allocated(self.device))

    def round(self, keep: bool) -> None:
        self.measure("pipeline", self.pipeline, keep)
        self.measure("compose", self.compose, keep)
        self.measure("tau_b re-run", self.rerun, keep)

    def host_reads_per_step(self) -> float:
        """Host-reading operations per composition step, counted over one full run's steps (inversion excluded)."""
        session = self.session()
        session.compose_start()
        with HostReads() as counter:
            session.run()
        return counter.total / (self.steps + 1), counter.counts


def _report(rows: list[Row], rounds: int) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        for row in rows:
            print(f"== {row.label} ({row.model.family}, {str(row.model.dtype).removeprefix('torch.')}, "
                  f"{row.device}), {rounds} interleaved rounds after a warm-up round ==")  # fmt: skip
            for label, times in row.times.items():
                peak = row.peaks.get(label)
                memory = f"peak {peak / 2**30:6.2f} GiB" if peak is not None else "peak n/a (CPU)"
                print(f"{label:14s} wall {min(times):7.3f} s min / {statistics.median(times):7.3f} s median   {memory}")
            median = {label: statistics.median(times) for label, times in row.times.items()}
            print(f"compose / pipeline        {median['compose'] / median['pipeline']:6.2f}x   (goal <= 3)")
            print(f"tau_b re-run / compose    {median['tau_b re-run'] / median['compose']:6.2f}x   (goal <= 0.15)")
            print(f"tau_b re-run              {median['tau_b re-run']:6.3f} s   (goal < 0.5 s at sd21:512 on an H100)")
            reads, counts = row.host_reads_per_step()
            detail = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
            print(f"host reads per step       {reads:6.1f}   ({detail}; goal <= 1)")
            print()
    return out.getvalue()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    parser.add_argument("--write", action="store_true", help="also write benchmarks/results/<device>-<date>.txt")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    rows = args.rows or (["toy:64", "sd21:512", "sdxl:1024"] if cuda else ["toy:64", "tiny-sd2:64", "tiny-sdxl:64"])
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    import diffusers

    header = (f"# bench_gpu on {name}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
              f"{datetime.date.today().isoformat()}\n# python benchmarks/bench_gpu.py {' '.join(argv or sys.argv[1:])}\n\n")  # fmt: skip
    built = []
    for spec in rows:
        model, size = spec.split(":")
        row = Row(model, int(size), args.device, dtype, args.steps)
        row.round(keep=False)  # warm-up: allocator, kernels, caches
        built.append(row)
    for _ in range(args.rounds):  # interleaved: every row's three calls in each round
        for row in built:
            row.round(keep=True)
    report = header + _report(built, args.rounds)
    print(report, end="")
    if args.write:
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        path = Path(__file__).parent / "results" / f"{slug}-{datetime.date.today().isoformat()}.txt"
        path.write_text(report)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""GPU check: the composition on CUDA in float16 and bfloat16 agrees with the CPU's float32 one.

Needs a CUDA device (it says so and exits 2 without one). For each model below it runs the same Session on the CPU
in float32 (the reference) and on CUDA in float16 and bfloat16, and prints per run: the wall time, whether every
stored latent is finite, the PSNR of the decoded result against the reference, and the largest per-pixel
difference. Then it runs four toy samples through ``run_lockstep`` on CUDA (float16) and compares each with the
same Session run alone on CUDA.

Models: the embedded toy model (trained, 64 px), and the tiny random SD 2.x and SDXL stand-ins (64 px).

A half-precision run drifts from float32 along the ODE, so the PSNR is a measure of that drift, not a pass mark;
what must hold is finiteness and a result close to the reference (the script exits 1 on a non-finite value or a
PSNR under ``--min-psnr``, default 20 dB).

Usage: python benchmarks/cuda_check.py [--min-psnr 20] [--steps 20] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def _psnr(a, b) -> float:
    from tficon.eval.metrics import as_unit_tensor, psnr

    return psnr(as_unit_tensor(a), as_unit_tensor(b))


def _max_pixel_difference(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _session(model, sample, steps: int):
    from tficon.composition.session import Session

    return Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                   image_size=64, steps=steps)


def _finite(session) -> bool:
    """Every latent the Session keeps (inverted, start, per step) is finite."""
    tensors = [*session.invert(), *session.latents().values()]
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors)


def _load(name: str, device: str, dtype: torch.dtype):
    from tficon.model import load_model
    from tficon.model.tiny import tiny_model

    if name == "toy":
        return load_model("toy", device=device, dtype=dtype)
    return tiny_model(name.removeprefix("tiny-"), device=device, dtype=dtype)


def check_dtypes(name: str, steps: int, min_psnr: float, device: str) -> bool:
    from tficon.toy.samples import toy_sample

    sample = toy_sample()
    ok = True
    reference = None
    for where, dtype in (("cpu", torch.float32), (device, torch.float16), (device, torch.bfloat16)):
        model = _load(name, where, dtype)
        session = _session(model, sample, steps)
        started = time.perf_counter()
        session.run()
        image = session.result
        _synchronize(where)
        wall = time.perf_counter() - started
        finite = _finite(session)
        if reference is None:
            reference = image
            print(f"{name:10s} {where:4s} {str(dtype)[6:]:8s} {wall:6.2f} s  finite={finite}  (reference)")
            ok &= finite
            continue
        psnr = _psnr(image, reference)
        worst = _max_pixel_difference(image, reference)
        good = finite and psnr >= min_psnr
        ok &= good
        print(f"{name:10s} {where:4s} {str(dtype)[6:]:8s} {wall:6.2f} s  finite={finite}  PSNR vs CPU float32 "
              f"{psnr:5.1f} dB  max pixel difference {worst:3d}  {'ok' if good else 'FAILED'}")
    return ok


def check_lockstep(steps: int, device: str) -> bool:
    from tficon.run.lockstep import run_lockstep
    from tficon.toy.samples import toy_sample

    model = _load("toy", device, torch.float16)
    samples = [toy_sample(shape=s, colour=c, box=b) for s, c, b in
               (("star", "red", (36, 18, 26, 26)), ("circle", "green", (6, 30, 24, 24)),
                ("triangle", "yellow", (30, 4, 22, 22)), ("square", "blue", (20, 36, 26, 26)))]
    alone = []
    for sample in samples:
        session = _session(model, sample, steps)
        session.run()
        alone.append(session.result)
    together = [_session(model, sample, steps) for sample in samples]
    started = time.perf_counter()
    stats = run_lockstep(together, max_rows="auto")
    _synchronize(device)
    wall = time.perf_counter() - started
    worst = max(_max_pixel_difference(s.result, a) for s, a in zip(together, alone))
    ok = worst <= 8
    print(f"lockstep, 4 toy samples, {device} float16: {wall:.2f} s, {stats.unet_calls} UNet calls "
          f"({stats.rows_per_call:.1f} rows each); largest pixel difference against one at a "
          f"time {worst} {'ok' if ok else 'FAILED'}")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-psnr", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cpu runs the same checks of the half-precision paths")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_check: no CUDA device")
        return 2
    where = torch.cuda.get_device_name() if args.device == "cuda" else "the CPU"
    print(f"cuda_check on {where}, torch {torch.__version__}")
    ok = True
    for name in ("toy", "tiny-sd2", "tiny-sdxl"):
        try:
            ok &= check_dtypes(name, args.steps, args.min_psnr, args.device)
        except Exception as error:  # report and go on: one model's failure should not hide the others'
            print(f"{name}: FAILED with {type(error).__name__}: {error}")
            ok = False
    try:
        ok &= check_lockstep(args.steps, args.device)
    except Exception as error:
        print(f"lockstep: FAILED with {type(error).__name__}: {error}")
        ok = False
    print("all ok" if ok else "FAILURES above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

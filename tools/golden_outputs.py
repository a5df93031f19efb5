"""Record the outputs of a fixed set of compositions, then check a later tree gives them bit for bit.

Used around refactors that must not change any result::

    python tools/golden_outputs.py record /tmp/golden     # before: writes inputs, tiny models and outputs
    python tools/golden_outputs.py compare /tmp/golden    # after: recomputes everything, exit 1 on any difference

Everything is driven through the public interface only (``tficon.load_model``, ``tficon.Session``,
``tficon.sweep``, ``tficon.compose`` and the ``tficon`` command line), so the same script runs before and after
modules move. ``record`` also saves the tiny random models and the samples as files, so ``compare`` does not
depend on where the helpers that made them live.

The cases: the demo on the toy model (float32 and bfloat16), a tau_b update and re-run, a composite attention
capture, tiny SD 1.x / 2.x / 2.x-v / SDXL compositions (SDXL also in float16), a CLI batch of three toy samples,
the same batch in lockstep (``--batch-samples 2``) and a 2 x 2 sweep.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
torch.set_flush_denormal(True)

TINY = ("sd1", "sd2", "sd2-v", "sdxl")
TINY_SIZE = 128


def _save_inputs(folder: Path) -> None:
    """Samples, tiny models and an official-layout batch tree, written with whatever helpers exist now."""
    from tficon.model.tiny import save_tiny_model
    from tficon.toy.samples import toy_sample

    samples = {
        "demo": toy_sample(),
        "tiny": toy_sample(image_size=TINY_SIZE),
        "green": toy_sample("striped", "flat", "triangle", "green", box=(6, 30, 24, 24)),
        "same": toy_sample("outline", "outline", "circle", "yellow"),
    }
    for name, sample in samples.items():
        d = folder / "samples" / name
        d.mkdir(parents=True, exist_ok=True)
        sample.background.save(d / "bg.png")
        sample.foreground.save(d / "fg.png")
        if hasattr(sample.foreground_mask, "save"):
            sample.foreground_mask.save(d / "fg_mask.png")
        else:
            np.save(d / "fg_mask.npy", np.asarray(sample.foreground_mask))
        (d / "meta.json").write_text(json.dumps({"box": list(sample.box), "prompt": sample.prompt, "mode": sample.mode}))
    for family in TINY:
        save_tiny_model(folder / "models" / family, family)
    for name in ("demo", "green", "same"):
        _write_batch_sample(folder, name)


def _write_batch_sample(folder: Path, name: str) -> None:
    from PIL import Image

    sample = _sample(folder, name)
    domain = "same_domain" if sample["mode"] == "same" else "cross_domain"
    d = folder / "inputs" / domain / sample["prompt"]
    d.mkdir(parents=True, exist_ok=True)
    sample["background"].save(d / "bg.png")
    sample["foreground"].save(d / "fg.png")
    Image.fromarray((np.asarray(sample["foreground_mask"]) > 0).astype(np.uint8) * 255).save(d / "fg_mask.png")
    x, y, w, h = sample["box"]
    mask = np.zeros(sample["background"].size[::-1], dtype=np.uint8)
    mask[y : y + h, x : x + w] = 255
    Image.fromarray(mask).save(d / "mask_bg_fg.png")


def _sample(folder: Path, name: str) -> dict:
    from PIL import Image

    d = folder / "samples" / name
    meta = json.loads((d / "meta.json").read_text())
    mask = Image.open(d / "fg_mask.png") if (d / "fg_mask.png").exists() else np.load(d / "fg_mask.npy")
    return {
        "background": Image.open(d / "bg.png").convert("RGB"),
        "foreground": Image.open(d / "fg.png").convert("RGB"),
        "foreground_mask": mask,
        "box": tuple(meta["box"]),
        "prompt": meta["prompt"],
        "mode": meta["mode"],
    }


def _session(model, sample: dict, **settings):
    import tficon

    return tficon.Session(
        model, sample["background"], sample["foreground"], sample["foreground_mask"], sample["box"], sample["prompt"],
        **settings,
    )


def _finals(session) -> dict[str, np.ndarray]:
    session.run()
    out = {f"latent.{k}": v.float().cpu().numpy() for k, v in session.latents().items()}
    out["image"] = np.asarray(session.result)
    return out


def _images(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {
        str(p.relative_to(folder)): np.asarray(Image.open(p))
        for p in sorted(folder.rglob("*.png"))
        if p.name in ("result.png", "cut_and_paste.png") or p.parent.name == "cells"
    }


def compute(folder: Path) -> dict[str, np.ndarray]:
    """Every output of every case, as arrays keyed by case/name."""
    import tficon
    from tficon.cli import main

    out: dict[str, np.ndarray] = {}

    def put(case: str, arrays: dict) -> None:
        for k, v in arrays.items():
            out[f"{case}/{k}"] = np.asarray(v)
        print(f"  {case}: {len(arrays)} arrays", flush=True)

    toy = tficon.load_model("toy")
    demo = _sample(folder, "demo")
    session = _session(toy, demo, mode=demo["mode"])
    put("demo", _finals(session))
    maps = session.capture_attention(3)
    put("capture", {f"{layer}.{kind}": m.float().numpy() for (layer, kind), m in sorted(maps.items())})
    first = session.update(tau_b=0.9)
    session.run()
    put("update_tau_b", {**_finals(session), "first": np.array(first)})
    put("demo_bf16", _finals(_session(tficon.load_model("toy", dtype="bfloat16"), demo, mode=demo["mode"], steps=8)))
    put("one_call", {"image": np.asarray(tficon.compose(toy, demo["background"], demo["foreground"],
                                                         demo["foreground_mask"], demo["box"], demo["prompt"],
                                                         steps=6, progress=False))})

    tiny = _sample(folder, "tiny")
    for family in TINY:
        model = tficon.load_model(str(folder / "models" / family))
        mode = "same" if family == "sd1" else "cross"
        put(f"tiny_{family}", _finals(_session(model, tiny, image_size=TINY_SIZE, steps=6, mode=mode, order=2 if family == "sd2-v" else 3)))
    sdxl16 = tficon.load_model(str(folder / "models" / "sdxl"), dtype="float16")
    put("tiny_sdxl_fp16", _finals(_session(sdxl16, tiny, image_size=TINY_SIZE, steps=6)))

    import tempfile

    runs = Path(tempfile.mkdtemp(prefix="golden-runs-"))  # outputs of this run only (several may run at once)
    for case, extra in (("batch", []), ("lockstep", ["--batch-samples", "2"])):
        target = runs / case
        code = main(["batch", str(folder / "inputs"), "--out", str(target), "--model", "toy", "--steps", "6",
                     "--quiet", "--pixel-metrics-only", *extra])
        assert code == 0, f"tficon batch exited {code}"
        # the images only: the records' metrics are checked to their tolerance by tests/test_batch.py
        put(case, _images(target))

    tficon.sweep(toy, demo["background"], demo["foreground"], demo["foreground_mask"], demo["box"],
            demo["prompt"], {"tau_a": [0.2, 0.5], "tau_b": [0.6, 0.9]}, steps=6, progress=False,
            out=runs / "sweep")
    put("sweep", _images(runs / "sweep"))
    import shutil

    shutil.rmtree(runs)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("record", "compare"):
        print(__doc__)
        return 2
    folder = Path(argv[1])
    if argv[0] == "record":
        folder.mkdir(parents=True, exist_ok=True)
        _save_inputs(folder)
        np.savez(folder / "golden.npz", **compute(folder))
        print(f"recorded {folder / 'golden.npz'}")
        return 0
    golden = dict(np.load(folder / "golden.npz"))
    now = compute(folder)
    bad = 0
    for key in sorted(set(golden) | set(now)):
        if key not in now or key not in golden:
            print(f"MISSING {key}: {'now' if key not in now else 'golden'}")
            bad += 1
        elif golden[key].shape != now[key].shape or not np.array_equal(golden[key], now[key]):
            diff = np.abs(golden[key].astype(np.float64) - now[key].astype(np.float64)).max() if golden[key].shape == now[key].shape else "shape"
            print(f"DIFFERS {key}: max abs {diff}")
            bad += 1
    print(f"{len(golden)} arrays compared, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

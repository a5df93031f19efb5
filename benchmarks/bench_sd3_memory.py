"""Benchmark: an estimate of SD3.5-medium's memory for a TF-ICON composition, with random weights, nothing downloaded.

Two parts, each exact in what it counts:

- **Weights.** Every component of SD3.5-medium (the MM-DiT transformer: 24 joint blocks of width 1536, the first 13
  with SD3.5's dual attention; CLIP-L and CLIP-G with projection; the T5-XXL encoder; the 16-channel VAE) is built on
  the meta device from its architecture and its parameters are counted: bytes at float16, with and without T5.
- **Activations of one step.** A transformer with SD3.5-medium's width, heads and token counts but only ``--layers``
  joint blocks (the first dual-attention, the last "context pre-only", as in the model) is run with random weights on
  one plain classifier-free-guidance step (batch 2, stock processors) and on the costliest step of a composition (batch
  5: background, reference, pseudo-cross, uncond, cond, with tficon's composite joint attention, foreground and
  background injection on, the demo sample's box). Blocks run one after another and only the two residual streams pass
  between them, so a step's activation peak does not grow with depth: the slice's peak stands for the full model's.
  Measured as in ``bench_memory.py``: the resident set's high-water mark on a CPU, ``torch.cuda.max_memory_allocated``
  on CUDA.

The estimate of a full composition's peak is weights + the injected step's activations; the VAE's decoding at full
size is not included (run the full model on a GPU for that). The goal (issue: SD3 / SD3.5): float16 at 1024 px within
12 GB without T5 and within 20 GB with it.

Usage: python benchmarks/bench_sd3_memory.py [--size 512] [--layers 2] [--dtype float32] [--device cpu|cuda]
       [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOAL_GB = {"without T5": 12.0, "with T5": 20.0}
T5_ROWS, CLIP_ROWS = 256, 77

#: SD3.5-medium's transformer (diffusers' SD3Transformer2DModel arguments)
TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)  # fmt: skip
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)  # fmt: skip
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)  # fmt: skip
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False)  # fmt: skip
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip


def parameter_counts() -> dict[str, int]:
    """Parameters of each SD3.5-medium component, built on the meta device (no memory, no download)."""
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        parts = {
            "transformer": SD3Transformer2DModel(**TRANSFORMER),
            "clip_l": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)),
            "clip_g": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)),
            "t5_xxl_encoder": T5EncoderModel(T5Config(**T5_XXL)),
            "vae": AutoencoderKL(**VAE),
        }
    return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}


def step_activations(size: int, layers: int, dtype_name: str, device: str) -> dict:
    """Peak extra memory of one plain CFG step (batch 2) and one injected step (batch 5) of a ``layers``-block slice."""
    import torch
    from diffusers import SD3Transformer2DModel

    sys.path.insert(0, str(HERE))
    from bench_memory import PeakMemory, _regions, timed

    from tficon.composition.attention import BatchLayout, InjectionController
    from tficon.composition.joint_attention import joint_composite_attention
    from tficon.model import cast_module

    dtype = getattr(torch, dtype_name)
    config = dict(TRANSFORMER, num_layers=layers, dual_attention_layers=(0,))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = SD3Transformer2DModel(**config).to(device).eval()
    cast_module(transformer, dtype)  # without diffusers' spurious "kept in float32" warning
    latent = size // 8
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 16, latent, latent, generator=g).to(device, dtype)
    text = torch.randn(5, CLIP_ROWS + T5_ROWS, 4096, generator=g).to(device, dtype)
    pooled = torch.randn(5, 2048, generator=g).to(device, dtype)
    t = torch.full((5,), 500.0, device=device)
    controller = InjectionController(latent_size=(latent, latent), region_fn=_regions(size, 2))
    layout = BatchLayout(background=0, reference=1, pseudo_cross=2, uncond=3, cond=4, fg=True, bg=True)

    def plain():
        return transformer(hidden_states=x[3:], timestep=t[3:], encoder_hidden_states=text[3:],
                           pooled_projections=pooled[3:], return_dict=False)[0]  # fmt: skip

    def injected():
        with joint_composite_attention(transformer, controller):
            controller.layout = layout
            try:
                return transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, pooled_projections=pooled,
                                   return_dict=False)[0]  # fmt: skip
            finally:
                controller.layout = None

    memory = PeakMemory(device)
    runs = {}
    with torch.no_grad():
        for pair in range(2):  # the first pair warms caches
            for label, fn in (("plain", plain), ("injected", injected)):
                r = {}
                with memory.measure() as m, timed(r, device):
                    fn()
                runs[label] = dict(r, peak_bytes=m["peak_bytes"])
    return dict(size=size, layers=layers, dtype=dtype_name, device=device, memory_method=memory.method,
                image_tokens=(latent // 2) ** 2, text_tokens=CLIP_ROWS + T5_ROWS, runs=runs)  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    counts = parameter_counts()
    fp16 = {name: 2 * n for name, n in counts.items()}
    without_t5 = sum(b for name, b in fp16.items() if name != "t5_xxl_encoder")
    for name, n in counts.items():
        print(f"{name:16s} {n / 1e9:6.3f} B parameters  {fp16[name] / 2**30:6.2f} GiB in float16")
    step = step_activations(args.size, args.layers, args.dtype, args.device)
    scale = 2 / torch.finfo(getattr(torch, args.dtype)).bits * 8  # activations at float16 from the measured dtype
    print(f"one step at {args.size} px ({step['image_tokens']} image + {step['text_tokens']} text tokens), "
          f"{args.layers}-block slice, {args.dtype} on {args.device} ({step['memory_method']}):")  # fmt: skip
    for label, r in step["runs"].items():
        print(f"  {label:9s} +{r['peak_bytes'] / 2**30:6.2f} GiB  ({r['wall_s']:.1f} s wall)")
    activation = step["runs"]["injected"]["peak_bytes"] * scale
    estimate = {"without T5": without_t5 + activation, "with T5": without_t5 + fp16["t5_xxl_encoder"] + activation}
    for what, total in estimate.items():
        print(f"estimate, float16 {what}: {total / 2**30:.2f} GiB (weights + the injected step's activations scaled to "
              f"float16; VAE decoding not included); goal {GOAL_GB[what]:g} GB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(dict(parameters=counts, step=step, estimate_bytes=estimate), indent=2))


if __name__ == "__main__":
    main()

"""Train the embedded toy text-to-image model from scratch on the toy world (CPU, about 50 minutes).

Usage::

    python -m tficon.toy.train --out DIR [--images 10000] [--vae-steps 1000] [--unet-steps 2000] [--seed 0]

Writes a diffusers ``StableDiffusionPipeline`` folder (fp32 safetensors, about 17 MB) plus
``tficon.json``. The shipped ``tficon/toy/model`` is the output of exactly the command recorded
in its ``tficon.json``: ``--images 10000 --vae-steps 1000 --unet-steps 2000 --seed 0`` (the defaults), 49.7
minutes on a shared 2-core CPU; VAE 26.4 dB on held-out images, final UNet loss 0.016, single-object
text-to-image domain / colour / shape right 45 / 69 / 67 % (``tficon/toy/README.md`` has all figures).

Stages, all with fixed seeds and step-count (not time) schedules so a rerun reproduces them:

1. Data: ``--images`` random toy-world scenes at 64 px (image i is ``render_scene([seed, i])``).
2. VAE (``AutoencoderKL``, f=4, 4 latent channels, blocks (32, 64, 64), no mid attention so it is
   fully convolutional): random 32x32 crops, batch 32, AdamW 5e-4, warm-up then cosine to 10 %,
   loss L1 + 0.5 MSE + 1e-6 KL. ``scaling_factor`` = 1 / std of the training latents.
3. Pre-encode every image once (posterior mean and std).
4. UNet (``UNet2DConditionModel``, blocks (32, 64, 128), self- and cross-attention at 16x16 and
   8x8 plus the mid block) and a 3-layer, 64-wide ``CLIPTextModel`` trained jointly: epsilon
   MSE with min-SNR-5 weights, 10 % captions dropped to "" (for classifier-free guidance),
   batch 64, AdamW 1e-3, warm-up then cosine to 5 %, gradient clipping 1.0, EMA 0.999 (saved).
   No flips: captions list objects left to right.

The tokenizer is a real ``CLIPTokenizer`` built offline over the caption words plus one
reserved word, ``rian`` (CLIP's token 7788, the official exceptional-prompt token), that never
appears in a caption; its id is stored as ``exceptional_token_id`` in ``tficon.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

# Idle OpenMP threads must sleep, not spin: on a shared 2-core machine spinning threads made
# training 4x slower (0.09 against 0.39 VAE steps/s under load). Read when torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F

from tficon.toy.world import caption_words, render_scene  # noqa: E402

IMAGE_SIZE = 64
MAX_TOKENS = 20  # the longest caption (three objects) is 15 words + start/end tokens
EXCEPTIONAL_WORD = "rian"
HELD_OUT_OFFSET = 10_000_000  # held-out image i is render_scene([seed, HELD_OUT_OFFSET + i])

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
    mid_block_add_attention=False,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=4,  # diffusers reads this as the number of heads
    cross_attention_dim=64,
    norm_num_groups=16,
)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)


def log(message: str) -> None:
    print(message, flush=True)


def cosine_lr_lambda(total_steps: int, warmup: int, floor: float):
    """Linear warm-up over ``warmup`` steps, then cosine from 1 down to ``floor`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def render_dataset(count: int, seed: int, offset: int = 0) -> tuple[np.ndarray, list[str]]:
    """``count`` scenes -> (uint8 images (count, 64, 64, 3), captions). Image i uses seed sequence [seed, offset + i]."""
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(count):
        image, caption, _ = render_scene(np.random.default_rng([seed, offset + i]), image_size=IMAGE_SIZE)
        images[i] = np.asarray(image)
        captions.append(caption)
    return images, captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1] over a batch."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def train_vae(images: np.ndarray, held_out: torch.Tensor, steps: int, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-4, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr_lambda(steps, 100, 0.1))
    data = to_tensor(images)
    generator = torch.Generator().manual_seed(seed + 1)
    batch, crop = 32, 32
    start, running = time.time(), []
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=generator)
        offsets = torch.randint(IMAGE_SIZE - crop + 1, (batch, 2), generator=generator)
        x = torch.stack([data[i, :, oy : oy + crop, ox : ox + crop] for i, (oy, ox) in zip(idx.tolist(), offsets.tolist())])
        x = x.contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            elapsed = time.time() - start
            log(f"vae step {step + 1}/{steps}  loss {np.mean(running):.4f}  {(step + 1) / elapsed:.2f} steps/s  {elapsed / 60:.1f} min")
            running = []
    vae.eval()
    with torch.no_grad():
        recon = vae.decode(vae.encode(held_out).latent_dist.mean).sample
    return vae, psnr(recon, held_out), time.time() - start


@torch.no_grad()
def encode_latents(vae, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for chunk in range(0, len(images), 256):
        posterior = vae.encode(to_tensor(images[chunk : chunk + 256])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(latent_mean, latent_std, scaling_factor: float, token_ids, empty_ids, tokenizer, steps: int, seed: int):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel, compute_snr
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TEXT_CONFIG,
    )
    text_encoder = CLIPTextModel(text_config)
    noise_scheduler = DDPMScheduler(**SCHEDULER_CONFIG, clip_sample=False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr_lambda(steps, 200, 0.05))
    ema = EMAModel(params, decay=0.999)
    alphas_cumprod = noise_scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(seed + 3)
    batch = 64
    unet.train()
    text_encoder.train()
    start, running = time.time(), []
    for step in range(steps):
        idx = torch.randint(len(latent_mean), (batch,), generator=generator)
        latents = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        latents = latents * scaling_factor
        ids = token_ids[idx].clone()
        dropped = torch.rand(batch, generator=generator) < 0.1
        ids[dropped] = empty_ids
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (batch,), generator=generator)
        a = alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
        noisy = a * latents + s * noise
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(params)
        running.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            elapsed = time.time() - start
            log(f"unet step {step + 1}/{steps}  loss {np.mean(running):.4f}  {(step + 1) / elapsed:.2f} steps/s  {elapsed / 60:.1f} min")
            running = []
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return unet, text_encoder, time.time() - start



def build_tokenizer():
    from tficon.clip_tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(caption_words(), model_max_length=MAX_TOKENS, extra_tokens=[EXCEPTIONAL_WORD])


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (a diffusers pipeline)")
    parser.add_argument("--images", type=int, default=10000, help="number of training scenes")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--unet-steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("images", "vae_steps", "unet_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    command = "python -m tficon.toy.train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals slow CPU convolutions by up to 4x
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    t0 = time.time()
    images, captions = render_dataset(args.images, args.seed)
    held_images, _ = render_dataset(64, args.seed, offset=HELD_OUT_OFFSET)
    held_out = to_tensor(held_images)
    timings = {"data_s": round(time.time() - t0, 1)}
    log(f"rendered {args.images} + 64 held-out images in {timings['data_s']} s")

    vae, vae_psnr, timings["vae_s"] = train_vae(images, held_out, args.vae_steps, args.seed)
    log(f"VAE held-out PSNR {vae_psnr:.2f} dB")
    t1 = time.time()
    vae = vae.to(memory_format=torch.contiguous_format)
    latent_mean, latent_std = encode_latents(vae, images)
    sampled = latent_mean + latent_std * torch.randn(latent_mean.shape, generator=torch.Generator().manual_seed(args.seed + 4))
    scaling_factor = float(1.0 / sampled.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    timings["encode_s"] = round(time.time() - t1, 1)
    log(f"encoded latents in {timings['encode_s']} s; mean {float(sampled.mean()):.3f} std {float(sampled.std()):.3f} -> scaling_factor {scaling_factor:.4f}")

    tokenizer = build_tokenizer()
    token_ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]
    unet, text_encoder, timings["unet_s"] = train_unet(latent_mean, latent_std, scaling_factor, token_ids, empty_ids, tokenizer, args.unet_steps, args.seed)
    timings = {k: round(v, 1) for k, v in timings.items()}
    timings["total_s"] = round(time.time() - t0, 1)

    scheduler = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    exceptional_id = tokenizer.convert_tokens_to_ids(EXCEPTIONAL_WORD + "</w>")
    meta = {
        "family": "toy",
        "exceptional_token_id": int(exceptional_id),
        "exceptional_token": EXCEPTIONAL_WORD,
        "image_size": IMAGE_SIZE,
        "latent_size": IMAGE_SIZE // 4,
        "max_tokens": MAX_TOKENS,
        "training": {
            "command": command,
            "images": args.images,
            "vae_steps": args.vae_steps,
            "unet_steps": args.unet_steps,
            "seed": args.seed,
            "threads": args.threads,
            "timings_s": timings,
            "vae_heldout_psnr_db": round(vae_psnr, 2),
            "torch": torch.__version__,
        },
    }
    (args.out / "tficon.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"saved to {args.out}; timings {timings}")


if __name__ == "__main__":
    main()

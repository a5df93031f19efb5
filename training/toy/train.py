"""Train the embedded toy text-to-image model from scratch on the toy world (CPU, hours; resumable).

Usage::

    python -m training.toy.train --out DIR [--work DIR] [--resume] [--images 20000] [--vae-steps 3000]
                                 [--unet-steps 10000] [--stop-after N] [--seed 0] [--threads 2]
                                 [--latent-factor 2] [--offset-noise 0.0] [--init-from DIR]

Writes a diffusers ``StableDiffusionPipeline`` folder (fp16 safetensors) plus ``tficon.json``. The run is
built to take hours on two CPU cores and to survive interruptions:

- every stage checkpoints its full state (weights, optimizer, EMA, learning-rate schedule, random
  generator) to ``--work`` every ``--checkpoint-every`` steps, atomically; ``--resume`` continues from
  there, and an uninterrupted run and a resumed one take the same steps with the same random numbers;
- a progress bar shows the current stage, and ``WORK/train_log.jsonl`` records loss, learning rate and
  elapsed time every 50 steps, plus the quality gates;
- every ``--export-every`` UNet steps the EMA weights are exported to ``--out`` (a loadable model), and
  text-to-image gates (single- and two-object accuracy, read by the toy detector) are logged.

Stages, all with fixed seeds and step-count (not time) schedules so a rerun reproduces them:

1. Data (rendered by ``tficon.toy.data``): ``--images`` examples at 64 px. Example i uses ``numpy.random.default_rng([seed, i])``; a fraction
   ``--canvas-fraction`` of them are **reference canvases**: one tightly cropped object of any domain,
   resized and centred on black exactly as ``tficon.core.placement.prepare_foreground`` builds TF-ICON's
   reference image, captioned "a red star cutout on black, flat style" (words no normal prompt uses).
   The rest are toy-world scenes with 0-3 objects (more pairs than the world's default, for binding).
2. VAE (``AutoencoderKL``, f=2 by default, 32x32 latents, or the previous model's f=4 with ``--latent-factor 4``,
   see ``VAE_CONFIGS``; 4 latent channels, no mid attention so it is fully convolutional):
   random 32x32 crops, a quarter of them from canvases (so black is reconstructed), batch 32, AdamW 5e-4,
   warm-up then cosine to 10 %, loss L1 + 0.5 MSE + 1e-6 KL. ``scaling_factor`` = 1 / std of the latents.
3. Pre-encode every example once (posterior mean and std; sampled at every step).
4. UNet (``UNet2DConditionModel``: at f=2 a convolution-only 32x32 level, then self- and cross-attention at
   16x16 and 8x8 plus the 4x4 mid block, the same attention grids as at f=4) and
   a 4-layer, 128-wide ``CLIPTextModel`` with CLIP's real 49,408-token vocabulary and 77 positions,
   trained jointly: epsilon MSE with min-SNR-5 weights, 10 % captions dropped to "" (classifier-free
   guidance), batch 64, AdamW 1e-3 (no weight decay on embeddings and norms), warm-up then cosine to 5 %,
   gradient clipping 1.0, EMA up to 0.9995 with warm-up (the EMA weights are exported). No flips: captions
   list objects left to right. ``--offset-noise S`` adds S times one normal number per image and channel to
   the noise: on 32x32 latents the mean of the starting noise (std 1/32 per channel) otherwise decides the
   background's domain whatever the prompt says, because at the highest noise levels a 32x32 latent's mean
   still carries the background, so the model learns to read it from there instead of from the text.

The tokenizer is CLIP's own BPE, rebuilt from the merge list that the ``open-clip-torch`` wheel ships
(``--clip-bpe`` takes a local copy; otherwise pip downloads the wheel, no model hub), or copied from a model
folder that already has it (``--tokenizer-from tficon/toy/model``, offline); both give the same tokenizer. Token 7788
("rian") never appears in a caption, so its embedding stays as initialised, like a rare word in real CLIP:
it is the exceptional-prompt token, as in the official code.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

# Idle OpenMP threads must sleep, not spin: on a shared 2-core machine spinning threads made
# training 4x slower (0.09 against 0.39 VAE steps/s under load). Read when torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tficon.toy.data import (  # noqa: E402  (the data set lives with the toy world: notebooks read it too)
    HELD_OUT_OFFSET,
    IMAGE_SIZE,
    LATENT_FACTOR,
    render_dataset,
    to_tensor,
)

MAX_TOKENS = 77
EXCEPTIONAL_TOKEN_ID = 7788  # "rian</w>" in CLIP's vocabulary, the official exceptional-prompt token
CANVAS_VAE_SHARE = 0.25  # share of VAE crops taken from canvases

#: Model configurations by the VAE's downsampling factor (``--latent-factor``). f = 4 was the previous
#: model (v2): 16 x 16 latents, attention at 16, 8 and the 4 x 4 mid block. f = 2, the shipped model (v3),
#: gives 32 x 32 latents for the same 64 px world: the object and the scene's layout span four times as many
#: latent cells (so the late, noisy steps of a composition have more to hold on to), and 2 x 2 cells can carry
#: the stripe and hatching textures that a 4 x 4 cell of 4 channels averages away. Its UNet adds a
#: convolution-only 32 x 32 level in front, so the attention grids stay 16, 8 and 4 (the 4 x 4 as the mid
#: block) and a step costs about 30 % more.
VAE_CONFIGS = {
    4: dict(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
    ),
    2: dict(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
    ),
}
VAE_COMMON = dict(
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
    mid_block_add_attention=False,
)
UNET_CONFIGS = {
    4: dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    2: dict(
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
}
UNET_COMMON = dict(
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    attention_head_dim=4,  # diffusers reads this as the number of heads
    cross_attention_dim=128,
    norm_num_groups=16,
)


def vae_config(latent_factor: int) -> dict:
    return {**VAE_COMMON, **VAE_CONFIGS[latent_factor]}


def unet_config(latent_factor: int) -> dict:
    return {**UNET_COMMON, **UNET_CONFIGS[latent_factor], "sample_size": IMAGE_SIZE // latent_factor}


TEXT_CONFIG = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)
LOG_EVERY = 50


# ----------------------------------------------------------------------------------------------- utilities


class RunLog:
    """Prints a line and appends a JSON record to ``WORK/train_log.jsonl``."""

    def __init__(self, work: Path):
        self.path = work / "train_log.jsonl"

    def __call__(self, message: str, **record) -> None:
        print(message, flush=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"time": round(time.time(), 1), "message": message, **record}) + "\n")


def save_atomically(payload: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: an interruption never leaves a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, parts: dict, step: int, **extra) -> None:
    """Every part's state (``state_dict()``; a generator's ``get_state()``), the step and ``extra``, atomically."""
    states = {name: part.get_state() if isinstance(part, torch.Generator) else part.state_dict() for name, part in parts.items()}
    save_atomically({**states, "step": step, **extra}, path)


def load_checkpoint(path: Path, parts: dict) -> dict:
    """Restore every part from a ``save_checkpoint`` file; returns the whole payload (step and extras)."""
    state = torch.load(path, weights_only=False)
    for name, part in parts.items():
        (part.set_state if isinstance(part, torch.Generator) else part.load_state_dict)(state[name])
    return state


def cosine_lr_lambda(total_steps: int, warmup: int, floor: float):
    """Linear warm-up over ``warmup`` steps, then cosine from 1 down to ``floor`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1] over a batch."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def progress(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, mininterval=10.0, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------- VAE


def train_vae(images, is_canvas, held_out, steps: int, seed: int, work: Path, log: RunLog, checkpoint_every: int,
              latent_factor: int = LATENT_FACTOR):
    """Train (or resume) the VAE; returns it in eval mode with its held-out PSNR on scenes and canvases."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config(latent_factor)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=5e-4, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr_lambda(steps, 100, 0.1))
    generator = torch.Generator().manual_seed(seed + 1)
    checkpoint, start = work / "vae.pt", 0
    parts = {"model": vae, "optimizer": optimizer, "schedule": schedule, "generator": generator}
    if checkpoint.exists():
        start = load_checkpoint(checkpoint, parts)["step"]
        log(f"vae: resumed at step {start}/{steps}")
    data = to_tensor(images)
    scenes, canvases = torch.from_numpy(np.flatnonzero(~is_canvas)), torch.from_numpy(np.flatnonzero(is_canvas))
    batch, crop = 32, 32
    n_canvas = round(batch * CANVAS_VAE_SHARE) if len(canvases) else 0
    began, running = time.time(), []
    bar = progress(steps, start, "vae")
    for step in range(start, steps):
        idx = torch.cat([
            scenes[torch.randint(len(scenes), (batch - n_canvas,), generator=generator)],
            canvases[torch.randint(max(1, len(canvases)), (n_canvas,), generator=generator)] if n_canvas else scenes[:0],
        ])
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
        bar.update(1)
        done = step + 1
        if done % LOG_EVERY == 0 or done == steps:
            elapsed = time.time() - began
            log(f"vae step {done}/{steps} loss {np.mean(running):.4f} ({elapsed / 60:.1f} min this run)",
                stage="vae", step=done, loss=float(np.mean(running)), lr=schedule.get_last_lr()[0], elapsed_s=round(elapsed, 1))
            running = []
        if done % checkpoint_every == 0 or done == steps:
            save_checkpoint(checkpoint, parts, done)
    bar.close()
    vae = vae.to(memory_format=torch.contiguous_format).eval()
    scores = vae_scores(vae, *held_out)
    return vae, scores


@torch.no_grad()
def vae_scores(vae, images: torch.Tensor, is_canvas: torch.Tensor) -> dict[str, float]:
    """Held-out reconstruction PSNR (posterior mean) on scenes and on reference canvases separately."""
    recon = vae.decode(vae.encode(images).latent_dist.mean).sample
    return {
        "vae_psnr_scenes_db": round(psnr(recon[~is_canvas], images[~is_canvas]), 2),
        "vae_psnr_canvases_db": round(psnr(recon[is_canvas], images[is_canvas]), 2) if is_canvas.any() else None,
    }


@torch.no_grad()
def encode_latents(vae, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for chunk in range(0, len(images), 256):
        posterior = vae.encode(to_tensor(images[chunk : chunk + 256])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


# ----------------------------------------------------------------------------------------------- UNet + text encoder


def build_unet_and_text_encoder(tokenizer, seed: int, latent_factor: int = LATENT_FACTOR):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**unet_config(latent_factor))
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_dim=TEXT_CONFIG["hidden_size"],
        **TEXT_CONFIG,
    )
    return unet, CLIPTextModel(text_config)


def parameter_groups(*modules) -> list[dict]:
    """AdamW groups: weight decay 0.01 on weight matrices, none on embeddings, norms and biases.

    Decaying the 49,408-row token embedding would shrink every unused row, the exceptional token's included,
    towards zero: rare tokens must keep their initial scale, as in real CLIP.
    """
    decay, no_decay = [], []
    for module in modules:
        for name, param in module.named_parameters():
            plain = param.ndim < 2 or "embedding" in name or "norm" in name
            (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]


def train_unet(latent_mean, latent_std, scaling_factor, token_ids, empty_ids, vae, tokenizer, args, log: RunLog, out: Path, meta: dict):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    unet, text_encoder = build_unet_and_text_encoder(tokenizer, args.seed, args.latent_factor)
    warm_start_step = 0
    if args.init_from is not None:
        unet, text_encoder, warm_start_step = load_warm_start(args.init_from, unet, text_encoder)
        log(f"unet: warm start from {args.init_from} (EMA weights after {warm_start_step} steps; fresh optimizer)")
    noise_scheduler = DDPMScheduler(**SCHEDULER_CONFIG, clip_sample=False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameter_groups(unet, text_encoder), lr=1e-3)
    steps = args.unet_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warm_started_lr_lambda(steps, warm_start_step))
    ema = EMAModel(params, decay=0.9995, use_ema_warmup=True, power=0.75)
    generator = torch.Generator().manual_seed(args.seed + 3 + warm_start_step)
    checkpoint, start = args.work / "unet.pt", warm_start_step
    if warm_start_step:
        ema.optimization_step = warm_start_step  # the EMA continues at the decay it had reached
        with warnings.catch_warnings():  # fast-forwarding the schedule before any optimizer step is intended
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(warm_start_step):
                schedule.step()
    parts = {"unet": unet, "text_encoder": text_encoder, "optimizer": optimizer, "schedule": schedule, "ema": ema,
             "generator": generator}
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, parts)
        start = state["step"]
        # An export names the command that trained the weights, not the one that exported them.
        meta["training"]["command"] = state.get("command", meta["training"]["command"])
        log(f"unet: resumed at step {start}/{steps}")
    # --stop-after ends the run early without changing its schedule, which still spans --unet-steps.
    end = min(steps, args.stop_after or steps)
    if args.export_only or start >= end:  # nothing left to train: (re)write the checkpoint's EMA weights
        if not checkpoint.exists():
            raise SystemExit(f"--export-only: no UNet checkpoint in {args.work}" if args.export_only else
                             f"--stop-after {end}: the warm start is already at UNet step {start}; nothing to train")
        ema.copy_to(params)
        meta["training"]["unet_steps_done"] = start
        export(out, vae, unet, text_encoder, tokenizer, meta)
        log(f"exported the EMA weights after {start} UNet steps to {out}")
        return
    alphas_cumprod = noise_scheduler.alphas_cumprod
    batch = 64
    unet.train()
    text_encoder.train()
    began, running = time.time(), []
    bar = progress(end, start, "unet")
    for step in range(start, end):
        idx = torch.randint(len(latent_mean), (batch,), generator=generator)
        latents = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        latents = latents * scaling_factor
        ids = token_ids[idx].clone()
        dropped = torch.rand(batch, generator=generator) < 0.1
        ids[dropped] = empty_ids
        noise = torch.randn(latents.shape, generator=generator)
        if args.offset_noise:  # see --offset-noise: the latent's mean at high noise must read as noise, not signal
            noise = noise + args.offset_noise * torch.randn(batch, noise.shape[1], 1, 1, generator=generator)
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
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(running):.4f}", refresh=False)
        done = step + 1
        if done % LOG_EVERY == 0 or done == end:
            elapsed = time.time() - began
            log(f"unet step {done}/{steps} loss {np.mean(running):.4f} ({elapsed / 60:.1f} min this run)",
                stage="unet", step=done, loss=float(np.mean(running)), lr=schedule.get_last_lr()[0], elapsed_s=round(elapsed, 1))
            running = []
        if done % args.checkpoint_every == 0 or done == end:
            save_checkpoint(checkpoint, parts, done, command=meta["training"]["command"])
        if done % args.export_every == 0 or done == end:
            ema.store(params)
            ema.copy_to(params)
            meta["training"]["unet_steps_done"] = done
            pipe = export(out, vae, unet, text_encoder, tokenizer, meta)
            if args.gates:
                gates = text_to_image_gates(pipe)
                log(f"gates at step {done}: {gates}", stage="gates", step=done, **gates)
            ema.restore(params)
            unet.train()
            text_encoder.train()
    bar.close()


def warm_started_lr_lambda(total_steps: int, warm_start_step: int):
    """The cosine schedule, with a fresh 300-step warm-up (from step 0, or after a warm start's step).

    A warm start restarts AdamW with empty moment estimates; ramping the rate up again keeps its first,
    badly scaled updates from undoing the loaded weights.
    """
    cosine = cosine_lr_lambda(total_steps, 300, 0.05)
    if not warm_start_step:
        return cosine
    return lambda step: cosine(step) * min(1.0, (step - warm_start_step + 1) / 300) if step >= warm_start_step else cosine(step)


def load_warm_start(folder: Path, unet, text_encoder):
    """Weights of an exported model folder (fp16 EMA) as fp32 starting weights, and the UNet step they reached."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    meta = json.loads((folder / "tficon.json").read_text())
    loaded_unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    loaded_text = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    unet.load_state_dict(loaded_unet.state_dict())
    text_encoder.load_state_dict(loaded_text.state_dict())
    return unet, text_encoder, int(meta["training"]["unet_steps_done"])


# ----------------------------------------------------------------------------------------------- export and gates


def export(out: Path, vae, unet, text_encoder, tokenizer, meta: dict):
    """Save the model folder (fp16 safetensors) and ``tficon.json``; return an fp32 pipeline of the same weights."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    parts = {name: copy.deepcopy(m).eval() for name, m in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))}
    pipe = StableDiffusionPipeline(
        **parts,
        tokenizer=tokenizer,
        scheduler=DPMSolverMultistepScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)
    (out / "tficon.json").write_text(json.dumps(meta, indent=2) + "\n")
    return pipe


def text_to_image_gates(pipe) -> dict[str, float]:
    """Single-object (all of domain / colour / shape) and two-object (both objects) accuracy on 32 + 16 prompts."""
    from training.toy import quality

    rng = np.random.default_rng(7)
    singles = quality.single_object_prompts()
    singles = [singles[i] for i in rng.choice(len(singles), 32, replace=False)]
    single = quality.single_object_scores(pipe, singles, seed=0)
    double = quality.two_object_scores(pipe, quality.two_object_prompts(), seed=1000)
    return {"single_all": single["all"], "single_domain": single["domain"], "two_both": double["both"], "two_count": double["count"]}


def build_tokenizer(clip_bpe: str | None = None, tokenizer_from: Path | None = None):
    """CLIP's real tokenizer (77 positions): copied from a model folder that has it (``tokenizer_from``, e.g. the
    shipped toy model, which needs no network), or rebuilt from the merge list in the open_clip wheel."""
    from transformers import CLIPTokenizer

    from tficon.model.tokenizer import build_real_clip_tokenizer

    if tokenizer_from is not None:
        tokenizer = CLIPTokenizer.from_pretrained(Path(tokenizer_from) / "tokenizer")
        where = f"the tokenizer of {tokenizer_from}"
    else:
        tokenizer = build_real_clip_tokenizer(clip_bpe, model_max_length=MAX_TOKENS)
        where = "the rebuilt CLIP vocabulary"
    if tokenizer.convert_ids_to_tokens(EXCEPTIONAL_TOKEN_ID) != "rian</w>" or tokenizer.model_max_length != MAX_TOKENS:
        raise RuntimeError(f"{where} is not CLIP's ({MAX_TOKENS} positions, 'rian</w>' at id {EXCEPTIONAL_TOKEN_ID})")
    return tokenizer


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids


def encoded_data(args, held_out, log: RunLog) -> dict:
    """The VAE and the encoded training set: from ``WORK/latents.pt`` when this run already made them, else made
    now and saved there. A warm start keeps its exported VAE (the UNet was trained on its latents); otherwise the
    VAE is trained here and its scaling factor set to 1 / std of the sampled latents."""
    from diffusers import AutoencoderKL

    latents_file = args.work / "latents.pt"
    if latents_file.exists():
        data = torch.load(latents_file, weights_only=False)
        log(f"loaded {len(data['captions'])} encoded examples and the VAE from {latents_file}")
        return data
    t0 = time.time()
    images, captions, is_canvas = render_dataset(args.images, args.seed, canvas_fraction=args.canvas_fraction,
                                                  latent_factor=args.latent_factor)
    log(f"rendered {args.images} examples ({int(is_canvas.sum())} canvases) in {time.time() - t0:.0f} s")
    if args.init_from is not None:
        vae = AutoencoderKL.from_pretrained(args.init_from / "vae", torch_dtype=torch.float32).eval()
        vae_quality = vae_scores(vae, *held_out)
        log(f"warm start: VAE from {args.init_from}, {vae_quality}")
    else:
        vae, vae_quality = train_vae(images, is_canvas, held_out, args.vae_steps, args.seed, args.work, log, args.checkpoint_every,
                                       args.latent_factor)
        log(f"VAE held-out PSNR: {vae_quality}", stage="vae_quality", **vae_quality)
    latent_mean, latent_std = encode_latents(vae, images)
    if args.init_from is None:
        sampled = latent_mean + latent_std * torch.randn(latent_mean.shape, generator=torch.Generator().manual_seed(args.seed + 4))
        vae.register_to_config(scaling_factor=float(1.0 / sampled.std()))
        log(f"encoded latents: std {float(sampled.std()):.3f} -> scaling_factor {vae.config.scaling_factor:.4f}")
    data = {"vae": vae, "vae_quality": vae_quality, "captions": captions, "mean": latent_mean, "std": latent_std,
            "scaling_factor": float(vae.config.scaling_factor)}
    save_atomically(data, latents_file)
    return data


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (a diffusers pipeline)")
    parser.add_argument("--work", type=Path, help="checkpoints, cached data and the log (default: OUT.work)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    parser.add_argument("--export-only", action="store_true",
                        help="write the EMA weights of the latest UNet checkpoint in --work to --out, then stop")
    parser.add_argument("--images", type=int, default=20000, help="number of training examples")
    parser.add_argument("--canvas-fraction", type=float, default=0.1, help="share of reference canvases")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--unet-steps", type=int, default=10000)
    parser.add_argument("--stop-after", type=int,
                        help="end the UNet stage after this many steps (exported, checkpointed); the learning-rate "
                             "schedule still spans --unet-steps, so a later --resume without it continues the same run")
    parser.add_argument("--offset-noise", type=float, default=0.0,
                        help="UNet stage: add this much per-image, per-channel constant noise (offset noise) so the "
                             "text, not the starting noise's mean, sets the background (needed at 32x32 latents)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-factor", type=int, choices=sorted(VAE_CONFIGS), default=LATENT_FACTOR,
                        help="the VAE's downsampling: 2 (32x32 latents, the shipped model) or 4 (16x16 latents, "
                             "the model shipped before it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--export-every", type=int, default=1000)
    parser.add_argument("--no-gates", dest="gates", action="store_false", help="skip the text-to-image gates")
    parser.add_argument("--init-from", type=Path, help="warm start: an exported model folder (its VAE, UNet, text encoder)")
    parser.add_argument("--clip-bpe", help="CLIP merge list (.txt.gz) or open_clip wheel; default: pip download")
    parser.add_argument("--tokenizer-from", type=Path,
                        help="copy CLIP's tokenizer from this model folder (e.g. tficon/toy/model) instead of rebuilding it")
    args = parser.parse_args(argv)
    for name in ("images", "vae_steps", "unet_steps", "checkpoint_every", "export_every", "stop_after"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.canvas_fraction < 1.0:
        parser.error("--canvas-fraction must be in [0, 1)")
    warm = None if args.init_from is None else json.loads((args.init_from / "tficon.json").read_text())
    if warm is not None:
        warm_latent = warm.get("latent_size", IMAGE_SIZE // 4)  # folders from before v3 did not record it
        if warm_latent != IMAGE_SIZE // args.latent_factor:
            parser.error(f"--init-from {args.init_from} has {warm_latent}x{warm_latent} latents: pass "
                         f"--latent-factor {IMAGE_SIZE // warm_latent}")
    args.work = args.work or args.out.with_name(args.out.name + ".work")
    args.resume = args.resume or args.export_only
    if args.work.exists() and any(args.work.iterdir()) and not args.resume:
        parser.error(f"{args.work} holds an earlier run: pass --resume to continue it, or remove it")
    args.work.mkdir(parents=True, exist_ok=True)
    # The recorded command leaves out what does not change the weights: --resume, and where the tokenizer comes from.
    given, recorded = list(sys.argv[1:] if argv is None else argv), []
    while given:
        arg = given.pop(0)
        if arg in ("--clip-bpe", "--tokenizer-from"):
            given.pop(0) if given else None
        elif arg not in ("--resume", "--export-only") and not arg.startswith(("--clip-bpe=", "--tokenizer-from=")):
            recorded.append(arg)
    command = "python -m training.toy.train " + " ".join(shlex.quote(a) for a in recorded)
    log = RunLog(args.work)
    log(f"{'resuming' if args.resume else 'starting'}: {command}")

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals slow CPU convolutions by up to 4x

    tokenizer = build_tokenizer(args.clip_bpe, args.tokenizer_from)
    held_images, _, held_canvas = render_dataset(128, args.seed, offset=HELD_OUT_OFFSET, canvas_fraction=0.5,
                                                 latent_factor=args.latent_factor)
    held_out = (to_tensor(held_images), torch.from_numpy(held_canvas))
    data = encoded_data(args, held_out, log)
    vae, vae_quality, captions = data["vae"], data["vae_quality"], data["captions"]
    latent_mean, latent_std, scaling_factor = data["mean"], data["std"], data["scaling_factor"]

    token_ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]
    meta = {
        "family": "toy",
        "exceptional_token_id": EXCEPTIONAL_TOKEN_ID,
        "exceptional_token": "rian",
        "image_size": IMAGE_SIZE,
        "latent_size": IMAGE_SIZE // args.latent_factor,
        "max_tokens": MAX_TOKENS,
        "training": {
            "command": command,
            "images": args.images,
            "canvas_fraction": args.canvas_fraction,
            "vae_steps": args.vae_steps if args.init_from is None else None,  # a warm start keeps its VAE
            "unet_steps": args.unet_steps,
            "seed": args.seed,
            "offset_noise": args.offset_noise,
            "threads": args.threads,
            "init_from": None if warm is None else warm["training"],
            **vae_quality,
            "torch": torch.__version__,
        },
    }
    train_unet(latent_mean, latent_std, scaling_factor, token_ids, empty_ids, vae, tokenizer, args, log, args.out, meta)
    log(f"done: the model is in {args.out}")


if __name__ == "__main__":
    main()

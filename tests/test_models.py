"""Model loading (tficon.model: load, identify, single_file, hub, lora) on tiny random SD-shaped folders, the toy model, and the offline errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tficon import model as models
from tficon.model import CheckpointFileError, ModelNotAvailableError, identify_model, load_model
from tficon.model.tiny import save_tiny_model, tiny_components, tiny_model

NO_SUCH_HUB_ID = "tficon-tests/no-such-model-7f3a9c"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> folder written by save_tiny_model."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: save_tiny_model(root / family, family, seed=2) for family in ("sd1", "sd2", "sd2-v")}


@pytest.fixture(scope="module")
def sd2(saved):
    return load_model(saved["sd2"], device="cpu")


@pytest.mark.parametrize(
    "family, expected_family, prediction, width, linear_projection",
    [
        ("sd1", "tiny-sd1", "epsilon", 32, False),
        ("sd2", "tiny-sd2", "epsilon", 48, True),
        ("sd2-v", "tiny-sd2", "v_prediction", 48, True),
    ],
)
def test_saved_tiny_model_loads_with_its_identity_and_weights(
    saved, family, expected_family, prediction, width, linear_projection
):
    model = load_model(saved[family], device="cpu")
    assert (model.family, model.prediction_type, model.image_size) == (expected_family, prediction, 64)
    assert model.exceptional_token_id == 7788
    assert (model.vae_scale_factor, model.latent_channels, model.latent_size) == (8, 4, 8)
    assert model.latent_scaling == pytest.approx(0.18215)
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.spec == str(saved[family])
    assert model.unet.config.cross_attention_dim == width == model.text_encoder.config.hidden_size
    assert model.unet.config.use_linear_projection is linear_projection
    config = model.scheduler_config
    assert (config["beta_schedule"], config["beta_start"], config["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    assert config["num_train_timesteps"] == 1000
    assert model.describe().startswith(f"{expected_family} ({prediction}), 64x64 images -> 4x8x8 latents, cpu float32")

    # the folder holds exactly the weights tiny_components made
    reference = tiny_components(family, seed=2)
    for name in ("unet", "vae", "text_encoder"):
        loaded, made = getattr(model, name).state_dict(), reference[name].state_dict()
        assert loaded.keys() == made.keys()
        assert all(torch.equal(loaded[k], made[k]) for k in made), name
    assert not any(p.requires_grad for p in model.unet.parameters())

    # latents of the right shape, and the UNet accepts them with the model's own embeddings
    latents = model.encode_image(torch.zeros(2, 3, 64, 64), torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
    context = torch.cat([model.encode_prompt("a photo of a cat"), model.exceptional_embedding()])
    with torch.no_grad():
        assert model.unet(latents, 10, encoder_hidden_states=context).sample.shape == (2, 4, 8, 8)


def test_tiny_model_has_attention_at_two_resolutions_and_the_mid_block():
    model = tiny_model("sd2", device="cpu")
    names = list(model.unet.attn_processors)
    self_attention = [n for n in names if ".attn1." in n]
    cross_attention = [n for n in names if ".attn2." in n]
    assert len(self_attention) == len(cross_attention) == 7  # 2 down, 1 mid, 4 up (like SD's 16 at 3x size)
    assert any(n.startswith("mid_block.") for n in self_attention)
    # resolutions actually visited by the self-attention layers for a 64x64 image (8x8 latent)
    seen: set[int] = set()
    hooks = [
        module.register_forward_pre_hook(lambda _m, args: seen.add(args[0].shape[1]))
        for name, module in model.unet.named_modules()
        if name.endswith(".attn1")
    ]
    with torch.no_grad():
        model.unet(torch.zeros(1, 4, 8, 8), 10, encoder_hidden_states=model.exceptional_embedding())
    for hook in hooks:
        hook.remove()
    assert seen == {64, 16, 4}  # 8x8 and 4x4 in down/up blocks, 2x2 in the mid block


def test_encode_image_is_a_posterior_sample_drawn_per_image_from_the_generator(sd2):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 2 - 1
    generator = torch.Generator().manual_seed(3407)
    z = sd2.encode_image(images, generator)

    with torch.no_grad():
        posterior = sd2.vae.encode(images).latent_dist
    reference = torch.Generator().manual_seed(3407)
    noise = torch.cat([torch.randn(1, 4, 8, 8, generator=reference) for _ in range(2)])  # background, then reference
    expected = (posterior.mean + posterior.std * noise) * 0.18215
    torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)
    assert (z - posterior.mean * 0.18215).abs().mean() > 0.5 * (posterior.std * 0.18215).mean()
    # the generator advanced by exactly those two draws
    assert torch.equal(torch.randn(3, generator=generator), torch.randn(3, generator=reference))
    # same seed, same latents; another seed, other latents
    assert torch.equal(sd2.encode_image(images, torch.Generator().manual_seed(3407)), z)
    assert not torch.allclose(sd2.encode_image(images, torch.Generator().manual_seed(1)), z)


def test_decode_of_encode_has_the_image_shape_and_range(sd2):
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = sd2.encode_image(images, torch.Generator().manual_seed(0))
    decoded = sd2.decode_latent(z)
    assert decoded.shape == (1, 3, 64, 64) and decoded.dtype == torch.float32
    assert decoded.min() >= -1 and decoded.max() <= 1
    with torch.no_grad():
        unclamped = sd2.vae.decode(z / 0.18215).sample
    torch.testing.assert_close(decoded, unclamped.clamp(-1, 1))


def test_encode_and_decode_reject_bad_input(sd2):
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*x / 127.5 - 1"):
        sd2.encode_image(torch.full((1, 3, 64, 64), 255.0), generator)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) with H and W multiples of 8"):
        sd2.encode_image(torch.zeros(1, 3, 60, 64), generator)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sd2.encode_image(torch.zeros(1, 3, 64, 64), 3407)
    with pytest.raises(ValueError, match=r"z must be a \(B, 4, h, w\)"):
        sd2.decode_latent(torch.zeros(1, 3, 8, 8))


def test_prompt_and_exceptional_embeddings_are_cached(sd2):
    from tficon.model.text import encode_prompt, exceptional_embedding

    first = sd2.encode_prompt("a photo of a dog")
    assert sd2.encode_prompt("a photo of a dog") is first
    assert torch.equal(first, encode_prompt(sd2.tokenizer, sd2.text_encoder, "a photo of a dog"))
    assert sd2.exceptional_embedding() is sd2.exceptional_embedding()
    assert torch.equal(sd2.exceptional_embedding(), exceptional_embedding(sd2.text_encoder, 7788, 77))
    for i in range(models.PROMPT_CACHE_SIZE):  # a full cache of other prompts evicts the first one
        sd2.encode_prompt(f"a photo of {i}")
    assert len(sd2._prompt_cache) == models.PROMPT_CACHE_SIZE
    assert sd2.encode_prompt("a photo of a dog") is not first


def test_tficon_json_overrides_and_validation(saved, tmp_path):
    folder = shutil.copytree(saved["sd1"], tmp_path / "model")
    (folder / "tficon.json").write_text(json.dumps({"family": "toy", "exceptional_token_id": 12, "image_size": 32}))
    model = load_model(folder, device="cpu")
    assert (model.family, model.exceptional_token_id, model.image_size) == ("toy", 12, 32)
    assert model.exceptional_embedding().shape == (1, 77, 32)

    (folder / "tficon.json").write_text(json.dumps({"family": "tiny-sd1", "exceptional_token_id": 9000}))
    with pytest.raises(ValueError, match="exceptional_token_id 9000 is outside the text encoder's vocabulary of 8192"):
        load_model(folder, device="cpu")
    (folder / "tficon.json").unlink()  # tiny widths (32) name no SD family
    with pytest.raises(ValueError, match=r"cannot tell the model family from cross_attention_dim 32.*tficon.json"):
        load_model(folder, device="cpu")


def _sd_configs(cross: int = 1024, sample_size: int = 64, prediction: str = "epsilon", in_channels: int = 4):
    unet = {"cross_attention_dim": cross, "sample_size": sample_size, "in_channels": in_channels}
    text = {"hidden_size": cross, "vocab_size": 49408}
    vae = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4}
    return unet, text, vae, {"prediction_type": prediction, "beta_schedule": "scaled_linear"}


def test_identify_model_from_sd_configs():
    assert identify_model(*_sd_configs(768)) == models.ModelIdentity("sd1", "epsilon", 512, 7788)
    assert identify_model(*_sd_configs(1024)) == models.ModelIdentity("sd2", "epsilon", 512, 7788)
    assert identify_model(*_sd_configs(1024, 96, "v_prediction")) == models.ModelIdentity(
        "sd2", "v_prediction", 768, 7788
    )
    with pytest.raises(ValueError, match="SDXL-style model .* not SDXL base: its UNet's addition_embed_type is None"):
        identify_model(*_sd_configs(1024), component_names={"unet", "text_encoder", "text_encoder_2"})
    with pytest.raises(ValueError, match=r"cross_attention_dim 2048 \(2048 is SDXL, which needs its second text encoder"):
        identify_model(*_sd_configs(2048))
    with pytest.raises(ValueError, match="9 input channels .* inpainting"):
        identify_model(*_sd_configs(1024, in_channels=9))
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        identify_model(*_sd_configs(768, prediction="sample"))
    with pytest.raises(ValueError, match="family must be one of"):
        identify_model(*_sd_configs(768), overrides={"family": "flux"})
    with pytest.raises(ValueError, match="family 'sd3' is an SD3 .MM-DiT. family, but the components are a UNet"):
        identify_model(*_sd_configs(768), overrides={"family": "sd3"})
    with pytest.raises(ValueError, match="family 'sdxl' does not match the components"):
        identify_model(*_sd_configs(768), overrides={"family": "sdxl"})


def test_an_sdxl_folder_without_sdxl_conditioning_is_rejected_before_loading_weights(saved, tmp_path):
    """SDXL base folders load (tests/test_sdxl.py); one whose UNet lacks SDXL's added conditioning is refused."""
    folder = tmp_path / "sdxl"
    for part in ("unet", "vae", "text_encoder", "scheduler"):
        shutil.copytree(saved["sd2"] / part, folder / part, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(saved["sd2"] / "text_encoder", folder / "text_encoder_2", ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((saved["sd2"] / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="SDXL-style model .* not SDXL base.*addition_embed_type"):
        load_model(folder, device="cpu")


def test_missing_local_paths_name_the_path(tmp_path):
    for spec in (str(tmp_path / "no" / "such" / "model"), "./not-here/model", "weights/v2-1_512-ema-pruned.ckpt"):
        with pytest.raises(FileNotFoundError, match=rf"model path .{re.escape(spec)}. does not exist.*\"toy\""):
            load_model(spec, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder \\(no model_index.json\\)"):
        load_model(empty, device="cpu")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .ckpt/.safetensors checkpoint"):
        load_model(tmp_path / "notes.txt", device="cpu")
    with pytest.raises(ValueError, match="URLs are not supported"):
        load_model("https://huggingface.co/x/y/resolve/main/model.ckpt", device="cpu")


def test_hub_id_fails_at_once_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model(NO_SUCH_HUB_ID, device="cpu")
    assert time.perf_counter() - start < 3
    message = str(caught.value)
    assert NO_SUCH_HUB_ID in message and "offline mode is on" in message
    assert '"toy"' in message and "local diffusers folder" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_hub_ids_without_hf_hub_offline_use_the_cache_or_fail_at_once(tmp_path):
    """A fresh interpreter with HF_HUB_OFFLINE unset and a private HF cache holding two tiny pipelines (SD 2.x and
    SDXL): the cached ids load; the missing id fails fast (no network: the probe fails; network: the hub says
    the repo does not exist)."""
    hf_home = tmp_path / "hf-home"
    commit = "0123456789abcdef0123456789abcdef01234567"
    for name, family in (("cached-tiny", "sd2-v"), ("cached-tiny-xl", "sdxl")):
        repo = hf_home / "hub" / f"models--tficon-tests--{name}"
        save_tiny_model(repo / "snapshots" / commit, family, seed=4)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    script = textwrap.dedent(
        f"""
        import json, os, time
        from diffusers import StableDiffusionPipeline  # import time is not the network wait being measured
        from huggingface_hub import constants
        from tficon.model import load_model
        assert not constants.HF_HUB_OFFLINE

        def attempt(spec):
            start = time.perf_counter()
            try:
                model = load_model(spec, device="cpu")
                outcome = {{"type": None, "message": model.describe()}}
            except Exception as error:
                outcome = {{"type": type(error).__name__, "message": str(error)}}
            outcome["seconds"] = time.perf_counter() - start
            return outcome

        outcomes = [attempt({NO_SUCH_HUB_ID!r}), attempt("tficon-tests/cached-tiny")]
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by load_model at call time
        outcomes.append(attempt("tficon-tests/cached-tiny"))
        outcomes.append(attempt("tficon-tests/cached-tiny-xl"))
        print("RESULT" + json.dumps(outcomes))
        """
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    environment["HF_HOME"] = str(hf_home)
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, result.stderr[-3000:]
    missing, cached, cached_offline, cached_xl = json.loads(lines[-1].removeprefix("RESULT"))
    assert missing["type"] == "ModelNotAvailableError", missing
    assert missing["seconds"] < models.HUB_PROBE_TIMEOUT_S + 2
    assert NO_SUCH_HUB_ID in missing["message"] and '"toy"' in missing["message"]
    for outcome in (cached, cached_offline):
        assert outcome["type"] is None, outcome
        assert outcome["message"].startswith("tiny-sd2 (v_prediction), 64x64 images")
    assert cached_xl["type"] is None, cached_xl
    assert cached_xl["message"].startswith("tiny-sdxl (epsilon), 64x64 images"), cached_xl


def test_single_file_without_cached_configs_explains_config_offline(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # named like the official checkpoint: tficon picks the SD 2.1-base configs, which are not cached
    official = tmp_path / "v2-1_512-ema-pruned.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(official))
    assert models._default_single_file_config(official) == "stabilityai/stable-diffusion-2-1-base"
    with pytest.raises(ModelNotAvailableError, match=r"(?s)v2-1_512-ema-pruned.*not in the local .* cache.*config="):
        load_model(official, device="cpu")
    # another name: diffusers picks the configs, cannot fetch them, and the error explains config=
    other = tmp_path / "my-model.safetensors"
    shutil.copy(official, other)
    assert models._default_single_file_config(other) is None
    with pytest.raises(ModelNotAvailableError, match=r"(?s)my-model.safetensors.*pass config="):
        load_model(other, device="cpu")
    with pytest.raises(FileNotFoundError, match="config folder .* does not exist"):
        load_model(other, config=tmp_path / "missing-config", device="cpu")


def test_toy_model_loads():
    metadata = json.loads((models.TOY_MODEL_DIR / "tficon.json").read_text())
    model = load_model("toy", device="cpu")
    assert model.family == "toy" and model.spec == "toy"
    assert model.image_size == metadata["image_size"] == 64
    assert model.exceptional_token_id == metadata["exceptional_token_id"]
    size = model.image_size
    latents = model.encode_image(torch.zeros(1, 3, size, size), torch.Generator().manual_seed(0))
    assert latents.shape == (1, model.latent_channels, model.latent_size, model.latent_size)
    assert model.decode_latent(latents).shape == (1, 3, size, size)
    e = model.exceptional_embedding()
    assert e.shape == model.encode_prompt("").shape and torch.equal(e, e[:, :1].expand_as(e))


def test_missing_toy_model_says_how_to_train_it(tmp_path, monkeypatch):
    monkeypatch.setattr(models.load, "TOY_MODEL_DIR", tmp_path / "model")  # where load_model reads it
    with pytest.raises(ModelNotAvailableError, match=r"toy model is not installed .*python -m training.toy.train --out"):
        load_model("toy", device="cpu")


def test_device_and_dtype_defaults_and_validation(saved):
    model = tiny_model("sd1", device="cpu")
    assert model.dtype == torch.float32 and model.family == "tiny-sd1"
    assert models._resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert models._resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert models._resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        load_model(saved["sd1"], device="cpu", dtype="float8")
    with pytest.raises(ValueError, match="config= only applies to single-file checkpoints"):
        load_model(saved["sd1"], config=saved["sd2"])


# --------------------------------------------------------------------------------------------------------------
# Real-checkpoint paths: single files in the original layout, LoRA, v-prediction, unsupported families, bad files
# --------------------------------------------------------------------------------------------------------------

# family -> (file suffix, text encoder layout): SD 1.x checkpoints carry Hugging Face CLIP, SD 2.x OpenCLIP.
CHECKPOINT_FILES = {"sd1": (".ckpt", False), "sd2": (".safetensors", True), "sd2-v": (".safetensors", True)}


@pytest.fixture(scope="module")
def checkpoints(saved, tmp_path_factory):
    """family -> a single-file checkpoint in the original (LDM) layout holding the weights of saved[family]."""
    from ldm_checkpoint import check_round_trip, to_ldm_checkpoint
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("checkpoints")
    files = {}
    for family, (suffix, open_clip) in CHECKPOINT_FILES.items():
        parts = tiny_components(family, seed=2)  # the weights save_tiny_model wrote to saved[family]
        state = to_ldm_checkpoint(parts["vae"], parts["unet"], parts["text_encoder"], open_clip=open_clip)
        check_round_trip(state, parts["vae"], parts["unet"], parts["text_encoder"], open_clip=open_clip)
        files[family] = root / f"tiny-{family}{suffix}"
        if suffix == ".ckpt":  # as the official checkpoints: a Lightning-style dict with the weights under state_dict
            torch.save({"state_dict": state, "global_step": 0}, files[family])
        else:
            save_file(state, str(files[family]))
    return files


def _outputs(model) -> dict[str, torch.Tensor]:
    """What a TF-ICON run takes from a model: prompt embeddings, a UNet prediction, an encode and a decode."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    latent = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.cat([model.encode_prompt("a red car"), model.exceptional_embedding()])
    with torch.no_grad():
        noise = model.unet(latent, 500, encoder_hidden_states=context).sample
    return {
        "context": context,
        "unet": noise,
        "encode": model.encode_image(image, torch.Generator().manual_seed(1)),
        "decode": model.decode_latent(latent[:1]),
    }


@pytest.mark.parametrize("family", list(CHECKPOINT_FILES))
def test_single_file_checkpoint_in_the_original_layout_gives_the_folder_models_outputs(saved, checkpoints, family):
    folder_model = load_model(saved[family], device="cpu")
    model = load_model(checkpoints[family], config=saved[family], device="cpu")
    assert (model.family, model.prediction_type, model.image_size) == (
        folder_model.family, folder_model.prediction_type, 64,
    )  # fmt: skip
    assert model.spec == str(checkpoints[family])
    for name in ("unet", "vae", "text_encoder"):
        loaded, expected = getattr(model, name).state_dict(), getattr(folder_model, name).state_dict()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), name
    got, expected = _outputs(model), _outputs(folder_model)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert got["unet"].abs().mean() > 0.1  # a real prediction, not an empty one


def test_v_prediction_checkpoint_composes_end_to_end(saved, checkpoints, tmp_path):
    """The prediction type read with a checkpoint drives the whole composition: the same weights read as
    an epsilon model compose something else."""
    from tficon.composition.one_call import compose
    from tficon.toy.samples import toy_sample

    sample = toy_sample(image_size=64)
    args = (sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt)

    def run(model):
        return np.asarray(compose(model, *args, steps=4, progress=False, image_size=64))

    v_model = load_model(checkpoints["sd2-v"], config=saved["sd2-v"], device="cpu")
    assert v_model.prediction_type == "v_prediction"
    result = run(v_model)
    assert result.shape == (64, 64, 3) and result.std() > 1
    assert np.array_equal(result, run(load_model(saved["sd2-v"], device="cpu")))

    epsilon_config = shutil.copytree(saved["sd2-v"], tmp_path / "as-epsilon")
    scheduler = epsilon_config / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "epsilon"}))
    epsilon_model = load_model(checkpoints["sd2-v"], config=epsilon_config, device="cpu")
    assert epsilon_model.prediction_type == "epsilon"
    assert np.abs(run(epsilon_model).astype(float) - result).mean() > 1


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    """(LoRA file for saved["sd2"]'s UNet, UNet prediction of the base+LoRA made with peft, its input)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = tiny_components("sd2", seed=2)["unet"]
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op LoRA); a trained one is not
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    )
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, 48, generator=generator)
    with torch.no_grad():
        expected = unet(x, 500, encoder_hidden_states=context).sample
    (path,) = folder.glob("*.safetensors")
    return path, expected, (x, context)


def test_lora_weights_load_through_diffusers_and_change_the_unet_as_trained(saved, lora_file):
    from tficon.composition.session import Session
    from tficon.toy.samples import toy_sample

    path, expected, (x, context) = lora_file
    base = load_model(saved["sd2"], device="cpu")
    model = load_model(saved["sd2"], device="cpu", lora=path)
    unscaled = load_model(saved["sd2"], device="cpu", lora=path.parent, lora_scale=0.0)  # the folder form

    def predict(m):
        with torch.no_grad():
            return m.unet(x, 500, encoder_hidden_states=context).sample

    torch.testing.assert_close(predict(model), expected, rtol=1e-4, atol=1e-5)
    assert (predict(model) - predict(base)).abs().mean() > 0.2 * predict(base).abs().mean()
    assert torch.equal(predict(unscaled), predict(base))
    # fused: no adapter layers are left for the attention processors to meet
    assert not any("lora" in name for name, _ in model.unet.named_modules())
    assert not any(p.requires_grad for p in model.unet.parameters())
    # this LoRA has no text-encoder part
    assert torch.equal(model.encode_prompt("a red car"), base.encode_prompt("a red car"))
    assert model.lora == str(path) and "LoRA" in model.describe() and base.lora is None

    sample = toy_sample(image_size=64)
    results = []
    for m in (base, model):
        session = Session(
            m, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
            image_size=64, steps=3, progress=False,
        )  # fmt: skip
        session.run()
        results.append(np.asarray(session.result).astype(float))
    assert np.abs(results[0] - results[1]).mean() > 0.5


def test_lora_errors_name_the_file(saved, lora_file, tmp_path):
    from safetensors.torch import save_file

    path = lora_file[0]
    with pytest.raises(FileNotFoundError, match="LoRA weights .*missing.safetensors. do not exist"):
        load_model(saved["sd2"], device="cpu", lora=tmp_path / "missing.safetensors")
    not_lora = tmp_path / "weights.safetensors"
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2)}, str(not_lora))
    with pytest.raises(ValueError, match="cannot load LoRA weights .*weights.safetensors"):
        load_model(saved["sd2"], device="cpu", lora=not_lora)
    with pytest.raises(ValueError, match=r"(?s)cannot load LoRA weights .*same base model family"):
        load_model(saved["sd1"], device="cpu", lora=path)  # made for the 48-wide sd2 UNet
    with pytest.raises(ValueError, match="lora_scale must be a finite number"):
        load_model(saved["sd2"], device="cpu", lora=path, lora_scale=float("nan"))
    with pytest.raises(ValueError, match="lora_scale is given but lora is not"):
        load_model(saved["sd2"], device="cpu", lora_scale=0.5)
    with pytest.raises(CheckpointFileError, match=r"not a Stable Diffusion checkpoint.*LoRA weights.*lora="):
        load_model(path, device="cpu")  # a LoRA file given as the model


def _fake_checkpoint(path, tensors: dict[str, tuple[int, ...]]):
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


def test_checkpoint_files_of_families_tficon_cannot_run_are_refused_by_name(tmp_path, monkeypatch):
    """Recognised from tensor names and shapes (diffusers' own detection keys), before any config or
    weight is fetched: offline, the error is about the family, not about missing configs."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES as KEYS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unet = "model.diffusion_model."
    cases = {
        "SDXL refiner": {KEYS["xl_refiner"]: (4,), unet + "out.2.bias": (4,)},
        "SD 1.x inpainting": {KEYS["inpainting"]: (8, 9, 3, 3)},
        "SD 2.x inpainting": {KEYS["inpainting"]: (8, 9, 3, 3), KEYS["v2"]: (8, 1024)},
        "Flux": {k: (4,) for k in KEYS["flux"]},
        "Stable Diffusion 3.5": {k: (4,) for k in KEYS["sd35_large"]},
        "5 input channels": {KEYS["inpainting"]: (8, 5, 3, 3)},  # a depth-conditioned UNet
    }
    for i, (family, tensors) in enumerate(cases.items()):
        path = _fake_checkpoint(tmp_path / f"model{i}.safetensors", tensors)
        with pytest.raises(CheckpointFileError, match=rf"(?s)model{i}.safetensors.*{re.escape(family)}"):
            load_model(path, device="cpu")
        message = str(pytest.raises(CheckpointFileError, load_model, path, device="cpu").value)
        assert "Stable Diffusion 1.x and 2.x" in message, message
    vae_only = _fake_checkpoint(tmp_path / "vae.safetensors", {"first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3)})
    with pytest.raises(CheckpointFileError, match=r"vae.safetensors.*not a Stable Diffusion checkpoint.*no UNet"):
        load_model(vae_only, device="cpu")


def test_truncated_or_corrupt_checkpoint_files_are_named(checkpoints, saved, tmp_path):
    for family in ("sd2", "sd1"):  # a .safetensors and a .ckpt
        data = checkpoints[family].read_bytes()
        for cut in (len(data) // 2, 20):
            truncated = tmp_path / f"cut{cut}-{checkpoints[family].name}"
            truncated.write_bytes(data[:cut])
            with pytest.raises(CheckpointFileError, match=rf"cannot read checkpoint file .*{truncated.name}.*truncated"):
                load_model(truncated, config=saved[family], device="cpu")
    assert issubclass(CheckpointFileError, ValueError)


def test_an_unavailable_device_is_refused_before_loading(saved):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = f"cuda:{count + 6}"
    for call in (
        lambda: load_model(saved["sd2"], device=missing),
        lambda: load_model("toy", device=torch.device(missing)),
        lambda: tiny_model("sd2", device=missing),
    ):
        with pytest.raises(ValueError, match=rf"device '{missing}' is not available"):
            call()
    if not (torch.backends.mps.is_available()):
        with pytest.raises(ValueError, match=r"device 'mps' is not available.*device='cpu'"):
            load_model(saved["sd2"], device="mps")
    with pytest.raises(ValueError, match="device 'gpu0' is not a device name"):
        load_model(saved["sd2"], device="gpu0")
    # nothing was loaded: a refused device with a missing LoRA file complains about the device first
    with pytest.raises(ValueError, match="is not available"):
        load_model("no/such/model/anywhere", device=missing, lora="/no/such/lora.safetensors")

"""The toy world generator and its detector: determinism, captions, exact masks, distinct domains."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tficon.toy import (
    COLOURS,
    DOMAINS,
    SHAPES,
    ObjectSpec,
    caption_words,
    make_caption,
    object_mask,
    render_background,
    render_object,
    render_scene,
    render_spec,
)
from tficon.toy.detector import detect
from tficon.toy.world import BACKGROUND_RGB, COLOUR_RGB


def test_same_seed_same_image_caption_and_scene():
    a_img, a_cap, a_scene = render_scene(42)
    b_img, b_cap, b_scene = render_scene(np.random.default_rng(42))
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img))
    assert (a_cap, a_scene) == (b_cap, b_scene)
    c_img, _, _ = render_scene(43)
    assert not np.array_equal(np.asarray(a_img), np.asarray(c_img))


def test_golden_scene_for_seed_0():
    # Pins the training data: changing the generator changes what the shipped model was trained on.
    image, caption, scene = render_scene(np.random.default_rng([0, 0]))
    assert image.size == (64, 64) and image.mode == "RGB"
    assert caption == make_caption(scene.objects, scene.domain)
    assert (caption, int(np.asarray(image, dtype=np.int64).sum())) == ("a blue triangle, pencil style", 2646099)


def test_caption_matches_scene_left_to_right():
    for seed in range(60):
        _, caption, scene = render_scene(seed)
        ordered = scene.objects_left_to_right
        assert [o.centre[0] for o in ordered] == sorted(o.centre[0] for o in scene.objects)
        names = [f"a {o.colour} {o.shape}" for o in ordered]
        assert caption.endswith(f"{scene.domain} style")
        positions = [caption.index(name) for name in names]
        assert positions == sorted(positions)
        assert set(caption.replace(",", " , ").split()) <= set(caption_words())
        # objects never overlap and are separated horizontally (unambiguous left-to-right order)
        for left, right in zip(ordered, ordered[1:]):
            assert right.centre[0] - left.centre[0] >= left.size + right.size


def test_caption_formats():
    star = ObjectSpec("star", "red", (10.0, 30.0), 6.0)
    circle = ObjectSpec("circle", "blue", (40.0, 30.0), 6.0)
    square = ObjectSpec("square", "green", (55.0, 30.0), 5.0)
    assert make_caption([circle, star], "outline") == "a red star and a blue circle, outline style"
    assert make_caption([square, star, circle], "pencil") == "a red star, a blue circle and a green square, pencil style"
    assert make_caption([], "flat") == "flat style"
    # plain (shape, colour, centre, size) tuples work too
    assert make_caption([("square", "yellow", (30, 30), 5)], "striped") == "a yellow square, striped style"
    with pytest.raises(ValueError, match="domain"):
        make_caption([star], "sketch")


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("shape", SHAPES)
def test_object_mask_is_exactly_the_painted_pixels(domain, shape):
    image, mask = render_object(shape, "red", domain, size=14)
    background, _, _ = render_background(domain)
    painted = np.any(np.asarray(image) != np.asarray(background), axis=2)
    inside = np.asarray(mask) == 255
    assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert not np.any(painted & ~inside), "the object painted pixels outside its mask"
    # outline/striped/pencil leave some interior pixels at (or near) the background, flat paints them all
    if domain == "flat":
        assert np.array_equal(painted, inside)
    else:
        assert painted.sum() > 0.3 * inside.sum()


def test_flat_colour_appears_only_inside_mask():
    image, mask = render_object("star", "blue", "flat", size=18)
    rgb = np.asarray(image).astype(int)
    pure = np.all(rgb == np.array(COLOUR_RGB["blue"]), axis=2)
    inside = np.asarray(mask) == 255
    assert pure.sum() > 200
    assert not np.any(pure & ~inside)


def test_object_mask_matches_render_spec_geometry():
    obj = ObjectSpec("triangle", "yellow", (20.5, 40.0), 11.0)
    mask = np.asarray(object_mask(obj)) == 255
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 20.5) < 1.0
    assert xs.min() >= 20.5 - 11 - 1 and xs.max() <= 20.5 + 11
    big = np.asarray(object_mask(obj, image_size=128)) == 255
    assert abs(big.sum() / mask.sum() - 4) < 0.5  # the same object at twice the resolution


def test_domain_backgrounds_differ_measurably():
    means = {}
    for domain in DOMAINS:
        image, caption, scene = render_background(domain)
        assert caption == f"{domain} style" and scene.objects == ()
        means[domain] = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(0)
        assert np.linalg.norm(means[domain] - BACKGROUND_RGB[domain]) < 3
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1 :]:
            assert np.linalg.norm(means[a] - means[b]) > 20, (a, b)


def test_domains_draw_the_same_object_differently():
    renders = {d: np.asarray(render_object("square", "green", d, size=16)[0], dtype=np.float64) for d in DOMAINS}
    for i, a in enumerate(DOMAINS):
        for b in DOMAINS[i + 1 :]:
            assert np.abs(renders[a] - renders[b]).mean() > 10, (a, b)


def test_render_background_with_explicit_objects_and_count():
    specs = [ObjectSpec("circle", "red", (20.0, 20.0), 8.0)]
    image, caption, scene = render_background("striped", objects=specs)
    assert caption == "a red circle, striped style"
    assert np.array_equal(np.asarray(image), np.asarray(render_spec(specs, "striped")))
    _, caption2, scene2 = render_background("outline", objects=2, seed=5)
    assert len(scene2.objects) == 2 and caption2.endswith("outline style")


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="domain"):
        render_background("watercolour")
    with pytest.raises(ValueError, match="shape"):
        render_object("hexagon", "red", "flat")
    with pytest.raises(ValueError, match="colour"):
        render_object("star", "purple", "flat")
    with pytest.raises(ValueError, match="size"):
        render_object("star", "red", "flat", size=-1)
    with pytest.raises(TypeError, match="seed_or_rng"):
        render_scene("seven")
    with pytest.raises(ValueError, match="image_size"):
        render_spec([], "flat", image_size=30)


def test_training_tokenizer_is_clips_own_bpe(tmp_path_factory):
    """The training script rebuilds CLIP's vocabulary from the open_clip wheel (fetched by pip, no model hub)."""
    from tficon.model.tokenizer import download_clip_bpe
    from training.toy.train import EXCEPTIONAL_TOKEN_ID, MAX_TOKENS, build_tokenizer

    tokenizer = build_tokenizer(download_clip_bpe(tmp_path_factory.mktemp("bpe")))
    assert len(tokenizer) == 49408 and MAX_TOKENS == 77
    # Ids every CLIP user knows: start/end of text, "a", "photo", "dog", the comma, and the exceptional token.
    assert tokenizer("a photo of a dog, rian").input_ids == [49406, 320, 1125, 539, 320, 1929, 267, 7788, 49407]
    for word in caption_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    caption_ids = set(tokenizer(" ".join(caption_words()) + " cutout on black").input_ids)
    assert EXCEPTIONAL_TOKEN_ID not in caption_ids
    longest = "a yellow triangle, a yellow triangle and a yellow triangle, striped style"
    assert len(tokenizer(longest).input_ids) <= MAX_TOKENS


def test_detector_reads_ground_truth_near_perfectly():
    right = total = 0
    for i in range(40):
        image, _, scene = render_scene(np.random.default_rng([99, i]))
        found = detect(image)
        truth = scene.objects_left_to_right
        total += 1
        right += (
            found.domain == scene.domain
            and len(found.objects) == len(truth)
            and all(f.colour == t.colour and f.shape == t.shape for f, t in zip(found.objects, truth))
        )
    assert right / total >= 0.95


@pytest.mark.parametrize("domain", DOMAINS)
def test_detector_single_objects_every_colour_and_shape(domain):
    for colour in COLOURS:
        for shape in SHAPES:
            found = detect(render_object(shape, colour, domain, size=15)[0])
            assert (found.domain, found.colour, found.shape) == (domain, colour, shape)
            assert len(found.objects) == 1


def test_detector_on_empty_and_bad_input():
    found = detect(render_background("pencil")[0])
    assert found.domain == "pencil" and found.objects == () and found.colour is None
    with pytest.raises(TypeError, match="image"):
        detect(np.zeros((8, 8)))
    assert detect(Image.new("RGB", (64, 64), BACKGROUND_RGB["outline"])).domain == "outline"


def test_training_configs_by_latent_factor():
    """``--latent-factor 2`` (the default) builds exactly the shipped model's architecture: 32x32 latents of the
    64 px world with the attention grids at 16, 8 and 4 (the mid block), and reference canvases placed on that
    model's grid. 4 gives the previous model's 16x16 latents with attention at the same grids."""
    import json

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from tficon.toy import MODEL_DIR
    from tficon.toy.data import UNET_LEVELS, reference_canvas
    from training.toy.train import UNET_CONFIGS, unet_config, vae_config

    for part, config in (("vae", vae_config(2)), ("unet", unet_config(2))):
        shipped = json.loads((MODEL_DIR / part / "config.json").read_text())
        assert {k: shipped[k] for k in config} == {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    # the data set places its reference canvases on the grid of the UNet that trains on them
    assert UNET_LEVELS == {f: len(c["block_out_channels"]) for f, c in UNET_CONFIGS.items()}
    for factor in (2, 4):
        vae = AutoencoderKL(**vae_config(factor)).eval()
        unet = UNet2DConditionModel(**unet_config(factor)).eval()
        with torch.no_grad():
            z = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
            assert z.shape == (1, 4, 64 // factor, 64 // factor)
            grids = set()
            hooks = [m.register_forward_hook(lambda m, i, o: grids.add(i[0].shape[1]))
                     for n, m in unet.named_modules() if n.endswith("attn1")]
            out = unet(z, 10, encoder_hidden_states=torch.zeros(1, 77, 128)).sample
            for h in hooks:
                h.remove()
        assert out.shape == z.shape
        assert grids == {16 * 16, 8 * 8, 4 * 4}, factor  # tokens per self-attention layer

    pixels, caption = reference_canvas(np.random.default_rng(3), latent_factor=2)
    assert pixels.shape == (64, 64, 3) and caption.endswith("style") and "cutout on black" in caption
    assert (pixels[:2] == 0).all() and (pixels[:, :2] == 0).all()  # the object is centred on black

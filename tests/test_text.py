"""Prompt encoding and the exceptional prompt e* (docs/algorithm.md §3 and 14 item 6).

Everything runs on the tiny random SD-shaped text encoders of ``tficon.model.tiny`` (CPU, float32). The main
oracle is a hand-written CLIP text transformer (layer norms, causal multi-head attention, MLP) that reads
the model's weights but none of its forward code.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextModelWithProjection

from tficon.model.text import encode_prompt, exceptional_embedding, text_transformer
from tficon.model.tiny import tiny_components

PROMPT = "a watercolor painting of a cat"


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def parts(request):
    return tiny_components(request.param, seed=1)


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    raise AssertionError(f"test oracle does not know activation {name}")


def _manual_encoder(text_encoder, hidden: torch.Tensor) -> torch.Tensor:
    """final_layer_norm(layers(hidden)) written out by hand, with the causal mask of the official code."""
    config = text_encoder.config
    model = text_transformer(text_encoder)
    n, width = hidden.shape[1], hidden.shape[2]
    heads = config.num_attention_heads
    head_dim = width // heads
    causal = torch.full((n, n), float("-inf")).triu(1)

    def norm(module, x):
        return F.layer_norm(x, (width,), module.weight, module.bias, module.eps)

    def linear(module, x):
        return x @ module.weight.T + module.bias

    def split(x):  # (1, n, width) -> (heads, n, head_dim)
        return x.reshape(n, heads, head_dim).transpose(0, 1)

    h = hidden
    for layer in model.encoder.layers:
        attention = layer.self_attn
        x = norm(layer.layer_norm1, h)
        q, k, v = (split(linear(p, x)) for p in (attention.q_proj, attention.k_proj, attention.v_proj))
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(head_dim) + causal, dim=-1)
        mixed = (weights @ v).transpose(0, 1).reshape(1, n, width)
        h = h + linear(attention.out_proj, mixed)
        x = norm(layer.layer_norm2, h)
        h = h + linear(layer.mlp.fc2, _activation(config.hidden_act, linear(layer.mlp.fc1, x)))
    return norm(model.final_layer_norm, h)


def _manual_exceptional(text_encoder, token_id: int, length: int) -> torch.Tensor:
    """The official recipe literally: ``length`` copies of the token, token embedding only, full sequence."""
    table = text_transformer(text_encoder).embeddings.token_embedding.weight
    with torch.no_grad():
        return _manual_encoder(text_encoder, table[token_id].expand(1, length, -1))


def test_exceptional_embedding_rows_are_identical(parts):
    e = exceptional_embedding(parts["text_encoder"])
    width = parts["text_encoder"].config.hidden_size
    assert e.shape == (1, 77, width)
    assert torch.equal(e, e[:, :1].expand_as(e))
    assert e.abs().max() > 0.1  # a real vector, not zeros


def test_exceptional_embedding_equals_the_manual_full_length_computation(parts):
    text_encoder = parts["text_encoder"]
    expected = _manual_exceptional(text_encoder, 7788, 77)
    torch.testing.assert_close(exceptional_embedding(text_encoder), expected, rtol=1e-5, atol=1e-5)
    # ... and the length-1 computation, the route the implementation takes
    row = _manual_exceptional(text_encoder, 7788, 1)
    torch.testing.assert_close(exceptional_embedding(text_encoder, length=1), row, rtol=1e-5, atol=1e-5)
    # another token gives another embedding, another length only more rows of the same vector
    assert not torch.allclose(exceptional_embedding(text_encoder, token_id=1234), expected, atol=1e-3)
    assert torch.equal(exceptional_embedding(text_encoder, length=5), exceptional_embedding(text_encoder)[:, :5])


def test_exceptional_embedding_ignores_position_embeddings_while_prompts_do_not(parts):
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    e_before = exceptional_embedding(text_encoder)
    prompt_before = encode_prompt(tokenizer, text_encoder, PROMPT)

    perturbed = copy.deepcopy(text_encoder)
    position = text_transformer(perturbed).embeddings.position_embedding.weight
    with torch.no_grad():
        position.add_(torch.randn(position.shape, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(exceptional_embedding(perturbed), e_before)
    prompt_after = encode_prompt(tokenizer, perturbed, PROMPT)
    assert (prompt_after - prompt_before).abs().max() > 0.1


def test_exceptional_embedding_differs_from_prompt_and_empty_prompt(parts):
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    e = exceptional_embedding(text_encoder)
    for prompt in ("", PROMPT):
        c = encode_prompt(tokenizer, text_encoder, prompt)
        assert c.shape == e.shape
        assert (c - e).abs().amax(dim=-1).min() > 0.1, f"e* matches a row of encode_prompt({prompt!r})"


def test_exceptional_embedding_does_not_depend_on_prompts_encoded_before(parts):
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    first = exceptional_embedding(text_encoder)
    encode_prompt(tokenizer, text_encoder, PROMPT)
    encode_prompt(tokenizer, text_encoder, "a sketch of a dog")
    assert torch.equal(exceptional_embedding(text_encoder), first)


def test_exceptional_embedding_reads_a_nested_text_model(parts):
    """transformers 4.x (and CLIPTextModelWithProjection in 5.x) keep the modules under ``.text_model``."""
    text_encoder = parts["text_encoder"]
    nested = CLIPTextModelWithProjection(text_encoder.config)
    nested.text_model.load_state_dict(text_transformer(text_encoder).state_dict())
    assert text_transformer(nested) is nested.text_model
    torch.testing.assert_close(exceptional_embedding(nested), exceptional_embedding(text_encoder))


def test_exceptional_embedding_rejects_token_ids_outside_the_vocabulary(parts):
    text_encoder = parts["text_encoder"]
    vocab = text_encoder.config.vocab_size
    for bad in (vocab, -1):
        with pytest.raises(ValueError, match=rf"token_id {bad} is outside .*0\.\.{vocab - 1}"):
            exceptional_embedding(text_encoder, token_id=bad)
    with pytest.raises(TypeError, match="token_id must be an int"):
        exceptional_embedding(text_encoder, token_id=7788.0)
    with pytest.raises(ValueError, match="length must be a positive int"):
        exceptional_embedding(text_encoder, length=0)


def test_encode_prompt_is_the_pipelines_encoding(parts):
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    c = encode_prompt(tokenizer, text_encoder, PROMPT)
    ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, 0] == tokenizer.bos_token_id
    with torch.no_grad():
        direct = text_encoder(ids)[0]
    assert torch.equal(c, direct)

    pipeline = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    with torch.no_grad():
        from_pipeline, _ = pipeline.encode_prompt(PROMPT, "cpu", 1, do_classifier_free_guidance=False)
    torch.testing.assert_close(c, from_pipeline, rtol=0, atol=0)

    # the oracle: token + position embeddings through the hand-written encoder
    embeddings = text_transformer(text_encoder).embeddings
    with torch.no_grad():
        manual = _manual_encoder(text_encoder, embeddings.token_embedding(ids) + embeddings.position_embedding.weight)
    torch.testing.assert_close(c, manual, rtol=1e-5, atol=1e-5)


def test_encode_prompt_rejects_prompts_longer_than_the_window(parts):
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    fits = " ".join(["cat"] * 75)  # 75 words + start + end = 77 tokens
    assert encode_prompt(tokenizer, text_encoder, fits).shape[1] == 77
    with pytest.raises(ValueError, match=r"negative_prompt is too long: it needs 78 tokens .* holds 77"):
        encode_prompt(tokenizer, text_encoder, fits + " dog", name="negative_prompt")
    with pytest.raises(ValueError, match=r"^prompt is too long: it needs 102 tokens"):
        encode_prompt(tokenizer, text_encoder, " ".join(["cat"] * 100))
    with pytest.raises(TypeError, match="prompt must be a str"):
        encode_prompt(tokenizer, text_encoder, ["a", "cat"])


def test_tiny_tokenizers_number_their_words_the_same_in_every_build():
    """Two builds of one vocabulary give every token the same id (the BPE trainer alone numbers ties at random)."""
    from tficon.model.tiny import TINY_WORDS
    from tficon.model.tokenizer import build_clip_tokenizer

    builds = [build_clip_tokenizer(TINY_WORDS, model_max_length=77) for _ in range(3)]
    assert builds[0].get_vocab() == builds[1].get_vocab() == builds[2].get_vocab()
    words = sorted({w.lower() for w in TINY_WORDS})
    assert [builds[0].convert_tokens_to_ids(w + "</w>") for w in words] == list(range(2, 2 + len(words)))

"""Text conditioning: the normal prompt encoding and TF-ICON's "exceptional prompt".

Both functions take a diffusers-format ``CLIPTextModel`` (transformers 4.x, which nests the modules under
``.text_model``, or 5.x, which keeps them on the model itself) and return embeddings shaped like the
UNet's ``encoder_hidden_states``: ``(1, L, D)`` with ``L`` the tokenizer window (77 for SD) and ``D`` the
encoder width (768 SD 1.x, 1024 SD 2.x).

The exceptional embedding (docs/algorithm.md §3) is what the official code feeds the UNet during
inversion: 77 copies of one token (7788, ``rian</w>`` in CLIP's BPE), looked up in the token embedding with
*no* positional embedding, run through every layer of the loaded encoder and the final layer norm. Since
the inputs are identical and carry no position, every output row is the same vector, so we compute a
single row on a length-1 sequence (where the causal mask has nothing to hide) and tile it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["encode_prompt", "exceptional_embedding", "text_transformer"]


def text_transformer(text_encoder: nn.Module) -> nn.Module:
    """The module holding ``embeddings``, ``encoder`` and ``final_layer_norm`` of a ``CLIPTextModel``.

    transformers 4.x keeps them in ``text_encoder.text_model``; 5.x puts them on the model itself.
    """
    return getattr(text_encoder, "text_model", text_encoder)


def encode_prompt(tokenizer, text_encoder: nn.Module, prompt: str, *, name: str = "prompt") -> torch.Tensor:
    """Encode ``prompt`` exactly as ``StableDiffusionPipeline`` does, without truncation.

    The prompt is tokenised with start/end tokens, padded to ``tokenizer.model_max_length`` and passed
    through the whole loaded encoder (``text_encoder(ids)[0]``: all its layers, then the final layer
    norm). diffusers SD 2.x folders already hold the 23-layer encoder, so this equals the official
    "penultimate layer + ln_final" conditioning.

    Args:
        tokenizer: the pipeline's ``CLIPTokenizer``.
        text_encoder: the pipeline's ``CLIPTextModel``.
        prompt: the text to encode ("" gives the unconditional embedding).
        name: how the prompt is called in error messages (e.g. ``"negative_prompt"``).

    Returns:
        ``(1, model_max_length, D)`` tensor on the encoder's device, in the encoder's dtype.

    Raises:
        TypeError: ``prompt`` is not a string.
        ValueError: the prompt needs more tokens than the window holds (the pipeline would silently cut
            it; here the caller must shorten it).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, got {type(prompt).__name__}")
    limit = int(tokenizer.model_max_length)
    # verbose=False: the length check below replaces the tokenizer's own "sequence too long" warning.
    n_tokens = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
    if n_tokens > limit:
        raise ValueError(_too_many_tokens(tokenizer, prompt, name, n_tokens, limit))
    ids = tokenizer(prompt, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    # The SD pipeline passes the padding mask only for encoders configured to use one (CLIP is not).
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = ids.attention_mask.to(text_encoder.device)
    with torch.no_grad():
        return text_encoder(ids.input_ids.to(text_encoder.device), attention_mask=attention_mask)[0]


def _too_many_tokens(tokenizer, prompt: str, name: str, n_tokens: int, limit: int) -> str:
    """The message for a prompt past the window: the token count and the words that split into several pieces
    (a short prompt of rare or misspelt words can fill the window, and "too long" would not say why)."""
    words = prompt.split()
    pieces = {}
    for word in dict.fromkeys(words):
        count = len(tokenizer(word, add_special_tokens=False, verbose=False).input_ids)
        if count > 1:
            pieces[word] = count
    message = (
        f"{name} is too long: it needs {n_tokens} tokens (start and end tokens included) but the text encoder's "
        f"window holds {limit}; it has {len(words)} words"
    )
    if pieces:
        worst = sorted(pieces.items(), key=lambda item: -item[1])[:8]
        listed = ", ".join(f"{word!r} -> {count}" for word, count in worst)
        message += f", and the tokenizer splits some into several pieces ({listed} tokens)"
        message += f"; shorten the {name} or use common words (those above cost the most)"
    else:
        message += f"; shorten the {name}"
    return message + "."


def exceptional_embedding(text_encoder: nn.Module, token_id: int = 7788, length: int = 77) -> torch.Tensor:
    """TF-ICON's exceptional prompt embedding e*: ``length`` identical rows.

    Each row is ``final_layer_norm(encoder(token_embedding[token_id]))``: the token embedding of
    ``token_id`` with no positional embedding, through every layer of the loaded encoder, then the final
    layer norm. It is computed on a length-1 sequence and tiled, which equals the official length-77
    computation (identical position-free inputs give identical rows, causal mask or not).

    Args:
        text_encoder: a ``CLIPTextModel`` (transformers 4.x or 5.x).
        token_id: the repeated token; 7788 (``rian</w>``) in the official code.
        length: number of rows; the tokenizer window (77 for SD).

    Returns:
        ``(1, length, D)`` tensor on the encoder's device, in the encoder's dtype.

    Raises:
        ValueError: ``token_id`` is not in the encoder's vocabulary, or ``length`` < 1.
    """
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        raise TypeError(f"token_id must be an int, got {type(token_id).__name__}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int (the tokenizer window, 77 for SD), got {length!r}")
    model = text_transformer(text_encoder)
    token_embedding = model.embeddings.token_embedding
    vocab_size = token_embedding.num_embeddings
    if not 0 <= token_id < vocab_size:
        raise ValueError(
            f"token_id {token_id} is outside the text encoder's vocabulary (ids 0..{vocab_size - 1}); "
            "pass an id the encoder knows (SD uses 7788)."
        )
    ids = torch.tensor([[token_id]], device=token_embedding.weight.device)
    with torch.no_grad():
        hidden = token_embedding(ids)  # (1, 1, D): no position_embedding on purpose
        # No mask: with one token there is nothing to mask, and the mask arguments differ across versions.
        hidden = model.encoder(inputs_embeds=hidden)[0]
        row = model.final_layer_norm(hidden)
    return row.expand(1, length, row.shape[-1]).contiguous()

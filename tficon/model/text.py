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

SDXL (docs/algorithm.md §15) conditions its UNet on two CLIP encoders: the penultimate hidden states of both,
concatenated along the width, plus the pooled, projected embedding of the second encoder and six "added time
ids" (original size, crop corner, target size). Its text conditioning is a :class:`Conditioning`
(``encode_prompt_sdxl``, ``exceptional_embedding_sdxl``, ``sdxl_time_ids``); SD's stays a plain tensor. Which of
these a model uses, and how rows of them are concatenated and hashed, is its family's business
(``tficon.model.families``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

__all__ = [
    "Conditioning",
    "encode_prompt",
    "encode_prompt_sdxl",
    "exceptional_embedding",
    "exceptional_embedding_sdxl",
    "sdxl_time_ids",
    "text_transformer",
]


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
    model, token_embedding = _checked_token_embedding(text_encoder, token_id)
    ids = torch.tensor([[token_id]], device=token_embedding.weight.device)
    with torch.no_grad():
        hidden = token_embedding(ids)  # (1, 1, D): no position_embedding on purpose
        # No mask: with one token there is nothing to mask, and the mask arguments differ across versions.
        hidden = model.encoder(inputs_embeds=hidden)[0]
        row = model.final_layer_norm(hidden)
    return row.expand(1, length, row.shape[-1]).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# SDXL (docs/algorithm.md §15)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Conditioning:
    """SDXL's conditioning of B rows: what the UNet takes as ``encoder_hidden_states`` and ``added_cond_kwargs``.

    ``hidden`` (B, L, D1 + D2): both encoders' penultimate hidden states, concatenated; ``pooled`` (B, P): the
    second encoder's pooled, projected embedding (``text_embeds``); ``time_ids`` (B, 6): original size (h, w),
    crop top-left (top, left), target size (h, w), or None (the engine then uses the working size of the latents
    it is given, crop (0, 0), as SDXL's pipeline does by default).

    Immutable; ``expand``, ``to`` and ``with_time_ids`` return new objects. ``shape`` is ``hidden``'s.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        b = self.hidden.shape[0]
        if self.hidden.ndim != 3 or self.pooled.ndim != 2 or self.pooled.shape[0] != b:
            raise ValueError(
                f"Conditioning needs hidden (B, L, D) and pooled (B, P), got {tuple(self.hidden.shape)} and "
                f"{tuple(self.pooled.shape)}"
            )
        if self.time_ids is not None and (self.time_ids.ndim != 2 or self.time_ids.shape != (b, 6)):
            raise ValueError(f"time_ids must be ({b}, 6), got {tuple(self.time_ids.shape)}")

    @property
    def shape(self) -> torch.Size:
        return self.hidden.shape

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    def expand(self, batch: int, *_ignored) -> "Conditioning":
        """``batch`` rows: a 1-row conditioning repeated (``expand(n, -1, -1)`` reads like a tensor's)."""
        if self.hidden.shape[0] == batch:
            return self
        if self.hidden.shape[0] != 1:
            raise ValueError(f"cannot expand a {self.hidden.shape[0]}-row conditioning to {batch} rows")
        ids = None if self.time_ids is None else self.time_ids.expand(batch, -1)
        return Conditioning(self.hidden.expand(batch, -1, -1), self.pooled.expand(batch, -1), ids)

    def to(self, device=None, dtype=None) -> "Conditioning":
        ids = None if self.time_ids is None else self.time_ids.to(device, dtype)
        return Conditioning(self.hidden.to(device, dtype), self.pooled.to(device, dtype), ids)

    def with_time_ids(self, time_ids: torch.Tensor | None) -> "Conditioning":
        """The same text conditioning with ``time_ids`` attached: (6,) or (1, 6) to every row, (B, 6) one per row
        (a 1-row conditioning is repeated to B rows)."""
        if time_ids is None:
            return replace(self, time_ids=None)
        ids = torch.as_tensor(time_ids, dtype=torch.float32).reshape(-1, 6).to(self.hidden.device)
        rows = self.hidden.shape[0]
        if ids.shape[0] == 1:
            return replace(self, time_ids=ids.expand(rows, -1))
        return replace(self.expand(ids.shape[0]), time_ids=ids)


def sdxl_time_ids(
    image_size: int | tuple[int, int],
    *,
    original_size: tuple[int, int] | None = None,
    crop: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """SDXL's six added time ids as a (1, 6) float32 tensor: original (h, w), crop (top, left), target (h, w).

    ``image_size`` is the target (working) size; ``original_size`` defaults to it and ``crop`` to (0, 0), which is
    what ``StableDiffusionXLPipeline`` passes by default.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    original = (height, width) if original_size is None else tuple(original_size)
    values = (*original, *tuple(crop), height, width)
    if len(values) != 6 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"time ids need (h, w) sizes and a (top, left) crop, got {values!r}")
    return torch.tensor([values], dtype=torch.float32)


def _sdxl_pairs(tokenizers, text_encoders):
    tokenizers, text_encoders = tuple(tokenizers), tuple(text_encoders)
    if len(tokenizers) != 2 or len(text_encoders) != 2:
        raise ValueError("SDXL needs two tokenizers and two text encoders")
    return tuple(zip(tokenizers, text_encoders))


def encode_prompt_sdxl(tokenizers, text_encoders, prompt: str, *, name: str = "prompt") -> Conditioning:
    """Encode ``prompt`` exactly as ``StableDiffusionXLPipeline.encode_prompt`` does (no clip skip), without truncation.

    For each (tokenizer, encoder): ids padded to the window, ``encoder(ids, output_hidden_states=True)``, and its
    penultimate hidden states ``hidden_states[-2]`` (no final layer norm); the two are concatenated along the
    width. The pooled embedding is the second encoder's ``text_embeds`` (``CLIPTextModelWithProjection``: final
    layer norm at the end-of-text position, then the projection).

    Returns:
        A :class:`Conditioning` with ``time_ids`` None, on the encoders' device, in their dtype.

    Raises:
        TypeError / ValueError: as :func:`encode_prompt` (not a string, longer than a window).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, got {type(prompt).__name__}")
    hidden, pooled = [], None
    for tokenizer, encoder in _sdxl_pairs(tokenizers, text_encoders):
        limit = int(tokenizer.model_max_length)
        n_tokens = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
        if n_tokens > limit:
            raise ValueError(_too_many_tokens(tokenizer, prompt, name, n_tokens, limit))
        ids = tokenizer(prompt, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = encoder(ids.input_ids.to(encoder.device), output_hidden_states=True)
        if out[0].ndim == 2:  # a CLIPTextModelWithProjection: text_embeds first
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    if pooled is None:
        raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection (no pooled embedding)")
    return Conditioning(torch.cat(hidden, dim=-1), pooled)


def _checked_token_embedding(text_encoder: nn.Module, token_id: int):
    """(the encoder's transformer, its token embedding), after checking that ``token_id`` is in the vocabulary."""
    model = text_transformer(text_encoder)
    token_embedding = model.embeddings.token_embedding
    vocab_size = token_embedding.num_embeddings
    if not 0 <= token_id < vocab_size:
        raise ValueError(
            f"token_id {token_id} is outside the text encoder's vocabulary (ids 0..{vocab_size - 1}); "
            "pass an id the encoder knows (SD uses 7788)."
        )
    return model, token_embedding


def _penultimate_and_last(text_encoder: nn.Module, token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One position-free row of ``token_id`` through every layer of the encoder: (the penultimate layer's output,
    the last layer's output after the final layer norm), each (1, 1, D)."""
    model, token_embedding = _checked_token_embedding(text_encoder, token_id)
    layers = model.encoder.layers
    if len(layers) < 2:
        raise ValueError("SDXL's penultimate hidden state needs a text encoder with at least 2 layers")
    seen = {}

    def keep(_module, _inputs, output):  # transformers 4.x returns a tuple, 5.x a tensor
        seen["penultimate"] = output[0] if isinstance(output, tuple) else output

    ids = torch.tensor([[token_id]], device=token_embedding.weight.device)
    handle = layers[-2].register_forward_hook(keep)
    try:
        with torch.no_grad():
            hidden = token_embedding(ids)  # (1, 1, D): no position_embedding on purpose
            last = model.encoder(inputs_embeds=hidden)[0]
            last = model.final_layer_norm(last)
    finally:
        handle.remove()
    return seen["penultimate"], last


def exceptional_embedding_sdxl(text_encoders, token_id: int = 7788, length: int = 77) -> Conditioning:
    """The exceptional prompt on SDXL (docs/algorithm.md §15.2): the SD 2.x rule in each encoder.

    In each encoder, ``length`` copies of ``token_id`` with no positional embedding and no start/end tokens,
    read out where SDXL reads a prompt: the penultimate layer's output (no final layer norm). The rows of each
    encoder are identical (identical position-free inputs, causal mask or not), so one row is computed and
    tiled; the two encoders' rows are concatenated along the width. The pooled embedding is the second
    encoder's pooling rule applied to the same sequence: final layer norm of the last layer's row at the pooled
    position (position 0: with no end-of-text token, both CLIP's ``argmax`` rule and transformers' "first
    end-of-text" rule pick it; every row is the same anyway), then ``text_projection``.

    Args:
        text_encoders: (``CLIPTextModel``, ``CLIPTextModelWithProjection``).
        token_id: 7788 (``rian</w>`` in CLIP's vocabulary, which both SDXL encoders share).
        length: the window (77).

    Returns:
        A :class:`Conditioning` (hidden (1, length, D1 + D2), pooled (1, P), no time ids).
    """
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        raise TypeError(f"token_id must be an int, got {type(token_id).__name__}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int (the tokenizer window, 77 for SD), got {length!r}")
    encoders = tuple(text_encoders)
    if len(encoders) != 2:
        raise ValueError("SDXL needs two text encoders")
    (first, _), (second, last) = (_penultimate_and_last(encoder, token_id) for encoder in encoders)
    rows = (first, second)
    projection = getattr(encoders[1], "text_projection", None)
    if projection is None:
        raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection (no text_projection)")
    with torch.no_grad():
        pooled = projection(last[:, 0])
    row = torch.cat(rows, dim=-1)
    return Conditioning(row.expand(1, length, row.shape[-1]).contiguous(), pooled)

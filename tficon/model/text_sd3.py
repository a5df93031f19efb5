"""Text conditioning of Stable Diffusion 3 / 3.5 (docs/algorithm.md §16): two CLIP encoders with projection, T5 optional.

A row's conditioning is a ``tficon.model.text.Conditioning`` with no time ids: ``hidden`` (1, 77 + T, D_joint), the
CLIP-L and CLIP-G penultimate hidden states concatenated along the width and zero-padded to the transformer's
``joint_attention_dim``, followed by T5's T rows; ``pooled`` (1, P_L + P_G), both CLIP encoders' pooled, projected
embeddings. Without a T5 encoder its rows are zeros, as ``StableDiffusion3Pipeline`` uses with ``text_encoder_3=None``.

The exceptional prompt e* is the SDXL rule in each CLIP encoder (``exceptional_embedding_sdxl``: the exceptional
token repeated, no positional embedding, read out at the penultimate layer), and both pooled embeddings from the same
position-free run. Its T5 rows are zeros whether a T5 encoder is loaded or not: a prompt that carries no information,
which is what e* stands for, and what the pipeline itself feeds the transformer when T5 is absent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tficon.model.text import Conditioning, _penultimate_and_last, _too_many_tokens

__all__ = ["SD3_T5_LENGTH", "encode_prompt_sd3", "exceptional_embedding_sd3"]

#: T5 rows per prompt (``StableDiffusion3Pipeline``'s default ``max_sequence_length``)
SD3_T5_LENGTH = 256


def _tokens(tokenizer, prompt: str, limit: int, name: str):
    n_tokens = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
    if n_tokens > limit:
        raise ValueError(_too_many_tokens(tokenizer, prompt, name, n_tokens, limit))
    return tokenizer(prompt, padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids


def _clip_and_t5(clip_hidden: torch.Tensor, t5_hidden: torch.Tensor) -> torch.Tensor:
    """CLIP rows zero-padded to the joint width, then the T5 rows (the pipeline's layout)."""
    width = t5_hidden.shape[-1]
    if clip_hidden.shape[-1] > width:
        raise ValueError(
            f"the CLIP encoders' widths add up to {clip_hidden.shape[-1]}, more than the transformer's "
            f"joint_attention_dim {width}"
        )
    return torch.cat([F.pad(clip_hidden, (0, width - clip_hidden.shape[-1])), t5_hidden.to(clip_hidden)], dim=-2)


def _t5_rows(t5_encoder, t5_tokenizer, prompt: str | None, length: int, width: int, like: torch.Tensor, name: str):
    """T5's rows of ``prompt``; zeros without a T5 encoder, and for the exceptional prompt (``prompt`` None)."""
    if t5_encoder is None or prompt is None:
        return torch.zeros(1, length, width, dtype=like.dtype, device=like.device)
    ids = _tokens(t5_tokenizer, prompt, length, name)
    with torch.no_grad():
        return t5_encoder(ids.to(t5_encoder.device))[0]


def encode_prompt_sd3(
    tokenizers, text_encoders, prompt: str, *, joint_width: int, t5_length: int = SD3_T5_LENGTH, name: str = "prompt"
) -> Conditioning:
    """Encode ``prompt`` as ``StableDiffusion3Pipeline.encode_prompt`` does (no clip skip), without truncation.

    Args:
        tokenizers: (CLIP-L's, CLIP-G's, T5's or None).
        text_encoders: (CLIP-L, CLIP-G: ``CLIPTextModelWithProjection``s; T5 or None).
        joint_width: the transformer's ``joint_attention_dim`` (4096 for SD3).
        t5_length: T5 rows (256, the pipeline's default).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, got {type(prompt).__name__}")
    (tok_l, tok_g, tok_t5), (enc_l, enc_g, enc_t5) = tuple(tokenizers), tuple(text_encoders)
    hidden, pooled = [], []
    for tokenizer, encoder in ((tok_l, enc_l), (tok_g, enc_g)):
        ids = _tokens(tokenizer, prompt, int(tokenizer.model_max_length), name)
        with torch.no_grad():
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
        if out[0].ndim != 2:
            raise ValueError("SD3's CLIP text encoders must be CLIPTextModelWithProjection (no pooled embedding)")
        pooled.append(out[0])
        hidden.append(out.hidden_states[-2])
    clip = torch.cat(hidden, dim=-1)
    t5 = _t5_rows(enc_t5, tok_t5, prompt, t5_length, joint_width, clip, name)
    return Conditioning(_clip_and_t5(clip, t5), torch.cat(pooled, dim=-1))


def exceptional_embedding_sd3(
    text_encoders, token_id: int, length: int, *, joint_width: int, t5_length: int = SD3_T5_LENGTH
) -> Conditioning:
    """TF-ICON's exceptional prompt on SD3 (module docstring): per CLIP encoder, ``length`` copies of the
    penultimate layer's row of ``token_id`` run with no position; pooled: each encoder's final layer norm of the
    last layer's row, projected; T5 rows: zeros."""
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        raise TypeError(f"token_id must be an int, got {type(token_id).__name__}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int (the CLIP window, 77), got {length!r}")
    rows, pooled = [], []
    for encoder in tuple(text_encoders)[:2]:
        penultimate, last = _penultimate_and_last(encoder, token_id)
        projection = getattr(encoder, "text_projection", None)
        if projection is None:
            raise ValueError("SD3's CLIP text encoders must be CLIPTextModelWithProjection (no text_projection)")
        with torch.no_grad():
            pooled.append(projection(last[:, 0]))
        rows.append(penultimate)
    row = torch.cat(rows, dim=-1)
    clip = row.expand(1, length, row.shape[-1]).contiguous()
    t5 = torch.zeros(1, t5_length, joint_width, dtype=clip.dtype, device=clip.device)
    return Conditioning(_clip_and_t5(clip, t5), torch.cat(pooled, dim=-1))

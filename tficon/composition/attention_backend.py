"""Which attention kernel the composition's processors call: PyTorch's ``scaled_dot_product_attention`` by default, or
one of diffusers' attention backends (``diffusers.models.attention_dispatch``: native, cuDNN, flash, sage, xformers
where installed), chosen per Session (``Session(..., attention_backend="flash")``).

Every self-attention the processors compute (plain rows, the pseudo-cross pass, the fused composite, the TIGIC mix,
SD3's joint attention) goes through one function of this form (the region-constrained cross-attention keeps
PyTorch's SDPA: it needs a boolean mask, which not every backend takes)::

    attend(query, key, value, *, attn_mask=None, scale=None) -> output

on (batch, heads, tokens, head_dim) tensors, the layout of PyTorch's SDPA. The default is that call itself, so
results are bitwise those of the stock processors; a diffusers backend gets the tensors in its own (batch, tokens,
heads, head_dim) layout and hands the output back transposed. Backends differ in how they round: their results agree
with the default to float tolerance (tests on the CPU's native backend; a GPU run checks the others where installed).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

__all__ = ["Attend", "attention_function", "backend_names", "sdpa"]


class Attend(Protocol):
    def __call__(self, query, key, value, *, attn_mask=None, scale=None) -> torch.Tensor: ...


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, attn_mask=None, scale=None) -> torch.Tensor:
    """PyTorch's fused attention, as diffusers' stock processors call it (the default)."""
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False,
                                          scale=scale)  # fmt: skip


def backend_names() -> tuple[str, ...]:
    """The names diffusers' attention dispatcher knows (whether each runs here depends on what is installed)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return tuple(member.value for member in AttentionBackendName)


def attention_function(backend: str | None) -> Callable:
    """The ``attend`` function of ``backend``: None is :func:`sdpa`; a name goes through diffusers'
    ``dispatch_attention_fn`` with that backend. An unknown name raises ValueError listing the known ones."""
    if backend is None:
        return sdpa
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    if not isinstance(backend, str) or backend not in backend_names():
        raise ValueError(
            f"attention_backend must be None (PyTorch's SDPA) or one of diffusers' attention backends "
            f"{', '.join(backend_names())}; got {backend!r}"
        )
    name = AttentionBackendName(backend)

    def dispatched(query, key, value, *, attn_mask=None, scale=None):
        out = dispatch_attention_fn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                    attn_mask=attn_mask, scale=scale, backend=name)  # fmt: skip
        return out.transpose(1, 2)

    dispatched.backend = backend
    return dispatched

"""The attention kernel is a per-Session choice (tficon.composition.attention_backend): the default is PyTorch's SDPA,
bitwise the stock processors; diffusers' dispatcher backends agree with it to float tolerance."""

from __future__ import annotations

import pytest
import torch

from tficon.composition.attention_backend import attention_function, backend_names, sdpa
from tficon.composition.session import Session
from tficon.model import load_model
from tficon.toy.samples import toy_sample


@pytest.fixture(scope="module")
def toy():
    return load_model("toy"), toy_sample()


def _session(toy, **options):
    model, sample = toy
    return Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
                   steps=8, tau_b=1.0, **options)  # fmt: skip


def test_dispatched_native_attention_equals_sdpa_on_every_layout():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 40, 16).unbind(0)
    mask = torch.rand(2, 1, 40, 40) > 0.3
    native = attention_function("native")
    for options in ({}, {"scale": 0.3}, {"attn_mask": mask}):
        torch.testing.assert_close(native(q, k, v, **options), sdpa(q, k, v, **options), rtol=1e-5, atol=1e-6)
    math_kernel = attention_function("_native_math")
    torch.testing.assert_close(math_kernel(q, k, v, scale=0.3), sdpa(q, k, v, scale=0.3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_a_composition_with_a_dispatcher_backend_agrees_with_the_default(toy, backend):
    default = _session(toy).run().records
    other = _session(toy, attention_backend=backend).run().records
    assert any(r.plan.fg for r in default) and any(r.plan.bg for r in default)  # both injections exercised
    for a, b in zip(default, other):
        torch.testing.assert_close(b.generation.x, a.generation.x, rtol=1e-4, atol=1e-4)


def test_the_default_backend_is_the_stock_sdpa_call(toy):
    session = _session(toy)
    assert session.attention_backend is None and session._ensure_controller().attend is sdpa


def test_an_unknown_backend_is_refused_by_name(toy):
    with pytest.raises(ValueError, match="attention_backend must be None .* flash"):
        _session(toy, attention_backend="fastest")
    assert "native" in backend_names() and "xformers" in backend_names()


def test_sd3s_joint_attention_takes_the_backend_too():
    from tficon.model.tiny_sd3 import tiny_sd3_model

    model, sample = tiny_sd3_model(), toy_sample()

    def final(**options):
        session = Session(model, sample.background, sample.foreground, sample.foreground_mask, sample.box,
                          sample.prompt, steps=6, **options)  # fmt: skip
        return session.run().records[-1].generation.x

    torch.testing.assert_close(final(attention_backend="native"), final(), rtol=1e-4, atol=1e-4)

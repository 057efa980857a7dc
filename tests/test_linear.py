"""Tests of gpt_ds.linear: which kernel a product runs on, that its values are F.linear's, and that a model
decodes the same tokens with either."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from app_fixtures import MODERN_TINY_CONFIG
from torch.profiler import profile

import gpt_ds.linear as linear_module
from gpt_ds.generate import Sampling, generate
from gpt_ds.linear import Linear, aten_only, linear, onednn_available
from gpt_ds.model import GPT, config_from_preset

ONEDNN_OP = "mkldnn::_linear_pointwise"


def ran_onednn(fn, *args) -> bool:
    """Whether fn(*args) ran oneDNN's linear kernel (read from torch's profiler)."""
    with profile() as prof:
        fn(*args)
    return any(event.name == ONEDNN_OP for event in prof.events())


def cases() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    torch.manual_seed(0)
    w, b = torch.randn(40, 24), torch.randn(40)
    h = torch.randn(3, 7, 24)
    return [(h, w, b), (h, w, None), (h[:, -1], w, b), (h.transpose(0, 1), w, b), (h[0, 0], w, b),
            (h, torch.randn(24, 40).t(), None)]


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear kernel")
def test_without_autograd_a_float32_cpu_product_runs_on_onednn_with_f_linears_values():
    for x, w, b in cases():
        with torch.no_grad():
            assert ran_onednn(linear, x, w, b)
            torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        with torch.inference_mode():
            assert ran_onednn(linear, x, w, b)


def test_training_bfloat16_and_aten_only_keep_f_linear_exactly():
    x, w, b = cases()[0]
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    assert not ran_onednn(linear, xg, wg, b)
    out = linear(xg, wg, b)
    assert torch.equal(out, F.linear(x, w, b))
    out.sum().backward()
    assert wg.grad is not None and xg.grad is not None
    with torch.no_grad():
        x16, w16, b16 = x.bfloat16(), w.bfloat16(), b.bfloat16()
        assert not ran_onednn(linear, x16, w16, b16)
        assert torch.equal(linear(x16, w16, b16), F.linear(x16, w16, b16))
        with aten_only():
            assert not ran_onednn(linear, x, w, b)
            assert torch.equal(linear(x, w, b), F.linear(x, w, b))
        assert linear(x[:, :0], w, b).shape == (3, 0, 40)


def test_aten_only_restores_the_choice_even_after_an_error():
    before = onednn_available()
    with pytest.raises(RuntimeError, match="inside"):
        with aten_only():
            assert not onednn_available()
            raise RuntimeError("inside")
    assert onednn_available() == before


def test_a_torch_without_the_kernel_falls_back_to_f_linear(monkeypatch):
    """The kernel is a private torch operator: when calling it fails, the probe says so once and every product
    is F.linear's."""

    def missing(*args):
        raise RuntimeError("No such operator mkldnn::_linear_pointwise")

    monkeypatch.setattr(linear_module, "_onednn", missing)
    monkeypatch.setattr(linear_module, "_enabled", None)
    assert not onednn_available()
    x, w, b = cases()[0]
    with torch.no_grad():
        assert torch.equal(linear(x, w, b), F.linear(x, w, b))


def test_linear_is_an_nn_linear_with_its_names():
    layer = Linear(8, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 8)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("config", [None, MODERN_TINY_CONFIG])
def test_a_model_decodes_the_same_tokens_on_either_kernel(config):
    """GPT-2 and the modern recipe (untied, soft-capped head): logits within float32 rounding of F.linear's,
    the same greedy tokens, and the decoding steps on oneDNN."""
    torch.manual_seed(3)
    config = config or config_from_preset("tiny")
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (2, 24))
    with torch.no_grad():
        logits, _ = model(idx)
        with aten_only():
            reference, _ = model(idx)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    sampling = Sampling(16, temperature=0, stop_token=None)
    with aten_only():
        tokens = generate(model, [idx[0].tolist()], sampling)[0]
    assert generate(model, [idx[0].tolist()], sampling)[0] == tokens
    if onednn_available():
        assert ran_onednn(generate, model, [idx[0].tolist()], Sampling(2, temperature=0))


def test_the_probe_leaves_the_global_random_stream_alone(monkeypatch):
    monkeypatch.setattr(linear_module, "_enabled", None)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    onednn_available()
    assert torch.equal(torch.rand(3), expected)

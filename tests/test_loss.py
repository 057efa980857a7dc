"""gpt_ds.loss.chunked_cross_entropy and chunked_token_losses against the plain head + F.cross_entropy."""

import pytest
import torch
import torch.nn.functional as F

from gpt_ds.loss import _ChunkedLinearCrossEntropy, chunked_cross_entropy, chunked_token_losses

N, C, V, PADDED = 37, 16, 90, 128


def plain(h, w, t, softcap=None, ignore_index=-100):
    logits = F.linear(h, w)[:, :V].float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, t, ignore_index=ignore_index)


def inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g).to(dtype).requires_grad_()
    w = torch.randn(PADDED, C, generator=g).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    t[::5] = -100  # some ignored rows
    return h, w, t


def loss_and_grads(fn, h, w, t, **kw):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = fn(h, w, t, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_rows", [1, 8, 10, 37, 64])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_matches_plain_in_float32(chunk_rows, softcap):
    h, w, t = inputs()
    with torch.no_grad():
        w[V:] = 1e4  # padded rows must never enter the softmax
    want = loss_and_grads(plain, h, w, t, softcap=softcap)
    got = loss_and_grads(lambda *a, **k: chunked_cross_entropy(*a, vocab_size=V, chunk_rows=chunk_rows, **k),
                         h, w, t, softcap=softcap)
    assert got[0].dtype == torch.float32
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.all(got[2][V:] == 0)  # the padded rows get no gradient


def test_ignore_index_and_scaled_backward():
    h, w, t = inputs()
    t2 = t.clone()
    t2[t2 == -100] = -1
    h1 = h.detach().clone().requires_grad_()
    (3.0 * chunked_cross_entropy(h1, w, t2, vocab_size=V, ignore_index=-1, chunk_rows=7)).backward()
    h2 = h.detach().clone().requires_grad_()
    (3.0 * plain(h2, w, t2, ignore_index=-1)).backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_close_in_bfloat16_weights_and_autocast(softcap):
    h, w, t = inputs(torch.bfloat16)
    want = loss_and_grads(plain, h.float(), w.float(), t, softcap=softcap)
    got = loss_and_grads(lambda *a, **k: chunked_cross_entropy(*a, vocab_size=V, chunk_rows=10, **k),
                         h, w, t, softcap=softcap)
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0], rtol=2e-2, atol=2e-2)
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=2e-3)
    # fp32 tensors under bf16 autocast: bf16 matmuls, float32 loss, fp32 gradients
    hf, wf = h.float(), w.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads(lambda *a, **k: chunked_cross_entropy(*a, vocab_size=V, chunk_rows=10, **k),
                             hf, wf, t, softcap=softcap)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=2e-2, atol=2e-2)
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=2e-3)


def test_no_grad_path_and_all_ignored():
    h, w, t = inputs()
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(h, w, t, vocab_size=V), plain(h, w, t))
    assert torch.isnan(chunked_cross_entropy(h, w, torch.full((N,), -100), vocab_size=V))  # as F.cross_entropy


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_token_losses_are_the_rows_of_the_mean(softcap):
    h, w, t = inputs()
    logits = F.linear(h, w)[:, :V].float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    want = F.cross_entropy(logits, t, reduction="none")  # 0 where ignored, as ours
    got = chunked_token_losses(h, w, t, vocab_size=V, softcap=softcap, chunk_rows=8)
    assert got.shape == (N,) and got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        mean = chunked_cross_entropy(h, w, t, vocab_size=V, softcap=softcap, chunk_rows=8)
    torch.testing.assert_close(got.sum() / (t != -100).sum(), mean)


def test_saves_nothing_of_size_n_by_v_and_peaks_lower():
    """The Function keeps only the gradients (N x C and padded V x C); every tensor it allocates
    while computing lives at most chunk_rows x V, where the plain loss holds several N x V."""
    n, c, v = 512, 8, 1000
    h = torch.randn(n, c, requires_grad=True)
    w = torch.randn(v, c, requires_grad=True)
    t = torch.randint(0, v, (n,))
    saved = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = chunked_cross_entropy(h, w, t, vocab_size=v, chunk_rows=64)
    assert max(saved) <= max(n * c, v * c) < n * v
    assert isinstance(loss.grad_fn, _ChunkedLinearCrossEntropy._backward_cls)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        plain_loss = F.cross_entropy(F.linear(h, w).float(), t)
    assert max(saved) >= n * v  # the plain path keeps N x V logits for its backward
    # Largest tensor created during the chunked forward: hook the allocator-free way, via dispatch.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor):
                    Largest.biggest = max(Largest.biggest, o.numel())
            return out

    with Largest():
        chunked_cross_entropy(h, w, t, vocab_size=v, chunk_rows=64).backward()
    assert Largest.biggest <= 64 * v < n * v
    torch.testing.assert_close(loss, plain_loss)


def test_a_device_failure_inside_the_compiled_pass_is_raised_not_a_reason_to_go_eager():
    """torch.compile failing is a reason to run the same math eagerly; the device running out of memory in the
    compiled kernel is not (eager needs more memory): it reaches the loop's one-line message, compiled stays on."""
    from gpt_ds.loss import _Fused

    calls = []

    def out_of_memory(x):
        calls.append(x)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    fused = _Fused(out_of_memory)
    fused.compiled = out_of_memory  # the compiled function, as torch.compile would have returned it
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fused(torch.ones(2))
    assert fused.enabled and len(calls) == 1  # not retried eagerly, still compiled for the next call

    def compiler_failure(x):
        raise RuntimeError("inductor: no C++ compiler")

    fused = _Fused(lambda x: x * 2)
    fused.compiled = compiler_failure
    with pytest.warns(UserWarning, match="runs eagerly"):
        assert fused(torch.ones(2)).tolist() == [2.0, 2.0]
    assert not fused.enabled


@pytest.mark.parametrize("per_token", [False, True])
def test_every_product_has_whole_tile_shapes_for_the_gpt2_vocabulary(per_token):
    """The matmuls take the padded matrix (50304 rows) and chunks of a multiple of 64 rows: a (rows, 50257)
    product is not 16-byte aligned, and on an H200 cuBLAS then ran pre-Hopper kernels (gpt2's eager step
    1.6x slower). The CPU cannot show the speed; it can show the shapes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    vocab, padded = 50257, 50304
    h = torch.randn(1300, 64, dtype=torch.bfloat16, requires_grad=not per_token)
    w = torch.randn(padded, 64, dtype=torch.bfloat16, requires_grad=not per_token)
    t = torch.randint(0, vocab, (1300,))
    shapes = []

    class Products(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.mm.out):
                shapes.append((tuple(args[0].shape), tuple(args[1].shape)))
            return func(*args, **(kwargs or {}))

    with Products():
        if per_token:
            chunked_token_losses(h, w, t, vocab_size=vocab)
        else:
            chunked_cross_entropy(h, w, t, vocab_size=vocab).backward()
    assert shapes and all(vocab not in a + b for a, b in shapes), shapes
    # 1300 rows: two chunks of 640 and the last 20; every other dimension a multiple of 64
    assert {a[0] for a, _ in shapes if a[1] == 64} <= {640, 20}
    assert all(d % 64 == 0 or d == 20 for a, b in shapes for d in a + b), shapes


def test_a_divisor_replaces_the_count_of_trained_targets():
    """The fine-tune's loss: the sum over the targets not ignored, over the global batch's trained tokens."""
    h, w, t = inputs()
    count = int((t != -100).sum())
    mean, h_grad, w_grad = loss_and_grads(lambda *a, **k: chunked_cross_entropy(*a, vocab_size=V, chunk_rows=8, **k),
                                          h, w, t)
    got, got_h, got_w = loss_and_grads(lambda *a, **k: chunked_cross_entropy(*a, vocab_size=V, chunk_rows=8, **k),
                                       h, w, t, divisor=100.0)
    torch.testing.assert_close(got, mean * count / 100)
    torch.testing.assert_close(got_h, h_grad * count / 100)
    torch.testing.assert_close(got_w, w_grad * count / 100)
    with pytest.raises(ValueError, match="divisor must be positive"):
        chunked_cross_entropy(h, w, t, vocab_size=V, divisor=0.0)

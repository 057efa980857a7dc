"""The output head and its cross-entropy in one pass over row chunks, never holding N x V logits.

`chunked_cross_entropy(hidden, weight, targets, vocab_size=V)` is the mean cross-entropy of the
logits `hidden @ weight[:V].T` (weight may have padded rows beyond V; they are never scored). The
product is taken with all of weight's rows and the padded columns are masked: a (rows, 50257) output
has rows that are not 16-byte aligned, and on an H200 cuBLAS then falls back to pre-Hopper kernels
(gpt2's eager training step ran 1.6x slower that way, bench/gpu_check.py). The
plain way materialises the (N, V) logits, a float32 copy for the log-softmax, and in the backward
the (N, V) gradient of the logits: with GPT-2's 50k vocabulary that is most of a small model's
activation memory and memory traffic (small: 4096 rows x 50304 x 4 bytes = 0.8 GB, three times).

Here a custom autograd Function takes the rows a chunk at a time (the Liger-kernel / "fused linear
cross entropy" idea): the chunk's logits in the input's dtype (bf16 under autocast or with bf16
weights), their float32 log-softmax statistics, the loss, and right away the gradient of the logits,
which is turned into the chunk's gradients w.r.t. hidden and weight (accumulated in float32) and
dropped. The backward only scales the stored gradients by the incoming gradient, so the forward
does all the head's work, and nothing of size N x V outlives a chunk.

The loss is always float32. `softcap` (Gemma-2 style) maps logits to softcap * tanh(logits / softcap)
before the softmax, in the forward and in the gradient (computed through a sigmoid, see _capped). Targets equal to `ignore_index` do not count;
the mean is over the others (all ignored: nan, as F.cross_entropy). `divisor` replaces their count: a fine-tune
divides each micro-batch's sum by the trained tokens of the whole global batch, so that the gradient is the
same for any world size and accumulation.

`chunked_token_losses` gives each row's loss instead of their mean (evaluation only, no gradient): what
the validation needs for the loss and bits per byte in one pass.
"""

from __future__ import annotations

import os
import warnings

import torch

from gpt_ds.cache import use_compile_cache

IGNORE_INDEX = -100  # a target that no loss counts (torch's F.cross_entropy default too)

# Rows per chunk: 2**25 / 50257 -> 667 rows, whose float32 log-probabilities take 134 MB (small's whole
# batch of 4096 rows held 824 MB of float32 logits, plus a bf16 copy and the gradient). Each chunk also
# adds a V x C product into the weight gradient, so chunks of a few hundred rows or fewer cost more on the
# CPU (measured for tiny/small in bf16: 256 rows ~20% slower than 1024; 512..2048 alike). A multiple of
# 64 rows (667 -> 640) keeps every chunk's matmuls on whole tiles.
DEFAULT_CHUNK_ELEMENTS = 2**25
CHUNK_ROW_MULTIPLE = 64


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: a multiple of 64 whose logits hold about DEFAULT_CHUNK_ELEMENTS numbers."""
    rows = DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size)
    return max(CHUNK_ROW_MULTIPLE, rows // CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, vocab_size: int,
                          softcap: float | None = None, ignore_index: int = IGNORE_INDEX,
                          chunk_rows: int | None = None, divisor: float | torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy (float32 scalar) of `hidden (N, C) @ weight[:vocab_size].T` against targets (N,);
    with `divisor` (a number, or a 0-dim tensor: no recompile when it changes under torch.compile), their sum
    over the targets not ignored divided by it."""
    rows, compute_dtype = _checked(hidden, weight, targets, vocab_size, softcap, chunk_rows)
    if isinstance(divisor, (int, float)) and not divisor > 0:
        raise ValueError(f"divisor must be positive, got {divisor!r}")
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, vocab_size, softcap, ignore_index, rows,
                                            compute_dtype, with_grad, divisor)


@torch.no_grad()
def chunked_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, vocab_size: int,
                         softcap: float | None = None, ignore_index: int = IGNORE_INDEX,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """Each row's cross-entropy (float32, (N,); 0 where the target is ignore_index), computed as
    chunked_cross_entropy computes its mean: evaluation only, no gradient."""
    rows, compute_dtype = _checked(hidden, weight, targets, vocab_size, softcap, chunk_rows)
    with torch.autocast(hidden.device.type, enabled=False):
        valid = targets != ignore_index
        return _token_losses(hidden.to(compute_dtype), weight.to(compute_dtype), vocab_size,
                             torch.where(valid, targets, torch.zeros_like(targets)), valid, softcap, rows)


def _checked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
             softcap: float | None, chunk_rows: int | None) -> tuple[int, torch.dtype]:
    """The rows per chunk and the dtype of the logits, once the arguments are checked."""
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.size(0) != targets.size(0):
        raise ValueError(f"hidden must be (N, C) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if not 0 < vocab_size <= weight.size(0) or weight.size(1) != hidden.size(1):
        raise ValueError(f"weight {tuple(weight.shape)} does not fit hidden {tuple(hidden.shape)} / vocab_size {vocab_size}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive or None, got {softcap!r}")
    rows = default_chunk_rows(vocab_size) if chunk_rows is None else int(chunk_rows)
    if rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows!r}")
    device_type = hidden.device.type
    compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                     else hidden.dtype)
    return rows, compute_dtype


def _token_losses(h: torch.Tensor, w: torch.Tensor, vocab_size: int, safe_targets: torch.Tensor,
                  valid: torch.Tensor, softcap: float | None, rows: int) -> torch.Tensor:
    """The rows' float32 losses, 0 where not valid, a chunk of rows at a time (h, w in the compute dtype;
    w's rows beyond vocab_size are padding)."""
    losses = torch.empty(h.size(0), dtype=torch.float32, device=h.device)
    for start in range(0, h.size(0), rows):
        end = min(start + rows, h.size(0))
        losses[start:end] = torch.where(valid[start:end], row_loss(h[start:end] @ w.t(), safe_targets[start:end],
                                                                   softcap, vocab_size), 0.0)
    return losses


# Up to this cap, exp(capped logit - cap) >= exp(-2 cap) is a normal float32, so the cap itself can stand for the
# row's maximum in the softmax (softcap 15 for the modern recipe; a larger one takes the row's maximum).
MAX_CAP_AS_TOP = 40.0


def _real_logits(logits: torch.Tensor, softcap: float | None, vocab_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor | None]:
    """float32 logits, soft-capped, with the padded columns (>= vocab_size) at -inf; what the softmax subtracts
    before exp (the row's maximum, or the cap, which no capped logit exceeds: one pass over the row fewer);
    and d capped / d logits (None without a cap).

    softcap * tanh(x / softcap) is computed as softcap * (2 sigmoid(2x / softcap) - 1), the same function:
    the compiled loop evaluates one sigmoid per element, where a tanh kept for the derivative 1 - tanh^2 =
    4 s (1 - s) took a float32 buffer of the chunk's size (modern-tiny's loss 1.6x faster, bench/recipe_step.py)."""
    x = logits.float()
    slope = None
    if softcap is not None:
        x, s = _capped(x, softcap)
        slope = 4.0 * s * (1.0 - s)
    padded = torch.arange(x.size(1), device=x.device) >= vocab_size
    x = x.masked_fill(padded, float("-inf"))
    top = softcap if softcap is not None and softcap <= MAX_CAP_AS_TOP else x.amax(dim=1, keepdim=True)
    return x, top, slope


def _capped(x: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softcap * tanh(x / softcap), as softcap * (2 sigmoid(2x / softcap) - 1), and that sigmoid (float32 x)."""
    s = torch.sigmoid(x * (2.0 / softcap))
    return softcap * (2.0 * s - 1.0), s


def _head_gradient(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None, vocab_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """d loss_row / d logits (in the logits' dtype; 0 in the padded columns) and the rows' float32
    losses, for logits (rows, padded V).

    softmax - onehot(target), times the softcap's slope; every intermediate is float32 (the target's
    p - 1 too, which bf16 would lose when p is close to 1)."""
    x, top, slope = _real_logits(logits, softcap, vocab_size)
    e = torch.exp(x - top)
    total = e.sum(dim=1, keepdim=True)
    if slope is not None:
        # The compiled loop keeps each logit's sigmoid (a float32 chunk) for the slope; taking the exp again from
        # it is faster than keeping the exps too (a second chunk-sized buffer: modern-tiny's loss 1.2x slower).
        # Written as x + (-top), the same number as x - top, so that common-subexpression elimination leaves it.
        e = torch.exp(x + (-top))
    onehot = torch.arange(x.size(1), device=x.device) == targets.unsqueeze(1)
    grad = e / total - onehot.float()
    if slope is not None:
        grad = grad * slope
    row_loss = (top + total.log()).squeeze(1) - _target_logits(logits, targets, softcap)
    return grad.to(logits.dtype), row_loss


def _row_loss(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None, vocab_size: int
              ) -> torch.Tensor:
    """The rows' float32 losses alone (no gradient wanted: evaluation)."""
    x, top, _ = _real_logits(logits, softcap, vocab_size)
    lse = torch.logsumexp(x, dim=1) if isinstance(top, torch.Tensor) else top + torch.exp(x - top).sum(dim=1).log()
    return lse - _target_logits(logits, targets, softcap)


def _target_logits(logits: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Each row's float32 (capped) logit at its target, taken from the raw logits: gathering from the capped
    (rows, V) float32 tensor made the compiled loop write that whole tensor to memory for the one element."""
    x = logits.gather(1, targets.unsqueeze(1)).squeeze(1).float()
    return x if softcap is None else _capped(x, softcap)[0]


# failures of the device, not of the compiler: never a reason to fall back to the eager path
_DEVICE_ERRORS = (torch.cuda.OutOfMemoryError,) + ((torch.AcceleratorError,) if hasattr(torch, "AcceleratorError") else ())


class _Fused:
    """`fn` compiled by torch.compile (inductor), which fuses its passes over the (rows, V) chunk into
    one or two loops: about 2.3x faster than eager on the CPU for GPT-2's vocabulary (bench/profile_step.py;
    the compile takes ~3 s once per process, ~1.5 s from the on-disk cache, gpt_ds.cache). Where compiling is not
    possible (no C++ compiler, GPT_DS_COMPILE_LOSS=0), the same function runs eagerly."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.compiled = None
        self.enabled = os.environ.get("GPT_DS_COMPILE_LOSS", "1") != "0"

    def __call__(self, *args):
        if self.enabled:
            try:
                if self.compiled is None:
                    use_compile_cache()
                    self.compiled = torch.compile(self.fn, dynamic=True)
                return self.compiled(*args)
            except _DEVICE_ERRORS:
                raise  # the device's own failure (out of memory, a CUDA fault): eager would fail the same, or worse
            except Exception as err:  # noqa: BLE001 - any compiler failure: the eager path is the same math
                self.enabled = False
                warnings.warn(f"gpt_ds.loss: torch.compile is not available here ({type(err).__name__}); "
                              "the head's cross-entropy runs eagerly (slower, same results)")
        return self.fn(*args)


head_gradient = _Fused(_head_gradient)
row_loss = _Fused(_row_loss)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size, softcap, ignore_index, rows, compute_dtype, with_grad,
                divisor):
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(compute_dtype)
            w = weight.to(compute_dtype)  # all rows, padding too (aligned); the same tensor when the dtype matches
            n = h.size(0)
            valid = targets != ignore_index
            safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
            count = (valid.sum().to(torch.float32) if divisor is None
                     else torch.as_tensor(divisor, dtype=torch.float32, device=h.device))
            if not with_grad:  # evaluation: the rows' losses alone, no backward to prepare
                return _token_losses(h, w, vocab_size, safe_targets, valid, softcap, rows).sum() / count
            loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
            grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=h.device)
            # float32 accumulators: bf16/fp16 sums over chunks would lose digits, and fp16 gradients
            # of size ~p/N would underflow before the backward's loss scale reached them.
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
            for start in range(0, n, rows):
                end = min(start + rows, n)
                h_c, tgt, keep = h[start:end], safe_targets[start:end], valid[start:end]
                logits = h_c @ w.t()  # (rows, padded V) in the compute dtype
                grad, losses = head_gradient(logits, tgt, softcap, vocab_size)
                del logits
                loss_sum += torch.where(keep, losses, 0.0).sum()
                # ignored rows are zeroed through their rows of hidden (for the weight) and of the hidden
                # gradient, not with a pass over V
                keep_f = keep.unsqueeze(1).to(compute_dtype)
                torch.mul(grad @ w, keep_f, out=grad_h[start:end])
                grad_w.add_(grad.t() @ (h_c * keep_f))  # the padded rows' gradient is 0
            loss = loss_sum / count
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_output.to(torch.float32) / count
        hidden_dtype, weight_dtype = ctx.dtypes
        d_hidden = (grad_h * scale).to(hidden_dtype) if ctx.needs_input_grad[0] else None
        d_weight = (grad_w * scale).to(weight_dtype) if ctx.needs_input_grad[1] else None
        return d_hidden, d_weight, None, None, None, None, None, None, None, None

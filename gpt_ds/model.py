"""The GPT model: the GPT-2 decoder-only transformer of a GPTConfig (gpt_ds.model_config, whose
GPTConfig, PRESETS and config_from_preset are importable from here too).

This is the real GPT-2 architecture (so a 124M run compares with GPT-2, nanoGPT and llm.c):
token + learned position embeddings, pre-LayerNorm blocks of causal multi-head self-attention and a
4x GELU MLP, a final LayerNorm, and an output head tied to the token embedding. Parameter names
follow GPT-2 (`transformer.wte`, `transformer.h.N.attn.c_attn`, ...) so checkpoints map 1:1 onto
Hugging Face's GPT2LMHeadModel (see gpt_ds/hf.py).

The architecture beyond GPT-2 is opt-in, field by field of GPTConfig (defaults: GPT-2), and
together as MODERN_RECIPE / the `modern-*` presets: rotary position embeddings on q and k instead of
wpe (pos_embedding="rope"), RMS-normalised queries and keys (qk_norm), a ReLU^2 MLP (mlp="relu2"),
zero-initialised residual projections (zero_init_proj), an untied output head `lm_head.weight`
(tie_head=False) and soft-capped logits (logit_softcap), as modded-nanogpt trains its GPT-2 speedruns.
A GPT-2 config serialises exactly as before these fields existed (see GPTConfig.to_dict).

It also holds what training needs around the model (optimizer parameter groups, activation
checkpointing, FLOPs per token for MFU) and the per-layer key/value
cache that gpt_ds/generate.py uses for incremental decoding. Nothing here knows about DeepSpeed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gpt_ds.linear import Linear, linear
from gpt_ds.loss import IGNORE_INDEX, chunked_cross_entropy, chunked_token_losses
from gpt_ds.model_config import (  # noqa: F401 (GPT2_RECIPE, MODERN_RECIPE, PRESETS, config_from_preset: the model's names too)
    GPT2_RECIPE,
    MODERN_RECIPE,
    PRESETS,
    GPTConfig,
    config_from_preset,
)

INIT_STD = 0.02  # GPT-2's initialisation scale


class LayerKV:
    """One layer's keys and values for incremental decoding, preallocated for the whole context.

    `KVCache.length` (shared by all layers) says how many positions are filled.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype) -> None:
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)


class KVCache:
    """Keys and values of every layer for the tokens seen so far (batch, head, position, head_dim).

    Keys are stored as attention uses them (after QK-norm and the rotary rotation at their absolute
    position). A cache is valid only while the sequence fits in the context: once the window slides,
    learned positions all shift, and with rotary positions the kept tokens' cached keys and values
    (from layer 1 on) still reflect the dropped tokens they attended to; either way the window is
    recomputed (generate.py).
    """

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch_size, config.n_head, config.block_size, config.head_dim)
        self.layers = [LayerKV(shape, device, dtype) for _ in range(config.n_layer)]
        self.capacity = config.block_size
        self.length = 0


def rotary_cos_sin(
    start: int, length: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim / 2) of the rotary angles of positions start..start+length-1 (or of
    `positions` (B, T): (B, 1, T, head_dim / 2), per row): channel pair i turns by position *
    base^(-2i / head_dim) (RoFormer). Computed in float32 from the absolute positions alone, so a position
    gets the same angles in a full pass and in a cached step."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    if positions is None:
        positions = torch.arange(start, start + length, device=device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)
    else:
        angles = (positions.float()[..., None] * inv_freq)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, head_dim) pairwise: channel i pairs with channel i + head_dim/2 (the
    half-split layout of GPT-NeoX / Llama / modded-nanogpt), turned by the angle of its position."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.rope_base = config.rope_base if config.pos_embedding == "rope" else None
        # One fused projection for queries, keys and values: one big matmul beats three small ones.
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor, start: int = 0,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, C) at positions start..start+T-1 (or `positions` (B, T)),
        each (B, n_head, T, head_dim), queries and keys as attention uses them: RMS-normalised per head
        (qk_norm), then rotated by their position (rope)."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if self.qk_norm:
            # No gain (as modded-nanogpt): |q| = |k| = sqrt(head_dim), so a score is at most sqrt(head_dim).
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if self.rope_base is not None:
            cos, sin = rotary_cos_sin(start, T, self.head_dim, self.rope_base, x.device, q.dtype, positions)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor, past: LayerKV | None = None, start: int = 0,
                positions: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend x (B, T, C) causally; with `past`, x holds positions start..start+T-1 and its keys and
        values are appended to the cache, so queries also see the positions before `start`. `positions`
        (B, T) and `mask` (B, 1, T, T: which keys each query sees) replace the causal order, for packed rows
        (GPT.hidden_states)."""
        B, T, C = x.shape
        q, k, v = self._heads(x, start, positions)
        is_causal = mask is None
        if past is not None:
            past.keys[:B, :, start : start + T] = k
            past.values[:B, :, start : start + T] = v
            k = past.keys[:B, :, : start + T]
            v = past.values[:B, :, : start + T]
            if start > 0:
                # SDPA's is_causal aligns the mask top-left, which is wrong once queries are a suffix
                # of the keys. One query needs no mask at all (it may see every cached key); several
                # need the bottom-right aligned causal mask.
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax attention weights (B, n_head, T, T), computed explicitly (SDPA does not return
        them) from the same queries and keys as forward (QK-norm and rotary positions included)."""
        q, k, _ = self._heads(x)
        T = x.shape[1]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)


class ReLUSquared(nn.Module):
    """relu(x)^2 (So et al. 2021, "Primer"; modded-nanogpt's MLP activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 used the tanh approximation of GELU; matching it keeps imported GPT-2 weights exact.
        self.act = nn.GELU(approximate="tanh") if config.mlp == "gelu" else ReLUSquared()
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past: LayerKV | None = None, start: int = 0,
                positions: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), past, start, positions, mask)
        return x + self.mlp(self.ln_2(x))


class OutputHead(nn.Module):
    """Logits over the real vocabulary (..., vocab_size), soft-capped when the config says so.

    Tied (GPT-2): the matrix is the token embedding's, and the head has no parameter of its own (one
    tensor to save and shard, padded_vocab_size x n_embd parameters saved). Untied: its own `weight`
    (state-dict name `lm_head.weight`, padded like wte). Either way the padded rows are multiplied (the
    padded shape is what is fast) and then sliced off, so they are never sampled or scored.
    """

    def __init__(self, config: GPTConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.vocab_size = config.vocab_size
        self.softcap = config.logit_softcap
        # The embedding module, not registered as a child (it belongs to transformer.wte), and looked
        # up at every call: loading (to_empty, .to) may replace its weight tensor.
        object.__setattr__(self, "_tied_to", embedding if config.tie_head else None)
        if not config.tie_head:
            self.weight = nn.Parameter(torch.empty(config.padded_vocab_size, config.n_embd))

    @property
    def matrix(self) -> torch.Tensor:
        """The (padded_vocab_size, n_embd) output matrix: wte's when tied, else the head's own."""
        return self._tied_to.weight if self._tied_to is not None else self.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = linear(hidden, self.matrix)[..., : self.vocab_size]
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


class GPT(nn.Module):
    """GPT-2 (and the opt-in modern recipe): token embedding (+ learned positions), n_layer blocks,
    final LayerNorm, output head (tied to the token embedding, or its own)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.activation_checkpointing = False
        modules = dict(wte=nn.Embedding(config.padded_vocab_size, config.n_embd))
        if config.pos_embedding == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        )
        self.transformer = nn.ModuleDict(modules)
        # `model.lm_head(hidden)` gives the logits (generation, evaluation, Hugging Face parity);
        # `model.head_weight` is its matrix, which the training loss multiplies chunk by chunk.
        self.lm_head = OutputHead(config, self.transformer.wte)
        self._init_weights()

    @property
    def head_weight(self) -> torch.Tensor:
        """The output head's (padded_vocab_size, n_embd) matrix: wte's weight when tied, else lm_head's."""
        return self.lm_head.matrix

    def _init_weights(self) -> None:
        # GPT-2: every weight N(0, 0.02), biases 0, LayerNorm (1, 0). The projections that write into
        # the residual stream (attn.c_proj, mlp.c_proj) get std 0.02/sqrt(2 n_layer), so the residual's
        # variance does not grow with depth (2 such additions per block); with zero_init_proj they
        # start at zero, so every block starts as the identity (modded-nanogpt). An untied head starts
        # at zero (modded-nanogpt): the first logits are uniform, the first loss exactly ln(vocab_size).
        # Uses only torch's global RNG, so the initialisation is a function of torch.manual_seed alone
        # (zeroed tensors draw nothing).
        cfg = self.config
        residual_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith("c_proj") and cfg.zero_init_proj:
                    nn.init.zeros_(module.weight)
                else:
                    std = residual_std if name.endswith("c_proj") else INIT_STD
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if not cfg.tie_head:
            nn.init.zeros_(self.lm_head.weight)

    # ---- forward ------------------------------------------------------------------------------

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-LayerNorm outputs (B, T, n_embd) for token ids idx (B, T). With a cache, idx continues
        the cached sequence: its positions start at cache.length, and the cache grows by T. Packed rows
        (several sequences that share a prefix in one row, e.g. a question's context and each of its
        endings): `positions` (B, T) gives each token's position and `mask` (B, 1, T, T) the keys each
        token sees, in place of the causal order; no cache."""
        start = cache.length if cache is not None else 0
        x = self.transformer.drop(self._embed(idx, start, positions))
        for i, block in enumerate(self.transformer.h):
            if cache is not None:
                x = block(x, cache.layers[i], start)
            elif self.activation_checkpointing and self.training:
                # Recompute the block in the backward pass instead of storing its activations:
                # ~1/3 more compute for memory that no longer grows with n_layer x T.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, positions=positions, mask=mask)
        if cache is not None:
            cache.length = start + idx.size(1)
        return self.transformer.ln_f(x)

    def _embed(self, idx: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Token plus learned position embeddings (B, T, n_embd) of idx (B, T) at positions
        start..start+T-1, or `positions` (B, T) (token embeddings alone with rope: positions enter in attention)."""
        # The usual case needs no read of the device to check the length; packed rows (evaluation) one.
        end = start + idx.size(1) if positions is None else int(positions.max()) + 1 if positions.numel() else start
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} tokens is longer than the context ({self.config.block_size}); crop it")
        x = self.transformer.wte(idx)
        if self.config.pos_embedding == "learned":
            if positions is None:
                positions = torch.arange(start, end, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(positions)
        return x

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
        per_token: bool = False, loss_divisor: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) for idx (B, T), None as the loss; with targets (B, T), (None, the
        mean cross-entropy over the positions whose target is not ignore_index). The loss never holds
        the B*T x vocab logits: gpt_ds.loss computes head, float32 loss and its gradients chunk by chunk.
        per_token: each position's loss (B, T) instead of the mean, without a gradient (evaluation).
        loss_divisor: the loss is the sum over the targets not ignored, divided by it (a fine-tune's
        trained tokens in the global batch), not their mean."""
        if targets is None:
            return self.lm_head(self.hidden_states(idx)), None
        # The head's matrix (wte's when tied, lm_head's own when not) and its softcap: the same logits
        # as lm_head(hidden), never materialised.
        hidden, head = self.hidden_states(idx).flatten(0, 1), self.head_weight
        shared = dict(vocab_size=self.config.vocab_size, softcap=self.config.logit_softcap, ignore_index=ignore_index)
        if per_token:
            return None, chunked_token_losses(hidden, head, targets.flatten(), **shared).view_as(targets)
        return None, chunked_cross_entropy(hidden, head, targets.flatten(), divisor=loss_divisor, **shared)

    @torch.no_grad()
    def attention_weights(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights (n_layer, n_head, T, T) for one sequence idx (T,) or (1, T), for
        visualisation: row t is how much position t attends to each position <= t."""
        if idx.dim() == 1:
            idx = idx.unsqueeze(0)
        if idx.dim() != 2 or idx.size(0) != 1:
            raise ValueError(f"attention_weights takes one sequence, got shape {tuple(idx.shape)}")
        x = self._embed(idx)
        weights = []
        for block in self.transformer.h:
            weights.append(block.attn.attention_probs(block.ln_1(x))[0])
            x = block(x)
        return torch.stack(weights).float()

    # ---- sizes and FLOPs ----------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting the real vocabulary (the padding rows are a speed device, not model
        capacity): gpt2 has 124,439,808, as GPT-2 / Hugging Face count it. An untied head counts (it is
        vocab_size x n_embd parameters of its own); rope has no position parameters. non_embedding=True
        leaves out the token embedding, the learned position embedding and an untied head (Kaplan et
        al.'s N: the blocks and the final LayerNorm, the same for a tied and an untied model)."""
        cfg = self.config
        total = sum(p.numel() for p in self.parameters())
        padded_tables = 1 if cfg.tie_head else 2  # wte, and an untied head, are padded alike
        total -= padded_tables * (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
        if non_embedding:
            total -= padded_tables * cfg.vocab_size * cfg.n_embd
            if cfg.pos_embedding == "learned":
                total -= cfg.block_size * cfg.n_embd
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6N + 12 * n_layer * n_embd * seq_len, as in the
        PaLM paper's appendix B. N counts every weight used in a matmul: the non-embedding parameters
        plus the output head (vocab_size x n_embd, tied or untied: one matmul either way); the token and
        position embeddings are lookups, not matmuls. The attention term is the QK^T and AV products at
        sequence length seq_len (default: context); elementwise work (rotary, norms, softcap) is left out."""
        cfg = self.config
        seq_len = cfg.block_size if seq_len is None else seq_len
        matmul_params = self.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd
        return 6 * matmul_params + 12 * cfg.n_layer * cfg.n_embd * seq_len

    # ---- hooks for training -------------------------------------------------------------------

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: weight decay on matrices and embeddings (>= 2-D), none on biases and
        LayerNorm gains, which only scale or shift and should not be pulled towards zero."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass (training mode only)."""
        self.activation_checkpointing = bool(enabled)

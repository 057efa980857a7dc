"""The GPT model: its config, named presets, and the GPT-2 decoder-only transformer.

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

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gpt_ds.errors import UserError
from gpt_ds.recipes import MODERN_RECIPE
from gpt_ds.loss import chunked_cross_entropy

# The embedding matrix is padded to a multiple of this many rows: matmuls whose dimensions are
# multiples of 64 hit the fast kernels (nanoGPT measured ~25% on GPUs for 50257 -> 50304).
VOCAB_PAD_MULTIPLE = 64
INIT_STD = 0.02  # GPT-2's initialisation scale


# The choices of the architecture fields beyond GPT-2's shape.
POS_EMBEDDINGS = ("learned", "rope")
MLP_ACTIVATIONS = ("gelu", "relu2")
# Those fields at GPT-2's values: their defaults. A config with all of them at these values is GPT-2.
GPT2_RECIPE: dict[str, Any] = dict(
    pos_embedding="learned", rope_base=10000.0, qk_norm=False, mlp="gelu", zero_init_proj=False, tie_head=True,
    logit_softcap=None,
)
@dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT model, and its architecture where it departs from GPT-2 (opt-in: every such
    field defaults to GPT-2). Frozen so that a preset cannot be changed by accident; derive a variant
    with `config_from_preset(name, **overrides)` or `dataclasses.replace`."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # the context length (the number of learned positions, with pos_embedding="learned")
    vocab_size: int = 50257  # GPT-2's BPE; the tokens the model can read and predict
    dropout: float = 0.0  # 0 for pretraining (as GPT-2 small / nanoGPT), >0 only when overfitting
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    # ---- the architecture beyond GPT-2 (defaults: GPT-2; MODERN_RECIPE sets them) ----
    pos_embedding: str = "learned"  # "learned": GPT-2's wpe table; "rope": rotary q/k, no position parameters
    rope_base: float = 10000.0  # the rotary base (RoFormer's 10000); used only with pos_embedding="rope"
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (no gain) before attention
    mlp: str = "gelu"  # "gelu": GPT-2's tanh-GELU; "relu2": ReLU(x)^2
    zero_init_proj: bool = False  # attn.c_proj and mlp.c_proj start at zero (else GPT-2's scaled normal)
    tie_head: bool = True  # the output head is wte; False: an own `lm_head.weight`, initialised to zero
    logit_softcap: float | None = None  # logits -> c * tanh(logits / c); None: no cap

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise UserError(
                f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}) so the "
                f"heads split the width evenly; choose e.g. n_head={_nearest_divisor(self.n_embd, self.n_head)}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise UserError(f"model config: dropout must be in [0, 1), got {self.dropout!r}")
        for name, choices in (("pos_embedding", POS_EMBEDDINGS), ("mlp", MLP_ACTIVATIONS)):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"model config: {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        for name in ("bias", "qk_norm", "zero_init_proj", "tie_head"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"model config: {name} must be true or false, got {getattr(self, name)!r}")
        if not _positive_number(self.rope_base):
            raise UserError(f"model config: rope_base must be a positive number, got {self.rope_base!r}")
        if self.logit_softcap is not None and not _positive_number(self.logit_softcap):
            raise UserError(
                f"model config: logit_softcap must be a positive number or null (no cap), got {self.logit_softcap!r}"
            )
        if self.pos_embedding == "rope" and self.head_dim % 2:
            raise UserError(
                f"model config: rotary embeddings rotate pairs of channels, so the head size n_embd / n_head "
                f"({self.n_embd} / {self.n_head} = {self.head_dim}) must be even; change n_embd or n_head"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding matrix: vocab_size rounded up to a multiple of 64 (50257 -> 50304)."""
        return -(-self.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def uses_gpt2_recipe(self) -> bool:
        """Every architecture/initialisation field at GPT-2's value (the default)."""
        return all(getattr(self, name) == value for name, value in GPT2_RECIPE.items())

    def architecture_differences(self) -> list[str]:
        """What makes this architecture differ from GPT-2's, one entry per field ([] for GPT-2). The
        initialisation (zero_init_proj) is not architecture: a model so trained is still a GPT-2."""
        differences = []
        for name in ("pos_embedding", "qk_norm", "mlp", "tie_head", "logit_softcap"):
            if getattr(self, name) != GPT2_RECIPE[name]:
                differences.append(f"{name}={getattr(self, name)!r} (GPT-2: {GPT2_RECIPE[name]!r})")
        return differences

    @property
    def architecture(self) -> str:
        """In words: "GPT-2", or e.g. "modern: rope, qk-norm, relu², untied, softcap 30"."""
        parts = []
        if self.pos_embedding == "rope":
            parts.append("rope" if self.rope_base == GPT2_RECIPE["rope_base"] else f"rope (base {self.rope_base:g})")
        if self.qk_norm:
            parts.append("qk-norm")
        if self.mlp == "relu2":
            parts.append("relu²")
        if not self.tie_head:
            parts.append("untied")
        if self.logit_softcap is not None:
            parts.append(f"softcap {self.logit_softcap:g}")
        return "modern: " + ", ".join(parts) if parts else "GPT-2"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict. A config on GPT-2's recipe leaves the recipe fields out, so
        its dict is exactly what gpt-ds wrote before they existed: an old checkpoint or model folder
        equals (resume's check compares these dicts) and reads as (from_dict) a default config."""
        d = dataclasses.asdict(self)
        if self.uses_gpt2_recipe:
            for name in GPT2_RECIPE:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        """Build from `to_dict()` output; unknown or missing fields are a UserError naming them (the
        fields with defaults may be missing: a dict written before a field existed gets its default)."""
        if not isinstance(d, dict):
            raise UserError(f"model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"model config: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in d]
        if missing:
            raise UserError(f"model config: missing field(s) {', '.join(missing)}")
        return cls(**d)


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _nearest_divisor(n: int, near: int) -> int:
    return min((k for k in range(1, n + 1) if n % k == 0), key=lambda k: (abs(k - near), k))


PRESETS: dict[str, GPTConfig] = {
    # The GPT-2 family (Radford et al. 2019), context 1024.
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # 355M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280, block_size=1024),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600, block_size=1024),  # 1558M
    # CPU sizes. With GPT-2's 50k vocabulary the embedding/output head dominates small models
    # (50304 x n_embd), so `tiny` keeps n_embd small: it trains visibly within a minute on 2 cores.
    "tiny": GPTConfig(n_layer=2, n_head=4, n_embd=128, block_size=128),
    # A few million (6.3M) non-embedding parameters, GPT-2's head size of 64; depth rather than width,
    # since the 50k-row embedding already costs 50304 x n_embd. Context 512 so that 256 new tokens fit
    # after a prompt (bench/generate.py compares with transformers, which cannot go past the context).
    "small": GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=512),
}


# The modern recipe on the same shapes: modern-gpt2, modern-gpt2-medium, ..., modern-tiny, modern-small.
PRESETS.update({f"modern-{name}": dataclasses.replace(config, **MODERN_RECIPE) for name, config in list(PRESETS.items())})


def config_from_preset(name: str, **overrides: Any) -> GPTConfig:
    """The preset `name` with some fields replaced (e.g. block_size=256, dropout=0.1)."""
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown model config field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(PRESETS[name], **overrides)


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
    start: int, length: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim / 2) of the rotary angles of positions start..start+length-1:
    channel pair i turns by position * base^(-2i / head_dim) (RoFormer). Computed in float32 from the
    absolute positions alone, so a position gets the same angles in a full pass and in a cached step."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
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
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, C) at positions start..start+T-1, each (B, n_head, T,
        head_dim), queries and keys as attention uses them: RMS-normalised per head (qk_norm), then
        rotated by their position (rope)."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if self.qk_norm:
            # No gain (as modded-nanogpt): |q| = |k| = sqrt(head_dim), so a score is at most sqrt(head_dim).
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        if self.rope_base is not None:
            cos, sin = rotary_cos_sin(start, T, self.head_dim, self.rope_base, x.device, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor, past: LayerKV | None = None, start: int = 0) -> torch.Tensor:
        """Attend x (B, T, C) causally; with `past`, x holds positions start..start+T-1 and its keys and
        values are appended to the cache, so queries also see the positions before `start`."""
        B, T, C = x.shape
        q, k, v = self._heads(x, start)
        mask = None
        is_causal = True
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
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 used the tanh approximation of GELU; matching it keeps imported GPT-2 weights exact.
        self.act = nn.GELU(approximate="tanh") if config.mlp == "gelu" else ReLUSquared()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
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

    def forward(self, x: torch.Tensor, past: LayerKV | None = None, start: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), past, start)
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
        logits = F.linear(hidden, self.matrix)[..., : self.vocab_size]
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

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-LayerNorm outputs (B, T, n_embd) for token ids idx (B, T). With a cache, idx continues
        the cached sequence: its positions start at cache.length, and the cache grows by T."""
        start = cache.length if cache is not None else 0
        x = self.transformer.drop(self._embed(idx, start))
        for i, block in enumerate(self.transformer.h):
            if cache is not None:
                x = block(x, cache.layers[i], start)
            elif self.activation_checkpointing and self.training:
                # Recompute the block in the backward pass instead of storing its activations:
                # ~1/3 more compute for memory that no longer grows with n_layer x T.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if cache is not None:
            cache.length = start + idx.size(1)
        return self.transformer.ln_f(x)

    def _embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token plus learned position embeddings (B, T, n_embd) of idx (B, T) at positions
        start..start+T-1 (token embeddings alone with rope: positions enter in attention)."""
        end = start + idx.size(1)
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} tokens is longer than the context ({self.config.block_size}); crop it")
        x = self.transformer.wte(idx)
        if self.config.pos_embedding == "learned":
            x = x + self.transformer.wpe(torch.arange(start, end, dtype=torch.long, device=idx.device))
        return x

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, ignore_index: int = -100
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) for idx (B, T), None as the loss; with targets (B, T), (None, the
        mean cross-entropy over the positions whose target is not ignore_index). The loss never holds
        the B*T x vocab logits: gpt_ds.loss computes head, float32 loss and its gradients chunk by chunk."""
        if targets is None:
            return self.lm_head(self.hidden_states(idx)), None
        # The head's matrix (wte's when tied, lm_head's own when not) and its softcap: the same logits
        # as lm_head(hidden), never materialised.
        loss = chunked_cross_entropy(self.hidden_states(idx).flatten(0, 1), self.head_weight, targets.flatten(),
                                     vocab_size=self.config.vocab_size, softcap=self.config.logit_softcap,
                                     ignore_index=ignore_index)
        return None, loss

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

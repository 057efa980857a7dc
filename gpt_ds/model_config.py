"""The model's config: `GPTConfig` (GPT-2's shape and the architecture fields beyond it), the named
`PRESETS` and `config_from_preset`. No torch here: the command line and the plan check a config before
the model is built (gpt_ds.model), and a model folder's config.json is this dataclass's dict.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gpt_ds.errors import UserError
from gpt_ds.recipes import MODERN_RECIPE

# The embedding matrix is padded to a multiple of this many rows: matmuls whose dimensions are
# multiples of 64 hit the fast kernels (nanoGPT measured ~25% on GPUs for 50257 -> 50304).
VOCAB_PAD_MULTIPLE = 64


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

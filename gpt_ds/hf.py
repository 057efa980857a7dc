"""Hugging Face interop: convert between a gpt-ds model folder and a transformers GPT-2 folder.

    python launch/hf.py export MODEL_DIR --out HF_DIR   # GPT2LMHeadModel.from_pretrained(HF_DIR) loads it
    python launch/hf.py import HF_DIR --out MODEL_DIR   # e.g. GPT-2 weights you have locally

The architectures are the same, so conversion is renaming plus three layout details:
- GPT-2 stores its projections as `Conv1D` with weight (in, out): the transpose of nn.Linear's (out, in);
- the Hugging Face vocabulary is unpadded (gpt-ds model folders are unpadded too: no change);
- the output head is tied to wte in both (`lm_head.weight` is not written; it is ignored on import
  when it equals wte).
The export carries its tokenizer: transformers' GPT-2 tokenizer files, converted from the model
folder's tiktoken encoding (gpt_ds.hf_tokenizer), so `AutoTokenizer.from_pretrained(HF_DIR)` works
offline. Import reads no vocabulary from tokenizer files (a model folder names its encoding, and import
needs no tiktoken cache), only a chat template.
Only a GPT-2 architecture exports: a model folder of the modern recipe (rotary positions, QK-norm,
ReLU^2, an untied head, soft-capped logits; any of them) has no GPT2LMHeadModel equivalent and is
refused naming what differs (zero-initialised projections are only an initialisation: such a model
exports). Import always makes a GPT-2 model folder.
transformers is not needed to convert: both sides are plain safetensors + JSON (it is needed only by
the tests that check the result loads and computes the same logits). Weights are read from
safetensors (single or sharded), or from `pytorch_model.bin` through torch's weights-only unpickler
(gpt_ds.safe_load: a pickle that names anything but tensors is refused, never run).
`hf_state(HF_DIR)` is the import in memory (launch/train.py --init-from uses it).
A chat model (config.json's "chat_template") exports with its 4 markers in the tokenizer and transformers'
chat template (gpt_ds.hf_tokenizer.chat_jinja); its config's eos tokens are those a gpt-ds reply stops at.
Import makes a chat model of a folder whose tokenizer carries that same template (`read_hf_chat_template`).
Neither direction writes into its input, inside it or above it, and neither replaces an existing folder
of the other kind or with other files unless forced (gpt_ds.model_io.check_output_folder); both check
that before reading any weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from gpt_ds import json_object
from gpt_ds.chat import REPLY_STOPS
from gpt_ds.errors import UserError
from gpt_ds.hf_tokenizer import TOKENIZER_CONFIG_FILE, chat_jinja, tokenizer_files
from gpt_ds.model import GPTConfig
from gpt_ds.model_io import (
    CONFIG_FILE,
    HF_KIND,
    MODEL_KIND,
    TIED_HEAD,
    TOKEN_EMBEDDING,
    WEIGHTS_FILE,
    atomic_folder,
    check_output_folder,
    check_tensors,
    expected_shapes,
    folder_kind,
    folder_state_dict,
    load_model,
    parse_dtype,
    read_model_info,
    read_safetensors,
    require_folder,
    save_model,
)
from gpt_ds.tokenizer import CHAT_TEMPLATE, CHAT_VOCAB_SIZE, DEFAULT_ENCODING, END_OF_TURN, EOT_TOKEN

HF_CONFIG = CONFIG_FILE  # transformers' names are gpt-ds's: the folders differ in config.json's shape
HF_WEIGHTS = WEIGHTS_FILE
HF_INDEX = "model.safetensors.index.json"  # sharded checkpoints (large models)
HF_PICKLE = "pytorch_model.bin"  # older folders: a pickle, read by the weights-only unpickler
HF_CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers' save_pretrained writes a chat template
# The projections Hugging Face keeps as Conv1D, i.e. with transposed weights.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-parameter buffers older transformers versions saved (the causal mask); recomputed, never needed.
HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# GELU with the tanh approximation, which gpt_ds.model uses, under its transformers names.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which gpt_ds.model uses


def _is_conv1d(name: str) -> bool:
    return name.endswith(CONV1D_SUFFIXES)


# ---- export -----------------------------------------------------------------------------------


def has_gpt2_vocabulary(config: GPTConfig) -> bool:
    """Whether the model's vocabulary holds the GPT-2 BPE's tokens; a small test vocabulary has neither
    its end-of-text token nor a tokenizer."""
    return EOT_TOKEN < config.vocab_size


def hf_config(config: GPTConfig, dtype: torch.dtype, chat: bool = False) -> dict[str, Any]:
    """A transformers GPT2Config as JSON for `config`; `chat`: a chat model's, whose generation stops where a
    gpt-ds reply does (gpt_ds.chat.REPLY_STOPS: <|end|> first, the tokenizer's eos)."""
    eot = EOT_TOKEN if has_gpt2_vocabulary(config) else None
    eos = [END_OF_TURN, *sorted(REPLY_STOPS - {END_OF_TURN})] if chat else eot
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # older transformers versions read this name
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eos,
        "dtype": str(dtype).removeprefix("torch."),
    }


def export_hf(
    model_dir: str | Path, out: str | Path, dtype: str | torch.dtype = torch.float32, force: bool = False
) -> Path:
    """Write the model folder `model_dir` as a transformers GPT-2 folder `out` (atomically), with the
    tokenizer files of its encoding (gpt_ds.hf_tokenizer; none for a small test vocabulary). `force`:
    replace whatever folder `out` is (never `model_dir` or a folder inside or above it)."""
    from safetensors.torch import save_file

    dtype = parse_dtype(dtype)
    # Before reading any weights: the input is a GPT-2 model folder, the output may be written, and
    # the tokenizer is in the tiktoken cache.
    info = read_model_info(model_dir)
    check_exportable(info.config, model_dir, info.chat_template)
    check_output_folder(out, HF_KIND, force=force, inputs=(model_dir,))
    chat = info.chat_template is not None
    tokenizer = tokenizer_files(info.tokenizer, info.config.block_size, chat) if has_gpt2_vocabulary(info.config) else {}
    model, info = load_model(model_dir, dtype=dtype)
    config = info.config
    # The model folder's tensors (no padding rows), with Hugging Face's Conv1D layout where it differs.
    tensors = {
        name: tensor.t().contiguous() if _is_conv1d(name) else tensor
        for name, tensor in folder_state_dict(model, config).items()
    }
    if not config.bias:
        # GPT-2 always has biases; a model trained without them equals one whose biases are zero.
        for name, shape in _hf_bias_shapes(config).items():
            tensors[name] = torch.zeros(shape, dtype=dtype)
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + sum(len(text.encode()) for text in tokenizer.values())
    with atomic_folder(out, HF_KIND, force=force, inputs=(model_dir,), needed=needed) as staging:
        save_file(tensors, str(staging / HF_WEIGHTS), metadata={"format": "pt"})
        (staging / HF_CONFIG).write_text(json.dumps(hf_config(config, dtype, chat), indent=2) + "\n")
        for name, text in tokenizer.items():
            (staging / name).write_text(text, encoding="utf-8")
    return Path(out)


def check_exportable(config: GPTConfig, model_dir: str | Path, chat_template: str | None = None) -> None:
    """UserError naming what differs when the architecture is not GPT-2's (transformers' GPT-2 has
    learned positions, tanh-GELU, a tied head and no logit cap), or when a chat model's vocabulary lacks
    the chat markers' rows."""
    if chat_template is not None and config.vocab_size < CHAT_VOCAB_SIZE:
        raise UserError(f"{model_dir} is a chat model with a {config.vocab_size}-token vocabulary, which lacks the chat "
                        f"markers (a chat model has {CHAT_VOCAB_SIZE}); fine-tune it again on a chat folder")
    differences = config.architecture_differences()
    if differences:
        raise UserError(
            f"{model_dir} is not a GPT-2 architecture ({config.architecture}: {', '.join(differences)}), so it "
            "cannot be exported as transformers' GPT2LMHeadModel; only models trained with the GPT-2 recipe export"
        )


def _hf_bias_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    with_bias = dataclasses.replace(config, bias=True)
    return {name: shape for name, shape in expected_shapes(with_bias).items() if name.endswith(".bias")}


# ---- import -----------------------------------------------------------------------------------


def read_hf_config(hf_dir: Path) -> GPTConfig:
    """The GPTConfig of a transformers GPT-2 folder; UserError for anything that is not plain GPT-2."""
    path = hf_dir / HF_CONFIG
    require_folder(hf_dir, "Hugging Face folder", "pass a folder saved by save_pretrained",
                   "a folder saved by save_pretrained")
    if not path.is_file():
        raise UserError(f"{hf_dir} has no {HF_CONFIG}; pass a Hugging Face model folder (made by save_pretrained)")
    hf = json_object.read(path, fix="pass a folder saved by save_pretrained", kind="a Hugging Face config")
    if folder_kind(hf_dir) == MODEL_KIND:
        raise UserError(f"{hf_dir} is a gpt-ds model folder already, not a Hugging Face one; use it as it is "
                        f"(python -m gpt_ds.hf export {hf_dir} --out HF_DIR makes a Hugging Face folder of it)")
    model_type = hf.get("model_type")
    architectures = hf.get("architectures") or []
    if model_type != "gpt2":
        raise UserError(
            f"{hf_dir} holds a {model_type or 'unknown'!s} model ({', '.join(architectures) or 'no architectures'}), "
            "not GPT-2; only GPT-2 models (model_type \"gpt2\", GPT2LMHeadModel) can be imported"
        )

    def unsupported(what: str) -> UserError:
        return UserError(f"{hf_dir} is a GPT-2 variant gpt-ds cannot represent ({what}); only plain GPT-2 imports")

    activation = hf.get("activation_function", "gelu_new")
    if activation not in TANH_GELU_NAMES:
        raise unsupported(f"activation_function {activation!r}, gpt-ds uses gelu_new")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise unsupported(f"n_inner {hf['n_inner']}, gpt-ds uses 4 * n_embd")
    for key, wanted in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
        ("tie_word_embeddings", True),
    ):
        if hf.get(key, wanted) != wanted:
            raise unsupported(f"{key}={hf[key]}")
    if abs(hf.get("layer_norm_epsilon", LAYER_NORM_EPS) - LAYER_NORM_EPS) > 1e-12:
        raise unsupported(f"layer_norm_epsilon {hf['layer_norm_epsilon']}, gpt-ds uses {LAYER_NORM_EPS}")
    return GPTConfig(
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        block_size=hf.get("n_positions", 1024),
        vocab_size=hf.get("vocab_size", 50257),
        dropout=float(hf.get("resid_pdrop", 0.0)),
        bias=True,
    )


def read_hf_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a transformers folder, single-file or sharded safetensors (never a pickle)."""
    if (hf_dir / HF_WEIGHTS).is_file():
        return read_safetensors(hf_dir / HF_WEIGHTS)
    if (hf_dir / HF_INDEX).is_file():
        index = json_object.read(hf_dir / HF_INDEX, fix="download it again", kind="a safetensors index",
                                 invalid="is not a safetensors index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
            raise UserError(f"{hf_dir / HF_INDEX} is not a safetensors index (no weight_map of tensor names to "
                            "files); download it again")
        shards = sorted(set(weight_map.values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (hf_dir / shard).is_file():
                raise UserError(f"{hf_dir} lacks the shard {shard} listed in {HF_INDEX}; download it again")
            tensors.update(read_safetensors(hf_dir / shard))
        return tensors
    if (hf_dir / HF_PICKLE).is_file():
        from gpt_ds import safe_load

        state = safe_load.load(hf_dir / HF_PICKLE, map_location="cpu")  # tensors only: a pickle that calls code is refused
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise UserError(f"{hf_dir / HF_PICKLE} is not a state dict of tensors; download it again")
        return state
    if any((hf_dir / name).is_file() for name in ("tf_model.h5", "flax_model.msgpack")):
        raise UserError(
            f"{hf_dir} has weights only in a TF/Flax format; gpt-ds reads safetensors and pytorch_model.bin. Convert once "
            "with transformers: GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
        )
    raise UserError(f"{hf_dir} has no {HF_WEIGHTS} or {HF_PICKLE}; pass a Hugging Face GPT-2 folder with its weights")


def import_hf(hf_dir: str | Path, out: str | Path, tokenizer: str = DEFAULT_ENCODING, force: bool = False) -> Path:
    """Convert the transformers GPT-2 folder `hf_dir` into the model folder `out`. `force`: replace
    whatever folder `out` is (never `hf_dir` or a folder inside or above it)."""
    hf_dir = Path(hf_dir)
    # a folder that is not GPT-2, or not the chat model its template says, fails before the output is checked
    chat_template = read_hf_chat_template(hf_dir, read_hf_config(hf_dir))
    check_output_folder(out, MODEL_KIND, force=force, inputs=(hf_dir,))  # before reading any weights
    config, state = hf_state(hf_dir)
    metadata = {"source": "huggingface", "hf_folder": str(hf_dir.resolve())}
    return save_model(out, state, config, metadata=metadata, tokenizer=tokenizer, force=force, inputs=(hf_dir,),
                      chat_template=chat_template)


def read_hf_chat_template(hf_dir: Path, config: GPTConfig) -> str | None:
    """CHAT_TEMPLATE when the folder's tokenizer carries gpt-ds's chat template (chat_jinja, in tokenizer_config.json
    as the export writes it, or in chat_template.jinja as transformers' save_pretrained does), else None: another
    template is not gpt-ds's chat format, so the import is a base model."""
    if (hf_dir / HF_CHAT_TEMPLATE_FILE).is_file():
        template = (hf_dir / HF_CHAT_TEMPLATE_FILE).read_text(encoding="utf-8", errors="replace")
    else:
        tokenizer_config = json_object.read_or_none(hf_dir / TOKENIZER_CONFIG_FILE) or {}
        template = tokenizer_config.get("chat_template")
    if template != chat_jinja():
        return None
    if config.vocab_size < CHAT_VOCAB_SIZE:
        raise UserError(f"{hf_dir} has gpt-ds's chat template but a {config.vocab_size}-token vocabulary, which lacks "
                        f"the chat markers ({CHAT_VOCAB_SIZE} tokens); export the chat model again")
    return CHAT_TEMPLATE


def hf_state(hf_dir: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """A transformers GPT-2 folder as gpt-ds's config and tensors (our names and layout), checked."""
    hf_dir = Path(hf_dir)
    config = read_hf_config(hf_dir)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in read_hf_tensors(hf_dir).items():
        if name.endswith(HF_BUFFER_SUFFIXES):
            continue
        if not name.startswith(("transformer.", TIED_HEAD)):
            name = "transformer." + name  # the original GPT-2 checkpoints name the base model's tensors bare
        state[name] = tensor.t() if _is_conv1d(name) else tensor
    head = state.pop(TIED_HEAD, None)
    wte = state.get(TOKEN_EMBEDDING)
    if head is not None and wte is not None and (head.shape != wte.shape or not torch.equal(head, wte)):
        raise UserError(f"{hf_dir}: lm_head.weight differs from transformer.wte.weight (untied head); gpt-ds ties them")
    check_tensors(state, config, source=str(hf_dir))  # names the first tensor that does not fit
    return config, state


if __name__ == "__main__":  # `python -m gpt_ds.hf`: the program is launch/hf.py
    from launch.hf import main

    main()

"""Token shards on disk: the llm.c shard format, its reader and a prepared folder's manifest.

A shard is a 1024-byte header of 256 little-endian int32 (magic 20240520, version 1, the token
count at index 2, the rest zero) followed by the tokens as little-endian uint16: the format of
llm.c and modded-nanogpt, so shards prepared there (e.g. FineWeb for llm.c) train here and the
other way round. `read_shard` memory-maps one without copying it into RAM; `open_split` opens a
split of a folder prepared by `python -m data_prep`, checked against its `manifest.json`.
The batch sampler that draws training windows from these arrays lives in gpt_ds.sampler.

A chat folder (`python -m data_prep --format chat`, manifest "format": "chat") has beside each shard its loss
mask: NAME.mask, the same 1024-byte header with magic MASK_MAGIC and the token count, then one uint8 per
token, 1 where a fine-tune trains on the token as a target. The token shards stay llm.c shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt_ds import atomic, json_object
from gpt_ds.atomic import file_sha256
from gpt_ds.errors import UserError

MAGIC = 20240520
VERSION = 1
HEADER_BYTES = 1024
HEADER_INTS = HEADER_BYTES // 4
TOKEN_DTYPE = np.dtype("<u2")
MASK_MAGIC = 20261205
MASK_DTYPE = np.dtype("u1")
TEXT_FORMAT = "text"  # a folder of documents: its manifest's "format" is the shard format's dict
CHAT_FORMAT = "chat"  # the manifest's "format" of a folder of conversations
MANIFEST_NAME = "manifest.json"
# Written by data_prep when it starts and removed when the manifest is in place: a folder that holds
# it was interrupted mid-preparation and its shards must not be trained on.
IN_PROGRESS_NAME = ".prepare-in-progress.json"

PREPARE_HINT = "python -m data_prep --input CORPUS --out {folder}"


class ShardError(UserError):
    """A shard or prepared data folder that is missing, truncated, foreign or inconsistent."""


def shard_header(num_tokens: int, magic: int = MAGIC) -> bytes:
    """The 1024-byte header of a shard (or, with MASK_MAGIC, a mask) holding `num_tokens` tokens."""
    if not 0 <= num_tokens < 2**31:
        raise ValueError(f"a shard holds 0 to 2**31-1 tokens, not {num_tokens}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = magic, VERSION, num_tokens
    return header.tobytes()


def mask_name(shard: str) -> str:
    """The loss mask's file name beside a shard: train_000000.bin -> train_000000.mask."""
    return shard.removesuffix(".bin") + ".mask"


def _size_and_header(path: Path) -> tuple[int, int, int, int] | None:
    """(file size, magic, version, count) of a file in the llm.c layout; None when it does not exist. A file
    shorter than the header reads as (size, 0, 0, 0)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size < HEADER_BYTES:
        return size, 0, 0, 0
    magic, version, count = (int(v) for v in np.fromfile(path, dtype="<i4", count=3))
    return size, magic, version, count


def read_mask(path: str | Path, num_tokens: int) -> np.memmap:
    """Memory-map a shard's loss mask (uint8, one per token); ShardError naming the file when it is missing,
    foreign, or not `num_tokens` long (its shard's count)."""
    path = Path(path)
    fix = "re-prepare the folder with python -m data_prep --format chat --force"
    found = _size_and_header(path)
    if found is None:
        raise ShardError(f"loss mask {path} does not exist; {fix}")
    size, magic, version, count = found
    if magic != MASK_MAGIC or version != VERSION:
        raise ShardError(f"{path} is not a loss mask of this format (magic {magic}, version {version}); {fix}")
    if count != num_tokens or size != HEADER_BYTES + count:
        raise ShardError(f"loss mask {path} holds {size - HEADER_BYTES} bytes, its header says {count} and its shard "
                         f"{num_tokens} tokens; {fix}")
    return np.memmap(path, dtype=MASK_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write a loss mask (0/1 per token) at `path`, atomically. Returns the path."""
    mask = np.asarray(mask)
    if mask.ndim != 1 or mask.size == 0 or int(mask.max()) > 1:
        raise ValueError("a loss mask is a non-empty 1-D array of 0 and 1")
    atomic.write_bytes(Path(path), shard_header(mask.size, MASK_MAGIC), mask.astype(MASK_DTYPE).tobytes())
    return Path(path)


def shard_name(split: str, index: int) -> str:
    """The file name of shard `index` of `split`: train_000000.bin, val_000003.bin, ..."""
    return f"{split}_{index:06d}.bin"


def read_shard(path: str | Path) -> np.memmap:
    """Memory-map the tokens of the shard at `path` (uint16, read-only, no copy).

    Raises ShardError naming the file when it is missing, shorter than its header says (truncated),
    longer (trailing bytes), or not a shard of this format at all.
    """
    path = Path(path)
    if path.is_dir():
        raise ShardError(f"{path} is a folder, not a shard file; give a shard file or use open_split")
    found = _size_and_header(path)
    if found is None:
        raise ShardError(f"shard {path} does not exist; re-prepare the data folder")
    size, magic, version, num_tokens = found
    if size < HEADER_BYTES:
        raise ShardError(
            f"shard {path} is truncated or not a shard: {size} bytes, shorter than the "
            f"{HEADER_BYTES}-byte header; re-prepare it"
        )
    if magic != MAGIC:
        raise ShardError(
            f"{path} is not a token shard: magic number {magic}, expected {MAGIC} (the llm.c format); "
            "give shards written by python -m data_prep or llm.c"
        )
    if version != VERSION:
        extra = " (version 2 holds uint32 tokens, e.g. llm.c's Llama 3 shards)" if version == 2 else ""
        raise ShardError(
            f"shard {path} has format version {version}{extra}; only version {VERSION} "
            "(uint16 GPT-2 tokens) is supported: re-prepare the corpus with python -m data_prep"
        )
    expected = HEADER_BYTES + num_tokens * TOKEN_DTYPE.itemsize
    if num_tokens <= 0 or size != expected:
        what = "truncated" if size < expected else ("empty" if num_tokens <= 0 else "longer than its header says")
        raise ShardError(
            f"shard {path} is {what}: the header says {num_tokens} tokens ({expected} bytes) but the file "
            f"has {size} bytes; re-prepare it"
        )
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))


def write_shard(path: str | Path, tokens: np.ndarray) -> Path:
    """Write `tokens` as a shard at `path`, atomically (temp name, then rename). Returns the path."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"a shard holds a non-empty 1-D token array, not shape {tokens.shape}")
    if tokens.dtype != TOKEN_DTYPE:
        if tokens.min() < 0 or tokens.max() > np.iinfo(np.uint16).max:
            raise ValueError("token ids must fit in uint16 (0..65535)")
        tokens = tokens.astype(TOKEN_DTYPE)
    atomic.write_bytes(path, shard_header(tokens.size), tokens.tobytes())
    return path


def load_manifest(data_dir: str | Path) -> dict:
    """Read `data_dir/manifest.json`; ShardError naming the folder and the fix when it is absent or bad."""
    data_dir = Path(data_dir)
    hint = PREPARE_HINT.format(folder=data_dir)
    if not data_dir.exists():
        raise ShardError(f"data folder {data_dir} does not exist; prepare one with: {hint}")
    if not data_dir.is_dir():
        raise ShardError(f"data folder {data_dir} is a file, not a folder; give the folder made by: {hint}")
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        if (data_dir / IN_PROGRESS_NAME).exists():
            raise ShardError(
                f"data folder {data_dir} holds an unfinished preparation (it was interrupted); "
                "rerun the same python -m data_prep command to finish it"
            )
        raise ShardError(f"data folder {data_dir} has no {MANIFEST_NAME}; prepare it with: {hint}")
    manifest = json_object.read(path, fix=f"re-prepare the folder with: {hint}", kind="a data_prep manifest",
                                error=ShardError)
    if not isinstance(manifest.get("splits"), dict):
        raise ShardError(f"{path} is not a data_prep manifest (no 'splits'); re-prepare the folder with: {hint}")
    if manifest.get("dtype", "uint16") != "uint16":
        raise ShardError(f"{path} describes {manifest['dtype']} tokens; only uint16 shards are supported")
    return manifest


def open_split(data_dir: str | Path, split: str, manifest: dict | None = None) -> list[np.memmap]:
    """Memory-map every shard of `split` ("train" or "val") in a prepared folder, in order.

    With a manifest (`manifest`, already read, or the folder's), each shard is checked against it (presence,
    token count); a folder of shards made elsewhere (llm.c's `*_train_*.bin` naming, no manifest) is opened by
    file name instead. Raises ShardError naming the file or folder and the fix on any problem.
    """
    data_dir = Path(data_dir)
    if manifest is None and data_dir.is_dir() and not (data_dir / MANIFEST_NAME).exists() \
            and not (data_dir / IN_PROGRESS_NAME).exists():
        found = _foreign_shards(data_dir, split)
        if found:
            return [read_shard(path) for path in found]
    manifest = manifest if manifest is not None else load_manifest(data_dir)
    entry = manifest["splits"].get(split)
    if not entry or not entry.get("shards"):
        known = ", ".join(name for name, s in manifest["splits"].items() if s and s.get("shards")) or "none"
        raise ShardError(
            f"data folder {data_dir} has no {split!r} split (splits with shards: {known}); "
            + ("re-prepare with --val-fraction above 0 and at least two documents" if split == "val"
               else "re-prepare the folder")
        )
    shards = []
    for shard in entry["shards"]:
        tokens = read_shard(data_dir / shard["name"])
        if len(tokens) != shard["tokens"]:
            raise ShardError(
                f"shard {data_dir / shard['name']} holds {len(tokens)} tokens but {MANIFEST_NAME} says "
                f"{shard['tokens']}: the folder was changed after preparation; re-prepare it with --force"
            )
        shards.append(tokens)
    return shards


def open_masks(data_dir: str | Path, split: str, manifest: dict | None = None) -> list[np.memmap] | None:
    """The loss masks of `split`'s shards, in order, for a chat folder; None for a text folder. `manifest`: the
    folder's, already read."""
    data_dir = Path(data_dir)
    if manifest is None:
        if not (data_dir / MANIFEST_NAME).exists():
            return None  # a folder of foreign shards is text
        manifest = load_manifest(data_dir)
    if manifest.get("format", TEXT_FORMAT) != CHAT_FORMAT:
        return None
    return [read_mask(data_dir / mask_name(shard["name"]), shard["tokens"])
            for shard in manifest["splits"][split]["shards"]]


def shard_problem(data_dir: Path, manifest: dict) -> str | None:
    """Why a prepared folder's shards do not match its manifest (missing, truncated, other counts, other
    bytes: each shard's sha256 is checked), or None."""
    try:
        for split, entry in manifest["splits"].items():
            if entry.get("shards"):
                open_split(data_dir, split, manifest)
                open_masks(data_dir, split, manifest)
                for shard in entry["shards"]:
                    for name, key in ((shard["name"], "sha256"), (mask_name(shard["name"]), "mask_sha256")):
                        if shard.get(key) and file_sha256(data_dir / name) != shard[key]:
                            return (f"{data_dir / name} does not have the sha256 recorded in "
                                    f"{MANIFEST_NAME} (its bytes were changed after preparation)")
    except ShardError as err:
        return str(err)
    except (KeyError, AttributeError, TypeError):
        return f"{MANIFEST_NAME} is not a complete manifest"
    return None


def verify_folder(data_dir: str | Path, manifest: dict | None = None) -> None:
    """ShardError unless every shard of the prepared folder has the size, header and sha256 its manifest
    (`manifest`, already read, or the folder's) records."""
    data_dir = Path(data_dir)
    problem = shard_problem(data_dir, manifest if manifest is not None else load_manifest(data_dir))
    if problem is not None:
        raise ShardError(f"{problem}; prepare the folder again with --force")


def check_tokens(tokens: np.memmap, vocab_size: int, *, full: bool = False, sample: int = 1 << 16,
                 chunk: int = 1 << 22) -> None:
    """ShardError when the shard holds a token id >= vocab_size (bytes overwritten, or another tokenizer):
    `full` reads every token; otherwise `sample` tokens in 16 runs spread evenly over the shard."""
    n = len(tokens)
    if full or n <= sample:
        spans = [(start, min(n, start + chunk)) for start in range(0, n, chunk)]
    else:
        run = sample // 16
        spans = [(start, start + run) for start in np.linspace(0, n - run, 16).astype(np.int64).tolist()]
    for start, stop in spans:
        bad = np.flatnonzero(np.asarray(tokens[start:stop]) >= vocab_size)
        if bad.size:
            where = start + int(bad[0])
            raise ShardError(
                f"shard {tokens.filename} holds token id {int(tokens[where])} at position {where:,}, outside the "
                f"model's vocabulary ({vocab_size} tokens): the shard is damaged or was tokenized otherwise; "
                f"check the folder with python -m data_prep --verify {Path(tokens.filename).parent} and prepare it "
                "again with --force")


def _foreign_shards(data_dir: Path, split: str) -> list[Path]:
    """Shards named by llm.c's convention (`<name>_<split>_NNNNNN.bin` or `<split>_NNNNNN.bin`), sorted."""
    paths = set(data_dir.glob(f"{split}_*.bin")) | set(data_dir.glob(f"*_{split}_*.bin"))
    return sorted(paths)

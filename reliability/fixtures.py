"""The shared fixtures every case starts from (built once), and the damage helpers that break
copies of them; snapshots say whether an input folder changed.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from data_prep import default_corpus
from data_prep.stdlib_corpus import write_python_corpus
from gpt_ds.atomic import file_sha256
from gpt_ds.checkpoint import CLIENT_STATE, tag_for
from gpt_ds.config_variant import write_variant
from gpt_ds.data import HEADER_BYTES, MANIFEST_NAME
from launch.quickstart import VAL_FRACTION as QUICKSTART_VAL_FRACTION
from reliability.commands import FIXTURE_TRAIN, IGNORED_NAMES, PY, TRAIN, run_ok


@dataclass(frozen=True)
class Fixtures:
    root: Path
    corpus: Path     # 8 files of stdlib sources
    data: Path       # its preparation (val fraction 0.25, several train shards)
    ds_config: Path  # zero2.json, micro-batch 4
    run: Path        # 4 steps of the 1-layer model, checkpoints step_00000002 and step_00000004
    model: Path      # run/model
    hf: Path         # model exported to Hugging Face's format
    qs_data: Path    # the quickstart's default corpus prepared as the quickstart prepares it
    env: dict[str, str] = field(compare=False, repr=False)  # every command's environment (command_env)

    def shared(self) -> list[Path]:
        return [self.corpus, self.data, self.ds_config, self.run, self.hf]


def build_fixtures(root: Path, env: dict[str, str]) -> Fixtures:
    fx_dir = root / "fixtures"
    fx_dir.mkdir(parents=True)
    corpus = write_python_corpus(fx_dir / "corpus", 8 * 48_000, files=8)
    data = fx_dir / "data"
    run_ok([PY, "-m", "data_prep", "--input", str(corpus), "--out", str(data), "--val-fraction", "0.25",
            "--shard-tokens", "40000", "--workers", "1", "--quiet"], fx_dir, env)
    ds_config = write_variant(fx_dir / "ds.json", train_micro_batch_size_per_gpu=4)
    run_dir = fx_dir / "run"
    run_ok([PY, TRAIN, "--deepspeed_config", str(ds_config), "--data", str(data), "--out", str(run_dir),
            *FIXTURE_TRAIN], fx_dir, env)
    hf = fx_dir / "hf"
    run_ok([PY, "-m", "gpt_ds.hf", "export", str(run_dir / "model"), "--out", str(hf)], fx_dir, env)
    qs_data = fx_dir / "qs_data"
    corpus_paths = [str(p) for p in default_corpus()]  # the very paths the quickstart passes
    run_ok([PY, "-m", "data_prep", "--input", *corpus_paths, "--out", str(qs_data),
            "--val-fraction", str(QUICKSTART_VAL_FRACTION), "--quiet"], fx_dir, env)
    return Fixtures(root, corpus, data, ds_config, run_dir, run_dir / "model", hf, qs_data, env)


# ---------------------------------------------------------------------------------------------
# damage


class Poison:
    """Unpickling this runs `touch MARKER`: the marker file says a loader ran code from a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def write_poison(path: Path, marker: Path, torch_format: bool = True) -> Path:
    """Replace `path` with a pickle that creates `marker` when loaded: a torch.save zip, or a raw pickle."""
    path.unlink(missing_ok=True)
    if torch_format:
        import torch

        torch.save({"module": Poison(marker), "optimizer_state_dict": Poison(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Poison(marker), protocol=2))
    return path


def truncate(path: Path, keep: float | int = 0.5) -> Path:
    """Cut `path` to a fraction of its size (float) or to a number of bytes (int)."""
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.unlink()
    path.write_bytes(data[:n])
    return path


def flip_byte(path: Path, at: float = 0.75) -> Path:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))
    return path


def edit_json(path: Path, change: Callable[[Any], Any]) -> Path:
    """Rewrite a JSON file after change(parsed) edited it in place (what change returns is ignored)."""
    value = json.loads(path.read_text())
    change(value)
    path.unlink()
    path.write_text(json.dumps(value, indent=1))
    return path


def rerecord(tag_dir: Path, name: str) -> None:
    """Make client_state.json's record of `name` match the file as it is now (an attacker's care)."""
    path = tag_dir / name

    def change(state: dict) -> None:
        state["files"][name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}

    edit_json(tag_dir / CLIENT_STATE, change)


def rewrite_shard(path: Path, tokens: Callable[[int], Iterable[int]]) -> Path:
    """Rewrite an llm.c shard with a valid header and the same token count, its tokens from tokens(n)."""
    data = path.read_bytes()
    header = data[:HEADER_BYTES]
    n = struct.unpack_from("<i", header, 8)[0]
    body = struct.pack(f"<{n}H", *tokens(n))
    path.unlink()
    path.write_bytes(header + body)
    return path


def rerecord_shard(data_dir: Path, shard: str) -> None:
    """Make the manifest's sha256 of `shard` match the file (a consistent but wrong folder)."""
    path = data_dir / shard

    def change(manifest: dict) -> None:
        for split in manifest["splits"].values():
            for entry in split["shards"]:
                if entry["name"] == shard:
                    entry["sha256"] = file_sha256(path)

    edit_json(data_dir / MANIFEST_NAME, change)


def copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED_NAMES))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dst


def tag(run_dir: Path, step: int = 4) -> Path:
    return run_dir / "checkpoints" / tag_for(step)


MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"


# ---------------------------------------------------------------------------------------------
# snapshots: has a folder changed?


def snapshot(paths: Iterable[Path], content: bool) -> dict[str, Any]:
    """Every file under `paths`: its sha256 (content=True) or (size, mtime); lock files ignored."""
    seen: dict[str, Any] = {}
    for root in paths:
        if not root.exists():
            seen[str(root)] = None
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*"))
        for p in files:
            if any(part in IGNORED_NAMES for part in p.parts):
                continue
            if p.is_dir():
                seen[str(p)] = "dir"
            elif p.is_file():
                st = p.stat()
                seen[str(p)] = file_sha256(p) if content else (st.st_size, st.st_mtime_ns)
            else:
                seen[str(p)] = "other"
    return seen


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    added = [f"+{p}" for p in after.keys() - before.keys()]
    removed = [f"-{p}" for p in before.keys() - after.keys()]
    changed = [f"~{p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    return sorted(added + removed + changed)

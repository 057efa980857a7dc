"""Benchmark: data preparation throughput against tiktoken's own batch encoder, measured in one run.

    python bench/prep_throughput.py [--mb 200] [--workers 1 2]

Builds a corpus of about --mb MB by repeating the Shakespeare corpus (../shared/corpora/shakespeare,
else the default corpus), then for each worker count N:
  * baseline: tiktoken `encode_ordinary_batch(texts, num_threads=N)` on the same documents, already
    decoded in memory (only the encode calls are timed: the baseline reads nothing and writes nothing);
  * pipeline: `python -m data_prep --workers N` end to end (process start, reading, tokenizing,
    writing shards, checksums, manifest), with the peak RSS of its whole process tree.
Prints tokens/s of both, their ratio (target >= 0.9), the peak RSS (target < 1 GB), and how each
scales from the first to the last worker count. Document tokens only (EOT delimiters excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
sys.path.insert(0, str(REPO))

from data_prep import default_corpus  # noqa: E402
from data_prep.inputs import resolve_inputs  # noqa: E402
from gpt_ds.tokenizer import get_encoding  # noqa: E402

BASELINE_BATCH_DOCS = 32  # documents per encode_ordinary_batch call: keeps the baseline's lists small


def build_corpus(folder: Path, megabytes: float) -> list[Path]:
    sources = resolve_inputs([str(p) for p in default_corpus()])
    files, total, copy = [], 0, 0
    while total < megabytes * 1e6:
        target = folder / f"copy_{copy:04d}"
        target.mkdir()
        for source in sources:
            path = target / source.name
            shutil.copyfile(source, path)
            files.append(path)
            total += path.stat().st_size
        copy += 1
    return files


def baseline(files: list[Path], threads: int) -> tuple[int, float]:
    encoding = get_encoding()
    tokens, seconds = 0, 0.0
    for start in range(0, len(files), BASELINE_BATCH_DOCS):
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in files[start : start + BASELINE_BATCH_DOCS]]
        began = time.perf_counter()
        encoded = encoding.encode_ordinary_batch(texts, num_threads=threads)
        seconds += time.perf_counter() - began
        tokens += sum(len(t) for t in encoded)
    return tokens, seconds


def pipeline(corpus: Path, out: Path, workers: int) -> tuple[int, float, int]:
    command = [sys.executable, "-m", "data_prep", "--input", str(corpus), "--out", str(out),
               "--workers", str(workers), "--quiet"]
    peak = [0]

    def watch(proc: psutil.Process) -> None:
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            try:
                tree = [proc, *proc.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)

    began = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO)
    watcher = threading.Thread(target=watch, args=(psutil.Process(proc.pid),), daemon=True)
    watcher.start()
    if proc.wait() != 0:
        sys.exit(f"bench: {' '.join(command)} failed with exit code {proc.returncode}")
    seconds = time.perf_counter() - began
    watcher.join()
    manifest = json.loads((out / "manifest.json").read_text())
    return manifest["total_tokens"] - manifest["total_documents"], seconds, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200, help="corpus size in MB (default 200)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        files = build_corpus(corpus, args.mb)
        size = sum(p.stat().st_size for p in files)
        print(f"corpus: {len(files)} files, {size / 1e6:.0f} MB (Shakespeare repeated); cores: {os.cpu_count()}")
        rates = {}
        for workers in args.workers:
            base_tokens, base_seconds = baseline(files, workers)
            tokens, seconds, rss = pipeline(corpus, Path(tmp) / f"out_{workers}", workers)
            assert tokens == base_tokens, f"token counts differ: pipeline {tokens}, tiktoken {base_tokens}"
            ours, theirs = tokens / seconds, base_tokens / base_seconds
            rates[workers] = (ours, theirs)
            print(
                f"workers={workers}: pipeline {ours / 1e6:.2f} M tokens/s ({seconds:.1f} s end to end), "
                f"tiktoken encode_ordinary_batch {theirs / 1e6:.2f} M tokens/s ({base_seconds:.1f} s), "
                f"ratio {ours / theirs:.2f}, peak RSS {rss / 2**20:.0f} MiB"
            )
        first, last = args.workers[0], args.workers[-1]
        if last != first:
            print(
                f"scaling {first} -> {last} workers: pipeline x{rates[last][0] / rates[first][0]:.2f}, "
                f"tiktoken x{rates[last][1] / rates[first][1]:.2f}"
            )


if __name__ == "__main__":
    main()

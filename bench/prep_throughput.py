"""Benchmark: data preparation throughput against tiktoken's own batch encoder, measured in one run.

    python bench/prep_throughput.py [--mb 200] [--workers 1 2] [--formats text parquet] [--repeats 3]

Builds a corpus of about --mb MB by repeating the Shakespeare corpus (../shared/corpora/shakespeare,
else the default corpus): as text files (a file a document) and as one parquet file holding the same
documents (a row a document, in row groups of ROW_GROUP_ROWS). Then for each format and worker count N,
alternating A B A B --repeats times so that a change of machine load hits both alike:
  * baseline: tiktoken `encode_ordinary_batch(texts, num_threads=N)` on the same documents, already
    decoded in memory (only the encode calls are timed: the baseline reads nothing and writes nothing);
  * pipeline: `python -m data_prep --workers N` end to end (process start, reading, tokenizing,
    writing shards, checksums, manifest), with the peak RSS of its whole process tree.
Prints the median tokens/s of both, their ratio (target >= 0.9), the largest peak RSS (target < 1 GB),
and how each scales from the first to the last worker count. Document tokens only (EOT delimiters excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken")
sys.path.insert(0, str(REPO))

from data_prep import default_corpus  # noqa: E402
from data_prep.inputs import resolve_inputs  # noqa: E402
from gpt_ds.tokenizer import get_encoding  # noqa: E402

BASELINE_BATCH_DOCS = 32  # documents per encode_ordinary_batch call: keeps the baseline's lists small
ROW_GROUP_ROWS = 64  # rows per parquet row group: about 8 MB of Shakespeare text


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


def write_parquet(files: list[Path], path: Path) -> Path:
    """The documents of `files`, in data_prep's (sorted) order, as the rows of one parquet file."""
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(files), ROW_GROUP_ROWS):
            texts = [p.read_text(encoding="utf-8", errors="replace") for p in files[start : start + ROW_GROUP_ROWS]]
            writer.write_table(pa.table({"text": texts}, schema=schema))
    return path


def text_batches(files: list[Path]):
    for start in range(0, len(files), BASELINE_BATCH_DOCS):
        yield [p.read_text(encoding="utf-8", errors="replace") for p in files[start : start + BASELINE_BATCH_DOCS]]


def parquet_batches(path: Path):
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BASELINE_BATCH_DOCS, columns=["text"]):
        yield batch.column(0).to_pylist()


def baseline(batches, threads: int) -> tuple[int, float]:
    encoding = get_encoding()
    tokens, seconds = 0, 0.0
    for texts in batches:
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
    parser.add_argument("--formats", nargs="+", choices=["text", "parquet"], default=["text", "parquet"],
                        help="corpus formats to measure (default both)")
    parser.add_argument("--repeats", type=int, default=3, help="A B pairs per measurement; medians are reported (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_data_prep_") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        files = sorted(build_corpus(corpus, args.mb), key=str)
        size = sum(p.stat().st_size for p in files)
        inputs = {"text": corpus}
        if "parquet" in args.formats:
            inputs["parquet"] = write_parquet(files, Path(tmp) / "corpus.parquet")
        print(f"corpus: {len(files)} documents, {size / 1e6:.0f} MB (Shakespeare repeated); cores: {os.cpu_count()}")
        for form in args.formats:
            rates = {}
            for workers in args.workers:
                ours, theirs, peak = [], [], 0
                for repeat in range(args.repeats):
                    batches = text_batches(files) if form == "text" else parquet_batches(inputs["parquet"])
                    base_tokens, base_seconds = baseline(batches, workers)
                    out = Path(tmp) / f"out_{form}_{workers}_{repeat}"
                    tokens, seconds, rss = pipeline(inputs[form], out, workers)
                    shutil.rmtree(out)
                    assert tokens == base_tokens, f"token counts differ: pipeline {tokens}, tiktoken {base_tokens}"
                    ours.append(tokens / seconds)
                    theirs.append(base_tokens / base_seconds)
                    peak = max(peak, rss)
                rates[workers] = (statistics.median(ours), statistics.median(theirs))
                print(
                    f"{form} workers={workers}: pipeline {rates[workers][0] / 1e6:.2f} M tokens/s end to end, "
                    f"tiktoken encode_ordinary_batch {rates[workers][1] / 1e6:.2f} M tokens/s, "
                    f"ratio {rates[workers][0] / rates[workers][1]:.2f} (medians of {args.repeats}), "
                    f"peak RSS {peak / 2**20:.0f} MiB"
                )
            first, last = args.workers[0], args.workers[-1]
            if last != first:
                print(
                    f"{form} scaling {first} -> {last} workers: pipeline x{rates[last][0] / rates[first][0]:.2f}, "
                    f"tiktoken x{rates[last][1] / rates[first][1]:.2f}"
                )


if __name__ == "__main__":
    main()

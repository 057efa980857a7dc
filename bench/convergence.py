"""Time to a validation loss: a plain PyTorch GPT-2 loop against gpt-ds (GPT-2) and gpt-ds's modern recipe.

Every contender trains the same model shape on the same prepared data, batch after batch the same
windows (gpt_ds.sampler, rank 0), and is scored on the same validation windows, every
--eval-interval steps, until its validation loss reaches --target-loss (or --max-steps):

  (a) plain   bench/baseline.py: float32, full logits, torch.optim.AdamW, no compile, no DeepSpeed
  (b) gpt2    python launch/train.py with ds_configs/zero2.json (its defaults: ZeRO-2, bf16, ...)
  (c) modern  python launch/train.py --recipe modern with ds_configs/zero2_muon.json

Time is training time (the steps; start-up, evaluation and checkpoints left out), read for gpt-ds
from its TensorBoard log (train/seconds at each evaluation), interpolated linearly between the last
evaluation above the target and the first at or below it.
A run takes minutes, so step-by-step alternation is not possible: the contenders run `--repeats` times in
mirrored order (A B C C B A), and each one's time is the median of its repeats, so a drift in the machine's
speed during the bench lands on all of them alike. Writes OUT/convergence.png (val loss against training
seconds, the first repeat) and OUT/convergence.json, and ends with the line
`time-to-target ratios vs plain: gpt2 X, modern Y`.

    python bench/convergence.py [--data DIR] [--target-loss 5.45] [--max-steps 800] [--model tiny]
                                [--repeats 2] [--device cpu|cuda] [--out runs/convergence]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.requires import require  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "corpora" / "shakespeare"


def prepare(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data)
    import data_prep

    if not SHAKESPEARE.is_dir():
        sys.exit(f"bench/convergence.py: error: no --data given and the Shakespeare corpus is not at {SHAKESPEARE}; "
                 "pass --data DIR (a folder made by python -m data_prep)")
    data = Path(args.out) / "data"
    data_prep.prepare([str(SHAKESPEARE)], data, val_fraction=0.05, verbose=False)
    return data


def plain(args: argparse.Namespace, data: Path) -> list[tuple[int, float, float]]:
    """(step, training seconds, val loss) of the plain loop, up to the target."""
    import torch

    from bench.baseline import PlainTrainer
    from gpt_ds import data as shards, sampler
    from gpt_ds.model import config_from_preset
    from gpt_ds.schedule import Schedule

    torch.set_num_threads(args.threads)
    config = config_from_preset(args.model)
    train = sampler.TokenWindows(shards.open_split(data, "train"), args.seq_len, "train")
    val = sampler.TokenWindows(shards.open_split(data, "val"), args.seq_len, "val")
    schedule = Schedule(args.lr, args.lr / 10, args.warmup, args.max_steps)
    trainer = PlainTrainer(config, train, val, args.batch, schedule, eval_tokens=args.eval_tokens, device=args.device)
    points, seconds = [], 0.0
    for step in range(args.max_steps):
        started = time.perf_counter()
        trainer.step(step)
        seconds += time.perf_counter() - started
        if (step + 1) % args.eval_interval == 0:
            points.append((step + 1, seconds, trainer.val_loss()))
            print(f"  plain   step {step + 1:5d}  {seconds:7.1f}s  val {points[-1][2]:.4f}", flush=True)
            if points[-1][2] <= args.target_loss:
                break
    return points


def gpt_ds_run(args: argparse.Namespace, data: Path, name: str, ds_config: str, extra: list[str]
               ) -> list[tuple[int, float, float]]:
    """(step, training seconds, val loss) of a launch/train.py run, read back from its TensorBoard log."""
    from gpt_ds import metrics, tags
    from gpt_ds.run_dir import RunDir

    run = RunDir(Path(args.out) / name)
    command = [sys.executable, str(REPO / "launch" / "train.py"), "--deepspeed_config", str(REPO / ds_config),
               "--data", str(data), "--out", str(run), "--resume", "never", "--model", args.model,
               "--seq-len", str(args.seq_len), "--max-steps", str(args.max_steps), "--target-loss", str(args.target_loss),
               "--eval-interval", str(args.eval_interval), "--eval-tokens", str(args.eval_tokens),
               "--log-interval", "1", "--sample-tokens", "0", "--save-interval", str(10 * args.max_steps), *extra]
    if run.root.exists():
        import shutil

        shutil.rmtree(run.root)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"bench/convergence.py: error: the {name} run failed:\n{proc.stderr[-3000:]}")
    scalars = metrics.read_scalars(run.tb)
    seconds = dict(scalars[tags.SECONDS])
    points = [(step, seconds[step], loss) for step, loss in scalars[tags.VAL_LOSS]]
    for step, secs, loss in points:
        print(f"  {name:7s} step {step:5d}  {secs:7.1f}s  val {loss:.4f}", flush=True)
    return points


def time_to_target(points: list[tuple[int, float, float]], target: float) -> float | None:
    """Training seconds at which the val loss reaches `target`: linear between the last evaluation above
    it and the first at or below it (so the evaluation interval does not round the figure)."""
    before = None
    for _, secs, loss in points:
        if loss <= target:
            if before is None:
                return secs
            (t0, l0), (t1, l1) = before, (secs, loss)
            return t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
        before = (secs, loss)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="prepared folder (default: the Shakespeare corpus of ../shared, prepared into OUT/data)")
    parser.add_argument("--out", default="runs/convergence")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="the micro-batch of ds_configs/zero2*.json (one rank)")
    parser.add_argument("--target-loss", type=float, default=5.45)
    parser.add_argument("--max-steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak lr of (a) and (b) (the modern recipe has its own)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", nargs="*", default=["plain", "gpt2", "modern"])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each contender, in mirrored order (A B C C B A)")
    args = parser.parse_args()
    require("bench/convergence.py", {"matplotlib": "bench"})  # the curves' picture, drawn at the end
    Path(args.out).mkdir(parents=True, exist_ok=True)
    data = prepare(args)
    common = ["--lr", str(args.lr), "--warmup-steps", str(args.warmup)]
    contenders = {"plain": lambda run_args, tag: plain(run_args, data),
                  "gpt2": lambda run_args, tag: gpt_ds_run(run_args, data, tag, "ds_configs/zero2.json", common),
                  "modern": lambda run_args, tag: gpt_ds_run(run_args, data, tag, "ds_configs/zero2_muon.json",
                                                             ["--recipe", "modern"])}
    order = [name for name in contenders if name in args.only]
    # A short run of each gpt-ds contender first fills torch.compile's on-disk cache (gpt_ds.cache): no timed
    # run then pays the first compile, which a cold cache adds to one repeat only.
    short = argparse.Namespace(**{**vars(args), "max_steps": args.warmup + 2, "eval_interval": args.warmup + 2})
    for name in order:
        if name != "plain":
            contenders[name](short, f"{name}-warmup")
    runs: dict[str, list] = {name: [] for name in order}
    for repeat in range(args.repeats):
        for name in order if repeat % 2 == 0 else order[::-1]:
            runs[name].append(contenders[name](args, f"{name}-{repeat + 1}"))
    each = {name: [time_to_target(points, args.target_loss) for points in repeats] for name, repeats in runs.items()}
    times = {name: statistics.median(secs) if None not in secs else None for name, secs in each.items()}
    (Path(args.out) / "convergence.json").write_text(json.dumps({"args": vars(args), "runs": runs, "seconds": each,
                                                                  "median_seconds": times}, indent=2))
    draw({name: repeats[0] for name, repeats in runs.items()}, args, Path(args.out) / "convergence.png")
    for name, secs in times.items():
        repeats = ", ".join("-" if s is None else f"{s:.1f}" for s in each[name])
        print(f"{name:7s}: " + (f"val loss {args.target_loss} after {secs:.1f}s of training (median; runs: {repeats})"
                                if secs is not None
                                else f"did not reach val loss {args.target_loss} in {args.max_steps} steps"))
    base = times.get("plain")

    def ratio(name: str) -> str:
        return f"{times[name] / base:.2f}" if base and times.get(name) is not None else "n/a"

    print(f"time-to-target ratios vs plain: gpt2 {ratio('gpt2')}, modern {ratio('modern')}")


def draw(runs: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, points in runs.items():
        ax.plot([s for _, s, _ in points], [l for _, _, l in points], marker="o", markersize=2.5, label=name)
    ax.axhline(args.target_loss, color="gray", linestyle="--", linewidth=1, label=f"target {args.target_loss}")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{args.model}, batch {args.batch} x {args.seq_len}, {args.device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()

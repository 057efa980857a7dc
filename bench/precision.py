"""What bf16 costs in loss: gpt-ds's bf16 step against the same run in fp32, beside the seed-to-seed noise.

DeepSpeed's bf16 mode keeps the weights' working copy, the activations and the residual stream in
bf16 (the fp32 master weights live in the optimizer; gpt-ds's loss is float32 either way). For each
seed, the same run (launch/train.py, ds_configs/zero2.json, the same batches of the same data) trains
once in bf16 and once with bf16 disabled (fp32); their validation losses are compared evaluation by
evaluation. The yardstick is the noise: the same comparison between two seeds of one precision. If
bf16's cost is well inside it, keeping LayerNorm statistics or the residual stream in fp32 would buy
nothing measurable at this scale.

Losses do not depend on the machine's load, so this bench may share the machine. Its last line reads
`bf16 - fp32: <d> nats (mean over evaluations and seeds); seed-to-seed: <n> nats`.

    python bench/precision.py [--data DIR] [--seeds 1337 1338] [--max-steps 300] [--model tiny] [--out runs/precision]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.convergence import REPO, gpt_ds_run, prepare  # noqa: E402
from gpt_ds.config_variant import write_variant  # noqa: E402


def fp32_config(out: Path) -> Path:
    """ds_configs/zero2.json with bf16 disabled: everything else (batch, optimizer, ZeRO) the same."""
    return write_variant(out / "zero2_fp32.json", bf16={"enabled": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="prepared folder (default: the Shakespeare corpus of ../shared, prepared into OUT/data)")
    parser.add_argument("--out", default="runs/precision")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338])
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    args.target_loss = 0.01  # never reached: every run trains --max-steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(args)
    configs = {"bf16": REPO / "ds_configs" / "zero2.json", "fp32": fp32_config(out)}
    losses: dict[tuple[str, int], list[float]] = {}
    for seed in args.seeds:
        for precision, config in configs.items():
            points = gpt_ds_run(args, data, f"{precision}_seed{seed}", str(config),
                                ["--lr", str(args.lr), "--seed", str(seed)])
            losses[precision, seed] = [loss for _, _, loss in points]
    cost = [b - f for seed in args.seeds for b, f in zip(losses["bf16", seed], losses["fp32", seed])]
    a, b = args.seeds[0], args.seeds[-1]
    noise = [abs(x - y) for p in configs for x, y in zip(losses[p, a], losses[p, b])] if a != b else []
    (out / "precision.json").write_text(json.dumps({"args": vars(args), "val_losses": {f"{p}_{s}": v for (p, s), v
                                                                                       in losses.items()}}, indent=2))
    print(f"bf16 - fp32 per evaluation: {', '.join(f'{d:+.4f}' for d in cost)}")
    print(f"bf16 - fp32: {statistics.mean(cost):+.4f} nats (mean over evaluations and seeds); seed-to-seed: "
          + (f"{statistics.mean(noise):.4f} nats" if noise else "n/a (give two --seeds)"))


if __name__ == "__main__":
    main()

"""Train a GPT with DeepSpeed: `deepspeed [--num_gpus N] launch/train.py --deepspeed_config ds_configs/zero2.json
--data DIR --out RUN_DIR [...]`, or `python launch/train.py ...` as one process (same code path).

Thin entry point: the flags are gpt_ds.settings', the loop is gpt_ds.train's.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_ds.errors import run_cli  # noqa: E402
from gpt_ds.train import main as train_main  # noqa: E402


def main() -> None:
    run_cli(lambda: train_main(sys.argv[1:]), "launch/train.py")


if __name__ == "__main__":
    main()

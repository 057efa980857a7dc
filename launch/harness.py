"""lm-evaluation-harness's own command line with the gpt-ds backend registered (console script gpt-ds-lm-eval):

    gpt-ds-lm-eval run --model gpt-ds --model_args path=RUN_DIR/model --tasks hellaswag

lm-eval 0.4.13 finds a model backend only once its module is imported; this imports gpt_ds.harness, then
hands the command line to lm-eval unchanged. lm-eval releases that read the `lm_eval.models` entry points
(declared in pyproject.toml) find `--model gpt-ds` from plain `lm_eval` too.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from gpt_ds.errors import run_cli
    from gpt_ds.evaluate import require_lm_eval

    def start() -> int:
        require_lm_eval()
        import gpt_ds.harness  # noqa: F401  (registers --model gpt-ds)
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()  # lm-eval's own exit codes and messages
        return 0

    run_cli(start, "gpt-ds-lm-eval")


if __name__ == "__main__":
    main()

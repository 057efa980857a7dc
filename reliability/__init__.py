"""Reliability sweep: bad inputs into every command, run as a hostile user would, and kill -9 trials.

    python -m reliability [--out DIR] [--kill-trials N] [--only GROUP[,GROUP...]]
                          [--match TEXT] [--jobs J] [--seed S] [--keep]

What it checks. Every case is a real subprocess of a real command line (launch/train.py, the deepspeed
launcher, `python -m data_prep`, `python -m gpt_ds.export`, `python -m gpt_ds.hf export|import`,
launch/sample.py, launch/eval.py, launch/quickstart.py, launch/submit.py --dry-run / --cluster local) after a setup that
damages something: bad flag values (nan, inf, negative, 0, strings), missing or wrong paths, a file where
a folder is expected and the reverse, malformed or mistyped or misspelt DeepSpeed configs, corrupt
manifests, truncated / overwritten / foreign shards and shards with out-of-vocabulary tokens, truncated,
altered and pickle-poisoned checkpoint files (their `__reduce__` would create a marker file), a
client_state.json that is not JSON, `latest` pointing nowhere, model folders with a broken config.json,
a changed n_head or truncated safetensors, output folders equal to (inside, above) their inputs, two
concurrent runs into one folder, --resume pointing at odd places. Each outcome is one of

- clear:          a non-zero exit, exactly one line containing "error:" (stdout and stderr together) and
                  no traceback. For the few inputs the README documents as a warning (altered weights, a
                  DeepSpeed key DeepSpeed ignores) exit 0 with exactly one "warning:" line is clear too;
- traceback:      "Traceback (most recent call last)" anywhere in the output;
- silently wrong: exit 0 although the input was bad, or a poisoned pickle's marker file appeared, or a
                  folder that was an input changed (shared fixtures included);
- other:          anything else, with the reason (several error lines, none, a hang past the timeout: then
                  the command's process group gets SIGABRT first, so that faulthandler prints its stacks).
Some cases carry a note for whoever judges them (e.g. the damage included forging a checksum record).

Kill -9 trials (--kill-trials N, default 5; --seed S fixes the moments): a tiny 2-rank training run (the
deepspeed launcher, 16 steps, a checkpoint every 2) is SIGKILLed as a process group at a random moment
between its first and its last checkpoint (timed on the same command run uninterrupted), then the same
command is run again to the end; its model.safetensors must equal, byte for byte, the uninterrupted
run's. Likewise `python -m data_prep` (2 workers) is SIGKILLed at a random moment while it writes shards
and rerun: every file of its output folder must equal those of the uninterrupted preparation. A kill that
lands after the work it should interrupt (the last checkpoint, the manifest) is drawn again, up to 3 times.

Fixtures are built under --out (default: a new temporary folder): a corpus cut from the Python standard
library's sources (data_prep.stdlib_corpus, as the tests), its preparation by data_prep, a 1-layer 32-wide model
trained 4 steps by launch/train.py (checkpoints at steps 2 and 4) and its model folder, that folder
exported to Hugging Face's format, and the quickstart's default corpus prepared as the quickstart does.
Cases damage copies, never the fixtures. The output is a table of every case, the summary line

    bad inputs: N tried, C clear errors, T tracebacks, S silently wrong, O other; kill -9: K/K resumes bit-identical, P/P preparations identical

and DIR/reliability.json with every case's command, outcome, exit code and output excerpt, the kill
trials, and the git commit (and changed files) the sweep ran on. Groups for --only: train, dsconfig, data,
resume, data_prep, export, sample, eval, hf, quickstart, submit, kill-train, kill-prep; --match TEXT keeps the
cases whose "group: name" contains TEXT (to rerun one). --jobs J cases run at once (default 2). Without
--keep the fixtures and case folders are removed at the end. About 12 minutes on 2 CPU cores. Set
TIKTOKEN_CACHE_DIR for offline use (../shared/tiktoken beside the repository is used where present).
"""

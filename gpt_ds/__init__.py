"""gpt-ds: train GPT-style language models from scratch with DeepSpeed.

The library behind the entry points in launch/ and the app in app/. The modules, in the order a run
flows through them:

- data (prepared by data_prep/): tokenizer (tiktoken's GPT-2 BPE), data (token shards and their
  manifest), sampler (batches as a function of (seed, step)), prefetch (the next micro-batch on its
  way to the device).
- the model: model_config (GPTConfig and the presets; no torch), model (the transformer), linear (its
  matrix products: oneDNN's on the CPU without autograd), loss (the chunked head and cross-entropy),
  recipes (switches turned on together).
- the run's settings: settings (the command line: RunSettings), ds_config (the DeepSpeed JSON, read
  once and resolved), ds_keys (its keys against DeepSpeed's readers), config_variant (a shipped config
  with a few keys changed, for tests and benches), plan (every check before any rank starts: the Plan),
  schedule (the learning rate as a function of the step).
- starting the ranks: distributed (rank, world size, collectives, the watchdog), hardware (what the
  accelerator can do), host_memory (malloc keeps freed memory for the next step), lock (one run per
  folder), engine (the model inside DeepSpeed, Muon's wiring), zero_step (DeepSpeed's ZeRO step with
  fewer passes over the gradients), patching (the named swaps of a library's attribute).
- the loop: train (start, the step, the loop, the end), monitor (what a step reports, the target, the
  divergence guard), metrics (TensorBoard, throughput and MFU), tags (the TensorBoard tags),
  validate (the validation loss, bits per byte, multiple-choice scores and text samples), bpb (each
  token's bytes, bits per byte), mc_eval (multiple-choice files scored as lm-eval does), record (the
  run's progress).
- the run folder: run_dir (every path a run writes), checkpoint (save, verify, resume, prune),
  reshard (resume on another number of ranks or ZeRO stage), safe_load (checkpoint loads that run no
  code), atomic (writes that are whole or absent), json_object (a JSON file read or one clear error),
  cache (GPT_DS_CACHE_DIR: the measured peak, torch.compile's caches).
- the trained model: export (a checkpoint into a model folder), model_io (the model folder and its
  loader), generate (decoding with a key/value cache), inference (what launch/sample.py and the app
  share), hf (Hugging Face GPT-2 folders in and out), hf_tokenizer (r50k_base as GPT-2's tokenizer
  files).
- judging the model: harness (the lm-evaluation-harness backend), evaluate (what launch/eval.py runs:
  lm-eval tasks, bits per byte of a text), eval_results (MODEL_DIR/evals, read by the card).
- clusters: slurm_submit (a job sent to Slurm, or run as local processes), slurm_task (what each of its
  tasks runs).
- everywhere: errors (UserError, one line and a non-zero exit: run_cli).
"""

__version__ = "0.1.0"

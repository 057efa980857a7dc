"""TensorBoard tags of a training run (docs/design.md, "TensorBoard tags"): written by gpt_ds.metrics,
read by the app and the tests. A tag is spelled here and nowhere else."""

TRAIN_LOSS = "train/loss"
TRAIN_LOSS_SMOOTHED = "train/loss_smoothed"
LR = "train/lr"
GRAD_NORM = "train/grad_norm"
LOSS_SCALE = "train/loss_scale"
TOKENS_PER_SEC = "train/tokens_per_sec"
MFU = "train/mfu"
STEP_TIME = "train/step_time"
MEMORY_GIB = "train/memory_gib"  # the largest over the ranks
MEMORY_GIB_OF_RANK = "memory/rank_{rank}_gib"  # each rank's, in runs of several ranks (memory_of_rank)
TOKENS = "train/tokens"
SECONDS = "train/seconds"  # training time so far (steps only: no start-up, evaluation or checkpoints)
VAL_LOSS = "val/loss"
VAL_BPB = "val/bpb"  # bits per byte (gpt_ds.bpb)
EVAL_ACC = "eval/{task}/acc"  # --eval-tasks: a file's accuracy (gpt_ds.mc_eval; task = the file's stem)
EVAL_ACC_NORM = "eval/{task}/acc_norm"  # the same, length-normalised as lm-evaluation-harness does
ETA_STEPS = "eta/steps_to_target"
ETA_SECONDS = "eta/seconds_to_target"
TARGET_LOSS = "target/loss"
TARGET_STEP = "target/step"
TARGET_TOKENS = "target/tokens"

SAMPLE = "sample"  # text: a generated sample at each evaluation
SETTINGS = "run/settings"  # text: the run's settings, at its start


def memory_of_rank(rank: int) -> str:
    return MEMORY_GIB_OF_RANK.format(rank=rank)


def eval_acc(task: str) -> str:
    return EVAL_ACC.format(task=task)


def eval_acc_norm(task: str) -> str:
    return EVAL_ACC_NORM.format(task=task)

"""The bad-input cases, by group: what each damages and which command it runs on the damage."""

from __future__ import annotations

import gzip
import random
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from data_prep.stdlib_corpus import stdlib_text, write_python_corpus
from gpt_ds.config_variant import ZERO2, write_variant
from gpt_ds.data import IN_PROGRESS_NAME
from gpt_ds.distributed import launcher_command
from reliability.commands import (
    EVAL,
    PY,
    QUICK_TRAIN,
    QUICKSTART,
    RESUME_TRAIN,
    SAMPLE,
    SUBMIT,
    TIMEOUT_S,
    TRAIN,
    ZERO2_FP16,
    start,
)
from reliability.fixtures import (
    MODEL_STATES,
    OPTIM_STATES,
    Fixtures,
    copy,
    edit_json,
    flip_byte,
    rerecord,
    rerecord_shard,
    rewrite_shard,
    tag,
    truncate,
    write_poison,
)


@dataclass
class Prepared:
    """What a case runs, once its setup is done."""

    argv: list[str]
    watch: list[Path] = field(default_factory=list)  # inputs that must be byte-identical afterwards
    marker: Path | None = None                       # must never appear
    background: subprocess.Popen | None = None       # a run holding the folder (killed afterwards)
    timeout: float = TIMEOUT_S


Setup = Callable[[Fixtures, Path], Prepared]


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    setup: Setup
    expect: str = "error"  # "warning": exit 0 with one warning: line is documented and counts as clear
    note: str = ""         # what to know when judging the outcome (e.g. the damage needs a forged record)


@dataclass
class Outcome:
    group: str
    name: str
    command: str
    outcome: str  # clear | traceback | silently wrong | other
    detail: str   # for "other" and "silently wrong": why; for the rest, the first error line
    rc: int | None
    seconds: float
    excerpt: str
    note: str = ""


def train_cmd(fx: Fixtures, out: Path, *flags: str, data: Path | None = None, config: Path | None = None,
              base: list[str] = QUICK_TRAIN) -> list[str]:
    return [PY, TRAIN, "--deepspeed_config", str(config or fx.ds_config), "--data", str(data or fx.data),
            "--out", str(out), *base, *flags]


def train_flag(name: str, *flags: str) -> Case:
    return Case("train", name, lambda fx, w: Prepared(train_cmd(fx, w / "run", *flags)))


def train_cases() -> list[Case]:
    flags = [
        ("max-steps 0", "--max-steps", "0"), ("max-steps negative", "--max-steps", "-5"),
        ("max-steps nan", "--max-steps", "nan"), ("max-steps 1e3", "--max-steps", "1e3"),
        ("lr nan", "--lr", "nan"), ("lr inf", "--lr", "inf"), ("lr negative", "--lr", "-1"),
        ("lr string", "--lr", "fast"), ("min-lr negative", "--min-lr", "-0.1"), ("min-lr nan", "--min-lr", "nan"),
        ("min-lr above lr", "--lr", "1e-3", "--min-lr", "1"),
        ("target-loss nan", "--target-loss", "nan"), ("target-loss negative", "--target-loss", "-1"),
        ("warmup-steps negative", "--warmup-steps", "-1"), ("warmup-steps past the schedule", "--warmup-steps", "100"),
        ("lr-decay-steps 0", "--lr-decay-steps", "0"), ("lr-decay-steps negative", "--lr-decay-steps", "-3"),
        ("eval-interval 0", "--eval-interval", "0"), ("eval-interval negative", "--eval-interval", "-1"),
        ("eval-tokens 0", "--eval-tokens", "0"), ("eval-tokens negative", "--eval-tokens", "-1"),
        ("save-interval 0", "--save-interval", "0"), ("save-interval negative", "--save-interval", "-2"),
        ("keep-checkpoints 0", "--keep-checkpoints", "0"), ("keep-checkpoints negative", "--keep-checkpoints", "-1"),
        ("seed string", "--seed", "abc"),
        ("log-interval 0", "--log-interval", "0"), ("sample-tokens negative", "--sample-tokens", "-1"),
        ("peak-tflops 0", "--peak-tflops", "0"), ("peak-tflops nan", "--peak-tflops", "nan"),
        ("peak-tflops negative", "--peak-tflops", "-1"),
        ("n-head not dividing n-embd", "--n-head", "3"), ("n-layer 0", "--n-layer", "0"),
        ("n-embd negative", "--n-embd", "-32"), ("n-head 0", "--n-head", "0"), ("block-size 0", "--block-size", "0"),
        ("seq-len above block-size", "--seq-len", "64"), ("seq-len 0", "--seq-len", "0"),
        ("unknown preset", "--model", "gpt5"),
        ("decay-fraction 0", "--schedule", "wsd", "--decay-fraction", "0"),
        ("decay-fraction 1.5", "--schedule", "wsd", "--decay-fraction", "1.5"),
        ("decay-fraction nan", "--schedule", "wsd", "--decay-fraction", "nan"),
        ("logit-softcap negative", "--logit-softcap", "-1"), ("logit-softcap nan", "--logit-softcap", "nan"),
        ("recipe modern without Muon config", "--recipe", "modern"),
        ("misspelt flag", "--max-stpes", "2"), ("unknown schedule", "--schedule", "linear"),
    ]
    cases = [train_flag(name, *values) for name, *values in flags]

    def paths(name: str, make: Callable[[Fixtures, Path], list[str]]) -> Case:
        return Case("train", name, lambda fx, w: Prepared(make(fx, w), watch=[fx.data]))

    cases += [
        paths("data missing", lambda fx, w: train_cmd(fx, w / "run", data=w / "nope")),
        paths("data is a file (a shard)", lambda fx, w: train_cmd(fx, w / "run", data=fx.data / "train_000000.bin")),
        paths("data is an empty folder", lambda fx, w: train_cmd(fx, w / "run", data=mkdir(w / "empty"))),
        paths("data is the raw corpus", lambda fx, w: train_cmd(fx, w / "run", data=fx.corpus)),
        paths("data is a run folder", lambda fx, w: train_cmd(fx, w / "run", data=fx.run)),
        paths("out is a file", lambda fx, w: train_cmd(fx, touch(w / "file"))),
        paths("out under a file", lambda fx, w: train_cmd(fx, touch(w / "file") / "run")),
        Case("train", "out equal to data", out_equal_to_data),
        Case("train", "out inside data", lambda fx, w: out_equal_to_data(fx, w, sub="run")),
        paths("deepspeed_config missing", lambda fx, w: train_cmd(fx, w / "run", config=w / "nope.json")),
        paths("deepspeed_config is a folder", lambda fx, w: train_cmd(fx, w / "run", config=mkdir(w / "cfg"))),
        paths("deepspeed_config is a shard", lambda fx, w: train_cmd(fx, w / "run",
                                                                     config=fx.data / "train_000000.bin")),
        Case("train", "a second run into a folder in use", concurrent_train),
    ]
    return cases


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def touch(path: Path, text: str = "not a folder\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def out_equal_to_data(fx: Fixtures, w: Path, sub: str = "") -> Prepared:
    data = copy(fx.data, w / "data")
    return Prepared(train_cmd(fx, data / sub if sub else data, data=data), watch=[data])


def concurrent_train(fx: Fixtures, w: Path) -> Prepared:
    """A long run holds w/run; the case is the second run into it."""
    out = w / "run"
    first = start(train_cmd(fx, out, "--max-steps", "100000", "--save-interval", "100000", "--eval-interval",
                            "100000"), w, fx.env)
    wait_for(out / "settings.json", first, 120)
    return Prepared(train_cmd(fx, out), background=first)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def dsconfig_case(name: str, damage: Callable[[dict], Any] | str, *flags: str, ranks: int = 1,
                  expect: str = "error", base: Path = ZERO2) -> Case:
    """launch/train.py with a DeepSpeed JSON changed by damage(config) or replaced by the text `damage`."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        path = w / "ds.json"
        if isinstance(damage, str):
            path.write_text(damage)
        else:
            write_variant(path, base, damage, train_micro_batch_size_per_gpu=4)
        args = train_cmd(fx, w / "run", *flags, config=path)[2:]
        argv = launcher_command(ranks, TRAIN, args) if ranks > 1 else [PY, TRAIN, *args]
        return Prepared(argv, watch=[path])

    return Case("dsconfig", name, setup, expect)


def set_in(*keys: str, value: Any) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return change


def rename_key(section: str | None, old: str, new: str) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        node = config[section] if section else config
        node[new] = node.pop(old)

    return change


def dsconfig_cases() -> list[Case]:
    text = ZERO2.read_text()
    return [
        dsconfig_case("not JSON (truncated)", text[: len(text) // 2]),
        dsconfig_case("empty file", ""),
        dsconfig_case("a JSON list", "[1, 2, 3]"),
        dsconfig_case("JSON null", "null"),
        dsconfig_case("micro-batch a string", set_in("train_micro_batch_size_per_gpu", value="8")),
        dsconfig_case("micro-batch 0", set_in("train_micro_batch_size_per_gpu", value=0)),
        dsconfig_case("micro-batch negative", set_in("train_micro_batch_size_per_gpu", value=-4)),
        dsconfig_case("micro-batch 2.5", set_in("train_micro_batch_size_per_gpu", value=2.5)),
        dsconfig_case("accumulation 0", set_in("gradient_accumulation_steps", value=0)),
        dsconfig_case("train_batch_size not divisible", set_in("train_batch_size", value=7)),
        dsconfig_case("ZeRO stage 0", set_in("zero_optimization", "stage", value=0)),
        dsconfig_case("ZeRO stage a string", set_in("zero_optimization", "stage", value="two")),
        dsconfig_case("ZeRO stage 7", set_in("zero_optimization", "stage", value=7)),
        dsconfig_case("zero_optimization a list", set_in("zero_optimization", value=[2])),
        dsconfig_case("misspelt key in zero_optimization", rename_key("zero_optimization", "overlap_comm",
                                                                      "overlap_com")),
        dsconfig_case("misspelt top-level key (warned)", set_in("wall_clock_breakdwn", value=False), expect="warning"),
        dsconfig_case("misspelt top-level key, --strict-config", set_in("wall_clock_breakdwn", value=False),
                      "--strict-config"),
        dsconfig_case("optimizer type unknown", set_in("optimizer", "type", value="Adamm")),
        dsconfig_case("optimizer lr a string", set_in("optimizer", "params", "lr", value="fast")),
        dsconfig_case("optimizer lr NaN", set_in("optimizer", "params", "lr", value=float("nan"))),
        dsconfig_case("optimizer lr negative", set_in("optimizer", "params", "lr", value=-1e-3)),
        dsconfig_case("optimizer betas one value", set_in("optimizer", "params", "betas", value=[0.9])),
        dsconfig_case("optimizer betas a string", set_in("optimizer", "params", "betas", value="0.9,0.95")),
        dsconfig_case("optimizer betas above 1", set_in("optimizer", "params", "betas", value=[1.5, 0.95])),
        dsconfig_case("optimizer eps negative", set_in("optimizer", "params", "eps", value=-1e-8)),
        dsconfig_case("optimizer weight_decay negative", set_in("optimizer", "params", "weight_decay", value=-0.1)),
        dsconfig_case("misspelt optimizer param", rename_key("optimizer", "params", "parms")),
        dsconfig_case("bf16 enabled a string", set_in("bf16", "enabled", value="yes")),
        dsconfig_case("bf16 and fp16 both on", set_in("fp16", "enabled", value=True)),
        dsconfig_case("a scheduler section", set_in("scheduler", value={"type": "WarmupLR", "params": {}})),
        dsconfig_case("gradient_clipping a string", set_in("gradient_clipping", value="none")),
        dsconfig_case("gradient_clipping negative", set_in("gradient_clipping", value=-1.0)),
        dsconfig_case("fp16 config on a CPU", lambda c: None, base=ZERO2_FP16),
        dsconfig_case("2 ranks: not JSON", text[: len(text) // 2], ranks=2),
        dsconfig_case("2 ranks: train_batch_size 3", set_in("train_batch_size", value=3), ranks=2),
        dsconfig_case("2 ranks: misspelt key in zero_optimization",
                      rename_key("zero_optimization", "overlap_comm", "overlap_com"), ranks=2),
    ]


def data_case(name: str, damage: Callable[[Path], Any], *, verify: bool = False, flags: tuple[str, ...] = (),
              expect: str = "error") -> Case:
    """Training (or `data_prep --verify`) on a copy of the prepared folder changed by damage(folder)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        data = copy(fx.data, w / "data")
        damage(data)
        argv = [PY, "-m", "data_prep", "--verify", str(data)] if verify else train_cmd(fx, w / "run", *flags,
                                                                                       data=data)
        return Prepared(argv, watch=[data])

    return Case("data", name, setup, expect)


def oov(value: int) -> Callable[[int], list[int]]:
    return lambda n: [value if i % 7 == 3 else 198 for i in range(n)]


def foreign(n: int) -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(50257) for _ in range(n)]


def data_cases() -> list[Case]:
    shard, val = "train_000000.bin", "val_000000.bin"
    damages: list[tuple[str, Callable[[Path], Any]]] = [
        ("manifest not JSON", lambda d: truncate(d / "manifest.json", 0.5)),
        ("manifest a JSON list", lambda d: (d / "manifest.json").write_text("[]")),
        ("manifest without splits", lambda d: edit_json(d / "manifest.json", lambda m: m.pop("splits"))),
        ("manifest token count wrong", lambda d: edit_json(
            d / "manifest.json", lambda m: m["splits"]["train"]["shards"][0].update(tokens=123))),
        ("manifest vocab_size a string", lambda d: edit_json(d / "manifest.json", lambda m: m.update(vocab_size="x"))),
        ("manifest names a missing shard", lambda d: (d / shard).unlink()),
        ("interrupted preparation (no manifest, marker)", lambda d: (
            (d / "manifest.json").rename(d / ".prepare-in-progress.json"))),
        ("shard truncated", lambda d: truncate(d / shard, 0.5)),
        ("shard shorter than its header", lambda d: truncate(d / shard, 10)),
        ("shard overwritten with zeros", lambda d: (d / shard).write_bytes(bytes((d / shard).stat().st_size))),
        ("shard header count altered", lambda d: patch(d / shard, 8, struct.pack("<i", 5))),
        ("shard header magic altered", lambda d: patch(d / shard, 0, struct.pack("<i", 1234))),
        ("val shard deleted", lambda d: (d / val).unlink()),
        ("foreign shard (same size, other tokens)", lambda d: rewrite_shard(d / shard, foreign)),
        ("shard with tokens past the vocabulary", lambda d: rewrite_shard(d / shard, oov(65535))),
        ("shard with tokens in the padding rows", lambda d: rewrite_shard(d / shard, oov(50300))),
        ("shard with out-of-vocabulary tokens, manifest re-hashed",
         lambda d: (rewrite_shard(d / shard, oov(65535)), rerecord_shard(d, shard))),
        ("val shard with out-of-vocabulary tokens, manifest re-hashed",
         lambda d: (rewrite_shard(d / val, oov(60000)), rerecord_shard(d, val))),
    ]
    cases = [data_case(name, damage) for name, damage in damages]
    cases.append(data_case("foreign shard, --verify-data", lambda d: rewrite_shard(d / shard, foreign),
                           flags=("--verify-data",)))
    verify = ["manifest not JSON", "shard truncated", "shard overwritten with zeros",
              "foreign shard (same size, other tokens)", "shard with out-of-vocabulary tokens, manifest re-hashed",
              "manifest names a missing shard"]
    cases += [data_case(f"data_prep --verify: {name}", damage, verify=True)
              for name, damage in damages if name in verify]
    return cases


def patch(path: Path, offset: int, data: bytes) -> Path:
    content = bytearray(path.read_bytes())
    content[offset:offset + len(data)] = data
    path.unlink()
    path.write_bytes(bytes(content))
    return path


def resume_case(name: str, damage: Callable[[Path, Path], Any], *flags: str, group: str = "resume",
                resume: Callable[[Path, Path], str] | None = None, note: str = "") -> Case:
    """Continue a copy of the fixture run (to step 6) after damage(run_copy, marker)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        run_dir = copy(fx.run, w / "run")
        marker = w / "MARKER"
        damage(run_dir, marker)
        extra = ["--resume", resume(run_dir, w)] if resume else []
        argv = train_cmd(fx, run_dir, *extra, *flags, base=RESUME_TRAIN)
        # a resume adds checkpoints, moves `latest` and prunes step 2 (keep-last-2); the tag it resumes from
        # must stay as it was
        return Prepared(argv, watch=[tag(run_dir, 4)], marker=marker)

    return Case(group, name, setup, note=note)


def nothing(run_dir: Path, marker: Path) -> None:
    pass


def checkpoint_damages() -> list[tuple[str, Callable[[Path, Path], Any]]]:
    """Damage to a run's newest checkpoint, shared by the resume and export cases."""
    t = tag
    return [
        ("latest points nowhere", lambda r, m: (r / "checkpoints" / "latest").write_text("step_99999999")),
        ("latest empty", lambda r, m: (r / "checkpoints" / "latest").write_text("")),
        ("latest points outside", lambda r, m: (r / "checkpoints" / "latest").write_text("../../run")),
        ("latest is a folder", lambda r, m: ((r / "checkpoints" / "latest").unlink(),
                                             (r / "checkpoints" / "latest").mkdir())),
        ("client_state.json not JSON", lambda r, m: truncate(t(r) / "client_state.json", 0.5)),
        ("client_state.json a JSON list", lambda r, m: (t(r) / "client_state.json").write_text("[]")),
        ("client_state.json deleted", lambda r, m: (t(r) / "client_state.json").unlink()),
        ("model states truncated", lambda r, m: truncate(t(r) / MODEL_STATES, 0.5)),
        ("model states truncated, re-recorded", lambda r, m: (truncate(t(r) / MODEL_STATES, 0.5),
                                                              rerecord(t(r), MODEL_STATES))),
        ("optimizer states truncated", lambda r, m: truncate(t(r) / OPTIM_STATES, 0.3)),
        ("model states byte flipped", lambda r, m: flip_byte(t(r) / MODEL_STATES)),
        ("optimizer states of another step", lambda r, m: shutil.copyfile(tag(r, 2) / OPTIM_STATES,
                                                                           t(r) / OPTIM_STATES)),
        ("optimizer states of another step, re-recorded", lambda r, m: (
            shutil.copyfile(tag(r, 2) / OPTIM_STATES, t(r) / OPTIM_STATES), rerecord(t(r), OPTIM_STATES))),
        ("optimizer states deleted", lambda r, m: (t(r) / OPTIM_STATES).unlink()),
        ("poisoned model states", lambda r, m: write_poison(t(r) / MODEL_STATES, m)),
        ("poisoned model states, re-recorded", lambda r, m: (write_poison(t(r) / MODEL_STATES, m),
                                                             rerecord(t(r), MODEL_STATES))),
        ("poisoned optimizer states, re-recorded", lambda r, m: (write_poison(t(r) / OPTIM_STATES, m),
                                                                 rerecord(t(r), OPTIM_STATES))),
        ("raw-pickle model states, re-recorded", lambda r, m: (write_poison(t(r) / MODEL_STATES, m, False),
                                                               rerecord(t(r), MODEL_STATES))),
        ("checkpoint without its file record", lambda r, m: (
            edit_json(t(r) / "client_state.json", lambda s: s.pop("files")), write_poison(t(r) / OPTIM_STATES, m))),
    ]


def resume_cases() -> list[Case]:
    cases = [resume_case(name, damage) for name, damage in checkpoint_damages()]
    cases += [
        resume_case("another n_head", nothing, "--n-head", "4"),
        resume_case("another width", nothing, "--n-embd", "64"),
        resume_case("resume never into a run with checkpoints", nothing, "--resume", "never"),
        resume_case("resume PATH missing", nothing, resume=lambda r, w: str(w / "nope")),
        resume_case("resume PATH a file", nothing, resume=lambda r, w: str(tag(r) / MODEL_STATES)),
        resume_case("resume PATH the data folder", nothing, resume=lambda r, w: str(w.parents[1] / "fixtures/data")),
        resume_case("resume PATH the model folder", nothing, resume=lambda r, w: str(r / "model")),
        resume_case("resume PATH an empty string", nothing, resume=lambda r, w: ""),
        resume_case("resume PATH a tag with bad client_state",
                    lambda r, m: truncate(tag(r, 2) / "client_state.json", 0.5),
                    resume=lambda r, w: str(tag(r, 2))),
        resume_case("resume PATH a poisoned tag of another folder",
                    lambda r, m: (copy(tag(r, 2), r.parent / "elsewhere" / "step_00000002"),
                                  write_poison(r.parent / "elsewhere" / "step_00000002" / MODEL_STATES, m),
                                  rerecord(r.parent / "elsewhere" / "step_00000002", MODEL_STATES)),
                    resume=lambda r, w: str(w / "elsewhere" / "step_00000002")),
    ]
    return cases


def data_prep_case(name: str, make: Callable[[Fixtures, Path], list[str]], watch: Callable[[Fixtures, Path],
                   list[Path]] = lambda fx, w: []) -> Case:
    def setup(fx: Fixtures, w: Path) -> Prepared:
        argv = [PY, "-m", "data_prep", *make(fx, w)]
        return Prepared(argv, watch=watch(fx, w))

    return Case("data_prep", name, setup)


def corpus_copy(fx: Fixtures, w: Path) -> Path:
    return copy(fx.corpus, w / "corpus") if not (w / "corpus").exists() else w / "corpus"


def write_file(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def data_prep_cases() -> list[Case]:
    def prep(*flags: str) -> Callable[[Fixtures, Path], list[str]]:
        return lambda fx, w: ["--input", str(fx.corpus), "--out", str(w / "out"), "--workers", "1", *flags]

    def inp(make_input: Callable[[Path], Path], *flags: str) -> Callable[[Fixtures, Path], list[str]]:
        return lambda fx, w: ["--input", str(make_input(w)), "--out", str(w / "out"), "--workers", "1", *flags]

    text = "def f():\n    return 1\n"
    cases = [
        data_prep_case("no arguments", lambda fx, w: []),
        data_prep_case("input missing", inp(lambda w: w / "nope")),
        data_prep_case("glob matching nothing", lambda fx, w: ["--input", str(w / "*.nothing"), "--out", str(w / "o")]),
        data_prep_case("input an empty folder", inp(lambda w: mkdir(w / "empty"))),
        data_prep_case("input only empty files", inp(lambda w: (write_file(w / "c/a.txt", ""),
                                                                write_file(w / "c/b.txt", ""))[0].parent)),
        data_prep_case("input only a binary file", inp(lambda w: write_file(w / "c/x.bin", bytes(range(256)) * 64))),
        data_prep_case("binary file under --strict", inp(lambda w: (write_file(w / "c/a.py", text),
                                                                    write_file(w / "c/x.bin", bytes(4096)))[0].parent,
                                                         "--strict")),
        data_prep_case("invalid UTF-8 under --strict", inp(lambda w: write_file(w / "c/a.py", b"ok\n\xff\xfe bad\n"),
                                                           "--strict")),
        data_prep_case("jsonl line not JSON", inp(lambda w: write_file(w / "c/a.jsonl", '{"text": "a"}\n{oops\n'))),
        data_prep_case("jsonl line not an object", inp(lambda w: write_file(w / "c/a.jsonl", '{"text": "a"}\n[1]\n'))),
        data_prep_case("jsonl without the field", inp(lambda w: write_file(w / "c/a.jsonl", '{"body": "a"}\n'))),
        data_prep_case("jsonl field not a string", inp(lambda w: write_file(w / "c/a.jsonl", '{"text": 5}\n'))),
        data_prep_case("jsonl field empty name", inp(lambda w: write_file(w / "c/a.jsonl", '{"text": "a"}\n'),
                                                     "--jsonl-field", "")),
        data_prep_case("corrupt gzip", inp(lambda w: write_file(w / "c/a.txt.gz", b"\x1f\x8b\x08\x00garbage" * 50))),
        data_prep_case("truncated gzip", inp(lambda w: write_file(w / "c/a.txt.gz", gzip.compress(
            stdlib_text()[:200_000])[:5000]))),
        data_prep_case("out is a file", lambda fx, w: ["--input", str(fx.corpus), "--out", str(touch(w / "f"))]),
        data_prep_case("out under a file", lambda fx, w: ["--input", str(fx.corpus), "--out",
                                                          str(touch(w / "f") / "d")]),
        data_prep_case("out equal to the input", lambda fx, w: ["--input", str(corpus_copy(fx, w)), "--out",
                                                                str(w / "corpus"), "--workers", "1"],
                       watch=lambda fx, w: [corpus_copy(fx, w)]),
        data_prep_case("out inside the input", lambda fx, w: ["--input", str(corpus_copy(fx, w)), "--out",
                                                              str(w / "corpus" / "prepared"), "--workers", "1"],
                       watch=lambda fx, w: [corpus_copy(fx, w)]),
        data_prep_case("input a prepared folder, out the same", lambda fx, w: [
            "--input", str(copy(fx.data, w / "data")), "--out", str(w / "data"), "--workers", "1"],
            watch=lambda fx, w: [w / "data"]),
        data_prep_case("val-fraction 1.5", prep("--val-fraction", "1.5")),
        data_prep_case("val-fraction negative", prep("--val-fraction", "-0.1")),
        data_prep_case("val-fraction nan", prep("--val-fraction", "nan")),
        data_prep_case("shard-tokens 0", prep("--shard-tokens", "0")),
        data_prep_case("shard-tokens negative", prep("--shard-tokens", "-1")),
        data_prep_case("shard-tokens a string", prep("--shard-tokens", "1M")),
        data_prep_case("workers 0", prep("--workers", "0")),
        data_prep_case("workers negative", prep("--workers", "-2")),
        data_prep_case("seed a string", prep("--seed", "abc")),
        data_prep_case("encoding too large for uint16", prep("--encoding", "cl100k_base")),
        data_prep_case("encoding unknown", prep("--encoding", "nonsense")),
        data_prep_case("verify a missing folder", lambda fx, w: ["--verify", str(w / "nope")]),
        data_prep_case("verify a file", lambda fx, w: ["--verify", str(fx.data / "manifest.json")]),
        data_prep_case("verify an empty folder", lambda fx, w: ["--verify", str(mkdir(w / "empty"))]),
        data_prep_case("verify the raw corpus", lambda fx, w: ["--verify", str(fx.corpus)]),
        data_prep_case("a different preparation in out", lambda fx, w: [
            "--input", str(fx.corpus), "--out", str(copy(fx.data, w / "data")), "--val-fraction", "0.25",
            "--shard-tokens", "40000", "--workers", "1", "--seed", "7"], watch=lambda fx, w: [w / "data"]),
        Case("data_prep", "a second preparation into a folder in use", concurrent_prep),
    ]
    return cases


def concurrent_prep(fx: Fixtures, w: Path) -> Prepared:
    """A long preparation (a 48 MB corpus, 1 worker) holds w/out; the case is a second one into it."""
    corpus = write_python_corpus(w / "big", 48_000_000, files=24)
    argv = [PY, "-m", "data_prep", "--input", str(corpus), "--out", str(w / "out"), "--workers", "1", "--quiet"]
    first = start(argv, w, fx.env)
    wait_for(w / "out" / IN_PROGRESS_NAME, first, 60)
    return Prepared(argv, background=first)


def export_case(name: str, damage: Callable[[Path, Path], Any], *flags: str | Callable[[Path, Path], str],
                run_arg: Callable[[Path, Path], Path] | None = None) -> Case:
    """`python -m gpt_ds.export` of a copy of the fixture run after damage(run_copy, marker)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        run_dir = copy(fx.run, w / "run")
        shutil.rmtree(run_dir / "model")
        marker = w / "MARKER"
        damage(run_dir, marker)
        args = [f(run_dir, w) if callable(f) else f for f in flags]
        target = run_arg(run_dir, w) if run_arg else run_dir
        argv = [PY, "-m", "gpt_ds.export", str(target), *args]
        return Prepared(argv, watch=[run_dir / "checkpoints", w / "data"], marker=marker)

    return Case("export", name, setup)


def data_copy(w: Path) -> Path:
    """A copy of the fixtures' data folder in the case folder `w` (cases/<case> beside fixtures/)."""
    return copy(w.parents[1] / "fixtures" / "data", w / "data")


def export_cases() -> list[Case]:
    cases = [export_case(name, damage) for name, damage in checkpoint_damages()]
    cases += [
        export_case("run folder missing", nothing, run_arg=lambda r, w: w / "nope"),
        export_case("run folder is a file", nothing, run_arg=lambda r, w: tag(r) / MODEL_STATES),
        export_case("run folder is a data folder", nothing, run_arg=lambda r, w: data_copy(w)),
        export_case("run folder is empty", nothing, run_arg=lambda r, w: mkdir(w / "empty")),
        export_case("run folder is a tag folder", nothing, run_arg=lambda r, w: tag(r)),
        export_case("tag missing", nothing, "--tag", "step_00000099"),
        export_case("tag is ..", nothing, "--tag", ".."),
        export_case("dtype int8", nothing, "--dtype", "int8"),
        export_case("out equal to the run folder", nothing, "--out", lambda r, w: str(r)),
        export_case("out equal to the run folder, --force", nothing, "--out", lambda r, w: str(r), "--force"),
        export_case("out is checkpoints/", nothing, "--out", lambda r, w: str(r / "checkpoints"), "--force"),
        export_case("out inside a tag folder", nothing, "--out", lambda r, w: str(tag(r) / "model"), "--force"),
        export_case("out above the run folder, --force", nothing, "--out", lambda r, w: str(w), "--force"),
        export_case("out is a file", nothing, "--out", lambda r, w: str(touch(w / "file"))),
        export_case("out is a data folder", nothing, "--out", lambda r, w: str(data_copy(w))),
    ]
    return cases


def model_copy(fx: Fixtures, w: Path, damage: Callable[[Path, Path], Any]) -> tuple[Path, Path]:
    model, marker = copy(fx.model, w / "model"), w / "MARKER"
    damage(model, marker)
    return model, marker


def config_edit(change: Callable[[dict], Any]) -> Callable[[Path, Path], Any]:
    return lambda m, marker: edit_json(m / "config.json", change)


def model_damages() -> list[tuple[str, Callable[[Path, Path], Any], str]]:
    """(name, damage(model_copy, marker), expect) for a model folder, shared by sample and hf export."""
    weights = "model.safetensors"
    return [
        ("config.json not JSON", lambda m, _: truncate(m / "config.json", 0.5), "error"),
        ("config.json empty", lambda m, _: (m / "config.json").write_text(""), "error"),
        ("config.json a list", lambda m, _: (m / "config.json").write_text("[]"), "error"),
        ("config.json without model", config_edit(lambda c: c.pop("model")), "error"),
        ("config.json deleted", lambda m, _: (m / "config.json").unlink(), "error"),
        ("config n_head changed", config_edit(lambda c: c["model"].update(n_head=4)), "error"),
        ("config n_embd changed", config_edit(lambda c: c["model"].update(n_embd=64)), "error"),
        ("config n_layer changed", config_edit(lambda c: c["model"].update(n_layer=2)), "error"),
        ("config vocab_size a string", config_edit(lambda c: c["model"].update(vocab_size="big")), "error"),
        ("config block_size negative", config_edit(lambda c: c["model"].update(block_size=-1)), "error"),
        ("config misspelt field", config_edit(lambda c: c["model"].update(n_heads=2)), "error"),
        ("config unknown tokenizer", config_edit(lambda c: c.update(tokenizer="nonsense")), "error"),
        ("safetensors truncated", lambda m, _: truncate(m / weights, 0.5), "error"),
        ("safetensors empty", lambda m, _: (m / weights).write_bytes(b""), "error"),
        ("safetensors header garbage", lambda m, _: patch(m / weights, 8, b"{{{{garbage"), "error"),
        ("safetensors deleted", lambda m, _: (m / weights).unlink(), "error"),
        ("safetensors byte flipped (warned)", lambda m, _: flip_byte(m / weights), "warning"),
        ("safetensors replaced by a pickle", lambda m, marker: write_poison(m / weights, marker), "error"),
        ("only a poisoned pytorch_model.bin", lambda m, marker: ((m / weights).unlink(),
                                                                 write_poison(m / "pytorch_model.bin", marker)),
         "error"),
    ]


def sample_case(name: str, damage: Callable[[Path, Path], Any], *flags: str, expect: str = "error",
                model_arg: Callable[[Fixtures, Path], Path] | None = None) -> Case:
    def setup(fx: Fixtures, w: Path) -> Prepared:
        model, marker = model_copy(fx, w, damage)
        target = model_arg(fx, w) if model_arg else model
        argv = [PY, SAMPLE, "--model", str(target), "--prompt", "def ", "--max-new-tokens", "8", *flags]
        return Prepared(argv, watch=[model], marker=marker)

    return Case("sample", name, setup, expect)


def sample_cases() -> list[Case]:
    cases = [sample_case(name, damage, expect=expect) for name, damage, expect in model_damages()]
    flags = [
        ("max-new-tokens negative", "--max-new-tokens", "-1"), ("max-new-tokens a string", "--max-new-tokens", "abc"),
        ("temperature nan", "--temperature", "nan"), ("temperature negative", "--temperature", "-1"),
        ("temperature inf", "--temperature", "inf"), ("top-k negative", "--top-k", "-5"),
        ("top-p 0", "--top-p", "0"), ("top-p 1.5", "--top-p", "1.5"), ("top-p nan", "--top-p", "nan"),
        ("num-samples 0", "--num-samples", "0"), ("num-samples negative", "--num-samples", "-1"),
        ("device cuda without a GPU", "--device", "cuda"), ("dtype int8", "--dtype", "int8"),
    ]
    cases += [sample_case(name, nothing, *values) for name, *values in flags]
    cases += [
        sample_case("model missing", nothing, model_arg=lambda fx, w: w / "nope"),
        sample_case("model is the weights file", nothing, model_arg=lambda fx, w: w / "model" / "model.safetensors"),
        sample_case("model is an empty folder", nothing, model_arg=lambda fx, w: mkdir(w / "empty")),
        sample_case("model is the run folder", nothing, model_arg=lambda fx, w: fx.run),
        sample_case("model is a Hugging Face folder", nothing, model_arg=lambda fx, w: fx.hf),
    ]
    return cases


def eval_case(name: str, damage: Callable[[Path, Path], Any], *flags: str | Callable[[Fixtures, Path], str],
              expect: str = "error", model_arg: Callable[[Fixtures, Path], Path] | None = None) -> Case:
    """launch/eval.py on a model copy, measuring the bits per byte of a small text unless --tasks is given.
    The model folder is not watched: the command writes its results into MODEL_DIR/evals by design."""
    def setup(fx: Fixtures, w: Path) -> Prepared:
        model, marker = model_copy(fx, w, damage)
        target = model_arg(fx, w) if model_arg else model
        values = [value(fx, w) if callable(value) else value for value in flags]
        tasks = [] if "--tasks" in values else ["--tasks", str(touch(w / "text.txt", "def f(x):\n    return x\n"))]
        return Prepared([PY, EVAL, str(target), *tasks, *values], marker=marker)

    return Case("eval", name, setup, expect)


def blob(path: Path) -> Path:
    path.write_bytes(b"\xff\xfe\x00\x81 not UTF-8")
    return path


def jsonl(*lines: str) -> Callable[[Fixtures, Path], str]:
    return lambda fx, w: str(touch(w / "mc.jsonl", "".join(line + "\n" for line in lines)))


def eval_cases() -> list[Case]:
    good = '{"ctx": "def f(x):", "endings": [" return x", " pass"], "label": 0}'
    cases = [eval_case(name, damage, expect=expect) for name, damage, expect in model_damages()]
    flags = [
        ("limit 0", "--limit", "0"), ("limit nan", "--limit", "nan"), ("limit inf", "--limit", "inf"),
        ("limit negative", "--limit", "-3"), ("batch-size 0", "--batch-size", "0"),
        ("num-fewshot negative", "--num-fewshot", "-1"), ("device cuda without a GPU", "--device", "cuda"),
        ("dtype int8", "--dtype", "int8"), ("include-path missing", "--include-path", "/nonexistent/tasks"),
        ("tasks empty", "--tasks", ","), ("tasks a missing file", "--tasks", "/nonexistent/notes.txt"),
        ("tasks a missing jsonl", "--tasks", "/nonexistent/mc.jsonl"),
        ("tasks an unknown lm-eval task", "--tasks", "no_such_task_anywhere"),
        ("tasks a folder without a manifest", "--tasks", lambda fx, w: str(mkdir(w / "plain"))),
        ("tasks a binary file", "--tasks", lambda fx, w: str(blob(w / "blob.txt"))),
        ("tasks an empty text file", "--tasks", lambda fx, w: str(touch(w / "empty.txt", ""))),
        ("tasks the same file twice", "--tasks", lambda fx, w: ",".join([str(touch(w / "a.txt", "x"))] * 2)),
        ("mc: label out of range", "--tasks", jsonl(good, '{"ctx": "a", "endings": [" b", " c"], "label": 7}')),
        ("mc: one ending", "--tasks", jsonl(good, '{"ctx": "a", "endings": [" b"], "label": 0}')),
        ("mc: empty context", "--tasks", jsonl(good, '{"ctx": "", "endings": [" b", " c"], "label": 0}')),
        ("mc: not JSON", "--tasks", jsonl(good, '{"ctx": "a", "endings": [')),
        ("mc: unknown schema", "--tasks", jsonl('{"question": "a", "answers": [" b", " c"]}')),
        ("mc: empty file", "--tasks", jsonl()),
    ]
    cases += [eval_case(name, nothing, *values) for name, *values in flags]
    cases += [
        eval_case("model missing", nothing, model_arg=lambda fx, w: w / "nope"),
        eval_case("model is the run folder", nothing, model_arg=lambda fx, w: fx.run),
        eval_case("model is a Hugging Face folder", nothing, model_arg=lambda fx, w: fx.hf),
    ]
    return cases


def hf_export_case(name: str, damage: Callable[[Path, Path], Any], *flags: str | Callable[[Path, Path], str],
                   expect: str = "error") -> Case:
    def setup(fx: Fixtures, w: Path) -> Prepared:
        model, marker = model_copy(fx, w, damage)
        args = [f(model, w) if callable(f) else f for f in flags] or ["--out", str(w / "hf")]
        return Prepared([PY, "-m", "gpt_ds.hf", "export", str(model), *args], watch=[model], marker=marker)

    return Case("hf", f"export: {name}", setup, expect)


def hf_import_case(name: str, damage: Callable[[Path, Path], Any], *flags: str | Callable[[Path, Path], str],
                   hf_arg: Callable[[Path, Path], Path] | None = None) -> Case:
    def setup(fx: Fixtures, w: Path) -> Prepared:
        hf, marker = copy(fx.hf, w / "hf"), w / "MARKER"
        damage(hf, marker)
        args = [f(hf, w) if callable(f) else f for f in flags] or ["--out", str(w / "model")]
        source = hf_arg(hf, w) if hf_arg else hf
        return Prepared([PY, "-m", "gpt_ds.hf", "import", str(source), *args], watch=[hf], marker=marker)

    return Case("hf", f"import: {name}", setup)


def hf_cases() -> list[Case]:
    export_damages = {"config.json not JSON", "config n_head changed", "config n_embd changed", "safetensors truncated",
                      "safetensors replaced by a pickle", "only a poisoned pytorch_model.bin", "config.json deleted"}
    cases = [hf_export_case(name, damage, expect=expect) for name, damage, expect in model_damages()
             if name in export_damages]
    cases += [
        hf_export_case("out equal to the model", nothing, "--out", lambda m, w: str(m)),
        hf_export_case("out equal to the model, --force", nothing, "--out", lambda m, w: str(m), "--force"),
        hf_export_case("out inside the model", nothing, "--out", lambda m, w: str(m / "hf"), "--force"),
        hf_export_case("out above the model, --force", nothing, "--out", lambda m, w: str(w), "--force"),
        hf_export_case("out is a file", nothing, "--out", lambda m, w: str(touch(w / "file"))),
        hf_export_case("out is a gpt-ds model folder", nothing, "--out",
                       lambda m, w: str(copy(m, w / "other_model"))),
        hf_export_case("dtype int4", nothing, "--out", lambda m, w: str(w / "hf"), "--dtype", "int4"),
        hf_export_case("missing model folder", lambda m, _: shutil.rmtree(m)),
    ]
    weights = "model.safetensors"
    cases += [
        hf_import_case("folder missing", nothing, hf_arg=lambda h, w: w / "nope"),
        hf_import_case("a file instead of the folder", nothing, hf_arg=lambda h, w: h / "config.json"),
        hf_import_case("only a poisoned pytorch_model.bin", lambda h, m: ((h / weights).unlink(),
                                                                          write_poison(h / "pytorch_model.bin", m))),
        hf_import_case("safetensors replaced by a pickle", lambda h, m: write_poison(h / weights, m)),
        hf_import_case("config model_type llama", lambda h, m: edit_json(h / "config.json",
                                                                          lambda c: c.update(model_type="llama"))),
        hf_import_case("config.json not JSON", lambda h, m: truncate(h / "config.json", 0.5)),
        hf_import_case("config n_embd changed", lambda h, m: edit_json(h / "config.json",
                                                                        lambda c: c.update(n_embd=64))),
        hf_import_case("config activation unknown", lambda h, m: edit_json(
            h / "config.json", lambda c: c.update(activation_function="swish"))),
        hf_import_case("safetensors truncated", lambda h, m: truncate(h / weights, 0.5)),
        hf_import_case("out equal to the input", nothing, "--out", lambda h, w: str(h), "--force"),
        hf_import_case("out is a file", nothing, "--out", lambda h, w: str(touch(w / "file"))),
        hf_import_case("out is a Hugging Face folder", nothing, "--out", lambda h, w: str(copy(h, w / "other_hf"))),
    ]
    return cases


def quickstart_case(name: str, *flags: str | Callable[[Path], str], prepared: bool = True) -> Case:
    """launch/quickstart.py with a bad flag; --out (a case folder) holds the prepared default corpus already,
    and --max-steps 2 comes first, so a bad value that is accepted ends quickly (exit 0)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        out = w / "qs"
        if prepared:
            copy(fx.qs_data, out / "data")
        args = [f(w) if callable(f) else f for f in flags]
        return Prepared([PY, QUICKSTART, "--out", str(out), "--max-steps", "2", *args], timeout=180)

    return Case("quickstart", name, setup)


def quickstart_cases() -> list[Case]:
    return [
        quickstart_case("ranks 0", "--ranks", "0"),
        quickstart_case("ranks negative", "--ranks", "-1"),
        quickstart_case("ranks a string", "--ranks", "two"),
        quickstart_case("max-steps 0", "--max-steps", "0"),
        quickstart_case("max-steps negative", "--max-steps", "-1"),
        quickstart_case("target-loss nan", "--target-loss", "nan"),
        quickstart_case("target-loss negative", "--target-loss", "-1"),
        quickstart_case("out is a file", "--out", lambda w: str(touch(w / "file")), prepared=False),
        quickstart_case("out under a file", "--out", lambda w: str(touch(w / "file") / "qs"), prepared=False),
        quickstart_case("misspelt flag", "--rnaks", "2"),
    ]


def submit_case(name: str, options: list[str], train: Callable[[Fixtures, Path], list[str]] | None = None,
                timeout: float = TIMEOUT_S) -> Case:
    """launch/submit.py OPTIONS -- TRAIN_ARGS (the training's arguments valid unless `train` replaces them)."""

    def setup(fx: Fixtures, w: Path) -> Prepared:
        train_args = train(fx, w) if train else train_cmd(fx, w / "run")[2:]
        return Prepared([PY, SUBMIT, *options, "--", *train_args], timeout=timeout)

    return Case("submit", name, setup)


def submit_cases() -> list[Case]:
    dry = ["--dry-run"]
    local = ["--cluster", "local", "--tasks-per-node", "2", "--wait"]  # --wait: a job that starts is followed
    bad_json = lambda fx, w: train_cmd(fx, w / "run", config=touch(w / "ds.json", "{oops"))[2:]  # noqa: E731
    return [
        Case("submit", "no -- and no training arguments", lambda fx, w: Prepared([PY, SUBMIT, "--dry-run"])),
        submit_case("nodes 0", [*dry, "--nodes", "0"]),
        submit_case("nodes negative", [*dry, "--nodes", "-1"]),
        submit_case("nodes a string", [*dry, "--nodes", "two"]),
        submit_case("gpus-per-node negative", [*dry, "--gpus-per-node", "-1"]),
        submit_case("tasks-per-node 0", [*dry, "--tasks-per-node", "0"]),
        submit_case("time 0", [*dry, "--time", "0"]),
        submit_case("time 1 minute (below the signal delay)", [*dry, "--time", "1"]),
        submit_case("signal-delay negative", [*dry, "--signal-delay", "-5"]),
        submit_case("master-port 80", [*dry, "--master-port", "80"]),
        submit_case("master-port 70000", [*dry, "--master-port", "70000"]),
        submit_case("max-requeues negative", [*dry, "--max-requeues", "-1"]),
        submit_case("cpus-per-task 0", [*dry, "--cpus-per-task", "0"]),
        submit_case("cluster unknown", [*dry, "--cluster", "pbs"]),
        submit_case("mem not Slurm's syntax", [*dry, "--mem", "lots"]),
        submit_case("partition unknown", [*dry, "--partition", "no_such_partition"]),
        submit_case("local on 2 nodes", ["--cluster", "local", "--nodes", "2", "--dry-run"]),
        submit_case("training arguments missing --data", dry,
                    lambda fx, w: ["--deepspeed_config", str(fx.ds_config), "--out", str(w / "run")]),
        submit_case("training data missing", dry, lambda fx, w: train_cmd(fx, w / "run", data=w / "nope")[2:]),
        submit_case("training max-steps negative", dry,
                    lambda fx, w: train_cmd(fx, w / "run", "--max-steps", "-1")[2:]),
        submit_case("training lr nan", dry, lambda fx, w: train_cmd(fx, w / "run", "--lr", "nan")[2:]),
        submit_case("local: train_batch_size 3 on 2 tasks", local, lambda fx, w: train_cmd(
            fx, w / "run", config=write_variant(w / "ds.json", train_batch_size=3))[2:]),
        submit_case("local: malformed DeepSpeed JSON", local, bad_json),
        submit_case("local: out is a file", local, lambda fx, w: train_cmd(fx, touch(w / "file"))[2:]),
        submit_case("local: time 0", [*local, "--time", "0"]),
        submit_case("local: data is a file", local,
                    lambda fx, w: train_cmd(fx, w / "run", data=fx.data / "manifest.json")[2:]),
    ]


# What to know when judging some outcomes (by case name, in any group).
FORGED = "the damage includes rewriting client_state.json's file record to match the new bytes"
NOTES = {
    "foreign shard (same size, other tokens)": "the README says shard sha256s are checked only under --verify-data",
    "data_prep --verify: shard with out-of-vocabulary tokens, manifest re-hashed":
        "the manifest's sha256 was rewritten to match; training refuses this folder",
    "out inside the input": "data_prep leaves its --out out of its inputs, so this may be meant to work",
    "optimizer states of another step, re-recorded": FORGED,
    "model states truncated, re-recorded": FORGED,
    "poisoned model states, re-recorded": FORGED,
    "poisoned optimizer states, re-recorded": FORGED,
    "raw-pickle model states, re-recorded": FORGED,
}

GROUPS: dict[str, Callable[[], list[Case]]] = {
    "train": train_cases, "dsconfig": dsconfig_cases, "data": data_cases, "resume": resume_cases,
    "data_prep": data_prep_cases, "export": export_cases, "sample": sample_cases, "eval": eval_cases, "hf": hf_cases,
    "quickstart": quickstart_cases, "submit": submit_cases,
}

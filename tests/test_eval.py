"""launch/eval.py and gpt_ds.evaluate: a multiple-choice file through the real lm-evaluation-harness gives the
in-loop figures (--eval-tasks) and the `hf` backend's on the export; the shipped task YAML is the task the
command builds for a jsonl file; results land in MODEL_DIR/evals and on the card; bits per byte of a text;
every bad input is one line."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from data_prep.make_mc import MCSettings, make_mc  # noqa: E402
from gpt_ds import evaluate  # noqa: E402
from gpt_ds.errors import UserError  # noqa: E402
from gpt_ds.eval_results import read_results  # noqa: E402
from gpt_ds.hf import export_hf  # noqa: E402
from gpt_ds.inference import load_for_inference  # noqa: E402
from gpt_ds.model_io import read_model_info  # noqa: E402
from gpt_ds.mc_eval import figures, load_tasks, local_counts, model_scorer  # noqa: E402
from gpt_ds.model import GPT, GPTConfig  # noqa: E402
from gpt_ds.tokenizer import DEFAULT_ENCODING, EOT_TOKEN  # noqa: E402
from launch.eval import run  # noqa: E402
from test_hf import gpt2_vocabulary_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED_YAML = REPO / "eval_tasks" / "gpt_ds_mc.yaml"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def work(tmp_path_factory, stdlib_corpus, encoding):
    """A prepared stdlib folder, a 40-question file made from its val split, a model folder (GPT-2 vocabulary,
    64-token context) and its export, and a folder holding the shipped task YAML pointed at the file."""
    root = tmp_path_factory.mktemp("eval")
    subprocess.run([sys.executable, "-m", "data_prep", "--input", str(stdlib_corpus), "--out", str(root / "data"),
                    "--val-fraction", "0.25", "--quiet"], check=True, cwd=REPO)
    make_mc(MCSettings(data=root / "data", out=root / "mc.jsonl", n=40, ctx_tokens=24, ending_tokens=8))
    _, model_dir = gpt2_vocabulary_model(root / "model")
    export_hf(model_dir, root / "hf")
    tasks = root / "tasks"
    tasks.mkdir()
    yaml_text = SHIPPED_YAML.read_text().replace("runs/quickstart/mc.jsonl", str(root / "mc.jsonl"))
    assert str(root / "mc.jsonl") in yaml_text
    (tasks / "gpt_ds_mc.yaml").write_text(yaml_text)
    return root


def eval_command(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, str(REPO / "launch" / "eval.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **OFFLINE, **(env or {})})


def scores(path: Path) -> tuple[float, float]:
    results = json.loads(path.read_text())["results"]
    return results["acc,none"], results["acc_norm,none"]


def in_loop_scores(work: Path) -> tuple[float, float]:
    """(acc, acc_norm) of --eval-tasks' scorer on the module's file and model."""
    model, info = load_for_inference(work / "model")
    task = load_tasks([work / "mc.jsonl"])[0]
    counts = local_counts(model_scorer(model), [task], info.config.block_size, torch.device("cpu"), rank=0,
                          world_size=1, same_forwards=False)
    result = figures([task], counts.tolist())["mc"]
    return result["acc"], result["acc_norm"]


@pytest.mark.slow
def test_a_multiple_choice_file_scores_alike_in_the_loop_in_lm_eval_and_on_the_hf_backend(work, monkeypatch):
    model_dir = work / "model"
    proc = eval_command(str(model_dir), "--tasks", f"{work / 'mc.jsonl'},gpt_ds_mc",
                        "--include-path", str(work / "tasks"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|gpt_ds_mc" in proc.stdout and "acc_norm" in proc.stdout  # lm-eval's table
    ours = scores(model_dir / "evals" / "mc.json")
    assert scores(model_dir / "evals" / "gpt_ds_mc.json") == ours  # the shipped YAML is the task the command builds

    assert in_loop_scores(work) == ours  # the in-loop scorer (--eval-tasks) on the same file and weights
    info = read_model_info(model_dir)

    # lm-eval's own hf backend on the export, the shipped YAML through include_path
    import lm_eval
    from lm_eval.tasks import TaskManager

    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    hf = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={work / 'hf'},dtype=float32", tasks=["gpt_ds_mc"],
                                 task_manager=TaskManager(include_path=str(work / "tasks")), batch_size=8, device="cpu",
                                 bootstrap_iters=0)["results"]["gpt_ds_mc"]
    assert (hf["acc,none"], hf["acc_norm,none"]) == ours

    # what was evaluated, and the card's view of it
    document = json.loads((model_dir / "evals" / "mc.json").read_text())
    evaluated = document["evaluated"]
    assert evaluated["weights_sha256"] == info.weights_sha256 and evaluated["backend"] == "gpt-ds"
    assert evaluated["versions"]["lm_eval"] and evaluated["limit"] is None and evaluated["date"]
    assert document["n_samples"]["effective"] == 40
    assert {(r.task, r.metrics["acc_norm"]) for r in read_results(model_dir, info.weights_sha256)} == \
        {("mc", ours[1]), ("gpt_ds_mc", ours[1])}


def test_the_shipped_yaml_is_the_task_the_command_builds():
    import yaml

    shipped = yaml.safe_load(SHIPPED_YAML.read_text())
    built = evaluate.mc_task_config("gpt_ds_mc", "runs/quickstart/mc.jsonl")
    built["dataset_kwargs"]["data_files"]["test"] = "runs/quickstart/mc.jsonl"  # the command resolves the path
    assert shipped == built


def test_bits_per_byte_of_a_text_is_its_summed_loss_over_its_bytes(tmp_path, encoding):
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)
    model = GPT(config).eval()
    text = "def f(x):\n    return x * 2  # ünïcode\n" * 3
    tokens = [EOT_TOKEN, *encoding.encode_ordinary(text)]
    got = evaluate.text_bpb(model, torch.tensor(tokens).numpy(), DEFAULT_ENCODING, batch_size=2)
    nats = 0.0
    for start in range(0, len(tokens) - 1, 16):  # by hand: each window of 16 predictions
        window = tokens[start:start + 17]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([window[:-1]]))[0][0].double(), dim=-1)
        nats -= sum(log_probs[i, window[i + 1]].item() for i in range(len(window) - 1))
    assert got["tokens"] == len(tokens) - 1 and got["bytes"] == len(text.encode("utf-8"))
    assert got["bpb"] == pytest.approx(nats / math.log(2) / len(text.encode("utf-8")), rel=1e-6)
    assert got["loss"] == pytest.approx(nats / (len(tokens) - 1), rel=1e-6)


@pytest.mark.slow
def test_bits_per_byte_of_a_text_file_and_a_data_folder_and_a_yaml_path(work, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("import os\nprint(os.getcwd())\n" * 20)
    model_dir = tmp_path / "model"
    shutil.copytree(work / "model", model_dir)
    proc = eval_command(str(model_dir), "--tasks", f"{text},{work / 'data'},{work / 'tasks' / 'gpt_ds_mc.yaml'}",
                        "--limit", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bpb_notes: " in proc.stdout and "bits per byte" in proc.stdout
    assert json.loads((model_dir / "evals" / "gpt_ds_mc.json").read_text())["n_samples"]["effective"] == 8
    for name, tokens in (("bpb_notes", None), ("bpb_data_val", 8 * 64)):
        result = json.loads((model_dir / "evals" / f"{name}.json").read_text())["results"]
        assert result["bpb"] > 0 and result["bytes"] > 0
        assert tokens is None or result["tokens"] == tokens  # --limit 8: eight windows of 64 predictions


@pytest.mark.slow
def test_a_dataset_missing_offline_is_one_line_naming_it(work):
    proc = eval_command(str(work / "model"), "--tasks", "hellaswag")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("launch/eval.py: error: task hellaswag: its dataset Rowan/hellaswag is not in the "
                           "Hugging Face datasets cache"), proc.stderr[-2000:]
    assert "datasets.load_dataset('Rowan/hellaswag')" in line and "eval_tasks/gpt_ds_mc.yaml" in line
    assert not (work / "model" / "evals" / "hellaswag.json").exists()


@pytest.mark.slow
def test_an_unknown_task_name_is_one_line(work):
    proc = eval_command(str(work / "model"), "--tasks", "hellaswg")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--tasks hellaswg: lm-eval has no task, group or tag of that name" in proc.stderr.strip().splitlines()[-1]


def bad_lines(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ctx": "a b", "endings": [" c", " d"], "label": 0}\n' + line + "\n")
    return path


@pytest.mark.parametrize("argv, message", [
    (["--tasks", " , "], "--tasks is empty"),
    (["--tasks", "no/such.jsonl"], "--tasks no/such.jsonl: no such file"),
    (["--tasks", "missing.txt"], "--tasks missing.txt: no such file or folder"),
    (["--tasks", "x.yaml"], "--tasks x.yaml: no such task YAML file"),
    (["--tasks", "a.txt,a.txt"], "--tasks names 'bpb_a' twice"),
    (["--tasks", "hellaswag", "--limit", "0"], "--limit must be above 0"),
    (["--tasks", "hellaswag", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--tasks", "hellaswag", "--num-fewshot", "-1"], "--num-fewshot must be 0 or more"),
    (["--tasks", "hellaswag", "--include-path", "nowhere"], "--include-path nowhere: no such folder"),
])
def test_bad_flags_are_one_line_before_any_work(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("some text")
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)
    from gpt_ds.model_io import save_model

    save_model(tmp_path / "model", GPT(config), config)
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
        run(["model", *argv])


@pytest.mark.parametrize("line, message", [
    ('{"ctx": "a", "endings": [" b", " c"], "label": 5}', "line 2: 'label' 5 is out of range"),
    ('{"ctx": "a", "endings": [" b"], "label": 0}', "line 2: 'endings' needs at least 2 endings"),
    ('{"ctx": "", "endings": [" b", " c"], "label": 0}', "line 2: empty context"),
    ('{"ctx": "a", "endings": [" b", " c"], "label": 0', "line 2: not valid JSON"),
])
def test_a_bad_multiple_choice_file_names_its_line(tmp_path, line, message):
    path = bad_lines(tmp_path, line)
    with pytest.raises(UserError, match=f"^--tasks {path} {message}".replace("(", r"\(").replace("[", r"\[")):
        evaluate.load_lm_eval_tasks(evaluate.parse_tasks(str(path)), [])


def test_a_folder_that_is_not_prepared_and_a_binary_file(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="not a prepared data folder"):
        evaluate.parse_tasks(str(tmp_path / "plain"))
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\xff\xfe\x00binary")
    spec, = evaluate.parse_tasks(str(blob))
    with pytest.raises(UserError, match="not UTF-8 text"):
        evaluate.bpb_tokens(spec, lambda text: [], EOT_TOKEN)


@pytest.mark.slow
def test_lm_evals_own_command_runs_the_gpt_ds_backend(work):
    import os

    proc = subprocess.run([sys.executable, str(REPO / "launch" / "harness.py"), "--model", "gpt-ds",
                           "--model_args", f"path={work / 'model'},dtype=float32", "--tasks", "gpt_ds_mc",
                           "--include_path", str(work / "tasks"), "--device", "cpu"],
                          cwd=work, capture_output=True, text=True, timeout=600, env={**os.environ, **OFFLINE})
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("|gpt_ds_mc"))
    acc = float(row.split("|")[7])  # lm-eval's table: |Tasks|Version|Filter|n-shot|Metric| |Value|
    assert acc == pytest.approx(in_loop_scores(work)[0], abs=5e-4)  # the table rounds to 3 or 4 places

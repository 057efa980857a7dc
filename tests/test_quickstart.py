"""launch/quickstart.py, the README's main command: prepare -> 2-rank ZeRO-2 training through the
deepspeed launcher -> consolidated model -> next steps, run for real with a short training budget.

It trains on whatever the quickstart picks (Shakespeare from ../shared beside a development checkout,
else the Python standard library's sources), so it runs on any machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_the_whole_path(tmp_path, encoding):
    out = tmp_path / "qs"
    # A target any model meets at its first evaluation keeps the run to 4 steps; the full run
    # takes minutes and is measured in the README instead.
    command = [sys.executable, str(REPO / "launch" / "quickstart.py"), "--out", str(out), "--max-steps", "4", "--target-loss", "20"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "[1] preparing the default corpus" in proc.stdout
    assert "deepspeed --num_gpus 2 launch/train.py" in proc.stdout
    assert "[3] reached val loss 20.0 at step 4" in proc.stdout
    # the offline benchmark: built from the val split (tens of thousands of tokens), scored in the loop, printed
    # beside chance on the [3] line
    benchmark = out / "mc.jsonl"
    assert f"offline benchmark in {benchmark}: which continuation is real, 4 choices, 300 examples of 64 tokens of context and 8-token endings" in proc.stdout
    assert f"--eval-tasks {benchmark} " in proc.stdout
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["settings"]["val_fraction"] == 0.1 and manifest["splits"]["val"]["tokens"] > 20_000
    assert len(benchmark.read_text().splitlines()) == 300
    score = re.search(r"\[3\] reached .*; offline benchmark \(which continuation is real, 4 choices\): "
                      r"acc_norm (\d+\.\d)%, acc (\d+\.\d)% \(chance 25%\); consolidated model", proc.stdout)
    assert score, proc.stdout[-3000:]
    # the closing sample continues a prompt in the corpus's form, in the printed block
    sample = proc.stdout.split("[4] a sample of the model, continuing ")[1].split("[5] next:")[0]
    prompt = sample.split(":\n", 1)[0].strip("'")
    assert prompt in ("ROMEO:", "def ") and sample.split(":\n", 1)[1].startswith(f"    | {prompt}".rstrip())
    for hint in (f"tensorboard --logdir {out / 'run' / 'tb'}", f"launch/sample.py --model {out / 'run' / 'model'}",
                 f"launch/eval.py {out / 'run' / 'model'} --tasks {out / 'mc.jsonl'},{out / 'data'}",
                 "streamlit run app/app.py"):
        assert hint in proc.stdout
    info = json.loads((out / "run" / "model" / "config.json").read_text())
    assert info["metadata"]["world_size"] == 2 and info["metadata"]["target_reached"] is True
    figures = info["metadata"]["eval_tasks"]["mc"]
    assert figures["n"] == 300
    assert score.groups() == (f"{figures['acc_norm']:.1%}"[:-1], f"{figures['acc']:.1%}"[:-1])
    assert (out / "run" / "tb").is_dir() and (out / "data" / "manifest.json").is_file()

    # Running it again finds the data prepared and the run done: no new training.
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "[3] reached val loss 20.0 at step 4" in again.stdout
    assert score.group(0) in again.stdout  # the same file, the same score


def test_benchmark_score_beside_chance_or_not_scored(tmp_path):
    from launch.quickstart import benchmark_score
    from data_prep.make_mc import MCSettings
    from gpt_ds.record import RunRecord

    settings = MCSettings(data=tmp_path, out=tmp_path / "mc.jsonl", choices=5)
    scored = RunRecord(eval_tasks={"mc": {"acc": 0.4, "acc_norm": 0.4567, "n": 300}})
    assert benchmark_score(scored, settings) == (
        "offline benchmark (which continuation is real, 5 choices): acc_norm 45.7%, acc 40.0% (chance 20%)")
    # a run that finished before the quickstart scored the benchmark (or scored another file) says so
    for record in (RunRecord(), RunRecord(eval_tasks={"other": {"acc": 0.5, "acc_norm": 0.5, "n": 10}})):
        assert benchmark_score(record, settings) == (
            "offline benchmark (which continuation is real, 5 choices): not scored by this run")


@pytest.mark.slow
def test_quickstart_chat_goes_on_to_a_chat_model(tmp_path, encoding):
    """--chat: the standard library's sources pretrain, the conversation set fine-tunes (a chat folder, the base
    model's vocabulary grown), a two-turn transcript and the chat commands close it; a rerun does no new work."""
    out = tmp_path / "qsc"
    command = [sys.executable, str(REPO / "launch" / "quickstart.py"), "--chat", "--out", str(out), "--max-steps", "4",
               "--target-loss", "20", "--chat-steps", "4"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "[1] preparing the standard library corpus" in proc.stdout
    chat_model = out / "chat" / "run" / "model"
    assert f"--init-from {out / 'run' / 'model'} --max-steps 4" in proc.stdout
    transcript = proc.stdout.split(f"[8] a conversation with {chat_model} (greedy):\n")[1].splitlines()
    assert transcript[0] == "    | you: What does `textwrap.dedent` do?" and transcript[1].startswith("    | assistant:")
    assert transcript[2] == "    | you: And its signature?" and transcript[3].startswith("    | assistant:")
    for hint in (f"launch/sample.py --model {chat_model} --chat", f"streamlit run app/app.py -- --model {chat_model}"):
        assert hint in proc.stdout
    info = json.loads((chat_model / "config.json").read_text())
    assert info["chat_template"] and info["model"]["vocab_size"] == 50261
    assert info["metadata"]["init_from"]["folder"] == str(out / "run" / "model")
    manifest = json.loads((out / "chat" / "data" / "manifest.json").read_text())
    assert manifest["format"] == "chat" and manifest["splits"]["val"]["conversations"] > 0

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resumed from") == 2 and transcript[1] in again.stdout

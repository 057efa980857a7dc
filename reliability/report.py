"""The sweep's summary line, its table, and the git state it ran on."""

from __future__ import annotations

import subprocess
from typing import Any

from reliability.cases import Outcome
from reliability.commands import REPO
from reliability.kill import Trial

OUTCOMES = ("clear", "traceback", "silently wrong", "other")


def summary_line(outcomes: list[Outcome], trials: list[Trial]) -> str:
    count = {o: sum(1 for x in outcomes if x.outcome == o) for o in OUTCOMES}
    train = [t for t in trials if t.kind == "kill-train"]
    prep = [t for t in trials if t.kind == "kill-prep"]
    return (f"bad inputs: {len(outcomes)} tried, {count['clear']} clear errors, {count['traceback']} tracebacks, "
            f"{count['silently wrong']} silently wrong, {count['other']} other; kill -9: "
            f"{sum(t.identical for t in train)}/{len(train)} resumes bit-identical, "
            f"{sum(t.identical for t in prep)}/{len(prep)} preparations identical")


def trim(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(outcomes: list[Outcome], trials: list[Trial]) -> None:
    name_w = max([len(f"{o.group}: {o.name}") for o in outcomes] + [10])
    print(f"{'case':<{name_w}}  {'outcome':<14}  first error line / why")
    for o in outcomes:
        print(f"{o.group + ': ' + o.name:<{name_w}}  {o.outcome:<14}  {trim(o.detail, 150)}")
    for t in trials:
        print(f"{t.kind} #{t.index}: {'identical' if t.identical else 'NOT identical'}: {t.detail}")


def git_state() -> dict[str, Any]:
    """The commit the sweep ran on and the files changed against it (the results are of that tree)."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD"), "changed": git("status", "--porcelain").splitlines()}


def describe_change(before: dict[str, Any], after: dict[str, Any]) -> str:
    if before["commit"] != after["commit"]:
        return f"commit {before['commit'][:12]} -> {after['commit'][:12]}"
    changed = sorted(set(after["changed"]) ^ set(before["changed"]))
    return f"uncommitted changes to {', '.join(line[3:] for line in changed[:5])}"

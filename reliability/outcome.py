"""Running one case and judging its outcome: clear, traceback, silently wrong or other."""

from __future__ import annotations

import shlex
from pathlib import Path

from reliability.cases import NOTES, Case, Outcome, Prepared
from reliability.commands import TRACEBACK, Result, kill_group, run
from reliability.fixtures import Fixtures, changes, snapshot


def error_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if "error:" in line]


def first_line(result: Result) -> str:
    """The first error line, else the traceback's last line, else the last line of output."""
    errors = error_lines(result.output)
    if errors:
        return errors[0]
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    if TRACEBACK in result.output:
        tail = result.output[result.output.rindex(TRACEBACK):].splitlines()
        exc = [line for line in tail if line and not line.startswith(" ") and line != tail[0]]
        return exc[-1].strip() if exc else tail[-1].strip()
    return lines[-1] if lines else "(no output)"


def classify(result: Result, expect: str, marker_ran: bool, changed: list[str],
             background_done: bool) -> tuple[str, str]:
    """(outcome, detail) of one case."""
    if marker_ran:
        return "silently wrong", "the poisoned pickle ran (its marker file appeared)"
    if changed:
        return "silently wrong", f"an input changed: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}"
    if result.timed_out:
        return "other", f"hang: no exit within {result.seconds:.0f} s (killed)"
    if TRACEBACK in result.output:
        return "traceback", first_line(result)
    if background_done and result.rc == 0:
        return "other", "the first run ended before the second started (inconclusive: make it longer)"
    errors = error_lines(result.output)
    if result.rc == 0:
        warnings = [line for line in result.output.splitlines() if "warning:" in line]
        if expect == "warning" and len(warnings) == 1:
            return "clear", f"warned: {warnings[0].strip()}"
        return "silently wrong", "exit 0" + (f"; warnings: {warnings[0].strip()}" if warnings else ", no warning")
    if len(errors) == 1:
        return "clear", errors[0]
    if not errors:
        return "other", f"exit {result.rc} without an error: line ({first_line(result)})"
    return "other", f"{len(errors)} error: lines (exit {result.rc}): " + " | ".join(errors[:3])


def excerpt(result: Result, lines: int = 10) -> str:
    text = result.output
    if TRACEBACK in text:
        text = text[text.index(TRACEBACK):]
        kept = text.splitlines()
        return "\n".join(kept[:3] + ["..."] + kept[-6:]) if len(kept) > 9 else text
    return "\n".join(text.splitlines()[-lines:])


def run_case(case: Case, fx: Fixtures, work: Path) -> Outcome:
    folder = work / f"{case.group}-{slug(case.name)}"
    folder.mkdir(parents=True)
    shared_before = snapshot(fx.shared(), content=False)
    prepared: Prepared | None = None
    try:
        prepared = case.setup(fx, folder)
        watched_before = snapshot(prepared.watch, content=True)
        result = run(prepared.argv, folder, fx.env, prepared.timeout)
        background_done = prepared.background is not None and prepared.background.poll() is not None
    finally:
        if prepared is not None and prepared.background is not None:
            kill_group(prepared.background)
            prepared.background.wait()
    changed = changes(watched_before, snapshot(prepared.watch, content=True))
    changed += changes(shared_before, snapshot(fx.shared(), content=False))
    marker_ran = prepared.marker is not None and prepared.marker.exists()
    outcome, detail = classify(result, case.expect, marker_ran, changed, background_done)
    detail = detail.replace(str(folder), "CASE").replace(str(fx.root / "fixtures"), "FIXTURES")
    return Outcome(case.group, case.name, shlex.join(prepared.argv), outcome, detail, result.rc,
                   round(result.seconds, 1), excerpt(result), case.note or NOTES.get(case.name, ""))


def run_case_safely(case: Case, fx: Fixtures, work: Path) -> Outcome:
    """run_case, with a failure of this benchmark's own setup reported as such instead of ending the sweep."""
    try:
        return run_case(case, fx, work)
    except Exception as err:  # noqa: BLE001 - a bench bug must not hide the other cases' results
        return Outcome(case.group, case.name, "", "other", f"the benchmark's setup failed: {err!r}", None, 0.0, "")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:60]

"""`python -m reliability`: the command line of the reliability sweep (see the package's docstring)."""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import reliability
from reliability.cases import GROUPS, Outcome, mkdir
from reliability.commands import command_env
from reliability.fixtures import build_fixtures
from reliability.kill import KILL_GROUPS, Trial, kill_prep_trials, kill_train_trials
from reliability.outcome import run_case_safely
from reliability.report import describe_change, git_state, print_table, summary_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reliability", description=reliability.__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="folder for fixtures, cases and reliability.json "
                                                         "(default: a new temporary folder)")
    p.add_argument("--kill-trials", type=int, default=5, help="kill -9 trials of each kind (default 5)")
    p.add_argument("--only", default=None, help="comma-separated groups: " + ", ".join([*GROUPS, *KILL_GROUPS]))
    p.add_argument("--match", default=None, metavar="TEXT",
                   help="only the cases whose 'group: name' contains TEXT (to rerun one)")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: random)")
    p.add_argument("--keep", action="store_true", help="keep the fixtures and case folders")
    args = p.parse_args(argv)
    known = {*GROUPS, *KILL_GROUPS}
    args.groups = set(args.only.split(",")) if args.only else known
    if args.groups - known:
        p.error(f"--only: unknown group(s) {', '.join(sorted(args.groups - known))}; "
                f"choose from {', '.join([*GROUPS, *KILL_GROUPS])}")
    if args.kill_trials < 0 or args.jobs < 1:
        p.error("--kill-trials must be >= 0 and --jobs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="gpt-ds-reliability-"))).resolve()
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = command_env(work)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    started = time.monotonic()
    git_before = git_state()

    print(f"building fixtures in {work / 'fixtures'} ...", flush=True)
    fx = build_fixtures(work, env)
    print(f"fixtures built in {time.monotonic() - started:.0f} s", flush=True)

    cases = [case for group, make in GROUPS.items() if group in args.groups for case in make()
             if args.match is None or args.match in f"{case.group}: {case.name}"]
    cases_dir = mkdir(work / "cases")
    outcomes: list[Outcome] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_case_safely, case, fx, cases_dir) for case in cases]
        for future in futures:  # in order, so the table is the case order
            o = future.result()
            outcomes.append(o)
            print(f"  [{len(outcomes)}/{len(cases)}] {o.group}: {o.name}: {o.outcome} ({o.seconds:.0f} s)",
                  flush=True)

    rng = random.Random(seed)
    trials: list[Trial] = []
    if "kill-train" in args.groups and args.kill_trials:
        trials += kill_train_trials(fx, work, args.kill_trials, rng)
    if "kill-prep" in args.groups and args.kill_trials:
        trials += kill_prep_trials(fx, work, args.kill_trials, rng)

    print()
    print_table(outcomes, trials)
    line = summary_line(outcomes, trials)
    seconds = time.monotonic() - started
    report = {"summary": line, "seconds": round(seconds), "kill_seed": seed, "python": sys.version.split()[0],
              "git": git_before, "git_after": git_state(),
              "cases": [dataclasses.asdict(o) for o in outcomes],
              "kill_trials": [dataclasses.asdict(t) for t in trials]}
    (out / "reliability.json").write_text(json.dumps(report, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if report["git_after"] != git_before:
        change = describe_change(git_before, report["git_after"])
        print(f"warning: the repository changed while the sweep ran ({change}); some results may be of the code "
              "before, some of the code after")
    train = [t for t in trials if t.kind == "kill-train"]
    tensors = f"; kill -9 resumes with equal tensors: {sum(bool(t.tensors_equal) for t in train)}/{len(train)}"
    print(f"\n{line}\n({seconds / 60:.1f} min{tensors if train else ''}; every case in {out / 'reliability.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

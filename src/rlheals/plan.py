"""The whole plan of a study before it runs. A plain `snakemake -n` stops at the choose_points checkpoint
when the config names points read off the SFT curve (B, T, the RL starting points): the jobs after it are
planned once SFT is evaluated. `plan` runs the same dry run with those points assumed where they are not
chosen yet, and says which it assumed and where real ones were used.

    python3 tasks.py plan [--assume-b STEP] [snakemake args...]
    .venv/bin/python -m rlheals.plan [--assume-b STEP] [snakemake args...]

The workflow (rules/common.smk) reads ASSUME from the environment; a run that is not a dry run refuses it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlheals import curve

ASSUME = "RLHEALS_PLAN_ASSUME_B"  # "auto", or the saved SFT step to assume as B
NOTE = "rlheals plan:"  # how the workflow's notes about assumed points begin
# What snakemake's dry run says when a checkpoint job is among the jobs it plans
CHECKPOINT_PENDING = "The run involves checkpoint jobs"


def default_peak(steps: Sequence[int]) -> int:
    """The step assumed as B when none is given: the saved step nearest a quarter of the way to T (the
    papers' OOD peaks come early: 120 of 800 SFT steps, 140 of 1100), among those with a saved step before
    and after it, so that every RL starting point exists."""
    steps = sorted(steps)
    trained = [s for s in steps if s > 0]
    if not trained:
        raise ValueError("sft.save_steps: no step after 0, so there is no B to assume")
    inner = [s for s in trained if s != trained[0] and s != steps[-1]] or trained
    return min(inner, key=lambda s: (abs(s - steps[-1] / 4), s))


def assumed_points(steps: Sequence[int], peak: int | None = None) -> dict[str, int | None]:
    """B, T and the RL starting points as choose_points would pick them from an SFT curve whose OOD
    accuracy peaks at `peak` (default_peak when None): the chooser itself, on such a curve."""
    steps = sorted(steps)
    peak = default_peak(steps) if peak is None else peak
    if peak not in steps or peak == 0:
        raise ValueError(f"--assume-b {peak}: not a saved SFT step after 0 (sft.save_steps: {steps})")
    rows = [{"sft_step": s, "accuracy": 1.0 if s == peak else 0.0} for s in steps]
    return curve.choose_points(rows)


def parse_assumption(text: str) -> int | None:
    """The value of ASSUME: None for "auto" (default_peak), else the step."""
    if text == "auto":
        return None
    if not text.isdigit():
        raise ValueError(f"{ASSUME}={text!r}: expected a saved SFT step or 'auto'")
    return int(text)


def _starts(points: Mapping[str, int | None]) -> str:
    return ", ".join(f"{name} {points[name]}" for name in curve.START_POINTS if points.get(name) is not None)


def assumed_note(seed: int | None, points: Mapping[str, int | None], given: bool) -> str:
    """The plan's line for an SFT run whose points are assumed."""
    run = "" if seed is None else f"SFT seed {seed}: "
    why = "--assume-b" if given else "a saved step near T/4 with saved steps on each side; or --assume-b STEP"
    return (f"{NOTE} {run}B = {points['B']} ASSUMED ({why}), T = {points['T']} ASSUMED (the last saved step, "
            f"as the run will choose); RL starting points: {_starts(points)}")


def chosen_note(seed: int | None, points: Mapping[str, int | None], path: str) -> str:
    """The plan's line for an SFT run whose points are chosen already."""
    run = "" if seed is None else f"SFT seed {seed}: "
    return (f"{NOTE} {run}B = {points['B']}, T = {points['T']} as chosen ({path}); "
            f"RL starting points: {_starts(points)}")


def job_counts(table: str) -> dict[str, int]:
    """Rule name -> number of jobs, from the table a dry run prints with `--quiet rules`."""
    counts = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plan", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--assume-b", type=int, metavar="STEP",
                        help="the saved SFT step to assume as B (default: one with saved steps on each side)")
    ours, args = parser.parse_known_args(argv)
    snakemake = Path(sys.executable).parent / "snakemake"
    env = {**os.environ, ASSUME: "auto" if ours.assume_b is None else str(ours.assume_b)}
    cmd = [str(snakemake), "-n", *args]
    print("+", " ".join(cmd), f"  ({ASSUME}={env[ASSUME]})", flush=True)
    notes, pending = [], False
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            if line.startswith(NOTE):
                notes.append(line.rstrip("\n"))
            pending = pending or CHECKPOINT_PENDING in line
    if proc.returncode != 0:
        return proc.returncode
    print()
    if not notes and pending:
        # A points file is there, but its choose_points job runs again (its code, params or inputs changed).
        print(f"{NOTE} choose_points runs again before the jobs that use its points: they are planned once "
              "it has, and are not in this plan. Remove its points file to plan them with assumed points.")
    elif not notes:
        print(f"{NOTE} the config names no point read off the SFT curve: this dry run is the whole plan.")
    elif any("ASSUMED" in n for n in notes):
        print(f"{NOTE} the jobs after choose_points above were planned with assumed points:")
        print("\n".join(notes))
        print(f"{NOTE} the run reads B off the SFT curve, so its jobs can differ: a point with no saved step "
              "in its range is dropped (B at the first saved step drops before_peak), and an earlier B is "
              "compared with more later checkpoints.")
    else:
        print("\n".join(notes))
        print(f"{NOTE} every SFT run's points are read from its points file, as a plain dry run reads them: "
              "this dry run is the whole plan.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

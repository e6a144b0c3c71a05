"""Reliability: inject faults into the smoke study and count how many it survives with nothing lost.

In a temporary copy of the workflow (config/smoke.yaml, the package frozen as it is now), one clean run up
to the RL logs gives the reference; then each fault, picked and placed at random (seeded):

  kill-sft     the SFT job and snakemake SIGKILLed together after a random step (runlog.fault_point,
               RLHEALS_FAULT_AFTER_STEP + RLHEALS_FAULT_GROUP); `--unlock`, then `--rerun-incomplete`
  kill-rl      one RL job (random algo) SIGKILLed after a random update, alone; rerun
  kill-timed   snakemake and its jobs SIGKILLed at a random moment of SFT + RL; `--unlock`, `--rerun-incomplete`
  corrupt      a bit flipped in a random file of a random published model: its evaluation must fail naming
               the file, with nothing written; then, as the message says, the directory is deleted and the
               same command run again: it rebuilds the model (identical) and evaluates it
  truncate     the same with a file cut short
  bad-config   an unknown key, a wrong type, an unknown model id in restore.edits: `snakemake -n` must
               reject it naming the key, before any job runs

Survived: the rerun ends with every SFT/RL model and log byte-identical to the reference, every model
directory passing its checksum manifest and no work directory left (a bad input: rejected with a message
naming the problem, nothing changed).

    .venv/bin/python benchmarks/reliability.py [--faults 12] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PARTS = ("Snakefile", "rules", "scripts", "config", "envs", "requirements.txt", "requirements-analysis.txt")
TARGET = "results/tables/rl_log.parquet"
ALGOS = ("grpo-6", "ppo-6", "sft_continue-6")
BAD_CONFIGS = {  # appended to the smoke config -> what the rejection must say
    "unknown key": ("  lrr: 1.0e-3\n", "config key sft.lrr: unknown key"),
    "wrong type": ("  max_steps: ten\n", "config key sft.max_steps: 'ten' is not of type 'integer'"),
    "unknown model id": ("restore:\n  edits:\n    - {name: typo, kind: directions, base: sft-2, target: sft-7, top: 0.5}\n",
                         "config key restore.edits.typo.target: 'sft-7' is not a model of this study"),
}
KINDS = ("kill-sft", "kill-rl", "kill-timed", "corrupt", "truncate", "bad-config")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Study:
    """The workflow copy: runs snakemake, knows the reference outputs, checks a run against them."""

    def __init__(self, path: Path):
        self.path, self.results = path, path / "results"
        for part in PARTS:
            src = ROOT / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, path / part)
        shutil.copytree(ROOT / "src" / "rlheals", path / "package" / "rlheals")  # frozen: edits elsewhere change nothing
        self.env = {**os.environ, "PYTHONPATH": str(path / "package")}
        self.reference: dict[str, str] = {}

    def snakemake(self, *args, config="config/smoke.yaml", env=None, session=False) -> subprocess.CompletedProcess:
        cmd = [str(SNAKEMAKE), *args, "--cores", "2", "--configfile", config]
        return subprocess.run(cmd, cwd=self.path, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              start_new_session=session)

    def outputs(self) -> dict[str, str]:
        """sha256 of every SFT and RL model's weights and of their logs."""
        found = {p.name: sha256(p / "model.safetensors") for p in sorted((self.results / "models").glob("*-*"))
                 if p.is_dir() and not p.name.startswith("edit-")}
        logs = [self.results / "tables" / "sft_log.parquet", *sorted((self.results / "tables" / "rl").glob("*.parquet"))]
        found.update({p.name: sha256(p) for p in logs if p.exists()})
        return found

    def forget(self, sft: bool, runs=ALGOS) -> None:
        """Delete outputs so that the next run makes them again: the RL runs given (and SFT)."""
        doomed = [self.results / "models" / f"rl-{run}{suffix}" for run in runs for suffix in ("", "-u1")]
        doomed += [self.results / "tables" / "rl" / f"{run}.parquet" for run in runs]
        doomed += [self.results / "tables" / name for name in ("rl_log.parquet", "rl_log.csv")]
        if sft:
            doomed += [*(self.results / "models").glob("sft-*"), self.results / "tables" / "sft_log.parquet"]
        for path in doomed:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def verdict(self, rerun: subprocess.CompletedProcess, expect_resume: list[str] = ()) -> tuple[bool, str]:
        """After a rerun: completed, identical to the reference, every manifest good, no work left."""
        from rlheals import models

        if rerun.returncode:
            return False, "rerun failed: " + rerun.stderr.strip().splitlines()[-1][:120]
        now = self.outputs()
        differ = sorted(k for k in set(now) | set(self.reference) if now.get(k) != self.reference.get(k))
        if differ:
            return False, f"differs from the clean run: {differ}"
        for model in (self.results / "models").iterdir():
            if model.is_dir() and not model.name.endswith((".tmp", ".old")):
                try:
                    models.check_model_dir(model)
                except (OSError, ValueError) as err:
                    return False, f"{model.name}: {err}"
        work = self.results / "work"
        if work.exists() and list(work.iterdir()):
            return False, f"work left: {sorted(p.name for p in work.iterdir())}"
        resumed = [log for log in expect_resume if "resuming from" in (self.path / "logs" / log).read_text()]
        return True, "identical" + (f"; resumed: {', '.join(resumed)}" if resumed else "")

    def rerun_after_kill(self) -> subprocess.CompletedProcess:
        self.snakemake("--unlock")
        return self.snakemake(TARGET, "--rerun-incomplete")


def kill_sft(study: Study, rng: random.Random) -> tuple[str, bool, str]:
    step = rng.randint(1, 6)
    study.forget(sft=True)
    killed = study.snakemake(TARGET, env={"RLHEALS_FAULT_AFTER_STEP": str(step), "RLHEALS_FAULT_GROUP": "1"}, session=True)
    if killed.returncode != -signal.SIGKILL:
        return f"after SFT step {step}", False, f"not killed (exit {killed.returncode})"
    return (f"after SFT step {step}", *study.verdict(study.rerun_after_kill(), ["sft.log"]))


def kill_rl(study: Study, rng: random.Random) -> tuple[str, bool, str]:
    run, update = rng.choice(ALGOS), rng.randint(1, 2)
    study.forget(sft=False, runs=[run])
    killed = study.snakemake(TARGET, env={"RLHEALS_FAULT_AFTER_STEP": str(update)})
    detail = f"{run} after update {update}"
    if killed.returncode == 0:
        return detail, False, "not killed"
    return (detail, *study.verdict(study.snakemake(TARGET), [f"rl/{run}.log"]))


def kill_timed(study: Study, rng: random.Random, span: float) -> tuple[str, bool, str]:
    delay = rng.uniform(1.0, span)
    study.forget(sft=True)
    proc = subprocess.Popen([str(SNAKEMAKE), TARGET, "--cores", "2", "--configfile", "config/smoke.yaml"], cwd=study.path,
                            env=study.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=delay)
        return f"at {delay:.1f} s", False, "finished before the kill: span too long"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return (f"at {delay:.1f} s", *study.verdict(study.rerun_after_kill(), ["sft.log", *(f"rl/{r}.log" for r in ALGOS)]))


def damage(study: Study, rng: random.Random, kind: str) -> tuple[str, bool, str]:
    """Flip a byte in (or cut short) a random file of a random SFT/RL model; its evaluation must fail
    naming the file and write nothing; deleting the directory and rerunning restores it exactly. sft-0 is
    left out: it shares its files (hard links) with the base model, so damaging it damages the base too,
    whose rebuild is the whole pretraining (that case is the base's own manifest check)."""
    candidates = sorted(p for p in (study.results / "models").glob("*-*") if p.is_dir() and p.name != "sft-0")
    model = rng.choice(candidates)
    file = rng.choice(sorted(p for p in model.iterdir() if p.is_file() and not p.name.startswith(".")))
    size = file.stat().st_size
    if kind == "corrupt":
        offset = rng.randrange(size)
        with open(file, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
        detail = f"{model.name}/{file.name} bit flipped at {offset}"
    else:
        cut = rng.randrange(size)
        with open(file, "r+b") as fh:
            fh.truncate(cut)
        detail = f"{model.name}/{file.name} cut to {cut} of {size} bytes"
    out = study.results / "eval" / f"{model.name}.parquet"
    out.unlink(missing_ok=True)
    # The detection needs no full evaluation: two episodes (eval.episodes feeds no other rule), and the
    # evaluation alone may run (the damaged model stands as it is).
    quick = study.path / "config" / "quick.yaml"
    quick.write_text((study.path / "config" / "smoke.yaml").read_text() + "eval: {episodes: 2}\n")
    proc = study.snakemake(f"results/eval/{model.name}.parquet", "--allowed-rules", "evaluate", config="config/quick.yaml")
    log = (study.path / "logs" / "eval" / f"{model.name}.log").read_text() if proc.returncode else ""
    named = f"results/models/{model.name}/{file.name}"
    if proc.returncode == 0 or named not in log or out.exists():
        return detail, False, f"not caught (exit {proc.returncode})"
    message = next(line for line in log.splitlines() if named in line and "Error" in line).split("Error: ", 1)[-1]
    shutil.rmtree(model)  # what the message tells the user to do, then the same command: it rebuilds the model
    again = study.snakemake(f"results/eval/{model.name}.parquet", config="config/quick.yaml")
    ok, note = study.verdict(again)
    return detail, ok, f"{message[:90]}... ; rebuilt: {note}"


def bad_config(study: Study, rng: random.Random, name: str) -> tuple[str, bool, str]:
    extra, expected = BAD_CONFIGS[name]
    smoke = (study.path / "config" / "smoke.yaml").read_text()
    text = smoke + extra if not extra.startswith("restore:") else smoke.replace("restore:\n  edits:\n", extra, 1)
    (study.path / "config" / "bad.yaml").write_text(text)
    before = study.outputs()
    proc = study.snakemake(TARGET, config="config/bad.yaml")
    said = proc.stdout + proc.stderr
    if proc.returncode == 0 or expected not in said:
        return name, False, f"not rejected as expected (exit {proc.returncode})"
    if study.outputs() != before or "Job stats" in said:
        return name, False, "a job ran or an output changed"
    return name, True, expected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=12, help="how many faults to inject (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # Every kind at least once (bad configs: each of the three), the rest drawn at random.
    plan = ["kill-sft", "kill-rl", "kill-timed", "corrupt", "truncate", *BAD_CONFIGS]
    plan = plan[: args.faults] + [rng.choice(KINDS[:5]) for _ in range(args.faults - len(plan))]
    rng.shuffle(plan)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        study = Study(Path(tmp))
        start = time.perf_counter()
        clean = study.snakemake(TARGET)
        if clean.returncode:
            print(clean.stderr[-3000:])
            return 1
        study.reference = study.outputs()
        study.forget(sft=True)
        start = time.perf_counter()
        study.snakemake(TARGET)  # SFT + RL alone: how long a timed kill may wait
        span = time.perf_counter() - start
        if study.outputs() != study.reference:
            print("two clean runs differ: no reference")
            return 1
        print(f"reference: clean run of data, base, SFT and 3 RL runs; SFT + RL alone {span:.0f} s\n")
        print(f" #  {'fault':<10}  {'where':<50}  {'outcome':<8}  {'time':>7}  note")
        rows = []
        for i, kind in enumerate(plan, 1):
            start = time.perf_counter()
            if kind in BAD_CONFIGS:
                detail, ok, note = bad_config(study, rng, kind)
                kind = "bad-config"
            elif kind == "kill-sft":
                detail, ok, note = kill_sft(study, rng)
            elif kind == "kill-rl":
                detail, ok, note = kill_rl(study, rng)
            elif kind == "kill-timed":
                detail, ok, note = kill_timed(study, rng, span)
            else:
                detail, ok, note = damage(study, rng, kind)
            rows.append((i, kind, detail, "survived" if ok else "LOST", time.perf_counter() - start, note))
            print(f"{i:>2}  {kind:<10}  {detail:<50}  {rows[-1][3]:<8}  {rows[-1][4]:5.0f} s  {note}", flush=True)
            if not ok:  # a fresh reference state for the next fault
                study.forget(sft=True)
                study.snakemake(TARGET)
    survived = sum(row[3] == "survived" for row in rows)
    print(f"\nsurvived {survived} of {len(rows)} (total {time.perf_counter() - began:.0f} s)")
    return 0 if survived == len(rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())

#!/usr/bin/env python3
"""Set up a local virtual environment with the pinned stack, then run the study or the tests.

    python3 tasks.py study [snakemake args...]   # the whole study on config/config.yaml
    python3 tasks.py test  [pytest args...]      # the test suite (add `-m slow` for the slow tests)
    python3 tasks.py report [snakemake args...]  # report.html of the study in results/, with its config
    python3 tasks.py plan  [--assume-b STEP] [snakemake args...]   # every job, B and T assumed (dry run)
    python3 tasks.py envs                        # write the conda envs (envs/*.yaml) from requirements*.txt

Needs only Python 3.11+ and pip. The venv (.venv) is rebuilt when requirements*.txt change.
RLHEALS_TORCH_INDEX=URL installs torch from that index, e.g. https://download.pytorch.org/whl/cpu for the
CPU-only build; unset, from pip's configured indexes (on a stock Linux machine: the CUDA build).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("RLHEALS_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
# The conda environments of cluster runs (--sdm conda): each is written out from one requirements file, so
# that it holds its pins itself (snakemake copies it into .snakemake/conda/ and hashes only its own text).
ENVS = {
    "train": ("requirements.txt", "Base model, SFT and RL"),
    "analysis": ("requirements-analysis.txt", "Data, evaluation, SVD, spectrum, restoration, report"),
}
TORCH_INDEX = "RLHEALS_TORCH_INDEX"


def run(*cmd) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, cwd=ROOT)


def pins(path: Path) -> list[str]:
    """The requirements of a requirements file, its `-r` includes read in place, without comments."""
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        option, _, rest = line.partition(" ")
        if option in ("-r", "--requirement"):
            out += pins(path.parent / rest.strip())
        elif line.startswith("-"):
            sys.exit(f"{path.name}, line {number}: {line!r}: only requirements and -r includes are allowed")
        else:
            out.append(line)
    return out


def env_text(name: str) -> str:
    """envs/{name}.yaml: Python, pip and the pins of its requirements file, written out."""
    reqs, what = ENVS[name]
    head = [
        f"# {what}: the conda env of cluster runs with --sdm conda.",
        f"# Written by `python3 tasks.py envs` from {reqs}: edit that, then run it again.",
        "# pip installs torch's default build (on Linux, the CUDA one); jobs import rlheals from src/.",
    ]
    body = ["channels:", "  - conda-forge", "  - nodefaults", "dependencies:", "  - python=3.11", "  - pip"]
    return "\n".join([*head, *body, "  - pip:", *(f"      - {p}" for p in pins(ROOT / reqs))]) + "\n"


def write_envs() -> int:
    for name in ENVS:
        path = ROOT / "envs" / f"{name}.yaml"
        text = env_text(name)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print("wrote", path.relative_to(ROOT))
    return 0


def torch_index() -> list[str]:
    """pip's arguments for the index torch comes from: RLHEALS_TORCH_INDEX, else pip's configuration."""
    index = os.environ.get(TORCH_INDEX)
    if index is None:
        return []
    if not re.fullmatch(r"(https?|file)://\S+", index.strip()):
        sys.exit(f"{TORCH_INDEX}={index!r} is not an index URL; e.g. https://download.pytorch.org/whl/cpu "
                 "for the CPU-only build, or unset it for pip's configured indexes")
    return ["--index-url", index.strip()]


def ensure_venv(dev: bool) -> None:
    reqs = ROOT / ("requirements-dev.txt" if dev else "requirements.txt")
    files = [ROOT / "requirements.txt", ROOT / "requirements-analysis.txt", reqs, ROOT / "pyproject.toml"]
    stamp_text = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    stamp = VENV / f".installed-{'dev' if dev else 'run'}"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return
    index = torch_index()
    if not (BIN / "python").exists():
        venv.create(VENV, with_pip=True)
    pip = [BIN / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    torch = next(p for p in pins(ROOT / "requirements-analysis.txt") if p.startswith("torch=="))
    # torch first, pinned, from the index the user chose: otherwise a dependency pulls a multi-GB CUDA
    # build (docs/stack.md, pitfall 1). The pin then holds it in place (2.13.0+cpu satisfies ==2.13.0).
    run(*pip, *index, torch)
    run(*pip, "-r", reqs)
    run(*pip, "--no-deps", "-e", ROOT)
    stamp.write_text(stamp_text)


def report(args: list[str]) -> int:
    """snakemake --report for the study in results/, with the config it ran with (the workflow records it
    in results/study_config.json), unless --configfile or --config is given; to report.html unless
    --report names another file."""
    if not (BIN / "snakemake").exists():
        sys.exit(f"no {BIN / 'snakemake'}: run a study first (python3 tasks.py study)")
    record = Path("results") / "study_config.json"
    given = any(a.split("=", 1)[0] in ("--configfile", "--configfiles", "--config", "-C") for a in args)
    config = [] if given or not (ROOT / record).exists() else ["--configfile", record]
    out = [] if any(a.split("=", 1)[0] == "--report" for a in args) else ["--report", "report.html"]
    cmd = [BIN / "snakemake", *config, *out, *args]
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), cwd=ROOT).returncode


def main() -> int:
    if sys.version_info < (3, 11):
        sys.exit("Python 3.11 or newer is needed")
    if sys.argv[1:] == ["envs"]:
        return write_envs()
    if sys.argv[1:2] == ["report"]:
        return report(sys.argv[2:])
    if len(sys.argv) < 2 or sys.argv[1] not in ("study", "test", "plan"):
        sys.exit(__doc__)
    task, args = sys.argv[1], sys.argv[2:]
    ensure_venv(dev=task == "test")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = {"study": [BIN / "snakemake", "--cores", "all", *args], "test": [BIN / "pytest", *args],
           "plan": [BIN / "python", "-m", "rlheals.plan", *args]}[task]  # the plan: src/rlheals/plan.py
    print("+", " ".join(map(str, cmd)), flush=True)
    # The code the study runs: the checkout's commit, marked when files differ from it (no git: none).
    git = shutil.which("git") and subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                                 capture_output=True, text=True)
    commit = git.stdout.strip() if git and git.returncode == 0 else None
    start = time.time()
    code = subprocess.run(list(map(str, cmd)), cwd=ROOT, env=env).returncode
    if task == "study" and code == 0 and "-n" not in args and "--dry-run" not in args:
        # The wall time of the run, for docs/results/record.py (it covers only the jobs this run ran).
        record = {"seconds": round(time.time() - start), "cores": os.cpu_count(), "arguments": args,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit}
        (ROOT / "results" / "run_time.json").write_text(json.dumps(record, indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())

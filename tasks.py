#!/usr/bin/env python3
"""Set up a local virtual environment with the pinned stack, then run the study or the tests.

    python3 tasks.py study [snakemake args...]   # the whole study on config/config.yaml
    python3 tasks.py test  [pytest args...]      # the test suite (add `-m slow` for the slow tests)

Needs only Python 3.11+ and pip. The venv (.venv) is rebuilt when requirements*.txt change.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("RLHEALS_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def run(*cmd) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, cwd=ROOT)


def ensure_venv(dev: bool) -> None:
    reqs = ROOT / ("requirements-dev.txt" if dev else "requirements.txt")
    files = [ROOT / "requirements.txt", ROOT / "requirements-analysis.txt", reqs, ROOT / "pyproject.toml"]
    stamp_text = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    stamp = VENV / f".installed-{'dev' if dev else 'run'}"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return
    if not (BIN / "python").exists():
        venv.create(VENV, with_pip=True)
    pip = [BIN / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch first, pinned: otherwise a dependency pulls a multi-GB CUDA build (docs/stack.md, pitfall 1).
    run(*pip, "torch==2.13.0")
    run(*pip, "-r", reqs)
    run(*pip, "--no-deps", "-e", ROOT)
    stamp.write_text(stamp_text)


def main() -> int:
    if sys.version_info < (3, 11):
        sys.exit("Python 3.11 or newer is needed")
    if len(sys.argv) < 2 or sys.argv[1] not in ("study", "test"):
        sys.exit(__doc__)
    task, args = sys.argv[1], sys.argv[2:]
    ensure_venv(dev=task == "test")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [BIN / "snakemake", "--cores", "all", *args] if task == "study" else [BIN / "pytest", *args]
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

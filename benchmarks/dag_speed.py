"""Seconds for `snakemake -n` to validate the config and build the whole DAG of each paper-scale config,
in a fresh copy of the workflow (no results), with the number of jobs planned. The model must be on the
machine even for a dry run: a tiny checkpoint of its family (tests/families.py) stands in for it.

    .venv/bin/python benchmarks/dag_speed.py
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
FAMILY = {"paper-qwen2.5-7b.yaml": "qwen25", "paper-llama-3.2-11b.yaml": "mllama"}


def main() -> int:
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("Snakefile", "rules", "scripts", "config", "envs"):
            src = ROOT / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, Path(tmp) / part)
        for config in sorted((ROOT / "config").glob("paper-*.yaml")):
            model = Path(tmp) / "models" / config.stem
            write = f"import families; families.write({FAMILY[config.name]!r}, {str(model)!r})"
            subprocess.run([sys.executable, "-c", write], cwd=ROOT / "tests", capture_output=True, check=True)
            local = "model=" + json.dumps({"source": "local", "local_path": str(model)})
            start = time.perf_counter()
            cmd = [str(SNAKEMAKE), "-n", "--quiet", "rules", "--configfile", f"config/{config.name}",
                   "--config", local]
            out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=True).stdout
            seconds = time.perf_counter() - start
            worst = max(worst, seconds)
            total = next(line.split()[1] for line in out.splitlines() if line.startswith("total"))
            print(f"{config.name}: {total} jobs planned in {seconds:.1f} s (limit 15 s)")
    return 0 if worst < 15 else 1


if __name__ == "__main__":
    sys.exit(main())

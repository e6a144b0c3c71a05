import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "config", "envs", "slurm", "requirements.txt", "requirements-analysis.txt")


class Workflow:
    """A copy of the workflow in a temporary directory, run with the smoke config."""

    def __init__(self, path: Path):
        self.path = path
        for part in WORKFLOW_PARTS:
            src = ROOT / part
            (shutil.copytree if src.is_dir() else shutil.copy)(src, path / part)

    def run(self, *args, configfile="config/smoke.yaml", check=True, env=None) -> subprocess.CompletedProcess:
        cmd = [str(SNAKEMAKE), *args, "--cores", "2", "--configfile", configfile]  # targets before --configfile (nargs="+")
        proc = subprocess.run(cmd, cwd=self.path, capture_output=True, text=True, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def dry_run_jobs(self, *args, configfile="config/smoke.yaml", env=None) -> dict[str, int]:
        """Rule name -> number of jobs a dry run would run."""
        out = self.run(*args, "-n", "--quiet", "rules", configfile=configfile, env=env).stdout  # targets first: --quiet takes values
        jobs = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
                jobs[parts[0]] = int(parts[1])
        return jobs

    def write_config(self, name: str, text: str) -> str:
        (self.path / "config" / name).write_text(text)
        return f"config/{name}"


@pytest.fixture
def workflow(tmp_path) -> Workflow:
    return Workflow(tmp_path)

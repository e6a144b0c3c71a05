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

    def __init__(self, path: Path, copy: bool = True):
        self.path = path
        for part in WORKFLOW_PARTS if copy else ():
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


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> Path:
    """The whole smoke study, run once per test session (about 3 minutes on 2 cores)."""
    study = Workflow(tmp_path_factory.mktemp("smoke-study"))
    study.run()
    return study.path


@pytest.fixture
def studied_workflow(smoke_study, tmp_path) -> Workflow:
    """A copy of the smoke study after a complete run: outputs with their times and snakemake's metadata,
    so it is as complete as the original (a dry run schedules nothing); the test may change it freely."""
    path = tmp_path / "study"
    transient = {"locks", "incomplete", "scripts"}  # snakemake's own, of the run that made the original
    shutil.copytree(smoke_study, path, symlinks=True,
                    ignore=lambda folder, names: transient & set(names) if Path(folder).name == ".snakemake" else ())
    return Workflow(path, copy=False)

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_snakemake_lint_is_clean(workflow):
    proc = workflow.run("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check_passes():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    proc = subprocess.run([str(snakefmt), "--check", "Snakefile", "rules"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_parsing_the_workflow_imports_no_torch(workflow):
    # Every cluster job re-parses the Snakefile: its top level must not import torch or transformers.
    cmd = [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--cores", "1"]
    proc = subprocess.run(cmd, cwd=workflow.path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line}
    assert "snakemake" in imported and "rlheals.config" in imported
    assert not {"torch", "transformers", "trl"} & imported

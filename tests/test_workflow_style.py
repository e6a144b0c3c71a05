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


def test_the_analysis_stages_import_nothing_their_environment_lacks():
    """envs/analysis.yaml installs requirements-analysis.txt only: the scripts of the rules that use it,
    and the package modules they import, must not import the training stack."""
    import re

    scripts = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            script = re.search(r'script:\s*"\.\./scripts/(\w+)\.py"', block)
            if "envs/analysis.yaml" in block and script:
                scripts.add(script.group(1))
    assert {"evaluate", "svd", "spectrum", "restore", "figure"} <= scripts
    imports = set()
    for name in scripts:
        for line in (ROOT / "scripts" / f"{name}.py").read_text().splitlines():
            if line.startswith(("import ", "from ")) and "snakemake" not in line:
                imports.add(line.split("#")[0].strip())
    training = ("trl", "accelerate", "datasets", "deepspeed")
    code = "; ".join(sorted(imports)) + f"; import sys; print([m for m in {training!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    pinned = (ROOT / "requirements-analysis.txt").read_text()
    assert "-r requirements-analysis.txt" in (ROOT / "requirements.txt").read_text()
    assert not any(f"{m}==" in pinned for m in training)


def test_the_workflow_has_one_handler_of_each_kind():
    # Snakemake keeps only the last onstart/onsuccess/onerror it parses: a second one would silently
    # replace the first (the study's config record, rules/report.smk).
    texts = [ROOT.joinpath("Snakefile").read_text()] + [p.read_text() for p in sorted(ROOT.glob("rules/*.smk"))]
    counts = {handler: sum(line.startswith(f"{handler}:") for text in texts for line in text.splitlines())
              for handler in ("onstart", "onsuccess", "onerror")}
    assert counts["onstart"] == 1 and counts["onsuccess"] <= 1 and counts["onerror"] <= 1, counts

"""Exact reruns under package edits, on a finished smoke study: editing comments, docstrings or the layout
of a package module plans no job; editing its code plans the jobs of exactly the rules whose scripts reach
it (through wrapped and nested imports too), and what depends on their outputs, nothing else."""

import os
import re
import shutil

from rlheals import workflow

PARAMS_CHANGED = "Params have changed since last execution"


def planned(study, env) -> dict[str, list[str]]:
    """Rule name -> the reason of each job a dry run plans (a job's first reason only: snakemake names a
    params change only for jobs whose inputs are not new)."""
    jobs: dict[str, list[str]] = {}
    rule = None
    for line in study.run("-n", env=env).stdout.splitlines():
        m = re.match(r"(?:local)?rule (\w+):", line.strip())
        if m:
            rule = m.group(1)
        elif line.strip().startswith("reason:") and rule:
            jobs.setdefault(rule, []).append(line.strip())
            rule = None
    jobs.pop("all", None)
    return jobs


def rules_reaching(study, package, module: str) -> set[str]:
    """The rules of this study whose scripts import `module`, directly or through other modules."""
    scripts = {}
    for smk in (study.path / "rules").glob("*.smk"):
        text = smk.read_text()
        scripts.update(re.findall(r"rule (\w+):.*?script:\s*\"\.\./scripts/(\w+\.py)\"", text, re.S))
    # The rules with jobs in this study (figure rules are made in a loop; a smoke study that names its RL
    # steps has no selection evaluation)
    defined = set(study.dry_run_jobs("--forceall"))
    scripts.update({rule: "figure.py" for rule in defined if rule.startswith("figure_")})

    return {rule for rule, script in scripts.items()
            if rule in defined and module in workflow.modules_used(study.path / "scripts" / script, package)}


def test_comment_edits_plan_nothing_and_code_edits_plan_exactly_the_stages_that_reach_the_code(finished_study, tmp_path):
    study = finished_study
    package = tmp_path / "pkg" / "rlheals"
    shutil.copytree(workflow.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(package.parent)}

    cards = package / "cards.py"  # used by nearly every stage
    cards.write_text("# A new comment at the top.\n" + cards.read_text().replace('"""', '"""Edited docstring. ', 1))
    evaluate = package / "evaluate.py"  # its import of the decoder, wrapped as a formatter would
    text = evaluate.read_text()
    imported = re.search(r"^from rlheals\.decoding import (.+)$", text, re.M)
    wrapped = "from rlheals.decoding import (\n    " + ",\n    ".join(imported.group(1).split(", ")) + ",\n)"
    evaluate.write_text(text.replace(imported.group(0), wrapped))
    assert planned(study, env) == {}

    # Code of a module only the report's tables and figures use: those rerun, nothing upstream does.
    findings = package / "findings.py"
    findings.write_text(findings.read_text() + "\nCODE_CHANGED = True\n")
    expected = rules_reaching(study, package, "findings")
    assert "report_tables" in expected and "evaluate" not in expected
    assert set(planned(study, env)) == expected
    shutil.copy(workflow.PACKAGE_DIR / "findings.py", findings)

    # Code of the decoder, reached only through the wrapped import: the rules that reach it rerun for
    # their params; every other planned job reruns only because its inputs are new.
    decoding = package / "decoding.py"
    decoding.write_text(decoding.read_text() + "\nCODE_CHANGED = True\n")
    expected = rules_reaching(study, package, "decoding")
    assert {"evaluate", "rl", "base_tiny"} <= expected and "spectrum" not in expected
    jobs = planned(study, env)
    assert expected <= set(jobs)
    assert {rule for rule, reasons in jobs.items() if any(PARAMS_CHANGED in r for r in reasons)} <= expected
    downstream = ("reason: Input files updated by another job", "reason: Missing output files: results/models/edit-")
    assert {rule for rule, reasons in jobs.items() if rule not in expected  # edits: temp(), made again to evaluate
            for r in reasons if not r.startswith(downstream)} == set()

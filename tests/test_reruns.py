"""Exact reruns under package edits, on a finished smoke study: editing comments, docstrings or the layout
of a package module plans no job; editing its code plans exactly the jobs whose scripts reach it, through
wrapped and nested imports too, and what depends on their outputs."""

import os
import re
import shutil

from rlheals import workflow

def planned(study, env) -> dict[str, set[str]]:
    """Rule name -> the outputs of the jobs a dry run plans."""
    jobs: dict[str, set[str]] = {}
    rule = None
    for line in study.run("-n", env=env).stdout.splitlines():
        m = re.match(r"(?:local)?rule (\w+):", line.strip())
        if m:
            rule = m.group(1)
            jobs.setdefault(rule, set())
        elif line.strip().startswith("output:") and rule:
            jobs[rule] |= set(line.split(":", 1)[1].replace(",", " ").split())
    return jobs


def params_changed(study, env) -> set[str]:
    """The outputs whose params (config slice, code hash) differ from those they were made with."""
    return set(study.run("--list-changes", "params", env=env).stdout.split())


def script_of_rules(study) -> dict[str, str]:
    """Rule name -> its script, read from the rule files (figure rules share scripts/figure.py)."""
    scripts = {}
    for smk in (study.path / "rules").glob("*.smk"):
        for name, script in re.findall(r"rule (\w+):.*?script:\s*\"\.\./scripts/(\w+\.py)\"", smk.read_text(), re.S):
            scripts[name] = script
    return scripts


def test_comment_edits_plan_nothing_and_code_edits_plan_exactly_the_stages_that_reach_the_code(finished_study, tmp_path):
    study = finished_study
    package = tmp_path / "pkg" / "rlheals"
    shutil.copytree(workflow.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    hashes = lambda: {s.name: workflow.code_hash(s, package) for s in (study.path / "scripts").glob("*.py")}  # noqa: E731
    before = hashes()
    assert planned(study, env) == {} and params_changed(study, env) == set()  # the copy is the same code

    cards = package / "cards.py"  # used by nearly every stage
    cards.write_text("# A new comment at the top.\n" + cards.read_text().replace('"""', '"""Edited docstring. ', 1))
    evaluate = package / "evaluate.py"  # its import of the decoding engine, wrapped as a formatter would
    text = evaluate.read_text()
    imported = re.search(r"^from rlheals\.decoding import (.+)$", text, re.M)
    wrapped = "from rlheals.decoding import (\n    " + ",\n    ".join(imported.group(1).split(", ")) + ",\n)"
    evaluate.write_text(text.replace(imported.group(0), wrapped))
    assert hashes() == before
    assert planned(study, env) == {} and params_changed(study, env) == set()

    decoding = package / "decoding.py"  # reached only through the wrapped import
    decoding.write_text(decoding.read_text() + "\nCODE_CHANGED = True\n")
    after = hashes()
    changed_scripts = {s for s in after if after[s] != before[s]}
    assert {"evaluate.py", "rl.py", "base_tiny.py"} <= changed_scripts and "spectrum.py" not in changed_scripts
    jobs = planned(study, env)
    scripts = script_of_rules(study)
    changed = params_changed(study, env)
    rerun_for_code = {rule for rule, outputs in jobs.items() if outputs & changed}
    defined = set(study.run("--list-rules", env=env).stdout.split())  # base_local: not in a tiny study
    expected = {rule for rule, script in scripts.items() if script in changed_scripts and rule in defined}
    assert rerun_for_code == expected
    assert rerun_for_code and {"evaluate", "base_tiny"} <= rerun_for_code
    assert changed <= set().union(*jobs.values())  # every output made with the old code is planned again

"""What will run, before it runs: the whole plan of a study (rlheals.plan, `python3 tasks.py plan`), a dry
run with the points read off the SFT curve assumed, which a plain dry run cannot plan past; and the
outputs a config change reruns, as config/README.md says to list them."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from rlheals import plan

# The smoke study with its steps named by the points the workflow chooses: with B = 2 and T = 6 it is
# the smoke study itself (spectrum.best_ood_step 2, RL from 6, edits between sft-2 and sft-6).
NAMED_POINTS = """\
rl: {from_steps: [last]}
spectrum: {best_ood_step: B}
restore:
  edits:
    - {name: dirs_top50, kind: directions, base: sft-B, target: sft-T, top: 0.5}
    - {name: layers50, kind: layers, base: sft-B, target: sft-T, layers: 0.5}
    - {name: reverse, kind: directions, base: sft-T, target: rl-grpo-T, top: 1.0}
"""


# What a config that names points adds to the smoke study's jobs: the 4 SFT checkpoints on the selection
# hands, and the checkpoint that reads B and T off them.
CHOOSING = {"evaluate_select": 4, "choose_points": 1}


def run_plan(workflow, *args, configfile=("config/smoke.yaml",)) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlheals.plan", *args, "--quiet", "rules", "--configfile", *configfile]
    return subprocess.run(cmd, cwd=workflow.path, capture_output=True, text=True)


def test_the_default_assumption_leaves_every_starting_point_a_step():
    steps = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["sft"]["save_steps"]
    points = plan.assumed_points(steps)
    assert points == {"B": 200, "T": 800, "before_peak": 100, "peak": 200, "mid_decline": 400, "last": 800}
    # Few steps: B between the first saved step and T, so that before_peak and mid_decline exist.
    assert plan.assumed_points([0, 2, 4, 6]) == {"B": 4, "T": 6, "before_peak": 2, "peak": 4,
                                                 "mid_decline": None, "last": 6}
    assert plan.default_peak([0, 10, 20, 30, 40, 50, 60, 70, 80]) == 20


def test_a_given_b_is_chosen_as_choose_points_would_and_a_bad_one_is_named():
    points = plan.assumed_points([0, 10, 25, 50, 800], peak=10)
    assert points["B"] == 10 and points["before_peak"] is None and points["mid_decline"] == 50
    with pytest.raises(ValueError, match=r"--assume-b 7: not a saved SFT step after 0 \(sft.save_steps: \["):
        plan.assumed_points([0, 10, 800], peak=7)
    with pytest.raises(ValueError, match="--assume-b 0"):
        plan.assumed_points([0, 10, 800], peak=0)
    assert plan.parse_assumption("auto") is None and plan.parse_assumption("25") == 25
    with pytest.raises(ValueError, match="RLHEALS_PLAN_ASSUME_B='peak': expected a saved SFT step or 'auto'"):
        plan.parse_assumption("peak")


def test_plan_lists_every_job_a_dry_run_cannot_see_yet(workflow):
    named = workflow.write_config("named.yaml", NAMED_POINTS)
    # A plain dry run stops at the choose_points checkpoint: nothing after SFT's evaluation is planned.
    plain = workflow.dry_run_jobs(configfile=("config/smoke.yaml", named))
    assert plain["choose_points"] == 1 and "rl" not in plain and "spectrum" not in plain

    proc = run_plan(workflow, "--assume-b", "2", configfile=("config/smoke.yaml", named))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # With B = 2 and T = 6 assumed, the plan is the smoke study's own, and the checkpoint that chooses them.
    assert plan.job_counts(proc.stdout) == {**workflow.dry_run_jobs(), **CHOOSING}
    # B is the first saved step after 0: no before_peak.
    assert ("rlheals plan: B = 2 ASSUMED (--assume-b), T = 6 ASSUMED (the last saved step, as the run will "
            "choose); RL starting points: peak 2, mid_decline 4, last 6") in proc.stdout
    assert "the jobs after choose_points above were planned with assumed points" in proc.stdout

    # Points already written (choose_points has run) are used, not assumed, as a plain dry run uses them.
    points = workflow.path / "results" / "tables" / "sft_points.json"
    points.parent.mkdir(parents=True)
    points.write_text('{"B": 2, "T": 6, "before_peak": null, "peak": 2, "mid_decline": 4, "last": 6}')
    proc = run_plan(workflow, "--assume-b", "4", configfile=("config/smoke.yaml", named))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert plan.job_counts(proc.stdout) == {**workflow.dry_run_jobs(), **CHOOSING}
    assert "rlheals plan: B = 2, T = 6 as chosen (results/tables/sft_points.json)" in proc.stdout
    assert "ASSUMED" not in proc.stdout and "this dry run is the whole plan" in proc.stdout

    # A points file whose job runs again (here forced; a change of its code does the same): the jobs after
    # it are not planned yet, and the plan says so instead of calling itself whole.
    proc = run_plan(workflow, "--forcerun", "choose_points", configfile=("config/smoke.yaml", named))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rl" not in plan.job_counts(proc.stdout) and "this dry run is the whole plan" not in proc.stdout
    assert "rlheals plan: choose_points runs again before the jobs that use its points" in proc.stdout


def test_plan_of_a_config_that_names_every_step_says_it_is_the_whole_plan(workflow):
    proc = run_plan(workflow)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert plan.job_counts(proc.stdout) == workflow.dry_run_jobs()
    assert "the config names no point read off the SFT curve: this dry run is the whole plan" in proc.stdout
    assert "ASSUMED" not in proc.stdout


def test_assumed_points_are_refused_outside_a_dry_run(workflow):
    named = workflow.write_config("named.yaml", NAMED_POINTS)
    env = {**os.environ, plan.ASSUME: "2"}
    proc = workflow.run(configfile=("config/smoke.yaml", named), check=False, env=env)
    assert proc.returncode != 0
    assert "RLHEALS_PLAN_ASSUME_B is set: points are assumed in dry runs only" in proc.stdout + proc.stderr
    assert not (workflow.path / "results").exists()  # refused while planning, before any job


def summary(study, *args) -> list[dict]:
    """`snakemake --summary`: one row per output, by its header's column names."""
    lines = study.run(*args, "--summary").stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    header = lines[start].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[start + 1:] if "\t" in line]


def test_the_summary_names_the_outputs_a_config_change_reruns(finished_study):
    # Snakemake 9.27's --list-changes params lists every output whose params it recorded, changed or
    # not; the summary's status is right: after a change of spectrum.top_share (the spectrum rule's
    # param), exactly the spectrum jobs' outputs have changed params, and what reads them is pending.
    assert not [row for row in summary(finished_study) if row["status"] != "ok" and row["rule"] != "restore"]
    rows = summary(finished_study, "--config", 'spectrum={"top_share": 0.3}')
    changed = {row["output_file"] for row in rows if row["status"] == "params changed"}
    assert changed == {row["output_file"] for row in rows if row["rule"] == "spectrum"} and len(changed) == 8
    pending = {row["rule"] for row in rows if row["plan"] == "update pending"}
    assert {"spectrum", "spectrum_table", "report_tables"} <= pending
    assert not {"sft", "rl", "evaluate", "svd"} & pending


def test_the_readme_quotes_the_default_studys_dry_run_and_plan(workflow):
    # A plain dry run of the default study plans up to choose_points; `plan` plans every job.
    plain = workflow.dry_run_jobs(configfile="config/config.yaml")
    proc = run_plan(workflow, configfile=("config/config.yaml",))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    full = plan.job_counts(proc.stdout)
    assert "rl" not in plain and full["rl"] == 16  # 4 starting points x (ppo + control) x 2 seeds
    # The SFT checkpoints on the selection hands, which choose B and T; then every model on the test hands.
    assert plain["evaluate_select"] == full["evaluate_select"] == 11 and "evaluate" not in plain
    assert full["evaluate"] > 11
    assert all(plain[rule] == full[rule] == 1 for rule in ("base_tiny", "sft", "choose_points"))
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"`snakemake -n` on the default study lists {sum(plain.values())} jobs" in readme
    assert f"# every job: {sum(full.values())} for the default study" in readme


def test_job_counts_reads_the_rules_table_and_nothing_else():
    table = "Building DAG of jobs...\nJob stats:\njob        count\n---------  -----\nall            1\n" \
            "evaluate      11\nsft            1\ntotal         13\n\nrlheals plan: B = 2 ASSUMED\n"
    assert plan.job_counts(table) == {"all": 1, "evaluate": 11, "sft": 1}
    assert plan.job_counts("Nothing to be done (all requested files are present and up to date).") == {}


def test_points_are_chosen_on_the_selection_hands_not_the_test_hands(finished_study):
    """The SFT checkpoints of the smoke study, evaluated on the OOD selection hands by evaluate_select, and
    B read off those accuracies by choose_points; the test evaluations play no part."""
    import json

    import polars as pl

    workflow = finished_study
    named = workflow.write_config("named.yaml", NAMED_POINTS)
    workflow.run("results/tables/sft_points.json", configfile=("config/smoke.yaml", named))
    results = workflow.path / "results"
    chosen = json.loads((results / "tables" / "sft_points.json").read_text())
    select = {}
    for path in sorted((results / "eval_select").glob("sft-*.parquet")):
        rows = pl.read_parquet(path)
        assert set(rows["episode"].str.split("-").list.first()) == {"ood_select"}  # selection hands only
        select[int(path.stem.split("-")[1])] = rows["correct"].mean()
    assert sorted(select) == [0, 2, 4, 6] and chosen["ood_accuracy"] == {str(k): v for k, v in select.items()}
    trained = {step: acc for step, acc in select.items() if step > 0}
    assert chosen["B"] == max(trained, key=lambda s: (trained[s], -s)) and chosen["T"] == 6

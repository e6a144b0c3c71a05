"""Several SFT seeds with points chosen after SFT, on the smoke config: every stage runs for every seed,
each seed's RL runs and edits start from its own chosen checkpoints, and changing the seed list reruns
only the jobs of the seed that changed (and the tables and figures that gather all seeds)."""

import json
import re

import polars as pl
import pytest

from conftest import FIGURES

SEEDED = """\
sft:
  seed: [0, 1]
rl:
  algos: [grpo]
  from_steps: [peak, last]
spectrum:
  best_ood_step: B
restore:
  edits:
    - {name: dirs_top50, kind: directions, base: sft-B, target: sft-T, top: 0.5}
    - {name: layers50, kind: layers, base: sft-B, target: sft-T, layers: 0.5}
    - {name: reverse, kind: directions, base: sft-T, target: rl-grpo-T, top: 1.0}
"""
CONFIGS = ("config/smoke.yaml", "config/seeded.yaml")
# The rules that gather every seed: they rerun when any seed's results change.
GATHERING = {"accuracy_table", "rl_log_table", "spectrum_table", "restoration_table", "report_tables",
             "checkpoints_table", "all", *(f"figure_{name}" for name in FIGURES)}


@pytest.fixture(scope="module")
def seeded_study(copy_of_smoke_study, session_environment):
    """The smoke study run again with two SFT seeds and chosen points: its data and base model are kept
    (their config slices are the same), everything from SFT on runs for each seed."""
    study = copy_of_smoke_study()
    study.write_config("seeded.yaml", SEEDED)
    study.run(configfile=CONFIGS, env=session_environment)
    return study


def test_every_stage_runs_for_every_seed(seeded_study):
    out = seeded_study.path / "results"
    accuracy = pl.read_parquet(out / "tables" / "accuracy.parquet")
    assert set(accuracy.filter(pl.col("stage") != "base")["sft_seed"]) == {0, 1}
    for seed in (0, 1):
        points = json.loads((out / "tables" / f"seed{seed}-sft_points.json").read_text())
        b, t = points["B"], points["T"]
        assert (out / "tables" / f"seed{seed}-sft_log.parquet").exists()
        for model in (f"seed{seed}-sft-{b}", f"rl-seed{seed}-grpo-{t}", f"rl-seed{seed}-grpo-{b}",
                      f"rl-seed{seed}-sft_continue-{t}", f"seed{seed}-edit-dirs_top50", f"seed{seed}-edit-reverse"):
            assert (out / "eval" / f"{model}.parquet").exists(), model
        assert (out / "spectrum" / f"seed{seed}-sft-{b}__rl-seed{seed}-grpo-{b}.parquet").exists()
        assert (out / "svd" / f"seed{seed}-sft-{t}.safetensors").exists()
    restoration = pl.read_parquet(out / "tables" / "restoration.parquet")
    assert restoration.group_by("sft_seed").len().sort("sft_seed")["len"].to_list() == [6, 6]  # 3 edits x 2 rules
    edit = restoration.filter(pl.col("sft_seed") == 1, pl.col("edit") == "dirs_top50").row(0, named=True)
    points = json.loads((out / "tables" / "seed1-sft_points.json").read_text())
    assert (edit["base"], edit["target"]) == (f"seed1-sft-{points['B']}", f"seed1-sft-{points['T']}")
    findings = pl.read_parquet(out / "tables" / "findings.parquet")
    assert {c for c in findings["claim"] if re.search(r"\(SFT seed \d\)", c) and c.startswith("OOD accuracy")} == {
        "OOD accuracy declines from its best SFT checkpoint while ID rises (SFT seed 0)",
        "OOD accuracy declines from its best SFT checkpoint while ID rises (SFT seed 1)"}
    raised = findings.filter(pl.col("claim").str.starts_with("SFT first raises OOD accuracy above the base"))
    assert raised.height == 2
    curve = pl.read_parquet(out / "tables" / "sft_curve.parquet")
    assert curve.group_by("sft_seed").len().sort("sft_seed")["len"].to_list() == [4, 4]
    assert curve["train_loss"].null_count() < curve.height  # each seed's losses joined to its own steps
    assert all((out / "figures" / f"{name}.svg").exists() for name in FIGURES)
    # The seeds trained differently: other data order, other weights.
    w0 = (out / "models" / "seed0-sft-6" / "model.safetensors").read_bytes()
    assert w0 != (out / "models" / "seed1-sft-6" / "model.safetensors").read_bytes()
    assert seeded_study.dry_run_jobs(configfile=CONFIGS) == {}  # complete: the checkpoints' plans included


def test_changing_a_seed_reruns_only_that_seeds_jobs(seeded_study):
    changed = seeded_study.write_config("changed.yaml", SEEDED.replace("seed: [0, 1]", "seed: [0, 2]"))
    plan = seeded_study.run("-n", configfile=("config/smoke.yaml", changed)).stdout
    jobs = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)*)", plan, re.M)
    assert jobs
    for rule, body in jobs:
        if rule in GATHERING:
            continue
        assert "seed2-" in body and "seed0-" not in body and "seed1-" not in body, (rule, body)
    # Before its points are chosen: SFT, its checkpoints on the selection hands, the choice.
    assert {rule for rule, _ in jobs} >= {"sft", "evaluate_select", "choose_points"}
    assert not {"data_split", "pretrain_corpus", "base_tiny"} & {rule for rule, _ in jobs}

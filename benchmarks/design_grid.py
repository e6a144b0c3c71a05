"""The design grid of docs/design.md: each arm's base model and SFT run (2 seeds), each SFT checkpoint
evaluated on 200 hands per rule, and the criterion applied to every seed.

    python benchmarks/design_grid.py RUN_DIR [ARM ...]     # run the arms (all by default), then report
    python benchmarks/design_grid.py RUN_DIR --report      # report what has run

Each arm and seed runs the workflow in its own copy (RUN_DIR/ARM/seed-N) with the arm's overlay on
config/config.yaml; a second seed (or an arm that differs only in SFT) starts from a copy of the first's
results, so Snakemake reruns only what the change touches. Prints one table of every checkpoint and one
of the criterion per arm and seed; writes them to RUN_DIR/grid.csv and RUN_DIR/criterion.csv. The same
command continues a grid that was stopped: finished jobs are kept."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from rlheals import curve, tables

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("Snakefile", "rules", "scripts", "config", "envs")
SEEDS = (0, 1)
EPISODES = 200
STEPS = {800: [0, 25, 50, 100, 200, 400, 600, 800], 600: [0, 25, 50, 100, 200, 400, 600]}

# Every arm is an overlay on today's config/config.yaml, so each pins what it holds apart from today's
# default: P's pretraining is round 1's (no card puzzles for the target, no test multiset as numbers).
P = {"pretrain": {"target_puzzle_sizes": {"two": 0.2, "three": 0.4, "four": 0.4},
                  "mix": {"numbers_target": 0.6, "numbers_other": 0.1, "cards_other": 0.3, "cards_target": 0.0},
                  "test_multisets_as_numbers": False},
     "data": {"holdout_share": {"id_test": 0.0, "ood_test": 0.25}},
     "prompt": {"format": "steps"},
     "sft": {"lr": 3.0e-4, "max_steps": 800}}


def _with(base: dict, **changes) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        section, name = key.split("__")
        out.setdefault(section, {})[name] = value
    return out


# Round 2 (docs/design.md): P, and card puzzles for the target under random rules in pretraining.
C = _with(P, pretrain__mix={"numbers_target": 0.3, "numbers_other": 0.1, "cards_other": 0.3, "cards_target": 0.3})

# arm -> (overlay, the arm whose seed-0 results it may start from)
ARMS = {
    # Round 1
    "P": (P, None),
    "previous": ({"sft": {"max_steps": 600}}, None),  # round 1's default then; not today's default rebuilt
    "P-compact": (_with(P, prompt__format="compact"), None),
    "P-reserved": (_with(P, data__holdout_share=0.25), None),
    "P-no-four": (_with(P, pretrain__target_puzzle_sizes={"two": 0.3, "three": 0.7, "four": 0.0}), None),
    "P-slow": (_with(P, sft__lr=1.0e-4, sft__max_steps=600), "P"),
    # Round 2
    "C": (C, None),
    "C-compact": (_with(C, prompt__format="compact"), None),
    "C-reserved": (_with(C, data__holdout_share=0.25), None),
    "C-slow": (_with(C, sft__lr=1.0e-4, sft__max_steps=600), "C"),
    "C-no-four": (_with(C, pretrain__target_puzzle_sizes={"two": 0.3, "three": 0.7, "four": 0.0}), None),
    # Round 3: a longer pretraining (twice the steps, on twice the corpus)
    "C-compact-long": (_with(C, prompt__format="compact", pretrain__steps=1600, pretrain__corpus_size=80000), None),
    # Round 4: numeric puzzles for the target on every value multiset, the test ones included (never as cards)
    "K": (_with(C, pretrain__test_multisets_as_numbers=True), None),
    "K-compact": (_with(C, prompt__format="compact", pretrain__test_multisets_as_numbers=True), None),
}


def overlay(arm: str, seed: int) -> dict:
    cfg = json.loads(json.dumps(ARMS[arm][0]))
    steps = cfg["sft"]["max_steps"]
    cfg["sft"].update(seed=seed, save_steps=STEPS[steps])
    cfg["eval"] = {"episodes": EPISODES}
    return cfg


def prepare(run_dir: Path, arm: str, seed: int) -> Path:
    where = run_dir / arm / f"seed-{seed}"
    if where.exists():
        return where
    start = run_dir / arm / "seed-0" if seed else (run_dir / ARMS[arm][1] / "seed-0" if ARMS[arm][1] else None)
    if start is not None and (start / "results").exists():
        shutil.copytree(start, where, symlinks=True)
    else:
        where.mkdir(parents=True)
        for part in PARTS:
            (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, where / part)
    return where


def run(run_dir: Path, arm: str, seed: int) -> float:
    where = prepare(run_dir, arm, seed)
    cfg = overlay(arm, seed)
    (where / "config" / "grid.yaml").write_text(json.dumps(cfg, indent=1))
    targets = [f"results/eval/sft-{s}.parquet" for s in cfg["sft"]["save_steps"]]
    start = time.time()
    snakemake = [sys.executable, "-m", "snakemake"]
    config = ["--configfile", "config/grid.yaml"]  # last: it takes every argument after it
    with open(where / "grid.log", "a") as log:
        # A grid stopped midway continues: the lock of the stopped run released, its unfinished job rerun.
        subprocess.run([*snakemake, "--unlock", *config], cwd=where, stdout=log, stderr=subprocess.STDOUT,
                       check=True)
        subprocess.run([*snakemake, *targets, "--cores", "2", "--rerun-incomplete", *config],
                       cwd=where, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - start


def curves(run_dir: Path) -> pl.DataFrame:
    """Every arm's SFT curve: accuracy per seed, step and rule (tables.accuracy_table, with its intervals)."""
    parts = []
    for where in sorted(run_dir.glob("*/seed-*")):
        arm, seed = where.parent.name, int(where.name.removeprefix("seed-"))
        if arm not in ARMS:
            continue
        steps = overlay(arm, seed)["sft"]["save_steps"]
        episodes = {f"sft-{s}": pl.read_parquet(path).to_dicts() for s in steps
                    if (path := where / "results" / "eval" / f"sft-{s}.parquet").exists()}
        if episodes:
            parts.append(tables.accuracy_table(episodes).with_columns(arm=pl.lit(arm), seed=pl.lit(seed)))
    return pl.concat(parts).select("arm", "seed", "sft_step", "rule", pl.col("n_episodes").alias("n"), "accuracy",
                                   "accuracy_low", "accuracy_high",
                                   pl.col("value_mapping_accuracy").alias("value_mapping")).sort("arm", "seed", "rule", "sft_step")


def criterion(table: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for (arm, seed), group in table.group_by("arm", "seed", maintain_order=True):
        if group.height < 2 * len(overlay(arm, seed)["sft"]["save_steps"]):
            continue  # still running
        f = curve.forgetting(group.filter(rule="id").to_dicts(), group.filter(rule="ood").to_dicts())
        rows.append({"arm": arm, "seed": seed, "peak_step": f.peak_step, "ood_peak": f.ood_peak,
                     "ood_last": f.ood_last, "drop": f.drop, "intervals_apart": f.intervals_apart,
                     "id_base": f.id_base, "id_last": f.id_last, "shows_forgetting": f.shown})
    return pl.DataFrame(rows)


def report(run_dir: Path) -> None:
    table = curves(run_dir)
    table.write_csv(run_dir / "grid.csv")
    wide = table.with_columns(pl.format("{}%", (100 * pl.col("accuracy")).round(1)).alias("acc")).pivot(
        on="sft_step", index=["arm", "seed", "rule"], values="acc", sort_columns=True)
    with pl.Config(tbl_rows=200, tbl_cols=20, tbl_width_chars=400, fmt_str_lengths=40, tbl_hide_dataframe_shape=True,
                   tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True):
        print(f"accuracy at each SFT step ({EPISODES} hands per rule, 5 tries)")
        print(wide)
        crit = criterion(table)
        crit.write_csv(run_dir / "criterion.csv")
        print("the criterion (docs/design.md), per seed")
        print(crit.with_columns(pl.col(pl.Float64).round(3)))
        arms = crit.group_by("arm", maintain_order=True).agg(
            pl.col("shows_forgetting").all().alias("passes"), pl.col("drop").min().alias("worst_seed_drop"),
            pl.len().alias("seeds"))
        print(arms.with_columns(pl.col("worst_seed_drop").round(3)).sort("passes", "worst_seed_drop", descending=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("arms", nargs="*", default=[], help=f"of {', '.join(ARMS)}")
    parser.add_argument("--report", action="store_true", help="only report what has run")
    args = parser.parse_args()
    if unknown := set(args.arms) - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}; the arms are {', '.join(ARMS)}")
    if not args.report:
        for arm in args.arms or ARMS:
            for seed in SEEDS:
                seconds = run(args.run_dir, arm, seed)
                print(f"{arm} seed {seed}: {seconds / 60:.1f} min", flush=True)
    report(args.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

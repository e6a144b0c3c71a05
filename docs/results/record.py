"""Write a finished study's results into the repository: docs/results/NAME.md, made from its result tables
(never typed by hand), with the wall time `python3 tasks.py study` recorded.

    python docs/results/record.py NAME [--results DIR] [--config FILE ...] [--out DIR]

NAME: default (config/config.yaml) or replicate (with config/replicate.yaml), or any other study."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def markdown(table: pl.DataFrame) -> str:
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=1000, tbl_width_chars=60000, float_precision=3):
        return str(table)


def sft_curve(tables: Path) -> pl.DataFrame:
    """Accuracy at each SFT checkpoint, with its 95% interval, on ID, OOD and the numbers-only probe of the
    OOD hands (where it ran), and the OOD value mapping; one set of columns per SFT seed when several."""
    acc = pl.read_parquet(tables / "accuracy.parquet").filter(pl.col("stage") == "sft")
    values = acc.filter(pl.col("rule") == "ood").with_columns(
        pl.lit("values read").alias("rule"),
        pl.format("{}", (100 * pl.col("value_mapping_accuracy")).round(1)).alias("acc"))
    bounds = [(100 * pl.col(c)).round(1) for c in ("accuracy", "accuracy_low", "accuracy_high")]
    out = pl.concat([acc.with_columns(pl.format("{} [{}, {}]", *bounds).alias("acc")), values])
    names = {"id": "ID", "ood": "OOD", "numbers": "OOD as numbers", "values read": "OOD values read"}
    rules = [r for r in names if r in set(out["rule"])]
    seeds = sorted(s for s in out["sft_seed"].unique().to_list() if s is not None)
    if not seeds:
        return out.pivot(on="rule", index="sft_step", values="acc").sort("sft_step").select(
            pl.col("sft_step").alias("SFT step"),
            *[pl.col(r).alias(f"{names[r]} %" + ("" if r == "values read" else " [95%]")) for r in rules])
    out = out.with_columns(
        pl.format("{} seed {}", pl.col("rule").replace_strict(names), "sft_seed").alias("column"))
    return out.pivot(on="column", index="sft_step", values="acc").sort("sft_step").rename({"sft_step": "SFT step"}).select(
        "SFT step", *[f"{names[r]} seed {seed}" for seed in seeds for r in rules])


def job_times(results: Path) -> pl.DataFrame | None:
    """Jobs and job minutes per stage, from the rules' benchmark files beside the results (Snakemake's
    `benchmark:` directive); RL by algorithm. Jobs of rules without one (tables, figures) are not
    counted here."""
    root = results.resolve().parent / "benchmarks" / "results"
    rows = []
    for tsv in sorted(root.rglob("*.tsv")):
        stage = tsv.stem.split("-")[-1] if tsv.parent == root else tsv.parent.name  # base, sft | eval, rl, svd
        if stage == "rl":  # rl/{seed}{algo}-{step}[-s{n}]: the algorithm names the stage
            stage = "rl: " + next(part for part in tsv.stem.split("-") if part in ("ppo", "grpo", "rloo", "sft_continue"))
        rows.append({"stage": stage, "seconds": float(pl.read_csv(tsv, separator="\t")["s"][-1])})
    if not rows:
        return None
    table = pl.DataFrame(rows).group_by("stage").agg(pl.len().alias("jobs"), (pl.col("seconds").sum() / 60).alias("minutes"),
                                                     pl.col("seconds").median().alias("median"))
    return table.sort("minutes", descending=True).select(
        "stage", "jobs", pl.col("minutes").round(1).cast(pl.String).alias("job minutes"),
        pl.col("median").round(0).cast(pl.Int64).alias("median seconds per job"))


def commit(results: Path, run_time: dict | None) -> str | None:
    """The commit the study ran at: recorded by tasks.py, else that of the checkout holding the results."""
    if run_time and run_time.get("commit"):
        return run_time["commit"]
    if not shutil.which("git"):
        return None
    out = subprocess.run(["git", "-C", str(results.resolve().parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


def record(name: str, results: Path, configs: list[str]) -> str:
    tables = results / "tables"
    run_time = json.loads((results / "run_time.json").read_text()) if (results / "run_time.json").exists() else None
    findings = pl.read_parquet(tables / "findings.parquet")  # reproduced: a word (docs/study.md)
    at = commit(results, run_time)
    parts = [f"# Results: the {name} study", "",
             "Written by `docs/results/record.py` from the study's result tables; do not edit by hand.", "",
             f"- config: {', '.join(configs)}" + (f"; code at commit {at}" if at else ""),
             "- wall time: " + (f"{run_time['seconds'] / 60:.1f} minutes on {run_time['cores']} cores "
                                f"(`{' '.join(['python3 tasks.py study', *run_time['arguments']])}`, finished "
                                f"{run_time['finished']})" if run_time else "not recorded"), ""]
    for points in sorted(tables.glob("*sft_points.json")):  # one per SFT seed: seed1-sft_points.json
        chosen = json.loads(points.read_text())
        seed = points.name.removesuffix("sft_points.json").removesuffix("-")
        parts += [f"- chosen after SFT{' (' + seed + ')' if seed else ''}: B = step {chosen['B']}, T = step "
                  f"{chosen['T']}; RL starts from " + ", ".join(f"{k} ({chosen[k]})" for k in
                  ("before_peak", "peak", "mid_decline", "last") if chosen.get(k) is not None)]
    parts += [""]
    times = job_times(results)
    if times is not None:
        parts += ["## Where the time goes", "",
                  "Job time by stage, from the benchmark files of the rules that write one (tables and "
                  "figures do not); jobs run side by side on the cores.", "", markdown(times), ""]
    parts += ["## SFT: accuracy at each checkpoint", "", markdown(sft_curve(tables)), ""]
    recovery = pl.read_parquet(tables / "rl_recovery.parquet").filter(pl.col("rule") == "ood")
    if recovery.height:
        def interval(name: str, scale: float = 100, digits: int = 1) -> pl.Expr:
            """A statistic with its 95% interval as text; "undefined" where the table has none."""
            parts = [(scale * pl.col(c).cast(pl.Float64)).round(digits) for c in (name, f"{name}_low", f"{name}_high")]
            return pl.when(pl.col(name).is_null()).then(pl.lit("undefined")).otherwise(pl.format("{} [{}, {}]", *parts))

        share = interval("recovered_share", 1, 2)
        parts += ["## RL and the continued-SFT control: OOD accuracy after, mean over seeds", "",
                  "Intervals are 95%, paired on the test hands, with the spread between seeds (docs/study.md, "
                  "\"Intervals\"); the recovered share is given only where SFT lost OOD accuracy beyond noise by "
                  "the start.", "",
                  markdown(recovery.select("sft_seed", "algo", pl.col("sft_step").alias("from step"), "n_seeds",
                                           (100 * pl.col("acc_before")).round(1).alias("before %"),
                                           interval("acc_after").alias("after % [95%]"),
                                           interval("heal").alias("after - before [95%]"),
                                           interval("drop").alias("lost by the start [95%]"),
                                           share.alias("recovered share [95%]"),
                                           interval("vs_control").alias("minus control [95%]"))
                           .sort("sft_seed", "from step", "algo", nulls_last=False)
                           .drop([] if recovery["sft_seed"].drop_nulls().len() else ["sft_seed"])), ""]
    restoration = pl.read_parquet(tables / "restoration.parquet").filter(pl.col("rule") == "ood")
    if restoration.height:
        parts += ["## Restoration edits: OOD accuracy and recovery fraction", "",
                  markdown(restoration.select("sft_seed", "edit", "base", "target", (100 * pl.col("acc_edit")).round(1).alias("edit %"),
                                              (100 * pl.col("acc_base")).round(1).alias("B %"),
                                              (100 * pl.col("acc_target")).round(1).alias("T %"),
                                              pl.col("recovery").round(2), pl.col("recovery_low").round(2),
                                              pl.col("recovery_high").round(2))
                           .drop([] if restoration["sft_seed"].drop_nulls().len() else ["sft_seed"])), ""]
    parts += ["## Findings", "", markdown(findings.select("finding", "claim", "value", "uncertainty", "reproduced", "note")), ""]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--config", nargs="*", default=["config/config.yaml"])
    parser.add_argument("--out", type=Path, default=HERE, help="the folder of the page (default: docs/results)")
    args = parser.parse_args()
    if not (args.results / "tables" / "findings.parquet").exists():
        parser.error(f"{args.results}/tables/findings.parquet not found: run the study first")
    out = args.out / f"{args.name}.md"
    out.write_text(record(args.name, args.results, args.config))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""results/tables/sft_points.json: B (the best-OOD SFT checkpoint), T (the last) and the RL starting points,
chosen from the evaluations of the SFT checkpoints on the OOD selection hands, never the test hands
(rlheals.curve.choose_points); `ood_accuracy` holds those selection accuracies."""

from pathlib import Path

import polars as pl

from rlheals import curve, runlog, tables

log = runlog.setup(snakemake.log[0])
episodes = {Path(p).stem: pl.read_parquet(p).to_dicts() for p in snakemake.input}
ood = tables.accuracy_table(episodes).filter(pl.col("rule") == "ood", pl.col("stage") == "sft").sort("sft_step")
points = curve.choose_points(ood.to_dicts())
runlog.write_json_atomic({**points, "ood_accuracy": dict(zip(map(str, ood["sft_step"]), ood["accuracy"]))},
                         snakemake.output[0])
log.info("chosen points: %s (OOD accuracy by step: %s)", points, dict(zip(ood["sft_step"], ood["accuracy"].round(3))))

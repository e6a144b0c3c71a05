"""results/tables/restoration.parquet (and .csv): each edit's accuracy beside its B and T, per rule, and
its recovery fraction (acc_edit - acc_T) / (acc_B - acc_T)."""

import json
from pathlib import Path

import polars as pl

from rlheals import model_ids, runlog, tables

log = runlog.setup(snakemake.log[0])
edits = json.loads(snakemake.params.edits)
if snakemake.input.points:  # edits that name a chosen point (sft-B): the step chosen after SFT
    points = json.loads(Path(snakemake.input.points[0]).read_text())
    edits = {name: {**spec, **{k: model_ids.resolve(spec[k], points) for k in ("base", "target")}}
             for name, spec in edits.items()}
episodes = {Path(p).stem: pl.read_parquet(p).to_dicts() for p in [*snakemake.input.edits, *snakemake.input.references]}
table = tables.restoration_table(edits, episodes)
runlog.write_atomic(snakemake.output.parquet, table.write_parquet)
runlog.write_atomic(snakemake.output.csv, table.write_csv)
with pl.Config(tbl_rows=100):
    log.info("%s", table.select("edit", "kind", "rule", "acc_edit", "acc_base", "acc_target", "recovery"))

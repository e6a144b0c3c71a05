"""results/tables/restoration.parquet (and .csv): each edit's accuracy beside its B and T, per rule, and
its recovery fraction (acc_edit - acc_T) / (acc_B - acc_T)."""

import json
from pathlib import Path

import polars as pl

from rlheals import runlog, tables

log = runlog.setup(snakemake.log[0])
edits = json.loads(snakemake.params.edits)
episodes = {Path(p).stem: pl.read_parquet(p).to_dicts() for p in [*snakemake.input.edits, *snakemake.input.references]}
table = tables.restoration_table(edits, episodes)
runlog.write_atomic(snakemake.output.parquet, table.write_parquet)
runlog.write_atomic(snakemake.output.csv, table.write_csv)
with pl.Config(tbl_rows=100):
    log.info("%s", table.select("edit", "kind", "rule", "acc_edit", "acc_base", "acc_target", "recovery"))

"""results/tables/accuracy.parquet (and .csv): one row per (model, rule); hands.parquet: one row per
(model, rule, test hand), which the report pairs models on."""

from pathlib import Path

import polars as pl

from rlheals import runlog, tables

log = runlog.setup(snakemake.log[0])
episodes = {Path(p).stem: pl.read_parquet(p).to_dicts() for p in snakemake.input}
table = tables.accuracy_table(episodes)
runlog.write_atomic(snakemake.output.parquet, table.write_parquet)
runlog.write_atomic(snakemake.output.csv, table.write_csv)
runlog.write_atomic(snakemake.output.hands, tables.hands_table(episodes).write_parquet)
with pl.Config(tbl_rows=100, tbl_cols=12):
    log.info("%s", table.select("model_id", "rule", "accuracy", "accuracy_low", "accuracy_high", "pass_at_1",
                                "format_error_rate", "value_mapping_accuracy"))

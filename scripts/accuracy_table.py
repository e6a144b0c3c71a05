"""results/tables/accuracy.parquet (and .csv): one row per (model, rule); hands.parquet: one row per
(model, rule, test hand), which the report pairs models on. The numbers-only probe is the rule `numbers`,
laid out on the OOD test hands."""

from pathlib import Path

import polars as pl

from rlheals import episodes, runlog, tables

log = runlog.setup(snakemake.log[0])
results = {Path(p).stem: pl.read_parquet(p).to_dicts() for p in snakemake.input.tests}
for path in snakemake.input.numbers:
    model_id = Path(path).stem
    ood = [r for r in results[model_id] if r["rule"] == "ood"]
    results[model_id] += episodes.numbers_by_hand(pl.read_parquet(path).to_dicts(), ood)
table = tables.accuracy_table(results)
runlog.write_atomic(snakemake.output.parquet, table.write_parquet)
runlog.write_atomic(snakemake.output.csv, table.write_csv)
runlog.write_atomic(snakemake.output.hands, tables.hands_table(results).write_parquet)
with pl.Config(tbl_rows=100, tbl_cols=12):
    log.info("%s", table.select("model_id", "rule", "accuracy", "accuracy_low", "accuracy_high", "pass_at_1",
                                "format_error_rate", "value_mapping_accuracy"))

"""results/tables/rl_log.parquet (and .csv): every RL run's per-update log (reward, categories, probe)."""

from pathlib import Path

import polars as pl

from rlheals import runlog, tables

log = runlog.setup(snakemake.log[0])
table = tables.rl_log_table({Path(p).stem: pl.read_parquet(p) for p in snakemake.input})
runlog.write_atomic(snakemake.output.parquet, table.write_parquet)
runlog.write_atomic(snakemake.output.csv, table.write_csv)
ends = pl.DataFrame() if "mean_reward" not in table.columns else table.group_by("run").agg(pl.col("mean_reward").head(10).mean().alias("reward_first10"),
                                 pl.col("mean_reward").tail(10).mean().alias("reward_last10"))
with pl.Config(tbl_rows=100):
    log.info("%s", ends.sort("run"))

"""results/tables/checkpoints.parquet (and .csv): which model id is which step, where, and its sha256."""

from pathlib import Path

from rlheals import runlog, tables

log = runlog.setup(snakemake.log[0])
table = tables.checkpoint_table({Path(p).name: p for p in snakemake.input})
runlog.write_atomic(snakemake.output.parquet, table.write_parquet)
runlog.write_atomic(snakemake.output.csv, table.write_csv)
log.info("%d models", table.height)

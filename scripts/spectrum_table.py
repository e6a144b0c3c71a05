"""results/tables/spectrum.parquet (and .csv): the scalar metrics of every pair, one row per (pair,
matrix), one column per metric."""

import polars as pl

from rlheals import runlog, tables

log = runlog.setup(snakemake.log[0])
table = tables.spectrum_table([pl.read_parquet(p) for p in snakemake.input])
runlog.write_atomic(snakemake.output.parquet, table.write_parquet)
runlog.write_atomic(snakemake.output.csv, table.write_csv)
log.info("%d pairs, %d rows", table.select("a", "b").n_unique(), table.height)

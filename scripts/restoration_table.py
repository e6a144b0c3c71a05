"""results/tables/restoration.parquet (and .csv): each edit's accuracy beside its B and T, per rule, and
its recovery fraction (acc_edit - acc_T) / (acc_B - acc_T)."""

import json
from pathlib import Path

import polars as pl

from rlheals import model_ids, runlog, tables, workflow

log = runlog.setup(snakemake.log[0])
specs = json.loads(snakemake.params.edits)  # by name, as the config writes them (sft-B: a chosen point)
points = {model_ids.split_seed(Path(p).stem)[0]: json.loads(Path(p).read_text()) for p in snakemake.input.points}
edits = {}
for path in snakemake.input.edits:
    edit_id = Path(path).stem
    sft_seed, name = model_ids.split_seed(edit_id)
    edits[edit_id] = workflow.resolve_edit(specs[name.removeprefix("edit-")], sft_seed, points.get(sft_seed, {}))
episodes = {Path(p).stem: pl.read_parquet(p).to_dicts() for p in [*snakemake.input.edits, *snakemake.input.references]}
table = tables.restoration_table(edits, episodes)
runlog.write_atomic(snakemake.output.parquet, table.write_parquet)
runlog.write_atomic(snakemake.output.csv, table.write_csv)
with pl.Config(tbl_rows=100):
    log.info("%s", table.select("edit", "kind", "rule", "acc_edit", "acc_base", "acc_target", "recovery"))

"""Deal one data split (results/data/{split}.jsonl)."""

import json

from rlheals import data, runlog

log = runlog.setup(snakemake.log[0])
cfg = json.loads(snakemake.params.cfg)
split = snakemake.wildcards.split
rows = data.make_split(split, cfg["game"], cfg["data"])
data.write_jsonl(rows, snakemake.output[0])
log.info("%s: %d hands under rule %r -> %s", split, len(rows), rows[0]["rule"], snakemake.output[0])

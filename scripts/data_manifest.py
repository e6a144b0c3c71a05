"""Counts, checksums and leakage figures of the data splits (results/data/manifest.json)."""

import json

from rlheals import data, runlog

log = runlog.setup(snakemake.log[0])
cfg = json.loads(snakemake.params.cfg)
paths = {path.rsplit("/", 1)[1].removesuffix(".jsonl"): path for path in snakemake.input}
result = data.manifest(paths, cfg["game"], cfg["data"])
if result["leaks"]:
    raise RuntimeError("; ".join(result["leaks"]))
runlog.write_json_atomic(result, snakemake.output[0])
log.info("manifest: %s", {s: v["count"] for s, v in result["splits"].items()})

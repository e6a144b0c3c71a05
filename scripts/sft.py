"""SFT from the base model, publishing results/models/sft-{step} at every listed step, and the loss log."""

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl

from rlheals import data, launch, models, runlog, sft

# A job given several GPUs runs this script again as one torchrun worker per GPU, and is done when they are.
if launch.run_as_workers(launch.workers(snakemake.resources)):
    raise SystemExit(0)
log = runlog.setup(launch.log_path(snakemake.log[0]))
cfg = json.loads(snakemake.params.cfg)
settings = cfg["sft"]
outputs = {int(Path(p).name.split("-")[1]): Path(p) for p in snakemake.output.models}
# A killed run resumes from its work directory, keyed by the settings, the package code and the base
# weights: a changed config, code or base model never resumes stale state.
key = "\n".join([snakemake.params.cfg, snakemake.params.code, models.weights_sha256(snakemake.input.base)])
work = Path("results/work") / f"sft-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
losses = sft.run(
    Path(snakemake.input.base),
    data.read_jsonl(snakemake.input.train),
    data.read_jsonl(snakemake.input.id_test),
    data.read_jsonl(snakemake.input.ood_test),
    data.rules_from_config(cfg["game"]),
    cfg["prompt"]["format"],
    settings,
    outputs,
    work,
    max(1, snakemake.threads // launch.world_size()),
    log=log.info,
)
if not launch.is_main():  # the main worker writes the tables and clears the work directory
    raise SystemExit(0)
table = pl.DataFrame(losses)
runlog.write_atomic(snakemake.output.losses, table.write_parquet)
shutil.rmtree(work)
log.info("SFT done: %d logged steps; last: %s", table.height, losses[-1])

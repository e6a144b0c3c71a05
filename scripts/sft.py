"""SFT from the base model, publishing results/models/sft-{step} at every listed step, and the loss log."""

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl

from rlheals import data, runlog, sft

log = runlog.setup(snakemake.log[0])
cfg = json.loads(snakemake.params.cfg)
settings = cfg["sft"]
if settings["deepspeed"]:
    settings["deepspeed"] = str(Path(sft.DEEPSPEED_CONFIGS[settings["deepspeed"]]).resolve())
    sft.init_single_process_distributed()
outputs = {int(Path(p).name.split("-")[1]): Path(p) for p in snakemake.output.models}
# The work directory is keyed by the settings, so a changed config never resumes stale state.
work = Path("results/work") / f"sft-{hashlib.sha256(snakemake.params.cfg.encode()).hexdigest()[:12]}"
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
    snakemake.threads,
    log=log.info,
)
table = pl.DataFrame(losses)
runlog.write_atomic(snakemake.output.losses, table.write_parquet)
shutil.rmtree(work)
log.info("SFT done: %d logged steps; last: %s", table.height, losses[-1])

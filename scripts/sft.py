"""SFT from the base model, publishing results/models/sft-{step} at every listed step, and the loss log."""

import json
import shutil
from pathlib import Path

import polars as pl

from rlheals import checkpoints, data, launch, model_ids, models, runlog, sft
from rlheals.jobs import Job, Task
from rlheals.settings import SFTSettings

# A job given several GPUs runs this script again as one torchrun worker per GPU, and is done when they are.
if launch.run_as_workers(launch.workers(snakemake.resources)):
    raise SystemExit(0)
log = runlog.setup(launch.log_path(snakemake.log[0]))
cfg = json.loads(snakemake.params.cfg)
start, train = Path(snakemake.input.base), snakemake.input.train
card = models.Card(
    what=f"SFT of the study's base model on its ID rule, seed {cfg['sft']['seed']} "
         "(step 0: the base model itself)",
    made={"started from": f"`{start}` (weights sha256 `{models.weights_sha256(start)}`)",
          "training data": f"`{train}` (sha256 `{data.sha256(train)}`)", "trainer": "TRL SFTTrainer"},
    settings=cfg, unit="step", total=cfg["sft"]["max_steps"], tags=("sft",))
job = Job(
    start=start,
    outputs={model_ids.sft_step(p): Path(p) for p in snakemake.output.models},
    work=checkpoints.work_dir("sft", snakemake.params.cfg, snakemake.params.code, snakemake.input.base),
    seed=cfg["sft"]["seed"],
    threads=max(1, snakemake.threads // launch.world_size()),
    log=log.info,
    name=Path(snakemake.log[0]).stem,  # sft, or seed1-sft
    # Read from the config at run time, not a param: tracking changes no result, so it reruns nothing.
    tracking=runlog.tracking_dir(snakemake.config.get("tracking", "none"), snakemake.log[0]),
    card=card,
)
task = Task(
    train=data.read_jsonl(snakemake.input.train),
    rules=data.rules_from_config(cfg["game"]),
    fmt=cfg["prompt"]["format"],
    id_test=data.read_jsonl(snakemake.input.id_test),
    ood_test=data.read_jsonl(snakemake.input.ood_test),
)
losses = sft.run(job=job, task=task, settings=SFTSettings.from_config(cfg["sft"]))
if not launch.is_main():  # the main worker writes the tables and clears the work directory
    raise SystemExit(0)
sft_seed, _ = model_ids.split_seed(Path(snakemake.output.losses).stem)  # None in a study of one SFT seed
table = pl.DataFrame(losses).with_columns(pl.lit(sft_seed, dtype=pl.Int64).alias("sft_seed"))
runlog.write_atomic(snakemake.output.losses, table.write_parquet)
shutil.rmtree(job.work)
log.info("SFT done: %d logged steps; last: %s", table.height, losses[-1])

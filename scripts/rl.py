"""One RL run (or the continued-SFT control) from an SFT checkpoint: results/models/rl-{run}, its
intermediate checkpoints rl-{run}-u{update}, and its per-update log table."""

import json
import shutil
from pathlib import Path

import polars as pl

from rlheals import checkpoints, data, episodes, launch, model_ids, models, rl, runlog
from rlheals.jobs import Job, Task
from rlheals.settings import rl_settings
from rlheals.verify import Verifier

cfg = json.loads(snakemake.params.cfg)
algo = cfg["algo"]
settings = rl_settings(algo, cfg["rl"], cfg.get("sft"))
# A job given several GPUs runs this script again as one torchrun worker per GPU, and is done when they are.
if launch.run_as_workers(launch.workers(snakemake.resources)):
    raise SystemExit(0)
log = runlog.setup(launch.log_path(snakemake.log[0]))
fmt, rules = cfg["prompt"]["format"], data.rules_from_config(cfg["game"])
verifier = Verifier(cfg["game"]["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
id_rows, ood_rows = (data.read_jsonl(path)[: settings.probe.episodes] for path in snakemake.input.tests)
probe = rl.Probe(episodes.from_rows([*id_rows, *ood_rows], rules, fmt), verifier,
                 cfg["probe_eval"]["verify_turns"], cfg["probe_eval"]["max_new_tokens"])
outputs = {settings.updates: Path(snakemake.output.model)}
outputs.update({model_ids.rl_update(p): Path(p) for p in snakemake.output.checkpoints})
start, train = Path(snakemake.input.start), snakemake.input.train
what = (f"The continued-SFT control: SFT continued from `{start}` on the RL run's hands, seed {cfg['seed']}"
        if algo == rl.CONTROL else
        f"{algo.upper()} from `{start}` on the study's ID rule, rewarded by the verifier, seed {cfg['seed']}")
card = models.Card(
    what=what,
    made={"started from": f"`{start}` (weights sha256 `{models.weights_sha256(start)}`)",
          "training data": f"`{train}` (sha256 `{data.sha256(train)}`)",
          "trainer": {"grpo": "TRL GRPOTrainer", "rloo": "TRL RLOOTrainer",
                      "ppo": "rlheals.ppo (the papers' PPO)", rl.CONTROL: "TRL SFTTrainer"}[algo]},
    # The control counts its optimizer steps (control_steps_per_update of them per RL update)
    settings=cfg, unit="step" if algo == rl.CONTROL else "update",
    total=settings.sft.max_steps if algo == rl.CONTROL else settings.updates, tags=("rl", algo))
job = Job(
    start=start,
    outputs=outputs,
    work=checkpoints.work_dir("rl", snakemake.params.cfg, snakemake.params.code, snakemake.input.start),
    seed=cfg["seed"],
    threads=max(1, snakemake.threads // launch.world_size()),
    log=log.info,
    name=f"rl {snakemake.wildcards.rl_run}",
    # Read from the config at run time, not a param: tracking changes no result, so it reruns nothing.
    tracking=runlog.tracking_dir(snakemake.config.get("tracking", "none"), snakemake.log[0]),
    card=card,
)
task = Task(train=data.read_jsonl(snakemake.input.train), rules=rules, fmt=fmt, id_test=id_rows, ood_test=ood_rows,
            verifier=verifier, probe=probe)
log.info("%s from %s, seed %d, %d updates", algo, job.start, job.seed, settings.updates)
rows = rl.run(algo, job=job, task=task, settings=settings)
if not launch.is_main():  # the main worker writes the log table and clears the work directory
    raise SystemExit(0)
table = pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.lit(snakemake.wildcards.rl_run).alias("run"))
runlog.write_atomic(snakemake.output.log, table.write_parquet)
shutil.rmtree(job.work, ignore_errors=True)
log.info("done: %d log rows", table.height)

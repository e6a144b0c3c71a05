"""One RL run (or the continued-SFT control) from an SFT checkpoint: results/models/rl-{run}, its
intermediate checkpoints rl-{run}-u{update}, and its per-update log table."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import polars as pl

from rlheals import data, evaluate, launch, models, rl, runlog
from rlheals.verify import Verifier

cfg = json.loads(snakemake.params.cfg)
algo, seed, settings = cfg["algo"], cfg["seed"], cfg["rl"]
# A job given several GPUs runs this script again as one torchrun worker per GPU, and is done when they are.
if launch.run_as_workers(launch.workers(snakemake.resources)):
    raise SystemExit(0)
log = runlog.setup(launch.log_path(snakemake.log[0]))
threads = max(1, snakemake.threads // launch.world_size())
fmt, rules = cfg["prompt"]["format"], data.rules_from_config(cfg["game"])
verifier = Verifier(cfg["game"]["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
n_probe = settings["probe"]["episodes"]
id_rows, ood_rows = (data.read_jsonl(path)[:n_probe] for path in snakemake.input.tests)
probe = rl.Probe(evaluate.episodes_from_rows([*id_rows, *ood_rows], rules, fmt), verifier,
                 cfg["probe_eval"]["verify_turns"], cfg["probe_eval"]["max_new_tokens"])
outputs = {settings["updates"]: Path(snakemake.output.model)}
outputs.update({int(re.search(r"-u(\d+)$", p).group(1)): Path(p) for p in snakemake.output.checkpoints})
start, train = Path(snakemake.input.start), data.read_jsonl(snakemake.input.train)
# A killed run resumes from its work directory, keyed by the settings, the package code and the starting
# weights: a changed config, code or start model never resumes stale state.
key = "\n".join([snakemake.params.cfg, snakemake.params.code, models.weights_sha256(start)])
work = Path("results/work") / f"rl-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
log.info("%s from %s, seed %d, %d updates", algo, start, seed, settings["updates"])
if algo in rl.TRL_ALGOS:
    rows = rl.run_trl(algo, start, train, rules, fmt, settings, verifier, probe, outputs, work, seed,
                      threads, log=log.info)
elif algo == "ppo":
    from rlheals import ppo

    rows = ppo.run(start, train, rules, fmt, settings, verifier, probe, outputs, seed, threads,
                   log=log.info, work=work)
else:
    rows = rl.run_control(start, train, id_rows, ood_rows, rules, fmt, cfg["sft"], settings, probe, outputs,
                          work, seed, threads, log=log.info)
if not launch.is_main():  # the main worker writes the log table and clears the work directory
    raise SystemExit(0)
table = pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.lit(snakemake.wildcards.rl_run).alias("run"))
runlog.write_atomic(snakemake.output.log, table.write_parquet)
shutil.rmtree(work, ignore_errors=True)
log.info("done: %d log rows", table.height)

"""Evaluate one model (results/models/{model_id}) on the episodes of its input splits (the ID and OOD test
splits, or a selection split), or on the numbers-only probe of the OOD test hands: one row per episode."""

import json
import time

start = time.time()
import polars as pl  # noqa: E402
import torch  # noqa: E402

from rlheals import data, episodes, evaluate, models, runlog  # noqa: E402
from rlheals.verify import Verifier  # noqa: E402

log = runlog.setup(snakemake.log[0])
cfg = json.loads(snakemake.params.cfg)
settings, fmt = cfg["eval"], cfg["prompt"]["format"]
torch.set_num_threads(snakemake.threads)
model_id = snakemake.wildcards.model_id
# On a GPU node the model runs there in bfloat16 (the papers' setting); on the CPU in float32.
device = "cuda" if torch.cuda.is_available() else "cpu"
model = models.load_model(snakemake.input.model, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
model = model.to(device).eval()
tokenizer = models.load_tokenizer(snakemake.input.model)
log.info("%s loaded on %s in %.1f s since start", model_id, device, time.time() - start)

rules = data.rules_from_config(cfg["game"])
rows = [r for path in snakemake.input.tests for r in data.read_jsonl(path)[: settings["episodes"]]]
verifier = Verifier(cfg["game"]["target"], fmt, cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
decoding = evaluate.Decoding(do_sample=settings["do_sample"], temperature=settings["temperature"],
                             top_p=settings["top_p"], seed=settings["seed"], max_new_tokens=settings["max_new_tokens"])
protocol = evaluate.Protocol(verifier, settings["verify_turns"], decoding, settings["batch_size"])

# The numbers-only probe asks each value multiset of the hands as a bare numeric puzzle (episodes.NUMBERS).
if snakemake.params.numbers_probe:
    played = episodes.numbers_probe(rows, fmt)
else:
    played = episodes.from_rows(rows, rules, fmt)
meter = runlog.Progress(f"evaluate {model_id}", len(played), log.info, unit="episode")


def progress(done: int, total: int) -> None:
    meter.update(done, total, note="" if total == len(played) else f"a worker's share of {len(played)}")


results = evaluate.run_episodes(model, tokenizer, played, protocol, log=log.info,
                                workers=snakemake.threads, progress=progress)
table = pl.DataFrame(results).with_columns(pl.lit(model_id).alias("model_id"))
runlog.write_atomic(snakemake.output[0], table.write_parquet)
log.info("%s: %s (%.1f s)", model_id, episodes.summarize(results), time.time() - start)

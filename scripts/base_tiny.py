"""Build the tiny model's tokenizer and model, pretrain it on the synthetic corpus, save it as a Hugging
Face directory (results/models/base) and report its greedy single-try ID/OOD accuracy."""

import json
from pathlib import Path

import torch

from rlheals import data, episodes, evaluate, limits, models, pretrain, runlog
from rlheals.verify import Verifier

log = runlog.setup(snakemake.log[0])
cfg = json.loads(snakemake.params.cfg)
torch.set_num_threads(snakemake.threads)
target = cfg["game"]["target"]

tokenizer = models.build_tokenizer(pretrain.vocabulary(target))
# Rotary positions: a study whose conversations outgrow model.tiny.max_positions still runs, with a warning.
needed = limits.needed_positions(tokenizer, json.loads(snakemake.params.study))
if warning := limits.check_positions("the tiny model", limits.Positions(cfg["tiny"]["max_positions"], False), needed):
    log.warning("%s; set model.tiny.max_positions to at least %d", warning, needed)
model = models.build_tiny_model(tokenizer, cfg["tiny"], cfg["tiny"]["seed"])
log.info("tiny model: %d parameters, vocabulary %d", sum(p.numel() for p in model.parameters()), len(tokenizer))
docs = data.read_jsonl(snakemake.input.corpus)
texts = pretrain.corpus_texts(docs, tokenizer, cfg["pretrain"]["chat_share"], cfg["pretrain"]["seed"])
# Read from the config at run time, not a param: tracking changes no result, so it reruns nothing.
tracking = runlog.tracking_dir(snakemake.config.get("tracking", "none"), snakemake.log[0])
history = pretrain.train_causal_lm(model, tokenizer, texts, cfg["pretrain"], log=log.info, tracking=tracking)

out = Path(snakemake.output.model)
corpus = snakemake.input.corpus
card = models.Card(
    what=f"The study's tiny base model: a Llama-architecture model of {model.num_parameters()} parameters "
         f"with a word-level vocabulary of {len(tokenizer)}, built and pretrained by the workflow on a "
         "synthetic corpus",
    made={"pretraining data": f"`{corpus}` (sha256 `{data.sha256(corpus)}`, {len(docs)} documents)",
          "pretraining": f"{cfg['pretrain']['steps']} steps of batch {cfg['pretrain']['batch_size']} "
                         f"(rlheals.pretrain); final loss {history[-1]['loss']:.4f}"},
    settings=cfg, tags=("base", "tiny"))
models.save_model(model, tokenizer, out, card=card.render(out.name))  # atomic, with its checksum manifest

# A first look at the base model (one greedy try per hand); the evaluation rule does the full protocol.
rules = data.rules_from_config(cfg["game"])
verifier = Verifier(target, cfg["prompt"]["format"], cfg["verify"]["strict_format"], cfg["verify"]["rewards"])
rows = [r for path in snakemake.input.tests for r in data.read_jsonl(path)]
hands = episodes.from_rows(rows, rules, cfg["prompt"]["format"])
probe = episodes.summarize(evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(verifier, turns=1)))
log.info("base model, one greedy try per hand: %s", probe)
runlog.write_json_atomic({"history": history, "probe_one_try": probe}, snakemake.output.report)

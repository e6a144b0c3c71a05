"""Link a local Hugging Face model directory into results/models/base (checked, never downloaded), and
log whether it holds the study's longest conversation (rotary positions stretched past their limit)."""

import json

from rlheals import limits, models, runlog

log = runlog.setup(snakemake.log[0])
warning = limits.check_study(snakemake.params.source, json.loads(snakemake.params.study))
if warning:
    log.warning("%s", warning)
source = snakemake.params.source
card = models.Card(what=f"The study's base model: the local model `{source}`, its weights, config and "
                        "tokenizer linked unchanged",
                   made={"source": f"`{source}` (checksums.json lists every file's sha256)"},
                   settings={"model": {"source": "local", "local_path": source}}, tags=("base",))
models.import_local_model(snakemake.params.source, snakemake.output.model, card=card)
log.info("base model: %s -> %s", snakemake.params.source, snakemake.output.model)

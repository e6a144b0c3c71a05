"""Link a local Hugging Face model directory into results/models/base (checked, never downloaded), and
log whether it holds the study's longest conversation (rotary positions stretched past their limit)."""

import json

from rlheals import limits, models, runlog

log = runlog.setup(snakemake.log[0])
warning = limits.check_study(snakemake.params.source, json.loads(snakemake.params.study))
if warning:
    log.warning("%s", warning)
models.import_local_model(snakemake.params.source, snakemake.output.model)
log.info("base model: %s -> %s", snakemake.params.source, snakemake.output.model)

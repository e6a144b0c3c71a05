"""Link a local Hugging Face model directory into results/models/base (checked, never downloaded)."""

from rlheals import models, runlog

log = runlog.setup(snakemake.log[0])
models.import_local_model(snakemake.params.source, snakemake.output.model)
log.info("base model: %s -> %s", snakemake.params.source, snakemake.output.model)

"""The SVD of every analysed weight matrix of one model, cached for every pair and edit that needs it."""

import time

import torch
from safetensors.torch import save_file

from rlheals import matrices, models, runlog, spectrum

log = runlog.setup(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
start = time.time()
weights = models.load_weights(snakemake.input[0])
svds = spectrum.svd_model(weights, matrices.layout(snakemake.input[0], weights))
runlog.write_atomic(snakemake.output[0], lambda path: save_file(svds, path, metadata={"format": "pt"}))
log.info("%d matrices in %.1f s", len(svds) // 3, time.time() - start)

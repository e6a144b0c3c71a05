"""The SVD of every analysed weight matrix of one model, cached for every pair and edit that needs it."""

import time

import torch
from safetensors.torch import save_file

from rlheals import matrices, runlog, spectrum

log = runlog.setup(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
start = time.time()
svds = spectrum.svd_model(*matrices.load(snakemake.input[0]))
runlog.write_atomic(snakemake.output[0], lambda path: save_file(svds, path, metadata={"format": "pt"}))
log.info("%d matrices in %.1f s", len(svds) // 3, time.time() - start)

"""The SVD of every analysed weight matrix of one model, cached for every pair and edit that needs it."""

import time

import torch

from rlheals import matrices, runlog, spectrum

log = runlog.setup(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
start = time.time()
weights, layout = matrices.load(snakemake.input[0])
svds = spectrum.svd_model(weights, layout)
runlog.write_atomic(snakemake.output[0], lambda path: spectrum.write_svds(path, svds, layout))
log.info("%d matrices in %.1f s", len(svds) // 3, time.time() - start)

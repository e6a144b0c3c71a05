"""One restoration edit: results/models/edit-{name} from its B and T models (and their cached SVDs)."""

import json
import time

import torch
from safetensors.torch import load_file

from rlheals import matrices, models, restore, runlog

log = runlog.setup(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
spec = json.loads(snakemake.params.spec)
start = time.time()
svds_b = load_file(snakemake.input.svd_base) if "svd_base" in snakemake.input.keys() else {}
svds_t = load_file(snakemake.input.svd_target) if "svd_target" in snakemake.input.keys() else {}
(weights_b, layout_b), (weights_t, layout_t) = matrices.load(snakemake.input.base), matrices.load(snakemake.input.target)
edited = restore.edit(spec, weights_b, weights_t, svds_b, svds_t, (layout_b, layout_t),
                      models=(snakemake.input.base, snakemake.input.target))
models.save_weights(edited, snakemake.input.target, snakemake.output[0])
changed = sum(not torch.equal(edited[k], weights_t[k]) for k in weights_t)
log.info("%s: %d of %d tensors changed (%.1f s)", spec, changed, len(weights_t), time.time() - start)

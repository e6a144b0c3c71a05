"""Compare two models matrix by matrix: singular value changes and singular vector rotations."""

import polars as pl
import torch

from rlheals import models, runlog, spectrum

log = runlog.setup(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
a, b = snakemake.wildcards.a, snakemake.wildcards.b
# Each model's layout comes with its SVD cache: no module tree to build (no transformers import).
(svds_a, layout_a), (svds_b, layout_b) = spectrum.read_svds(snakemake.input.svd_a), spectrum.read_svds(snakemake.input.svd_b)
weights_a, weights_b = models.load_weights(snakemake.input.model_a), models.load_weights(snakemake.input.model_b)
layout_a.check(weights_a, snakemake.input.model_a)
layout_b.check(weights_b, snakemake.input.model_b)
# SFT's pairs (from the base) carry a random update of the same size per matrix, the null the findings
# decide "rotation, not singular values" against; seeded, so every run draws the same.
rows = spectrum.compare_models(weights_a, weights_b, svds_a, svds_b, snakemake.params.top_share, (layout_a, layout_b),
                               models=(a, b), null_seed=0 if a == "base" else None)
table = pl.DataFrame(rows, schema_overrides={"layer": pl.Int64, "rank_index": pl.Int64}).select(
    pl.lit(a).alias("a"), pl.lit(b).alias("b"), pl.all())
runlog.write_atomic(snakemake.output[0], table.write_parquet)
summary = table.filter(pl.col("metric").is_in(["u_angle_mean_deg", "mean_abs_sv_rel_change", "relative_update_norm"]))
log.info("%s vs %s: %d rows; means: %s", a, b, table.height,
         summary.group_by("metric").agg(pl.col("value").mean()).sort("metric").rows())

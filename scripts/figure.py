"""One figure of the report (the rule's name says which), saved as SVG and self-contained HTML."""

import json

import polars as pl

from rlheals import figures, runlog, tables

log = runlog.setup(snakemake.log[0])
figures.apply_style(json.loads(snakemake.params.style))
name = snakemake.rule.removeprefix("figure_")
read = lambda key: pl.read_parquet(snakemake.input[key])  # noqa: E731
if name == "sft_accuracy":
    chart = figures.sft_accuracy(read("accuracy"), read("losses"), read("rl_recovery"))
elif name == "format_errors":
    chart = figures.format_errors(read("accuracy"))
elif name == "spectrum_by_rank":
    rows = pl.concat([pl.read_parquet(p) for p in snakemake.input.pairs]).with_columns(
        pl.when(pl.col("a") == "base").then(pl.lit("SFT: base -> ") + pl.col("b"))
        .otherwise(pl.lit("RL: ") + pl.col("a") + " -> " + pl.col("b")).alias("pair"))
    chart = figures.spectrum_by_rank(rows)
elif name == "rotation_heatmaps":
    chart = figures.rotation_heatmaps(read("spectrum"), snakemake.params.last_sft)
elif name == "update_norms":
    chart = figures.update_norms(read("update_norms"))
elif name == "rotation_vs_ood":
    points = tables.rotation_points(read("spectrum"), read("accuracy"))
    from rlheals import findings

    chart = figures.rotation_vs_ood(points, findings.spearman(points["rotation"].to_list(), points["ood_accuracy"].to_list()))
elif name == "restoration":
    chart = figures.restoration(read("restoration"))
else:
    raise ValueError(f"no figure called {name!r}")
figures.save(chart, snakemake.output.svg, snakemake.output.html)
log.info("%s written", name)

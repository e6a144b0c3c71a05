"""One figure of the report, saved as SVG and self-contained HTML. The rule's name says which entry of
rlheals.report.FIGURES; the entry names the figures.py function that draws it and what it is given."""

import json

import polars as pl

from rlheals import figures, runlog, tables
from rlheals.report import figure


def label_pairs(rows: pl.DataFrame) -> tuple:
    """The spectrum rows of every pair, each labelled by what it compares."""
    return (rows.with_columns(
        pl.when(pl.col("a") == "base").then(pl.lit("SFT: base -> ") + pl.col("b"))
        .otherwise(pl.lit("RL: ") + pl.col("a") + " -> " + pl.col("b")).alias("pair")),)


def rotation_points(spectrum: pl.DataFrame, accuracy: pl.DataFrame) -> tuple:
    """A point per RL model (rotation, OOD accuracy) and their rank correlation."""
    from rlheals import findings

    points = tables.rotation_points(spectrum, accuracy)
    return points, findings.spearman(points["rotation"].to_list(), points["ood_accuracy"].to_list())


def read(files) -> pl.DataFrame:
    """One input: a table, or a list of tables concatenated."""
    if isinstance(files, str):
        return pl.read_parquet(files)
    return pl.concat([pl.read_parquet(p) for p in files])


PREPARE = {"label_pairs": label_pairs, "rotation_points": rotation_points}

log = runlog.setup(snakemake.log[0])
figures.apply_style(json.loads(snakemake.params.style))
fig = figure(snakemake.rule)
builder = getattr(figures, fig.builder, None)
if not callable(builder):
    raise AttributeError(f"figure {fig.name!r}: rlheals.figures has no builder function {fig.builder!r} "
                         "(see rlheals.report.FIGURES)")
if fig.prepare is not None and fig.prepare not in PREPARE:
    raise KeyError(f"figure {fig.name!r}: scripts/figure.py has no preparation {fig.prepare!r} "
                   f"(it has {sorted(PREPARE)})")
args = tuple(read(snakemake.input[key]) for key in fig.inputs)
if fig.prepare is not None:
    args = PREPARE[fig.prepare](*args)
chart = builder(*args, *(snakemake.params[name] for name in fig.params))
figures.save(chart, snakemake.output.svg, snakemake.output.html)
log.info("%s written", fig.name)

"""One figure of the report, saved as SVG and self-contained HTML. The rule's name says which entry of
rlheals.report.FIGURES; the entry names the figures.py function that draws it and what it is given."""

import json

import polars as pl

from rlheals import figures, model_ids, runlog, tables
from rlheals.report import figure


def label_pairs(rows: pl.DataFrame) -> tuple:
    """The spectrum rows of every pair, each labelled by what it compares (from the parsed ids: the
    continued-SFT control is labelled control whatever its seeds)."""
    what = pl.when(pl.col("a") == "base").then(pl.lit("SFT")).otherwise(
        model_ids.role_of("b").replace_strict({"rl": "RL", "control": "control"}, default="pair"))
    return (rows.with_columns(pl.format("{}: {} -> {}", what, "a", "b").alias("pair")),)


def rotation_points(spectrum: pl.DataFrame, accuracy: pl.DataFrame) -> tuple:
    """A point per SFT checkpoint (rotation to the base, OOD accuracy), their rank correlation and, where it
    is undefined, why."""
    from rlheals import findings

    points = tables.rotation_points(spectrum, accuracy)
    return points, *findings.rotation_correlation(points)


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

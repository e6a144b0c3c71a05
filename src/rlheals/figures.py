"""The study's figures (altair), from the result tables. Each function takes polars tables and returns a
chart; `save` writes it as SVG and as self-contained HTML (vega inlined: no network needed)."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

from rlheals import episodes, model_ids

# The tests' rules; the numbers-only probe of the OOD hands; and the OOD first answers that give the cards
# their values under the written rule (value mapping): the last two tell what the OOD decline is.
VALUES_READ = "ood values read"
RULES = {"id": "#1f77b4", "ood": "#d62728", episodes.NUMBERS: "#9467bd", VALUES_READ: "#ff7f0e"}
RULE_LEGEND = alt.Legend(symbolOpacity=1, symbolType="stroke", symbolStrokeWidth=2,  # not the bands' fill
                         labelExpr=f"datum.label == '{episodes.NUMBERS}' ? 'ood hands as numbers' : datum.label")
LOSS_COLORS = alt.Scale(domain=["train_loss", "id_loss", "ood_loss"], range=["#555555", "#1f77b4", "#d62728"])
MARK_COLORS = {"best OOD accuracy": "#2ca02c", "lowest OOD loss": "#9467bd", "lowest train loss": "#7f7f7f"}
STAGES = ["SFT", "RL", "control"]  # the stages of tables.update_stage
WIDTH, HEIGHT = 360, 220


def apply_style(style: dict) -> None:
    """Figure size from config (`report.width`, `report.height`): a style change reruns only the figures."""
    global WIDTH, HEIGHT
    WIDTH, HEIGHT = style["width"], style["height"]


# Room right of every figure: the SVG's size is measured with the converter's font, and a browser's
# sans-serif (DejaVu Sans on Linux) sets legend text wider, which would be cut at the edge.
PADDING = {"left": 5, "top": 5, "bottom": 5, "right": 60}


def save(chart: alt.TopLevelMixin, svg: str | Path, html: str | Path) -> None:
    chart = chart.properties(padding=PADDING)
    chart.save(str(svg), format="svg")
    chart.save(str(html), format="html", inline=True)


def step_axis(steps, field: str = "sft_step", title: str = "SFT step") -> alt.X:
    """An x axis of training steps with ticks at whole steps only: over a short range vega would put ticks
    at 0.5, 1.5 (and its tickMinStep is not applied), so up to 10 steps every step gets its tick."""
    last = max((int(s) for s in steps if s is not None), default=0)
    values = list(range(0, last + 1)) if last <= 10 else alt.Undefined
    return alt.X(f"{field}:Q", title=title, axis=alt.Axis(format="d", values=values))


def _sft(accuracy: pl.DataFrame) -> pl.DataFrame:
    rows = accuracy.filter(pl.col("stage").is_in(["base", "sft"])).unique(["sft_seed", "sft_step", "rule"])
    return rows.sort("sft_seed", "sft_step", "rule", nulls_last=False)


def rule_colors(rules) -> alt.Scale:
    """The colour of each rule drawn (rules absent from the chart stay out of its legend)."""
    drawn = [r for r in RULES if r in set(rules)]
    return alt.Scale(domain=drawn, range=[RULES[r] for r in drawn])


def _values_read(sft: pl.DataFrame) -> pl.DataFrame:
    """The OOD rows' value-mapping accuracy as a curve of its own, with its 95% Wilson interval."""
    ood = sft.filter(pl.col("rule") == "ood")
    bounds = [episodes.wilson(round(v * n), n)
              for v, n in zip(ood["value_mapping_accuracy"], ood["n_episodes"])]
    return ood.with_columns(pl.lit(VALUES_READ).alias("rule"),
                            pl.col("value_mapping_accuracy").alias("accuracy"),
                            pl.Series("accuracy_low", [b[0] for b in bounds], pl.Float64),
                            pl.Series("accuracy_high", [b[1] for b in bounds], pl.Float64))


def sft_accuracy(accuracy: pl.DataFrame, losses: pl.DataFrame, recovery: pl.DataFrame) -> alt.HConcatChart:
    """Left, vs SFT step with 95% Wilson bands: ID and OOD accuracy; the numbers-only probe of the OOD hands
    (their values as bare numeric puzzles); the share of OOD first answers that give the cards their values
    by the written rule. RL from a step (mean over seeds, error bars = min..max) as triangles, the
    continued-SFT control as squares; the steps where RL ended above the control on OOD beyond the interval
    of the difference shaded (recovery_window). Right: train and held-out losses, the best-loss and
    best-OOD steps marked."""
    sft = _sft(accuracy)
    sft = pl.concat([sft, _values_read(sft)])
    x = step_axis(sft["sft_step"])
    colors = rule_colors(sft["rule"])
    # One band and line per rule and SFT seed: every seed's curve stays visible.
    band = alt.Chart(sft).mark_area(opacity=0.15).encode(
        x, alt.Y("accuracy_low:Q"), alt.Y2("accuracy_high:Q"),
        alt.Color("rule:N", title="curve", scale=colors, legend=RULE_LEGEND), alt.Detail("sft_seed:N"))
    line = alt.Chart(sft).mark_line(point=True).encode(
        x, alt.Y("accuracy:Q", title="share of hands (within the tries)", axis=alt.Axis(format="%")),
        alt.Color("rule:N", scale=colors), alt.Detail("sft_seed:N"),
        tooltip=["model_id", "rule", alt.Tooltip("accuracy:Q", format=".1%")])
    layers = [band, line]
    if recovery.height:
        after = recovery.with_columns(pl.when(pl.col("algo") == model_ids.CONTROL).then(pl.lit("control"))
                                      .otherwise(pl.lit("RL")).alias("arm"))
        layers.append(alt.Chart(after).mark_point(filled=True, size=70).encode(
            x, alt.Y("acc_after:Q"), alt.Color("rule:N", scale=colors),
            alt.Shape("arm:N", scale=alt.Scale(domain=["RL", "control"], range=["triangle-up", "square"])),
            tooltip=["algo", "sft_step", "rule", alt.Tooltip("acc_after:Q", format=".1%"), "n_seeds"]))
        layers.append(alt.Chart(after).mark_rule().encode(x, alt.Y("acc_after_min:Q"), alt.Y2("acc_after_max:Q"),
                                                          alt.Color("rule:N", scale=colors)))
        window = recovery_window(recovery)
        if window.height:
            layers.insert(0, alt.Chart(window).mark_rect(opacity=0.12, color="green").encode(
                alt.X("start:Q"), alt.X2("end:Q")))
    left = alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title="Accuracy vs SFT step")
    index = ["step", *(["sft_seed"] if "sft_seed" in losses.columns else [])]
    long = losses.unpivot(index=index, on=[c for c in ("train_loss", "id_loss", "ood_loss") if c in losses.columns],
                          variable_name="loss", value_name="value").drop_nulls("value")
    marks = best_steps(accuracy, losses)
    per_seed = [alt.Detail("sft_seed:N")] if "sft_seed" in long.columns else []
    curves = alt.Chart(long).mark_line().encode(
        step_axis(long["step"], "step"), alt.Y("value:Q", title="loss", scale=alt.Scale(zero=False)),
        alt.Color("loss:N", scale=LOSS_COLORS), *per_seed)
    drawn = [m for m in MARK_COLORS if m in set(marks["mark"])]
    colour = alt.Color("mark:N", title="marked step",  # only the marks drawn
                       scale=alt.Scale(domain=drawn, range=[MARK_COLORS[m] for m in drawn]))
    # Each kind of mark shifted by 3 pixels: two marks on one step stay side by side, not one over the other.
    rules = alt.layer(*[alt.Chart(marks.filter(pl.col("mark") == m)).mark_rule(
        strokeDash=[4, 3], strokeWidth=2, xOffset=3 * (i - 1)).encode(
        alt.X("step:Q"), colour, alt.Detail("sft_seed:N"), tooltip=["mark", "sft_seed", "step"])
        for i, m in enumerate(MARK_COLORS) if m in drawn])
    right = alt.layer(curves, rules).resolve_scale(color="independent").properties(
        width=WIDTH, height=HEIGHT, title="Loss vs SFT step")
    return alt.hconcat(left, right)



def best_steps(accuracy: pl.DataFrame, losses: pl.DataFrame) -> pl.DataFrame:
    """The steps a researcher would pick, per SFT seed: the best OOD accuracy (after step 0, the earliest on
    a tie: rlheals.curve.peak), the lowest held-out OOD loss and the lowest train loss. No best OOD
    accuracy where the curve is flat (no checkpoint outside the best one's 95% interval): there is none."""
    from rlheals import curve

    rows = []
    sft = accuracy.filter(pl.col("stage") == "sft", pl.col("rule") == "ood").sort("sft_seed", "sft_step",
                                                                                   nulls_last=False)
    for (seed,), ood in sft.group_by("sft_seed", maintain_order=True):
        top = curve.peak(ood.to_dicts())
        if (ood["accuracy_high"] < top["accuracy_low"]).any():
            rows.append({"mark": "best OOD accuracy", "sft_seed": seed, "step": int(top["sft_step"])})
        seeded = "sft_seed" in losses.columns
        of_seed = losses.filter(pl.col("sft_seed").eq_missing(seed)) if seeded else losses
        for column, name in (("ood_loss", "lowest OOD loss"), ("train_loss", "lowest train loss")):
            if column in of_seed.columns and of_seed[column].drop_nulls().len():
                step = of_seed.drop_nulls(column).sort(column)["step"][0]
                rows.append({"mark": name, "sft_seed": seed, "step": int(step)})
    return pl.DataFrame(rows, schema={"mark": pl.String, "sft_seed": pl.Int64, "step": pl.Int64})


def recovery_window(recovery: pl.DataFrame) -> pl.DataFrame:
    """Start steps where RL (of some algo) ended above the continued-SFT control on OOD beyond the 95%
    interval of their difference (tables.rl_recovery_table), per SFT seed, as [start, end] spans reaching
    halfway to the neighbouring starting steps of the same SFT seed."""
    ood = recovery.filter(pl.col("rule") == "ood", pl.col("algo") != model_ids.CONTROL)
    keys = ["sft_seed", "sft_step"]
    above = ood.group_by(keys).agg((pl.col("vs_control_low") > 0).any().fill_null(False).alias("good")).sort(
        keys, nulls_last=False)
    spans = []
    for _, seed in above.group_by("sft_seed", maintain_order=True):
        steps = seed["sft_step"].to_list()
        for i, (step, good) in enumerate(zip(steps, seed["good"])):
            if good:
                spans.append({"start": (steps[i - 1] + step) / 2 if i else step,
                              "end": (steps[i + 1] + step) / 2 if i + 1 < len(steps) else step})
    return pl.DataFrame(spans, schema={"start": pl.Float64, "end": pl.Float64})


def format_errors(accuracy: pl.DataFrame) -> alt.Chart:
    """Share of first answers that are unparseable or illegal, per rule, vs SFT step."""
    sft = _sft(accuracy)
    return alt.Chart(sft).mark_line(point=True).encode(
        step_axis(sft["sft_step"]),
        alt.Y("format_error_rate:Q", title="format errors", axis=alt.Axis(format="%")),
        alt.Color("rule:N", scale=rule_colors(sft["rule"])), alt.Detail("sft_seed:N")).properties(
            width=WIDTH, height=HEIGHT, title="Format errors vs SFT step")


def by_rank(spectrum_rows: pl.DataFrame, metric: str, title: str, y_title: str) -> alt.Chart:
    """A by-rank metric (relative singular value change, or angle) averaged over matrices, vs the rank
    index as a share of each matrix's rank, one line per compared pair."""
    rows = spectrum_rows.filter(pl.col("metric") == metric).with_columns(
        (pl.col("rank_index") / pl.col("rank_index").max().over("pair", "matrix")).alias("rank_share"),
        pl.col("value").abs())
    binned = rows.with_columns((pl.col("rank_share") * 20).floor().clip(0, 19).truediv(20).alias("rank_bin")).group_by(
        "pair", "rank_bin").agg(pl.col("value").mean()).sort("pair", "rank_bin")
    return alt.Chart(binned).mark_line(point=True).encode(
        alt.X("rank_bin:Q", title="rank index (share of the rank; 0 = largest singular value)"),
        alt.Y("value:Q", title=y_title), alt.Color("pair:N", legend=alt.Legend(labelLimit=400),
                                                     scale=alt.Scale(scheme="tableau20")),
        tooltip=["pair", "rank_bin", "value"]
    ).properties(width=WIDTH, height=HEIGHT, title=title)


def spectrum_by_rank(rows: pl.DataFrame) -> alt.HConcatChart:
    """Where the change sits along the spectrum: |relative singular value change| and the angle between
    matching singular vectors, by rank index, for SFT and for RL."""
    return alt.hconcat(by_rank(rows, "sv_rel_change", "Singular value change by rank", "|S_b - S_a| / S_a"),
                       by_rank(rows, "u_angle_deg", "Rotation by rank", "angle of the i-th left singular vector (deg)"))


def rotation_heatmaps(summary: pl.DataFrame, last_sft: str) -> alt.HConcatChart:
    """Rotation by layer x module: SFT (base -> last SFT step) and RL (SFT step -> RL model, control excluded)."""
    sft = summary.filter(pl.col("a") == "base", pl.col("b") == last_sft)
    b = model_ids.fields("b")
    rl = summary.filter(b.struct.field("role") == "rl", pl.col("a") == b.struct.field("start"))
    charts = [rotation_heatmap(sft, f"SFT: base -> {last_sft}")]
    if rl.height:
        charts.append(rotation_heatmap(rl, "RL: SFT step -> RL model (mean)"))
    return alt.hconcat(*charts).resolve_scale(color="independent")


def rotation_heatmap(summary: pl.DataFrame, title: str, metric: str = "u_angle_mean_deg") -> alt.Chart:
    """Mean top-k principal angle (degrees) by layer x module, averaged over the pairs given."""
    cells = (summary.filter(pl.col("layer").is_not_null()).group_by("layer", "module").agg(pl.col(metric).mean())
             .sort("layer", "module"))  # group_by's order varies from run to run: the SVG must not
    return alt.Chart(cells).mark_rect().encode(
        alt.X("module:N", sort=["q", "k", "v", "o", "gate", "up", "down"]), alt.Y("layer:O"),
        alt.Color(f"{metric}:Q", title="angle (deg)", scale=alt.Scale(scheme="viridis")),
        tooltip=["layer", "module", alt.Tooltip(f"{metric}:Q", format=".2f")]).properties(width=220, height=160, title=title)


def _with_wilson(rows: pl.DataFrame, accuracy: str, n: str = "n_episodes") -> pl.DataFrame:
    """`rows` with the 95% Wilson interval of the accuracy column (`{accuracy}_low`, `{accuracy}_high`)."""
    from rlheals.episodes import wilson

    bounds = [wilson(round(a * k), k) for a, k in zip(rows[accuracy], rows[n])]
    return rows.with_columns(pl.Series(f"{accuracy}_low", [b[0] for b in bounds], pl.Float64),
                             pl.Series(f"{accuracy}_high", [b[1] for b in bounds], pl.Float64))


RECOVERY_AXIS = (-1.0, 2.0)  # the recovery panel's x range: an interval beyond it is cut at its edge


def restoration(table: pl.DataFrame) -> alt.HConcatChart:
    """OOD accuracy of each edited model (95% Wilson interval) between its two ends, B and T (gray rules,
    each with its own 95% band): SVD edits vs the restored share (directions vs vectors) and layer resets
    vs the layer share; then every edit's recovery fraction (acc_edit - acc_T) / (acc_B - acc_T) with its
    95% interval (the reverse edit included), or, where B and T are not apart beyond their intervals (the
    fraction is undefined: the table's `defined`), the edit's gain over T in points, written out."""
    ood = _with_wilson(table.filter(pl.col("rule") == "ood"), "acc_edit").with_columns(
        pl.when(pl.col("kind") == "layers").then(pl.col("layers")).otherwise(pl.col("top") + pl.col("tail"))
        .alias("share"),
        ((pl.col("acc_edit") - pl.col("acc_target")) * 100).alias("gain"))
    seeded = "sft_seed" in ood.columns and ood["sft_seed"].drop_nulls().n_unique() > 1
    ood = ood.with_columns(  # an edit is named once per SFT seed: label each seed's apart
        (pl.format("{} (SFT seed {})", "edit", "sft_seed") if seeded else pl.col("edit")).alias("label"),
        *([] if "sft_seed" in ood.columns else [pl.lit(None, pl.Int64).alias("sft_seed")]))
    forward = ood.filter(model_ids.role_of("target") == "sft")  # the reverse edit (into RL): right only
    accuracies = [alt.Tooltip(f"acc_{end}:Q", format=".1%") for end in ("edit", "base", "target")]
    tips = ["label", "base", "target", *accuracies, alt.Tooltip("recovery:Q", format=".2f")]
    # Every B and T the edits use, with its interval; the legend names them (one entry for B, one for T).
    ends = pl.concat([forward.select(pl.lit(end).alias("end"), pl.col(name).alias("model"),
                                     pl.col(f"acc_{name}").alias("accuracy"), "n_episodes")
                      for end, name in (("B", "base"), ("T", "target"))]).unique(maintain_order=True)
    models = pl.col("model").unique(maintain_order=True).str.join(", ").over("end")
    ends = _with_wilson(ends, "accuracy").with_columns(pl.format("{} ({})", "end", models).alias("ends"))
    end_rules = alt.Chart(ends).mark_rule(color="gray").encode(
        alt.Y("accuracy:Q"), alt.StrokeDash("ends:N", title=["B and T", "(95% band)"]), alt.Detail("model:N"),
        tooltip=["end", "model", alt.Tooltip("accuracy:Q", format=".1%")])
    end_bands = alt.Chart(ends).mark_rect(color="gray", opacity=0.12).encode(alt.Y("accuracy_low:Q"),
                                                                             alt.Y2("accuracy_high:Q"))

    def panel(rows: pl.DataFrame, x_title: str, title: str, width: int) -> alt.LayerChart:
        x = alt.X("share:Q", title=x_title, scale=alt.Scale(domain=[0, 1]),
                  axis=alt.Axis(format="%", values=[0, 0.25, 0.5, 0.75, 1]))
        y = alt.Y("acc_edit:Q", title="OOD accuracy (95% interval)", axis=alt.Axis(format="%"))
        line = alt.Chart(rows).mark_line(point=True).encode(x, y, alt.Color("kind:N"),
                                                            alt.Detail("sft_seed:N"), tooltip=tips)
        bars = alt.Chart(rows).mark_rule().encode(x, alt.Y("acc_edit_low:Q"), alt.Y2("acc_edit_high:Q"),
                                                  alt.Color("kind:N"))
        return alt.layer(end_bands, end_rules, bars, line).properties(width=width, height=HEIGHT, title=title)

    svd = forward.filter(pl.col("kind") != "layers", pl.col("tail") == 0).sort("share")
    layers = forward.filter(pl.col("kind") == "layers", pl.col("share").is_not_null()).sort("share")
    lo, hi = RECOVERY_AXIS
    shown = ood.with_columns(
        pl.when("defined").then(pl.col("recovery").clip(lo, hi)).alias("recovery_shown"),
        pl.when("defined").then(pl.col("recovery_low").clip(lo, hi)).alias("recovery_low_shown"),
        pl.when("defined").then(pl.col("recovery_high").clip(lo, hi)).alias("recovery_high_shown"),
        pl.when("defined").then(pl.lit(None, pl.String)).otherwise(pl.format(
            "undefined: edit {}{} points vs T",
            pl.when(pl.col("gain") >= 0).then(pl.lit("+")).otherwise(pl.lit("")),
            pl.col("gain").round(1).cast(pl.String))).alias("undefined"))
    y = alt.Y("label:N", title=None, sort=shown.sort("edit", "sft_seed", nulls_last=False)["label"].to_list())
    ticks = alt.Chart(pl.DataFrame({"at": [0.0, 1.0]})).mark_rule(
        color="gray", strokeDash=[4, 3], opacity=0.5).encode(alt.X("at:Q"))
    fraction = alt.X("recovery_shown:Q", title="recovery fraction (0 = T, 1 = B), 95% interval",
                     scale=alt.Scale(domain=list(RECOVERY_AXIS)))
    points = alt.Chart(shown).mark_point(filled=True, size=60).encode(
        fraction, y, alt.Color("kind:N"),
        tooltip=[*tips, *(alt.Tooltip(f"recovery_{end}:Q", format=".2f") for end in ("low", "high"))])
    intervals = alt.Chart(shown).mark_rule().encode(
        alt.X("recovery_low_shown:Q"), alt.X2("recovery_high_shown:Q"), y, alt.Color("kind:N"))
    words = alt.Chart(shown.filter(~pl.col("defined"))).mark_text(
        align="left", dx=3, fontSize=10, color="#555").encode(
        alt.X("x:Q"), y, alt.Text("undefined:N")).transform_calculate(x=str(lo))
    right = alt.layer(ticks, intervals, points, words).properties(width=260, height=HEIGHT,
                                                                  title="Recovery fraction of every edit")
    return alt.hconcat(panel(svd, "top share of the rank restored", "Top-k directions / vectors", 220),
                       panel(layers, "share of layers reset to B", "Layer reset", 180), right)



def update_norms(summary: pl.DataFrame) -> alt.Chart:
    """Relative update norm ||dW|| / ||W|| by module and layer: SFT (base -> last SFT step) vs RL (SFT
    step -> RL model) and the control, as the "Scalpel vs. Hammer" paper draws it (mean over the runs of each stage)."""
    cells = summary.filter(pl.col("layer").is_not_null()).group_by("stage", "layer", "module").agg(
        pl.col("relative_update_norm").mean()).sort("stage", "layer", "module")
    return alt.Chart(cells).mark_bar().encode(
        alt.X("module:N", sort=["q", "k", "v", "o", "gate", "up", "down"], title=None),
        alt.XOffset("stage:N", sort=STAGES), alt.Y("relative_update_norm:Q", title="||dW|| / ||W||"),
        alt.Color("stage:N", sort=STAGES,
                  scale=alt.Scale(domain=STAGES, range=["#ff7f0e", "#1f77b4", "#7f7f7f"])),
        alt.Row("layer:O"),
        tooltip=["stage", "layer", "module", alt.Tooltip("relative_update_norm:Q", format=".4f")]
    ).properties(width=WIDTH, height=80, title="Relative update norm: SFT, RL and the control")


def rotation_vs_ood(points: pl.DataFrame, correlation: float | None, undefined: str = "") -> alt.Chart:
    """Mean top-k angle to the base model vs OOD accuracy, one point per SFT step (labelled with it), and
    Spearman's correlation in the title, or why it is undefined (findings.rotation_correlation)."""
    seeds = points["sft_seed"].drop_nulls().n_unique() > 1 if "sft_seed" in points.columns else False
    color = [alt.Color("sft_seed:N", title="SFT seed", legend=alt.Legend(symbolOpacity=1))] if seeds else []
    points = points.with_columns(pl.format("step {}", "sft_step").alias("label"))
    base = alt.Chart(points).encode(alt.X("rotation:Q", title="mean top-k principal angle to the base (deg)",
                                          scale=alt.Scale(zero=False)),
                                    alt.Y("ood_accuracy:Q", title="OOD accuracy", axis=alt.Axis(format="%")),
                                    *color)
    dots = base.mark_point(filled=True, size=50).encode(tooltip=[
        "sft_step", alt.Tooltip("rotation:Q", format=".2f"), alt.Tooltip("ood_accuracy:Q", format=".1%")])
    labels = base.mark_text(align="left", dx=6, fontSize=9).encode(text="label:N")
    path = base.mark_line(opacity=0.4).encode(alt.Order("sft_step:Q"), alt.Detail("sft_seed:N"))  # step order
    rho = f"{correlation:+.2f}" if correlation is not None else undefined or "undefined"
    return alt.layer(path, dots, labels).properties(width=WIDTH, height=HEIGHT, title=alt.Title(
        "Rotation vs OOD accuracy across SFT steps", subtitle=f"Spearman {rho}"))

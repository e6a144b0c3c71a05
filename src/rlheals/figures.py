"""The study's figures (altair), from the result tables. Each function takes polars tables and returns a
chart; `save` writes it as SVG and as self-contained HTML (vega inlined: no network needed)."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

RULE_COLORS = alt.Scale(domain=["id", "ood"], range=["#1f77b4", "#d62728"])
WIDTH, HEIGHT = 360, 220


def apply_style(style: dict) -> None:
    """Figure size from config (`report.width`, `report.height`): a style change reruns only the figures."""
    global WIDTH, HEIGHT
    WIDTH, HEIGHT = style["width"], style["height"]


def save(chart: alt.TopLevelMixin, svg: str | Path, html: str | Path) -> None:
    chart.save(str(svg), format="svg")
    chart.save(str(html), format="html", inline=True)


def _sft(accuracy: pl.DataFrame) -> pl.DataFrame:
    rows = accuracy.filter(pl.col("stage").is_in(["base", "sft"])).unique(["sft_seed", "sft_step", "rule"])
    return rows.sort("sft_seed", "sft_step", "rule", nulls_last=False)


def sft_accuracy(accuracy: pl.DataFrame, losses: pl.DataFrame, recovery: pl.DataFrame) -> alt.HConcatChart:
    """Left: ID and OOD accuracy (95% Wilson band) vs SFT step; RL from that step (mean over seeds, error
    bars = min..max) as triangles, the continued-SFT control as squares; the steps where RL beat the
    control on OOD shaded. Right: train and held-out losses, the best-loss and best-OOD steps marked."""
    sft = _sft(accuracy)
    x = alt.X("sft_step:Q", title="SFT step")
    # One band and line per rule and SFT seed: every seed's curve stays visible.
    band = alt.Chart(sft).mark_area(opacity=0.15).encode(x, alt.Y("accuracy_low:Q"), alt.Y2("accuracy_high:Q"),
                                                          alt.Color("rule:N", scale=RULE_COLORS), alt.Detail("sft_seed:N"))
    line = alt.Chart(sft).mark_line(point=True).encode(
        x, alt.Y("accuracy:Q", title="accuracy (solved within the tries)", axis=alt.Axis(format="%")),
        alt.Color("rule:N", scale=RULE_COLORS), alt.Detail("sft_seed:N"),
        tooltip=["model_id", "rule", alt.Tooltip("accuracy:Q", format=".1%")])
    layers = [band, line]
    if recovery.height:
        after = recovery.with_columns(pl.when(pl.col("algo") == "sft_continue").then(pl.lit("control"))
                                      .otherwise(pl.lit("RL")).alias("arm"))
        layers.append(alt.Chart(after).mark_point(filled=True, size=70).encode(
            x, alt.Y("acc_after:Q"), alt.Color("rule:N", scale=RULE_COLORS),
            alt.Shape("arm:N", scale=alt.Scale(domain=["RL", "control"], range=["triangle-up", "square"])),
            tooltip=["algo", "sft_step", "rule", alt.Tooltip("acc_after:Q", format=".1%"), "n_seeds"]))
        layers.append(alt.Chart(after).mark_rule().encode(x, alt.Y("acc_after_min:Q"), alt.Y2("acc_after_max:Q"),
                                                          alt.Color("rule:N", scale=RULE_COLORS)))
        window = recovery_window(recovery)
        if window.height:
            layers.insert(0, alt.Chart(window).mark_rect(opacity=0.12, color="green").encode(
                alt.X("start:Q"), alt.X2("end:Q")))
    left = alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title="Accuracy vs SFT step")
    index = ["step", *(["sft_seed"] if "sft_seed" in losses.columns else [])]
    long = losses.unpivot(index=index, on=[c for c in ("train_loss", "id_loss", "ood_loss") if c in losses.columns],
                          variable_name="loss", value_name="value").drop_nulls("value")
    marks = best_steps(accuracy, losses)
    curves = alt.Chart(long).mark_line().encode(alt.X("step:Q", title="SFT step"), alt.Y("value:Q", title="loss",
                                                scale=alt.Scale(zero=False)), alt.Color("loss:N"),
                                                *([alt.Detail("sft_seed:N")] if "sft_seed" in long.columns else []))
    rules = alt.Chart(marks).mark_rule(strokeDash=[4, 3]).encode(alt.X("step:Q"), alt.Color("mark:N"),
                                                                 tooltip=["mark", "step"])
    right = alt.layer(curves, rules).resolve_scale(color="independent").properties(
        width=WIDTH, height=HEIGHT, title="Loss vs SFT step")
    return alt.hconcat(left, right)


def best_steps(accuracy: pl.DataFrame, losses: pl.DataFrame) -> pl.DataFrame:
    """The steps a researcher would pick: lowest held-out OOD loss, lowest train loss, highest OOD accuracy."""
    sft = _sft(accuracy).filter(pl.col("rule") == "ood")
    rows = [{"mark": "best OOD accuracy", "step": int(sft.sort("accuracy", "sft_step", descending=[True, False])["sft_step"][0])}]
    for column, name in (("ood_loss", "lowest OOD loss"), ("train_loss", "lowest train loss")):
        if column in losses.columns and losses[column].drop_nulls().len():
            rows.append({"mark": name, "step": int(losses.drop_nulls(column).sort(column)["step"][0])})
    return pl.DataFrame(rows)


def recovery_window(recovery: pl.DataFrame) -> pl.DataFrame:
    """Start steps where every RL seed ended above every control seed on OOD (the findings table's test),
    as [start, end] spans reaching halfway to the neighbouring steps."""
    ood = recovery.filter(pl.col("rule") == "ood")
    rl_arm = ood.filter(pl.col("algo") != "sft_continue").group_by("sft_step").agg(pl.col("acc_after_min").max().alias("acc_after")).sort("sft_step")
    control = ood.filter(pl.col("algo") == "sft_continue").select("sft_step", pl.col("acc_after_max").alias("control"))
    joined = rl_arm.join(control, on="sft_step").sort("sft_step")
    steps = joined["sft_step"].to_list()
    better = [a > c for a, c in zip(joined["acc_after"], joined["control"])]
    spans = []
    for i, (step, good) in enumerate(zip(steps, better)):
        if not good:
            continue
        lo = (steps[i - 1] + step) / 2 if i else step
        hi = (steps[i + 1] + step) / 2 if i + 1 < len(steps) else step
        spans.append({"start": lo, "end": hi})
    return pl.DataFrame(spans, schema={"start": pl.Float64, "end": pl.Float64})


def format_errors(accuracy: pl.DataFrame) -> alt.Chart:
    """Share of first answers that are unparseable or illegal, per rule, vs SFT step."""
    return alt.Chart(_sft(accuracy)).mark_line(point=True).encode(
        alt.X("sft_step:Q", title="SFT step"), alt.Y("format_error_rate:Q", title="format errors", axis=alt.Axis(format="%")),
        alt.Color("rule:N", scale=RULE_COLORS), alt.Detail("sft_seed:N")).properties(
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
        alt.Y("value:Q", title=y_title), alt.Color("pair:N"), tooltip=["pair", "rank_bin", "value"]
    ).properties(width=WIDTH, height=HEIGHT, title=title)


def spectrum_by_rank(rows: pl.DataFrame) -> alt.HConcatChart:
    """Where the change sits along the spectrum: |relative singular value change| and the angle between
    matching singular vectors, by rank index, for SFT and for RL."""
    return alt.hconcat(by_rank(rows, "sv_rel_change", "Singular value change by rank", "|S_b - S_a| / S_a"),
                       by_rank(rows, "u_angle_deg", "Rotation by rank", "angle of the i-th left singular vector (deg)"))


def rotation_heatmaps(summary: pl.DataFrame, last_sft: str) -> alt.HConcatChart:
    """Rotation by layer x module: SFT (base -> last SFT step) and RL (SFT step -> RL model, control excluded)."""
    sft = summary.filter(pl.col("a") == "base", pl.col("b") == last_sft)
    rl = summary.filter(pl.col("b").str.starts_with("rl-"), ~pl.col("b").str.starts_with("rl-sft_continue-"))
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


def restoration(table: pl.DataFrame) -> alt.HConcatChart:
    """OOD accuracy of each edited model between its two ends, B and T (dashed rules): SVD edits vs the
    restored share (directions vs vectors), layer resets vs the layer share, and every edit's gain over T
    in points (the reverse edit included). Accuracy, with the recovery fraction in the tooltips: the
    fraction is undefined when B and T score the same, as they can in a small study."""
    ood = table.filter(pl.col("rule") == "ood").with_columns(
        pl.when(pl.col("kind") == "layers").then(pl.col("layers")).otherwise(pl.col("top") + pl.col("tail")).alias("share"),
        ((pl.col("acc_edit") - pl.col("acc_target")) * 100).alias("gain"))
    forward = ood.filter(~pl.col("target").str.starts_with("rl-"))  # the reverse edit is a bar only
    tips = ["edit", "base", "target", "acc_edit", "acc_base", "acc_target", "recovery"]
    accuracy = alt.Y("acc_edit:Q", title="OOD accuracy", axis=alt.Axis(format="%"))
    ends = pl.concat([forward.select(pl.format(f"{end} ({{}})", pl.col(name)).alias("end"), pl.col(f"acc_{name}").alias("accuracy"))
                      for end, name in (("B", "base"), ("T", "target"))]).unique(maintain_order=True)  # every B and T the edits use
    rules = alt.Chart(ends).mark_rule(color="gray").encode(
        alt.Y("accuracy:Q"), alt.StrokeDash("end:N", title="ends"), tooltip=["end", "accuracy"])
    svd = alt.Chart(forward.filter(pl.col("kind") != "layers", pl.col("tail") == 0).sort("share")).mark_line(point=True).encode(
        alt.X("share:Q", title="top share of the rank restored"), accuracy, alt.Color("kind:N"), tooltip=tips)
    layers = alt.Chart(forward.filter(pl.col("kind") == "layers", pl.col("share").is_not_null()).sort("share")).mark_line(point=True).encode(
        alt.X("share:Q", title="share of layers reset to B"), accuracy, alt.Color("kind:N"), tooltip=tips)
    bars = alt.Chart(ood).mark_bar().encode(alt.X("gain:Q", title="OOD accuracy over T (points)"), alt.Y("edit:N", sort="-x"),
                                            alt.Color("kind:N"), tooltip=tips
                                            ).properties(width=240, height=HEIGHT, title="Every edit")
    return alt.hconcat((svd + rules).properties(width=240, height=HEIGHT, title="Top-k directions / vectors"),
                       (layers + rules).properties(width=200, height=HEIGHT, title="Layer reset"), bars)


def update_norms(summary: pl.DataFrame) -> alt.Chart:
    """Relative update norm ||dW|| / ||W|| by module and layer: SFT (base -> last SFT step) vs RL (SFT
    step -> RL model) and the control, as the "Scalpel vs. Hammer" paper draws it (mean over the runs of each stage)."""
    cells = summary.filter(pl.col("layer").is_not_null()).group_by("stage", "layer", "module").agg(
        pl.col("relative_update_norm").mean()).sort("stage", "layer", "module")
    return alt.Chart(cells).mark_bar().encode(
        alt.X("module:N", sort=["q", "k", "v", "o", "gate", "up", "down"], title=None), alt.XOffset("stage:N"),
        alt.Y("relative_update_norm:Q", title="||dW|| / ||W||"), alt.Color("stage:N"),
        alt.Row("layer:O"), tooltip=["stage", "layer", "module", "relative_update_norm"]
    ).properties(width=WIDTH, height=80, title="Relative update norm: SFT vs RL")


def rotation_vs_ood(points: pl.DataFrame, correlation: float) -> alt.Chart:
    """Mean top-k angle to the base model vs OOD accuracy, one point per SFT step."""
    base = alt.Chart(points).encode(alt.X("rotation:Q", title="mean top-k principal angle to the base (deg)"),
                                    alt.Y("ood_accuracy:Q", title="OOD accuracy", axis=alt.Axis(format="%")))
    dots = base.mark_point(filled=True).encode(tooltip=["sft_step", "rotation", "ood_accuracy"])
    labels = base.mark_text(dx=12, fontSize=9).encode(text="sft_step:Q")
    return alt.layer(dots, labels).properties(width=WIDTH, height=HEIGHT,
                                              title=f"Rotation vs OOD accuracy across SFT steps (Spearman {correlation:+.2f})")

"""The findings table: for each finding of the papers (docs/papers.md, "Findings"), the statistic that tests it on this
run, its uncertainty, the paper's value, and whether this run reproduces it. Computed from the result
tables, never written by hand; a finding whose inputs are absent is reported as not tested."""

from __future__ import annotations

import math
from collections.abc import Mapping

import polars as pl

from rlheals import curve, model_ids
from rlheals.episodes import wilson

# The values of the `reproduced` column (docs/study.md, "The findings table"): the run meets the claim's
# criterion (yes) or not (no); it cannot decide it (undefined: the note says why); the claim has no
# criterion (no claim); or its inputs are not in this run (not tested).
YES, NO, UNDEFINED, NO_CLAIM, NOT_TESTED = "yes", "no", "undefined", "no claim", "not tested"
VERDICTS = (YES, NO, UNDEFINED, NO_CLAIM, NOT_TESTED)
SCHEMA = {"finding": pl.String, "claim": pl.String, "statistic": pl.String, "value": pl.Float64,
          "uncertainty": pl.String, "paper": pl.String, "reproduced": pl.String, "note": pl.String}


def verdict(met: bool) -> str:
    """A decided criterion: yes or no."""
    return YES if met else NO


def _row(finding: str, claim: str, statistic: str, value: float | None, uncertainty: str, paper: str,
         reproduced: str, note: str) -> dict:
    if reproduced not in VERDICTS:
        raise ValueError(f"finding {finding} ({claim}): reproduced is {reproduced!r}, not one of {VERDICTS}")
    return {"finding": finding, "claim": claim, "statistic": statistic,
            "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value),
            "uncertainty": uncertainty, "paper": paper, "reproduced": reproduced, "note": note}


def table(rows: list[dict]) -> pl.DataFrame:
    """The findings table from its rows: every column typed, `reproduced` one of VERDICTS."""
    return pl.DataFrame(rows, schema=SCHEMA)


def _sft(accuracy: pl.DataFrame, rule: str) -> pl.DataFrame:
    return accuracy.filter(pl.col("stage") == "sft", pl.col("rule") == rule).sort("sft_step")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ratio(test: curve.Forgetting) -> str:
    return f"{test.ood_peak / test.ood_last:.1f}x" if test.ood_last else "infinitely many times"


def _seeds(accuracy: pl.DataFrame) -> list[int | None]:
    """The SFT seeds of a study (None: a study of one SFT seed)."""
    return sorted(set(accuracy.filter(pl.col("stage") == "sft")["sft_seed"].to_list()), key=lambda s: -1 if s is None else s)


def _of_seed(table: pl.DataFrame, seed: int | None) -> pl.DataFrame:
    return table.filter(pl.col("sft_seed").eq_missing(seed)) if "sft_seed" in table.columns else table


def _seed_label(seed: int | None) -> str:
    return "" if seed is None else f" (SFT seed {seed})"


def sft_forgetting(accuracy: pl.DataFrame, losses: pl.DataFrame) -> list[dict]:
    """Finding 1, for every SFT seed: OOD accuracy peaks early in SFT and then declines while ID keeps
    rising (the criterion of rlheals.curve), and the loss does not find the peak."""
    return [row for seed in _seeds(accuracy)
            for row in _sft_forgetting(_of_seed(accuracy, seed), _of_seed(losses, seed), _seed_label(seed))]


def _sft_forgetting(accuracy: pl.DataFrame, losses: pl.DataFrame, label: str) -> list[dict]:
    """Finding 1 on one SFT run. Undefined where the curve is flat: no checkpoint lies
    outside the best one's 95% interval, so there is no best checkpoint."""
    ood, id_ = _sft(accuracy, "ood"), _sft(accuracy, "id")
    peak = curve.peak(ood.to_dicts())
    last = ood.row(-1, named=True)
    test = curve.forgetting(id_.to_dicts(), ood.to_dicts())
    flat = not (ood["accuracy_high"] < peak["accuracy_low"]).any()
    interval = lambda r: f"{_pct(r['accuracy'])} [{_pct(r['accuracy_low'])}, {_pct(r['accuracy_high'])}]"  # noqa: E731
    undefined = "undefined: OOD accuracy is flat (every checkpoint within the best one's 95% interval)"
    parts = (f"peak at step {peak['sft_step']} of {last['sft_step']}; drop {100 * test.drop:.1f} points "
             f"(criterion: at least {100 * curve.MIN_DROP:.0f}), {_ratio(test)} of the last (at least "
             f"{1 + curve.MIN_RELATIVE_DROP:.1f}x); the intervals " + ("do not overlap" if test.intervals_apart else "overlap")
             + f"; ID {_pct(test.id_base)} at the base, {_pct(test.id_last)} at the end (at least "
             f"{100 * curve.MIN_ID_GAIN:.0f} points up)")
    rows = [_row("1", "OOD accuracy peaks early in SFT, then declines while ID rises" + label,
                 "OOD drop from the peak to the last step (points)", 100 * test.drop,
                 f"peak {interval(peak)}, last {interval(last)} (95% Wilson)",
                 "Llama: peak 17.5% at step 140 -> 6.9% at 1100 (10.6 points)",
                 UNDEFINED if flat else verdict(test.shown), undefined if flat else parts)]
    if "ood_loss" in losses.columns and losses["ood_loss"].drop_nulls().len():
        best_loss = int(losses.drop_nulls("ood_loss").sort("ood_loss")["step"][0])
        best_train = int(losses.drop_nulls("train_loss").sort("train_loss")["step"][0])
        picked = ood.filter(pl.col("sft_step") == best_loss)
        # Decided only where the checkpoint the loss picks is apart from the best one beyond the intervals
        # (or is the best one): a pick inside the best one's interval is as good as the best, as far as
        # this run can tell.
        if flat:
            found, why = UNDEFINED, undefined
        elif best_loss == peak["sft_step"]:
            found, why = NO, "the loss picks the best-OOD checkpoint"
        elif not picked.height:
            found, why = NOT_TESTED, f"not tested: step {best_loss} was not evaluated"
        elif picked["accuracy_high"][0] < peak["accuracy_low"]:
            found, why = YES, (f"OOD at the loss's pick {interval(picked.row(0, named=True))} is below "
                               "the best")
        else:
            pick = interval(picked.row(0, named=True))
            found, why = UNDEFINED, (f"undefined: OOD at the loss's pick {pick} is within the best "
                                     "one's interval")
        rows.append(_row("1", "Train / held-out loss does not find the best-OOD checkpoint" + label,
                         "steps between the lowest held-out OOD loss and the best OOD accuracy",
                         abs(best_loss - peak["sft_step"]), "one run", "OOD loss lowest very early; train loss keeps falling",
                         found, f"lowest OOD loss at step {best_loss}, best OOD accuracy at "
                         f"{peak['sft_step']}, lowest train loss at {best_train}; {why}"))
    return rows


def rl_healing(recovery: pl.DataFrame) -> list[dict]:
    """RL vs the continued-SFT control on OOD, per starting step: the difference of the means over seeds
    with its 95% interval. Reproduced where the interval lies above 0, not where it holds 0 or lies below;
    undefined where no model moved off one accuracy (every seed of both arms the same, as at 0%)."""
    ood = recovery.filter(pl.col("rule") == "ood")
    rl_arm = ood.filter(pl.col("algo") != model_ids.CONTROL)
    control = ood.filter(pl.col("algo") == model_ids.CONTROL).select(
        "sft_seed", "sft_step", pl.col("acc_after").alias("c_after"), pl.col("acc_after_se").alias("c_se"),
        pl.col("n_seeds").alias("c_seeds"))
    if not rl_arm.height:
        return [_row("2", "RL after SFT restores OOD accuracy", "RL runs", None, "", "", NOT_TESTED,
                     "not tested: no RL runs configured")]
    joined = rl_arm.join(control, on=["sft_seed", "sft_step"], how="left", nulls_equal=True).sort(
        "sft_seed", "sft_step", "algo", nulls_last=False)
    rows = []
    for r in joined.iter_rows(named=True):
        claim = (f"RL ({r['algo']}) from SFT step {r['sft_step']}{_seed_label(r['sft_seed'])} restores OOD accuracy "
                 "beyond the control")
        before = f"before {_pct(r['acc_before'])}, after RL {_pct(r['acc_after'])}"
        if r["c_after"] is None:
            rows.append(_row("2", claim, "OOD after RL minus after continued SFT (points)", None, "", PAPER_HEALING,
                             NOT_TESTED, f"not tested: no control run from this step; {before}"))
            continue
        gap = r["acc_after"] - r["c_after"]
        half = 1.96 * math.hypot(r["acc_after_se"], r["c_se"])
        if half == 0:
            found, why = UNDEFINED, "undefined: every RL and control model scores the same"
        else:
            found = verdict(gap - half > 0)
            why = "the interval lies above 0" if found == YES else (
                "the interval holds 0" if gap + half >= 0 else "the interval lies below 0: RL is worse")
        rows.append(_row("2", claim, "OOD after RL minus after continued SFT (points)", 100 * gap,
                         f"95% interval [{100 * (gap - half):.1f}, {100 * (gap + half):.1f}] over "
                         f"{r['n_seeds']} RL and {r['c_seeds']} control seeds", PAPER_HEALING, found,
                         f"{why}; {before}, control {_pct(r['c_after'])}"
                         + ("" if r["recovered_share"] is None else f", recovered share of the drop {r['recovered_share']:.2f}")))
    return rows


PAPER_HEALING = "Llama OOD after RL from step 500: 15.4, 1100: 16.2, 1200: 4.7, 1400: 3.7"


def spectrum_stability(summary: pl.DataFrame, by_rank: pl.DataFrame, base: str, last: str) -> list[dict]:
    pair = summary.filter(pl.col("a") == base, pl.col("b") == last)
    if not pair.height:
        return [_row("3", "Singular values barely move", "", None, "", "", NOT_TESTED,
                     f"not tested: pair {base} vs {last} not analysed")]
    dS, rotation = pair["mean_abs_sv_rel_change"].mean(), pair["dw_rotation_share"].mean()
    rows = [
        _row("3", "Singular values barely move during SFT", f"mean |dS|/S, {base} -> {last}", dS,
             f"over {pair.height} matrices, max {pair['mean_abs_sv_rel_change'].max():.4f}", "about 0.003 (0.3%)",
             verdict(dS < 0.01), "criterion: below 1%"),
        _row("3", "What changes is rotation, not singular values", f"share of ||dW||^2 off the diagonal of U^T dW V, {base} -> {last}",
             rotation, f"min over matrices {pair['dw_rotation_share'].min():.3f}", "rotation dominates",
             verdict(rotation > 0.9),
             "criterion: above 0.9"),
    ]
    angles = by_rank.filter(pl.col("metric") == "u_angle_deg")
    if angles.height:
        share = angles.with_columns((pl.col("rank_index") / pl.col("rank_index").max().over("matrix")).alias("s"))
        top = share.filter(pl.col("s") <= 0.1)["value"].mean()
        tail = share.filter(pl.col("s") >= 0.9)["value"].mean()
        middle = share.filter(pl.col("s") > 0.1, pl.col("s") < 0.9)["value"].mean()
        rows.append(_row("3", "Rotation concentrates at the largest and smallest singular values",
                         "mean angle of the top and bottom 10% of singular vectors over the middle 80%",
                         min(top, tail) / middle if middle else None,
                         f"top {top:.1f}, middle {middle:.1f}, bottom {tail:.1f} degrees", "ends rotate most",
                         verdict(top > middle and tail > middle), "criterion: both ends above the middle"))
    return rows


def rotation_predicts_ood(points: pl.DataFrame) -> list[dict]:
    """Beyond the papers: does the rotation from the base model (no labels needed) track OOD accuracy
    across SFT steps? Spearman correlation over the steps; a claim of no paper: never reproduced or not."""
    if points.height < 3:
        return []
    rho, undefined = rotation_correlation(points)
    return [_row("3+", "The spectrum can pick the best checkpoint without OOD labels",
                 "Spearman correlation of top-k rotation (to the base) with OOD accuracy across SFT steps", rho,
                 f"{points.height} steps", "not in the papers", NO_CLAIM,
                 undefined or "negative: more rotation, less OOD; a rank correlation, not a selection "
                 "rule")]


def rotation_correlation(points: pl.DataFrame) -> tuple[float | None, str]:
    """Spearman's rank correlation of rotation with OOD accuracy over the SFT steps of `points`
    (tables.rotation_points), or None with why it is undefined: a correlation needs both to vary."""
    if points.height < 3:
        return None, f"undefined: {points.height} SFT steps, at least 3 needed"
    for column, what in (("ood_accuracy", "OOD accuracy"), ("rotation", "the rotation to the base")):
        if points[column].n_unique() == 1:
            value = points[column][0]
            shown = f"{100 * value:.1f}%" if column == "ood_accuracy" else f"{value:.2f} degrees"
            return None, f"undefined: {what} is {shown} at every SFT step"
    rho = spearman(points["rotation"].to_list(), points["ood_accuracy"].to_list())
    if rho is None or math.isnan(rho):
        return None, "undefined: no rank correlation"
    return rho, ""


# The papers' claims about restoration edits; every other edit is reported beside them, with no claim.
RESTORATION_CLAIMS = (
    ("top 20% directions", lambda r: r["kind"] == "directions" and r["top"] == 0.2 and r["tail"] == 0
     and model_ids.role(r["target"]) == "sft", "70-80% of the OOD loss recovered"),
    ("first 25% of layers", lambda r: r["kind"] == "layers" and r["layers"] == 0.25, "70-80% recovered"),
)


def recovery_defined(r: Mapping) -> bool:
    """Whether an edit's recovery fraction (a row of tables.restoration_table) means anything: B and T apart
    beyond their 95% Wilson intervals (else the fraction divides noise by noise)."""
    n = r["n_episodes"]
    b_low, b_high = wilson(round(r["acc_base"] * n), n)
    t_low, t_high = wilson(round(r["acc_target"] * n), n)
    return (b_low > t_high or t_low > b_high) and not math.isnan(r["recovery"])


def restoration_findings(table: pl.DataFrame) -> list[dict]:
    """Every edit's OOD recovery fraction with its 95% interval. Undefined where B and T are not apart
    beyond their 95% intervals (the fraction would divide noise by noise). For the papers' two claims,
    reproduced where the fraction is at least 0.5 and its interval lies above 0."""
    rows = []
    for r in table.filter(pl.col("rule") == "ood").sort("edit").iter_rows(named=True):
        claim = next(((label, paper) for label, match, paper in RESTORATION_CLAIMS if match(r)), None)
        defined = recovery_defined(r)
        interval = (f"95% interval [{r['recovery_low']:.2f}, {r['recovery_high']:.2f}] (delta method)" if defined
                    else "undefined: B and T are not apart beyond their 95% intervals")
        found = NO_CLAIM
        if claim:
            found = verdict(r["recovery"] >= 0.5 and r["recovery_low"] > 0) if defined else UNDEFINED
        label = claim[0] if claim else f"{r['kind']} edit {r['edit']}"
        rows.append(_row("4", f"Restoring the {label} of {r['base']} into {r['target']} recovers OOD accuracy",
                         "OOD recovery fraction (acc_edit - acc_T) / (acc_B - acc_T)",
                         r["recovery"] if defined else None, interval,
                         claim[1] if claim else "no claim in the papers", found,
                         f"edit {r['edit']}: {_pct(r['acc_edit'])} between T {_pct(r['acc_target'])} and B "
                         f"{_pct(r['acc_base'])}" + ("; criterion: at least 0.5, interval above 0" if claim else "")))
    return rows


def update_norms(summary: pl.DataFrame, base: str, last: str) -> list[dict]:
    sft = summary.filter(pl.col("a") == base, pl.col("b") == last, pl.col("layer").is_not_null())
    b = model_ids.fields("b")
    rl = summary.filter(b.struct.field("role") == "rl", pl.col("a") == b.struct.field("start"),
                        pl.col("layer").is_not_null())
    if not sft.height or not rl.height:
        return []
    s, r = sft["relative_update_norm"].mean(), rl["relative_update_norm"].mean()
    top_sft = sft.group_by("module").agg(pl.col("relative_update_norm").mean()).sort("relative_update_norm", descending=True)["module"][0]
    top_rl = rl.group_by("module").agg(pl.col("relative_update_norm").mean()).sort("relative_update_norm", descending=True)["module"][0]
    return [
        _row("5", "RL changes the weights less than SFT", "mean ||dW||/||W||: RL runs over SFT (base -> last step)", r / s,
             f"SFT {s:.4f}, RL {r:.4f} (mean over {rl.select('b').n_unique()} runs)",
             "RL's updates are smaller", verdict(r < s), ""),
        _row("5", "Attention q/k change most", "module with the largest mean relative update (SFT; RL)", None,
             f"SFT: {top_sft}, RL: {top_rl}", "q and k",
             verdict(top_sft in ("q", "k") and top_rl in ("q", "k")), ""),
    ]


def spearman(x: list[float], y: list[float]) -> float:
    return pl.DataFrame({"x": x, "y": y}).select(pl.corr("x", "y", method="spearman")).item()

"""The findings table: for each finding of the papers (docs/papers.md, "Findings"), the statistic that tests it on this
run, its uncertainty, the paper's value, and whether this run reproduces it. Computed from the result
tables, never written by hand; a finding whose inputs are absent is reported as not tested."""

from __future__ import annotations

import math
from collections.abc import Mapping

import polars as pl

from rlheals import curve, episodes, model_ids, statistics, tables

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


def side(low: float, high: float, sign: int = 1, at: float = 0.0) -> str:
    """A directional claim from an interval: yes where it lies wholly on the claimed side of `at` (sign +1:
    above, -1: below), no where it lies wholly on the other side, undefined where it holds `at` (the run
    cannot tell)."""
    above, below = low > at, high < at
    if sign < 0:
        above, below = below, above
    return decide(above, below)


def decide(met: bool, excluded: bool) -> str:
    """Every decided claim's verdict: yes where its criterion is met beyond noise, no where the interval
    rules it out, undefined where neither (the run cannot tell)."""
    if met and excluded:
        raise ValueError("a claim cannot be both met and ruled out")
    return YES if met else NO if excluded else UNDEFINED


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


def sft_forgetting(accuracy: pl.DataFrame, losses: pl.DataFrame, hands: pl.DataFrame,
                   chosen_b: Mapping[int | None, int] | None = None) -> list[dict]:
    """Finding 1, for every SFT seed, as two claims decided apart: OOD accuracy declines from its best
    checkpoint while ID keeps rising (the criterion of rlheals.curve); SFT first raises OOD above the base
    (the best checkpoint minus step 0, paired on the test hands). And the loss does not find the best.
    The best checkpoint is B as chosen on the selection hands (`chosen_b`, by SFT seed), else the best on
    the test hands, which the rows then say."""
    return [row for seed in _seeds(accuracy)
            for row in _sft_forgetting(_of_seed(accuracy, seed), _of_seed(losses, seed), hands, _seed_label(seed),
                                       (chosen_b or {}).get(seed))]


def _rises_above_base(ood: pl.DataFrame, peak: Mapping, hands: pl.DataFrame, label: str, selected: bool) -> dict:
    base = ood.row(0, named=True)
    claim = "SFT first raises OOD accuracy above the base" + label
    statistic = "OOD at the best checkpoint minus at step 0 (points)"
    paper = "Llama: 17.5% at step 140 from the base's lower OOD"
    if base["sft_step"] != 0:
        return _row("1", claim, statistic, None, "", paper, NOT_TESTED, "not tested: step 0 was not evaluated")
    gain = statistics.difference(*tables.results_matrix(hands, [peak["model_id"], base["model_id"]], "ood"))
    return _decided("1", claim, statistic, gain, paper,
                    f"step {peak['sft_step']} {_pct(peak['accuracy'])}, base {_pct(base['accuracy'])}; " +
                    ("B chosen on the selection hands" if selected else
                     "the best checkpoint is chosen on the same hands, which favours it"))


def what_the_decline_is(hands: pl.DataFrame, best: str, last: str, label: str = "") -> list[dict]:
    """What SFT's OOD decline from the best checkpoint to the last is, each reading decided on its own,
    paired on the OOD test hands: SFT loses the hands' arithmetic (the numbers-only probe, each hand's
    values as a bare numeric puzzle, falls), and SFT loses the written rule (fewer first answers give the
    cards their values by the OOD rule: value mapping falls). Either, both or neither can hold."""
    arithmetic = ("SFT loses the OOD hands' arithmetic: the numbers-only probe falls from the best checkpoint"
                  + label)
    rule = ("SFT loses the written rule: fewer OOD first answers give the cards their values by it than at "
            "the best checkpoint" + label)
    paper = "not measured in the papers"
    ood = tables.results_matrix(hands, [best, last], "ood", "value_mapping")
    rows = [_decided("1", rule, "OOD value mapping at the best checkpoint minus at the last (points)",
                     statistics.difference(*ood), paper,
                     f"value mapping {_pct(ood[0].mean())} at {best}, {_pct(ood[1].mean())} at {last}")]
    probed = set(hands.filter(pl.col("rule") == episodes.NUMBERS)["model_id"].unique().to_list())
    if not {best, last} <= probed:
        why = "not tested: the numbers-only probe was not run on the best and the last checkpoint"
        return [_row("1", arithmetic, "", None, "", paper, NOT_TESTED, why), *rows]
    numbers = tables.results_matrix(hands, [best, last], episodes.NUMBERS)
    solved = tables.results_matrix(hands, [best, last], "ood")
    return [_decided("1", arithmetic, "numbers-only probe at the best checkpoint minus at the last (points)",
                     statistics.difference(*numbers), paper,
                     f"probe {_pct(numbers[0].mean())} at {best}, {_pct(numbers[1].mean())} at {last}; OOD "
                     f"{_pct(solved[0].mean())} and {_pct(solved[1].mean())}"), *rows]


def _decided(finding: str, claim: str, statistic: str, estimate: statistics.Estimate, paper: str,
             note: str) -> dict:
    """A claim that a difference is above 0, decided by its interval: above 0 (yes), below (no), holding
    0 (undefined), or undefined where the two arms agree on every hand (no spread to judge by)."""
    if estimate.se == 0 and estimate.value == 0:
        return _row(finding, claim, statistic, 100 * estimate.value, "", paper, UNDEFINED,
                    f"undefined: both agree on every hand; {note}")
    return _row(finding, claim, statistic, 100 * estimate.value, estimate.text(), paper,
                side(estimate.low, estimate.high), f"{note}; criterion: {CRITERION}")


CRITERION = "the interval above 0 (yes), below 0 (no), holding 0 (undefined)"


def _sft_forgetting(accuracy: pl.DataFrame, losses: pl.DataFrame, hands: pl.DataFrame, label: str,
                    chosen_b: int | None = None) -> list[dict]:
    """Finding 1 on one SFT run. Undefined where the curve is flat: no checkpoint lies
    outside the best one's 95% interval, so there is no best checkpoint."""
    ood, id_ = _sft(accuracy, "ood"), _sft(accuracy, "id")
    chosen = ood.filter(pl.col("sft_step") == chosen_b) if chosen_b is not None else ood.clear()
    peak = chosen.row(0, named=True) if chosen.height else curve.peak(ood.to_dicts())
    last = ood.row(-1, named=True)
    test = curve.forgetting(id_.to_dicts(), ood.to_dicts(), peak["sft_step"])
    flat = not (ood["accuracy_high"] < peak["accuracy_low"]).any()
    interval = lambda r: f"{_pct(r['accuracy'])} [{_pct(r['accuracy_low'])}, {_pct(r['accuracy_high'])}]"  # noqa: E731
    undefined = "undefined: OOD accuracy is flat (every checkpoint within the best one's 95% interval)"
    parts = (f"best at step {peak['sft_step']} of {last['sft_step']}; drop {100 * test.drop:.1f} points "
             f"(criterion: at least {100 * curve.MIN_DROP:.0f}), {_ratio(test)} of the last (at least "
             f"{1 + curve.MIN_RELATIVE_DROP:.1f}x); the intervals " + ("do not overlap" if test.intervals_apart else "overlap")
             + f"; ID {_pct(test.id_base)} at the base, {_pct(test.id_last)} at the end (at least "
             f"{100 * curve.MIN_ID_GAIN:.0f} points up)")
    rows = [_row("1", "OOD accuracy declines from its best SFT checkpoint while ID rises" + label,
                 "OOD drop from the best checkpoint to the last step (points)", 100 * test.drop,
                 f"best {interval(peak)}, last {interval(last)} (95% Wilson)",
                 "Llama: peak 17.5% at step 140 -> 6.9% at 1100 (10.6 points)",
                 UNDEFINED if flat else verdict(test.shown), undefined if flat else parts),
            _rises_above_base(ood, peak, hands, label, selected=bool(chosen.height))]
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
    return rows + what_the_decline_is(hands, peak["model_id"], last["model_id"], label)


def rl_healing(recovery: pl.DataFrame) -> list[dict]:
    """Finding 2 from the RL recovery table (tables.rl_recovery_table), on OOD, per SFT seed, algo and start:

    - healing: R, the recovered share of what SFT lost by the start. Undefined where nothing was lost
      beyond noise (the drop's interval holds 0), or where one RL seed leaves the seed spread unknown.
      Reproduced where R >= 0.5 and H = after - before is above 0 after Holm's correction over every
      defined start and algo; not reproduced otherwise;
    - RL forgets less than the continued-SFT control from the same start: after - control's after, above 0
      after Holm's correction over every start and algo with a control.
    ID before and after RL is in every row's note."""
    ood = recovery.filter(pl.col("rule") == "ood", pl.col("algo") != model_ids.CONTROL).sort(
        "sft_seed", "sft_step", "algo", nulls_last=False)
    if not ood.height:
        return [_row("2", "RL after SFT restores OOD accuracy", "RL runs", None, "", "", NOT_TESTED,
                     "not tested: no RL runs configured")]
    id_ = recovery.filter(pl.col("rule") == "id").select(
        "sft_seed", "algo", "sft_step", pl.col("acc_before").alias("id_before"), pl.col("acc_after").alias("id_after"))
    rows = ood.join(id_, on=["sft_seed", "algo", "sft_step"], how="left", nulls_equal=True).to_dicts()
    healable = [r for r in rows if r["recovered_share"] is not None and r["n_seeds"] > 1]
    heal_p = dict(zip(map(id, healable), statistics.holm([r["heal_p"] for r in healable])))
    compared = [r for r in rows if r["vs_control"] is not None and r["n_seeds"] > 1]
    vs_p = dict(zip(map(id, compared), statistics.holm([r["vs_control_p"] for r in compared])))
    out = []
    for r in rows:
        where = f"RL ({r['algo']}) from SFT step {r['sft_step']}{_seed_label(r['sft_seed'])}"
        id_note = ("" if r["id_before"] is None else
                   f"; ID {_pct(r['id_before'])} before, {_pct(r['id_after'])} after RL")
        before = (f"OOD {_pct(r['acc_before'])} at the start, {_pct(r['acc_after'])} after RL "
                  f"({r['n_seeds']} seeds), {_pct(r['acc_ref'])} at {r['ref']}")
        out.append(_healing_row(r, where, heal_p.get(id(r)), before + id_note))
        out.append(_control_row(r, where, vs_p.get(id(r)), before + id_note))
    return out


def _healing_row(r: Mapping, where: str, p_holm: float | None, context: str) -> dict:
    claim = f"{where} heals OOD forgetting: recovers at least half of what SFT lost"
    statistic = "recovered share R = (OOD after RL - at start) / (OOD at ref - at start)"
    heal = f"H = {_points(r, 'heal')}"
    if r["recovered_share"] is None:
        why = (f"undefined: nothing was lost by this start beyond noise (drop {_points(r, 'drop')})"
               if not r["drop_beyond_noise"] else "undefined: one RL seed, so the spread between seeds is unknown")
        return _row("2", claim, statistic, None, heal, PAPER_HEALING, UNDEFINED, f"{why}; {context}")
    if r["n_seeds"] < 2:
        return _row("2", claim, statistic, r["recovered_share"], heal, PAPER_HEALING, UNDEFINED,
                    f"undefined: one RL seed, so the spread between seeds is unknown; {context}")
    found = decide(r["recovered_share"] >= 0.5 and r["heal"] > 0 and p_holm < 0.05,
                   r["recovered_share_high"] < 0.5)
    return _row("2", claim, statistic, r["recovered_share"],
                f"R {_interval(r, 'recovered_share', 1, 2)}; {heal}, Holm-adjusted p {p_holm:.3f}", PAPER_HEALING,
                found, f"criterion: yes where R is at least 0.5 and H above 0 at Holm-adjusted p < 0.05, no where "
                f"R's interval lies below 0.5, undefined otherwise; drop {_points(r, 'drop')}; {context}")


def _control_row(r: Mapping, where: str, p_holm: float | None, context: str) -> dict:
    claim = f"{where} forgets less OOD than continued SFT"
    statistic = "OOD after RL minus after the continued-SFT control (points)"
    if r["vs_control"] is None:
        return _row("2", claim, statistic, None, "", "RL keeps OOD that SFT loses", NOT_TESTED,
                    f"not tested: no control run from this start; {context}")
    if p_holm is None:
        return _row("2", claim, statistic, 100 * r["vs_control"], _points(r, "vs_control"),
                    "RL keeps OOD that SFT loses", UNDEFINED,
                    f"undefined: one RL seed, so the spread between seeds is unknown; {context}")
    if r["vs_control_se"] == 0:
        return _row("2", claim, statistic, 100 * r["vs_control"], _points(r, "vs_control"),
                    "RL keeps OOD that SFT loses", UNDEFINED,
                    f"undefined: every RL and control model scores the same; {context}")
    found = decide(r["vs_control"] > 0 and p_holm < 0.05, r["vs_control_high"] < 0)
    return _row("2", claim, statistic, 100 * r["vs_control"],
                f"{_points(r, 'vs_control')}, Holm-adjusted p {p_holm:.3f}", "RL keeps OOD that SFT loses", found,
                f"control {_pct(r['acc_control'])} ({r['control_seeds']} seeds); criterion: yes above 0 at "
                f"Holm-adjusted p < 0.05, no where the interval lies below 0, undefined otherwise; {context}")


def _interval(r: Mapping, name: str, scale: float, digits: int) -> str:
    """A statistic of a table row (its value, _low, _high and _df columns) with its interval, as text."""
    return statistics.interval_text(r[name], r[f"{name}_low"], r[f"{name}_high"], r[f"{name}_df"], scale, digits)


def _points(r: Mapping, name: str) -> str:
    """A difference of accuracies in points with its interval."""
    return _interval(r, name, 100, 1) + " points"


PAPER_HEALING = "Llama OOD after RL from step 500: 15.4, 1100: 16.2, 1200: 4.7, 1400: 3.7"


def spectrum_stability(summary: pl.DataFrame, base: str, last: str) -> list[dict]:
    """Finding 3 on the pair base -> last SFT step, each claim decided against the same update drawn at
    random (spectrum.NULL_METRICS: per matrix, a Gaussian update of the same norm): a property any update
    of that size has is not a finding about SFT. Per claim, the difference from the random update, paired
    by matrix, with a t interval over the matrices."""
    pair = summary.filter(pl.col("a") == base, pl.col("b") == last)
    if not pair.height:
        return [_row("3", "Singular values barely move", "", None, "", "", NOT_TESTED,
                     f"not tested: pair {base} vs {last} not analysed")]
    claims = (
        ("Singular values barely move during SFT: less than under a random update of the same size",
         "mean_abs_sv_rel_change", "mean |dS|/S", -1, "about 0.003 (0.3%)"),
        ("What changes is rotation, not singular values: more than under a random update of the same size",
         "dw_rotation_share", "share of ||dW||^2 off the diagonal of U^T dW V", 1, "rotation dominates"),
        ("Rotation concentrates at the largest and smallest singular values, more than a random update's",
         "u_angle_ends_over_middle", "mean angle of the top and bottom 10% of singular vectors over the middle",
         1, "ends rotate most"),
    )
    rows = []
    for claim, metric, what, sign, paper in claims:
        statistic = f"{what}, {base} -> {last}, minus a random update's"
        if f"null_{metric}" not in pair.columns:
            rows.append(_row("3", claim, statistic, None, "", paper, NOT_TESTED,
                             f"not tested: the pair has no random-update null for {metric}"))
            continue
        both = pair.select(metric, f"null_{metric}").drop_nans().drop_nulls()
        if both.height < 2:
            rows.append(_row("3", claim, statistic, None, "", paper, UNDEFINED,
                             f"undefined: {both.height} matrices with a value"))
            continue
        observed, null = both[metric].to_numpy(), both[f"null_{metric}"].to_numpy()
        gap = statistics.difference(observed, null)
        rows.append(_row("3", claim, statistic, gap.value, f"{gap.text(scale=1, digits=4)} over {both.height} matrices",
                         paper, side(gap.low, gap.high, sign), f"SFT {observed.mean():.4f}, random update "
                         f"{null.mean():.4f} (mean over matrices); criterion: the interval "
                         f"{'above' if sign > 0 else 'below'} 0 (yes), on the other side (no), holding 0 "
                         "(undefined)"))
    return rows


def rotation_predicts_ood(points: pl.DataFrame) -> list[dict]:
    """Beyond the papers: does the rotation from the base model (no labels needed) track OOD accuracy
    beyond what the step alone says? Along one SFT run the rotation grows with the step, so any OOD curve
    that moves with the step correlates with it: the question is asked only across SFT seeds at the same
    step (Spearman of the within-step deviations), and dropped, saying so, for a study of one SFT run. A
    claim of no paper: never reproduced or not."""
    if points.height < 3:
        return []
    claim = "The spectrum can pick the best checkpoint without OOD labels"
    by_step = points.filter(pl.len().over("sft_step") >= 2)
    if by_step["sft_seed"].n_unique() < 2:
        rho, undefined = rotation_correlation(points)
        with_step = spearman(points["rotation"].to_list(), points["sft_step"].to_list())
        shown = undefined or f"{rho:+.2f}"
        return [_row("3+", claim, "Spearman correlation of top-k rotation (to the base) with OOD accuracy, the "
                     "SFT step held fixed", None, f"{points.height} steps of one SFT run", "not in the papers",
                     NO_CLAIM, f"dropped: in one SFT run the rotation follows the step (Spearman with the step "
                     f"{with_step:+.2f}), so its correlation with OOD across steps ({shown}) is the step's; "
                     "asking it needs several SFT seeds at the same steps")]
    within = by_step.with_columns((pl.col(c) - pl.col(c).mean().over("sft_step")).alias(c)
                                  for c in ("rotation", "ood_accuracy"))
    rho, undefined = rotation_correlation(within)
    return [_row("3+", claim, "Spearman correlation of top-k rotation (to the base) with OOD accuracy across "
                 "SFT seeds at the same step (deviations from each step's mean)", rho,
                 f"{within.height} checkpoints of {within['sft_seed'].n_unique()} SFT seeds at "
                 f"{within['sft_step'].n_unique()} steps", "not in the papers", NO_CLAIM,
                 undefined or "negative: a seed that rotated more than the others at a step has less OOD; a rank "
                 "correlation, not a selection rule")]


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


def restoration_findings(table: pl.DataFrame) -> list[dict]:
    """Every edit's OOD recovery fraction with its 95% interval (tables.restoration_table). Undefined where
    B and T are not apart beyond the interval of B - T (the fraction would divide noise by noise). For the
    papers' two claims, reproduced where the fraction is at least 0.5 and its interval lies above 0."""
    rows = []
    for r in table.filter(pl.col("rule") == "ood").sort("edit").iter_rows(named=True):
        claim = next(((label, paper) for label, match, paper in RESTORATION_CLAIMS if match(r)), None)
        defined = r["defined"]
        interval = (f"95% interval [{r['recovery_low']:.2f}, {r['recovery_high']:.2f}] (t on {r['recovery_df']:.0f} "
                    "df, paired on the test hands)" if defined else
                    f"undefined: B - T is {100 * r['gap']:.1f} points [{100 * r['gap_low']:.1f}, "
                    f"{100 * r['gap_high']:.1f}], not beyond noise")
        found = NO_CLAIM
        if claim:
            found = decide(r["recovery"] >= 0.5 and r["recovery_low"] > 0,
                           r["recovery_high"] < 0.5) if defined else UNDEFINED
        label = claim[0] if claim else f"{r['kind']} edit {r['edit']}"
        rows.append(_row("4", f"Restoring the {label} of {r['base']} into {r['target']} recovers OOD accuracy",
                         "OOD recovery fraction (acc_edit - acc_T) / (acc_B - acc_T)",
                         r["recovery"] if defined else None, interval,
                         claim[1] if claim else "no claim in the papers", found,
                         f"edit {r['edit']}: {_pct(r['acc_edit'])} between T {_pct(r['acc_target'])} and B "
                         f"{_pct(r['acc_base'])}" + ("; criterion: yes at least 0.5 with the interval above 0, no with the "
                                                     "interval below 0.5, undefined otherwise" if claim else "")))
    return rows


def update_norms(summary: pl.DataFrame, base: str, last: str, doses: Mapping[str, Mapping] | None = None) -> list[dict]:
    """Finding 5: how much RL and SFT change the weights. The comparison means something about RL only at
    a matched dose (the same summed learning rate, or the same change in training loss); `doses` gives
    each stage's learning rate and steps ({"sft": {"lr", "steps"}, "rl": {"lr", "updates"}}), and where they
    are not matched the row says so and leaves the claim undefined."""
    sft = summary.filter(pl.col("a") == base, pl.col("b") == last, pl.col("layer").is_not_null())
    b = model_ids.fields("b")
    rl = summary.filter(b.struct.field("role") == "rl", pl.col("a") == b.struct.field("start"),
                        pl.col("layer").is_not_null())
    if not sft.height or not rl.height:
        return []
    s, r = sft["relative_update_norm"].mean(), rl["relative_update_norm"].mean()
    top_sft = sft.group_by("module").agg(pl.col("relative_update_norm").mean()).sort("relative_update_norm", descending=True)["module"][0]
    top_rl = rl.group_by("module").agg(pl.col("relative_update_norm").mean()).sort("relative_update_norm", descending=True)["module"][0]
    found, why = UNDEFINED, "undefined: the doses of RL and SFT are not given"
    if doses:
        sft_dose = doses["sft"]["lr"] * doses["sft"]["steps"]
        rl_floor = doses["rl"]["lr"] * doses["rl"]["updates"]
        why = (f"undefined: not at a matched dose. SFT's summed learning rate is {doses['sft']['lr']:g} x "
               f"{doses['sft']['steps']} steps = {sft_dose:.3g}; RL's {doses['rl']['lr']:g} x {doses['rl']['updates']} "
               f"updates = {rl_floor:.3g} times its optimizer steps per update, so the smaller change "
               "follows from the settings, not from RL")
    return [
        _row("5", "RL changes the weights less than SFT", "mean ||dW||/||W||: RL runs over SFT (base -> last step)", r / s,
             f"SFT {s:.4f}, RL {r:.4f} (mean over {rl.select('b').n_unique()} runs)",
             "RL's updates are smaller", found, why),
        _row("5", "Attention q/k change most", "module with the largest mean relative update (SFT; RL)", None,
             f"SFT: {top_sft}, RL: {top_rl}", "q and k",
             verdict(top_sft in ("q", "k") and top_rl in ("q", "k")), ""),
    ]


def spearman(x: list[float], y: list[float]) -> float:
    return pl.DataFrame({"x": x, "y": y}).select(pl.corr("x", "y", method="spearman")).item()

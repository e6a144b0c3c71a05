import ast
import inspect
from collections import Counter
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT

from rlheals import figures, findings, tables
from rlheals.report import FIGURES, SFT_LOG_FILES, SPECTRUM_PAIR_FILES, figure


def episodes(ood_by_step: dict[int, float], rl: dict[tuple[str, int, int], float] = {}, n: int = 500,
             id_by_step: dict[int, float] | None = None, id_rl: dict[tuple[str, int, int], float] = {},
             independent: bool = False) -> dict:
    """Episode results as the evaluation writes them: SFT steps (ID = OOD + 5 points unless given) and RL
    models (OOD; ID where id_rl gives it). A model at accuracy a solves the first a*n hands, or, when
    `independent`, a*n hands drawn at random for each model (seeded)."""
    draw = random.Random(0)

    def rows(rule: str, acc: float) -> list[dict]:
        k = round(acc * n)
        solved = set(draw.sample(range(n), k)) if independent else set(range(k))
        return [{"episode": f"{rule}-{i:04d}", "rule": rule, "correct": i in solved, "first_correct": i in solved,
                 "format_error": False, "value_mapping": True, "tries": 1} for i in range(n)]

    out = {}
    for step, acc in ood_by_step.items():
        out[f"sft-{step}"] = rows("ood", acc) + rows("id", acc + 0.05 if id_by_step is None else id_by_step[step])
    for (algo, step, seed), acc in rl.items():
        key = (algo, step, seed)
        out[f"rl-{algo}-{step}-s{seed}"] = rows("ood", acc) + (rows("id", id_rl[key]) if key in id_rl else [])
    return out


def accuracy_rows(*args, **kwargs) -> pl.DataFrame:
    """An accuracy table as the workflow writes it, of `episodes(...)`."""
    return tables.accuracy_table(episodes(*args, **kwargs))


def hand_rows(*args, **kwargs) -> pl.DataFrame:
    """The hands table of the same `episodes(...)`."""
    return tables.hands_table(episodes(*args, **kwargs))


def forgetting(ood: dict[int, float], losses: pl.DataFrame, chosen_b: dict | None = None, **kwargs) -> list[dict]:
    return findings.sft_forgetting(accuracy_rows(ood, **kwargs), losses, hand_rows(ood, **kwargs), chosen_b)


def test_forgetting_is_found_only_when_the_peak_clearly_beats_the_end():
    losses = pl.DataFrame({"step": [0, 100, 200, 300], "train_loss": [2.0, 1.0, 0.5, 0.2], "ood_loss": [2.0, 0.9, 1.0, 1.5]})
    rising = {0: 0.05, 100: 0.2, 200: 0.3, 300: 0.4}
    peaked = forgetting({0: 0.03, 100: 0.15, 200: 0.10, 300: 0.04}, losses, id_by_step=rising)
    assert peaked[0]["reproduced"] == "yes" and peaked[0]["value"] == pytest.approx(11.0)
    assert "best at step 100 of 300" in peaked[0]["note"]
    # The same OOD curve while ID stays where the base model was: not the papers' forgetting.
    still = forgetting({0: 0.03, 100: 0.15, 200: 0.10, 300: 0.04}, losses)
    assert still[0]["reproduced"] == "no" and "ID 8.0% at the base, 9.0% at the end" in still[0]["note"]
    assert peaked[2]["reproduced"] == "no"  # the lowest OOD loss is at the best-OOD step here
    flat = forgetting({0: 0.05, 100: 0.06, 200: 0.055, 300: 0.05}, losses)
    # A one-point bump: no best checkpoint.
    assert flat[0]["reproduced"] == flat[2]["reproduced"] == "undefined"
    assert flat[0]["note"].startswith("undefined: OOD accuracy is flat")
    early = losses.with_columns(ood_loss=pl.Series([2.0, 1.0, 0.9, 1.5]))  # the loss picks step 200
    picked = forgetting({0: 0.03, 100: 0.15, 200: 0.14, 300: 0.04}, early)
    assert picked[2]["reproduced"] == "undefined" and "within the best one's interval" in picked[2]["note"]
    missed = forgetting({0: 0.03, 100: 0.15, 200: 0.05, 300: 0.04}, early)
    assert missed[2]["reproduced"] == "yes" and missed[2]["value"] == 100


def test_a_rise_above_the_base_and_the_decline_are_decided_apart():
    losses = pl.DataFrame({"step": [0, 100, 200], "train_loss": [2.0, 1.0, 0.5], "ood_loss": [2.0, 0.9, 1.0]})
    rising = {0: 0.05, 100: 0.3, 200: 0.4}
    # Monotone forgetting: OOD never above the base. It declines (yes), it never rose (no).
    monotone = forgetting({0: 0.20, 100: 0.19, 200: 0.04}, losses, id_by_step=rising)
    assert [r["claim"].split(" ")[2] for r in monotone[:2]] == ["declines", "raises"]
    assert monotone[0]["reproduced"] == "yes" and monotone[1]["reproduced"] == "no"
    assert monotone[1]["value"] == pytest.approx(-1.0)
    assert "the best checkpoint is chosen on the same hands" in monotone[1]["note"]
    # With B chosen on the selection hands (step 200 here), that checkpoint is the one measured.
    chosen = forgetting({0: 0.03, 100: 0.15, 200: 0.10, 300: 0.02}, losses.with_columns(step=pl.Series([0, 100, 300])),
                        chosen_b={None: 200}, id_by_step={**rising, 300: 0.5})
    assert chosen[1]["value"] == pytest.approx(7.0) and "B chosen on the selection hands" in chosen[1]["note"]
    assert "best at step 200 of 300" in chosen[0]["note"]
    # A rise of 12 points over the base on 500 paired hands: beyond its interval.
    peaked = forgetting({0: 0.03, 100: 0.15, 200: 0.04}, losses, id_by_step=rising)
    assert peaked[1]["reproduced"] == "yes" and peaked[1]["value"] == pytest.approx(12.0)
    low = float(re.search(r"\[(.+?),", peaked[1]["uncertainty"]).group(1))
    assert 0 < low < 12.0
    # One point above the base, on hands each model solves at random: within the noise, undecided.
    bump = forgetting({0: 0.10, 100: 0.11, 200: 0.01}, losses, id_by_step=rising, independent=True)
    assert bump[1]["reproduced"] == "undefined" and "-" in bump[1]["uncertainty"].split(",")[0]


def test_findings_on_a_study_where_every_accuracy_is_zero_are_undefined_not_reproduced():
    losses = pl.DataFrame({"step": [0, 2, 4, 6], "train_loss": [6.0, 5.0, 4.0, 3.0], "ood_loss": [6.0, 5.5, 5.2, 5.4]})
    rows = forgetting({0: 0.0, 2: 0.0, 4: 0.0, 6: 0.0}, losses, n=24)
    # No numbers-only probe; every first answer reads the values by the rule at both ends.
    assert [r["reproduced"] for r in rows] == ["undefined"] * 3 + ["not tested", "undefined"]
    assert all(r["note"].count("undefined") == 1 for r in rows[:3])


RL_ARMS = {("grpo", 200, 1): 0.09, ("grpo", 200, 2): 0.08, ("sft_continue", 200, 1): 0.04,
           ("sft_continue", 200, 2): 0.05, ("grpo", 100, 1): 0.10, ("grpo", 100, 2): 0.12,
           ("sft_continue", 100, 1): 0.11, ("sft_continue", 100, 2): 0.09}


def recovery_of(ood: dict[int, float], rl: dict, n: int = 500, chosen_b: dict | None = None,
                **kwargs) -> pl.DataFrame:
    return tables.rl_recovery_table(accuracy_rows(ood, rl, n=n, **kwargs), hand_rows(ood, rl, n=n, **kwargs),
                                    chosen_b)


def test_rl_healing_is_decided_only_where_sft_lost_something():
    # B = step 100 (10%, chosen on the selection hands) above the base (2%); step 200 lost 7 points of it;
    # RL from 200 gets 5.5 back.
    recovery = recovery_of({0: 0.02, 100: 0.10, 200: 0.03}, RL_ARMS, chosen_b={None: 100})
    row = recovery.filter(pl.col("algo") == "grpo", pl.col("sft_step") == 200, pl.col("rule") == "ood").row(0, named=True)
    assert row["acc_after"] == pytest.approx(0.085) and row["n_seeds"] == 2 and row["ref"] == "sft-100"
    assert row["drop"] == pytest.approx(0.07) and row["drop_beyond_noise"]
    assert row["recovered_share"] == pytest.approx(0.055 / 0.07)
    assert row["heal_low"] > 0 and row["recovered_share_low"] < row["recovered_share"] < row["recovered_share_high"]
    healed = {r["claim"]: r for r in findings.rl_healing(recovery)}
    up = healed["RL (grpo) from SFT step 200 heals OOD forgetting: recovers at least half of what SFT lost"]
    assert up["reproduced"] == "yes" and up["value"] == pytest.approx(0.055 / 0.07)
    assert "Holm-adjusted p" in up["uncertainty"]
    # From B itself nothing was lost: no recovered share, and no verdict.
    at_b = healed["RL (grpo) from SFT step 100 heals OOD forgetting: recovers at least half of what SFT lost"]
    assert at_b["reproduced"] == "undefined" and at_b["value"] is None
    assert at_b["note"].startswith("undefined: nothing was lost by this start beyond noise")
    less = healed["RL (grpo) from SFT step 200 forgets less OOD than continued SFT"]
    assert less["reproduced"] == "yes" and less["value"] == pytest.approx(4.0)
    low, high = map(float, re.search(r"\[(.+?), (.+?)\]", less["uncertainty"]).groups())
    assert 0 < low < 4.0 < high
    tied = healed["RL (grpo) from SFT step 100 forgets less OOD than continued SFT"]
    assert tied["reproduced"] == "undefined"  # the interval holds 0: the run cannot tell
    zero = recovery_of({0: 0.0, 6: 0.0}, {("grpo", 6, 1): 0.0, ("sft_continue", 6, 1): 0.0}, n=24)
    assert [r["reproduced"] for r in findings.rl_healing(zero)] == ["undefined", "undefined"]
    window = figures.recovery_window(recovery)
    assert window.height == 1 and window["start"][0] == 150.0 and window["end"][0] == 200.0
    # Without a B chosen on other hands the reference is the base alone (2%): nothing lost at step 200.
    alone = recovery_of({0: 0.02, 100: 0.10, 200: 0.03}, RL_ARMS).filter(pl.col("rule") == "ood")
    assert set(alone["ref"]) == {"sft-0"} and not alone["drop_beyond_noise"].any()


def test_the_intervals_count_the_spread_between_rl_seeds():
    # The same mean gain of 4.8 points over the control: with seeds that agree it is decided; with
    # seeds 16 points apart (one degree of freedom each) it is not.
    ood = {0: 0.16, 10: 0.15, 20: 0.10}
    agree = {("ppo", 20, 1): 0.148, ("ppo", 20, 2): 0.148, ("sft_continue", 20, 1): 0.10, ("sft_continue", 20, 2): 0.10}
    spread = {("ppo", 20, 1): 0.068, ("ppo", 20, 2): 0.228, ("sft_continue", 20, 1): 0.10,
              ("sft_continue", 20, 2): 0.10}
    for arms, verdict in ((agree, "yes"), (spread, "undefined")):
        rows = {r["claim"]: r for r in findings.rl_healing(recovery_of(ood, arms))}
        row = rows["RL (ppo) from SFT step 20 forgets less OOD than continued SFT"]
        assert row["value"] == pytest.approx(4.8) and row["reproduced"] == verdict, row


def test_no_finding_reads_yes_where_its_interval_holds_zero_or_its_denominator_is_noise():
    import numpy as np

    rng = np.random.default_rng(0)
    decided = Counter()
    for _ in range(40):
        ood = {0: rng.uniform(0, 0.2), 10: rng.uniform(0, 0.3), 20: rng.uniform(0, 0.2), 30: rng.uniform(0, 0.2)}
        means = {(algo, step): rng.uniform(0.02, 0.3) for algo in ("ppo", "sft_continue") for step in (10, 30)}
        arms = {(*arm, s): mean + rng.uniform(-0.02, 0.02) for arm, mean in means.items() for s in (1, 2)}
        recovery = recovery_of(ood, arms, n=200, independent=True, chosen_b={None: 10})
        stats = {(r["algo"], r["sft_step"]): r for r in recovery.filter(pl.col("rule") == "ood").iter_rows(named=True)}
        for row in findings.rl_healing(recovery):
            decided[("heals" in row["claim"], row["reproduced"])] += 1
            if row["reproduced"] == "no":  # decided against the claim: beyond noise the other way
                step = int(re.search(r"step (\d+)", row["claim"]).group(1))
                r = stats[("ppo", step)]
                assert (r["recovered_share_high"] < 0.5 if "heals" in row["claim"] else r["vs_control_high"] < 0)
            if row["reproduced"] != "yes":
                continue
            step = int(re.search(r"step (\d+)", row["claim"]).group(1))
            r = stats[("ppo", step)]
            if "heals" in row["claim"]:
                assert r["drop_beyond_noise"] and r["drop_low"] > 0 and r["heal_low"] > 0, (row, r)
                assert r["recovered_share"] >= 0.5
            else:
                assert r["vs_control_low"] > 0, (row, r)
    # Every verdict occurs among the draws, so the checks above were exercised.
    assert all(decided[(heals, verdict)] for heals in (True, False) for verdict in ("yes", "undefined")), decided
    assert decided[(True, "no")]


def test_rank_correlation():
    assert findings.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert findings.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_a_rank_correlation_that_cannot_be_computed_says_so(tmp_path):
    """Every SFT checkpoint at 0% OOD (as in a small study): no correlation, and the figure and the
    findings table say why instead of printing nan."""
    flat = pl.DataFrame({"sft_seed": [None] * 3, "sft_step": [2, 4, 6], "rotation": [0.8, 2.2, 3.8],
                         "ood_accuracy": [0.0, 0.0, 0.0]}, schema_overrides={"sft_seed": pl.Int64})
    assert findings.rotation_correlation(flat) == (None, "undefined: OOD accuracy is 0.0% at every SFT step")
    row, = findings.rotation_predicts_ood(flat)
    assert row["value"] is None and row["reproduced"] == "no claim"
    assert row["note"].startswith("dropped: in one SFT run") and "(undefined: OOD" in row["note"]
    chart = figures.rotation_vs_ood(flat, *findings.rotation_correlation(flat))
    figures.save(chart, tmp_path / "f.svg", tmp_path / "f.html")
    svg = (tmp_path / "f.svg").read_text()
    assert "Spearman undefined: OOD accuracy is 0.0% at every SFT step" in svg and "nan" not in svg.lower()
    rising = flat.with_columns(ood_accuracy=pl.Series([0.1, 0.05, 0.02]))
    assert findings.rotation_correlation(rising) == (pytest.approx(-1.0), "")
    chart = figures.rotation_vs_ood(rising, *findings.rotation_correlation(rising))
    figures.save(chart, tmp_path / "g.svg", tmp_path / "g.html")
    assert "Spearman -1.00" in (tmp_path / "g.svg").read_text()


def test_rotation_is_correlated_with_ood_only_with_the_step_held_fixed():
    # One SFT run: rotation rises with the step and OOD falls, a perfect rank correlation that is the
    # step's. The claim is dropped, saying why.
    one = pl.DataFrame({"sft_seed": [None] * 4, "sft_step": [2, 4, 6, 8], "rotation": [1.0, 2.0, 3.0, 4.0],
                        "ood_accuracy": [0.2, 0.15, 0.1, 0.05]}, schema_overrides={"sft_seed": pl.Int64})
    row, = findings.rotation_predicts_ood(one)
    assert row["value"] is None and "follows the step (Spearman with the step +1.00)" in row["note"]
    assert "(-1.00)" in row["note"]
    # Three seeds: at every step the seed that rotated most has the least OOD, whatever the step's trend.
    steps = [2, 4, 6, 8]
    rows = [{"sft_seed": seed, "sft_step": step, "rotation": step + 0.1 * seed, "ood_accuracy": 0.3 - 0.01 * step
             - 0.001 * seed} for seed in (0, 1, 2) for step in steps]
    seeded = pl.DataFrame(rows)
    row, = findings.rotation_predicts_ood(seeded)
    assert row["value"] < -0.9 and "3 SFT seeds at 4 steps" in row["uncertainty"]
    # The same seeds with OOD unrelated to the rotation within a step: no correlation left.
    shuffled = seeded.with_columns(ood_accuracy=pl.Series([0.3 - 0.01 * r["sft_step"] + 0.001 * ((r["sft_seed"] + r["sft_step"] // 2) % 3)
                                                           for r in rows]))
    row, = findings.rotation_predicts_ood(shuffled)
    assert abs(row["value"]) < 0.5


def axis_labels(svg: str) -> list[str]:
    import xml.etree.ElementTree as ET

    groups = ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g")
    return [t.text for g in groups if g.get("class", "").startswith("mark-text role-axis-label") for t in g]


def test_step_axes_tick_whole_steps_only(tmp_path):
    acc = accuracy_rows({0: 0.02, 2: 0.10, 4: 0.06, 6: 0.03},
                        {("grpo", 6, 1): 0.09, ("sft_continue", 6, 1): 0.04})
    losses = pl.DataFrame({"step": [0, 2, 4, 6], "train_loss": [2.0, 1.0, 0.5, 0.4],
                           "ood_loss": [2.0, 0.9, 1.0, 1.1]})
    recovery = recovery_of({0: 0.02, 2: 0.10, 4: 0.06, 6: 0.03}, {("grpo", 6, 1): 0.09, ("sft_continue", 6, 1): 0.04})
    for name, chart in (("curve", figures.sft_accuracy(acc, losses, recovery)),
                        ("errors", figures.format_errors(acc))):
        figures.save(chart, tmp_path / f"{name}.svg", tmp_path / f"{name}.html")
        labels = axis_labels((tmp_path / f"{name}.svg").read_text())
        steps = [label for label in labels if label in {str(i) for i in range(7)}]
        assert set(steps) == {str(i) for i in range(7)}, (name, labels)  # every step, each a whole number
        assert not [label for label in labels if re.fullmatch(r"\d+\.5", label)], (name, labels)


def test_the_best_ood_mark_is_left_out_where_the_curve_is_flat():
    losses = pl.DataFrame({"step": [0, 2, 4], "train_loss": [2.0, 1.0, 0.5], "ood_loss": [2.0, 0.9, 1.0]})
    flat = figures.best_steps(accuracy_rows({0: 0.0, 2: 0.0, 4: 0.0}, n=24), losses)
    assert flat["mark"].to_list() == ["lowest OOD loss", "lowest train loss"]
    peaked = figures.best_steps(accuracy_rows({0: 0.02, 2: 0.20, 4: 0.03}), losses)
    assert peaked.select("mark", "step").rows() == [("best OOD accuracy", 2), ("lowest OOD loss", 2),
                                                    ("lowest train loss", 4)]


def test_recovery_window_is_found_per_sft_seed():
    """Two SFT seeds starting RL from the same steps: each seed's RL is compared with its own control."""
    rows = []
    for seed, low in {0: 0.03, 1: -0.12}.items():  # the low end of RL minus its control at step 200
        rows.append({"sft_seed": seed, "algo": "grpo", "sft_step": 200, "rule": "ood", "vs_control_low": low})
        rows.append({"sft_seed": seed, "algo": "grpo", "sft_step": 100, "rule": "ood", "vs_control_low": -0.01})
        rows += [{"sft_seed": seed, "algo": "sft_continue", "sft_step": step, "rule": "ood", "vs_control_low": None}
                 for step in (100, 200)]
    window = figures.recovery_window(pl.DataFrame(rows))
    assert window.rows() == [(150.0, 200.0)]  # seed 0 at step 200 only; seed 1's RL is below its control


def test_the_findings_table_tells_undefined_from_no_claim(tmp_path):
    rows = [findings._row("1", "a claim", "s", 1.0, "", "", "yes", ""),
            findings._row("3+", "beyond the papers", "s", None, "", "", "no claim", ""),
            findings._row("4", "an edit", "s", None, "undefined: B and T overlap", "", "undefined", ""),
            findings._row("2", "RL from step 6", "s", None, "", "", "not tested", "")]
    table = findings.table(rows)
    assert table.schema["reproduced"] == pl.String and table.schema["value"] == pl.Float64
    table.write_csv(tmp_path / "findings.csv")
    back = pl.read_csv(tmp_path / "findings.csv")
    assert back["reproduced"].to_list() == ["yes", "no claim", "undefined", "not tested"]
    assert findings.VERDICTS == ("yes", "no", "undefined", "no claim", "not tested")
    with pytest.raises(ValueError, match=r"finding 2 \(RL\): reproduced is None, not one of"):
        findings._row("2", "RL", "s", None, "", "", None, "")


def test_every_figure_of_the_table_has_its_builder_caption_and_preparation():
    builders = [fig.builder for fig in FIGURES]
    assert len(set(builders)) == len(builders) and len({fig.name for fig in FIGURES}) == len(FIGURES)
    script = ast.parse((ROOT / "scripts" / "figure.py").read_text())
    prepare = next(node.value for node in script.body if isinstance(node, ast.Assign)
                   and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["PREPARE"])
    preparations = {key.value for key in prepare.keys}
    for fig in FIGURES:
        builder = getattr(figures, fig.builder, None)
        assert callable(builder), f"{fig.name}: rlheals.figures has no {fig.builder}"
        assert (ROOT / "rules" / "captions" / fig.caption).is_file(), f"{fig.name}: no caption {fig.caption}"
        assert fig.inputs and fig.category
        if fig.prepare is None:  # the builder takes the input tables, then the params
            assert len(inspect.signature(builder).parameters) == len(fig.inputs) + len(fig.params), fig.name
        else:
            assert fig.prepare in preparations, f"{fig.name}: figure.py has no preparation {fig.prepare}"
        assert figure(fig.name) is figure(f"figure_{fig.name}") is fig
    with pytest.raises(KeyError, match="no figure called 'nope'"):
        figure("nope")


def test_a_figure_entry_gives_its_rule_the_paths_and_the_file_lists_it_names():
    by_rank = figure("spectrum_by_rank")
    pairs = ["results/spectrum/base__sft-6.parquet", "results/spectrum/sft-6__rl-grpo-6.parquet"]
    assert by_rank.input_files({SPECTRUM_PAIR_FILES: pairs}) == {"pairs": pairs}
    with pytest.raises(KeyError, match="spectrum_pair_files"):
        by_rank.input_files({})
    logs = ["results/tables/seed0-sft_log.parquet", "results/tables/seed1-sft_log.parquet"]
    files = figure("sft_accuracy").input_files({SFT_LOG_FILES: logs})
    assert files["losses"] == logs and files["accuracy"] == "results/tables/accuracy.parquet"
    assert (by_rank.svg, by_rank.html, by_rank.log) == ("results/figures/spectrum_by_rank.svg",
                                                       "results/figures/spectrum_by_rank.html",
                                                       "logs/figures/spectrum_by_rank.log")


def test_the_table_of_figures_imports_nothing_heavy():
    """The Snakefile imports it at parse time, and every cluster job re-parses the Snakefile."""
    heavy = ("polars", "altair", "torch", "numpy", "pandas")
    code = f"import sys, rlheals.report; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_figures_render_offline_to_svg(tmp_path):
    acc = accuracy_rows({0: 0.02, 100: 0.10, 200: 0.03}, {("grpo", 200, 1): 0.09, ("sft_continue", 200, 1): 0.04})
    losses = pl.DataFrame({"step": [0, 100, 200], "train_loss": [2.0, 1.0, 0.5], "ood_loss": [2.0, 0.9, 1.0]})
    chart = figures.sft_accuracy(acc, losses, recovery_of({0: 0.02, 100: 0.10, 200: 0.03},
                                                          {("grpo", 200, 1): 0.09, ("sft_continue", 200, 1): 0.04}))
    figures.save(chart, tmp_path / "f.svg", tmp_path / "f.html")
    svg, html = (tmp_path / "f.svg").read_text(), (tmp_path / "f.html").read_text()
    assert svg.startswith("<svg") and "Accuracy vs SFT step" in svg and svg.count("<path") > 10
    assert "cdn.jsdelivr" not in html and "https://" not in html.split("<script")[0]  # vega inlined, nothing fetched


def restoration_rows(*specs, n: int = 500, sft_seed: int | None = None) -> pl.DataFrame:
    """A restoration table written by tables.restoration_table, from (edit, kind, fields) specs whose fields
    give the edit's share (top, tail or layers), its B and T and the three OOD accuracies (each model
    solves the first accuracy * n hands)."""
    edits, scored = {}, {}
    for edit, kind, f in specs:
        base, target = f.get("base", "sft-200"), f.get("target", "sft-600")
        edit_id = f"{'' if sft_seed is None else f'seed{sft_seed}-'}edit-{edit}"
        edits[edit_id] = {"kind": kind, "base": base, "target": target,
                          **{k: f[k] for k in ("top", "tail", "layers") if k in f}}
        scored |= {edit_id: f["acc"], base: f.get("acc_base", 0.034), target: f.get("acc_target", 0.034)}
    results = {m: [{"episode": f"ood-{i:04d}", "rule": "ood", "correct": i < round(acc * n),
                    "value_mapping": True} for i in range(n)]
               for m, acc in scored.items()}
    return tables.restoration_table(edits, results)


def test_restoration_figure_draws_every_edit_with_its_intervals(tmp_path):
    """Every edit's OOD accuracy with its 95% Wilson interval between B and T (each with its band), and
    every edit's recovery fraction with its 95% interval; where B and T are not apart beyond their
    intervals the fraction is undefined and the figure says so, with the edit's gain over T."""
    table = restoration_rows(
        ("dirs_top20", "directions", {"top": 0.2, "acc": 0.04}),
        ("dirs_top50", "directions", {"top": 0.5, "acc": 0.03}),
        ("vals_top20", "vectors", {"top": 0.2, "acc": 0.04}),
        ("dirs_tail20", "directions", {"tail": 0.2, "acc": 0.04}),
        ("layers25", "layers", {"layers": 0.25, "acc": 0.04}),
        ("layers50", "layers", {"layers": 0.5, "base": "sft-100", "acc_base": 0.15, "acc": 0.10}),
        ("reverse_dirs100", "directions",
         {"top": 1.0, "base": "sft-600", "target": "rl-grpo-600-s1", "acc": 0.02}))
    chart = figures.restoration(table)
    figures.save(chart, tmp_path / "r.svg", tmp_path / "r.html")
    svg = (tmp_path / "r.svg").read_text()
    # Accuracy panels: the top-k edits (3) and the layer resets (2); the recovery panel: layers50 alone is
    # defined (its B, 15%, is apart from T, 3.4%).
    assert marks(svg, "symbol") == 5 + 1
    # Rules: every B and T (3) in both accuracy panels, a Wilson interval per plotted edit (5), the
    # recovery panel's marks at 0 and 1 and layers50's interval.
    assert marks(svg, "rule") == 2 * 3 + 5 + 2 + 1
    assert marks(svg, "rect") == 2 * 3  # the 95% bands of B and T
    assert marks(svg, "text") == 6 and "undefined: edit -0.4 points vs T" in svg  # dirs_top50: 3.0% vs 3.4%
    assert "B (sft-200, sft-100)" in svg and "T (sft-600)" in svg and "OOD accuracy (95% interval)" in svg


def marks(svg: str, kind: str) -> int:
    """How many items the chart's marks of one kind (rule, symbol, rect, text, ...) draw in an SVG."""
    import xml.etree.ElementTree as ET

    groups = ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g")
    return sum(len(g) for g in groups if g.get("class", "").startswith(f"mark-{kind} role-mark "))


def test_restoration_figure_labels_each_sft_seeds_edits_apart(tmp_path):
    edit = lambda s: {"top": 0.2, "acc": 0.09, "acc_base": 0.15, "acc_target": 0.02,  # noqa: E731
                      "base": f"seed{s}-sft-10", "target": f"seed{s}-sft-800"}
    table = pl.concat([restoration_rows(("dirs_top20", "directions", edit(s)), sft_seed=s) for s in (0, 1)])
    figures.save(figures.restoration(table), tmp_path / "r.svg", tmp_path / "r.html")
    svg = (tmp_path / "r.svg").read_text()
    assert "dirs_top20 (SFT seed 0)" in svg and "dirs_top20 (SFT seed 1)" in svg
    assert marks(svg, "symbol") == 2 + 2 and "B (seed0-sft-10, seed1-sft-10)" in svg


def report_results(report: Path) -> dict[str, bytes]:
    """The files a snakemake HTML report holds: path -> content (decoded from the page's `results`)."""
    import base64
    import json

    html = report.read_text()
    start = html.index("var results = {") + len("var results = ")
    results, _ = json.JSONDecoder().raw_decode(html, start)
    return {path: base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
            for path, entry in results.items()}


def test_the_report_made_as_the_readme_says_holds_every_figure_of_the_study_that_was_run(finished_study):
    """After the smoke study (run with --configfile config/smoke.yaml), `python3 tasks.py report` makes its
    report with the config it ran with; `snakemake --report` with another config (here the default, no
    --configfile) stops before writing anything and says what to pass."""
    study = finished_study
    shutil.copy(ROOT / "tasks.py", study.path)
    env = {**os.environ, "RLHEALS_VENV": str(Path(sys.executable).parent.parent)}
    made = subprocess.run([sys.executable, "tasks.py", "report"], cwd=study.path, env=env,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
    assert "--configfile results/study_config.json --report report.html" in made.stdout
    files = report_results(study.path / "report.html")
    for fig in FIGURES:
        assert fig.svg in files, f"{fig.name} is not in the report: {sorted(files)}"
        assert files[fig.svg].startswith(b"<svg") and fig.svg.encode() not in files[fig.svg]
    assert "results/tables/findings.csv" in files and b"reproduced" in files["results/tables/findings.csv"]
    snakemake = Path(sys.executable).parent / "snakemake"
    plain = subprocess.run([str(snakemake), "--report", "other.html"], cwd=study.path, env=env,
                           capture_output=True, text=True)
    assert plain.returncode != 0 and not (study.path / "other.html").exists()
    said = plain.stdout + plain.stderr
    assert "was run with another config" in said
    assert re.search(r"data\.splits\.sft_train\.size: \d+ here, 200 in the study", said), said[-2000:]
    assert "snakemake --configfile results/study_config.json --report report.html" in said


def test_the_study_config_record_names_what_differs(tmp_path):
    from rlheals.report import config_differences, record_config, report_config_problem

    record = tmp_path / "study_config.json"
    assert report_config_problem('{"a": 1}', record) is None  # no study recorded: nothing to check
    record_config('{"a": 1, "b": {"c": [1, 2], "d": "x"}}', record)
    assert report_config_problem('{"a": 1, "b": {"c": [1, 2], "d": "x"}}', record) is None
    problem = report_config_problem('{"a": 1, "b": {"c": [1, 3]}, "e": true}', record)
    assert problem.startswith("the study in results/ was run with another config than this report's "
                              "(b.c: [1, 3] here, [1, 2] in the study; b.d: null here, \"x\" in the study; "
                              "e: true here, null")
    assert f"snakemake --configfile {record} --report report.html" in problem
    many = config_differences({f"k{i}": i for i in range(9)}, {})
    assert len(many) == 9 and many[0] == "k0: null here, 0 in the study"


CHROMIUM = shutil.which("chromium")
# Every request the page could make fails: a figure that renders here needs no network.
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run", "--disable-extensions", "--proxy-server=127.0.0.1:9",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--window-size=1200,800"]


def screenshot(page: Path, out: Path) -> "Image":
    from PIL import Image

    subprocess.run([CHROMIUM, *OFFLINE, f"--screenshot={out}", page.as_uri()], capture_output=True, timeout=120, check=True)
    return Image.open(out).convert("L")


def drawn_share(image) -> float:
    """Share of pixels that are not background white."""
    histogram = image.histogram()
    return 1 - sum(histogram[245:]) / sum(histogram)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)")
def test_report_and_every_figure_render_offline_in_chromium(finished_study, tmp_path):
    workflow = finished_study
    workflow.run()
    workflow.run("--report", "report.html")
    figures_dir = workflow.path / "results" / "figures"
    pages = sorted(figures_dir.glob("*.html"))
    assert [page.stem for page in pages] == sorted(fig.name for fig in FIGURES)
    for page in pages:
        html = page.read_text()
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", html), page.name  # nothing fetched
        share = drawn_share(screenshot(page, tmp_path / f"{page.stem}.png"))
        assert share > 0.003, f"{page.name} renders blank offline ({share:.4f} of the pixels drawn)"
    assert drawn_share(screenshot(workflow.path / "report.html", tmp_path / "report.png")) > 0.003


def test_restoration_findings_give_every_edit_an_interval_or_say_it_is_undefined():
    def table(acc_base, edit="dirs_top20", top=0.2):
        episodes = {}
        for model, acc in (("sft-200", acc_base), ("sft-600", 0.03), (f"edit-{edit}", 0.05)):
            k = round(acc * 500)
            solved = set(random.Random(model).sample(range(500), k))  # each model its own hands
            episodes[model] = [{"episode": f"ood-{i:04d}", "rule": "ood", "correct": i in solved, "value_mapping": True}
                               for i in range(500)]
        spec = {"kind": "directions", "base": "sft-200", "target": "sft-600", "top": top}
        return tables.restoration_table({f"edit-{edit}": spec}, episodes)

    tie, = findings.restoration_findings(table(0.03))
    assert tie["value"] is None and tie["reproduced"] == "undefined"
    assert tie["uncertainty"].startswith("undefined")
    gap, = findings.restoration_findings(table(0.07))
    assert gap["value"] == pytest.approx(0.5) and gap["uncertainty"].startswith("95% interval [")
    low, high = map(float, re.search(r"\[(.+), (.+)\]", gap["uncertainty"]).groups())
    assert low < 0.5 < high and gap["reproduced"] == ("yes" if low > 0 else "undefined")
    close, = findings.restoration_findings(table(0.05))  # B 5% and T 3%: the 95% intervals overlap
    assert close["value"] is None and close["reproduced"] == "undefined"
    assert close["uncertainty"].startswith("undefined: B - T is 2.0 points [") and "not beyond noise" in close["uncertainty"]
    # B 30%, T 3%, the edit 5%: a recovery of 0.07 whose whole interval is below half: decided, no.
    far, = findings.restoration_findings(table(0.30))
    assert far["reproduced"] == "no" and far["value"] == pytest.approx(0.02 / 0.27)
    other, = findings.restoration_findings(table(0.12, edit="dirs_tail", top=0.0))  # not one of the papers' claims
    assert other["paper"] == "no claim in the papers" and other["reproduced"] == "no claim"
    assert other["value"] is not None


def test_the_results_page_is_written_from_the_tables(finished_study, tmp_path):
    """docs/results/record.py turns a finished study's tables into a page: the SFT curve, RL against the
    control, the restoration edits and every finding, with the recorded wall time."""
    results = finished_study.path / "results"
    (results / "run_time.json").write_text('{"seconds": 754, "cores": 2, "arguments": [], "finished": "today"}')
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "results" / "record.py"), "smoke-test", "--results",
                          str(results), "--config", "config/smoke.yaml", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    text = (tmp_path / "smoke-test.md").read_text()
    assert "wrote" in out.stdout and "12.6 minutes on 2 cores" in text
    findings = pl.read_parquet(results / "tables" / "findings.parquet")
    assert text.count("\n| ") >= findings.height + 4 + 6  # a row per finding, per SFT step, per RL run
    for claim in findings["claim"]:
        assert claim in text
    for heading in ("## SFT: accuracy", "## RL and the continued-SFT control", "## Restoration edits", "## Findings"):
        assert heading in text


def probe_hands(solved: dict[str, dict[str, set[int]]], read: dict[str, set[int]],
                n: int = 500) -> pl.DataFrame:
    """A hands table from the hands each model solves, by rule ("ood", and "numbers": the probe), and the
    OOD hands whose values its first answer gives by the written rule (`read`)."""
    return tables.hands_table({model: [{"episode": f"ood-{i:04d}", "rule": rule, "correct": i in hands,
                                        "value_mapping": i in read[model] if rule == "ood" else True}
                                       for rule, hands in rules.items() for i in range(n)]
                               for model, rules in solved.items()})


def test_the_numbers_probe_tells_losing_the_rule_from_losing_the_arithmetic():
    draw = random.Random(3)
    known = set(draw.sample(range(500), 450))  # numbers the probe solves
    solved_b = set(draw.sample(sorted(known), 100))
    everyone = set(range(500))
    # SFT keeps the arithmetic and loses the rule: OOD falls 20 -> 2% and the values read by the written
    # rule fall 100 -> 40%, while the probe holds.
    rule_lost = probe_hands({"sft-10": {"numbers": known, "ood": solved_b},
                             "sft-800": {"numbers": known, "ood": set(sorted(solved_b)[:10])}},
                            read={"sft-10": everyone, "sft-800": set(range(200))})
    arithmetic, rule = findings.what_the_decline_is(rule_lost, "sft-10", "sft-800")
    assert "arithmetic" in arithmetic["claim"] and "written rule" in rule["claim"]
    assert rule["reproduced"] == "yes" and rule["value"] == pytest.approx(60.0)
    assert "value mapping 100.0% at sft-10, 40.0% at sft-800" in rule["note"]
    assert arithmetic["reproduced"] == "undefined" and arithmetic["value"] == 0.0
    # SFT loses the arithmetic: the probe falls 90 -> 30% and OOD keeps only the hands whose numbers it
    # still solves, while every first answer still reads the cards by the written rule.
    kept = set(sorted(known)[:150])
    lost = probe_hands({"sft-10": {"numbers": known, "ood": solved_b},
                        "sft-800": {"numbers": kept, "ood": solved_b & kept}},
                       read={"sft-10": everyone, "sft-800": everyone})
    arithmetic, rule = findings.what_the_decline_is(lost, "sft-10", "sft-800")
    assert arithmetic["reproduced"] == "yes" and arithmetic["value"] == pytest.approx(60.0)
    assert rule["reproduced"] == "undefined" and rule["value"] == 0.0
    # A probe that rises from B (noise drawn apart for each model) is decided against the claim.
    rises = probe_hands({"sft-10": {"numbers": set(draw.sample(range(500), 100)), "ood": solved_b},
                         "sft-800": {"numbers": set(draw.sample(range(500), 300)), "ood": set()}},
                        read={"sft-10": everyone, "sft-800": everyone})
    assert findings.what_the_decline_is(rises, "sft-10", "sft-800")[0]["reproduced"] == "no"
    # Without the probe on both checkpoints the arithmetic is not tested; the rule still is.
    unprobed = probe_hands({"sft-10": {"ood": solved_b}, "sft-800": {"ood": set()}},
                           read={"sft-10": everyone, "sft-800": set()})
    verdicts = [r["reproduced"] for r in findings.what_the_decline_is(unprobed, "sft-10", "sft-800")]
    assert verdicts == ["not tested", "yes"]

import ast
import inspect
import math
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


def accuracy_rows(ood_by_step: dict[int, float], rl: dict[tuple[str, int, int], float] = {}, n: int = 500,
                  id_by_step: dict[int, float] | None = None) -> pl.DataFrame:
    """An accuracy table as the workflow writes it: SFT steps (ID = OOD + 5 points unless given) and RL models."""
    episodes = {}
    for step, acc in ood_by_step.items():
        for rule, a in (("ood", acc), ("id", acc + 0.05 if id_by_step is None else id_by_step[step])):
            k = round(a * n)
            episodes.setdefault(f"sft-{step}", []).extend(
                [{"rule": rule, "correct": i < k, "first_correct": i < k, "format_error": False, "value_mapping": True,
                  "tries": 1} for i in range(n)])
    for (algo, step, seed), acc in rl.items():
        k = round(acc * n)
        episodes[f"rl-{algo}-{step}-s{seed}"] = [{"rule": "ood", "correct": i < k, "first_correct": i < k,
                                                  "format_error": False, "value_mapping": True, "tries": 1} for i in range(n)]
    return tables.accuracy_table(episodes)


def test_forgetting_is_found_only_when_the_peak_clearly_beats_the_end():
    losses = pl.DataFrame({"step": [0, 100, 200, 300], "train_loss": [2.0, 1.0, 0.5, 0.2], "ood_loss": [2.0, 0.9, 1.0, 1.5]})
    rising = {0: 0.05, 100: 0.2, 200: 0.3, 300: 0.4}
    peaked = findings.sft_forgetting(accuracy_rows({0: 0.03, 100: 0.15, 200: 0.10, 300: 0.04}, id_by_step=rising), losses)
    assert peaked[0]["reproduced"] is True and peaked[0]["value"] == pytest.approx(11.0)
    assert "peak at step 100 of 300" in peaked[0]["note"]
    # The same OOD curve while ID stays where the base model was: not the papers' forgetting.
    still = findings.sft_forgetting(accuracy_rows({0: 0.03, 100: 0.15, 200: 0.10, 300: 0.04}), losses)
    assert still[0]["reproduced"] is False and "ID 8.0% at the base, 9.0% at the end" in still[0]["note"]
    assert peaked[1]["reproduced"] is False  # the lowest OOD loss is at the best-OOD step here
    flat = findings.sft_forgetting(accuracy_rows({0: 0.05, 100: 0.06, 200: 0.055, 300: 0.05}), losses)
    assert flat[0]["reproduced"] is None and flat[1]["reproduced"] is None  # a one-point bump: no best checkpoint
    assert flat[0]["note"].startswith("undefined: OOD accuracy is flat")
    early = losses.with_columns(ood_loss=pl.Series([2.0, 1.0, 0.9, 1.5]))  # the loss picks step 200
    picked = findings.sft_forgetting(accuracy_rows({0: 0.03, 100: 0.15, 200: 0.14, 300: 0.04}), early)
    assert picked[1]["reproduced"] is None and "within the best one's interval" in picked[1]["note"]
    missed = findings.sft_forgetting(accuracy_rows({0: 0.03, 100: 0.15, 200: 0.05, 300: 0.04}), early)
    assert missed[1]["reproduced"] is True and missed[1]["value"] == 100


def test_findings_on_a_study_where_every_accuracy_is_zero_are_undefined_not_reproduced():
    losses = pl.DataFrame({"step": [0, 2, 4, 6], "train_loss": [6.0, 5.0, 4.0, 3.0], "ood_loss": [6.0, 5.5, 5.2, 5.4]})
    rows = findings.sft_forgetting(accuracy_rows({0: 0.0, 2: 0.0, 4: 0.0, 6: 0.0}, n=24), losses)
    assert [r["reproduced"] for r in rows] == [None, None]
    assert all(r["note"].count("undefined") == 1 for r in rows)


def test_rl_healing_compares_with_the_control_across_seeds():
    acc = accuracy_rows({0: 0.02, 100: 0.10, 200: 0.03},
                        {("grpo", 200, 1): 0.09, ("grpo", 200, 2): 0.08, ("sft_continue", 200, 1): 0.04, ("sft_continue", 200, 2): 0.05,
                         ("grpo", 100, 1): 0.10, ("grpo", 100, 2): 0.12, ("sft_continue", 100, 1): 0.11, ("sft_continue", 100, 2): 0.09})
    recovery = tables.rl_recovery_table(acc)
    row = recovery.filter(pl.col("algo") == "grpo", pl.col("sft_step") == 200, pl.col("rule") == "ood").row(0, named=True)
    assert row["acc_after"] == pytest.approx(0.085) and row["n_seeds"] == 2
    assert row["recovered_share"] == pytest.approx((0.085 - 0.03) / (0.10 - 0.03))
    # The standard error of a mean over seeds: never below one evaluation's binomial noise.
    assert row["acc_after_se"] == pytest.approx(math.sqrt((0.09 * 0.91 + 0.08 * 0.92) / 2 / 500 / 2))
    healed = {r["claim"]: r for r in findings.rl_healing(recovery)}
    up = healed["RL (grpo) from SFT step 200 restores OOD accuracy beyond the control"]
    assert up["reproduced"] is True and up["value"] == pytest.approx(4.0) and "interval lies above 0" in up["note"]
    low, high = map(float, re.search(r"\[(.+), (.+)\]", up["uncertainty"]).groups())
    assert 0 < low < 4.0 < high
    tied = healed["RL (grpo) from SFT step 100 restores OOD accuracy beyond the control"]
    assert tied["reproduced"] is False and "interval holds 0" in tied["note"]
    zero = tables.rl_recovery_table(accuracy_rows({0: 0.0, 6: 0.0}, {("grpo", 6, 1): 0.0, ("sft_continue", 6, 1): 0.0}, n=24))
    assert findings.rl_healing(zero)[0]["reproduced"] is None and "undefined" in findings.rl_healing(zero)[0]["note"]
    window = figures.recovery_window(recovery)
    assert window.height == 1 and window["start"][0] == 150.0 and window["end"][0] == 200.0


def test_recovery_standard_error_and_rank_correlation():
    from rlheals import restore

    se = restore.recovery_se(0.15, 0.20, 0.10, 500)
    assert 0.1 < se < 0.5 and math.isnan(restore.recovery_se(0.1, 0.1, 0.1, 500))
    assert findings.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert findings.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


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
    chart = figures.sft_accuracy(acc, losses, tables.rl_recovery_table(acc))
    figures.save(chart, tmp_path / "f.svg", tmp_path / "f.html")
    svg, html = (tmp_path / "f.svg").read_text(), (tmp_path / "f.html").read_text()
    assert svg.startswith("<svg") and "Accuracy vs SFT step" in svg and svg.count("<path") > 10
    assert "cdn.jsdelivr" not in html and "https://" not in html.split("<script")[0]  # vega inlined, nothing fetched


def test_restoration_figure_draws_every_edit_when_the_recovery_fraction_is_undefined(tmp_path):
    """B and T with the same OOD accuracy leave the recovery fraction undefined (NaN): the figure plots
    accuracy against B and T instead, so every edit is still drawn (it used to be blank panels), with a
    rule for every B and T the edits use."""
    def row(edit, kind, top=0.0, tail=0.0, layers=None, base="sft-200", target="sft-600", acc=0.04):
        return {"edit": edit, "kind": kind, "base": base, "target": target, "top": top, "tail": tail,
                "layers": layers, "layer_range": None, "rule": "ood", "acc_edit": acc,
                "acc_base": 0.05 if base == "sft-100" else 0.034, "acc_target": 0.034, "recovery": float("nan")}
    table = pl.DataFrame([row("dirs_top20", "directions", top=0.2), row("dirs_top50", "directions", top=0.5, acc=0.03),
                          row("vals_top20", "vectors", top=0.2), row("dirs_tail20", "directions", tail=0.2),
                          row("layers25", "layers", layers=0.25), row("layers50", "layers", layers=0.5, base="sft-100"),
                          row("reverse_dirs100", "directions", top=1.0, target="rl-grpo-600-s1", acc=0.02)])
    figures.save(figures.restoration(table), tmp_path / "r.svg", tmp_path / "r.html")
    svg = (tmp_path / "r.svg").read_text()
    assert svg.count('aria-roledescription="point"') == 5  # top-k edits (3) and layer resets (2)
    assert svg.count('aria-roledescription="bar"') == 7  # every edit, the reverse one and the tail included
    assert all(end in svg for end in ("B (sft-200)", "B (sft-100)", "T (sft-600)")) and "OOD accuracy over T (points)" in svg


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
            episodes[model] = [{"rule": "ood", "correct": i < k, "first_correct": i < k, "format_error": False,
                                "value_mapping": True, "tries": 1} for i in range(500)]
        spec = {"kind": "directions", "base": "sft-200", "target": "sft-600", "top": top}
        return tables.restoration_table({f"edit-{edit}": spec}, episodes)

    tie, = findings.restoration_findings(table(0.03))
    assert tie["value"] is None and tie["reproduced"] is None and tie["uncertainty"].startswith("undefined")
    gap, = findings.restoration_findings(table(0.07))
    assert gap["value"] == pytest.approx(0.5) and gap["uncertainty"].startswith("95% interval [")
    low, high = map(float, re.search(r"\[(.+), (.+)\]", gap["uncertainty"]).groups())
    assert low < 0.5 < high and gap["reproduced"] is (low > 0)
    close, = findings.restoration_findings(table(0.05))  # B 5% and T 3%: the 95% intervals overlap
    assert close["value"] is None and close["reproduced"] is None
    assert close["uncertainty"] == "undefined: B and T are not apart beyond their 95% intervals"
    other, = findings.restoration_findings(table(0.12, edit="dirs_tail", top=0.0))  # not one of the papers' claims
    assert other["paper"] == "no claim in the papers" and other["reproduced"] is None and other["value"] is not None


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

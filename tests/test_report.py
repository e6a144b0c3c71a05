import ast
import inspect
import math
import os
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
    assert peaked[0]["reproduced"] == "yes" and peaked[0]["value"] == pytest.approx(11.0)
    assert "peak at step 100 of 300" in peaked[0]["note"]
    # The same OOD curve while ID stays where the base model was: not the papers' forgetting.
    still = findings.sft_forgetting(accuracy_rows({0: 0.03, 100: 0.15, 200: 0.10, 300: 0.04}), losses)
    assert still[0]["reproduced"] == "no" and "ID 8.0% at the base, 9.0% at the end" in still[0]["note"]
    assert peaked[1]["reproduced"] == "no"  # the lowest OOD loss is at the best-OOD step here
    flat = findings.sft_forgetting(accuracy_rows({0: 0.05, 100: 0.06, 200: 0.055, 300: 0.05}), losses)
    # A one-point bump: no best checkpoint.
    assert flat[0]["reproduced"] == flat[1]["reproduced"] == "undefined"
    assert flat[0]["note"].startswith("undefined: OOD accuracy is flat")
    early = losses.with_columns(ood_loss=pl.Series([2.0, 1.0, 0.9, 1.5]))  # the loss picks step 200
    picked = findings.sft_forgetting(accuracy_rows({0: 0.03, 100: 0.15, 200: 0.14, 300: 0.04}), early)
    assert picked[1]["reproduced"] == "undefined" and "within the best one's interval" in picked[1]["note"]
    missed = findings.sft_forgetting(accuracy_rows({0: 0.03, 100: 0.15, 200: 0.05, 300: 0.04}), early)
    assert missed[1]["reproduced"] == "yes" and missed[1]["value"] == 100


def test_findings_on_a_study_where_every_accuracy_is_zero_are_undefined_not_reproduced():
    losses = pl.DataFrame({"step": [0, 2, 4, 6], "train_loss": [6.0, 5.0, 4.0, 3.0], "ood_loss": [6.0, 5.5, 5.2, 5.4]})
    rows = findings.sft_forgetting(accuracy_rows({0: 0.0, 2: 0.0, 4: 0.0, 6: 0.0}, n=24), losses)
    assert [r["reproduced"] for r in rows] == ["undefined", "undefined"]
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
    assert up["reproduced"] == "yes" and up["value"] == pytest.approx(4.0)
    assert "interval lies above 0" in up["note"]
    low, high = map(float, re.search(r"\[(.+), (.+)\]", up["uncertainty"]).groups())
    assert 0 < low < 4.0 < high
    tied = healed["RL (grpo) from SFT step 100 restores OOD accuracy beyond the control"]
    assert tied["reproduced"] == "no" and "interval holds 0" in tied["note"]
    zero = tables.rl_recovery_table(accuracy_rows({0: 0.0, 6: 0.0}, {("grpo", 6, 1): 0.0, ("sft_continue", 6, 1): 0.0}, n=24))
    tied_at_zero, = findings.rl_healing(zero)
    assert tied_at_zero["reproduced"] == "undefined" and "undefined" in tied_at_zero["note"]
    window = figures.recovery_window(recovery)
    assert window.height == 1 and window["start"][0] == 150.0 and window["end"][0] == 200.0


def test_recovery_standard_error_and_rank_correlation():
    from rlheals import restore

    se = restore.recovery_se(0.15, 0.20, 0.10, 500)
    assert 0.1 < se < 0.5 and math.isnan(restore.recovery_se(0.1, 0.1, 0.1, 500))
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
    assert row["note"].startswith("undefined: OOD")
    chart = figures.rotation_vs_ood(flat, *findings.rotation_correlation(flat))
    figures.save(chart, tmp_path / "f.svg", tmp_path / "f.html")
    svg = (tmp_path / "f.svg").read_text()
    assert "Spearman undefined: OOD accuracy is 0.0% at every SFT step" in svg and "nan" not in svg.lower()
    rising = flat.with_columns(ood_accuracy=pl.Series([0.1, 0.05, 0.02]))
    assert findings.rotation_correlation(rising) == (pytest.approx(-1.0), "")
    chart = figures.rotation_vs_ood(rising, *findings.rotation_correlation(rising))
    figures.save(chart, tmp_path / "g.svg", tmp_path / "g.html")
    assert "Spearman -1.00" in (tmp_path / "g.svg").read_text()


def axis_labels(svg: str) -> list[str]:
    import xml.etree.ElementTree as ET

    groups = ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g")
    return [t.text for g in groups if g.get("class", "").startswith("mark-text role-axis-label") for t in g]


def test_step_axes_tick_whole_steps_only(tmp_path):
    acc = accuracy_rows({0: 0.02, 2: 0.10, 4: 0.06, 6: 0.03},
                        {("grpo", 6, 1): 0.09, ("sft_continue", 6, 1): 0.04})
    losses = pl.DataFrame({"step": [0, 2, 4, 6], "train_loss": [2.0, 1.0, 0.5, 0.4],
                           "ood_loss": [2.0, 0.9, 1.0, 1.1]})
    for name, chart in (("curve", figures.sft_accuracy(acc, losses, tables.rl_recovery_table(acc))),
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
    for seed, (rl_after, control_after) in {0: (0.10, 0.02), 1: (0.02, 0.10)}.items():
        for algo, acc in (("grpo", rl_after), ("sft_continue", control_after)):
            rows.append({"sft_seed": seed, "algo": algo, "sft_step": 200, "rule": "ood", "acc_after_min": acc,
                         "acc_after_max": acc})
        rows += [{"sft_seed": seed, "algo": algo, "sft_step": 100, "rule": "ood", "acc_after_min": 0.05,
                  "acc_after_max": 0.05} for algo in ("grpo", "sft_continue")]
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
    chart = figures.sft_accuracy(acc, losses, tables.rl_recovery_table(acc))
    figures.save(chart, tmp_path / "f.svg", tmp_path / "f.html")
    svg, html = (tmp_path / "f.svg").read_text(), (tmp_path / "f.html").read_text()
    assert svg.startswith("<svg") and "Accuracy vs SFT step" in svg and svg.count("<path") > 10
    assert "cdn.jsdelivr" not in html and "https://" not in html.split("<script")[0]  # vega inlined, nothing fetched


def restoration_rows(*specs, n: int = 500, sft_seed: int | None = None) -> pl.DataFrame:
    """A restoration table as tables.restoration_table writes it, from (edit, kind, fields) specs whose
    fields give the edit's share (top, tail or layers), its B and T and the three OOD accuracies."""
    from rlheals import restore

    rows = []
    for edit, kind, f in specs:
        acc, base, target = f["acc"], f.get("acc_base", 0.034), f.get("acc_target", 0.034)
        se = restore.recovery_se(acc, base, target, n)
        fraction = restore.recovery(acc, base, target)
        rows.append({"edit": edit, "sft_seed": sft_seed, "kind": kind, "base": f.get("base", "sft-200"),
                     "target": f.get("target", "sft-600"), "top": f.get("top", 0.0),
                     "tail": f.get("tail", 0.0), "layers": f.get("layers"), "layer_range": None,
                     "rule": "ood",
                     "n_episodes": n, "acc_edit": acc, "acc_base": base, "acc_target": target,
                     "recovery": fraction, "recovery_se": se, "recovery_low": fraction - 1.96 * se,
                     "recovery_high": fraction + 1.96 * se})
    schema = {"layers": pl.Float64, "layer_range": pl.String, "sft_seed": pl.Int64}
    return pl.DataFrame(rows, schema_overrides=schema)


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
            episodes[model] = [{"rule": "ood", "correct": i < k, "first_correct": i < k, "format_error": False,
                                "value_mapping": True, "tries": 1} for i in range(500)]
        spec = {"kind": "directions", "base": "sft-200", "target": "sft-600", "top": top}
        return tables.restoration_table({f"edit-{edit}": spec}, episodes)

    tie, = findings.restoration_findings(table(0.03))
    assert tie["value"] is None and tie["reproduced"] == "undefined"
    assert tie["uncertainty"].startswith("undefined")
    gap, = findings.restoration_findings(table(0.07))
    assert gap["value"] == pytest.approx(0.5) and gap["uncertainty"].startswith("95% interval [")
    low, high = map(float, re.search(r"\[(.+), (.+)\]", gap["uncertainty"]).groups())
    assert low < 0.5 < high and gap["reproduced"] == ("yes" if low > 0 else "no")
    close, = findings.restoration_findings(table(0.05))  # B 5% and T 3%: the 95% intervals overlap
    assert close["value"] is None and close["reproduced"] == "undefined"
    assert close["uncertainty"] == "undefined: B and T are not apart beyond their 95% intervals"
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

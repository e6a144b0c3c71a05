"""What a model is, read from its parsed id: the SFT seed, the RL seed and the update never change it, and
no table or figure tells the control from RL by how an id begins."""

import ast

import polars as pl
import pytest
from conftest import ROOT

from rlheals import figures, model_ids, tables

IDS = {
    "base": ("base", None),
    "sft-200": ("sft", None),
    "seed1-sft-200": ("sft", None),
    "rl-grpo-200": ("rl", "sft-200"),
    "rl-ppo-200-s2-u10": ("rl", "sft-200"),
    "rl-seed1-ppo-200-s2": ("rl", "seed1-sft-200"),
    "rl-sft_continue-200": ("control", "sft-200"),
    "rl-sft_continue-200-s3": ("control", "sft-200"),
    "rl-seed1-sft_continue-200-s2": ("control", "seed1-sft-200"),
    "rl-seed12-sft_continue-50-s1-u5": ("control", "seed12-sft-50"),
    "edit-dirs_top20": ("edit", None),
    "seed2-edit-dirs_top20": ("edit", None),
}


def test_role_and_start_come_from_the_parsed_id():
    for model_id, (role, start) in IDS.items():
        assert (model_ids.role(model_id), model_ids.start(model_id)) == (role, start), model_id
    with pytest.raises(ValueError, match="not a model id: 'rl-sft_continue'"):
        model_ids.role("rl-sft_continue")


def test_the_polars_expression_gives_every_field_of_an_id_column():
    frame = pl.DataFrame({"b": [*IDS, None]})
    fields = frame.select(model_ids.fields("b").alias("f")).unnest("f")
    assert fields["role"].to_list() == [role for role, _ in IDS.values()] + [None]
    assert fields["start"].to_list() == [start for _, start in IDS.values()] + [None]
    assert fields["sft_seed"].to_list()[:4] == [None, None, 1, None]
    assert fields["algo"][8] == model_ids.CONTROL
    assert frame.filter(model_ids.role_of("b") == "control")["b"].to_list() == [
        m for m, (role, _) in IDS.items() if role == "control"]
    with pytest.raises(Exception, match="not a model id: 'rl-x'"):
        pl.DataFrame({"b": ["rl-x"]}).select(model_ids.role_of("b"))


def spectrum_rows(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    """A spectrum table: each pair's two matrices (layer 0, modules q and k)."""
    return pl.DataFrame([{"a": a, "b": b, "matrix": f"layers.0.{m}", "layer": 0, "module": m,
                          "relative_update_norm": 0.1 * (i + 1), "u_angle_mean_deg": 1.0 + i}
                         for i, (a, b) in enumerate(pairs) for m in ("q", "k")])


SEEDED_PAIRS = [("base", "seed0-sft-800"), ("base", "seed1-sft-800"), ("seed0-sft-10", "seed0-sft-800"),
                ("seed1-sft-800", "rl-seed1-ppo-800-s1"), ("seed1-sft-800", "rl-seed1-sft_continue-800-s2"),
                ("seed0-sft-800", "rl-seed0-sft_continue-800-s1"), ("base", "rl-seed0-ppo-800-s1")]


def test_update_norms_label_a_seeded_control_as_the_control_not_rl():
    norms = tables.update_norms(spectrum_rows(SEEDED_PAIRS), "seed0-sft-800")
    stages = {b: stage for b, stage in norms.select("b", "stage").unique().iter_rows()}
    # SFT: base -> the report's last SFT step; RL and control: from their own SFT start only (a pair from
    # the base to an RL model measures something else and is left out).
    assert stages == {"seed0-sft-800": "SFT", "rl-seed1-ppo-800-s1": "RL",
                      "rl-seed1-sft_continue-800-s2": "control", "rl-seed0-sft_continue-800-s1": "control"}
    pairs = [("base", "sft-6"), ("sft-6", "rl-grpo-6"), ("sft-6", "rl-sft_continue-6")]
    single = tables.update_norms(spectrum_rows(pairs), "sft-6")
    assert sorted(single["stage"].unique()) == ["RL", "SFT", "control"]


def test_rotation_heatmap_of_rl_leaves_out_every_seeded_control():
    summary = spectrum_rows(SEEDED_PAIRS)
    chart = figures.rotation_heatmaps(summary, "seed0-sft-800").to_dict()
    rl_panel = chart["hconcat"][1]
    values = chart["datasets"][rl_panel["data"]["name"]]
    # The only RL pair is seed1-sft-800 -> rl-seed1-ppo-800-s1 (the 4th pair: angle 4.0).
    assert {v["u_angle_mean_deg"] for v in values} == {4.0}


def test_spectrum_pairs_are_labelled_from_parsed_ids():
    """scripts/figure.py's label_pairs, run on its own: a seeded control is labelled control."""
    source = (ROOT / "scripts" / "figure.py").read_text()
    node = next(n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == "label_pairs")
    namespace = {"pl": pl, "model_ids": model_ids}
    exec(compile(ast.Module([node], type_ignores=[]), "figure.py", "exec"), namespace)
    rows = pl.DataFrame({"a": [a for a, _ in SEEDED_PAIRS[3:6]] + ["base"],
                         "b": [b for _, b in SEEDED_PAIRS[3:6]] + ["seed1-sft-800"]})
    (labelled,) = namespace["label_pairs"](rows)
    assert labelled["pair"].to_list() == ["RL: seed1-sft-800 -> rl-seed1-ppo-800-s1",
                                          "control: seed1-sft-800 -> rl-seed1-sft_continue-800-s2",
                                          "control: seed0-sft-800 -> rl-seed0-sft_continue-800-s1",
                                          "SFT: base -> seed1-sft-800"]


def test_rl_against_sft_update_norms_are_undefined_unless_at_a_matched_dose():
    from rlheals import findings

    pairs = [("base", "sft-6"), ("sft-6", "rl-grpo-6"), ("sft-6", "rl-sft_continue-6")]
    doses = {"sft": {"lr": 3e-4, "steps": 800}, "rl": {"lr": 1e-5, "updates": 60}}
    smaller, modules = findings.update_norms(spectrum_rows(pairs), "base", "sft-6", doses)
    assert smaller["value"] == pytest.approx(2.0)  # the control's pair is not RL's
    assert smaller["reproduced"] == "undefined" and "not at a matched dose" in smaller["note"]
    assert "0.0003 x 800 steps = 0.24" in smaller["note"]
    assert "1e-05 x 60 updates = 0.0006" in smaller["note"]
    assert findings.update_norms(spectrum_rows(pairs), "base", "sft-6")[0]["reproduced"] == "undefined"

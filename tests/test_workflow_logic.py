"""The workflow's logic (rlheals.workflow, rlheals.model_ids): code hashing for exact reruns, run lists,
config slices, and the one model-id format. Fast: no snakemake run."""

import ast
import copy
from pathlib import Path

import pytest
import yaml

from rlheals import model_ids, workflow

ROOT = Path(__file__).resolve().parents[1]


def default_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def explicit_config():
    """The default config with every step written out (no point chosen after SFT)."""
    config = default_config()
    config["sft"].update(save_steps=[0, 10, 100, 200, 400, 600], max_steps=600)
    config["rl"].update(algos=["grpo"], from_steps=[100, 200, 400, 600], seeds=2, save_updates=[30])
    config["spectrum"]["best_ood_step"] = 200
    config["restore"]["edits"] = [
        {"name": "dirs_top20", "kind": "directions", "base": "sft-200", "target": "sft-600", "top": 0.2},
        {"name": "layers25", "kind": "layers", "base": "sft-200", "target": "sft-600", "layers": 0.25}]
    return config


def symbolic_config():
    """Steps named by the points the workflow chooses after SFT."""
    config = explicit_config()
    config["rl"]["from_steps"] = ["before_peak", "peak", "mid_decline", "last"]
    config["spectrum"]["best_ood_step"] = "B"
    config["restore"]["edits"] = [
        {"name": "dirs_top20", "kind": "directions", "base": "sft-B", "target": "sft-T", "top": 0.2},
        {"name": "reverse", "kind": "directions", "base": "sft-T", "target": "rl-grpo-T-s1", "top": 1.0}]
    return config


@pytest.fixture
def package(tmp_path):
    """A small package laid out as rlheals is: modules importing each other in every written form."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text('"""Module a."""\n\nfrom rlheals import (\n    b,\n    c,\n)\n\nX = 1  # one\n')
    (pkg / "b.py").write_text("def f():\n    from rlheals.d import g\n    return g()\n")
    (pkg / "c.py").write_text("import rlheals.e\n")
    (pkg / "d.py").write_text("def g():\n    '''Docstring.'''\n    return 2\n")
    (pkg / "e.py").write_text("Y = 3\n")
    (pkg / "unused.py").write_text("Z = 4\n")
    script = tmp_path / "script.py"
    script.write_text("from rlheals import a  # noqa\nimport json\n")
    return pkg, script


def test_imports_are_found_however_they_are_written(package):
    pkg, _ = package
    assert workflow.package_imports(ast.parse((pkg / "a.py").read_text()), pkg) == {"b", "c"}  # wrapped
    assert workflow.package_imports(ast.parse((pkg / "b.py").read_text()), pkg) == {"d"}  # inside a function
    assert workflow.package_imports(ast.parse((pkg / "c.py").read_text()), pkg) == {"e"}  # import pkg.mod
    assert workflow.package_imports(ast.parse("from rlheals import nothere\nimport os\n"), pkg) == set()


def test_code_hash_ignores_comments_docstrings_and_layout_but_not_code(package):
    pkg, script = package
    before = workflow.code_hash(script, pkg)
    d = pkg / "d.py"
    d.write_text("def g():\n    '''Another docstring, longer.'''\n\n    # a comment\n    return 2  # two\n")
    (pkg / "a.py").write_text('"""Module a, documented."""\nfrom rlheals import (b, c)\nX = 1\n')
    assert workflow.code_hash(script, pkg) == before
    d.write_text("def g():\n    return 3\n")  # a module reached only through a wrapped import, then a nested one
    changed = workflow.code_hash(script, pkg)
    assert changed != before
    (pkg / "unused.py").write_text("Z = 5\n")  # a module the script does not reach
    assert workflow.code_hash(script, pkg) == changed


def test_every_script_hashes_the_modules_it_really_uses():
    """Through the real package: the evaluation script's hash covers the decoding engine (reached through
    evaluate), and the table scripts' hashes do not (they never import it)."""
    evaluate_script = ROOT / "scripts" / "evaluate.py"
    seen = workflow.package_imports(ast.parse(evaluate_script.read_text()))
    assert {"evaluate", "episodes"} <= seen
    assert "decoding" in workflow.package_imports(ast.parse((workflow.PACKAGE_DIR / "evaluate.py").read_text()))
    tables = workflow.package_imports(ast.parse((workflow.PACKAGE_DIR / "tables.py").read_text()))
    assert "evaluate" not in tables and "decoding" not in tables


def test_model_ids_round_trip():
    assert model_ids.parse("base")["stage"] == "base"
    assert model_ids.parse("sft-120") == {"stage": "sft", "algo": None, "sft_seed": None, "sft_step": 120,
                                          "rl_update": None, "seed": None}
    assert model_ids.parse("rl-grpo-100-s1-u30") == {"stage": "rl", "algo": "grpo", "sft_seed": None, "sft_step": 100,
                                                     "rl_update": 30, "seed": 1}
    assert model_ids.parse("rl-sft_continue-6")["algo"] == model_ids.CONTROL
    assert model_ids.parse("edit-dirs_top20") == {"stage": "edit", "algo": "dirs_top20", "sft_seed": None,
                                                  "sft_step": None, "rl_update": None, "seed": None}
    # Several SFT seeds: the seed comes first in every id that follows from an SFT run.
    assert model_ids.parse("rl-seed2-ppo-50-s3-u10") == {"stage": "rl", "algo": "ppo", "sft_seed": 2, "sft_step": 50,
                                                         "rl_update": 10, "seed": 3}
    assert model_ids.rl(model_ids.rl_run("grpo", 50, 1, True, sft_seed=2)) == "rl-seed2-grpo-50-s1"
    assert model_ids.rl_start("seed2-grpo-50-s1") == "seed2-sft-50" and model_ids.rl_start("grpo-50") == "sft-50"
    assert model_ids.edit("dirs", 1) == "seed1-edit-dirs" and model_ids.parse("seed1-edit-dirs")["sft_seed"] == 1
    assert model_ids.split_seed("seed10-sft-5") == (10, "sft-5") and model_ids.sft_step("results/models/seed1-sft-40") == 40
    assert model_ids.rl(model_ids.rl_run("ppo", 40, 2, seeded=True), 30) == "rl-ppo-40-s2-u30"
    assert model_ids.rl_run("ppo", 40, 1, seeded=False) == "ppo-40"
    assert model_ids.parse_rl_run("grpo-100-s2") == ("grpo", 100, 2, None)
    assert model_ids.parse_rl_run("grpo-100").seed == 1
    assert model_ids.sft_step("results/models/sft-40") == 40
    assert model_ids.rl_update("results/models/rl-grpo-6-u1") == 1
    for bad in ("sft_120", "rl-grpo", "edit-", "sft-1x"):
        with pytest.raises(ValueError, match="not a model id"):
            model_ids.parse(bad)
    with pytest.raises(ValueError, match="not an RL run id"):
        model_ids.parse_rl_run("grpo")


def test_the_wildcard_regex_and_the_parser_agree():
    import re

    study = workflow.Study(explicit_config())
    for model_id in [*study.eval_models, "rl-ppo-10-s3-u5", "rl-seed1-ppo-10-s3-u5", "seed1-edit-x", "seed0-sft-0"]:
        assert re.fullmatch(model_ids.MODEL_ID, model_id), model_id
        model_ids.parse(model_id)
    for run in study.rl_runs:
        assert re.fullmatch(model_ids.RL_RUN, run)
    assert not re.fullmatch(model_ids.MODEL_ID, "sft-10-extra") and not re.fullmatch(model_ids.MODEL_ID, "seed1-base")
    assert re.fullmatch(model_ids.EDIT_ID, "seed3-edit-x") and not re.fullmatch(model_ids.EDIT_ID, "sft-3")


def test_study_lists_runs_models_pairs_and_edits():
    config = explicit_config()
    study = workflow.Study(config)
    assert study.sft_steps == sorted(config["sft"]["save_steps"])
    assert study.last_sft == f"sft-{max(config['sft']['save_steps'])}"
    n_runs = (len(config["rl"]["algos"]) + 1) * len(config["rl"]["from_steps"]) * config["rl"]["seeds"]
    assert len(study.rl_runs) == n_runs and "sft_continue-100-s2" in study.rl_runs
    assert "rl-grpo-600-s1-u30" in study.rl_models and "edit-layers25" in study.eval_models
    assert ("base", "sft-600") in study.spectrum_pairs and ("sft-200", "sft-600") in study.spectrum_pairs
    assert ("sft-100", "rl-grpo-100-s1") in study.spectrum_pairs
    assert len(set(study.spectrum_pairs)) == len(study.spectrum_pairs)
    assert set(study.edit_inputs("edit-dirs_top20")) == {"base", "target", "svd_base", "svd_target"}
    assert set(study.edit_inputs("edit-layers25")) == {"base", "target"}  # a layer reset needs no SVD


def test_sft_vs_rl_n_compares_the_rl_models_of_the_first_n_rl_seeds_only():
    config = explicit_config()
    every = workflow.Study(config).spectrum_pairs
    config["spectrum"]["sft_vs_rl"] = 1
    first = workflow.Study(config).spectrum_pairs
    assert ("sft-100", "rl-grpo-100-s1") in first and ("sft-100", "rl-grpo-100-s2") in every
    assert {b for _, b in every if b.startswith("rl-")} - {b for _, b in first if b.startswith("rl-")} == {
        model_ids.rl(run) for run in workflow.Study(config).rl_runs if model_ids.parse_rl_run(run).seed > 1}
    assert [p for p in every if not p[1].startswith("rl-")] == [p for p in first if not p[1].startswith("rl-")]
    config["spectrum"]["sft_vs_rl"] = False
    assert not any(b.startswith("rl-") for _, b in workflow.Study(config).spectrum_pairs)


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["restore"]["edits"].append(dict(c["restore"]["edits"][0])), "edit names must be unique"),
    (lambda c: c["restore"]["edits"][0].update(base="sft-999"), "restore.edits.dirs_top20.base: 'sft-999' is not a model"),
    (lambda c: c["spectrum"].update(best_ood_step=7), "spectrum.best_ood_step: 'sft-7' is not a model"),
    (lambda c: c["spectrum"].update(pairs=[["base", "rl-grpo-1"]]), "spectrum.pairs.0: 'rl-grpo-1' is not a model"),
    (lambda c: c["restore"]["edits"].append({"name": "x", "kind": "layers", "base": "sft-200", "target": "sft-600"}),
     "restore.edits.x.layers: kind 'layers' needs layers"),
])
def test_study_refuses_models_it_does_not_make(edit, words):
    config = explicit_config()
    edit(config)
    with pytest.raises(ValueError, match=words):
        workflow.Study(config)


def test_points_chosen_after_sft_complete_the_study():
    """A config that names points plans nothing that depends on them until they are chosen; then the
    runs, pairs and edits name the chosen steps, as the same config with the steps written out does."""
    study = workflow.Study(symbolic_config())
    assert study.needs_points and study.points is None
    assert study.rl_runs == [] and study.edits == {} and study.edit_models == ["edit-dirs_top20", "edit-reverse"]
    assert ("sft-200", "sft-400") not in study.spectrum_pairs and ("base", "sft-600") in study.spectrum_pairs
    points = {"B": 100, "T": 600, "before_peak": 10, "peak": 100, "mid_decline": 400, "last": 600}
    chosen = workflow.Study(symbolic_config(), {None: points})
    assert chosen.rl_from == {None: [10, 100, 400, 600]}
    assert "grpo-10-s2" in chosen.rl_runs and "sft_continue-400-s1" in chosen.rl_runs
    assert ("sft-100", "sft-600") in chosen.spectrum_pairs and ("sft-10", "sft-100") not in chosen.spectrum_pairs
    assert chosen.edits["edit-dirs_top20"] | {"base": "sft-100", "target": "sft-600"} == chosen.edits["edit-dirs_top20"]
    assert chosen.edits["edit-reverse"]["target"] == "rl-grpo-600-s1"
    assert chosen.edit_inputs("edit-dirs_top20")["base"] == "results/models/sft-100"
    # A point with no checkpoint in its range (here: before a peak at the first step) is left out.
    early = workflow.Study(symbolic_config(), {None: {**points, "B": 10, "peak": 10, "before_peak": None}})
    assert early.rl_from == {None: [10, 400, 600]}
    assert not workflow.Study(explicit_config()).needs_points


def test_several_sft_seeds_each_get_their_models_runs_pairs_and_edits():
    """With sft.seed a list, every model after the base carries its SFT seed; each seed's RL runs start
    from its own checkpoints at its own chosen points, and an SFT run's slice holds its seed alone."""
    config = symbolic_config()
    config["sft"]["seed"] = [0, 1]
    study = workflow.Study(config)
    assert study.sft_seeds == [0, 1] and "seed1-sft-600" in study.study_models and "sft-600" not in study.study_models
    assert study.edit_models == ["seed0-edit-dirs_top20", "seed0-edit-reverse", "seed1-edit-dirs_top20", "seed1-edit-reverse"]
    assert study.sft_slice(1)["sft"]["seed"] == 1 and study.sft_slice(0) != study.sft_slice(1)
    assert study.points_file(1) == "results/tables/seed1-sft_points.json"
    points = {0: {"B": 100, "T": 600, "before_peak": 10, "peak": 100, "mid_decline": 400, "last": 600},
              1: {"B": 200, "T": 600, "before_peak": 100, "peak": 200, "mid_decline": 400, "last": 600}}
    chosen = workflow.Study(config, points)
    assert chosen.rl_from == {0: [10, 100, 400, 600], 1: [100, 200, 400, 600]}
    assert "seed1-grpo-200-s2" in chosen.rl_runs and "seed0-grpo-200-s2" not in chosen.rl_runs
    assert chosen.edits["seed1-edit-dirs_top20"]["base"] == "seed1-sft-200"
    assert chosen.edits["seed0-edit-reverse"]["target"] == "rl-seed0-grpo-600-s1"
    assert ("seed1-sft-200", "seed1-sft-400") in chosen.spectrum_pairs and ("base", "seed0-sft-10") in chosen.spectrum_pairs
    assert ("seed1-sft-200", "rl-seed1-grpo-200-s1") in chosen.spectrum_pairs
    control = chosen.rl_slice("seed1-sft_continue-200-s1")
    assert control["sft"]["seed"] == 1 and control == chosen.rl_slice("seed1-sft_continue-200-s1")
    # Adding a seed changes no slice of the seeds already there.
    more = copy.deepcopy(config)
    more["sft"]["seed"] = [0, 1, 2]
    assert workflow.Study(more).sft_slice(1) == study.sft_slice(1)
    assert workflow.Study(more, {**points, 2: points[1]}).rl_slice("seed1-grpo-200-s1") == chosen.rl_slice("seed1-grpo-200-s1")


def test_unknown_points_are_named():
    config = symbolic_config()
    config["rl"]["from_steps"] = ["peak", "summit"]
    with pytest.raises(ValueError, match=r"rl.from_steps: \['summit'\] are not steps nor points"):
        workflow.Study(config)


def test_each_rl_run_depends_on_its_own_algo_settings_only():
    config = default_config()
    config["rl"]["algos"] = ["grpo", "ppo"]
    base = workflow.Study(config)
    changed = copy.deepcopy(config)
    changed["rl"]["ppo"]["clip"] = 0.3  # a PPO setting
    changed["rl"]["seeds"] = 3  # the run list itself
    changed["sft"]["logging_steps"] = 5  # the SFT run's logging: not the control's
    changed["sft"]["eval_examples"] = 16
    other = workflow.Study(changed)
    for run in ("grpo-100-s1", "sft_continue-100-s1"):
        assert workflow.canonical(base.rl_slice(run)) == workflow.canonical(other.rl_slice(run)), run
    assert workflow.canonical(base.rl_slice("ppo-100-s1")) != workflow.canonical(other.rl_slice("ppo-100-s1"))
    assert base.rl_slice("grpo-100-s2")["seed"] == 2
    changed["sft"]["lr"] = 1e-3  # the control trains with the SFT settings
    assert base.rl_slice("sft_continue-100-s1") != workflow.Study(changed).rl_slice("sft_continue-100-s1")


def test_canonical_ignores_key_order():
    assert workflow.canonical({"b": 1, "a": {"d": 2, "c": 3}}) == workflow.canonical({"a": {"c": 3, "d": 2}, "b": 1})


def test_deepspeed_files_are_inputs_of_the_jobs_that_train_with_them():
    config = default_config()
    config["sft"]["deepspeed"], config["rl"]["deepspeed"] = "zero3", "zero2"
    study = workflow.Study(config)
    assert study.sft_deepspeed() == ["config/deepspeed/zero3.json"]
    assert study.rl_deepspeed("grpo-100-s1") == ["config/deepspeed/zero2.json"]
    assert study.rl_deepspeed("sft_continue-100-s1") == ["config/deepspeed/zero3.json"]  # the control trains as SFT
    assert all((ROOT / path).exists() for path in [*study.sft_deepspeed(), *study.rl_deepspeed("grpo-100-s1")])
    assert workflow.Study(default_config()).sft_deepspeed() == []

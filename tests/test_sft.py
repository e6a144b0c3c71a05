import hashlib
import os
import signal
import subprocess
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from conftest import AFTER_SFT, FIGURES, ROOT, SNAKEMAKE
from rlheals import models, pretrain, sft
from rlheals.settings import SFTSettings

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "max_positions": 128}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_freeze_by_pattern_and_layer_range():
    tok = models.build_tokenizer(["a"])
    model = models.build_tiny_model(tok, TINY, seed=0)
    frozen = sft.freeze(model, [{"pattern": r"mlp\.", "layers": [1, 2]}])
    assert frozen and all(".mlp." in n and (".layers.1." in n or ".layers.2." in n) for n in frozen)
    assert len(frozen) == 6  # gate, up, down in two layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.layers.0.mlp.up_proj.weight" in trainable and "model.layers.1.self_attn.q_proj.weight" in trainable
    with pytest.raises(ValueError, match="matches no parameter"):
        sft.freeze(model, [{"pattern": "no_such_module"}])
    # GPT-2 keeps its layers in transformer.h: a layer range finds them there too.
    import families
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(families.config("gpt2", families.tokenizer("gpt2")))
    assert sorted(sft.freeze(gpt2, [{"pattern": r"mlp\.", "layers": [1, 1]}])) == [
        f"transformer.h.1.mlp.{m}.{p}" for m in ("c_fc", "c_proj") for p in ("bias", "weight")]


def test_loss_table_merges_train_and_heldout_losses():
    history = [
        {"step": 0, "eval_id_loss": 2.0, "eval_ood_loss": 2.5},
        {"step": 2, "loss": 1.5, "learning_rate": 1e-3},
        {"step": 2, "eval_id_loss": 1.2, "eval_ood_loss": 2.7},
        {"step": 4, "train_runtime": 1.0},
    ]
    rows = sft.loss_table(history)
    assert rows[0] == {"step": 0, "id_loss": 2.0, "ood_loss": 2.5}
    assert rows[1] == {"step": 2, "train_loss": 1.5, "lr": 1e-3, "id_loss": 1.2, "ood_loss": 2.7}


def models_of(root: Path) -> dict[str, str]:
    return {p.name: sha256(p / "model.safetensors") for p in sorted(root.glob("sft-*"))}


# --- the finished smoke study (built once per session), one concern per test -------------------------


@pytest.fixture(scope="module")
def study(copy_of_smoke_study):
    """One copy of the finished smoke study for this module's checks, which only read it and plan (dry runs
    with extra config files, and `--report`, which writes report.html)."""
    return copy_of_smoke_study()


def test_sft_saves_a_distinct_model_at_each_save_step_and_step_0_is_the_base(study):
    root = study.path / "results" / "models"
    saved = models_of(root)
    assert set(saved) == {"sft-0", "sft-2", "sft-4", "sft-6"}
    assert saved["sft-0"] == sha256(root / "base" / "model.safetensors")  # step 0 is the base model
    assert len(set(saved.values())) == 4  # every step is a different model


def test_every_sft_checkpoint_is_a_loadable_hugging_face_directory_without_trainer_state(study):
    root = study.path / "results" / "models"
    for name in ("sft-0", "sft-2", "sft-4", "sft-6"):  # offline
        model = models.load_model(root / name)
        tok = models.load_tokenizer(root / name)
        assert model.config.vocab_size == len(tok) and tok.chat_template
        assert not [p for p in (root / name).iterdir() if p.name.startswith(("optimizer", "rng_state"))]


def test_sft_loss_table_has_train_and_heldout_losses_at_every_logged_step(study):
    losses = pl.read_parquet(study.path / "results" / "tables" / "sft_log.parquet")
    assert losses["step"].to_list() == [0, 2, 4, 6]
    assert losses.filter(pl.col("step") > 0)["train_loss"].null_count() == 0
    assert losses["id_loss"].null_count() == 0 and losses["ood_loss"].null_count() == 0


def test_a_finished_study_leaves_no_work_directory_behind(study):
    work = study.path / "results" / "work"
    assert not work.exists() or not list(work.iterdir())


def test_spectrum_ran_on_every_configured_pair(study):
    results = study.path / "results"
    pairs = [("base", "sft-2"), ("base", "sft-4"), ("base", "sft-6"), ("sft-2", "sft-4"), ("sft-2", "sft-6"),
             ("sft-6", "rl-grpo-6"), ("sft-6", "rl-ppo-6"), ("sft-6", "rl-sft_continue-6")]
    assert sorted(p.stem for p in (results / "spectrum").glob("*.parquet")) == sorted(f"{a}__{b}" for a, b in pairs)
    assert pl.read_parquet(results / "tables" / "spectrum.parquet").select("a", "b").n_unique() == len(pairs)


def test_every_restoration_edit_is_evaluated_and_its_model_was_only_a_step(study):
    results = study.path / "results"
    restoration = pl.read_parquet(results / "tables" / "restoration.parquet")
    assert sorted(set(restoration["edit"])) == ["dirs_top50", "layers50", "reverse"] and restoration.height == 6
    assert not list((results / "models").glob("edit-*")) and len(list((results / "eval").glob("edit-*"))) == 3


def test_the_report_outputs_figures_findings_and_checkpoints(study):
    results = study.path / "results"
    assert len(list((results / "figures").glob("*.svg"))) == len(list((results / "figures").glob("*.html"))) == 7
    found = pl.read_parquet(results / "tables" / "findings.parquet")
    assert {"1", "2", "3", "5"} <= set(found["finding"]) and found["paper"].null_count() == 0
    assert pl.read_parquet(results / "tables" / "checkpoints.parquet").height == 11  # base, 4 SFT, 6 RL


def test_a_style_change_reruns_the_figure_rules_alone(study):
    wider = study.write_config("wide.yaml", (study.path / "config" / "smoke.yaml").read_text().replace(
        "spectrum:\n", "report: {width: 500}\nspectrum:\n", 1))
    jobs = study.dry_run_jobs(configfile=wider)
    assert jobs == {"all": 1, **{f"figure_{name}": 1 for name in FIGURES}}


def test_snakemake_report_holds_the_figures_and_tables(study):
    study.run("--report", "report.html")
    report = (study.path / "report.html").read_text()
    assert "sft_accuracy.svg" in report and "findings.csv" in report


def test_an_sft_setting_reruns_sft_and_what_depends_on_it_only(study):
    """Changing an SFT setting reruns SFT and what depends on it (the evaluation of its checkpoints), never
    the data, the base model or the base model's evaluation."""
    changed = study.write_config("lr.yaml", (study.path / "config" / "smoke.yaml").read_text() + "  lr: 1.0e-3\n")
    assert study.dry_run_jobs(configfile=changed) == {"sft": 1, **AFTER_SFT}


def test_a_completed_run_schedules_nothing(study):
    assert study.dry_run_jobs() == {}


def test_the_same_config_and_seed_from_scratch_gives_identical_models(smoke_study, smoke_sft_from_scratch):
    """Data, base model and SFT made again from nothing in another directory: identical weights, base included."""
    first, again = smoke_study.path / "results" / "models", smoke_sft_from_scratch.path / "results" / "models"
    assert set(models_of(first)) == {"sft-0", "sft-2", "sft-4", "sft-6"}
    assert models_of(again) == models_of(first)
    assert sha256(again / "base" / "model.safetensors") == sha256(first / "base" / "model.safetensors")


def test_frozen_weights_stay_bit_identical(finished_study):
    workflow = finished_study  # data and base model as the smoke study made them; SFT reruns with the freeze
    config = workflow.write_config(
        "frozen.yaml",
        (workflow.path / "config" / "smoke.yaml").read_text() + '  freeze: [{pattern: "mlp", layers: [0, 0]}]\n',
    )
    workflow.run("results/tables/sft_log.parquet", configfile=config)
    from safetensors.torch import load_file

    root = workflow.path / "results" / "models"
    base, last = load_file(root / "base" / "model.safetensors"), load_file(root / "sft-6" / "model.safetensors")
    for name in base:
        same = torch.equal(base[name], last[name])
        assert same == (name.startswith("model.layers.0.mlp.")), name


def test_killed_sft_resumes_and_matches_an_uninterrupted_run(finished_study):
    """A real SIGKILL of the whole snakemake process group after a checkpoint, then a rerun."""
    workflow = finished_study  # data and base model as the smoke study made them; SFT reruns, longer
    longer = (workflow.path / "config" / "smoke.yaml").read_text().replace(
        "  max_steps: 6\n  save_steps: [0, 2, 4, 6]\n  logging_steps: 2", "  max_steps: 40\n  save_steps: [0, 10, 40]\n  logging_steps: 20"
    ).replace("from_steps: [6]", "from_steps: [40]").replace("best_ood_step: 2", "best_ood_step: 10")
    for old, new in (("sft-2,", "sft-10,"), ("sft-6,", "sft-40,"), ("rl-grpo-6,", "rl-grpo-40,")):  # the edits' models
        longer = longer.replace(old, new)
    config = workflow.write_config("long.yaml", longer)
    target = "results/tables/sft_log.parquet"
    root = workflow.path / "results" / "models"
    import shutil

    # The smoke study's SFT goes: snakemake would not rerun a job for a target it finds (its loss table),
    # here with other save steps (no metadata for sft-10 or sft-40, so no params check either).
    for old in root.glob("sft-*"):
        shutil.rmtree(old)
    (workflow.path / "results" / "tables" / "sft_log.parquet").unlink()
    workflow.run(target, configfile=config)
    uninterrupted = models_of(root)
    shutil.rmtree(root / "sft-10")
    shutil.rmtree(root / "sft-40")
    (workflow.path / "results" / "tables" / "sft_log.parquet").unlink()

    log = workflow.path / "kill.log"
    # The job SIGKILLs its whole process group, snakemake included, after step 11 (checkpoint-10 complete):
    # deterministic, unlike a kill timed from outside, which a fast run can outrun.
    env = {**os.environ, "RLHEALS_FAULT_AFTER_STEP": "11", "RLHEALS_FAULT_GROUP": "1"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(SNAKEMAKE), target, "--cores", "2", "--configfile", config], cwd=workflow.path,
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
    proc.wait()
    work = workflow.path / "results" / "work"
    assert proc.returncode == -signal.SIGKILL
    assert list(work.glob("sft-*/checkpoint-10")), log.read_text()[-2000:]
    assert not (root / "sft-40").exists()

    workflow.run("--unlock", configfile=config)  # what a user does after a kill
    rerun = workflow.run(target, "--rerun-incomplete", configfile=config)
    assert "resuming from" in (workflow.path / "logs" / "sft.log").read_text(), rerun.stderr[-2000:]
    assert models_of(root) == uninterrupted


@pytest.mark.slow
def test_sft_with_deepspeed_zero2_on_the_cpu(finished_study):
    workflow = finished_study  # data and base model as the smoke study made them; SFT and what follows rerun
    config = workflow.write_config(
        "zero2.yaml", (workflow.path / "config" / "smoke.yaml").read_text() + "  deepspeed: zero2\n"
    )
    workflow.run(configfile=config)
    root = workflow.path / "results" / "models"
    assert "deepspeed enabled: True" in (workflow.path / "logs" / "sft.log").read_text()
    for step in (0, 2, 4, 6):
        models.load_model(root / f"sft-{step}")
    assert models_of(root)["sft-6"] != models_of(root)["sft-0"]


def test_lean_loss_equals_trls_completion_only_loss(tmp_path):
    import datasets
    from trl import SFTTrainer

    from rlheals import cards, data

    rules = {"id": cards.Rule("id", (10, 10, 10))}
    game = {"target": 24, "rules": {"id": {"face_values": {"J": 10, "Q": 10, "K": 10}}, "ood": {"face_values": {"J": 11, "Q": 12, "K": 13}, "hand": "face_card"}}}
    split = {"holdout_seed": 0, "holdout_share": 0.25, "splits": {"sft_train": {"rule": "id", "size": 16, "seed": 0},
             "id_test": {"rule": "id"}, "ood_test": {"rule": "ood"}}}
    rows = data.make_split("sft_train", game, split)
    tok = models.build_tokenizer(pretrain.vocabulary(24))
    model = models.build_tiny_model(tok, TINY, seed=0)
    settings = SFTSettings(max_steps=1, batch_size=16, grad_accum=1, lr=1e-4, lr_scheduler="constant", warmup_ratio=0.0,
                           adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-7, weight_decay=0.0, max_grad_norm=1.0,
                           seed=0, logging_steps=1, eval_examples=0, max_length=128, bf16=False)
    dataset = datasets.Dataset.from_list(sft.conversations(rows, rules, "compact"))
    ours = sft.trainer_class()(model=model, args=sft.training_args(settings, tmp_path, held_out=False), train_dataset=dataset, processing_class=tok)
    trl = SFTTrainer(model=model, args=sft.training_args(settings, tmp_path, held_out=False), train_dataset=dataset, processing_class=tok)
    batch = next(iter(ours.get_train_dataloader()))
    prompt_tokens = (batch["labels"] == -100).sum()
    assert prompt_tokens > 16 * 10  # the prompt is masked out of the loss
    with torch.no_grad():
        a = ours.compute_loss(model, dict(batch))
        b = trl.compute_loss(model, dict(batch))
    assert torch.allclose(a, b, rtol=1e-5), (a, b)


def test_sft_examples_longer_than_max_length_are_refused_with_the_numbers():
    import families
    from rlheals import data

    game = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["game"]
    rows = [{"rule": "id", "cards": ["10", "J", "Q", "K"], "target": 24, "solution": "(10+10)+(10-10)/10"}] * 3
    examples = sft.conversations(rows, data.rules_from_config(game), "paper")
    tokenizer = families.tokenizer("qwen25")
    sft.check_lengths(tokenizer, {"training": examples, "held-out ID": examples[:1]}, 1024)
    with pytest.raises(ValueError, match=r"sft\.max_length: 64 tokens, and 1 of the 1 held-out ID examples are longer "
                                         r"\(the longest has \d+\)"):
        sft.check_lengths(tokenizer, {"training": [], "held-out ID": examples[:1]}, 64)

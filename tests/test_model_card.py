"""Model cards: every published model directory carries a README.md that says what the model is and how it
was made; the card is in the checksum manifest, replaces a copied source's card, and touches neither the
resume machinery nor the reruns. The study-level checks run on the finished smoke study."""

import json
import re
import shutil
import subprocess
import pytest

from rlheals import checkpoints, config, models
from rlheals.workflow import Study
from rlheals.data import sha256

from conftest import ROOT

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
        "max_positions": 64}
CARD = models.Card(what="SFT of `results/models/base`",
                   made={"training data": "`sft_train.jsonl` (sha256 `ab`)"},
                   settings={"sft": {"max_steps": 6, "lr": 0.001}}, unit="step", total=6, tags=("sft",))


@pytest.fixture
def commit(monkeypatch):
    monkeypatch.setenv(models.COMMIT_ENV, "v1.2-3-gabcdef0")
    models.code_version.cache_clear()
    yield "v1.2-3-gabcdef0"
    models.code_version.cache_clear()


def settings_of(card: str) -> dict:
    return json.loads(re.search(r"```json\n(.*?)\n```", card, re.S).group(1))


def test_a_card_says_what_the_model_is_and_how_it_was_made(commit):
    text = CARD.render("sft-2", 2)
    assert text.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n"
                           "tags:\n- rlheals\n- sft\n---\n")
    assert "\n# sft-2\n\nSFT of `results/models/base`, after step 2 of 6.\n" in text
    assert "| training data | `sft_train.jsonl` (sha256 `ab`) |" in text
    assert f"| code | rlheals {commit} |" in text
    assert settings_of(text) == {"sft": {"max_steps": 6, "lr": 0.001}}
    assert CARD.render("sft-2", 2) == text  # nothing but the commit varies between runs
    assert "after" not in models.Card(what="The base").render("base")
    # A model with a card of its own keeps it whole at the top; the study's part follows.
    own = "---\nlicense: apache-2.0\n---\n# Qwen2.5-7B-Instruct\n\nText.\n"
    merged = CARD.render("base", own=own)
    assert merged.startswith(own) and "\n## In this study (rlheals): base\n" in merged
    assert "\n### How it was made\n" in merged
    assert settings_of(merged) == {"sft": {"max_steps": 6, "lr": 0.001}}


def test_the_commit_comes_from_the_environment_then_git_then_unknown(monkeypatch):
    models.code_version.cache_clear()
    try:
        monkeypatch.delenv(models.COMMIT_ENV, raising=False)
        if (ROOT / ".git").exists() and shutil.which("git"):
            described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip()
            assert models.code_version() == described
        models.code_version.cache_clear()
        monkeypatch.setattr(shutil, "which", lambda name: None)  # no git on this node
        assert models.code_version() == "unknown"
        models.code_version.cache_clear()
        monkeypatch.setenv(models.COMMIT_ENV, "abc1234")
        assert models.code_version() == "abc1234"
    finally:
        models.code_version.cache_clear()


@pytest.fixture
def source(tmp_path):
    """A model directory with a card of its own, as the base model has."""
    tokenizer = models.build_tokenizer(["a", "b"])
    path = tmp_path / "checkpoint-2"
    model = models.build_tiny_model(tokenizer, TINY, seed=0)
    models.save_model(model, tokenizer, path, card="the base's card\n")
    return path


def test_published_models_carry_their_own_card_in_the_manifest_and_resume_ignores_it(source, tmp_path,
                                                                                      commit):
    work, out = tmp_path / "work", tmp_path / "models" / "sft-2"
    checkpoints.publish(source, out, work, CARD, 2)
    card = (out / models.CARD).read_text()
    assert card == CARD.render("sft-2", 2) and "the base's card" not in card
    listed = models.read_manifest(out)
    assert listed[models.CARD]["sha256"] == sha256(out / models.CARD)
    models.check_model_dir(out)  # every file, the card too, as its manifest says
    assert models.weights_sha256(out) == models.weights_sha256(source)
    # A killed job's rerun publishes again from the copy in its work directory, card and all.
    shutil.rmtree(out)
    checkpoints.republish({2: out}, work)
    assert (out / models.CARD).read_text() == card
    # The work directory's key reads the weights alone: a card (a new commit) never loses a resume point.
    other = tmp_path / "other"
    models.link_or_copy_tree(source, other, card="another card\n")
    assert checkpoints.work_dir("sft", "{}", "c", other) == checkpoints.work_dir("sft", "{}", "c", source)
    # An edit's model takes the files of its base model but not its card.
    edit = tmp_path / "edit-x"
    models.save_weights(models.load_weights(source), source, edit)
    assert not (edit / models.CARD).exists()
    models.check_model_dir(edit)


def test_a_local_model_keeps_its_own_card_with_the_studys_after_it(source, tmp_path, commit):
    local = tmp_path / "local"
    shutil.copytree(source, local)
    (local / models.CARD).write_text("---\nlicense: mit\n---\n# A released model\n")
    (local / models.MANIFEST).unlink()  # a user's directory has no manifest
    card = models.Card(what="The study's base model: the local model",
                       settings={"model": {"source": "local"}})
    models.import_local_model(local, tmp_path / "base", card=card)
    text = (tmp_path / "base" / models.CARD).read_text()
    assert text.startswith("---\nlicense: mit\n---\n# A released model\n\n## In this study (rlheals): base\n")
    # The source is left unchanged.
    assert (local / models.CARD).read_text() == "---\nlicense: mit\n---\n# A released model\n"
    models.check_model_dir(tmp_path / "base")


def test_every_model_of_the_smoke_study_has_a_card_that_matches_the_study(smoke_study):
    """Read-only checks of the session's smoke study: every published model directory's card names what
    it is, its step or update, its data by sha256 (as the data manifest lists them) and its config slice."""
    root = smoke_study.path
    results = root / "results"
    from snakemake.utils import validate  # it reads a `workflow` global: none here

    splits = json.loads((results / "data" / "manifest.json").read_text())["splits"]
    data_sha = {split: entry["sha256"] for split, entry in splits.items()}
    study_config = config.read(root / "config" / "config.yaml", root / "config" / "smoke.yaml")
    validate(study_config, str(root / "config" / "schema.yaml"))  # the defaults, as the Snakefile fills them
    study = Study(study_config)
    cards = {p.name: (p / models.CARD).read_text() for p in (results / "models").iterdir() if p.is_dir()}
    published = {"base", *(f"sft-{s}" for s in study.sft_steps), *study.rl_models}
    assert published <= set(cards), sorted(published - set(cards))
    for name, text in cards.items():
        assert text.startswith("---\n") and f"\n# {name}\n" in text and "| code | rlheals " in text, name
        assert models.read_manifest(results / "models" / name)[models.CARD]["sha256"] == sha256(
            results / "models" / name / models.CARD)
    assert "tiny base model" in cards["base"] and data_sha["sft_train"] not in cards["base"]
    for step in study.sft_steps:
        text = cards[f"sft-{step}"]
        assert f", after step {step} of 6." in text and data_sha["sft_train"] in text
        assert settings_of(text) == study.sft_slice()
    assert "GRPO from `results/models/sft-6`" in cards["rl-grpo-6"]
    assert "after update 2 of 2" in cards["rl-grpo-6"]
    assert "after update 1 of 2" in cards["rl-ppo-6-u1"] and data_sha["rl_train"] in cards["rl-ppo-6-u1"]
    assert settings_of(cards["rl-ppo-6"]) == study.rl_slice("ppo-6")
    control = cards["rl-sft_continue-6"]
    # 2 updates of 2 optimizer steps each (rl.control_steps_per_update)
    assert "continued-SFT control" in control and "after step 4 of 4" in control

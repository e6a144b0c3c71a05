import json
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

import families
from rlheals.config import ConfigError, check, type_command_line

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"


def default_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_shipped_configs_are_valid():
    check(default_config(), SCHEMA)
    smoke = default_config()
    smoke["data"].update(yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["data"])
    check(smoke, SCHEMA)


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (lambda c: c["data"]["splits"]["sft_train"].update(size=-5), "data.splits.sft_train.size", "minimum"),
        (lambda c: c["data"]["splits"]["id_test"].update(size="many"), "data.splits.id_test.size", "integer"),
        (lambda c: c["game"].update(target="24"), "game.target", "integer"),
        (lambda c: c.update(bogus=1), "bogus", "unknown key"),
        (lambda c: c["data"]["splits"]["rl_train"].update(colour="red"), "data.splits.rl_train.colour", "unknown key"),
        (lambda c: c["data"]["splits"]["ood_test"].update(rule="moon"), "data.splits.ood_test.rule", "unknown rule"),
        (lambda c: c["game"]["rules"]["ood"].update(hand="poker"), "game.rules.ood.hand", "poker"),
        (lambda c: c["game"]["rules"]["id"]["face_values"].pop("Q"), "game.rules.id.face_values", "'Q' is a required"),
        (lambda c: c["prompt"].update(format="essay"), "prompt.format", "essay"),
        (lambda c: c["verify"].update(strict_format="yes"), "verify.strict_format", "boolean"),
        (lambda c: c["data"].update(holdout_share=1.5), "data.holdout_share", "1.5"),
        (lambda c: c["data"]["splits"].pop("rl_train"), "data.splits", "'rl_train' is a required"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(edit, key, words):
    config = default_config()
    edit(config)
    with pytest.raises(ConfigError) as err:
        check(config, SCHEMA)
    message = str(err.value)
    assert message.startswith(f"config key {key}:"), message
    assert words in message


def test_workflow_rejects_bad_config_before_any_job(workflow):
    bad = workflow.write_config("bad.yaml", "data:\n  splits:\n    sft_train: {rule: id, size: -3}\n")
    proc = workflow.run("-n", configfile=bad, check=False)
    assert proc.returncode != 0
    assert "config key data.splits.sft_train.size" in proc.stderr + proc.stdout
    assert not (workflow.path / "results").exists()


@pytest.mark.parametrize("name, family", [("paper-qwen2.5-7b.yaml", "qwen25"),
                                          ("paper-llama-3.2-11b.yaml", "mllama")])
def test_paper_scale_configs_validate_and_plan_the_whole_study(workflow, tmp_path, name, family):
    # The model must be on the machine, even for a dry run: a tiny checkpoint of its family stands in.
    model = families.write(family, tmp_path / family)
    local = "model=" + json.dumps({"source": "local", "local_path": str(model)})
    jobs = workflow.dry_run_jobs("--config", local, configfile=f"config/{name}")
    assert jobs["base_local"] == 1 and "base_tiny" not in jobs and jobs["sft"] == 1
    assert jobs["rl"] == 6 * 2  # 6 starting steps x (ppo + the continued-SFT control), one seed
    assert jobs["restore"] == 9 and jobs["all"] == 1


def test_command_line_values_get_the_schema_types():
    """Snakemake reads nested --config values as strings; each becomes what its key takes."""
    config = default_config()
    given = {"eval": {"episodes": "4", "do_sample": "true", "temperature": "0.7"},
             "sft": {"save_steps": ["0", "5"], "max_steps": "5", "seed": ["0", "2"], "lr": "1e-5"},
             "rl": {"from_steps": ["peak", "5"], "ppo": {"epochs": "1"}},
             "spectrum": {"best_ood_step": "B"},
             "data": {"holdout_share": {"id_test": "0", "ood_test": "0.25"}},
             "model": {"local_path": "null", "source": "tiny"}}
    update_config(config, json.loads(json.dumps(given)))  # merged as snakemake merges them
    type_command_line(config, given, SCHEMA)
    check(config, SCHEMA)
    assert config["eval"]["episodes"] == 4 and config["eval"]["do_sample"] is True and config["eval"]["temperature"] == 0.7
    assert config["sft"]["save_steps"] == [0, 5] and config["sft"]["seed"] == [0, 2] and config["sft"]["lr"] == 1e-5
    assert config["rl"]["from_steps"] == ["peak", 5] and config["rl"]["ppo"]["epochs"] == 1
    assert config["rl"]["ppo"]["clip"] == 0.1  # a key the command line did not set keeps the file's value
    assert config["spectrum"]["best_ood_step"] == "B" and config["data"]["holdout_share"] == {"id_test": 0, "ood_test": 0.25}
    assert config["model"]["local_path"] is None and config["model"]["source"] == "tiny"
    # What does not read as the key's type stays as given, for the check to name.
    config["eval"]["episodes"] = "four"
    type_command_line(config, {"eval": {"episodes": "four"}}, SCHEMA)
    with pytest.raises(ConfigError, match="config key eval.episodes: 'four' is not of type 'integer'"):
        check(config, SCHEMA)


def test_workflow_types_nested_command_line_values(workflow):
    assert workflow.dry_run_jobs("--config", 'eval={"episodes": 4, "do_sample": true}', 'sft={"lr": 1e-5}')["all"] == 1
    proc = workflow.run("-n", "--config", 'eval={"episodes": 0}', check=False)
    assert proc.returncode != 0
    # Typed before the check: the message is about the value, not its type.
    assert "config key eval.episodes: 0 is less than the minimum of 1" in proc.stderr + proc.stdout

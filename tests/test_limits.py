"""What a local model must hold for the study: a pad token, a chat template for its turns, and positions
for its longest conversation (rlheals.limits)."""

import json
from pathlib import Path

import pytest
import yaml

import families
from rlheals import limits, models

ROOT = Path(__file__).resolve().parents[1]
def gpt2_dir(path: Path, n_positions: int) -> Path:
    """A tiny GPT-2 checkpoint (learned positions; a tokenizer without a pad token, as GPT-2's ships)."""
    return families.write("gpt2", path, positions=n_positions)


def study(**changes) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    return {**config, "prompt": {"format": "paper"}}


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_of_sequence_token(tmp_path):
    src = gpt2_dir(tmp_path / "gpt2", 4096)
    assert json.loads((src / "tokenizer_config.json").read_text()).get("pad_token") is None  # as saved
    tokenizer = models.load_tokenizer(src)
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    # What the evaluation engine's padding needs: a number, not None.
    batch = tokenizer(["a", "a longer one"], padding=True)
    assert all(isinstance(i, int) for row in batch["input_ids"] for i in row)
    assert limits.pad_token_fallback(tokenizer) is None  # already there: nothing to do
    assert limits.pad_token_fallback(families.tokenizer("qwen25")) is None


def test_learned_positions_too_short_for_the_longest_conversation_are_refused_with_the_numbers(tmp_path):
    short = gpt2_dir(tmp_path / "short", 128)
    with pytest.raises(ValueError, match=r"longest conversation the study can produce is \d+ tokens, and the model "
                                         r"has 128 positions \(learned position embeddings: a hard limit\)"):
        limits.check_study(short, study())
    # Fewer tries and shorter answers fit: the bound follows the protocol.
    needed_5 = limits.longest_conversation(models.load_tokenizer(short), *limits.study_turns("paper", 24, {"J": 11, "Q": 12, "K": 13}), 5, 48)
    needed_1 = limits.longest_conversation(models.load_tokenizer(short), *limits.study_turns("paper", 24, {"J": 11, "Q": 12, "K": 13}), 1, 48)
    assert needed_1 + 4 * 2 * 48 < needed_5
    roomy = gpt2_dir(tmp_path / "roomy", 8192)
    assert limits.check_study(roomy, study()) is None
    assert limits.positions(roomy) == limits.Positions(8192, True)


def test_rotary_positions_past_their_limit_give_a_warning_not_an_error(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    src = tmp_path / "llama"
    tokenizer = families.tokenizer("llama3")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(src)
    tokenizer.save_pretrained(src)
    assert limits.positions(src) == limits.Positions(64, False)
    warning = limits.check_study(src, study())
    assert warning and "has 64 positions (rotary" in warning


def test_a_chat_template_that_drops_the_feedback_turns_is_refused(tmp_path):
    src = gpt2_dir(tmp_path / "gpt2", 8192)
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "chat_template.jinja").unlink(missing_ok=True)
    config["chat_template"] = "{{ messages[0]['content'] }}"  # the first turn only
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="drops the study's prompt or feedback turns"):
        limits.check_study(src, study())
    config["chat_template"] = "{{ raise_exception('Conversation roles must alternate') }}"
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot render the study's conversation: Conversation roles must alternate"):
        limits.check_study(src, study())


def test_workflow_refuses_a_local_model_too_short_for_the_study_before_any_job(workflow, tmp_path):
    short = gpt2_dir(tmp_path / "short", 128)
    overlay = workflow.write_config("local.yaml", f"model: {{source: local, local_path: {short}}}\nprompt: {{format: paper}}\n")
    proc = workflow.run("-n", configfile=("config/smoke.yaml", overlay), check=False)
    assert proc.returncode != 0
    assert "has 128 positions (learned position embeddings: a hard limit)" in proc.stderr + proc.stdout
    assert not (workflow.path / "results").exists()


def test_the_default_tiny_model_holds_the_longest_conversation_of_the_default_study():
    from rlheals import pretrain

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    tokenizer = models.build_tokenizer(pretrain.vocabulary(24))
    needed = limits.needed_positions(tokenizer, config)
    assert 256 < needed <= config["model"]["tiny"]["max_positions"]  # 256 (the size it had) was short
    found = limits.Positions(config["model"]["tiny"]["max_positions"], learned=False)
    assert limits.check_positions("tiny", found, needed) is None
    assert "rotary" in limits.check_positions("tiny", limits.Positions(256, learned=False), needed)


def test_a_missing_or_incomplete_local_model_is_named_with_all_that_it_lacks(tmp_path):
    model = gpt2_dir(tmp_path / "gpt2", 4096)
    assert limits.missing_files(model) == []
    assert limits.missing_files(tmp_path / "nowhere") == ["no such directory"]
    assert limits.missing_files(model / "config.json") == ["not a directory"]
    (model / "config.json").unlink()
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    (model / "tokenizer.json").unlink()
    with pytest.raises(ValueError) as err:
        limits.check_files(model)
    message = str(err.value)
    assert message.startswith(f"config key model.local_path: {model}: no config.json; no weights "
                              "*.safetensors (only pickled pytorch_model.bin, never loaded")
    assert "; no tokenizer files (tokenizer.json, tokenizer.model, vocab.json with merges.txt" in message


def test_a_sharded_model_missing_a_shard_is_refused_naming_it(tmp_path):
    model = gpt2_dir(tmp_path / "gpt2", 4096)
    names = limits.weight_names(model)
    shards = {name: f"model-0000{i % 2 + 1}-of-00002.safetensors" for i, name in enumerate(names)}
    # One shard of two, as a copy interrupted half-way leaves it.
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    (missing,) = limits.missing_files(model)
    assert missing == ("weight shards listed in model.safetensors.index.json but not there: "
                       "model-00002-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text("{}")
    assert limits.missing_files(model) == [
        "model.safetensors.index.json is not a safetensors index (no weight_map)"]


def test_workflow_refuses_a_missing_or_incomplete_local_model_before_any_job(workflow, tmp_path):
    # The paper config as shipped names /models/Qwen2.5-7B-Instruct: on a machine without it, a dry run
    # stops at the config check with the path named, instead of planning jobs that fail later.
    shipped = "/models/Qwen2.5-7B-Instruct"
    if Path(shipped).exists():
        pytest.skip(f"{shipped} is on this machine")
    proc = workflow.run("-n", configfile="config/paper-qwen2.5-7b.yaml", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"config key model.local_path: {shipped}: no such directory" in out
    assert "Job stats" not in out and not (workflow.path / "results").exists()

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    overlay = workflow.write_config("local.yaml", f"model: {{source: local, local_path: {partial}}}\n")
    proc = workflow.run("-n", configfile=("config/smoke.yaml", overlay), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"config key model.local_path: {partial}: no weights *.safetensors; no tokenizer files" in out
    assert "Job stats" not in out and not (workflow.path / "results").exists()

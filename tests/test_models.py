import json
import os
from pathlib import Path

import pytest
import torch

from rlheals import cards, data, models, pretrain

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "max_positions": 128}


@pytest.fixture(scope="module")
def tokenizer():
    return models.build_tokenizer(pretrain.vocabulary(24))


def test_every_prompt_and_target_is_in_the_vocabulary(tokenizer):
    ood = cards.Rule("ood", (11, 12, 13), "face_card")
    for values in cards.ALL_VALUE_MULTISETS[::3]:
        for solution in cards.solve(values)[:2]:
            ranks = [cards.RANKS[v - 1] for v in values]
            text = cards.compact_prompt(ranks, ood, 24) + " " + cards.compact_target(ranks, ood, 24, solution)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids, text
            # Word-level: decoding gives the text back, token for token.
            assert tokenizer.decode(ids) == text


def test_feedback_turns_are_readable(tokenizer):
    from rlheals.verify import Verifier

    feedback = Verifier()("11 * 3 = 34 ;", [3, 11, 2, 11]).feedback
    ids = tokenizer(feedback, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_chat_template_prompt_is_a_prefix_of_the_conversation(tokenizer):
    user = [{"role": "user", "content": "rule J 10 Q 10 K 10 cards cA c2 c3 c4 target 24 =>"}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": "1 2 3 4 ;"}])
    prompt, full = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt), list(full["input_ids"] if hasattr(full, "keys") else full)
    assert full[: len(prompt)] == prompt
    assert full[-1] == tokenizer.eos_token_id and full[0] == tokenizer.bos_token_id


def test_tiny_model_saves_and_loads_offline(tmp_path, tokenizer):
    model = models.build_tiny_model(tokenizer, TINY, seed=0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = models.load_model(tmp_path)
    assert loaded.config.num_key_value_heads == 2  # grouped-query attention: k/v are not square
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    again = models.load_tokenizer(tmp_path)
    assert again.padding_side == "left" and again.chat_template == models.CHAT_TEMPLATE
    # Same seed, same weights.
    twin = models.build_tiny_model(tokenizer, TINY, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_local_source_links_a_hugging_face_directory(tmp_path, tokenizer):
    src = tmp_path / "local-model"
    models.build_tiny_model(tokenizer, TINY, seed=1).save_pretrained(src)
    tokenizer.save_pretrained(src)
    dst = tmp_path / "results" / "base"
    dst.parent.mkdir()
    models.import_local_model(src, dst)
    assert os.path.samefile(src / "model.safetensors", dst / "model.safetensors")  # linked, not copied
    assert models.load_model(dst).config.hidden_size == 32


def test_bad_model_directories_are_named(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.check_model_dir(tmp_path / "nowhere")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="only safetensors"):
        models.check_model_dir(pickled)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.check_model_dir(no_config)


def test_pretraining_corpus_never_uses_the_target_with_a_test_multiset():
    banned = {(1, 2, 3, 4), (3, 3, 8, 8), (2, 3, 11, 11)}
    docs = pretrain.make_corpus(3000, 24, banned, {"numbers_target": 0.5, "numbers_other": 0.2, "cards_other": 0.3}, 0)
    shares = {k: sum(d["kind"] == k for d in docs) / len(docs) for k in pretrain.KINDS}
    assert abs(shares["numbers_target"] - 0.5) < 0.05 and abs(shares["cards_other"] - 0.3) < 0.05
    four = pretrain.make_corpus(400, 24, banned, {"numbers_target": 1, "numbers_other": 0, "cards_other": 0}, 1,
                                {"two": 0, "three": 0, "four": 1})
    assert all(len(pretrain.doc_key(d)) == 4 and pretrain.doc_key(d) not in banned for d in four)
    # By default no 4-number puzzle has the study's target: SFT is where the model first meets the task.
    assert not [d for d in docs if d["target"] == 24 and len(pretrain.doc_key(d)) == 4]
    for doc in docs:
        assert doc["target"] != 24 or doc["kind"] == "numbers_target"
        if doc["kind"] == "numbers_target":
            assert pretrain.doc_key(doc) not in banned
        # Every document's answer is a correct solution of its own puzzle.
        values = [int(v) for v in doc["answer"].split(" ; ")[0].split()]
        from rlheals.verify import Verifier

        assert Verifier(target=doc["target"])(doc["answer"], values).correct, doc
    # In the steps format no answer restates its numbers, and each is still a correct solution.
    steps = pretrain.make_corpus(200, 24, banned, {"numbers_target": 1, "numbers_other": 1, "cards_other": 1}, 2,
                                 restate=False)
    for doc, again in zip(steps, pretrain.make_corpus(200, 24, banned, {"numbers_target": 1, "numbers_other": 1,
                                                                         "cards_other": 1}, 2)):
        assert doc["answer"] == again["answer"].split(" ; ", 1)[1]
    assert pretrain.make_corpus(50, 24, banned, {"numbers_target": 1, "numbers_other": 1, "cards_other": 1}, 3) == \
        pretrain.make_corpus(50, 24, banned, {"numbers_target": 1, "numbers_other": 1, "cards_other": 1}, 3)


def test_numeric_puzzles_may_use_the_banned_multisets_when_asked_and_card_puzzles_never_do():
    banned = {m for m in cards.ALL_VALUE_MULTISETS if cards.can_reach(m, 24)}  # every solvable hand
    mix = {"numbers_target": 0.5, "numbers_other": 0, "cards_other": 0, "cards_target": 0.5}
    four = {"two": 0, "three": 0, "four": 1}
    known = pretrain.make_corpus(400, 24, set(), mix, 6, four, numbers_banned=set())
    numeric = [d for d in known if d["kind"] == "numbers_target"]
    assert numeric and all(len(pretrain.doc_key(d)) == 4 for d in numeric)
    # With every solvable multiset banned, card puzzles for the target cannot be made at all; numeric ones
    # can when their own ban is lifted, and then use banned multisets.
    only_numbers = {"numbers_target": 1, "numbers_other": 0, "cards_other": 0, "cards_target": 0}
    lifted = pretrain.make_corpus(200, 24, banned, only_numbers, 7, four, numbers_banned=set())
    assert all(pretrain.doc_key(d) in banned for d in lifted)
    with pytest.raises(ValueError, match="every value multiset that reaches 24 is banned"):  # the default ban
        pretrain.make_corpus(10, 24, banned, only_numbers, 7, four)


def test_card_puzzles_for_the_target_never_use_a_study_rule_or_a_banned_multiset():
    study_rules = [(10, 10, 10), (11, 12, 13)]
    banned = {(1, 2, 3, 4), (2, 3, 4, 10), (1, 1, 12, 12)}
    docs = pretrain.make_corpus(300, 24, banned, {"numbers_target": 0, "numbers_other": 0, "cards_other": 0,
                                                  "cards_target": 1}, 5, restate=False, study_rules=study_rules)
    from rlheals.verify import Verifier

    checker = Verifier(target=24)
    for doc in docs:
        assert doc["kind"] == "cards_target" and doc["target"] == 24 and doc["prompt"].startswith("rule J ")
        assert pretrain.written_rule(doc) not in study_rules and pretrain.doc_key(doc) not in banned
        assert checker(doc["answer"], pretrain.card_values(doc)).correct, doc
    assert len({pretrain.written_rule(d) for d in docs}) > 100  # many rules, not a few memorised ones


def test_the_text_model_of_a_vision_checkpoint_reloads_after_it_is_saved(tmp_path, tokenizer):
    """Llama-3.2-Vision's layout: the causal-LM auto class loads its text model, which saves itself with a
    config (`mllama_text_model`) the auto class cannot map; it loads again with the class config.json names."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
                  image_size=28, patch_size=14, max_num_tiles=4, intermediate_layers_indices=[0], vision_output_dim=64)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, cross_attention_layers=[1],
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    MllamaForConditionalGeneration(MllamaConfig(vision_config=vision, text_config=text)).save_pretrained(tmp_path / "vision")
    tokenizer.save_pretrained(tmp_path / "vision")
    text_model = models.load_model(tmp_path / "vision")
    assert type(text_model).__name__ == "MllamaForCausalLM"
    models.save_model(text_model, tokenizer, tmp_path / "sft-10")
    again = models.load_model(tmp_path / "sft-10")
    assert type(again).__name__ == "MllamaForCausalLM"
    for (name, a), (_, b) in zip(text_model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    # A config that names no causal-LM class is refused with the names, never built as another class.
    again.save_pretrained(tmp_path / "renamed")
    config = json.loads((tmp_path / "renamed" / "config.json").read_text())
    (tmp_path / "renamed" / "config.json").write_text(json.dumps({**config, "architectures": ["MllamaForConditionalGeneration"]}))
    with pytest.raises(ValueError, match=r"names no causal-LM class \(architectures: \['MllamaForConditionalGeneration'\]\)"):
        models.load_model(tmp_path / "renamed")

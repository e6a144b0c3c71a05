import collections
import hashlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import types

import polars as pl
import pytest
import torch

from rlheals import cards, data, episodes, evaluate, model_ids, models, pretrain, tables
from rlheals import decoding as decoding_module
from rlheals.verify import Verifier

GAME = {"target": 24, "rules": {"id": {"face_values": {"J": 10, "Q": 10, "K": 10}, "hand": "uniform"},
                                "ood": {"face_values": {"J": 11, "Q": 12, "K": 13}, "hand": "face_card"}}}
DATA = {"holdout_seed": 0, "holdout_share": 0.25, "splits": {
    "id_test": {"rule": "id", "size": 12, "seed": 3}, "ood_test": {"rule": "ood", "size": 12, "seed": 4},
    "sft_train": {"rule": "id", "size": 1, "seed": 1}, "rl_train": {"rule": "id", "size": 1, "seed": 2}}}


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM whose answers are known: it spells out `answer_for(conversation text)`
    one token per forward. It keeps the token ids it is fed in the engine's KV cache (as the "keys"), so
    it reads the conversation exactly as the cache holds it (holes and padding masked out): a cache the
    engine mismanaged, or a generated token not fed back, garbles its answer."""

    def __init__(self, tokenizer, answer_for):
        super().__init__()
        self.tokenizer, self.answer_for = tokenizer, answer_for
        self.calls = 0  # prefill forwards: one per turn and batch
        self.assistant = tokenizer.convert_tokens_to_ids(models.ASSISTANT)
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep):
        self.calls += input_ids.shape[1] > 1
        ids = input_ids.float()[:, None, :, None]
        history = past_key_values.update(ids, ids, 0)[0][:, 0, :, 0].long()
        logits = torch.full((len(history), len(self.tokenizer)), -1.0)
        masks = attention_mask.bool().flatten(1)  # a decode step's mask comes as (rows, 1, 1, columns)
        for row, (tokens, mask) in enumerate(zip(history, masks)):
            seen = tokens[mask].tolist()
            turn_start = len(seen) - seen[::-1].index(self.assistant)
            text = self.tokenizer.decode(seen[:turn_start], skip_special_tokens=True)
            answer = self.tokenizer(self.answer_for(text) + " </s>", add_special_tokens=False)["input_ids"]
            logits[row, answer[min(len(seen) - turn_start, len(answer) - 1)]] = 1.0
        return types.SimpleNamespace(logits=logits[:, None])


def solve_from_prompt(text: str) -> str:
    """A perfect player: reads the last prompt's rule and cards, answers with a solver solution."""
    words = text[text.rindex("rule J"):].split()
    j, q, k = int(words[2]), int(words[4]), int(words[6])
    hand = [w[1:] for w in words[words.index("cards") + 1 : words.index("target")]]
    rule = cards.Rule("prompted", (j, q, k))
    return cards.compact_target(hand, rule, 24, cards.solve(rule.values(hand))[0])


@pytest.fixture(scope="module")
def setting():
    tokenizer = models.build_tokenizer(pretrain.vocabulary(24))
    rules = data.rules_from_config(GAME)
    rows = data.make_split("id_test", GAME, DATA) + data.make_split("ood_test", GAME, DATA)
    return tokenizer, episodes.from_rows(rows, rules, "compact")


def test_a_perfect_player_scores_100_percent(setting):
    tokenizer, hands = setting
    model = ScriptedModel(tokenizer, solve_from_prompt)
    rows = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(Verifier(), 5, evaluate.Decoding(), 5))
    assert all(r["correct"] and r["tries"] == 1 and r["value_mapping"] for r in rows)
    summary = episodes.summarize(rows)
    assert summary["id"]["accuracy"] == summary["ood"]["accuracy"] == 1.0
    assert summary["ood"]["pass_at_1"] == 1.0 and summary["ood"]["format_error_rate"] == 0.0
    assert model.calls == 5  # 24 episodes in batches of 5, all solved at the first try


def test_garbage_scores_zero_and_uses_every_try(setting):
    tokenizer, hands = setting
    model = ScriptedModel(tokenizer, lambda text: "banana ; +")
    rows = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(Verifier(), 5, evaluate.Decoding(), 64))
    assert not any(r["correct"] for r in rows)
    assert all(r["tries"] == 5 and len(r["answers"]) == 5 and r["format_error"] for r in rows)
    assert episodes.summarize(rows)["id"]["accuracy"] == 0.0


def test_feedback_reaches_the_next_turn(setting):
    """A player that fails once, then reads the feedback turn and answers correctly: solved at try 2."""
    tokenizer, hands = setting
    model = ScriptedModel(tokenizer, lambda t: solve_from_prompt(t) if "failed this trial" in t else "1 + 1 = 2 ;")
    rows = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(Verifier(), 5))
    assert all(r["correct"] and r["tries"] == 2 and not r["first_correct"] for r in rows)
    summary = episodes.summarize(rows)["id"]
    assert summary["accuracy"] == 1.0 and summary["pass_at_1"] == 0.0


def test_cached_batches_match_one_episode_at_a_time(setting):
    """The engine keeps each batch's KV cache across tries; under greedy decoding it must answer exactly
    as a fresh `generate` per try on the whole conversation. A random model's answers rarely survive
    decode-then-re-encode (padding tokens, no end of turn), which exercises the cache rollback too."""
    tokenizer, hands = setting
    model = models.build_tiny_model(tokenizer, {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                "num_heads": 2, "num_kv_heads": 1, "max_positions": 512}, seed=0)
    decoding = evaluate.Decoding(max_new_tokens=6)
    verifier = Verifier()
    # Make the model emit <unk> where it would emit its favourite word: decoding drops <unk>, so the
    # re-encoded conversation diverges from the cached tokens and the engine must roll the cache back.
    answers = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(verifier, 1, decoding))
    favourite = collections.Counter(w for r in answers for w in r["answers"][0].split()).most_common(1)[0][0]
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[tokenizer.unk_token_id] = 2 * head[tokenizer.convert_tokens_to_ids(favourite)]
    batched = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(verifier, 3, decoding, 7))
    reference = evaluate.run_episodes_one_at_a_time(model, tokenizer, hands, evaluate.Protocol(verifier, 3, decoding))
    assert batched == reference
    assert all(r["tries"] == 3 for r in batched)  # nothing solved: every try went through the cache
    assert decoding_module.GQA_SWITCH not in os.environ  # set around the decoder's forwards only: no leak


def test_forked_workers_share_the_episodes_and_answer_as_one_process(setting, monkeypatch, tmp_path):
    """Episodes shared out over forked worker processes give the same rows, in the same order, as one
    process; the parent gets its thread count back; a worker's error or death comes back as an error
    naming it."""
    tokenizer, hands = setting
    model = models.build_tiny_model(tokenizer, {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                "num_heads": 2, "num_kv_heads": 1, "max_positions": 512}, seed=2)
    decoding, verifier, parent = evaluate.Decoding(max_new_tokens=8), Verifier(), os.getpid()
    monkeypatch.setattr(evaluate, "MIN_SHARE", 1)
    calls = tmp_path / "pids"

    def verify_and_record(answer, values):  # appends survive the fork; list appends would not
        with calls.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return verifier(answer, values)

    one = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(verifier, 3, decoding, 5))
    threads = torch.get_num_threads()
    shared = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(verify_and_record, 3, decoding, 5), workers=3)
    assert shared == one
    assert len(set(calls.read_text().split())) == 3 and str(parent) in calls.read_text().split()
    assert torch.get_num_threads() == threads

    def fail_in_a_child(answer, values):
        if os.getpid() != parent:
            raise ValueError("bad hand in a worker")
        return verifier(answer, values)

    with pytest.raises(RuntimeError, match="(?s)evaluation worker .* failed.*ValueError: bad hand in a worker"):
        evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(fail_in_a_child, 1, decoding), workers=2)

    def one_child_dies_the_others_hang(answer, values):
        if os.getpid() != parent:
            try:
                (tmp_path / "died").open("x").close()
                os._exit(3)
            except FileExistsError:
                time.sleep(600)
        return verifier(answer, values)

    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"evaluation worker \d+ died \(exit code 3\)"):
        evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(one_child_dies_the_others_hang, 1, decoding), workers=3)
    assert time.monotonic() - start < 300  # liveness, not speed: the death is seen without waiting out the hang
    assert not multiprocessing.active_children()  # and the hanging worker was stopped


def test_rows_that_end_early_leave_the_step_batch_and_feedback_turns_are_fed_in_bands(setting, monkeypatch):
    """Answers ending at different steps: finished rows are swapped out of the step batch and come back
    for the next turn; feedback turns of different lengths are prefilled in bands (longest rows first).
    The answers and every later try still equal one-at-a-time generation."""
    tokenizer, hands = setting
    model = models.build_tiny_model(tokenizer, {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                "num_heads": 2, "num_kv_heads": 1, "max_positions": 512}, seed=1)
    decoding, verifier = evaluate.Decoding(max_new_tokens=12), Verifier()
    first = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(verifier, 1, decoding))
    common = collections.Counter(w for r in first for w in r["answers"][0].split()[1:]).most_common(3)[-1][0]
    with torch.no_grad():  # end the answer where the model would say a fairly common word
        head = model.get_output_embeddings().weight
        head[tokenizer.eos_token_id] = 1.5 * head[tokenizer.convert_tokens_to_ids(common)]
    parks, plans = [], []
    park, plan = decoding_module.Batch._park, decoding_module.prefill_plan
    monkeypatch.setattr(decoding_module.Batch, "_park", lambda self, done: parks.append(int(done.sum())) or park(self, done))
    monkeypatch.setattr(decoding_module, "prefill_plan", lambda lengths: plans.append(plan(lengths, forward_cost=1)) or plans[-1])
    batched = evaluate.run_episodes(model, tokenizer, hands, evaluate.Protocol(verifier, 3, decoding, 9))
    reference = evaluate.run_episodes_one_at_a_time(model, tokenizer, hands, evaluate.Protocol(verifier, 3, decoding))
    assert batched == reference
    lengths = {len(a.split()) for r in batched for a in r["answers"]}
    assert len(lengths) > 2 and len(parks) > 3  # answers of several lengths, rows parked several times
    assert max(map(len, plans)) > 3  # some turn was fed in three bands or more


def test_prefill_plan_splits_only_where_it_saves_more_than_a_forward():
    assert decoding_module.prefill_plan([5, 5, 5]) == [5, 0]  # equal lengths: one forward
    assert decoding_module.prefill_plan([40, 10, 10, 10], forward_cost=0) == [40, 10, 0]
    assert decoding_module.prefill_plan([40, 10, 10, 10], forward_cost=200) == [40, 0]  # 90 padded tokens < 200
    lengths = [48] * 3 + [20] * 200 + [3] * 30
    plan = decoding_module.prefill_plan(lengths, forward_cost=96)
    padded = lambda plan: sum(sum(n > low for n in lengths) * (high - low) for high, low in zip(plan, plan[1:]))  # noqa: E731
    assert plan[0] == 48 and plan[-1] == 0 and padded(plan) < 0.6 * padded([48, 0])
    assert padded(plan) + 96 * (len(plan) - 1) <= min(padded(p) + 96 * (len(p) - 1) for p in ([48, 0], [48, 20, 0], [48, 20, 3, 0]))


def solve_numbers(text: str) -> str:
    """A player who knows the arithmetic and no card rule: solves bare numeric puzzles, fails card ones."""
    if "numbers" not in text:
        return "1 + 1 = 2 ;"
    words = text[text.rindex("numbers"):].split()
    values = [int(w) for w in words[1 : words.index("target")]]
    return cards.steps_answer(values, cards.solve(values, 24)[0])


def test_the_numbers_probe_asks_each_multiset_once_and_lays_its_results_on_the_hands(setting):
    tokenizer, hands = setting
    rows = [{"id": h.id, "values": list(h.values), "target": 24} for h in hands if h.rule == "ood"]
    rows.append({**rows[0], "id": "ood_test-again", "values": rows[0]["values"][::-1]})  # the same multiset
    probe = episodes.numbers_probe(rows, "compact")
    assert len(probe) == len({cards.value_key(r["values"]) for r in rows}) < len(rows)
    assert probe[0].prompt == f"numbers {' '.join(map(str, rows[0]['values']))} target 24 =>"
    assert probe[0].cards == ()
    assert episodes.numbers_probe(rows, "paper")[0].prompt.count(str(rows[0]["values"])) == 1
    model = ScriptedModel(tokenizer, solve_numbers)
    protocol = evaluate.Protocol(Verifier(), 2, evaluate.Decoding(), 5)
    played = evaluate.run_episodes(model, tokenizer, probe, protocol)
    assert all(r["correct"] and r["rule"] == episodes.NUMBERS for r in played)
    ood = evaluate.run_episodes(model, tokenizer, [h for h in hands if h.rule == "ood"], protocol)
    assert not any(r["correct"] for r in ood)  # the same player cannot read the cards
    laid = episodes.numbers_by_hand(played, ood)
    assert [r["episode"] for r in laid] == [r["episode"] for r in ood] and all(r["correct"] for r in laid)
    with pytest.raises(ValueError, match="no result for hand"):
        episodes.numbers_by_hand(played[1:], ood)


def test_wilson_interval():
    low, high = episodes.wilson(50, 100)
    assert abs(low - 0.4038) < 1e-3 and abs(high - 0.5962) < 1e-3
    assert episodes.wilson(0, 20)[0] == 0.0 and episodes.wilson(20, 20)[1] == 1.0


def test_model_ids_and_accuracy_table():
    assert model_ids.parse("sft-120")["sft_step"] == 120 and model_ids.parse("rl-grpo-100-s1-u30")["rl_update"] == 30
    with pytest.raises(ValueError, match="not a model id"):
        model_ids.parse("sft_120")
    row = {"rule": "ood", "correct": True, "first_correct": False, "format_error": False, "value_mapping": True, "tries": 2}
    table = tables.accuracy_table({"base": [row, {**row, "correct": False}], "sft-10": [row]})
    assert table.height == 2 and table.filter(pl.col("model_id") == "base")["accuracy"].item() == 0.5


def test_evaluation_rule_is_deterministic_and_refuses_broken_models(finished_study):
    workflow = finished_study  # its evaluations made by the smoke study, then again here
    workflow.run("results/eval/sft-6.parquet", "results/eval/sft-2.parquet")
    out = workflow.path / "results" / "eval" / "sft-6.parquet"
    first = hashlib.sha256(out.read_bytes()).hexdigest()
    table = pl.read_parquet(out)
    assert table.height == 48 and set(table["rule"]) == {"id", "ood"}  # 24 episodes per rule (smoke)
    assert table["tries"].max() <= 5
    out.unlink()
    workflow.run("results/eval/sft-6.parquet")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == first  # greedy twice: identical parquet
    log = (workflow.path / "logs" / "eval" / "sft-6.log").read_text()
    assert "loaded on cpu in" in log

    # A truncated weights file: the job fails naming the file and writes no result.
    (workflow.path / "results" / "eval" / "sft-4.parquet").unlink()  # the smoke study's, of the intact model
    weights = workflow.path / "results" / "models" / "sft-4" / "model.safetensors"
    data_bytes = weights.read_bytes()
    weights.unlink()  # the file may be a hard link shared with the work copy: replace, do not edit in place
    weights.write_bytes(data_bytes[: len(data_bytes) // 2])
    proc = workflow.run("results/eval/sft-4.parquet", check=False)
    assert proc.returncode != 0
    log = (workflow.path / "logs" / "eval" / "sft-4.log").read_text()
    assert "sft-4/model.safetensors: " in log and "corrupted" in log
    assert not (workflow.path / "results" / "eval" / "sft-4.parquet").exists()
    # A missing model directory: named too.
    shutil.rmtree(workflow.path / "results" / "models" / "sft-4")
    models_missing = subprocess.run(
        [sys.executable, "-c", "from rlheals import models; models.load_model('results/models/sft-4')"],
        cwd=workflow.path, capture_output=True, text=True,
    )
    assert "results/models/sft-4 does not exist" in models_missing.stderr


def test_evaluation_imports_no_trainer_code(workflow):
    code = ("import sys, polars, torch; from rlheals import data, evaluate, models, runlog, tables; "
            "from rlheals.verify import Verifier; print('trl' in sys.modules, 'deepspeed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]

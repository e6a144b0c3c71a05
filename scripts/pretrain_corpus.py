"""The tiny model's synthetic pretraining corpus (results/data/pretrain.jsonl) and its leakage check."""

import json
from collections import Counter

from rlheals import cards, data, pretrain, runlog

log = runlog.setup(snakemake.log[0])
cfg = json.loads(snakemake.params.cfg)
target, settings = cfg["target"], cfg["pretrain"]
test_keys = {cards.value_key(r["values"]) for path in snakemake.input.tests for r in data.read_jsonl(path)}
# Banned with the target: every test and selection hand's value multiset, and every multiset reserved for them.
banned = test_keys | frozenset().union(*data.heldout_multisets(cfg["game"], cfg["data"]).values())
# With `test_multisets_as_numbers`, numeric puzzles may use them (as bare numbers, never as cards).
numbers_known = settings["test_multisets_as_numbers"]
study_rules = [rule.face_values for rule in data.rules_from_config(cfg["game"]).values()]
docs = pretrain.make_corpus(settings["corpus_size"], target, banned, settings["mix"], settings["seed"],
                            settings["target_puzzle_sizes"], restate=cards.restates_values(cfg["format"]),
                            study_rules=study_rules, numbers_banned=frozenset() if numbers_known else None)
data.write_jsonl(docs, snakemake.output.corpus)
with_banned = [d for d in docs if d["target"] == target and pretrain.doc_key(d) in banned]
leaked = sum(d["kind"] != "numbers_target" or not numbers_known for d in with_banned)
if leaked:
    raise RuntimeError(f"{leaked} pretraining documents hold a test hand's or a reserved value multiset")
manifest = {
    "count": len(docs),
    "by_kind": dict(Counter(d["kind"] for d in docs)),
    "target": target,
    "card_puzzles_with_target": sum(d["kind"] == "cards_target" for d in docs),
    "card_puzzles_with_target_under_a_study_rule": sum(
        d["kind"] == "cards_target" and pretrain.written_rule(d) in study_rules for d in docs),
    "four_number_puzzles_with_target": sum(d["kind"] == "numbers_target" and len(pretrain.doc_key(d)) == 4 for d in docs),
    "test_value_multisets_banned": len(test_keys),
    "value_multisets_banned": len(banned),
    "target_puzzles_with_a_test_multiset": leaked,
    "numeric_puzzles_with_a_test_multiset": len(with_banned) - leaked,
    "sha256": data.sha256(snakemake.output.corpus),
}
if manifest["card_puzzles_with_target_under_a_study_rule"]:
    raise RuntimeError(f"{manifest['card_puzzles_with_target_under_a_study_rule']} card puzzles for the target use a study rule")
runlog.write_json_atomic(manifest, snakemake.output.manifest)
log.info("pretraining corpus: %s", manifest)

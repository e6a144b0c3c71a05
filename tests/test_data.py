import json

from conftest import AFTER_SFT
from rlheals import cards, data, pretrain
from rlheals.data import SPLITS, TEST_SPLITS, TRAIN_SPLITS

GAME = {
    "target": 24,
    "rules": {
        "id": {"face_values": {"J": 10, "Q": 10, "K": 10}, "hand": "uniform"},
        "ood": {"face_values": {"J": 11, "Q": 12, "K": 13}, "hand": "face_card"},
    },
}
DATA = {
    "holdout_seed": 0,
    "holdout_share": 0.25,
    "splits": {
        "sft_train": {"rule": "id", "size": 300, "seed": 1},
        "rl_train": {"rule": "id", "size": 100, "seed": 2},
        "id_test": {"rule": "id", "size": 60, "seed": 3},
        "ood_test": {"rule": "ood", "size": 60, "seed": 4},
        "id_select": {"rule": "id", "size": 40, "seed": 5},
        "ood_select": {"rule": "ood", "size": 40, "seed": 6},
    },
}


def keys(rows):
    return {cards.value_key(r["values"]) for r in rows}


def test_splits_are_solvable_follow_their_rule_and_never_leak():
    made = {split: data.make_split(split, GAME, DATA) for split in SPLITS}
    rules = data.rules_from_config(GAME)
    for split, rows in made.items():
        assert len(rows) == DATA["splits"][split]["size"]
        for row in rows:
            rule = rules[row["rule"]]
            assert row["values"] == rule.values(row["cards"])
            assert cards.can_reach(row["values"], 24) and row["solution"] in cards.solve(row["values"])
        if split == "ood_test":
            assert all(any(c in cards.FACES for c in r["cards"]) for r in rows)
    train = keys(made["sft_train"]) | keys(made["rl_train"])
    assert not train & (keys(made["id_test"]) | keys(made["ood_test"]))
    # The ID test split is a real held-out set of ID multisets, not an empty or trivial one.
    assert len(keys(made["id_test"])) > 20


def test_a_paper_style_id_split_shares_training_multisets_but_never_an_ood_one():
    """holdout_share 0 for id_test deals ID test hands from the whole ID distribution (as the papers do):
    they share multisets with training, which the manifest counts but does not call a leak; OOD multisets
    stay out of training, and a reserved split that leaks is named."""
    paper = {**DATA, "holdout_share": {"id_test": 0.0, "ood_test": 0.25}}
    made = {split: data.make_split(split, GAME, paper) for split in SPLITS}
    train = keys(made["sft_train"]) | keys(made["rl_train"])
    assert train & keys(made["id_test"]) and not train & keys(made["ood_test"])
    ood_multisets = set(data.solvable_multisets(data.rules_from_config(GAME)["ood"], 24))
    assert not train & ood_multisets and all(any(v > 10 for v in key) for key in ood_multisets)
    assert data.leaks({"id_test": 7, "ood_test": 0}, GAME, paper) == []
    assert data.leaks({"id_test": 7, "ood_test": 0}, GAME, DATA) == ["7 value multisets of id_test appear in training"]
    assert data.leaks({"id_test": 0, "ood_test": 2}, GAME, paper) == ["2 value multisets of ood_test appear in training"]


def test_selection_hands_are_apart_from_the_test_hands_and_from_training(tmp_path):
    for holdout in (DATA["holdout_share"], {"id_test": 0.0, "ood_test": 0.25}):
        config = {**DATA, "holdout_share": holdout}
        made = {split: data.make_split(split, GAME, config) for split in SPLITS}
        train = keys(made["sft_train"]) | keys(made["rl_train"])
        for select, test in data.MIRRORS.items():
            assert made[select] and not keys(made[select]) & keys(made[test]), select
            assert {r["rule"] for r in made[select]} == {DATA["splits"][select]["rule"]}
        assert not keys(made["ood_select"]) & train  # a reserved selection split stays out of training
        held = data.heldout_multisets(GAME, config)
        assert not held["ood_select"] & held["ood_test"] and len(held["ood_select"]) == len(held["ood_test"])
        written = {}
        for split, rows in made.items():
            written[split] = tmp_path / f"{split}.jsonl"
            data.write_jsonl(rows, written[split])
        manifest = data.manifest(written, GAME, config)
        assert manifest["select_multisets_in_test"] == {"id_select": 0, "ood_select": 0}
        assert manifest["leaks"] == []
    # The test hands are the ones a study without selection splits deals: adding them changes no test hand.
    without = {**DATA, "splits": {k: v for k, v in DATA["splits"].items() if k not in data.SELECT_SPLITS}}
    for test in TEST_SPLITS:
        assert data.make_split(test, GAME, without) == data.make_split(test, GAME, DATA)
    too_much = {**DATA, "holdout_share": 0.6}
    try:
        data.heldout_multisets(GAME, too_much)
    except ValueError as e:
        assert "_select needs" in str(e) and "lower the share" in str(e)
    else:
        raise AssertionError("a selection split with no multisets left was not refused")


def test_generation_is_deterministic_and_seeded():
    assert data.make_split("id_test", GAME, DATA) == data.make_split("id_test", GAME, DATA)
    other = {**DATA, "splits": {**DATA["splits"], "id_test": {"rule": "id", "size": 60, "seed": 9}}}
    assert data.make_split("id_test", GAME, other) != data.make_split("id_test", GAME, DATA)


def test_workflow_data_rule(finished_study, smoke_sft_from_scratch):
    """The data rules of the smoke study: split counts, no test hand in training, a completed run schedules
    nothing, and the same seed from scratch (in another directory) gives byte-identical splits."""
    workflow = finished_study
    workflow.run("results/data/manifest.json")
    out = workflow.path / "results" / "data"
    first = {s: (out / f"{s}.jsonl").read_bytes() for s in SPLITS}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: v["count"] for s, v in manifest["splits"].items()} == {
        "sft_train": 200, "rl_train": 50, "id_test": 24, "ood_test": 24, "id_select": 12, "ood_select": 12
    }
    # The ID test is dealt from the training distribution (as the papers deal it): it shares multisets with
    # training, counted but not a leak; the OOD test shares none.
    rows = {s: data.read_jsonl(out / f"{s}.jsonl") for s in SPLITS}
    train = set().union(*(keys(rows[s]) for s in TRAIN_SPLITS))
    assert manifest["test_multisets_in_training"] == {"id_test": len(train & keys(rows["id_test"])), "ood_test": 0,
                                                      "id_select": len(train & keys(rows["id_select"])),
                                                      "ood_select": 0}
    assert manifest["select_multisets_in_test"] == {"id_select": 0, "ood_select": 0}
    assert manifest["test_multisets_in_training"]["id_test"] > 0 and manifest["leaks"] == []
    assert manifest["splits"]["id_test"]["sha256"] == data.sha256(out / "id_test.jsonl")
    assert not train & keys(rows["ood_test"])
    assert workflow.dry_run_jobs("results/data/manifest.json") == {}
    # The pretraining corpus: no card puzzle for the target holds a test multiset; numeric ones may when
    # the config says so, and the manifest counts them.
    corpus, audit = data.read_jsonl(out / "pretrain.jsonl"), json.loads((out / "pretrain_manifest.json").read_text())
    tests = keys(rows["id_test"]) | keys(rows["ood_test"])
    with_test = [d for d in corpus if d["target"] == 24 and pretrain.doc_key(d) in tests]
    assert audit["target_puzzles_with_a_test_multiset"] == 0
    assert {d["kind"] for d in with_test} <= {"numbers_target"}
    assert audit["numeric_puzzles_with_a_test_multiset"] >= len(with_test)  # reserved multisets count too

    # Same seed from scratch: byte-identical splits.
    again = smoke_sft_from_scratch.path / "results" / "data"
    assert {s: (again / f"{s}.jsonl").read_bytes() for s in SPLITS} == first


def test_a_data_setting_change_reruns_only_what_depends_on_it(finished_study):
    """On a completed smoke study: a changed data setting reruns only the data job it touches and what
    depends on it (here SFT, the RL runs from its checkpoints and the evaluation of every model after SFT),
    never the other splits, the pretraining corpus or the base model; reordering keys reruns nothing."""
    workflow = finished_study
    smoke = (workflow.path / "config" / "smoke.yaml").read_text()
    changed = workflow.write_config("changed.yaml", smoke.replace("size: 200", "size: 201"))
    assert workflow.dry_run_jobs(configfile=changed) == {
        "data_split": 1, "data_manifest": 1, "sft": 1, **AFTER_SFT,
    }
    data_block = smoke[smoke.index("data:"): smoke.index("model:")]
    reordered_block = (
        "data:\n  splits:\n"
        "    ood_test: {seed: 4, size: 24, rule: ood}\n    id_test: {size: 24, rule: id, seed: 3}\n"
        "    rl_train: {seed: 2, rule: id, size: 50}\n    sft_train: {size: 200, seed: 1, rule: id}\n"
        "    ood_select: {seed: 6, size: 12, rule: ood}\n    id_select: {size: 12, rule: id, seed: 5}\n"
    )
    reordered = workflow.write_config("reordered.yaml", smoke.replace(data_block, reordered_block))
    assert workflow.dry_run_jobs(configfile=reordered) == {}

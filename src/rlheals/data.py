"""The data splits: hands dealt under a rule, with held-out value multisets so that no test hand (as a
multiset of card values under its rule) appears in any training split. Deterministic for a seed."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from pathlib import Path

from rlheals import cards, runlog

TEST_SPLITS = ("id_test", "ood_test")
# Hands that choose (B, T, the RL starting points, tuned settings) and never measure: each selection split
# mirrors a test split's rule and reservation, on value multisets apart from the test split's and from
# training, so that a choice is not measured on the hands it was made on.
SELECT_SPLITS = ("id_select", "ood_select")
MIRRORS = {"id_select": "id_test", "ood_select": "ood_test"}
TRAIN_SPLITS = ("sft_train", "rl_train")
SPLITS = TRAIN_SPLITS + TEST_SPLITS + SELECT_SPLITS
MAX_DRAWS_PER_HAND = 10_000


def rules_from_config(game: Mapping) -> dict[str, cards.Rule]:
    return {name: cards.Rule.from_config(name, spec) for name, spec in game["rules"].items()}


def solvable_multisets(rule: cards.Rule, target: int) -> list[tuple[int, ...]]:
    """Every solvable value multiset the rule's hand distribution can deal, sorted."""
    keys = {cards.value_key(rule.values(ranks)) for ranks in rule.possible_rank_sets()}
    return sorted(k for k in keys if cards.can_reach(k, target))


def holdout_share(data: Mapping, split: str) -> float:
    """The share of a test split's solvable value multisets reserved for it: `data.holdout_share` is one
    number for both test splits or a mapping by split. 0 reserves nothing: the split is dealt from its
    rule's whole distribution, as the papers deal their ID test hands. A selection split takes its test
    split's share."""
    share = data["holdout_share"]
    split = MIRRORS.get(split, split)
    return share[split] if isinstance(share, Mapping) else share


def heldout_multisets(game: Mapping, data: Mapping) -> dict[str, frozenset]:
    """For each test split with a share above 0, the solvable value multisets reserved for it; for each
    selection split configured beside it, as many again from the rest of its rule's pool."""
    rules = rules_from_config(game)
    out = {}
    for split in (*TEST_SPLITS, *(s for s in SELECT_SPLITS if s in data["splits"])):
        share = holdout_share(data, split)
        if share <= 0:
            continue
        pool = solvable_multisets(rules[data["splits"][split]["rule"]], game["target"])
        size = max(1, round(len(pool) * share))
        taken = frozenset().union(*out.values())
        pool = [m for m in pool if m not in taken]
        if len(pool) < size:
            raise ValueError(f"data.holdout_share: {split} needs {size} value multisets of its rule apart from "
                             f"the test split's, and {len(pool)} are left; lower the share")
        random.Random(f"{data['holdout_seed']}:{split}").shuffle(pool)
        out[split] = frozenset(pool[:size])
    return out


def make_split(split: str, game: Mapping, data: Mapping) -> list[dict]:
    """Deal `size` solvable hands for one split. A test split with a holdout share deals only from its
    held-out multisets, and training splits never deal one of them."""
    spec = data["splits"][split]
    rule = rules_from_config(game)[spec["rule"]]
    target = game["target"]
    heldout = heldout_multisets(game, data)
    if split in heldout:
        keep = heldout[split].__contains__
    elif split in TEST_SPLITS:
        keep = lambda key: cards.can_reach(key, target)  # noqa: E731
    elif split in SELECT_SPLITS:  # no reservation: any hand but the value multisets of its test split's
        tested = {cards.value_key(r["values"]) for r in make_split(MIRRORS[split], game, data)}
        keep = lambda key: key not in tested and cards.can_reach(key, target)  # noqa: E731
    else:
        banned = frozenset().union(*heldout.values())
        keep = lambda key: key not in banned and cards.can_reach(key, target)  # noqa: E731
    rng = random.Random(f"{spec['seed']}:{split}")
    rows = []
    for i in range(spec["size"]):
        for _ in range(MAX_DRAWS_PER_HAND):
            ranks, suits = rule.draw(rng)
            values = rule.values(ranks)
            if keep(cards.value_key(values)):
                break
        else:
            raise RuntimeError(f"data.splits.{split}: no allowed hand found in {MAX_DRAWS_PER_HAND} draws")
        solutions = cards.solve(values, target)
        rows.append(
            {
                "id": f"{split}-{i:06d}",
                "split": split,
                "rule": rule.name,
                "cards": ranks,
                "suits": suits,
                "values": values,
                "target": target,
                "solution": rng.choice([s for s in solutions if cards.is_plain(s)] or solutions),
                "n_solutions": len(solutions),
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    """Write rows atomically: a killed job leaves no file that looks complete."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    runlog.write_atomic(path, lambda tmp: tmp.write_text(text))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(paths: Mapping[str, str | Path], game: Mapping, data: Mapping) -> dict:
    """Counts, checksums and leakage figures of the written splits, with the config they came from."""
    splits = {}
    keys = {}
    for split, path in paths.items():
        rows = read_jsonl(path)
        keys[split] = {cards.value_key(r["values"]) for r in rows}
        splits[split] = {
            "path": str(path),
            "rule": data["splits"][split]["rule"],
            "count": len(rows),
            "distinct_value_multisets": len(keys[split]),
            "sha256": sha256(path),
        }
    train = set().union(*(keys[s] for s in TRAIN_SPLITS if s in keys))
    in_training = {s: len(keys[s] & train) for s in (*TEST_SPLITS, *SELECT_SPLITS) if s in keys}
    in_test = {s: len(keys[s] & keys[MIRRORS[s]]) for s in SELECT_SPLITS if s in keys and MIRRORS[s] in keys}
    found = leaks(in_training, game, data) + [f"{n} value multisets of {s} appear in {MIRRORS[s]}"
                                              for s, n in in_test.items() if n]
    return {"splits": splits, "test_multisets_in_training": in_training, "select_multisets_in_test": in_test,
            "leaks": found, "config": {"game": game, "data": data}}


def leaks(in_training: Mapping[str, int], game: Mapping, data: Mapping) -> list[str]:
    """What must never be: a reserved test multiset in training, or a multiset of a rule no training split
    deals (the OOD rule's) in training. A test split without a reservation shares multisets with training
    by design."""
    trained = {data["splits"][s]["rule"] for s in TRAIN_SPLITS}
    found = []
    for split, count in in_training.items():
        if count and (holdout_share(data, split) > 0 or data["splits"][split]["rule"] not in trained):
            found.append(f"{count} value multisets of {split} appear in training")
    return found

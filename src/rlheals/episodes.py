"""Episodes and their results: an episode is one test hand played under the papers' multi-turn protocol
(the model answers; a rejected answer's feedback becomes the next user turn, up to a number of tries).
Here: episodes from dataset rows, one result row per played episode, and the accuracy summaries with
their Wilson intervals. The decoding engine that plays them is rlheals.evaluate."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rlheals import cards
from rlheals.verify import Verdict

FORMAT_ERRORS = ("illegal", "unparseable")


@dataclass(frozen=True)
class Episode:
    id: str
    rule: str
    cards: tuple[str, ...]
    values: tuple[int, ...]
    prompt: str


def from_rows(rows: Sequence[Mapping], rules: Mapping[str, cards.Rule], fmt: str) -> list[Episode]:
    return [
        Episode(r["id"], r["rule"], tuple(r["cards"]), tuple(r["values"]),
                cards.render_prompt(fmt, r["cards"], rules[r["rule"]], r["target"]))
        for r in rows
    ]


NUMBERS = "numbers"  # the numbers-only probe, scored beside the rules' tests as a rule of its own


def numbers_probe(rows: Sequence[Mapping], fmt: str) -> list[Episode]:
    """The numbers-only probe of the hands `rows`: one episode per distinct value multiset, in the order
    the hands first give it, asking its values as a bare numeric puzzle (cards.numbers_prompt). A model
    that solves the probe but not the hand knows the arithmetic and did not read the cards by the rule."""
    probe = {}
    for r in rows:
        key = cards.value_key(r["values"])
        if key not in probe:
            probe[key] = Episode(numbers_id(key), NUMBERS, (), tuple(r["values"]),
                                 cards.numbers_prompt(fmt, r["values"], r["target"]))
    return list(probe.values())


def numbers_id(key: Sequence[int]) -> str:
    return "numbers-" + "-".join(map(str, key))


def numbers_by_hand(probe: Sequence[Mapping], hands: Sequence[Mapping]) -> list[dict]:
    """The probe's results laid out on the hands it was made from: one row per hand, the result of the
    hand's value multiset under the hand's episode id, so that the probe pairs with the hands' own test
    hand by hand and weighs each multiset as the test does."""
    by_id = {r["episode"]: r for r in probe}
    rows = []
    for hand in hands:
        found = by_id.get(numbers_id(cards.value_key(hand["values"])))
        if found is None:
            raise ValueError(f"the numbers-only probe has no result for hand {hand['episode']}'s values "
                             f"{sorted(hand['values'])}: it was made from other hands")
        rows.append({**found, "episode": hand["episode"]})
    return rows


def result_row(e: Episode, tries: Sequence[tuple[str, Verdict]]) -> dict:
    first = tries[0][1]
    return {
        "episode": e.id,
        "rule": e.rule,
        "cards": list(e.cards),
        "values": list(e.values),
        "tries": len(tries),
        "answers": [a for a, _ in tries],
        "categories": [v.category for _, v in tries],
        "rewards": [v.reward for _, v in tries],
        "correct": tries[-1][1].correct,
        "first_correct": first.correct,
        "first_category": first.category,
        "format_error": first.category in FORMAT_ERRORS,
        "value_mapping": value_mapping(first, e.values),
    }


def value_mapping(verdict: Verdict, values: Sequence[int]) -> bool:
    """Did the first answer give the cards their values under the rule? Read from the restated values when
    the answer restates them; otherwise from the arithmetic: readable, and every number taken from the
    cards (a face card valued by another rule uses a number the cards do not give)."""
    if verdict.restated is not None:
        return verdict.restated == tuple(values)
    return verdict.category not in FORMAT_ERRORS + ("wrong_numbers",)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(rows: Sequence[Mapping]) -> dict[str, dict]:
    """Per rule: accuracy within the tries (Wilson interval), pass@1, format errors, value mapping."""
    out = {}
    for rule in sorted({r["rule"] for r in rows}):
        sel = [r for r in rows if r["rule"] == rule]
        n, k = len(sel), sum(r["correct"] for r in sel)
        low, high = wilson(k, n)
        out[rule] = {
            "n_episodes": n,
            "accuracy": k / n,
            "accuracy_low": low,
            "accuracy_high": high,
            "pass_at_1": sum(r["first_correct"] for r in sel) / n,
            "format_error_rate": sum(r["format_error"] for r in sel) / n,
            "value_mapping_accuracy": sum(r["value_mapping"] for r in sel) / n,
            "mean_tries": sum(r["tries"] for r in sel) / n,
        }
    return out

"""GeneralPoints: hands, face-card rules, an exact solver, prompts and SFT targets."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import combinations, combinations_with_replacement

from rlheals import formula

RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
SUITS = ("H", "D", "C", "S")
FACES = ("J", "Q", "K")
HAND_SIZE = 4
HAND_KINDS = ("uniform", "face_card")  # ID: 4 ranks uniform; OOD: 3 uniform + 1 of J/Q/K, shuffled


@dataclass(frozen=True)
class Rule:
    """A face-card rule and the hand distribution that goes with it."""

    name: str
    face_values: tuple[int, int, int]  # values of J, Q, K
    hand: str = "uniform"

    @classmethod
    def from_config(cls, name: str, spec: Mapping) -> "Rule":
        faces = spec["face_values"]
        return cls(name, (int(faces["J"]), int(faces["Q"]), int(faces["K"])), spec.get("hand", "uniform"))

    def value(self, rank: str) -> int:
        if rank in FACES:
            return self.face_values[FACES.index(rank)]
        return RANKS.index(rank) + 1

    def values(self, cards: Iterable[str]) -> list[int]:
        return [self.value(rank) for rank in cards]

    def draw(self, rng: random.Random) -> tuple[list[str], list[str]]:
        """One hand (ranks, suits) from this rule's distribution, not yet checked for a solution."""
        ranks = [rng.choice(RANKS) for _ in range(HAND_SIZE)]
        if self.hand == "face_card":
            ranks[-1] = rng.choice(FACES)
            rng.shuffle(ranks)
        return ranks, [rng.choice(SUITS) for _ in range(HAND_SIZE)]

    def possible_rank_sets(self) -> list[tuple[str, ...]]:
        """Every multiset of ranks this rule's distribution can deal."""
        sets = combinations_with_replacement(RANKS, HAND_SIZE)
        if self.hand == "face_card":
            return [s for s in sets if any(r in FACES for r in s)]
        return list(sets)

    def face_phrase(self) -> str:
        j, q, k = self.face_values
        if j == q == k:
            return f"'J', 'Q', and 'K' count as '{j}'"
        return f"'J', 'Q', and 'K' count as '{j}', '{q}', and '{k}' respectively"


# Every multiset of 4 card values 1..13.
ALL_VALUE_MULTISETS = tuple(combinations_with_replacement(range(1, 14), HAND_SIZE))


def value_key(values: Iterable[int | Fraction]) -> tuple:
    """A hand's identity for leakage checks: its multiset of card values."""
    return tuple(sorted(values))


# ----- exact solver -------------------------------------------------------------------------------------


# A formula in canonical form: sums and products are flattened and their terms sorted, so formulas that
# differ only by order or grouping of + - or of * / are one solution (a+b-c == b-c+a, a*(b/c) == a*b/c).
#   ("n", text) | ("s", plus_terms, minus_terms) | ("p", numerator_factors, denominator_factors)


def _combine(a: tuple, op: str, b: tuple) -> tuple:
    if op in "+-":
        a_pos, a_neg = (a[1], a[2]) if a[0] == "s" else ((a,), ())
        b_pos, b_neg = (b[1], b[2]) if b[0] == "s" else ((b,), ())
        if op == "-":
            b_pos, b_neg = b_neg, b_pos
        return ("s", tuple(sorted(a_pos + b_pos)), tuple(sorted(a_neg + b_neg)))
    a_num, a_den = (a[1], a[2]) if a[0] == "p" else ((a,), ())
    b_num, b_den = (b[1], b[2]) if b[0] == "p" else ((b,), ())
    if op == "/":
        b_num, b_den = b_den, b_num
    return ("p", tuple(sorted(a_num + b_num)), tuple(sorted(a_den + b_den)))


def _render(node: tuple) -> str:
    kind = node[0]
    if kind == "n":
        return node[1]
    if kind == "s":
        return "+".join(map(_render, node[1])) + "".join("-" + _render(t) for t in node[2])

    def factor(f: tuple) -> str:
        return f"({_render(f)})" if f[0] == "s" else _render(f)

    return "*".join(map(factor, node[1])) + "".join("/" + factor(f) for f in node[2])


def _splits(values: tuple[Fraction, ...]):
    """Each way to cut a multiset into an ordered pair of non-empty parts (duplicates skipped)."""
    seen = set()
    n = len(values)
    for size in range(1, n):
        for idx in combinations(range(n), size):
            pair = (tuple(values[i] for i in idx), tuple(values[i] for i in range(n) if i not in idx))
            if pair not in seen:
                seen.add(pair)
                yield pair


def _operand_for(a: Fraction, op: str, target: Fraction) -> Fraction | None:
    """The b with `a op b == target`, or None when there is none."""
    if op == "+":
        return target - a
    if op == "-":
        return a - target
    if op == "*":
        return target / a if a else None
    return a / target if target else None


@lru_cache(maxsize=None)
def _formulas(values: tuple[Fraction, ...], canonical: bool) -> dict[Fraction, frozenset]:
    """Every value reachable from `values` (each used once) -> the formulas reaching it: canonical nodes,
    or with `canonical=False` every written form ((text, precedence), every order and grouping)."""
    if len(values) == 1:
        leaf = ("n", formula.fmt_number(values[0])) if canonical else (formula.fmt_number(values[0]), formula.ATOM)
        return {values[0]: frozenset([leaf])}
    out: dict[Fraction, set] = {}
    for left, right in _splits(values):
        rights = _formulas(right, canonical)
        for a, a_forms in _formulas(left, canonical).items():
            for b, b_forms in rights.items():
                for op in formula.OPERATORS:
                    if op == "/" and b == 0:
                        continue
                    _join_all(out.setdefault(formula.apply(op, a, b), set()), a_forms, op, b_forms, canonical)
    return {value: frozenset(forms) for value, forms in out.items()}


def _join_all(bucket: set, a_forms, op: str, b_forms, canonical: bool) -> None:
    join = _combine if canonical else formula.join
    bucket.update(join(a, op, b) for a in a_forms for b in b_forms)


@lru_cache(maxsize=None)
def _solutions(values: tuple[Fraction, ...], target: Fraction, canonical: bool) -> tuple[str, ...]:
    """Formulas equal to `target`. At the top level only the operand pairs that hit the target are joined,
    which keeps the search fast; below it, sub-multisets are cached across hands."""
    if len(values) == 1:
        return (formula.fmt_number(values[0]),) if values[0] == target else ()
    found: set = set()
    for left, right in _splits(values):
        rights = _formulas(right, canonical)
        for a, a_forms in _formulas(left, canonical).items():
            for op in formula.OPERATORS:
                b = _operand_for(a, op, target)
                if b is not None and b in rights and not (op == "/" and b == 0):
                    _join_all(found, a_forms, op, rights[b], canonical)
    texts = (_render(node) for node in found) if canonical else (text for text, _ in found)
    return tuple(sorted(set(texts)))


def solve(values: Iterable[int | Fraction], target: int = 24, canonical: bool = True) -> tuple[str, ...]:
    """Every distinct formula that uses each value once and equals `target`, sorted; exact arithmetic.
    Canonical: one formula per solution up to order and grouping. Otherwise: every written form."""
    key = tuple(sorted(Fraction(v) for v in values))
    return _solutions(key, Fraction(target), canonical)


@lru_cache(maxsize=None)
def _reachable(values: tuple[Fraction, ...]) -> frozenset[Fraction]:
    """The values reachable from a multiset, without building formulas."""
    if len(values) == 1:
        return frozenset(values)
    out = set()
    for left, right in _splits(values):
        rights = _reachable(right)
        for a in _reachable(left):
            for b in rights:
                for op in formula.OPERATORS:
                    if not (op == "/" and b == 0):
                        out.add(formula.apply(op, a, b))
    return frozenset(out)


def forget_solutions() -> None:
    """Empty the solver's caches (a benchmark compares two runs that must each pay for solving)."""
    for cached in (_formulas, _solutions, _reachable, _can_reach):
        cached.cache_clear()


def can_reach(values: Iterable[int | Fraction], target: int | Fraction = 24) -> bool:
    """Whether some formula over `values` (each once) equals `target` (fast: no formulas are built)."""
    return _can_reach(tuple(sorted(Fraction(v) for v in values)), Fraction(target))


@lru_cache(maxsize=None)
def _can_reach(key: tuple[Fraction, ...], target: Fraction) -> bool:
    if len(key) == 1:
        return key[0] == target
    for left, right in _splits(key):
        rights = _reachable(right)
        for a in _reachable(left):
            for op in formula.OPERATORS:
                b = _operand_for(a, op, target)
                if b is not None and b in rights and not (op == "/" and b == 0):
                    return True
    return False


def is_plain(solution: str) -> bool:
    """Whether every step of a formula stays a non-negative whole number (easier to learn from)."""
    return all(c >= 0 and c.denominator == 1 for *_, c in formula.steps(formula.parse(solution)))


# ----- prompts and targets ------------------------------------------------------------------------------

def _paper_task(target: int, given: str, using: str, shown: str, fields: str) -> str:
    """The papers' single-turn prompt around what the player is given and the answer fields it asks for."""
    return (
        "[Task Description]\n"
        f"You are an expert {target} points card game player. {given} Your goal is to output a formula that "
        f"evaluates to {target} using {using} and operators such as '+', '-', '*', '/', '(', ')', and '='.\n\n"
        f"[Input]\n{shown}\n\n"
        f"[Output]\n{{\n{fields}"
        f"  \"formula\": 'an equation that equals {target}',\n"
        "}"
    )


def paper_prompt(cards: list[str], rule: Rule, target: int) -> str:
    """The paper's single-turn prompt (text version of GeneralPoints), asking for a JSON answer."""
    faces = rule.face_phrase()
    given = f"You are observing these four cards. Note that {faces}, and each card must be used once."
    fields = (f'  "cards": [x, y, z, w], where {faces},\n'
              '  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,\n')
    return _paper_task(target, given, "numbers from the cards", f"Cards: {json.dumps(cards)}", fields)


def compact_prompt(cards: list[str], rule: Rule, target: int) -> str:
    """A short prompt for the tiny model: the face-card rule, the cards and the target, one word each."""
    j, q, k = rule.face_values
    return f"rule J {j} Q {q} K {k} cards {' '.join('c' + c for c in cards)} target {target} =>"


def paper_target(cards: list[str], rule: Rule, target: int, solution: str) -> str:
    answer = {"cards": cards, "number": rule.values(cards), "formula": f"{solution}={target}"}
    return json.dumps(answer)


def steps_answer(values: Iterable[int], solution: str, restate: bool = True) -> str:
    """The values restated, then the solution as steps: `3 11 2 11 ; 11 * 3 = 33 ; 33 - 11 = 22 ; ...`;
    without `restate`, the steps alone (the card values then live only inside the arithmetic)."""
    parts = [" ".join(str(v) for v in values)] if restate else []
    for a, op, b, c in formula.steps(formula.parse(solution)):
        parts.append(f"{formula.fmt_number(a)} {op} {formula.fmt_number(b)} = {formula.fmt_number(c)}")
    return " ; ".join(parts) + " ;"


def compact_target(cards: list[str], rule: Rule, target: int, solution: str) -> str:
    """The card values the rule gives, restated, then the solution as steps."""
    return steps_answer(rule.values(cards), solution)


def steps_target(cards: list[str], rule: Rule, target: int, solution: str) -> str:
    """The solution as steps alone: `11 * 3 = 33 ; 33 - 11 = 22 ; 22 + 2 = 24 ;`."""
    return steps_answer(rule.values(cards), solution, restate=False)


# Prompt formats: the compact prompt answered with restated values and steps, or with the steps alone;
# and the papers' prompt with its JSON answer.
FORMATS = ("compact", "steps", "paper")


def restates_values(fmt: str) -> bool:
    """Whether answers in this format begin by restating the card values (the tiny model's corpus follows)."""
    return fmt != "steps"


def numbers_prompt(fmt: str, values: Iterable[int], target: int) -> str:
    """A hand's values as a bare numeric puzzle: no cards, no rule to read. For the tiny model, the form of
    the pretraining corpus's numeric puzzles (`numbers 11 3 5 2 target 24 =>`); in the papers' format, the
    papers' prompt with the numbers given as they are."""
    numbers = [int(v) for v in values]
    if fmt != "paper":
        return f"numbers {' '.join(map(str, numbers))} target {target} =>"
    given = "You are given these four numbers, and each number must be used once."
    return _paper_task(target, given, "the numbers", f"Numbers: {json.dumps(numbers)}",
                       '  "number": [a, b, c, d], the four numbers,\n')


def render_prompt(fmt: str, cards: list[str], rule: Rule, target: int) -> str:
    return {"compact": compact_prompt, "steps": compact_prompt, "paper": paper_prompt}[fmt](cards, rule, target)


def render_target(fmt: str, cards: list[str], rule: Rule, target: int, solution: str) -> str:
    return {"compact": compact_target, "steps": steps_target, "paper": paper_target}[fmt](cards, rule, target, solution)

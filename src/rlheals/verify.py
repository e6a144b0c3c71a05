"""The verifier: read a model's answer, check it exactly against the hand, classify it, reward it, and
say why it failed (the feedback turn of multi-turn verification). It never raises on any input string."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from rlheals import cards, formula

CATEGORIES = ("correct", "partial", "wrong_value", "wrong_numbers", "illegal", "unparseable")
# The paper's rewards: penalties add (a wrong value that also leaves a card unused gets -1 - 2).
DEFAULT_REWARDS = {
    "correct": 5.0,
    "partial": 1.0,
    "wrong_value": -1.0,
    "wrong_number": -2.0,  # per number not on the cards and per card left unused
    "illegal": -3.0,
    "unparseable": -3.0,
}
MAX_ANSWER_CHARS = 8192  # longer answers are not read at all
MAX_SEGMENTS = 16  # compact answers: restated values plus at most this many steps / formulas


@dataclass(frozen=True)
class Verdict:
    category: str
    reward: float
    feedback: str  # the user turn for the next try; empty when correct
    formula: str | None = None  # the formula or steps that were checked
    value: Fraction | None = None  # what the answer evaluates to, when it evaluates
    restated: tuple[int, ...] | None = None  # the card values the answer restated, if it did

    @property
    def correct(self) -> bool:
        return self.category == "correct"


@dataclass(frozen=True)
class Answer:
    """What was read from an answer: a formula and/or steps, and the restated card values."""

    formula: str | None = None
    steps: tuple[str, ...] = ()
    restated: tuple[int, ...] | None = None


def _ints(items) -> tuple[int, ...] | None:
    try:
        values = tuple(int(x) for x in items)
    except (TypeError, ValueError, OverflowError):
        return None
    return values if all(0 <= v < 10**6 for v in values) else None


_FORMULA_FIELD = re.compile(r"""["']formula["']\s*:\s*["']([^"'\n]{0,512})["']""")
_NUMBER_FIELD = re.compile(r"""["']number["']\s*:\s*\[([0-9,\s]{0,64})\]""")


def read_json_answer(text: str) -> Answer:
    """The paper's JSON answer; fallback (as in the paper's code): a regex for the formula field."""
    start = text.find("{")
    if start >= 0:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text, start)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("formula"), str):
            restated = obj.get("number")
            return Answer(
                formula=obj["formula"],
                restated=_ints(restated) if isinstance(restated, list) else None,
            )
    match = _FORMULA_FIELD.search(text)
    if match is None:
        return Answer()
    numbers = _NUMBER_FIELD.search(text)
    restated = _ints(numbers.group(1).replace(",", " ").split()) if numbers else None
    return Answer(formula=match.group(1), restated=restated)


_STEP = re.compile(r"(-?\d{1,9}|\(-?\d{1,9}/\d{1,9}\))([-+*/])(-?\d{1,9}|\(-?\d{1,9}/\d{1,9}\))=(-?\d{1,9}|\(-?\d{1,9}/\d{1,9}\))")
_RESTATED = re.compile(r"\d{1,6}( \d{1,6})*")


def read_compact_answer(text: str) -> Answer:
    """`3 11 2 11 ; 11 * 3 = 33 ; 33 - 11 = 22 ; 22 + 2 = 24 ;` - restated values, then steps and/or a
    formula (`(6+5-5)*4 = 24`), separated by ';'. The last formula, if any, is the answer."""
    segments = [s.strip() for s in text.split(";", MAX_SEGMENTS + 1)[: MAX_SEGMENTS + 1]]
    restated = None
    if segments and _RESTATED.fullmatch(" ".join(segments[0].split())):
        restated = _ints(segments[0].split())
        segments = segments[1:]
    steps: list[str] = []
    found_formula = None
    for segment in segments:
        if not segment:
            continue
        if _STEP.fullmatch("".join(segment.split())):
            steps.append(segment)
        else:
            found_formula = segment.split("=", 1)[0]
    return Answer(formula=found_formula, steps=tuple(steps), restated=restated)


def read_answer(text: str, fmt: str = "compact") -> Answer:
    return read_json_answer(text) if fmt == "paper" else read_compact_answer(text)


def _step_number(token: str) -> Fraction:
    if token.startswith("("):
        num, den = token[1:-1].split("/")
        return Fraction(int(num), int(den)) if int(den) else Fraction(0)
    return Fraction(int(token))


class Verifier:
    """Checks answers for one game setting (target, answer format, strictness, rewards)."""

    def __init__(
        self,
        target: int = 24,
        fmt: str = "compact",
        strict_format: bool = False,
        rewards: Mapping[str, float] | None = None,
    ):
        self.target = Fraction(target)
        self.fmt = fmt
        self.strict_format = strict_format
        self.rewards = {k: float(v) for k, v in {**DEFAULT_REWARDS, **(rewards or {})}.items()}

    def __call__(self, text: str, values: Sequence[int]) -> Verdict:
        """Classify an answer for a hand whose card values (under its rule) are `values`."""
        if not isinstance(text, str):
            return self._fail("unparseable", "your answer is not text")
        if len(text) > MAX_ANSWER_CHARS:
            return self._fail("unparseable", f"your answer is longer than {MAX_ANSWER_CHARS} characters")
        answer = read_answer(text, self.fmt)
        if answer.formula is not None and answer.formula.strip():
            verdict = self._check_formula(answer.formula.split("=", 1)[0].strip(), values)
        elif answer.steps:
            verdict = self._check_steps(answer.steps, values)
        else:
            verdict = self._fail("unparseable", "no formula was found in your answer")
        return Verdict(**{**verdict.__dict__, "restated": answer.restated})

    # -- helpers ---------------------------------------------------------------------------------------

    def _fail(self, category: str, reason: str, reward: float | None = None, **extra) -> Verdict:
        reward = self.rewards[category] if reward is None else reward
        return Verdict(category, reward, f"You failed this trial because {reason}.", **extra)

    def _numbers_and_value(
        self, used: Sequence[Fraction], values: Sequence[int], value: Fraction, shown: str
    ) -> Verdict:
        """Score the numbers a finished answer used and the value it reached (penalties add)."""
        have, used_count = Counter(Fraction(v) for v in values), Counter(used)
        extra, unused = used_count - have, have - used_count
        reward, reasons = 0.0, []
        if extra or unused:
            reward += self.rewards["wrong_number"] * (sum(extra.values()) + sum(unused.values()))
            if extra:
                reasons.append(f"you used {_listing(extra)}, which the cards do not give")
            if unused:
                reasons.append(f"you did not use {_listing(unused)}")
        if value != self.target:
            reward += self.rewards["wrong_value"]
            reasons.append(f"your answer evaluates to {formula.fmt_number(value)}, not {formula.fmt_number(self.target)}")
        if not reasons:
            return Verdict("correct", self.rewards["correct"], "", formula=shown, value=value)
        category = "wrong_numbers" if (extra or unused) else "wrong_value"
        return self._fail(category, " and ".join(reasons), reward=reward, formula=shown, value=value)

    def _check_formula(self, text: str, values: Sequence[int]) -> Verdict:
        try:
            tree = formula.parse(text, strict=self.strict_format)
            value = formula.evaluate(tree)
        except formula.FormulaError as err:
            if err.kind == "incomplete" and self._is_prefix_of_solution(text, values):
                return self._fail("partial", "your formula is unfinished", formula=text)
            return self._fail("illegal", f"your formula is illegal: {err}", formula=text)
        return self._numbers_and_value(formula.leaves(tree), values, value, text)

    def _is_prefix_of_solution(self, text: str, values: Sequence[int]) -> bool:
        compact = "".join(text.split())
        if not compact:
            return False
        # A solution's numbers are the cards' values, each used once: a prefix that already wrote another
        # number (or one too often) starts none, and needs no search. (Its last number may go on: "1" of "12".)
        written = Counter(Fraction(int(n)) for n in re.findall(r"\d+(?=\D)", compact))
        if written - Counter(Fraction(v) for v in values):
            return False
        return any(s.startswith(compact) for s in cards.solve(values, self.target, canonical=False))

    def _check_steps(self, steps: Sequence[str], values: Sequence[int]) -> Verdict:
        pool = Counter(Fraction(v) for v in values)
        used: list[Fraction] = []  # card values consumed
        shown = " ; ".join(steps)
        for i, step in enumerate(steps, 1):
            a_tok, op, b_tok, c_tok = _STEP.fullmatch("".join(step.split())).groups()
            a, b, claimed = _step_number(a_tok), _step_number(b_tok), _step_number(c_tok)
            need = Counter([a, b])
            missing = need - pool
            if missing:
                reason = f"step {i} ({step}) uses {_listing(missing)}, which is not available"
                reward = self.rewards["wrong_number"] * sum(missing.values())
                return self._fail("wrong_numbers", reason, reward=reward, formula=shown)
            try:
                result = formula.apply(op, a, b)
            except formula.FormulaError:
                return self._fail("illegal", f"step {i} ({step}) divides by zero", formula=shown)
            if result != claimed:
                return self._fail(
                    "wrong_value",
                    f"step {i} is wrong: {formula.fmt_number(a)} {op} {formula.fmt_number(b)} is {formula.fmt_number(result)}, not {formula.fmt_number(claimed)}",
                    formula=shown,
                    value=claimed,
                )
            pool -= need
            pool[result] += 1
            used += [a, b]
        remaining = list(pool.elements())
        if len(remaining) == 1:
            value = remaining[0]
            if value == self.target:
                return Verdict("correct", self.rewards["correct"], "", formula=shown, value=value)
            return self._fail("wrong_value", f"your steps end at {formula.fmt_number(value)}, not {formula.fmt_number(self.target)}", formula=shown, value=value)
        if cards.can_reach(remaining, self.target):
            return self._fail("partial", f"your steps stop before using {_listing(Counter(remaining))}", formula=shown)
        reward = self.rewards["wrong_number"] * (len(remaining) - 1) + self.rewards["wrong_value"]
        reason = f"your steps leave {_listing(Counter(remaining))} and cannot reach {formula.fmt_number(self.target)}"
        return self._fail("wrong_numbers", reason, reward=reward, formula=shown)


def _listing(counter: Counter) -> str:
    return ", ".join(formula.fmt_number(v) for v in sorted(counter.elements()))

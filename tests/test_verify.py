import builtins
import json
import random
from unittest import mock
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlheals import cards, formula
from rlheals.verify import CATEGORIES, DEFAULT_REWARDS, Verifier

VALUES = [3, 11, 2, 11]


class Guarded:
    """A verifier whose every call fails the test if it reaches eval or exec."""

    def __init__(self, verifier):
        self.verifier = verifier

    def __call__(self, text, values):
        def forbidden(*args, **kwargs):
            raise AssertionError("the verifier executed text as code")

        with mock.patch.object(builtins, "eval", forbidden), mock.patch.object(builtins, "exec", forbidden):
            return self.verifier(text, values)


compact = Guarded(Verifier(fmt="compact"))
paper = Guarded(Verifier(fmt="paper"))
strict = Guarded(Verifier(fmt="paper", strict_format=True))


@pytest.mark.parametrize(
    "text, category, reward",
    [
        ("3 11 2 11 ; 11 * 3 = 33 ; 33 - 11 = 22 ; 22 + 2 = 24 ;", "correct", 5),
        ("11 * 3 = 33 ; 33 - 11 = 22 ; 22 + 2 = 24", "correct", 5),  # steps without restated values
        ("3 11 2 11 ; (11*3+2-11) = 24", "correct", 5),  # a formula instead of steps
        ("3 11 2 11 ; 11 * 3 = 33 ;", "partial", 1),  # a prefix of a solution
        ("11*3+2-", "partial", 1),
        ("3 10 2 10 ; 10 * 3 = 30 ; 30 - 10 = 20 ; 20 + 2 = 22 ;", "wrong_numbers", -2),
        ("3 11 2 11 ; 11 * 3 = 34 ;", "wrong_value", -1),
        ("11*3+2+11", "wrong_value", -1),
        ("11*3-11", "wrong_numbers", -3),  # card 2 unused (-2) and 22 != 24 (-1): penalties add
        ("3*10-2-11+7", "wrong_numbers", -6),  # 10 and 7 not on the cards, one 11 unused; value 24
        ("3/(11-11)+2", "illegal", -3),
        ("11 * 3 ++ 2", "illegal", -3),
        ("((((", "illegal", -3),
        ("", "unparseable", -3),
        ("3 11 2 11", "unparseable", -3),
        ("the answer is twenty-four", "illegal", -3),
    ],
)
def test_classification(text, category, reward):
    verdict = compact(text, VALUES)
    assert (verdict.category, verdict.reward) == (category, reward), verdict
    assert (verdict.feedback == "") == (category == "correct")
    if category != "correct":
        assert verdict.feedback.startswith("You failed this trial because ")


def test_json_answers_and_fallback():
    good = json.dumps({"cards": ["3", "J", "2", "J"], "number": [3, 11, 2, 11], "formula": "11*3+2-11=24"})
    assert paper(good, VALUES).correct and paper(good, VALUES).restated == (3, 11, 2, 11)
    # Unquoted / single-quoted JSON as models write it: the regex fallback of the paper's code.
    loose = "{cards: [3, J, 2, J], 'number': [3, 10, 2, 10], 'formula': '11*3+2-11=24'}"
    verdict = paper(loose, VALUES)
    assert verdict.correct and verdict.restated == (3, 10, 2, 10)
    assert paper('{"formula": 24}', VALUES).category == "unparseable"
    assert paper("no json here", VALUES).category == "unparseable"


def test_strict_format_is_the_papers_rule():
    spaced = '{"formula": "11 * 3 + 2 - 11 = 24"}'
    assert paper(spaced, VALUES).correct
    verdict = strict(spaced, VALUES)
    assert verdict.category == "illegal" and "space" in verdict.feedback


def test_feedback_names_the_problem():
    assert "evaluates to 46, not 24" in compact("11*3+2+11", VALUES).feedback
    assert "did not use 2" in compact("11*3-11", VALUES).feedback
    assert "10, 10" in compact("3*10-2+10", VALUES).feedback
    assert "divides by zero" in compact("3/(11-11)+2", VALUES).feedback
    assert "step 1 is wrong: 11 * 3 is 33, not 34" in compact("11 * 3 = 34 ;", VALUES).feedback


def test_rewards_come_from_config():
    custom = Verifier(rewards={"correct": 1.0, "wrong_value": 0.0, "wrong_number": -0.5})
    assert custom("11*3+2-11", VALUES).reward == 1.0
    assert custom("11*3-11", VALUES).reward == -0.5
    assert set(DEFAULT_REWARDS) >= {"correct", "partial", "wrong_value", "wrong_number", "illegal", "unparseable"}


@pytest.mark.parametrize(
    "text",
    [
        "1/0",
        "(" * 5000 + "1" + ")" * 5000,
        "(" * 30 + "1" + ")" * 30,
        "9" * 400,
        "999999999*999999999*999999999*999999999",
        "٣+٤*2*3",  # unicode digits
        "３+４",  # full-width digits
        "\x00\x1b[31m24\x07",
        "x" * 100_000,
        "{" * 8000,
        "[" * 8000,
        '{"formula": "' + "(" * 3000 + '"}',
        "__import__('os').system('echo pwned')",
        "1; import os",
        "2**100",
        "1e400",
        "24 ; " * 2000,
    ],
)
def test_adversarial_inputs_are_classified(text):
    for verifier in (compact, paper, strict):
        verdict = verifier(text, VALUES)
        assert verdict.category in CATEGORIES and verdict.category != "correct"


def test_parser_limits_and_errors():
    with pytest.raises(formula.FormulaError) as err:
        formula.parse("(" * 30 + "1" + ")" * 30)
    assert err.value.kind == "too_deep"
    assert formula.parse("((1+2))*3") == formula.parse("(1+2)*3")
    assert formula.evaluate(formula.parse("1/3+1/6")) == Fraction(1, 2)  # exact, no float error
    assert formula.evaluate(formula.parse("8/(3-8/3)")) == 24


anything = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="0123456789+-*/()= ;.,{}[]\"':formula", max_size=120),
    st.lists(st.sampled_from(["11", "3", "2", "*", "+", "-", "/", "(", ")", "=", ";", "24", " "]), max_size=40).map("".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anything)
def test_arbitrary_text_never_raises(text):
    for verifier in (compact, paper, strict):
        verdict = verifier(text, VALUES)
        assert verdict.category in CATEGORIES
        assert isinstance(verdict.reward, float) and isinstance(verdict.feedback, str)


@st.composite
def hands(draw):
    rule = draw(st.sampled_from([cards.Rule("id", (10, 10, 10)), cards.Rule("ood", (11, 12, 13), "face_card")]))
    ranks, _ = rule.draw(random.Random(draw(st.integers(0, 10**6))))
    values = rule.values(ranks)
    solutions = cards.solve(values)
    if not solutions:
        from hypothesis import reject

        reject()
    return rule, ranks, values, solutions


@settings(max_examples=150, deadline=None)
@given(hands(), st.data())
def test_solutions_verify_and_perturbations_do_not(hand, data):
    rule, ranks, values, solutions = hand
    solution = data.draw(st.sampled_from(solutions))
    assert compact(solution, values).correct
    assert paper(cards.paper_target(ranks, rule, 24, solution), values).correct
    assert compact(cards.compact_target(ranks, rule, 24, solution), values).correct
    tokens = formula.tokenize(solution)
    numbers = [i for i, t in enumerate(tokens) if t.isdigit()]
    # Changing one number changes the multiset of numbers used: never correct (wrong numbers, or illegal
    # when the change makes a divisor zero).
    i = data.draw(st.sampled_from(numbers))
    bumped = tokens[:i] + [str(int(tokens[i]) + data.draw(st.integers(1, 5)))] + tokens[i + 1 :]
    assert compact("".join(bumped), values).category in ("wrong_numbers", "illegal")
    # Cutting the formula short is never correct.
    cut = data.draw(st.integers(1, len(tokens) - 1))
    assert not compact("".join(tokens[:cut]), values).correct
    # Dropping a step from the compact target is never correct.
    steps = cards.compact_target(ranks, rule, 24, solution).split(" ; ")
    assert not compact(" ; ".join(steps[:-2]), values).correct


def test_prefix_check_agrees_with_searching_every_written_solution():
    """The prefix check skips the search when the prefix already wrote a number the cards do not give
    (or one too often); it must still agree with searching every written solution, including prefixes
    that end inside a number ("1" of "12") and prefixes of real solutions."""
    rng = random.Random(0)
    verifier = Verifier()
    for _ in range(60):
        values = [rng.randint(1, 13) for _ in range(4)]
        written = cards.solve(values, 24, canonical=False)
        prefixes = [s[: rng.randint(1, len(s))] for s in rng.sample(written, min(3, len(written)))]
        prefixes += [f"{rng.randint(1, 14)}{rng.choice('+-*/')}", f"({rng.randint(1, 14)}*{rng.randint(1, 14)}-",
                     f"{values[0]}+{values[0]}*", str(rng.randint(1, 13))]
        for prefix in prefixes:
            assert verifier._is_prefix_of_solution(" ".join(prefix), values) == any(
                s.startswith(prefix) for s in written), (prefix, values)

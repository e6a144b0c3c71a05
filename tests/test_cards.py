import random
from collections import Counter
from fractions import Fraction
from itertools import combinations_with_replacement, permutations, product

import numpy as np
import pytest

from rlheals import cards, formula
from rlheals.verify import Verifier

ALL_MULTISETS = list(combinations_with_replacement(range(1, 14), 4))
ID = cards.Rule("id", (10, 10, 10), "uniform")
OOD = cards.Rule("ood", (11, 12, 13), "face_card")


def brute_force_solvable(multisets, target=24):
    """Reference: every order x every operator triple x the 5 bracketings of 4 operands, evaluated in
    floating point over all hands at once; near-hits are then confirmed exactly with fractions."""
    ops = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}
    shapes = [
        lambda a, b, c, d, o: o[2](o[1](o[0](a, b), c), d),  # ((a b) c) d
        lambda a, b, c, d, o: o[2](o[0](a, o[1](b, c)), d),  # (a (b c)) d
        lambda a, b, c, d, o: o[1](o[0](a, b), o[2](c, d)),  # (a b) (c d)
        lambda a, b, c, d, o: o[0](a, o[2](o[1](b, c), d)),  # a ((b c) d)
        lambda a, b, c, d, o: o[0](a, o[1](b, o[2](c, d))),  # a (b (c d))
    ]
    frac_ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
                "/": lambda x, y: x / y if y else None}

    def exact(shape_i, vals, names):
        def o(i):
            return lambda x, y: None if x is None or y is None else frac_ops[names[i]](x, y)
        return shapes[shape_i](*map(Fraction, vals), [o(0), o(1), o(2)])

    perms = np.array([[p for p in permutations(m)] for m in multisets], dtype=float)  # (n, 24, 4)
    solvable = np.zeros(len(multisets), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for names in product("+-*/", repeat=3):
            o = [ops[n] for n in names]
            for s, shape in enumerate(shapes):
                values = shape(perms[..., 0], perms[..., 1], perms[..., 2], perms[..., 3], o)
                for i, j in zip(*np.nonzero(np.abs(values - target) < 1e-6)):
                    if not solvable[i] and exact(s, perms[i, j], names) == target:
                        solvable[i] = True
    return solvable


def test_solver_agrees_with_brute_force_on_every_multiset():
    reference = brute_force_solvable(ALL_MULTISETS)
    ours = np.array([bool(cards.solve(m, 24)) for m in ALL_MULTISETS])
    fast = np.array([cards.can_reach(m, 24) for m in ALL_MULTISETS])
    assert len(ALL_MULTISETS) == 1820
    assert reference.sum() == 1362
    assert (ours == reference).all() and (fast == reference).all()


def test_every_solution_is_exact_and_uses_each_value_once():
    verifier = Verifier(fmt="compact")
    for m in ALL_MULTISETS[::7]:
        for text in cards.solve(m, 24):
            tree = formula.parse(text)
            assert formula.evaluate(tree) == 24
            assert Counter(formula.leaves(tree)) == Counter(map(Fraction, m))
            assert verifier(text, list(m)).correct


def test_solutions_are_distinct_up_to_order_and_grouping():
    # 1,2,3,4 has exactly these solutions once order and grouping of + and * are ignored.
    assert cards.solve([1, 2, 3, 4]) == ("(1+3)*(2+4)", "1*2*3*4", "2*3*4/1", "4*(1+2+3)")
    assert cards.solve([3, 3, 8, 8]) == ("8/(3-8/3)",)  # needs a fraction on the way
    assert cards.solve([1, 1, 1, 1]) == ()
    # Every written form includes commuted operands; canonical forms are among them.
    written = set(cards.solve([1, 2, 3, 4], canonical=False))
    assert {"4*(1+2+3)", "(3+2+1)*4", "4*3*2*1"} <= written


def test_other_targets():
    assert cards.solve([5, 5, 5, 1], 24) == ("5*(5-1/5)",)
    assert cards.can_reach([2, 3], 6) and not cards.can_reach([2, 3], 7)
    assert all(formula.evaluate(formula.parse(s)) == 10 for s in cards.solve([1, 2, 3, 4], 10))


def test_rules_and_hand_distributions():
    rng = random.Random(0)
    assert ID.values(["A", "10", "J", "K"]) == [1, 10, 10, 10]
    assert OOD.values(["A", "J", "Q", "K"]) == [1, 11, 12, 13]
    for _ in range(500):
        ranks, suits = OOD.draw(rng)
        assert len(ranks) == 4 and any(r in cards.FACES for r in ranks)
        assert set(suits) <= set(cards.SUITS)
    # The last position is not always the face card: the hand is shuffled.
    positions = Counter(next(i for i, r in enumerate(OOD.draw(rng)[0]) if r in cards.FACES) for _ in range(400))
    assert len(positions) == 4
    id_faces = sum(any(r in cards.FACES for r in ID.draw(rng)[0]) for _ in range(2000)) / 2000
    assert 0.6 < id_faces < 0.73  # 1 - (10/13)^4 = 0.65
    assert len(OOD.possible_rank_sets()) == 1820 - 715


@pytest.mark.parametrize("rule", [ID, OOD])
def test_targets_verify_in_both_formats(rule):
    rng = random.Random(1)
    compact, paper = Verifier(fmt="compact"), Verifier(fmt="paper", strict_format=True)
    checked = 0
    while checked < 60:
        ranks, _ = rule.draw(rng)
        values = rule.values(ranks)
        for solution in cards.solve(values)[:3]:
            c = compact(cards.compact_target(ranks, rule, 24, solution), values)
            p = paper(cards.paper_target(ranks, rule, 24, solution), values)
            assert c.correct and p.correct, (ranks, solution, c, p)
            assert c.restated == p.restated == tuple(values)
            s = compact(cards.steps_target(ranks, rule, 24, solution), values)
            assert s.correct and s.restated is None, (ranks, solution, s)
            checked += 1


def test_the_steps_format_keeps_the_values_inside_the_arithmetic():
    """Without restated values, a face card valued by the other rule shows up as a number the cards do not
    give: the value-mapping diagnostic reads it from the arithmetic."""
    from rlheals import episodes

    ranks, values = ["J", "3", "2", "K"], OOD.values(["J", "3", "2", "K"])
    answer = cards.steps_target(ranks, OOD, 24, cards.solve(values)[0])
    assert not answer.split(" ; ")[0].replace(" ", "").isdigit() and "=" in answer.split(";")[0]
    verify = Verifier(fmt="steps")
    assert episodes.value_mapping(verify(answer, values), values)
    id_answer = cards.steps_target(ranks, ID, 24, cards.solve(ID.values(ranks))[0])  # J and K as 10
    assert not episodes.value_mapping(verify(id_answer, values), values)
    restated = Verifier(fmt="compact")(cards.compact_target(ranks, ID, 24, cards.solve(ID.values(ranks))[0]), values)
    assert not episodes.value_mapping(restated, values)


def test_prompts_name_the_rule():
    assert cards.compact_prompt(["3", "J", "2", "J"], OOD, 24) == "rule J 11 Q 12 K 13 cards c3 cJ c2 cJ target 24 =>"
    paper = cards.paper_prompt(["A", "3", "K", "6"], ID, 24)
    assert "'J', 'Q', and 'K' count as '10'" in paper and 'Cards: ["A", "3", "K", "6"]' in paper
    assert "count as '11', '12', and '13'" in cards.paper_prompt(["A"], OOD, 24)
    assert cards.compact_target(["3", "3", "8", "8"], OOD, 24, "8/(3-8/3)") == (
        "3 3 8 8 ; 8 / 3 = (8/3) ; 3 - (8/3) = (1/3) ; 8 / (1/3) = 24 ;"
    )


def test_plain_solutions():
    assert cards.is_plain("(1+3)*(2+4)")
    assert not cards.is_plain("8/(3-8/3)") and not cards.is_plain("10-7*(5-7)")


def test_the_papers_prompt_is_their_text_and_the_numbers_probe_shares_its_frame():
    from rlheals.cards import Rule, numbers_prompt, paper_prompt

    ood = Rule("ood", (11, 12, 13))
    text = paper_prompt(["J", "3", "5", "2"], ood, 24)
    assert text.startswith("[Task Description]\nYou are an expert 24 points card game player. "
                           "You are observing these four cards. Note that ")
    assert ", and each card must be used once. Your goal is to output a formula that evaluates to 24 using " \
           "numbers from the cards and operators such as '+', '-', '*', '/', '(', ')', and '='.\n\n" in text
    assert '[Input]\nCards: ["J", "3", "5", "2"]\n\n[Output]\n{\n  "cards": [x, y, z, w], where ' in text
    assert text.endswith('  "number": [a, b, c, d], where a, b, c, and d are the numbers on the cards,\n'
                         "  \"formula\": 'an equation that equals 24',\n}")
    probe = numbers_prompt("paper", [11, 3, 5, 2], 24)
    given = "You are given these four numbers, and each number must be used once. "
    assert probe.split("Your goal")[0].endswith(given)
    assert "Numbers: [11, 3, 5, 2]" in probe and "cards" not in probe.split("[Output]")[1]
    assert numbers_prompt("compact", [11, 3, 5, 2], 24) == "numbers 11 3 5 2 target 24 =>"

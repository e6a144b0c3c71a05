import math

import pytest
import torch

from rlheals import cards, ppo, rl
from rlheals.verify import Verifier


def test_gae_matches_hand_computed_values():
    # Three tries: wrong, wrong, right. delta_t = r_t + gamma V_{t+1} - V_t; A_t = delta_t + gamma lam A_{t+1}.
    advantages, returns = ppo.gae([-1.0, -1.0, 5.0], [0.5, 0.2, 1.0], gamma=0.9, lam=0.95)
    expected = [-1.32 + 0.855 * (-0.3 + 0.855 * 4.0), -0.3 + 0.855 * 4.0, 4.0]
    assert advantages == pytest.approx(expected)
    assert returns == pytest.approx([expected[0] + 0.5, expected[1] + 0.2, 5.0])
    assert ppo.gae([2.0], [0.5], 0.9, 0.95) == ([1.5], [2.0])  # one try: reward minus value


def test_policy_loss_clips_the_ratio_both_ways():
    # Row 0: ratio 1.5 with advantage +2 -> clipped to 1.1 * 2; row 1: ratio 0.5 with advantage -1 -> 0.9 * -1.
    logprobs = torch.tensor([[math.log(1.5), 99.0], [math.log(0.5), -99.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the second column is padding and must not count
    loss, clip_share = ppo.policy_loss(logprobs, torch.zeros(2, 2), torch.tensor([[2.0], [-1.0]]), mask, clip=0.1)
    assert float(loss) == pytest.approx((-2.2 + 0.9) / 2)
    assert float(clip_share) == 1.0
    inside, share = ppo.policy_loss(torch.tensor([[math.log(1.05)]]), torch.zeros(1, 1), torch.tensor([[2.0]]),
                                    torch.ones(1, 1), clip=0.1)
    assert float(inside) == pytest.approx(-2.1) and float(share) == 0.0  # inside the clip range: plain ratio * A


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    loss = ppo.value_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0]), clip=0.1)
    # Row 0: max((1-2)^2, (0.6-2)^2) = 1.96; row 1: max(0, (0.4-0)^2) = 0.16.
    assert float(loss) == pytest.approx(0.5 * (1.96 + 0.16) / 2)


def test_reward_never_raises_and_classifies_garbage():
    reward = rl.Reward(Verifier())
    hand = ["2", "3", "4", "6"]
    rule = cards.Rule("id", (10, 10, 10))
    values = rule.values(hand)
    good = cards.compact_target(hand, rule, 24, cards.solve(values)[0])
    completions = [None, 42, [], [{"content": None}], {"role": "assistant"}, "x" * 100_000, "((((((", "1/0 = ;",
                   [{"role": "assistant", "content": good}], good]
    scores = reward(prompts=[None] * len(completions), completions=completions, values=[values] * len(completions))
    assert len(scores) == len(completions) and all(isinstance(s, float) for s in scores)
    assert scores[-2:] == [5.0, 5.0] and all(s < 0 for s in scores[:-2])
    # Values missing or malformed: still a score per completion, never an exception.
    assert len(reward(completions=["1 + 1 = 2 ;", "x"], values=[["a", None]])) == 2
    row = reward.drain()
    assert row["completions"] == len(completions) + 2 and row["share_correct"] == pytest.approx(2 / 12)
    assert reward.drain()["completions"] == 0


def test_reward_survives_a_verifier_that_raises():
    class Broken(Verifier):
        def __call__(self, answer, values):
            raise RuntimeError("boom")

    reward = rl.Reward(Broken())
    assert reward(completions=["1 + 1"], values=[[1, 2, 3, 4]]) == [-3.0]
    assert reward.drain()["share_unparseable"] == 1.0

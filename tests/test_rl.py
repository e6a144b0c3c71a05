import hashlib
import math
import shutil

import polars as pl
import pytest
import torch

from rlheals import cards, episodes, models, ppo, rl
from rlheals.settings import rl_settings
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


def test_ppo_update_plays_multi_turn_episodes_and_keeps_its_reference_fixed():
    from rlheals import data, pretrain

    tokenizer = models.build_tokenizer(pretrain.vocabulary(24))
    model = models.build_tiny_model(tokenizer, {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                "num_heads": 2, "num_kv_heads": 1, "max_positions": 512}, seed=0)
    game = {"target": 24, "rules": {"id": {"face_values": {"J": 10, "Q": 10, "K": 10}, "hand": "uniform"}}}
    splits = {"rl_train": {"rule": "id", "size": 6, "seed": 1}, "id_test": {"rule": "id", "size": 1, "seed": 2},
              "ood_test": {"rule": "id", "size": 1, "seed": 3}}
    rows = data.make_split("rl_train", game, {"holdout_seed": 0, "holdout_share": 0.25, "splits": splits})
    hands = episodes.from_rows(rows, data.rules_from_config(game), "compact")
    settings = rl_settings("ppo", {"lr": 1e-3, "lr_scheduler": "constant", "prompts_per_update": 1, "num_generations": 1,
                                   "probe": {"every": 1, "episodes": 1}, "updates": 2, "kl_coef": 0.1, "verify_turns": 3,
                "temperature": 1.0, "max_new_tokens": 6, "max_grad_norm": 1.0,
                "ppo": {"epochs": 2, "minibatch": 4, "clip": 0.1, "value_clip": 0.1, "value_coef": 0.5, "value_lr": 1e-3,
                        "gamma": 0.9, "lam": 0.95, "normalize_advantages": True}, "bf16": False})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = ppo.PPO(model, tokenizer, settings, Verifier(), seed=0)
    steps = trainer.update(hands)
    assert len(steps) == 6 * 3  # a random model solves nothing: every episode uses all three tries
    assert all(len(t.old_logprobs) == len(t.answer) for t in steps)
    assert math.isfinite(trainer.stats["policy_loss"]) and trainer.stats["value_loss"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # the policy moved
    assert all(torch.equal(before[k], v) for k, v in trainer.reference.state_dict().items())  # its KL anchor did not


def test_length_groups_cover_every_index_once_and_bound_the_padding():
    lengths = [40, 90, 41, 95, 12, 88, 43, 100, 39]
    groups = ppo.length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in g) for g in groups] == [[12], [39, 40, 41, 43], [88, 90, 95, 100]]
    for group in groups:
        real = sum(lengths[i] for i in group)
        assert max(lengths[i] for i in group) * len(group) <= 1.25 * real
    assert ppo.length_groups([7] * 5) == [[0, 1, 2, 3, 4]]


def test_ppo_forward_by_length_groups_equals_one_padded_batch_with_its_gradients():
    from rlheals import pretrain

    tokenizer = models.build_tokenizer(pretrain.vocabulary(24))
    model = models.build_tiny_model(tokenizer, {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                "num_heads": 2, "num_kv_heads": 1, "max_positions": 512}, seed=0)
    head = ppo.value_head(32)
    g = torch.Generator().manual_seed(0)
    steps = [ppo.Step(torch.randint(3, 50, (n,), generator=g).tolist(), torch.randint(3, 50, (a,), generator=g).tolist(), 0.0, "")
             for n, a in [(20, 5), (60, 8), (21, 3), (64, 8), (19, 7)]]
    assert len(ppo.length_groups([len(s.prompt) + len(s.answer) for s in steps])) > 1  # the case under test
    results = []
    for forward in (ppo._forward, lambda *a: ppo._forward_padded(*a, longest=8)):
        model.zero_grad()
        logprobs, mask, values = forward(model, head, steps, 0.7, tokenizer.pad_token_id)
        ((logprobs * mask).sum() + values.sum()).backward()
        results.append((logprobs * mask, mask, values, [p.grad.clone() for p in model.parameters()]))
    (lp1, m1, v1, g1), (lp2, m2, v2, g2) = results
    assert torch.equal(m1, m2)
    torch.testing.assert_close(lp1, lp2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ppo_answer_logprobs_equal_each_sequence_scored_alone():
    """The answers' log-probabilities (logits computed at the answers' positions only) against a reference:
    each sequence alone, unpadded, through the full forward, its answer's tokens read from every logit."""
    from rlheals import pretrain

    tokenizer = models.build_tokenizer(pretrain.vocabulary(24))
    model = models.build_tiny_model(tokenizer, {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                "num_heads": 2, "num_kv_heads": 1, "max_positions": 512}, seed=0)
    g = torch.Generator().manual_seed(1)
    steps = [ppo.Step(torch.randint(3, 50, (n,), generator=g).tolist(), torch.randint(3, 50, (a,), generator=g).tolist(), 0.0, "")
             for n, a in [(20, 5), (60, 8), (23, 1), (64, 6)]]
    with torch.no_grad():
        logprobs, mask, _ = ppo._forward(model, ppo.value_head(32), steps, 0.7, tokenizer.pad_token_id)
        for row, step in enumerate(steps):
            logits = model(input_ids=torch.tensor([step.prompt + step.answer])).logits[0] / 0.7
            at = range(len(step.prompt) - 1, len(step.prompt) - 1 + len(step.answer))
            alone = torch.log_softmax(logits[list(at)], -1).gather(1, torch.tensor(step.answer)[:, None]).squeeze(1)
            assert mask[row].sum() == len(step.answer)
            torch.testing.assert_close(logprobs[row, : len(step.answer)], alone, rtol=1e-5, atol=1e-5)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def smoke_with(workflow, name: str, rl_block: str) -> str:
    """The smoke config with its rl block replaced."""
    smoke = (workflow.path / "config" / "smoke.yaml").read_text()
    start, end = smoke.index("rl:\n"), smoke.index("sft:")
    smoke = smoke[:start] + rl_block + smoke[end:]
    # The reverse edit names an RL model that a changed rl block may not make.
    return workflow.write_config(name, "\n".join(line for line in smoke.splitlines() if "name: reverse" not in line) + "\n")


def test_one_rl_job_per_algo_step_and_seed(workflow):
    config = smoke_with(workflow, "seeds.yaml", "rl:\n  algos: [grpo, rloo, ppo]\n  from_steps: [2, 6]\n  seeds: 2\n"
                                                "  updates: 2\n  save_updates: [1]\n")
    assert workflow.dry_run_jobs(configfile=config)["rl"] == 4 * 2 * 2  # 3 algos + control, 2 steps, 2 seeds
    listed = workflow.run("-n", configfile=config).stdout
    for algo in ("grpo", "rloo", "ppo", "sft_continue"):
        for run in (f"{algo}-2-s1", f"{algo}-6-s2"):
            assert f"results/models/rl-{run}," in listed or f"results/models/rl-{run}\n" in listed, run
            assert f"results/models/rl-{run}-u1" in listed and f"results/eval/rl-{run}.parquet" in listed
    bad = smoke_with(workflow, "bad.yaml", "rl:\n  from_steps: [3]\n")
    proc = workflow.run("-n", configfile=bad, check=False)
    assert proc.returncode != 0 and "config key rl.from_steps: steps [3] are not in sft.save_steps" in proc.stdout + proc.stderr


def test_rl_models_are_loadable_deterministic_and_reruns_stay_in_rl(finished_study):
    workflow = finished_study  # its RL runs made by the smoke study, then again here
    workflow.run("results/tables/rl_log.parquet")
    root = workflow.path / "results" / "models"
    runs = ["rl-grpo-6", "rl-ppo-6", "rl-sft_continue-6"]
    for name in [*runs, *(f"{r}-u1" for r in runs)]:
        model, tokenizer = models.load_model(root / name), models.load_tokenizer(root / name)
        assert model.config.vocab_size == len(tokenizer)
    log = pl.read_parquet(workflow.path / "results" / "tables" / "rl_log.parquet")
    assert sorted(set(log["run"])) == ["grpo-6", "ppo-6", "sft_continue-6"]
    assert log.filter(pl.col("algo") != "sft_continue", pl.col("update") > 0)["mean_reward"].null_count() == 0
    assert log["probe_ood_accuracy"].null_count() == 0  # the probe ran at every update (every: 1)

    # Same seed again: identical models, every algo.
    first = {r: sha256(root / r / "model.safetensors") for r in runs}
    for r in runs:
        shutil.rmtree(root / r)
    workflow.run(*(f"results/models/{r}" for r in runs))
    assert {r: sha256(root / r / "model.safetensors") for r in runs} == first

    # An RL setting reruns RL jobs and their downstream only: no data, base or SFT job.
    smoke = (workflow.path / "config" / "smoke.yaml").read_text()
    block = smoke[smoke.index("rl:\n"): smoke.index("sft:")]
    lr = smoke_with(workflow, "lr.yaml", block + "  lr: 3.0e-4\n")
    target = "results/tables/rl_log.parquet"
    # The control takes RL's learning rate while rl.control_lr is null: all three runs.
    assert workflow.dry_run_jobs(target, configfile=lr) == {"rl": 3, "rl_log_table": 1}
    own = smoke_with(workflow, "own.yaml", block + "  control_lr: 3.0e-4\n  control_steps_per_update: 1\n")
    assert workflow.dry_run_jobs(target, configfile=own) == {"rl": 1, "rl_log_table": 1}  # the control alone
    clip = smoke_with(workflow, "clip.yaml", block.replace("{epochs: 1, minibatch: 4}", "{epochs: 1, minibatch: 4, clip: 0.3}"))
    assert workflow.dry_run_jobs(target, configfile=clip) == {"rl": 1, "rl_log_table": 1}
    assert workflow.dry_run_jobs(target) == {}


def test_rloo_runs_through_trl(finished_study):
    workflow = finished_study  # data, base and SFT as the smoke study made them; the RLOO run is new
    config = smoke_with(workflow, "rloo.yaml", "rl:\n  algos: [rloo]\n  from_steps: [6]\n  control: false\n  updates: 2\n  save_updates: []\n"
                                               "  prompts_per_update: 2\n  num_generations: 2\n  max_new_tokens: 8\n"
                                               "  probe: {every: 1, episodes: 4}\n")
    workflow.run("results/tables/rl/rloo-6.parquet", configfile=config)
    log = pl.read_parquet(workflow.path / "results" / "tables" / "rl" / "rloo-6.parquet")
    assert log["update"].to_list() == [0, 1, 2] and log["completions"].drop_nulls().to_list() == [4, 4]
    models.load_model(workflow.path / "results" / "models" / "rl-rloo-6")


def test_the_control_takes_rls_step_size_and_optimizer_steps_unless_told_otherwise():
    import yaml

    from conftest import ROOT

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    control = rl_settings("sft_continue", cfg["rl"], cfg["sft"])
    assert control.sft.lr == cfg["rl"]["lr"] == 1e-5 and control.sft.lr != cfg["sft"]["lr"]
    assert control.steps_per_update == 2 and control.sft.max_steps == 2 * cfg["rl"]["updates"]
    assert control.sft.batch_size == cfg["rl"]["prompts_per_update"]
    assert control.sft.logging_steps == 2 * cfg["rl"]["probe"]["every"]  # losses on update boundaries
    own = rl_settings("sft_continue", {**cfg["rl"], "control_lr": 3e-4, "control_steps_per_update": 1}, cfg["sft"])
    assert own.sft.lr == 3e-4 and own.sft.max_steps == cfg["rl"]["updates"]
    # The RL algorithms do not read the control's keys.
    assert rl_settings("ppo", cfg["rl"]) == rl_settings("ppo", {**cfg["rl"], "control_lr": 1.0})

"""On a finished smoke study: every long job's log shows its progress with a total and an ETA; the config
key `tracking: tensorboard` gives live curves of pretraining, SFT, every RL algorithm and the control, in
logs/tensorboard/<job>; neither it nor a new commit reruns anything, and tracking changes no result."""

import hashlib
import os
import re

from test_runlog import scalars

LAST = r" \(100%\)(, [\d.]+ (\w+/s|s/\w+), ETA 0s)?"  # the rate when the job took long enough to time


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_progress_lines_tracking_and_commits_rerun_nothing_and_change_no_result(finished_study):
    study, root = finished_study, finished_study.path
    logs = root / "logs"
    for log, line in [("base.log", "pretrain: step 10/10"), ("sft.log", "sft: step 6/6"),
                      ("rl/grpo-6.log", "rl grpo-6: update 2/2"), ("rl/ppo-6.log", "rl ppo-6: update 2/2"),
                      ("rl/sft_continue-6.log", "rl sft_continue-6: step 4/4"),  # 2 updates of 2 optimizer steps
                      ("eval/sft-2.log", "evaluate sft-2: episode 48/48")]:
        text = (logs / log).read_text()
        assert re.search(re.escape(line) + LAST, text), (log, text[-2000:])
    assert not (logs / "tensorboard").exists()  # tracking: none by default

    env = {**os.environ, "RLHEALS_COMMIT": "tracked-1"}
    assert study.dry_run_jobs("--config", "tracking=tensorboard", env=env) == {}

    models = root / "results" / "models"
    trained = sorted(p.name for p in models.iterdir() if p.name.startswith(("sft-", "rl-")))
    before = {name: sha256(models / name / "model.safetensors") for name in trained}
    study.run("results/tables/rl_log.parquet", "--forcerun", "sft", "--config", "tracking=tensorboard",
              env=env)
    assert {name: sha256(models / name / "model.safetensors") for name in trained} == before
    for name in trained:
        assert "| code | rlheals tracked-1 |" in (models / name / "README.md").read_text(), name

    jobs = ("sft", "rl/grpo-6", "rl/ppo-6", "rl/sft_continue-6")
    events = {job: scalars(logs / "tensorboard" / job) for job in jobs}
    assert {"train/loss", "eval/id_loss", "eval/ood_loss"} <= set(events["sft"])
    assert [step for step, _ in events["sft"]["eval/ood_loss"]] == [0, 2, 4, 6]  # the base model's too
    assert {"train/reward", "update/mean_reward", "update/probe_ood_accuracy"} <= set(events["rl/grpo-6"])
    assert {"update/mean_reward", "update/policy_loss", "update/value_loss"} <= set(events["rl/ppo-6"])
    assert {"train/loss", "update/probe_id_accuracy"} <= set(events["rl/sft_continue-6"])
    for job in ("rl/grpo-6", "rl/ppo-6", "rl/sft_continue-6"):  # the probe, every update (rl.probe.every: 1)
        assert [step for step, _ in events[job]["update/probe_ood_accuracy"]] == [0, 1, 2], job
    # Back to tracking: none, the jobs that ran with tensorboard are up to date.
    assert study.dry_run_jobs("results/tables/rl_log.parquet", env=env) == {}

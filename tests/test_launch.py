import sys

import pytest

from rlheals import launch


def test_workers_follow_the_jobs_gpus():
    assert launch.workers({}) == 1
    assert launch.workers({"gpu": 0}) == 1
    assert launch.workers({"gpu": 1, "mem_mb": 4000}) == 1
    assert launch.workers({"gpu": 8}) == 8


def test_one_worker_or_inside_a_worker_runs_in_process(monkeypatch, tmp_path):
    script = tmp_path / "job.py"
    script.write_text("raise SystemExit(3)")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert launch.run_as_workers(1, str(script)) is False
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch.run_as_workers(4, str(script)) is False  # already a worker: never launch again


def test_workers_run_the_script_and_a_failure_is_reported(monkeypatch, tmp_path):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    script = tmp_path / "job.py"
    script.write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(tmp_path)!r}, 'rank' + os.environ['RANK']).write_text(os.environ['WORLD_SIZE'])\n"
    )
    assert launch.run_as_workers(2, str(script), log=lambda _: None) is True
    assert (tmp_path / "rank0").read_text() == (tmp_path / "rank1").read_text() == "2"
    script.write_text("import sys; sys.exit(5)")
    with pytest.raises(RuntimeError, match=r"2 workers of .*job.py failed \(exit 1\)"):
        launch.run_as_workers(2, str(script), log=lambda _: None)


def test_global_batch_is_kept_over_workers(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert launch.per_device_batch(64, 1, "sft.batch_size") == 8
    assert launch.per_device_batch(64, 2, "sft.batch_size") == 4
    with pytest.raises(ValueError, match="config key sft.batch_size: a global batch of 60 does not split over 8"):
        launch.per_device_batch(60, 1, "sft.batch_size")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch.per_device_batch(60, 3, "sft.batch_size") == 20


def test_only_the_main_worker_owns_the_log(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    assert launch.is_main() and launch.log_path("logs/sft.log") == "logs/sft.log"
    monkeypatch.setenv("RANK", "3")
    assert not launch.is_main() and launch.log_path("logs/sft.log") == "logs/sft.log.rank3"


def test_the_launcher_is_the_running_python(monkeypatch, tmp_path):
    """torchrun is started as `python -m torch.distributed.run` with this interpreter: the venv's, so a
    job never picks up another torch from PATH."""
    calls = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd: calls.append(cmd) or type("P", (), {"returncode": 0}))
    launch.run_as_workers(3, "job.py", log=lambda _: None)
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "job.py"]]


@pytest.mark.slow
def test_sft_grpo_and_ppo_jobs_given_two_gpus_train_as_two_workers(workflow):
    """The real path of a multi-GPU job, on the CPU: `gpu=2` (what the SLURM profile asks for) makes the
    SFT, GRPO and PPO jobs run themselves as two torchrun workers (gloo); one publishes, both log."""
    from rlheals import models

    proc = workflow.run("results/models/rl-grpo-6", "results/models/rl-ppo-6", "--set-resources", "sft:gpu=2", "rl:gpu=2")
    launched = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "launching 2 workers" in line]
    assert len(launched) == 3 and any(".sft.py" in line for line in launched) and any(".rl.py" in line for line in launched)
    logs = workflow.path / "logs"
    assert "workers: 2; deepspeed enabled: False" in (logs / "sft.log").read_text()
    assert "workers: 2; deepspeed enabled: False" in (logs / "sft.log.rank1").read_text()
    assert "workers: 2" in (logs / "rl" / "grpo-6.log").read_text() and (logs / "rl" / "grpo-6.log.rank1").exists()
    ppo_log = (logs / "rl" / "ppo-6.log").read_text()
    assert "update 2:" in ppo_log and "update 2:" not in (logs / "rl" / "ppo-6.log.rank1").read_text()  # main logs rows
    for model_id in ("sft-0", "sft-2", "sft-4", "sft-6", "rl-grpo-6", "rl-grpo-6-u1", "rl-ppo-6", "rl-ppo-6-u1"):
        models.load_model(workflow.path / "results" / "models" / model_id)  # complete, checksums verified
    assert not list((workflow.path / "results").glob("**/*.tmp"))


@pytest.mark.parametrize("deepspeed", [None, pytest.param("zero2", marks=pytest.mark.slow)])
def test_two_ppo_workers_take_the_step_one_process_takes_on_all_the_tries(monkeypatch, tmp_path, deepspeed):
    """Data-parallel PPO: two gloo workers, each with half of every minibatch (advantages normalised over
    both, gradients summed, losses divided by the global token and try counts), end with the weights
    and losses of one process that trained on all the tries; also when DeepSpeed ZeRO-2 shards the
    policy's gradients and Adam states over them."""
    import torch

    import ppo_worker

    out = tmp_path / "weights.pt"
    monkeypatch.setenv("PPO_WORKER_OUT", str(out))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    if deepspeed:
        monkeypatch.setenv("PPO_WORKER_DEEPSPEED", deepspeed)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert launch.run_as_workers(2, ppo_worker.__file__, log=lambda _: None)
    two = torch.load(out)
    trainer, steps = ppo_worker.trainer_and_steps()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    one = ppo_worker.train(trainer, steps)
    assert torch.allclose(two.pop("stats"), torch.tensor(list(trainer.stats.values())), atol=1e-5)
    assert one.keys() == two.keys()
    assert all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)
    assert not torch.equal(one["lm_head.weight"], before["lm_head.weight"])
    trainer, steps = ppo_worker.trainer_and_steps()
    half = ppo_worker.train(trainer, steps[::2])  # one worker's share alone
    assert not all(torch.allclose(half[k], two[k], atol=1e-6) for k in half)


def test_two_ppo_workers_train_a_vision_models_text_and_leave_its_cross_attention_as_it_was(monkeypatch, tmp_path):
    """Llama-3.2-Vision's text model: its cross-attention layers take no part in a text-only forward pass
    and get no gradient. The two workers still sync every weight (a skipped one as zeros), end where one
    process ends, and leave those layers bit-identical."""
    import torch

    import families
    import ppo_worker

    model_dir = families.write("mllama", tmp_path / "mllama", seed=0)
    out = tmp_path / "weights.pt"
    monkeypatch.setenv("PPO_WORKER_OUT", str(out))
    monkeypatch.setenv("PPO_WORKER_MODEL", str(model_dir))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert launch.run_as_workers(2, ppo_worker.__file__, log=lambda _: None)
    two = torch.load(out)
    trainer, steps = ppo_worker.trainer_and_steps(model_dir=model_dir)
    cross = {i for i in trainer.model.config.cross_attention_layers}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    one = ppo_worker.train(trainer, steps)
    assert torch.allclose(two.pop("stats"), torch.tensor(list(trainer.stats.values())), atol=1e-5)
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-6) for k in one)
    in_cross = [k for k in before if any(f"layers.{i}." in k for i in cross)]
    assert in_cross and all(torch.equal(two[k], before[k]) for k in in_cross)
    moved = [k for k in before if k not in in_cross and not torch.equal(two[k], before[k])]
    assert any("self_attn" in k for k in moved)  # the self-attention layers did train

"""Progress lines with an ETA and TensorBoard tracking (rlheals.runlog), the Trainer progress callback and
the pretraining loop's use of both. Fast: no snakemake run."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlheals import callbacks, models, pretrain, runlog


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (step, value) of every scalar in a directory's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_durations_read_as_a_person_writes_them():
    assert [runlog.duration(s) for s in (0, 42.4, 60, 330, 3599, 3600, 7500)] == [
        "0s", "42s", "1m00s", "5m30s", "59m59s", "1h00m", "2h05m"]


def test_progress_lines_carry_total_rate_and_eta_and_are_rate_limited():
    clock, lines = Clock(), []
    progress = runlog.Progress("sft", 800, lines.append, every=30, clock=clock)
    clock.now += 60  # 120 steps in 60 s: 2 steps/s, 680 left
    assert progress.update(120)
    assert lines == ["sft: step 120/800 (15%), 2 steps/s, ETA 5m40s"]
    for step in range(121, 180):  # within 30 s of the last line: nothing
        clock.now += 0.5
        assert not progress.update(step)
    clock.now += 0.5
    assert progress.update(180, note="loss 1.25")  # 30 s after the last line
    assert lines[-1] == "sft: step 180/800 (22%), 2 steps/s, ETA 5m10s, loss 1.25"
    clock.now += 1
    assert progress.update(800)  # the last step is always written
    assert lines[-1].startswith("sft: step 800/800 (100%)") and lines[-1].endswith("ETA 0s")
    assert len(lines) == 3


def test_a_resumed_run_times_only_its_own_steps_and_slow_steps_read_as_seconds_each():
    clock, lines = Clock(), []
    progress = runlog.Progress("rl ppo-6", 60, lines.append, unit="update", start=40, clock=clock)
    clock.now += 25  # 5 updates since the resume, 5 s each
    progress.update(45)
    assert lines == ["rl ppo-6: update 45/60 (75%), 5 s/update, ETA 1m15s"]
    # A share of the job's work, with its own total (an evaluation worker's).
    lines.clear()
    evaluation = runlog.Progress("evaluate sft-2", 1000, lines.append, unit="episode", clock=clock)
    clock.now += 10
    evaluation.update(256, 500, note="a worker's share of 1000")
    assert lines == ["evaluate sft-2: episode 256/500 (51%), 25.6 episodes/s, ETA 10s, "
                     "a worker's share of 1000"]


def test_the_trainer_callback_writes_progress_from_the_main_process_only():
    lines = []
    main = callbacks.Progress("rl grpo-6", lines.append, unit="update")
    args = SimpleNamespace(max_steps=6)
    state = SimpleNamespace(is_world_process_zero=True, global_step=2, max_steps=6)  # resumed after update 2
    main.on_train_begin(args, state, None)
    for step in range(3, 7):
        state.global_step = step
        main.on_step_end(args, state, None)
    assert lines[0].startswith("rl grpo-6: update 3/6 (50%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("rl grpo-6: update 6/6 (100%)")
    other = callbacks.Progress("rl grpo-6", lines.append)
    worker = SimpleNamespace(is_world_process_zero=False, global_step=0, max_steps=6)
    other.on_train_begin(args, worker, None)
    other.on_step_end(args, worker, None)
    assert len(lines) == 2


def test_tracking_directories_follow_the_job_logs_and_bad_modes_are_named():
    assert runlog.tracking_dir("none", "logs/sft.log") is None
    assert runlog.tracking_dir("tensorboard", "logs/rl/ppo-6.log") == Path("logs/tensorboard/rl/ppo-6")
    assert runlog.tracking_dir("tensorboard", "logs/seed1-sft.log") == Path("logs/tensorboard/seed1-sft")
    with pytest.raises(ValueError, match=r"config key tracking: 'wandb' is not one of \['none', 'tens"):
        runlog.tracking_dir("wandb", "logs/sft.log")


def test_the_tracker_writes_numbers_as_scalars_and_a_fresh_run_clears_a_stale_one(tmp_path):
    where = tmp_path / "logs" / "tensorboard" / "rl" / "ppo-6"
    tracker = runlog.Tracker(where, fresh=True)
    first = {"probe_ood_accuracy": 0.25, "mean_reward": float("nan"), "note": "x", "flag": True}
    tracker.scalars(0, first, "update/")
    tracker.scalars(1, {"probe_ood_accuracy": 0.5, "mean_reward": 1.5, "completions": 4}, "update/")
    tracker.close()
    got = scalars(where)
    assert got["update/probe_ood_accuracy"] == [(0, 0.25), (1, 0.5)]
    assert got["update/mean_reward"] == [(1, 1.5)] and got["update/completions"] == [(1, 4.0)]
    assert set(got) == {"update/probe_ood_accuracy", "update/mean_reward", "update/completions"}
    resumed = runlog.Tracker(where, fresh=False)  # a resumed run adds to the events
    resumed.scalars(2, {"probe_ood_accuracy": 0.75}, "update/")
    resumed.close()
    assert scalars(where)["update/probe_ood_accuracy"][-1] == (2, 0.75)
    again = runlog.Tracker(where, fresh=True)  # a run that starts over
    again.scalars(1, {"probe_ood_accuracy": 0.125}, "update/")
    again.close()
    assert scalars(where)["update/probe_ood_accuracy"] == [(1, 0.125)]
    off = runlog.Tracker(None)
    off.scalars(1, {"x": 1.0})
    off.close()


def test_tracking_without_tensorboard_installed_says_what_to_do(tmp_path, monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else found(name, *a))
    with pytest.raises(ModuleNotFoundError, match="config key tracking: tensorboard needs the tensorboard"):
        runlog.Tracker(tmp_path / "events")
    runlog.start_tracking(None, fresh=True)  # tracking off: tensorboard is not needed


def test_pretraining_logs_progress_and_tracks_its_loss(tmp_path):
    tokenizer = models.build_tokenizer(pretrain.vocabulary(24))
    size = {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
            "max_positions": 64}
    model = models.build_tiny_model(tokenizer, size, seed=0)
    texts = [f"{tokenizer.bos_token} numbers 3 8 target 24 => 3 * 8 = 24 ; {tokenizer.eos_token}"] * 8
    settings = {"seed": 0, "steps": 4, "batch_size": 2, "warmup_steps": 1, "lr": 1e-3, "min_lr_ratio": 0.1,
                "log_every": 2}
    lines = []
    history = pretrain.train_causal_lm(model, tokenizer, texts, settings, log=lines.append,
                                       tracking=tmp_path / "tb")
    assert [h["step"] for h in history] == [1, 3, 4]
    assert lines[0].startswith("pretrain: step 1/4 (25%), ") and "loss " in lines[0]
    assert lines[-1].startswith("pretrain: step 4/4 (100%), ")
    assert lines[-1].endswith(f"loss {history[-1]['loss']:.4f}")
    got = scalars(tmp_path / "tb")
    assert [step for step, _ in got["pretrain/loss"]] == [1, 3, 4]
    assert got["pretrain/loss"][-1][1] == pytest.approx(history[-1]["loss"])

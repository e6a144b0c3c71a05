"""Trainer callbacks shared by the SFT and TRL RL runs: checkpoints that resume exactly, the loss log, the
per-update RL log with its accuracy probe, and progress lines with an ETA; and the Trainer's TensorBoard
events pointed at the job's tracking directory. Imported only by jobs that train (it imports transformers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import TrainerCallback

from rlheals import checkpoints, launch, runlog
from rlheals.jobs import Job


class Checkpoints(TrainerCallback):
    """For `trainer` run in `work`: a checkpoint at each output step and every tenth of the run (for
    resume), each output published from its checkpoint, and the fault hook at the end of every step.

    The train loss summed since the last logged step is kept with a checkpoint and put back on resume
    (else the first loss logged after a resume would average fewer steps). transformers keeps that sum in
    the trainer's private `_tr_loss` and offers no public hook to save or restore it, so it is read and
    written there, and left alone when a transformers version does not have it."""

    def __init__(self, trainer, max_steps: int, work: Path, outputs: Mapping[int, Path], log, card=None):
        self.trainer, self.work, self.outputs, self.log, self.card = trainer, work, outputs, log, card
        self.every = checkpoints.checkpoint_every(max_steps)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = checkpoints.saved_state(self.work, state.global_step)
        if "tr_loss" in saved and hasattr(self.trainer, "_tr_loss"):  # this worker's own sum
            mine = saved["tr_loss"][launch.rank()] if isinstance(saved["tr_loss"], list) else saved["tr_loss"]
            held = self.trainer._tr_loss
            self.trainer._tr_loss = torch.tensor(mine, dtype=held.dtype, device=held.device)
            self.trainer._globalstep_last_logged = saved["last_logged"]

    def on_step_end(self, args, state, control, **kwargs):
        runlog.fault_point(state.global_step)
        if state.global_step in self.outputs or state.global_step % self.every == 0:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        kept = {}
        if hasattr(self.trainer, "_tr_loss"):  # every worker's
            kept = {"tr_loss": launch.gather_objects(float(self.trainer._tr_loss)),
                    "last_logged": self.trainer._globalstep_last_logged}
        if state.is_world_process_zero:  # one process publishes (several train)
            checkpoints.after_checkpoint(self.work, state.global_step, self.outputs, self.log, kept,
                                         self.card)


class LogLosses(TrainerCallback):
    """Train and held-out losses and the learning rate in the job log, at every logging step."""

    def __init__(self, log):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: v for k, v in (logs or {}).items() if k.endswith("loss") or k == "learning_rate"}
        if shown:
            self.log(f"step {state.global_step}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))


class UpdateLog(TrainerCallback):
    """After each RL update of `job`: a log row (the reward and its verdict categories from `reward`, the
    probe's accuracies when `schedule` (rl.probe) says so), kept in the job's work directory for a resumed
    run. `rows` holds the rows of a resumed run so far and receives the new ones. `steps_per_update`: the
    trainer's steps that make one update (the control takes several per RL update)."""

    def __init__(self, job: Job, reward, probe, schedule, tokenizer, rows: list, steps_per_update: int = 1):
        self.reward, self.probe, self.schedule, self.tokenizer = reward, probe, schedule, tokenizer
        self.rows, self.work, self.log, self.tracking = rows, job.work, job.log, job.tracking
        self.per_update = steps_per_update
        self.tracker = runlog.Tracker(None)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:  # beside the Trainer's own events, in the same directory
            self.tracker = runlog.Tracker(self.tracking, fresh=False)
        if not self.rows:  # a resumed run has its rows from before the kill
            last = args.max_steps // self.per_update
            probed = self.probe(model, self.tokenizer) if self.schedule.due(0, last) else {}
            self.rows.append({"update": 0, **probed})
            if state.is_world_process_zero:
                checkpoints.save_rows(self.work, self.rows)
                self.tracker.scalars(0, self.rows[-1], "update/")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.per_update:
            return
        update = state.global_step // self.per_update
        row = {"update": update, **(self.reward.drain() if self.reward else {})}
        if self.schedule.due(update, args.max_steps // self.per_update):
            row.update(self.probe(model, self.tokenizer))
        self.rows.append(row)
        if state.is_world_process_zero:
            checkpoints.save_rows(self.work, self.rows)
            self.tracker.scalars(update, row, "update/")
        self.log(f"update {update}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if k != "update"))

    def on_train_end(self, args, state, control, **kwargs):
        self.tracker.close()


class Progress(TrainerCallback):
    """A progress line with the total and an ETA (runlog.Progress) as a run's steps end, written by the
    main process only; `unit`: what a step is called (an RL update)."""

    def __init__(self, label: str, log, unit: str = "step"):
        self.label, self.log, self.unit, self.meter = label, log, unit, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            total = state.max_steps or args.max_steps
            self.meter = runlog.Progress(self.label, total, self.log, unit=self.unit, start=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.meter is not None:
            self.meter.update(state.global_step)


def track(trainer, directory: Path | None) -> None:
    """The Trainer's TensorBoard events (its `report_to`) into `directory`, beside the job's other events,
    rather than a time-stamped folder of its work directory (runlog.start_tracking prepares it)."""
    if directory is None:
        return
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(directory)

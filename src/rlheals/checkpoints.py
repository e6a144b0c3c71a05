"""Resume checkpoints and atomic publishing, shared by SFT, the TRL RL runs, PPO and the control.

A training job works in an undeclared work directory, keyed by what it depends on, so that a killed job
resumes from its newest complete checkpoint and a changed config, code or start model never resumes stale
state. Each declared output (the model at a listed step) is published from its checkpoint through a copy
kept in the work directory: a rerun after a kill publishes it again, and loses no finished step."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from rlheals import launch, models, runlog

WORK_ROOT = Path("results/work")
# Files of a checkpoint that are training state, not part of the model directory.
TRAINING_STATE = re.compile(r"optimizer\.pt|scheduler\.pt|rng_state.*\.pth|ppo_state\.pt|trainer_state\.json|training_args\.bin|latest|zero_to_fp32\.py")
RESUME_CHECKPOINTS = 10  # resume checkpoints per run
# Written last into a checkpoint: it is complete and its outputs are published. A dotfile: never in a
# checksum manifest (PPO's checkpoints are model directories) nor in a published model.
RESUME = ".resume.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def work_dir(kind: str, cfg: str, code: str, start: str | Path) -> Path:
    """The work directory of a `kind` job (sft, rl), keyed by its settings, the package code and the
    starting weights."""
    key = "\n".join([cfg, code, models.weights_sha256(start)])
    return WORK_ROOT / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def publish(src: Path, out: Path, work: Path, card: models.Card | None = None,
            step: int | None = None) -> None:
    """Publish a checkpoint's model files (not its training state) as `out`, through a copy kept in the
    work directory: when the job is killed after this, its rerun publishes `out` again from the copy.
    `card`: the model card `out` carries (of `step`), in place of any the checkpoint has. The card is
    not training state: the work directory's key and the resume point read the weights alone."""
    kept = work / "models" / out.name
    text = card.render(out.name, step) if card is not None else None
    models.link_or_copy_tree(src, kept, skip=TRAINING_STATE, card=text)
    models.link_or_copy_tree(kept, out)


def republish(outputs: Mapping[int, Path], work: Path) -> None:
    """Outputs published before a kill (snakemake removes a failed job's outputs): again, from the work dir."""
    for out in outputs.values():
        if (work / "models" / out.name).exists() and not out.exists():
            models.link_or_copy_tree(work / "models" / out.name, out)


def last_checkpoint(work: Path) -> Path | None:
    """The newest complete checkpoint (after_checkpoint marks it so, last)."""

    def complete(path: Path) -> bool:
        try:
            return isinstance(json.loads((path / RESUME).read_text()), dict)
        except (OSError, ValueError):
            return False

    found = [p for p in work.glob("checkpoint-*") if _CHECKPOINT.fullmatch(p.name) and complete(p)]
    return max(found, key=step_of, default=None)


def step_of(checkpoint: Path | None) -> int:
    """The step of a checkpoint-{step} directory; 0 for none."""
    return int(checkpoint.name.split("-")[1]) if checkpoint else 0


def resume_point(outputs: Mapping[int, Path], work: Path) -> Path | None:
    """What every job does first: make its work directory, publish again what a killed run had published
    (one worker does), and return the newest complete checkpoint to resume from (None: start afresh)."""
    work.mkdir(parents=True, exist_ok=True)
    if launch.is_main():
        republish(outputs, work)
    return last_checkpoint(work)


def checkpoint_every(max_steps: int) -> int:
    """Resume checkpoints (beyond the published steps) every tenth of a run: a kill loses at most that."""
    return max(1, max_steps // RESUME_CHECKPOINTS)


def after_checkpoint(work: Path, step: int, outputs: Mapping[int, Path], log, state: Mapping | None = None,
                     card: models.Card | None = None) -> None:
    """Once checkpoint-{step} is written: publish it if `step` is an output (with its model `card`), then
    mark it complete (with `state`, what the trainer needs beyond the checkpoint), then drop older
    checkpoints. A kill anywhere in between leaves a complete checkpoint to resume from, whose outputs were
    published."""
    checkpoint = work / f"checkpoint-{step}"
    if step in outputs:
        publish(checkpoint, outputs[step], work, card, step)
        log(f"published {outputs[step]}")
    runlog.write_json_atomic(dict(state or {}), checkpoint / RESUME)
    for old in work.glob("checkpoint-*"):  # keep only the newest checkpoint for resume
        if old != checkpoint:
            shutil.rmtree(old, ignore_errors=True)


def saved_state(work: Path, step: int) -> dict:
    """The state after_checkpoint kept with checkpoint-{step} (empty for none)."""
    path = work / f"checkpoint-{step}" / RESUME
    return json.loads(path.read_text()) if step and path.exists() else {}


def load_rows(work: Path, upto: int) -> list[dict]:
    """The per-update log rows a killed run had written, up to the update it resumes from."""
    path = work / "update_log.json"
    return [r for r in json.loads(path.read_text()) if r["update"] <= upto] if upto and path.exists() else []


def save_rows(work: Path, rows) -> None:
    """The log rows so far, rewritten at every update (JSON keeps floats exact and, unsorted, the column
    order: a resumed run's log equals an uninterrupted one's)."""
    runlog.write_atomic(work / "update_log.json", lambda tmp: tmp.write_text(json.dumps(list(rows))))


def train(trainer, work: Path, resume: Path | None) -> None:
    """trainer.train, from `resume` if there is one; a full or read-only disk under the checkpoints is said so."""
    with runlog.writing(work):
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)

"""SFT with TRL's SFTTrainer: loss on the answer tokens only, a model directory published at every step
listed in config, train and held-out ID/OOD loss logged, resumable after a kill, optional freezing and
DeepSpeed. Everything runs in an undeclared work directory; declared outputs are published atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlheals import cards, launch, models, runlog

# Files of a Trainer checkpoint that are training state, not part of the model directory.
TRAINING_STATE = re.compile(r"optimizer\.pt|scheduler\.pt|rng_state.*\.pth|ppo_state\.pt|trainer_state\.json|training_args\.bin|latest|zero_to_fp32\.py")
RESUME_CHECKPOINTS = 10  # resume checkpoints per run


def conversations(rows: Sequence[Mapping], rules: Mapping[str, cards.Rule], fmt: str) -> list[dict]:
    """Dataset rows as TRL prompt-completion conversations (the loss falls on the completion only)."""
    out = []
    for r in rows:
        rule = rules[r["rule"]]
        prompt = cards.render_prompt(fmt, r["cards"], rule, r["target"])
        answer = cards.render_target(fmt, r["cards"], rule, r["target"], r["solution"])
        out.append({"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]})
    return out


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def freeze(model, specs: Sequence[Mapping]) -> list[str]:
    """Freeze parameters whose name matches a spec's `pattern` (regex) within its `layers` [first, last]
    (inclusive; all layers when absent). Returns the frozen names."""
    frozen = []
    for name, param in model.named_parameters():
        for spec in specs:
            if not re.search(spec["pattern"], name):
                continue
            layers = spec.get("layers")
            if layers is not None:
                match = _LAYER.search(name)
                if match is None or not layers[0] <= int(match.group(1)) <= layers[1]:
                    continue
            param.requires_grad_(False)
            frozen.append(name)
            break
    if specs and not frozen:
        raise ValueError(f"sft.freeze matches no parameter: {list(specs)}")
    return frozen


def publish(src: Path, out: Path, work: Path) -> None:
    """Publish a checkpoint's model files (not its training state) as `out`, through a copy kept in the
    work directory: when the job is killed after this, its rerun publishes `out` again from the copy."""
    kept = work / "models" / out.name
    models.link_or_copy_tree(src, kept, skip=TRAINING_STATE)
    models.link_or_copy_tree(kept, out)


def republish(outputs: Mapping[int, Path], work: Path) -> None:
    """Outputs published before a kill (snakemake removes a failed job's outputs): again, from the work dir."""
    for out in outputs.values():
        if (work / "models" / out.name).exists() and not out.exists():
            models.link_or_copy_tree(work / "models" / out.name, out)


_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


# Written last into a checkpoint: it is complete and its outputs are published. A dotfile: never in a
# checksum manifest (PPO's checkpoints are model directories) nor in a published model.
RESUME = ".resume.json"


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


def checkpoint_every(max_steps: int) -> int:
    """Resume checkpoints (beyond the published steps) every tenth of a run: a kill loses at most that."""
    return max(1, max_steps // RESUME_CHECKPOINTS)


def after_checkpoint(work: Path, step: int, outputs: Mapping[int, Path], log, state: Mapping | None = None) -> None:
    """Once checkpoint-{step} is written: publish it if `step` is an output, then mark it complete (with
    `state`, what the trainer needs beyond the checkpoint), then drop older checkpoints. A kill anywhere in
    between leaves a complete checkpoint to resume from, whose outputs were published."""
    checkpoint = work / f"checkpoint-{step}"
    if step in outputs:
        publish(checkpoint, outputs[step], work)
        log(f"published {outputs[step]}")
    runlog.write_json_atomic(dict(state or {}), checkpoint / RESUME)
    for old in work.glob("checkpoint-*"):  # keep only the newest checkpoint for resume
        if old != checkpoint:
            shutil.rmtree(old, ignore_errors=True)


def training_args(settings: Mapping, work: Path, threads: int, held_out: bool = True):
    """SFTConfig from the `sft` config slice, with flags that are right on a CPU (docs/stack.md, pitfalls 2 and 3). With
    `held_out`, the held-out sets are evaluated at every logging step."""
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(work),
        max_steps=settings["max_steps"],
        per_device_train_batch_size=launch.per_device_batch(settings["batch_size"], settings["grad_accum"], "batch_size"),
        gradient_accumulation_steps=settings["grad_accum"],
        per_device_eval_batch_size=launch.per_device_batch(settings["batch_size"], 1, "batch_size"),
        learning_rate=settings["lr"],
        lr_scheduler_type=settings["lr_scheduler"],
        warmup_steps=settings["warmup_ratio"],  # a float < 1 is a share of max_steps
        adam_beta1=settings["adam_beta1"],
        adam_beta2=settings["adam_beta2"],
        adam_epsilon=settings["adam_epsilon"],
        weight_decay=settings["weight_decay"],
        max_grad_norm=settings["max_grad_norm"],
        seed=settings["seed"],
        data_seed=settings["seed"],
        logging_steps=settings["logging_steps"],
        eval_strategy="steps" if held_out else "no",
        eval_steps=settings["logging_steps"],
        save_strategy="no",  # checkpoints: checkpoints_callback
        max_length=settings["max_length"],
        completion_only_loss=True,
        packing=False,
        bf16=on_gpu and settings["bf16"],
        fp16=False,
        use_cpu=not on_gpu,
        activation_checkpointing=False,  # 30-60% slower on a CPU for small models
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=True,
        deepspeed=launch.deepspeed_config(settings.get("deepspeed")),
        save_only_model=False,
        torch_compile=False,
    )


def trainer_class():
    """TRL's SFTTrainer with the plain causal-LM loss of transformers' Trainer. The collator already masks
    the prompt (labels -100), so the loss is the same completion-only mean; what is skipped is TRL's fused
    LM head and its per-step entropy / token-accuracy metrics, which cost ~25% of a step for a small model
    on a CPU (benchmarks/sft_overhead.py)."""
    from transformers import Trainer
    from trl import SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return LeanSFTTrainer


def checkpoints_callback(max_steps: int, work: Path, outputs: Mapping[int, Path], log):
    """For a Trainer run in `work`: a checkpoint at each output step and every tenth of the run (for
    resume), each output published from its checkpoint, and the fault hook at the end of every step.
    The train loss summed since the last logged step is kept with a checkpoint and put back on resume
    (else the first loss logged after a resume would average fewer steps); `train` hands it the trainer."""
    import torch
    from transformers import TrainerCallback

    every = checkpoint_every(max_steps)

    class Checkpoints(TrainerCallback):
        trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            resumed = work / f"checkpoint-{state.global_step}" / RESUME
            saved = json.loads(resumed.read_text()) if state.global_step and resumed.exists() else {}
            if "tr_loss" in saved and hasattr(self.trainer, "_tr_loss"):  # this worker's own sum
                mine = saved["tr_loss"][launch.rank()] if isinstance(saved["tr_loss"], list) else saved["tr_loss"]
                self.trainer._tr_loss = torch.tensor(mine, dtype=self.trainer._tr_loss.dtype,
                                                     device=self.trainer._tr_loss.device)
                self.trainer._globalstep_last_logged = saved["last_logged"]

        def on_step_end(self, args, state, control, **kwargs):
            runlog.fault_point(state.global_step)
            if state.global_step in outputs or state.global_step % every == 0:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            kept = {}
            if hasattr(self.trainer, "_tr_loss"):  # transformers' private logging state (5.x), every worker's
                kept = {"tr_loss": launch.gather_objects(float(self.trainer._tr_loss)),
                        "last_logged": self.trainer._globalstep_last_logged}
            if state.is_world_process_zero:  # one process publishes (several train)
                after_checkpoint(work, state.global_step, outputs, log, kept)

    return Checkpoints()


def train(trainer, work: Path, resume: Path | None) -> None:
    """trainer.train, from `resume` if there is one; a full or read-only disk under the checkpoints is said so."""
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "trainer"):
            callback.trainer = trainer
    with runlog.writing(work):
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)


def losses_callback(log):
    """Train and held-out losses and the learning rate in the job log, at every logging step."""
    from transformers import TrainerCallback

    class LogLosses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k: v for k, v in (logs or {}).items() if k.endswith("loss") or k == "learning_rate"}
            if shown:
                log(f"step {state.global_step}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))

    return LogLosses()


def loss_table(log_history: Sequence[Mapping]) -> list[dict]:
    """Trainer log history -> one row per logged step: train loss, held-out ID and OOD loss, lr."""
    by_step: dict[int, dict] = {}
    for entry in log_history:
        row = by_step.setdefault(entry["step"], {"step": entry["step"]})
        for src, dst in (("loss", "train_loss"), ("eval_id_loss", "id_loss"), ("eval_ood_loss", "ood_loss"),
                         ("learning_rate", "lr"), ("mean_token_accuracy", "train_token_accuracy")):
            if src in entry:
                row[dst] = float(entry[src])
    return [by_step[s] for s in sorted(by_step)]


def run(base_dir: Path, train_rows, id_rows, ood_rows, rules, fmt: str, settings: Mapping,
        outputs: Mapping[int, Path], work: Path, threads: int, log=print, callbacks=()) -> list[dict]:
    """Train, publishing every step in `outputs`; resume from `work` if an earlier run was killed.
    `callbacks`: more TrainerCallbacks (the RL control's probe)."""
    import datasets
    import torch

    datasets.disable_progress_bars()  # the job log gets our per-step lines instead
    torch.set_num_threads(threads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    work.mkdir(parents=True, exist_ok=True)
    main = launch.is_main()  # of several workers, one writes what they share
    if main:
        (work / "settings.json").write_text(json.dumps(settings, sort_keys=True))
        if 0 in outputs:  # step 0 is the base model itself
            publish(base_dir, outputs[0], work)
        republish(outputs, work)
    resume = last_checkpoint(work)

    model = models.load_model(base_dir, dtype=torch.float32)
    tokenizer = models.load_tokenizer(base_dir)
    frozen = freeze(model, settings["freeze"])
    if frozen:
        log(f"frozen: {len(frozen)} tensors ({frozen[0]} ...)")
    n_eval = settings["eval_examples"]
    trainer = trainer_class()(
        model=model,
        args=training_args(settings, work, threads),
        train_dataset=datasets.Dataset.from_list(conversations(train_rows, rules, fmt)),
        eval_dataset={
            "id": datasets.Dataset.from_list(conversations(id_rows[:n_eval], rules, fmt)),
            "ood": datasets.Dataset.from_list(conversations(ood_rows[:n_eval], rules, fmt)),
        },
        processing_class=tokenizer,
        callbacks=[checkpoints_callback(settings["max_steps"], work, outputs, log), losses_callback(log), *callbacks],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our on_log callback logs instead of print()
    log(f"workers: {launch.world_size()}; deepspeed enabled: {trainer.is_deepspeed_enabled}; trainable tensors: "
        f"{sum(p.requires_grad for p in model.parameters())}/{len(list(model.parameters()))}")
    step0 = work / "step0_metrics.json"  # held-out losses of the base model, kept for a resumed run
    if resume is None:
        # DeepSpeed (below ZeRO-3) cannot evaluate before its engine exists: no step-0 losses there.
        metrics = {} if trainer.is_deepspeed_enabled else trainer.evaluate()
        if main:
            runlog.write_json_atomic({**metrics, "step": 0}, step0)
    else:
        log(f"resuming from {resume}")
    train(trainer, work, resume)
    return loss_table([*([json.loads(step0.read_text())] if main else []), *trainer.state.log_history])

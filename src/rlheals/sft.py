"""SFT with TRL's SFTTrainer: loss on the answer tokens only, a model directory published at every step
listed in config, train and held-out ID/OOD loss logged, resumable after a kill, optional freezing and
DeepSpeed. Everything runs in an undeclared work directory; declared outputs are published atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlheals import cards, checkpoints, launch, models, runlog
from rlheals.jobs import Job, Task
from rlheals.settings import SFTSettings

def conversations(rows: Sequence[Mapping], rules: Mapping[str, cards.Rule], fmt: str) -> list[dict]:
    """Dataset rows as TRL prompt-completion conversations (the loss falls on the completion only)."""
    out = []
    for r in rows:
        rule = rules[r["rule"]]
        prompt = cards.render_prompt(fmt, r["cards"], rule, r["target"])
        answer = cards.render_target(fmt, r["cards"], rule, r["target"], r["solution"])
        out.append({"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]})
    return out


def check_lengths(tokenizer, examples: Mapping[str, Sequence[Mapping]], max_length: int) -> None:
    """An error when an SFT example (prompt and answer, as the chat template renders them) of any set in
    `examples` (name -> examples) is longer than `sft.max_length`: truncation would cut the answer the
    loss falls on, silently."""
    for name, rows in examples.items():
        if not rows:
            continue
        texts = tokenizer.apply_chat_template([e["prompt"] + e["completion"] for e in rows], tokenize=False)
        over = [n for n in map(len, tokenizer(texts, add_special_tokens=False)["input_ids"]) if n > max_length]
        if over:
            raise ValueError(f"config key sft.max_length: {max_length} tokens, and {len(over)} of the {len(rows)} "
                             f"{name} examples are longer (the longest has {max(over)}): SFT would train and "
                             f"measure on truncated answers. Set sft.max_length to at least {max(over)}")


def freeze(model, specs: Sequence[Mapping]) -> list[str]:
    """Freeze parameters whose name matches a spec's `pattern` (regex) within its `layers` [first, last]
    (inclusive; all layers when absent), the decoder layers found as the analysis finds them
    (rlheals.matrices), in any family. Returns the frozen names."""
    from rlheals import matrices

    stack = None
    if any(spec.get("layers") is not None for spec in specs):
        path, _ = matrices.decoder_layers(model, model.config.get_text_config().num_hidden_layers)
        stack = re.compile(re.escape(path) + r"\.(\d+)\.")
    frozen = []
    for name, param in model.named_parameters():
        for spec in specs:
            if not re.search(spec["pattern"], name):
                continue
            layers = spec.get("layers")
            if layers is not None:
                match = stack.match(name)
                if match is None or not layers[0] <= int(match.group(1)) <= layers[1]:
                    continue
            param.requires_grad_(False)
            frozen.append(name)
            break
    if specs and not frozen:
        raise ValueError(f"sft.freeze matches no parameter: {list(specs)}")
    return frozen


def training_args(settings: SFTSettings, work: Path, held_out: bool = True, report_to: str = "none"):
    """SFTConfig from the `sft` config slice and the shared device flags. With `held_out`, the held-out
    sets are evaluated at every logging step. `report_to`: "tensorboard" for live curves (config key
    `tracking`)."""
    from trl import SFTConfig

    return SFTConfig(
        **{**launch.trainer_flags(work, settings.seed, settings.bf16, settings.deepspeed),
           "report_to": report_to},
        max_steps=settings.max_steps,
        per_device_train_batch_size=launch.per_device_batch(settings.batch_size, settings.grad_accum, "batch_size"),
        gradient_accumulation_steps=settings.grad_accum,
        per_device_eval_batch_size=launch.per_device_batch(settings.batch_size, 1, "batch_size"),
        learning_rate=settings.lr,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a share of max_steps
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_epsilon=settings.adam_epsilon,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        logging_steps=settings.logging_steps,
        eval_strategy="steps" if held_out else "no",
        eval_steps=settings.logging_steps,
        max_length=settings.max_length,
        completion_only_loss=True,
        packing=False,
        save_only_model=False,
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


def run(*, job: Job, task: Task, settings: SFTSettings, callbacks=()) -> list[dict]:
    """Train from `job.start` on `task.train` (held-out losses on `task.id_test` / `task.ood_test`),
    publishing every step in `job.outputs`; resume from `job.work` if an earlier run was killed.
    `callbacks`: more TrainerCallbacks (the RL control's probe). Progress lines go to `job.log`; with
    `job.tracking`, TensorBoard events there too."""
    import datasets
    import torch
    from transformers.trainer_callback import PrinterCallback

    from rlheals.callbacks import Checkpoints, LogLosses, Progress, track

    datasets.disable_progress_bars()  # the job log gets our per-step lines instead
    torch.set_num_threads(job.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    settings = dataclasses.replace(settings, seed=job.seed)
    work, log = job.work, job.log
    work.mkdir(parents=True, exist_ok=True)
    main = launch.is_main()  # of several workers, one writes what they share
    if main:
        (work / "settings.json").write_text(json.dumps(dataclasses.asdict(settings), sort_keys=True))
        if 0 in job.outputs:  # step 0 is the base model itself
            checkpoints.publish(job.start, job.outputs[0], work, job.card, 0)
    resume = checkpoints.resume_point(job.outputs, work)
    if main:
        runlog.start_tracking(job.tracking, fresh=resume is None)

    tokenizer = models.load_tokenizer(job.start)
    n_eval = settings.eval_examples
    train, held_out = conversations(task.train, task.rules, task.fmt), {
        "id": conversations(task.id_test[:n_eval], task.rules, task.fmt),
        "ood": conversations(task.ood_test[:n_eval], task.rules, task.fmt)}
    check_lengths(tokenizer, {"training": train, "held-out ID": held_out["id"], "held-out OOD": held_out["ood"]},
                  settings.max_length)  # before the model loads: a 7B model need not load to be refused
    model = models.load_model(job.start, dtype=torch.float32)
    frozen = freeze(model, settings.freeze)
    if frozen:
        log(f"frozen: {len(frozen)} tensors ({frozen[0]} ...)")
    trainer = trainer_class()(
        model=model,
        args=training_args(settings, work, report_to="tensorboard" if job.tracking else "none"),
        train_dataset=datasets.Dataset.from_list(train),
        eval_dataset={rule: datasets.Dataset.from_list(rows) for rule, rows in held_out.items()},
        processing_class=tokenizer,
    )
    track(trainer, job.tracking)
    checkpoint = Checkpoints(trainer, settings.max_steps, work, job.outputs, log, job.card)
    for callback in (checkpoint, LogLosses(log), Progress(job.name, log), *callbacks):
        trainer.add_callback(callback)
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
    checkpoints.train(trainer, work, resume)
    return loss_table([*([json.loads(step0.read_text())] if main else []), *trainer.state.log_history])

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

from rlheals import cards, models

# Files of a Trainer checkpoint that are training state, not part of the model directory.
TRAINING_STATE = re.compile(r"optimizer\.pt|scheduler\.pt|rng_state.*\.pth|trainer_state\.json|training_args\.bin|latest|zero_to_fp32\.py")
DEEPSPEED_CONFIGS = {"zero2": "config/deepspeed/zero2.json", "zero3": "config/deepspeed/zero3.json"}


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


def publish(src_dir: Path, dst: Path) -> None:
    """Link a checkpoint's model files (not its training state) into a model directory, atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in src_dir.iterdir():
        # Dotfiles are snakemake's (.snakemake_timestamp): a shared link would make one output's
        # timestamp move another's.
        if path.is_file() and not path.name.startswith(".") and not TRAINING_STATE.fullmatch(path.name):
            models.link_or_copy_file(path, tmp / path.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def last_checkpoint(work: Path) -> Path | None:
    found = [p for p in work.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def training_args(settings: Mapping, work: Path, threads: int, held_out: bool = True):
    """SFTConfig from the `sft` config slice, with flags that are right on a CPU (STACK.md). With
    `held_out`, the held-out sets are evaluated at every logging step."""
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    deepspeed = settings.get("deepspeed")
    return SFTConfig(
        output_dir=str(work),
        max_steps=settings["max_steps"],
        per_device_train_batch_size=settings["batch_size"] // settings["grad_accum"],
        gradient_accumulation_steps=settings["grad_accum"],
        per_device_eval_batch_size=settings["batch_size"],
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
        save_strategy="no",  # checkpoints at the listed steps only (PublishAtSteps)
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
        deepspeed=str(deepspeed) if deepspeed else None,
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


def make_callbacks(save_steps: Sequence[int], work: Path, outputs: Mapping[int, Path], log):
    from transformers import TrainerCallback

    class PublishAtSteps(TrainerCallback):
        """Checkpoint at each listed step (for resume), then publish that step's model directory."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in save_steps:
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            step = state.global_step
            if step in outputs:
                checkpoint = work / f"checkpoint-{step}"
                publish(checkpoint, work / "models" / f"sft-{step}")
                publish(work / "models" / f"sft-{step}", outputs[step])
                log(f"published sft-{step} -> {outputs[step]}")
                for old in work.glob("checkpoint-*"):  # keep only the newest checkpoint for resume
                    if old != checkpoint:
                        shutil.rmtree(old, ignore_errors=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = {k: v for k, v in (logs or {}).items() if k.endswith("loss") or k == "learning_rate"}
            if shown:
                log(f"step {state.global_step}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))

    return [PublishAtSteps()]


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
    (work / "settings.json").write_text(json.dumps(settings, sort_keys=True))
    if 0 in outputs:  # step 0 is the base model itself
        publish(base_dir, outputs[0])
    resume = last_checkpoint(work)
    for step, out in outputs.items():  # steps finished before a kill: publish again from the work dir
        if step and (work / "models" / f"sft-{step}").exists() and not out.exists():
            publish(work / "models" / f"sft-{step}", out)

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
        callbacks=[*make_callbacks(sorted(s for s in outputs if s), work, outputs, log), *callbacks],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our on_log callback logs instead of print()
    log(f"deepspeed enabled: {trainer.is_deepspeed_enabled}; trainable tensors: "
        f"{sum(p.requires_grad for p in model.parameters())}/{len(list(model.parameters()))}")
    step0 = work / "step0_metrics.json"  # held-out losses of the base model, kept for a resumed run
    if resume is None:
        # DeepSpeed (below ZeRO-3) cannot evaluate before its engine exists: no step-0 losses there.
        metrics = {} if trainer.is_deepspeed_enabled else trainer.evaluate()
        step0.write_text(json.dumps({**metrics, "step": 0}))
    else:
        log(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return loss_table([json.loads(step0.read_text()), *trainer.state.log_history])


def init_single_process_distributed() -> None:
    """DeepSpeed outside a launcher looks for MPI; a single process needs these set (STACK.md, pitfall 6)."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(key, value)

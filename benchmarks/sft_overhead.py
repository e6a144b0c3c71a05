"""SFT steps/s of our rule's trainer (TRL SFTTrainer with the rule's settings) vs a bare transformers
training loop on the same model, the same batches and the same optimizer, measured in one run.

    .venv/bin/python benchmarks/sft_overhead.py [--steps 60] [--config config/config.yaml]

Prints the median seconds per step of each and our overhead (must be at most 15%)."""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rlheals import data, models, pretrain, sft  # noqa: E402
from rlheals.settings import SFTSettings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    settings = {**cfg["sft"], "max_steps": args.steps, "save_steps": [], "logging_steps": 10}

    from datasets import Dataset
    from transformers import TrainerCallback

    game = cfg["game"]
    rules = data.rules_from_config(game)
    split = {**cfg["data"], "splits": {**cfg["data"]["splits"], "sft_train": {"rule": "id", "size": 4096, "seed": 1}}}
    rows = data.make_split("sft_train", game, split)
    tokenizer = models.build_tokenizer(pretrain.vocabulary(game["target"]))
    model = models.build_tiny_model(tokenizer, cfg["model"]["tiny"], seed=0)
    bare_model = copy.deepcopy(model)

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    training_args = sft.training_args(SFTSettings.from_config(settings), Path("/tmp/rlheals-sft-benchmark"), held_out=False)
    trainer = sft.trainer_class()(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(sft.conversations(rows, rules, cfg["prompt"]["format"])),
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    batches = [b for _, b in zip(range(args.steps), trainer.get_train_dataloader())]
    trainer.train()
    ours = [b - a for a, b in zip(stamps, stamps[1:])][5:]

    # The bare loop: same batches, same AdamW settings, plain forward/backward/step.
    opt = torch.optim.AdamW(bare_model.parameters(), lr=settings["lr"], betas=(settings["adam_beta1"], settings["adam_beta2"]),
                            eps=settings["adam_epsilon"], weight_decay=settings["weight_decay"])
    bare_model.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        out = bare_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(bare_model.parameters(), settings["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    bare = times[5:]

    med_ours, med_bare = statistics.median(ours), statistics.median(bare)
    overhead = med_ours / med_bare - 1
    print(f"batch {settings['batch_size']} x ~{batches[0]['input_ids'].shape[1]} tokens, {args.steps} steps, {args.threads} threads")
    print(f"ours (rule trainer + settings) : {med_ours * 1e3:.1f} ms/step ({1 / med_ours:.2f} steps/s)")
    print(f"bare transformers loop:           {med_bare * 1e3:.1f} ms/step ({1 / med_bare:.2f} steps/s)")
    print(f"overhead: {overhead * 100:+.1f}% (limit +15%)")
    return 0 if overhead <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())

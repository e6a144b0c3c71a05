"""RL from an SFT checkpoint on the ID rule, rewarded by the verifier: GRPO and RLOO through TRL, the
paper's PPO (rlheals.ppo), and the continued-SFT control. Shared here: the reward function, the prompt
dataset, the OOD/ID probe that runs during training, and the per-update log (kept in the work directory
with the checkpoints of sft.checkpoints_callback, so that a killed run resumes where it was)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlheals import cards, evaluate, launch, models, runlog
from rlheals.verify import CATEGORIES, Verifier

TRL_ALGOS = ("grpo", "rloo")
CONTROL = "sft_continue"


def completion_text(completion) -> str:
    """A TRL completion (plain text, or a list of chat messages) as text; anything else is empty text,
    which the verifier classifies as unparseable."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content")
        return content if isinstance(content, str) else ""
    return ""


class Reward:
    """The verifier's reward as a TRL reward function. It never raises: whatever a completion is, the
    verifier classifies it, and a verifier failure counts as unparseable. Verdicts are kept until the
    update's log row collects them."""

    __name__ = "verifier_reward"  # TRL names its reward metrics after the function

    def __init__(self, verifier: Verifier):
        self.verifier = verifier
        self.pending: list[tuple[str, float]] = []

    def classify(self, completion, values) -> tuple[str, float]:
        try:
            verdict = self.verifier(completion_text(completion), tuple(int(v) for v in values))
            return verdict.category, float(verdict.reward)
        except Exception:  # a reward function must not end a run over one completion
            return "unparseable", float(self.verifier.rewards["unparseable"])

    def __call__(self, prompts=None, completions=(), values=(), **kwargs) -> list[float]:
        if len(values) != len(completions):
            values = [()] * len(completions)
        scored = [self.classify(c, v) for c, v in zip(completions, values)]
        self.pending += scored
        return [reward for _, reward in scored]

    def drain(self) -> dict:
        """Mean reward and the share of each verdict category since the last call."""
        scored, self.pending = self.pending, []
        return verdict_summary(scored)


def verdict_summary(scored: Sequence[tuple[str, float]]) -> dict:
    """(category, reward) pairs -> mean reward, count and the share of each verdict category."""
    counts = Counter(category for category, _ in scored)
    row = {"mean_reward": sum(r for _, r in scored) / len(scored) if scored else float("nan"), "completions": len(scored)}
    row.update({f"share_{c}": counts[c] / len(scored) if scored else float("nan") for c in CATEGORIES})
    return row


def prompt_rows(rows: Sequence[Mapping], rules: Mapping[str, cards.Rule], fmt: str) -> list[dict]:
    """rl_train hands as TRL conversational prompts, with the card values the reward needs."""
    return [{"prompt": [{"role": "user", "content": cards.render_prompt(fmt, r["cards"], rules[r["rule"]], r["target"])}],
             "values": list(r["values"])} for r in rows]


class Probe:
    """ID and OOD accuracy on a small fixed set of test episodes (greedy, the evaluation protocol), run
    every few updates: the papers' public code switched this monitoring off."""

    def __init__(self, episodes: Sequence[evaluate.Episode], verifier: Verifier, turns: int, max_new_tokens: int):
        self.episodes, self.verifier, self.turns = list(episodes), verifier, turns
        self.decoding = evaluate.Decoding(max_new_tokens=max_new_tokens)

    def __call__(self, model, tokenizer) -> dict:
        import torch

        training = model.training
        model.eval()
        state = torch.random.get_rng_state()  # probing must not change the run's sampling
        rows = evaluate.run_episodes(model, tokenizer, self.episodes, self.verifier, self.turns, self.decoding)
        torch.random.set_rng_state(state)
        model.train(training)
        return {f"probe_{rule}_accuracy": s["accuracy"] for rule, s in evaluate.summarize(rows).items()}


def load_rows(work: Path, upto: int) -> list[dict]:
    """The log rows a killed run had written, up to the update it resumes from."""
    path = work / "update_log.json"
    return [r for r in json.loads(path.read_text()) if r["update"] <= upto] if upto and path.exists() else []


def save_rows(work: Path, rows: Sequence[Mapping]) -> None:
    """The log rows so far, rewritten at every update (JSON keeps floats exact and, unsorted, the column
    order: a resumed run's log equals an uninterrupted one's)."""
    runlog.write_atomic(work / "update_log.json", lambda tmp: tmp.write_text(json.dumps(list(rows))))


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def trl_config(algo: str, settings: Mapping, work: Path, seed: int):
    """GRPOConfig / RLOOConfig: one update = `prompts_per_update` prompts x `num_generations` samples,
    one optimizer step on them, flags that are right on a CPU (docs/stack.md, pitfalls 2 and 3)."""
    import torch
    from trl import GRPOConfig, RLOOConfig

    on_gpu = torch.cuda.is_available()
    config_class = GRPOConfig if algo == "grpo" else RLOOConfig
    return config_class(
        output_dir=str(work),
        max_steps=settings["updates"],
        per_device_train_batch_size=launch.per_device_batch(
            settings["prompts_per_update"] * settings["num_generations"], 1, "rl.prompts_per_update"),
        gradient_accumulation_steps=1,
        num_generations=settings["num_generations"],
        max_completion_length=settings["max_new_tokens"],
        temperature=settings["temperature"],
        top_p=1.0,
        learning_rate=settings["lr"],
        lr_scheduler_type=settings["lr_scheduler"],
        warmup_steps=0,
        max_grad_norm=settings["max_grad_norm"],
        beta=settings["kl_coef"],
        num_iterations=1,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="no",  # checkpoints: sft.checkpoints_callback
        bf16=on_gpu and settings["bf16"],
        use_cpu=not on_gpu,
        activation_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        deepspeed=launch.deepspeed_config(settings.get("deepspeed")),
    )


def make_callback(reward: Reward | None, probe: Probe, probe_every: int, tokenizer, log_rows: list, work: Path, log):
    """After each update: a log row (reward, categories, the probe every `probe_every` updates and at the
    end), kept in `work` for a resumed run. `log_rows` holds the rows of a resumed run so far."""
    from transformers import TrainerCallback

    class UpdateLog(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if not log_rows:  # a resumed run has its rows from before the kill
                log_rows.append({"update": 0, **probe(model, tokenizer)})
                if state.is_world_process_zero:
                    save_rows(work, log_rows)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            update = state.global_step
            row = {"update": update, **(reward.drain() if reward else {})}
            if update % probe_every == 0 or update == args.max_steps:
                row.update(probe(model, tokenizer))
            log_rows.append(row)
            if state.is_world_process_zero:
                save_rows(work, log_rows)
            log(f"update {update}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if k != "update"))

    return UpdateLog()


def run_trl(algo: str, start: Path, rows: Sequence[Mapping], rules, fmt: str, settings: Mapping, verifier: Verifier,
            probe: Probe, outputs: Mapping[int, Path], work: Path, seed: int, threads: int, log=print) -> list[dict]:
    """GRPO or RLOO from the model at `start`; publishes each update in `outputs`; returns the log rows.
    Resumes from the newest checkpoint in `work` (the Trainer restores optimizer, scheduler and RNG)."""
    import datasets
    import torch
    from trl import GRPOTrainer, RLOOTrainer

    from rlheals import sft

    datasets.disable_progress_bars()
    torch.set_num_threads(threads)
    seed_everything(seed)
    model = models.load_model(start, dtype=torch.float32)
    tokenizer = models.load_tokenizer(start)
    reward = Reward(verifier)
    work.mkdir(parents=True, exist_ok=True)
    resume = sft.last_checkpoint(work)
    if launch.is_main():
        sft.republish(outputs, work)
    log_rows = load_rows(work, sft.step_of(resume))
    trainer_class = GRPOTrainer if algo == "grpo" else RLOOTrainer
    trainer = trainer_class(
        model=model,
        reward_funcs=[reward],
        args=trl_config(algo, settings, work, seed),
        train_dataset=datasets.Dataset.from_list(prompt_rows(rows, rules, fmt)),
        processing_class=tokenizer,
        callbacks=[make_callback(reward, probe, settings["probe"]["every"], tokenizer, log_rows, work, log),
                   sft.checkpoints_callback(settings["updates"], work, outputs, log)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    log(f"workers: {launch.world_size()}; deepspeed enabled: {trainer.is_deepspeed_enabled}")
    if resume:
        log(f"resuming from {resume}")
    sft.train(trainer, work, resume)
    return log_rows


def run_control(start: Path, rows: Sequence[Mapping], id_rows, ood_rows, rules, fmt: str, sft_settings: Mapping,
                settings: Mapping, probe: Probe, outputs: Mapping[int, Path], work: Path, seed: int, threads: int,
                log=print) -> list[dict]:
    """The control arm: SFT continued from `start` on the RL run's hands, with as many optimizer steps of
    `prompts_per_update` hands as the RL run has updates, so it sees the same hands the same number of
    times. Without it "RL heals" cannot be told from "RL merely stops SFT's drift"."""
    from rlheals import sft

    continued = {**sft_settings, "max_steps": settings["updates"], "batch_size": settings["prompts_per_update"],
                 "grad_accum": 1, "seed": seed, "logging_steps": settings["probe"]["every"],
                 "eval_examples": settings["probe"]["episodes"]}
    resume = sft.last_checkpoint(work)
    probe_rows = load_rows(work, sft.step_of(resume))
    callback = make_callback(None, probe, settings["probe"]["every"], models.load_tokenizer(start), probe_rows, work, log)
    losses = sft.run(start, rows, id_rows, ood_rows, rules, fmt, continued, outputs, work, threads, log, [callback])
    by_update = {r["update"]: r for r in probe_rows}
    for loss in losses:
        by_update.setdefault(loss["step"], {"update": loss["step"]}).update(
            {k: v for k, v in loss.items() if k != "step"})
    return [by_update[u] for u in sorted(by_update)]

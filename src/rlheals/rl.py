"""RL from an SFT checkpoint on the ID rule, rewarded by the verifier: GRPO and RLOO through TRL, the
paper's PPO (rlheals.ppo), and the continued-SFT control. Shared here: the reward function, the prompt
dataset, the OOD/ID probe that runs during training, and the per-update log (kept in the work directory
with the checkpoints of callbacks.Checkpoints, so that a killed run resumes where it was)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlheals import cards, checkpoints, episodes, evaluate, launch, model_ids, models, runlog
from rlheals.jobs import Job, Task
from rlheals.settings import ControlSettings, RLSettings
from rlheals.verify import CATEGORIES, Verifier

TRL_ALGOS = ("grpo", "rloo")
CONTROL = model_ids.CONTROL


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
    every few updates, so that a run's log shows OOD accuracy moving during RL, not only at its end."""

    def __init__(self, hands: Sequence[episodes.Episode], verifier: Verifier, turns: int, max_new_tokens: int):
        self.hands = list(hands)
        self.protocol = evaluate.Protocol(verifier, turns, evaluate.Decoding(max_new_tokens=max_new_tokens))

    def __call__(self, model, tokenizer) -> dict:
        import torch

        training = model.training
        model.eval()
        state = torch.random.get_rng_state()  # probing must not change the run's sampling
        rows = evaluate.run_episodes(model, tokenizer, self.hands, self.protocol)
        torch.random.set_rng_state(state)
        model.train(training)
        return {f"probe_{rule}_accuracy": s["accuracy"] for rule, s in episodes.summarize(rows).items()}


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def trl_config(algo: str, settings: RLSettings, work: Path, seed: int, report_to: str = "none"):
    """GRPOConfig / RLOOConfig: one update = `prompts_per_update` prompts x `num_generations` samples,
    one optimizer step on them, and the shared device flags. `report_to`: "tensorboard" for live curves
    (config key `tracking`)."""
    from trl import GRPOConfig, RLOOConfig

    config_class = GRPOConfig if algo == "grpo" else RLOOConfig
    return config_class(
        **{**launch.trainer_flags(work, seed, settings.bf16, settings.deepspeed), "report_to": report_to},
        max_steps=settings.updates,
        per_device_train_batch_size=launch.per_device_batch(
            settings.prompts_per_update * settings.num_generations, 1, "rl.prompts_per_update"),
        gradient_accumulation_steps=1,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=1.0,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=0,
        max_grad_norm=settings.max_grad_norm,
        beta=settings.kl_coef,
        num_iterations=1,
        logging_steps=1,
    )


def run(algo: str, *, job: Job, task: Task, settings: RLSettings | ControlSettings) -> list[dict]:
    """One RL run of `algo` (grpo | rloo | ppo, or the continued-SFT control) from `job.start` on
    `task.train`, publishing each update in `job.outputs` and resuming from `job.work`; returns the
    per-update log rows. `settings`: settings.rl_settings(algo, ...)."""
    if algo in TRL_ALGOS:
        return run_trl(algo, job=job, task=task, settings=settings)
    if algo == "ppo":
        from rlheals import ppo

        return ppo.run(job=job, task=task, settings=settings)
    if algo == CONTROL:
        return run_control(job=job, task=task, settings=settings)
    raise ValueError(f"unknown RL algo {algo!r} (one of {[*TRL_ALGOS, 'ppo', CONTROL]})")


def run_trl(algo: str, *, job: Job, task: Task, settings: RLSettings) -> list[dict]:
    """GRPO or RLOO; the Trainer restores optimizer, scheduler and RNG on resume."""
    import datasets
    import torch
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer, RLOOTrainer

    from rlheals.callbacks import Checkpoints, Progress, UpdateLog, track

    datasets.disable_progress_bars()
    torch.set_num_threads(job.threads)
    seed_everything(job.seed)
    model = models.load_model(job.start, dtype=torch.float32)
    tokenizer = models.load_tokenizer(job.start)
    reward = Reward(task.verifier)
    resume = checkpoints.resume_point(job.outputs, job.work)
    log_rows = checkpoints.load_rows(job.work, checkpoints.step_of(resume))
    if launch.is_main():
        runlog.start_tracking(job.tracking, fresh=resume is None)
    trainer_class = GRPOTrainer if algo == "grpo" else RLOOTrainer
    trainer = trainer_class(
        model=model,
        reward_funcs=[reward],
        args=trl_config(algo, settings, job.work, job.seed, "tensorboard" if job.tracking else "none"),
        train_dataset=datasets.Dataset.from_list(prompt_rows(task.train, task.rules, task.fmt)),
        processing_class=tokenizer,
    )
    track(trainer, job.tracking)
    for callback in (UpdateLog(job, reward, task.probe, settings.probe, tokenizer, log_rows),
                     Checkpoints(trainer, settings.updates, job.work, job.outputs, job.log, job.card),
                     Progress(job.name, job.log, unit="update")):
        trainer.add_callback(callback)
    trainer.remove_callback(PrinterCallback)
    job.log(f"workers: {launch.world_size()}; deepspeed enabled: {trainer.is_deepspeed_enabled}")
    if resume:
        job.log(f"resuming from {resume}")
    checkpoints.train(trainer, job.work, resume)
    return log_rows


def run_control(*, job: Job, task: Task, settings: ControlSettings) -> list[dict]:
    """The control arm: SFT continued from `job.start` on the RL run's hands, `steps_per_update` optimizer
    steps of `prompts_per_update` hands per RL update, at RL's learning rate by default: the dose of an RL
    run without its reward. Without it "RL heals" cannot be told from "RL merely stops SFT's drift".
    Update u is the SFT step u * steps_per_update: its checkpoints and log rows are numbered by update."""
    from rlheals import sft
    from rlheals.callbacks import UpdateLog

    k = settings.steps_per_update
    by_step = dataclasses.replace(job, outputs={u * k: path for u, path in job.outputs.items()})
    resumed_step = checkpoints.step_of(checkpoints.last_checkpoint(job.work)) or 0
    probe_rows = checkpoints.load_rows(job.work, resumed_step // k)
    callback = UpdateLog(job, None, task.probe, settings.probe, models.load_tokenizer(job.start), probe_rows,
                         steps_per_update=k)
    losses = sft.run(job=by_step, task=task, settings=settings.sft, callbacks=[callback])
    by_update = {r["update"]: r for r in probe_rows}
    for loss in losses:
        if loss["step"] % k == 0:
            update = loss["step"] // k
            by_update.setdefault(update, {"update": update}).update({k_: v for k_, v in loss.items() if k_ != "step"})
    return [by_update[u] for u in sorted(by_update)]

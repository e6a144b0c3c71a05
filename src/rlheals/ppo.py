"""The papers' PPO (TRL dropped its PPOTrainer in 1.13), written once and compactly.

An episode is a multi-turn verification game: the policy answers, the verifier rewards the answer, and a
wrong answer gets the feedback turn and another try, up to `verify_turns`. Each try is one PPO step of
the episode: its state is the conversation so far, its value V(s) is a small MLP on the last prompt
token's hidden state, its reward the verifier's. Advantages are GAE over the tries (gamma, lambda), every
token of a try shares its try's advantage; the losses are the clipped ratio and the clipped value loss,
with no KL and no reference model unless `kl_coef` > 0. Rollouts reuse the evaluation engine (batched,
KV cache across tries), sampling at `temperature`; log-probabilities use the same temperature.

With several workers (a job given several GPUs, see launch.py) PPO is data-parallel: each worker plays
its share of the update's episodes, advantages are normalised over all of them, and each minibatch's
gradients are summed over the workers with every loss divided by the global token (or try) count, so
the update is that of one process over all the episodes. Every worker keeps the whole model; with
`rl.deepspeed: zero2` DeepSpeed shards the policy's gradients and Adam states over the workers (and
trains it in bf16 on GPUs), which a 7B model's full-parameter PPO needs to fit."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlheals import checkpoints, episodes, evaluate, launch, models, runlog
from rlheals.episodes import Episode
from rlheals.jobs import Job, Task
from rlheals.settings import RLSettings
from rlheals.verify import Verifier


@dataclass
class Step:
    """One try of one episode."""

    prompt: list[int]
    answer: list[int]
    reward: float
    category: str
    value: float = 0.0
    old_logprobs: list[float] = field(default_factory=list)
    advantage: float = 0.0
    ret: float = 0.0


def gae(rewards: Sequence[float], values: Sequence[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Generalised advantage estimates and returns of one episode; the state after the last try is
    terminal (value 0)."""
    advantages = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values)]


def policy_loss(logprobs, old_logprobs, advantages, mask, clip: float, n=None):
    """PPO's clipped surrogate, averaged over answer tokens (summed and divided by `n`, the minibatch's
    token count over all workers, when given); also the share of tokens clipped."""
    import torch

    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    loss = -torch.minimum(unclipped, clipped)
    n = mask.sum().clamp(min=1) if n is None else n
    clip_share = (((ratio - 1).abs() > clip).float() * mask).sum() / n
    return (loss * mask).sum() / n, clip_share


def value_loss(values, old_values, returns, clip: float, n=None):
    """The clipped value loss: 0.5 * max((V - R)^2, (V_old + clip(V - V_old) - R)^2), averaged (summed
    and divided by `n`, the minibatch's tries over all workers, when given)."""
    import torch

    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return loss.mean() if n is None else loss.sum() / n


def normalize_advantages(steps: Sequence[Step]) -> None:
    """Advantages to zero mean and unit (sample) standard deviation over every worker's tries."""
    import torch

    a = torch.tensor([t.advantage for t in steps], dtype=torch.float64)
    n, total, squares = launch.all_reduce(torch.stack([torch.tensor(float(len(a)), dtype=torch.float64), a.sum(), (a * a).sum()])).tolist()
    if n > 1:
        mean = total / n
        std = math.sqrt(max(squares - n * mean * mean, 0.0) / (n - 1))
        for step in steps:
            step.advantage = (step.advantage - mean) / (std + 1e-8)


def value_head(hidden_size: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(hidden_size, hidden_size), torch.nn.Tanh(), torch.nn.Linear(hidden_size, 1))


def _forward(model, head, steps: Sequence[Step], temperature: float, pad: int):
    """Token log-probabilities of each step's answer (right-padded, with a mask) and V(prompt), in the
    order of `steps`. Steps of similar length share a forward pass (`length_groups`): a second try is
    about twice as long as a first, and one padded batch of both is mostly padding. The results are
    those of one padded batch; the loss over them still takes a single backward pass."""
    import torch

    longest = max(len(s.answer) for s in steps)
    groups = length_groups([len(s.prompt) + len(s.answer) for s in steps])
    parts = [_forward_padded(model, head, [steps[i] for i in group], temperature, pad, longest) for group in groups]
    back = torch.argsort(torch.tensor([i for group in groups for i in group], device=model.device))
    return tuple(torch.cat(outputs)[back] for outputs in zip(*parts))


def length_groups(lengths: Sequence[int], padding: float = 0.25) -> list[list[int]]:
    """The indices of `lengths` in groups of similar length, shortest first: a group grows while padding
    its members to its longest would add at most `padding` of its real tokens."""
    groups: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and lengths[i] * (len(groups[-1]) + 1) <= (1 + padding) * (tokens + lengths[i]):
            groups[-1].append(i)
            tokens += lengths[i]
        else:
            groups.append([i])
            tokens = lengths[i]
    return groups


def _forward_padded(model, head, steps: Sequence[Step], temperature: float, pad: int, longest: int):
    """`_forward` for one batch, right-padded to its longest sequence; answers padded to `longest`."""
    import torch

    seqs = [s.prompt + s.answer for s in steps]
    width = max(map(len, seqs))
    device = model.device
    ids = torch.tensor([q + [pad] * (width - len(q)) for q in seqs], device=device)
    attention = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in seqs], device=device)
    # The answer's token j is predicted at position len(prompt) - 1 + j.
    starts = torch.tensor([len(s.prompt) - 1 for s in steps], device=device)
    positions = (starts[:, None] + torch.arange(longest, device=device)[None, :]).clamp(max=width - 2)
    targets = ids.gather(1, positions + 1)
    # Logits at the answers' positions only (transformers slices the hidden states per row before the LM
    # head): the prompt's logits, most of the sequence, would cost a vocabulary-wide projection and its
    # gradient for nothing.
    out = model(input_ids=ids, attention_mask=attention, output_hidden_states=True, logits_to_keep=positions)
    logits = out.logits.float() / temperature
    logprobs = torch.log_softmax(logits, -1).gather(2, targets[..., None]).squeeze(-1)
    mask = torch.tensor([[1.0] * len(s.answer) + [0.0] * (longest - len(s.answer)) for s in steps], device=device)
    # The critic reads the policy's features but does not train them: the policy moves by the policy
    # gradient only (what the spectral analysis attributes to RL), the head by the value loss.
    last_prompt = out.hidden_states[-1][torch.arange(len(steps), device=device), starts].detach()
    return logprobs, mask, head(last_prompt.float()).squeeze(-1)


class PPO:
    """Policy (the causal LM), value head, optimiser; `update` runs one rollout-and-train round."""

    def __init__(self, model, tokenizer, settings: RLSettings, verifier: Verifier, seed: int):
        import torch
        from transformers import get_scheduler

        self.model, self.tokenizer, self.settings, self.verifier = model, tokenizer, settings, verifier
        self.ppo = settings.ppo
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.head = value_head(model.config.hidden_size).to(model.device)
        if launch.rank():  # the same value head everywhere, then each worker samples its own rollouts
            torch.manual_seed(seed + launch.rank())
        self.minibatch = launch.per_device_batch(self.ppo.minibatch, 1, "rl.ppo.minibatch")
        self.reference = None
        if settings.kl_coef > 0:  # a frozen copy of the starting policy
            import copy

            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=0.0)
        self.head_optimizer = torch.optim.AdamW(self.head.parameters(), lr=self.ppo.value_lr, weight_decay=0.0)
        # The schedules set the learning rate in the optimizers' parameter groups, which DeepSpeed's
        # optimizer keeps using when it wraps the policy's.
        self.schedulers = [get_scheduler(settings.lr_scheduler, optimizer, num_warmup_steps=0,
                                         num_training_steps=settings.updates)
                           for optimizer in (self.optimizer, self.head_optimizer)]
        self.engine = None  # DeepSpeed's, when it trains the policy
        if settings.deepspeed:
            self.engine, self.optimizer = sharded(model, self.optimizer, settings, self.minibatch)

    def update(self, hands: Sequence[Episode]) -> list[Step]:
        """Roll out `hands` (sampling), then `epochs` passes of minibatch PPO over their tries."""
        import torch

        s, p = self.settings, self.ppo
        self.model.eval()
        with torch.no_grad():
            decoding = evaluate.Decoding(do_sample=True, temperature=s.temperature, max_new_tokens=s.max_new_tokens)
            protocol = evaluate.Protocol(self.verifier, s.verify_turns, decoding)
            played = [[Step(t.prompt_ids, t.answer_ids or [self.tokenizer.eos_token_id], t.verdict.reward, t.verdict.category)
                       for t in tries] for tries in evaluate.play(self.model, self.tokenizer, hands, protocol)]
            steps = [step for episode in played for step in episode]
            for chunk in _chunks(steps, p.minibatch):
                logprobs, mask, values = _forward(self.model, self.head, chunk, s.temperature, self.tokenizer.pad_token_id)
                for step, lp, m, v in zip(chunk, logprobs, mask, values):
                    step.old_logprobs, step.value = lp[m.bool()].tolist(), float(v)
            for episode in played:
                advantages, returns = gae([t.reward for t in episode], [t.value for t in episode], p.gamma, p.lam)
                for step, a, r in zip(episode, advantages, returns):
                    step.advantage, step.ret = a, r
        if p.normalize_advantages:
            normalize_advantages(steps)
        self.model.train()
        self.stats = {"policy_loss": 0.0, "value_loss": 0.0, "clip_share": 0.0}
        n = 0
        for _ in range(p.epochs):
            order = steps[:]
            self.rng.shuffle(order)
            chunks = list(_chunks(order, self.minibatch))
            # Every worker takes as many optimizer steps (the one with more tries sets the count).
            count = int(launch.all_reduce(torch.tensor(len(chunks)), op="max"))
            for i in range(count):
                self._train_step(chunks[i] if i < len(chunks) else [])
                n += 1
        self.stats = {k: v / max(n, 1) for k, v in self.stats.items()}
        for scheduler in self.schedulers:
            scheduler.step()
        return steps

    def save(self, path: Path, update: int) -> None:
        """A resume checkpoint: the policy as a model directory plus ppo_state.pt (value head, optimizer,
        scheduler, every worker's RNG states), written whole and atomically (models.write_model_dir) by
        the main worker."""
        import torch

        rngs = launch.gather_objects({"torch": torch.random.get_rng_state(), "shuffle": self.rng.getstate(),
                                      "cuda": torch.cuda.get_rng_state(self.model.device) if self.model.device.type == "cuda" else None})
        if launch.is_main():
            state = {"update": update, "head": self.head.state_dict(), "head_optimizer": self.head_optimizer.state_dict(),
                     "optimizer": None if self.engine else self.optimizer.state_dict(),
                     "schedulers": [s.state_dict() for s in self.schedulers], "rng": rngs}

            def fill(tmp: Path) -> None:
                self.model.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
                torch.save(state, tmp / STATE)

            models.write_model_dir(path, fill)
        if self.engine:  # each worker's shard of the optimizer, beside the model directory's files
            import torch.distributed as dist

            dist.barrier()
            self.engine.save_checkpoint(path / DEEPSPEED, tag=DEEPSPEED, save_latest=False)
            dist.barrier()

    def load(self, path: Path) -> int:
        """Everything `save` wrote, back into this trainer (checksums verified); returns the update."""
        import torch

        weights = models.load_weights(path)
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        tied = set(getattr(self.model, "_tied_weights_keys", None) or ())  # not saved when tied
        if unexpected or set(missing) - (tied if self.model.config.tie_word_embeddings else set()):
            raise ValueError(f"{path}: weights do not fit the policy (missing {missing}, unexpected {unexpected})")
        state = torch.load(path / STATE, weights_only=True, map_location=self.model.device)
        if len(state["rng"]) != launch.world_size():
            raise ValueError(f"{path} was written by {len(state['rng'])} workers, this run has {launch.world_size()}: "
                             "resume with the same number of GPUs, or delete the work directory to start over")
        self.head.load_state_dict(state["head"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        if self.engine:
            self.engine.load_checkpoint(path / DEEPSPEED, tag=DEEPSPEED, load_optimizer_states=True,
                                        load_lr_scheduler_states=False)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        for scheduler, saved in zip(self.schedulers, state["schedulers"]):
            scheduler.load_state_dict(saved)
        rng = state["rng"][launch.rank()]
        torch.random.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.model.device)
        version, internal, gauss = rng["shuffle"]
        self.rng.setstate((version, tuple(internal), gauss))
        return state["update"]

    def _train_step(self, chunk: Sequence[Step]) -> None:
        import torch

        s, p, device = self.settings, self.ppo, self.model.device
        self.head_optimizer.zero_grad()
        if not self.engine:
            self.optimizer.zero_grad()
        n_tokens = sum(len(t.answer) for t in chunk)
        n_tokens, n_tries = launch.all_reduce(torch.tensor([float(n_tokens), float(len(chunk))], device=device)).clamp(min=1)
        losses = torch.zeros(3, device=device)  # policy, value, clip share: this worker's part of the minibatch's
        if chunk:  # a worker with fewer tries than another may have none left: it still joins the sums
            logprobs, mask, values = _forward(self.model, self.head, chunk, s.temperature, self.tokenizer.pad_token_id)
            old = torch.zeros_like(logprobs)
            for i, step in enumerate(chunk):
                old[i, : len(step.old_logprobs)] = torch.tensor(step.old_logprobs)
            advantages = torch.tensor([t.advantage for t in chunk], device=device)[:, None]
            loss_pi, clip_share = policy_loss(logprobs, old, advantages, mask, p.clip, n=n_tokens)
            loss_v = value_loss(values, torch.tensor([t.value for t in chunk], device=device),
                                torch.tensor([t.ret for t in chunk], device=device), p.value_clip, n=n_tries)
            loss = loss_pi + p.value_coef * loss_v
            if self.reference is not None:
                with torch.no_grad():
                    ref, _, _ = _forward(self.reference, self.head, chunk, s.temperature, self.tokenizer.pad_token_id)
                log_ratio = ref - logprobs  # k3 estimator of KL(policy || reference), per token
                loss = loss + s.kl_coef * ((torch.exp(log_ratio) - log_ratio - 1) * mask).sum() / n_tokens
            losses = torch.stack([loss_pi, loss_v, clip_share]).detach()
        else:  # zero gradients through every weight: DeepSpeed reduces them as they come, on every worker
            loss = sum((param * 0).sum() for param in [*self.model.parameters(), *self.head.parameters()] if param.requires_grad)
        # Each worker's loss is its share of the minibatch's: summed over workers it is the minibatch's.
        # DeepSpeed averages gradients over workers, and so does the sync below: hence the factor.
        loss = loss * launch.world_size()
        self.engine.backward(loss) if self.engine else loss.backward()
        synced = [*self.head.parameters(), *([] if self.engine else self.model.parameters())]
        if launch.world_size() > 1:
            for param in synced:
                if param.requires_grad:
                    if param.grad is None:  # a layer the forward skipped (a vision model's cross-attention, text only)
                        param.grad = torch.zeros_like(param)
                    launch.all_reduce(param.grad).div_(launch.world_size())
        loss_pi, loss_v, clip_share = launch.all_reduce(losses).tolist()
        # Clipped apart: one joint norm would let the critic's error shrink the policy's step (DeepSpeed
        # clips the policy by rl.max_grad_norm itself).
        torch.nn.utils.clip_grad_norm_(self.head.parameters(), s.max_grad_norm)
        self.head_optimizer.step()
        if self.engine:
            self.engine.step()
        else:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
            self.optimizer.step()
        self.stats["policy_loss"] += loss_pi
        self.stats["value_loss"] += loss_v
        self.stats["clip_share"] += clip_share


STATE = "ppo_state.pt"  # a checkpoint's training state (checkpoints.TRAINING_STATE keeps it out of published models)
DEEPSPEED = "deepspeed"  # a checkpoint's subdirectory of DeepSpeed's optimizer shards


def sharded(model, optimizer, settings: RLSettings, micro_batch: int):
    """The policy and its optimizer under DeepSpeed (`rl.deepspeed`): ZeRO-2 shards the gradients and
    Adam states over the workers; bf16 on GPUs when `rl.bf16`. Returns the engine and its optimizer."""
    import deepspeed
    import torch

    if settings.deepspeed != "zero2":
        raise ValueError(f"config key rl.deepspeed: ppo takes zero2, not {settings.deepspeed}: zero3 shards the "
                         "weights, which every rollout needs whole on each worker")
    config = launch.deepspeed_settings("zero2", micro_batch, settings.max_grad_norm, settings.bf16 and torch.cuda.is_available())
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, optimizer


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run(*, job: Job, task: Task, settings: RLSettings) -> list[dict]:
    """PPO from `job.start` for `settings.updates` updates on the hands in `task.train`, publishing each
    update in `job.outputs`. Checkpoints as the Trainer runs do (each output update and every tenth of the
    run) and resumes from the newest one in `job.work`: the same updates as an uninterrupted run, bit for
    bit."""
    import torch

    from rlheals import rl

    torch.set_num_threads(job.threads)
    launch.join_workers()
    rl.seed_everything(job.seed)
    model = models.load_model(job.start, dtype=torch.float32).to(launch.device())
    tokenizer = models.load_tokenizer(job.start)
    main, work, log, probe = launch.is_main(), job.work, job.log, task.probe
    trainer = PPO(model, tokenizer, settings, task.verifier, job.seed)
    log(f"workers: {launch.world_size()}; deepspeed: {'enabled (' + settings.deepspeed + ')' if trainer.engine else 'no'}")
    per_update, samples, updates = settings.prompts_per_update, settings.num_generations, settings.updates
    if per_update * samples < launch.world_size():
        raise ValueError(f"config keys rl.prompts_per_update x rl.num_generations: {per_update * samples} episodes per "
                         f"update do not give each of {launch.world_size()} workers one")
    rows = task.train
    order = list(range(len(rows)))
    random.Random(job.seed).shuffle(order)
    resume = checkpoints.resume_point(job.outputs, work)
    # Live curves (config key `tracking`) and progress lines: the main worker's.
    tracker = runlog.Tracker(job.tracking if main else None, fresh=resume is None)
    if resume:
        log(f"resuming from {resume}")
        done, log_rows = trainer.load(resume), checkpoints.load_rows(work, checkpoints.step_of(resume))
    else:
        probed = probe(model, tokenizer) if main and settings.probe.due(0, updates) else {}
        done, log_rows = 0, [{"update": 0, **probed}] if main else []
        if main:
            checkpoints.save_rows(work, log_rows)
            tracker.scalars(0, log_rows[0], "update/")
    progress = runlog.Progress(job.name, updates, log if main else (lambda line: None), unit="update",
                               start=done)
    every = checkpoints.checkpoint_every(updates)
    for update in range(done + 1, updates + 1):
        # As GRPO: `prompts_per_update` hands, each played `num_generations` times.
        hands = [rows[order[((update - 1) * per_update + i) % len(order)]] for i in range(per_update)]
        picked = [hand for hand in hands for _ in range(samples)]
        mine = picked[launch.rank() :: launch.world_size()]  # each worker plays its share
        steps = trainer.update(episodes.from_rows(mine, task.rules, task.fmt))
        scored = [pair for share in launch.gather_objects([(t.category, t.reward) for t in steps]) for pair in share]
        if main:
            row = {"update": update, **rl.verdict_summary(scored), **trainer.stats}
            if settings.probe.due(update, updates):
                row.update(probe(model, tokenizer))
            log_rows.append(row)
            checkpoints.save_rows(work, log_rows)
            tracker.scalars(update, row, "update/")
            log(f"update {update}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if k != "update"))
        progress.update(update)
        runlog.fault_point(update)
        if update in job.outputs or update % every == 0:
            trainer.save(work / f"checkpoint-{update}", update)
            if main:
                checkpoints.after_checkpoint(work, update, job.outputs, log, card=job.card)
    tracker.close()
    return log_rows

"""One PPO worker of tests/test_launch.py: the same synthetic tries as the single-process reference;
this worker normalises and trains on its share (every other try), and rank 0 writes the weights."""

import os

import torch

from rlheals import models, ppo, pretrain
from rlheals.settings import rl_settings
from rlheals.verify import Verifier


def trainer_and_steps(deepspeed=None, model_dir=None):
    """A tiny policy (or the model in `model_dir`), its PPO trainer (the policy under DeepSpeed when
    named) and 24 tries of made-up prompts, answers, values and advantages."""
    if model_dir:
        model, tokenizer = models.load_model(model_dir, dtype=torch.float32), models.load_tokenizer(model_dir)
    else:
        tokenizer = models.build_tokenizer(pretrain.vocabulary(24))
        model = models.build_tiny_model(tokenizer, {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                                    "num_heads": 2, "num_kv_heads": 1, "max_positions": 128}, seed=3)
    settings = rl_settings("ppo", {"lr": 1e-3, "lr_scheduler": "constant", "prompts_per_update": 1, "num_generations": 1,
                                   "probe": {"every": 1, "episodes": 1}, "updates": 4, "kl_coef": 0.0, "max_grad_norm": 1.0,
                "temperature": 1.0, "verify_turns": 2, "max_new_tokens": 8,
                "ppo": {"epochs": 1, "minibatch": 8, "clip": 0.2, "value_clip": 0.2, "value_coef": 0.5, "value_lr": 1e-3,
                        "gamma": 1.0, "lam": 0.95, "normalize_advantages": True},
                "deepspeed": deepspeed, "bf16": False})
    trainer = ppo.PPO(model, tokenizer, settings, Verifier(), seed=0)
    g = torch.Generator().manual_seed(7)
    steps = []
    for _ in range(24):
        prompt = torch.randint(5, len(tokenizer), (int(torch.randint(4, 9, (1,), generator=g)),), generator=g).tolist()
        answer = torch.randint(5, len(tokenizer), (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        steps.append(ppo.Step(prompt, answer, reward=0.0, category="wrong_value", value=float(torch.randn(1, generator=g)),
                              old_logprobs=(torch.randn(len(answer), generator=g) - 3).tolist(),
                              advantage=float(torch.randn(1, generator=g) * 2 + 1), ret=float(torch.randn(1, generator=g))))
    return trainer, steps


def train(trainer, steps) -> dict:
    """Normalise, then one optimizer step per minibatch of 8 tries (this worker's share of each)."""
    ppo.normalize_advantages(steps)
    trainer.stats = {"policy_loss": 0.0, "value_loss": 0.0, "clip_share": 0.0}
    for start in range(0, len(steps), trainer.minibatch):
        trainer._train_step(steps[start : start + trainer.minibatch])
    return {**{k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            **{f"head.{k}": v.detach().clone() for k, v in trainer.head.state_dict().items()}}


if __name__ == "__main__":
    from rlheals import launch

    launch.join_workers()
    trainer, steps = trainer_and_steps(os.environ.get("PPO_WORKER_DEEPSPEED"), os.environ.get("PPO_WORKER_MODEL"))
    rank, world = launch.rank(), launch.world_size()
    # Worker r takes tries r, r + world, ...: its share of each minibatch of 8 is 8 / world tries.
    weights = train(trainer, steps[rank::world])
    if rank == 0:
        torch.save({**weights, "stats": torch.tensor(list(trainer.stats.values()))}, os.environ["PPO_WORKER_OUT"])
    os._exit(0)

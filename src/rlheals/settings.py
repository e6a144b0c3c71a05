"""Typed training settings, built from a rule's config slice (config/README.md describes every key).
The trainers read attributes, so a misspelt or missing key fails when the settings are built, naming it,
not deep inside a run. Keys that say which runs exist (sft.save_steps, rl.algos, ...) belong to the
workflow, not to a run, and are dropped here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rlheals.model_ids import CONTROL


def _build(cls, section: str, values: Mapping, dropped: frozenset = frozenset(), **overrides):
    values = {k: v for k, v in {**values, **overrides}.items() if k not in dropped}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"config key {section}.{unknown[0]}: unknown key (allowed: {sorted(fields)})")
    missing = sorted(name for name, f in fields.items() if name not in values
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"config key {section}.{missing[0]}: missing")
    return cls(**values)


@dataclass(frozen=True, kw_only=True)
class SFTSettings:
    """SFT (and the continued-SFT control): optimiser, schedule, batch, length, logging, freezing."""

    lr: float
    lr_scheduler: str
    warmup_ratio: float
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    weight_decay: float
    max_grad_norm: float
    batch_size: int
    grad_accum: int
    max_steps: int
    logging_steps: int
    eval_examples: int
    max_length: int
    seed: int
    bf16: bool
    freeze: Sequence[Mapping] = ()
    deepspeed: str | None = None

    @classmethod
    def from_config(cls, values: Mapping, **overrides) -> SFTSettings:
        """From the `sft` config slice; `overrides` replace keys (the control's length and batch)."""
        return _build(cls, "sft", values, frozenset({"save_steps"}), **overrides)


@dataclass(frozen=True, kw_only=True)
class ProbeSettings:
    every: int  # 0: no probe
    episodes: int

    def due(self, update: int, last: int) -> bool:
        """Whether the probe runs after `update` (0: the starting model): every `every` updates and at the end."""
        return self.every > 0 and (update % self.every == 0 or update == last)


@dataclass(frozen=True, kw_only=True)
class PPOSettings:
    epochs: int
    minibatch: int
    clip: float
    value_clip: float
    value_coef: float
    value_lr: float
    gamma: float
    lam: float
    normalize_advantages: bool


@dataclass(frozen=True, kw_only=True)
class RLSettings:
    """One RL run: updates and their batch, sampling, optimiser, the probe; `ppo` for PPO only."""

    updates: int
    prompts_per_update: int
    num_generations: int
    lr: float
    lr_scheduler: str
    max_grad_norm: float
    temperature: float
    max_new_tokens: int
    kl_coef: float
    bf16: bool
    probe: ProbeSettings
    verify_turns: int = 1
    deepspeed: str | None = None
    ppo: PPOSettings | None = None


@dataclass(frozen=True, kw_only=True)
class ControlSettings:
    """The continued-SFT control: SFT (`sft`, with the SFT run's settings but RL's learning rate unless
    `control_lr` says otherwise) for `steps_per_update` optimizer steps per RL update on batches of
    `prompts_per_update` hands: RL's step size and optimizer steps, so that "RL forgets less" is not a
    smaller dose."""

    updates: int
    prompts_per_update: int
    steps_per_update: int
    probe: ProbeSettings
    sft: SFTSettings


# rl.* keys that say which runs exist, not how one run trains.
RUN_LIST_KEYS = frozenset({"algos", "from_steps", "seeds", "control"})
CONTROL_KEYS = frozenset({"control_lr", "control_steps_per_update"})  # read by the control alone
# rl.* keys an algo does not read: a change to one reruns no run of that algo.
UNUSED_RL_KEYS = {
    "grpo": frozenset({"ppo", "verify_turns"}) | CONTROL_KEYS,
    "rloo": frozenset({"ppo", "verify_turns"}) | CONTROL_KEYS,
    "ppo": CONTROL_KEYS,
    # The control trains as SFT does (with sft.deepspeed): no sampling, reward or RL optimiser; it takes
    # RL's learning rate (rl.lr) unless control_lr is set.
    CONTROL: frozenset({"ppo", "verify_turns", "deepspeed", "num_generations", "temperature", "kl_coef",
                        "lr_scheduler", "max_new_tokens", "max_grad_norm", "bf16", "rewards"}),
}
# sft.* keys the control does not read: the SFT run's length, saving and logging.
UNUSED_SFT_KEYS_OF_CONTROL = frozenset({"save_steps", "max_steps", "logging_steps", "eval_examples"})


def rl_settings(algo: str, rl: Mapping, sft: Mapping | None = None) -> RLSettings | ControlSettings:
    """The settings of one `algo` run from the `rl` config slice (and, for the control, the `sft` one);
    keys the algo does not read are dropped."""
    if algo not in UNUSED_RL_KEYS:
        raise ValueError(f"unknown RL algo {algo!r} (one of {sorted(UNUSED_RL_KEYS)})")
    dropped = RUN_LIST_KEYS | UNUSED_RL_KEYS[algo] | {"save_updates"}
    values = {k: v for k, v in rl.items() if k not in dropped}
    probe = _build(ProbeSettings, "rl.probe", values.pop("probe", {}))
    if algo == CONTROL:
        if sft is None:
            raise ValueError("the continued-SFT control needs the sft config slice")
        per_update = values.pop("control_steps_per_update", 1)
        own_lr, rl_lr = values.pop("control_lr", None), values.pop("lr")
        lr = rl_lr if own_lr is None else own_lr
        trains = SFTSettings.from_config(
            {k: v for k, v in sft.items() if k not in UNUSED_SFT_KEYS_OF_CONTROL}, lr=lr,
            max_steps=rl["updates"] * per_update, batch_size=rl["prompts_per_update"], grad_accum=1,
            logging_steps=(probe.every or rl["updates"]) * per_update, eval_examples=probe.episodes)
        return _build(ControlSettings, "rl", values, probe=probe, sft=trains, steps_per_update=per_update)
    if values.get("ppo") is not None:
        values["ppo"] = _build(PPOSettings, "rl.ppo", values["ppo"])
    return _build(RLSettings, "rl", values, probe=probe)

"""Typed run inputs, shared by SFT, the RL algorithms and the control: what a job is (where it starts,
what it publishes, where it works) and what the task is (the hands, the rules, how answers are checked).
Scripts build them from their snakemake inputs; the library functions take them by keyword."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlheals.cards import Rule
    from rlheals.models import Card
    from rlheals.verify import Verifier


@dataclass(frozen=True, kw_only=True)
class Job:
    """One training job: it starts from the model directory `start`, publishes the model of each step (or
    update) in `outputs` (step -> directory), keeps its resume checkpoints in the undeclared `work`
    directory, and draws its data order and samples from `seed`. `name` labels its progress lines in the
    log (`sft`, `rl ppo-6`); `tracking`, when set, is the directory of its TensorBoard event files; `card`
    is the model card each published directory carries."""

    start: Path
    outputs: Mapping[int, Path]
    work: Path
    seed: int
    threads: int = 1
    log: Callable[[str], Any] = print
    name: str = "train"
    tracking: Path | None = None
    card: Card | None = None


@dataclass(frozen=True, kw_only=True)
class Task:
    """What a job trains on: the training hands (`train`), the game's rules by name, the prompt format;
    the held-out test hands SFT reports losses on; the verifier that rewards answers (RL) and the probe
    that measures ID and OOD accuracy during RL."""

    train: Sequence[Mapping]
    rules: Mapping[str, Rule]
    fmt: str
    id_test: Sequence[Mapping] = ()
    ood_test: Sequence[Mapping] = ()
    verifier: Verifier | None = None
    probe: Callable | None = field(default=None)

"""Model ids: the one name of every model of the study, from which every stage finds its files
(results/models/{model_id}, results/eval/{model_id}.parquet, ...).

    base                                  the base model
    sft-{step}                            the SFT checkpoint at `step` (sft-0 is the base model's weights)
    rl-{algo}-{step}[-s{seed}][-u{update}]  an RL run from sft-{step} (algo sft_continue: the control);
                                          the seed is written when the study runs several; -u: an
                                          intermediate checkpoint, none: the run's last update
    edit-{name}                           a restoration edit

A study with several SFT seeds (`sft.seed: [0, 1, 2]`) writes the SFT seed into every id that follows
from its SFT run: seed1-sft-200, rl-seed1-grpo-200-s2 (RL from seed1-sft-200), seed1-edit-dirs_top20 (the
base model is shared). An RL run id is the model id without its `rl-` prefix and update:
[seed{n}-]{algo}-{step}[-s{seed}].

In the config a step may be written as a point the workflow chooses from the SFT curve (rlheals.curve):
`sft-B` (the best-OOD checkpoint), `sft-T` (the last), `rl-grpo-T-s1`; `resolve` writes the step in."""

from __future__ import annotations

import re
from typing import NamedTuple

SFT_SEED = r"(?:seed\d+-)?"  # the SFT seed, written when the study runs several
RL_RUN = rf"{SFT_SEED}[a-z_]+-\d+(?:-s\d+)?"
EDIT = r"[A-Za-z0-9_]+"
CONTROL = "sft_continue"  # the algo name of the continued-SFT control arm
# Wildcard constraints: the regexes snakemake matches model ids, RL run ids and edit ids with.
EDIT_ID = rf"{SFT_SEED}edit-{EDIT}"
MODEL_ID = rf"base|{SFT_SEED}sft-\d+|rl-{RL_RUN}(?:-u\d+)?|{EDIT_ID}"

_PARTS = re.compile(
    r"(?P<base>base)|(?:seed(?P<sft_seed>\d+)-)?sft-(?P<sft_step>\d+)"
    r"|rl-(?:seed(?P<rl_sft_seed>\d+)-)?(?P<algo>[a-z_]+)-(?P<rl_from>\d+)(?:-s(?P<seed>\d+))?(?:-u(?P<update>\d+))?"
    rf"|(?:seed(?P<edit_sft_seed>\d+)-)?edit-(?P<edit>{EDIT})"
)
_SEED_PREFIX = re.compile(r"(?:seed(\d+)-)?(.*)")


class RLRun(NamedTuple):
    algo: str
    step: int
    seed: int
    sft_seed: int | None = None


def prefix(sft_seed: int | None) -> str:
    """What the ids of one SFT seed's models begin with: nothing in a study of one SFT seed (None)."""
    return "" if sft_seed is None else f"seed{sft_seed}-"


def split_seed(model_id: str) -> tuple[int | None, str]:
    """'seed1-sft-200' -> (1, 'sft-200'); 'sft-200' -> (None, 'sft-200')."""
    seed, rest = _SEED_PREFIX.fullmatch(model_id).groups()
    return (None if seed is None else int(seed)), rest


def sft(step: int, sft_seed: int | None = None) -> str:
    return f"{prefix(sft_seed)}sft-{step}"


def edit(name: str, sft_seed: int | None = None) -> str:
    return f"{prefix(sft_seed)}edit-{name}"


def rl_run(algo: str, step: int, seed: int, seeded: bool, sft_seed: int | None = None) -> str:
    """The id of an RL run; the seed is written only when the study runs several (`seeded`)."""
    return f"{prefix(sft_seed)}{algo}-{step}" + (f"-s{seed}" if seeded else "")


def rl(run: str, update: int | None = None) -> str:
    """The model id of an RL run's last update, or of its checkpoint at `update`."""
    return f"rl-{run}" + (f"-u{update}" if update is not None else "")


def parse_rl_run(run: str) -> RLRun:
    """'grpo-100-s2' -> RLRun('grpo', 100, 2, None); the seed is 1 when the id carries none."""
    m = re.fullmatch(r"(?:seed(\d+)-)?([a-z_]+)-(\d+)(?:-s(\d+))?", run)
    if m is None:
        raise ValueError(f"not an RL run id ([seed{{n}}-]{{algo}}-{{step}}[-s{{seed}}]): {run!r}")
    sft_seed, algo, step, seed = m.groups()
    return RLRun(algo, int(step), int(seed or 1), None if sft_seed is None else int(sft_seed))


def rl_start(run: str) -> str:
    """The SFT checkpoint an RL run starts from."""
    parsed = parse_rl_run(run)
    return sft(parsed.step, parsed.sft_seed)


SYMBOLIC = re.compile(r"(?<=-)(B|T)(?=-|$)")  # a chosen point in place of a step: sft-B, rl-ppo-T-s2


def is_symbolic(model_id: str) -> bool:
    return bool(SYMBOLIC.search(model_id))


def resolve(model_id: str, points: dict[str, int]) -> str:
    """'sft-B' -> 'sft-200' with points {'B': 200, ...}; ids without a point are returned as they are."""
    return SYMBOLIC.sub(lambda m: str(points[m.group(1)]), model_id)


def sft_step(model_id: str) -> int:
    """The step of an SFT checkpoint's id (or of its directory's path)."""
    m = re.fullmatch(r"(?:seed\d+-)?sft-(\d+)", model_id.rstrip("/").rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"not an SFT model id (sft-{{step}}): {model_id!r}")
    return int(m.group(1))


def rl_update(model_id: str) -> int:
    """The update of an RL run's intermediate checkpoint id (or of its directory's path)."""
    m = re.search(r"-u(\d+)$", model_id.rstrip("/"))
    if m is None:
        raise ValueError(f"not an intermediate RL checkpoint id (rl-...-u{{update}}): {model_id!r}")
    return int(m.group(1))


def parse(model_id: str) -> dict:
    """A model id -> its fields: stage (base | sft | rl | edit), algo (an RL algo, or the edit's name),
    sft_seed (None in a study of one SFT seed), sft_step, rl_update, seed (the RL seed)."""
    m = _PARTS.fullmatch(model_id)
    if m is None:
        raise ValueError(f"not a model id: {model_id!r}")
    g = m.groupdict()
    seed_of = next((g[k] for k in ("sft_seed", "rl_sft_seed", "edit_sft_seed") if g[k]), None)
    sft_seed = int(seed_of) if seed_of else None
    if g["base"]:
        return {"stage": "base", "algo": None, "sft_seed": None, "sft_step": 0, "rl_update": None, "seed": None}
    if g["sft_step"]:
        return {"stage": "sft", "algo": None, "sft_seed": sft_seed, "sft_step": int(g["sft_step"]), "rl_update": None,
                "seed": None}
    if g["algo"]:
        return {"stage": "rl", "algo": g["algo"], "sft_seed": sft_seed, "sft_step": int(g["rl_from"]),
                "rl_update": int(g["update"]) if g["update"] else None, "seed": int(g["seed"]) if g["seed"] else None}
    return {"stage": "edit", "algo": g["edit"], "sft_seed": sft_seed, "sft_step": None, "rl_update": None, "seed": None}


ROLES = ("base", "sft", "rl", "control", "edit")


def role(model_id: str) -> str:
    """What a model is, from its parsed id: base, sft, rl (trained by an RL algo), control (the continued-SFT
    control: an RL-stage run of algo sft_continue) or edit. The SFT seed, the RL seed and the update never
    change it: rl-seed1-sft_continue-200-s2-u10 is a control."""
    fields = parse(model_id)
    return "control" if fields["stage"] == "rl" and fields["algo"] == CONTROL else fields["stage"]


def start(model_id: str) -> str | None:
    """The SFT checkpoint an RL or control model started from (None for any other model)."""
    fields = parse(model_id)
    return sft(fields["sft_step"], fields["sft_seed"]) if fields["stage"] == "rl" else None


def fields(column: str) -> "pl.Expr":
    """`parse`, `role` and `start` of every id in a polars column, as a struct expression:

        frame.filter(model_ids.fields("b").struct.field("role") == "control")

    An id that is not a model id raises (naming it); a null stays null."""
    import polars as pl  # here, not at the top: the Snakefile imports this module at parse time

    dtype = pl.Struct({"stage": pl.String, "algo": pl.String, "sft_seed": pl.Int64, "sft_step": pl.Int64,
                       "rl_update": pl.Int64, "seed": pl.Int64, "role": pl.String, "start": pl.String})
    return pl.col(column).map_elements(lambda m: {**parse(m), "role": role(m), "start": start(m)},
                                       return_dtype=dtype)


def role_of(column: str) -> "pl.Expr":
    """The role (one of ROLES) of every id in a polars column."""
    return fields(column).struct.field("role")

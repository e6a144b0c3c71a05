"""Result tables (polars): what each model id is, and the accuracy of every model."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import polars as pl

from rlheals import evaluate

_MODEL_ID = re.compile(
    r"(?P<stage>base)$|(?P<sft>sft)-(?P<sft_step>\d+)$"
    r"|rl-(?P<algo>[a-z_]+)-(?P<rl_from>\d+)(?:-s(?P<seed>\d+))?(?:-u(?P<update>\d+))?$|edit-(?P<edit>\w+)$"
)


def parse_model_id(model_id: str) -> dict:
    """base | sft-{step} | rl-{algo}-{sft step}[-s{seed}][-u{update}] | edit-{name} -> its fields."""
    m = _MODEL_ID.match(model_id)
    if m is None:
        raise ValueError(f"not a model id: {model_id!r}")
    g = m.groupdict()
    if g["stage"]:
        return {"stage": "base", "algo": None, "sft_step": 0, "rl_update": None, "seed": None}
    if g["sft"]:
        return {"stage": "sft", "algo": None, "sft_step": int(g["sft_step"]), "rl_update": None, "seed": None}
    if g["algo"]:
        return {"stage": "rl", "algo": g["algo"], "sft_step": int(g["rl_from"]),
                "rl_update": int(g["update"]) if g["update"] else None, "seed": int(g["seed"]) if g["seed"] else None}
    return {"stage": "edit", "algo": g["edit"], "sft_step": None, "rl_update": None, "seed": None}


def accuracy_table(episodes: Mapping[str, Sequence[Mapping]]) -> pl.DataFrame:
    """One row per (model, rule): accuracy with its 95% Wilson interval, pass@1, format errors, value mapping."""
    rows = []
    for model_id, results in episodes.items():
        for rule, summary in evaluate.summarize(results).items():
            rows.append({"model_id": model_id, **parse_model_id(model_id), "rule": rule, **summary})
    schema = {"sft_step": pl.Int64, "rl_update": pl.Int64, "seed": pl.Int64, "algo": pl.String}
    return pl.DataFrame(rows, schema_overrides=schema).sort("stage", "sft_step", "model_id", "rule")


def rl_log_table(logs: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Every RL run's per-update log in one table, with the run's algo, SFT step and seed as columns
    (algos log different columns: missing ones are null)."""
    frames = []
    for run, frame in logs.items():
        fields = parse_model_id(f"rl-{run}")
        frames.append(frame.with_columns(pl.lit(run).alias("run"), pl.lit(fields["algo"]).alias("algo"),
                                         pl.lit(fields["sft_step"]).alias("sft_step"),
                                         pl.lit(fields["seed"] or 1).alias("seed")))
    table = pl.concat(frames, how="diagonal_relaxed")
    first = ["run", "algo", "sft_step", "seed", "update"]
    return table.select(*first, *[c for c in table.columns if c not in first]).sort("run", "update")


def spectrum_table(pairs: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The scalar metrics of every compared pair: one row per (a, b, matrix), one column per metric."""
    long = pl.concat([p.filter(pl.col("rank_index").is_null()) for p in pairs])
    return long.pivot(on="metric", index=["a", "b", "tensor", "layer", "module"], values="value").sort("a", "b", "tensor")


def restoration_table(edits: Mapping[str, Mapping], episodes: Mapping[str, Sequence[Mapping]]) -> pl.DataFrame:
    """Per edit and rule: the edited model's accuracy, its B's and T's, and the recovery fraction."""
    from rlheals import restore

    accuracy = {m: {rule: s["accuracy"] for rule, s in evaluate.summarize(rows).items()} for m, rows in episodes.items()}
    rows = []
    for name, spec in edits.items():
        for rule, acc in accuracy[f"edit-{name}"].items():
            base, target = accuracy[spec["base"]][rule], accuracy[spec["target"]][rule]
            rows.append({"edit": name, "kind": spec["kind"], "base": spec["base"], "target": spec["target"],
                         "top": spec.get("top", 0.0), "tail": spec.get("tail", 0.0), "layers": spec.get("layers"),
                         "rule": rule, "acc_edit": acc, "acc_base": base, "acc_target": target,
                         "recovery": restore.recovery(acc, base, target)})
    return pl.DataFrame(rows, schema_overrides={"layers": pl.Float64})

"""Result tables (polars): what each model id is, and the accuracy of every model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from rlheals import model_ids, statistics
from rlheals.episodes import summarize


def accuracy_table(episodes: Mapping[str, Sequence[Mapping]]) -> pl.DataFrame:
    """One row per (model, rule): accuracy with its 95% Wilson interval, pass@1, format errors, value mapping."""
    rows = []
    for model_id, results in episodes.items():
        for rule, summary in summarize(results).items():
            rows.append({"model_id": model_id, **model_ids.parse(model_id), "rule": rule, **summary})
    schema = {"sft_seed": pl.Int64, "sft_step": pl.Int64, "rl_update": pl.Int64, "seed": pl.Int64, "algo": pl.String}
    return pl.DataFrame(rows, schema_overrides=schema).sort("stage", "sft_seed", "sft_step", "model_id", "rule",
                                                            nulls_last=False)


def rl_log_table(logs: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """Every RL run's per-update log in one table, with the run's algo, SFT step and seed as columns
    (algos log different columns: missing ones are null)."""
    frames = []
    for run, frame in logs.items():
        fields = model_ids.parse(f"rl-{run}")
        frames.append(frame.with_columns(pl.lit(run).alias("run"), pl.lit(fields["algo"]).alias("algo"),
                                         pl.lit(fields["sft_step"]).alias("sft_step"),
                                         pl.lit(fields["seed"] or 1).alias("seed")))
    table = pl.concat(frames, how="diagonal_relaxed")
    first = ["run", "algo", "sft_step", "seed", "update"]
    return table.select(*first, *[c for c in table.columns if c not in first]).sort("run", "update")


def spectrum_table(pairs: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The scalar metrics of every compared pair: one row per (a, b, matrix), one column per metric."""
    long = pl.concat([p.filter(pl.col("rank_index").is_null()) for p in pairs])
    return long.pivot(on="metric", index=["a", "b", "matrix", "layer", "module"], values="value").sort("a", "b", "matrix")


def restoration_table(edits: Mapping[str, Mapping], episodes: Mapping[str, Sequence[Mapping]]) -> pl.DataFrame:
    """Per edit (by edit model id: edit-{name}, seed1-edit-{name}) and rule: the edited model's accuracy,
    its B's and T's, B - T with its interval, and the recovery fraction (acc_edit - acc_T) / (acc_B - acc_T)
    with its interval (rlheals.statistics, paired on the test hands). `defined`: B - T lies beyond its
    interval; elsewhere the fraction would divide noise by noise, and its columns are null."""
    hands = hands_table({m: episodes[m] for m in {*edits, *(v for e in edits.values() for v in (e["base"], e["target"]))}})
    rows = []
    for edit_id, spec in edits.items():
        sft_seed, name = model_ids.split_seed(edit_id)
        for rule in sorted(hands.filter(pl.col("model_id") == edit_id)["rule"].unique()):
            m = results_matrix(hands, [edit_id, spec["base"], spec["target"]], rule)
            arms = {"edit": m[0], "base": m[1], "target": m[2]}
            gap = statistics.contrast(arms, {"base": 1, "target": -1})
            defined = gap.beyond(0)
            fraction = (statistics.ratio(arms, {"edit": 1, "target": -1}, {"base": 1, "target": -1})
                        if defined else None)
            rows.append({"edit": name.removeprefix("edit-"), "sft_seed": sft_seed, "kind": spec["kind"],
                         "base": spec["base"], "target": spec["target"], "top": spec.get("top", 0.0),
                         "tail": spec.get("tail", 0.0), "layers": spec.get("layers"),
                         "layer_range": None if spec.get("layer_range") is None else "{}-{}".format(*spec["layer_range"]),
                         "rule": rule, "n_episodes": m.shape[1], "acc_edit": m[0].mean(), "acc_base": m[1].mean(),
                         "acc_target": m[2].mean(), **_interval("gap", gap), "defined": defined,
                         **_interval("recovery", fraction)})
    return pl.DataFrame(rows, schema_overrides={"layers": pl.Float64, "layer_range": pl.String, "sft_seed": pl.Int64,
                                                **{c: pl.Float64 for c in _interval("recovery", None)}})


def hands_table(episodes: Mapping[str, Sequence[Mapping]]) -> pl.DataFrame:
    """One row per (model, rule, test hand): whether the model solved it, and whether its first answer gave
    the cards their values by the rule (value mapping). Every comparison of models pairs them on these
    shared hands (rlheals.statistics)."""
    frames = [pl.DataFrame({"model_id": model_id, "rule": [r["rule"] for r in rows],
                            "episode": [r["episode"] for r in rows],
                            "correct": [bool(r["correct"]) for r in rows],
                            "value_mapping": [bool(r["value_mapping"]) for r in rows]},
                           schema={"model_id": pl.String, "rule": pl.String, "episode": pl.String,
                                   "correct": pl.Boolean, "value_mapping": pl.Boolean})
              for model_id, rows in episodes.items()]
    return pl.concat(frames).sort("model_id", "rule", "episode")


def results_matrix(hands: pl.DataFrame, models: Sequence[str], rule: str,
                   measure: str = "correct") -> np.ndarray:
    """The 0/1 results of `models` on `rule`'s test hands (`measure`: solved, or value_mapping), one row per
    model, hands in one order. Models scored on different hands cannot be paired: that is an error naming
    them."""
    rows = hands.filter(pl.col("rule") == rule, pl.col("model_id").is_in(list(set(models))))
    wide = rows.pivot(on="model_id", index="episode", values=measure).sort("episode")
    missing = [m for m in models if m not in wide.columns]
    if missing:
        raise ValueError(f"no {rule} results for {missing} in the hands table")
    partial = [m for m in models if wide[m].null_count()]
    if partial:
        raise ValueError(f"{partial} were not scored on every {rule} hand the others were: they cannot be paired")
    return np.stack([wide[m].to_numpy().astype(np.float64) for m in models])


def rl_recovery_table(accuracy: pl.DataFrame, hands: pl.DataFrame,
                      chosen_b: Mapping[int | None, int] | None = None) -> pl.DataFrame:
    """Per SFT seed, algo (the control included), starting step and rule: the start's accuracy (before),
    the final RL models' mean over seeds (after) with its interval, and, each with its interval
    (rlheals.statistics: paired on the test hands, seed spread counted, t quantile):
    - heal: after - before, what RL changed from its start;
    - drop (OOD only): ref - before, what SFT lost by the start, ref the better (on the test hands) of the
      base and the best-OOD checkpoint B as chosen on the selection hands (`chosen_b`, by SFT seed; without
      it, the base alone: B picked on the test hands would favour a large drop);
    - recovered_share R = heal / drop, only where the drop lies beyond its interval, and only on OOD;
    - vs_control: after - the control's after from the same start (null for the control itself)."""
    final = accuracy.filter(pl.col("stage") == "rl", pl.col("rl_update").is_null())
    sft = accuracy.filter(pl.col("stage") == "sft")
    groups = final.group_by("sft_seed", "algo", "sft_step", "rule").agg(
        pl.col("model_id").sort(), pl.col("accuracy").min().alias("acc_after_min"),
        pl.col("accuracy").max().alias("acc_after_max"))
    rows = []
    for g in groups.iter_rows(named=True):
        seed, rule = g["sft_seed"], g["rule"]
        start = model_ids.sft(g["sft_step"], seed)
        curve_rows = sft.filter(pl.col("sft_seed").eq_missing(seed), pl.col("rule") == rule).sort("sft_step")
        b_step = (chosen_b or {}).get(seed) if rule == "ood" else None
        chosen = curve_rows.filter(pl.col("sft_step") == b_step) if b_step is not None else curve_rows.clear()
        best = next(chosen.iter_rows(named=True), None)
        start_rows = curve_rows.filter(pl.col("sft_step") == 0)  # the base model's weights, step 0 of SFT
        if not start_rows.height:
            start_rows = accuracy.filter(pl.col("stage") == "base", pl.col("rule") == rule)
        # What SFT lost is asked of OOD only: on the ID rule SFT gains, and the probe is its own question.
        ref = max((*start_rows.head(1).iter_rows(named=True), *([best] if best else [])),
                  key=lambda r: r["accuracy"])["model_id"] if rule == "ood" else None
        control = final.filter(pl.col("sft_seed").eq_missing(seed), pl.col("sft_step") == g["sft_step"],
                               pl.col("rule") == rule, pl.col("algo") == model_ids.CONTROL)["model_id"].sort().to_list()
        runs = g["model_id"]
        names = {"ref": [ref] if ref else [], "start": [start], "rl": runs,
                 "control": control if control and g["algo"] != model_ids.CONTROL else []}
        matrix = results_matrix(hands, [m for ids in names.values() for m in ids], rule)
        arms, at = {}, 0
        for name, ids in names.items():
            arms[name], at = matrix[at:at + len(ids)], at + len(ids)
        after = statistics.contrast(arms, {"rl": 1})
        heal = statistics.contrast(arms, {"rl": 1, "start": -1})
        drop = statistics.contrast(arms, {"ref": 1, "start": -1}) if ref else None
        defined = drop is not None and drop.value > 0 and drop.beyond(0)
        share = statistics.ratio(arms, {"rl": 1, "start": -1}, {"ref": 1, "start": -1}) if defined else None
        vs = statistics.contrast(arms, {"rl": 1, "control": -1}) if len(arms["control"]) else None
        rows.append({"sft_seed": seed, "algo": g["algo"], "sft_step": g["sft_step"], "rule": rule,
                     "n_seeds": len(runs), "n_episodes": matrix.shape[1], "acc_before": arms["start"].mean(),
                     "acc_after": after.value, "acc_after_low": after.low, "acc_after_high": after.high,
                     "acc_after_min": g["acc_after_min"], "acc_after_max": g["acc_after_max"],
                     **_interval("heal", heal), "ref": ref,
                     "acc_ref": float(arms["ref"].mean()) if ref else None,
                     **_interval("drop", drop),
                     "drop_beyond_noise": defined, **_interval("recovered_share", share),
                     "control_seeds": len(arms["control"]) or None,
                     "acc_control": float(arms["control"].mean()) if vs is not None else None, **_interval("vs_control", vs)})
    floats = {c: pl.Float64 for name in ("heal", "drop", "recovered_share", "vs_control")
              for c in _interval(name, None)}
    schema = {"sft_seed": pl.Int64, "control_seeds": pl.Int64, "acc_control": pl.Float64, "ref": pl.String,
              "acc_ref": pl.Float64, **floats}
    return pl.DataFrame(rows, schema_overrides=schema).sort("rule", "sft_seed", "sft_step", "algo", nulls_last=False)


def _interval(name: str, est: statistics.Estimate | None) -> dict:
    """A statistic's columns: value, 95% bounds, standard error, degrees of freedom, p against 0."""
    if est is None:
        return {name: None, f"{name}_low": None, f"{name}_high": None, f"{name}_se": None, f"{name}_df": None,
                f"{name}_p": None}
    return {name: est.value, f"{name}_low": est.low, f"{name}_high": est.high, f"{name}_se": est.se,
            f"{name}_df": est.df, f"{name}_p": est.p_value}


def checkpoint_table(model_dirs: Mapping[str, str]) -> pl.DataFrame:
    """Which model id is which: stage, step, RL update, seed, directory and the sha256 of its weights
    (models.weights_sha256: read from the checksum manifest, after a size check, never hashed again)."""
    from rlheals import models

    rows = []
    for model_id, path in sorted(model_dirs.items()):
        models.check_model_dir(path, verify="size")
        rows.append({"model_id": model_id, **model_ids.parse(model_id), "path": str(path),
                     "sha256": models.weights_sha256(path)})
    return pl.DataFrame(rows, schema_overrides={"sft_step": pl.Int64, "rl_update": pl.Int64, "seed": pl.Int64, "algo": pl.String})


def read_sft_logs(paths: Sequence[str]) -> pl.DataFrame:
    """The SFT loss logs of every SFT seed, in one table (each log has its sft_seed column)."""
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


def sft_curve(accuracy: pl.DataFrame, losses: pl.DataFrame) -> pl.DataFrame:
    """One row per SFT seed and step: train and held-out losses, ID and OOD accuracy, format errors, value
    mapping."""
    sft = accuracy.filter(pl.col("stage") == "sft").pivot(
        on="rule", index=["sft_seed", "sft_step"], values=["accuracy", "format_error_rate", "value_mapping_accuracy"])
    return sft.join(losses.rename({"step": "sft_step"}), on=["sft_seed", "sft_step"], how="left", nulls_equal=True).sort(
        "sft_seed", "sft_step", nulls_last=False)


def update_norms(spectrum: pl.DataFrame, last_sft: str) -> pl.DataFrame:
    """||dW|| / ||W|| per layer and module: SFT (base -> last SFT step), RL and the continued-SFT control
    (SFT step -> the models started from it)."""
    return (spectrum.with_columns(update_stage(last_sft).alias("stage")).drop_nulls("stage")
            .select("stage", "a", "b", "matrix", "layer", "module", "relative_update_norm").sort("stage", "a", "b", "matrix"))


def update_stage(last_sft: str) -> pl.Expr:
    """What a compared pair (columns a, b) measures, from the parsed ids: "SFT" (base -> `last_sft`), "RL"
    or "control" (an RL or control model's SFT start -> the model), null for any other pair."""
    b = model_ids.fields("b")
    from_start = pl.col("a") == b.struct.field("start")
    return (pl.when((pl.col("a") == "base") & (pl.col("b") == last_sft)).then(pl.lit("SFT"))
            .when(from_start & (b.struct.field("role") == "control")).then(pl.lit("control"))
            .when(from_start & (b.struct.field("role") == "rl")).then(pl.lit("RL")).otherwise(None))


def rotation_points(spectrum: pl.DataFrame, accuracy: pl.DataFrame) -> pl.DataFrame:
    """Per SFT step: the mean top-k principal angle to the base model (over every matrix) and the OOD
    accuracy, for the rotation-vs-OOD question."""
    rotation = (spectrum.filter(pl.col("a") == "base", model_ids.role_of("b") == "sft")
                .group_by("b").agg(pl.col("u_angle_mean_deg").mean().alias("rotation")))
    ood = accuracy.filter(pl.col("stage") == "sft", pl.col("rule") == "ood").select(
        pl.col("model_id").alias("b"), "sft_seed", "sft_step", pl.col("accuracy").alias("ood_accuracy"))
    return rotation.join(ood, on="b").select("sft_seed", "sft_step", "rotation", "ood_accuracy").sort(
        "sft_seed", "sft_step", nulls_last=False)

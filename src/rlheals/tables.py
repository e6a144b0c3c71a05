"""Result tables (polars): what each model id is, and the accuracy of every model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl

from rlheals import model_ids
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
    """Per edit (by edit model id: edit-{name}, seed1-edit-{name}) and rule: the edited model's accuracy, its B's and T's, and the recovery fraction with its
    95% interval (delta method over the three binomial accuracies; NaN where B and T score the same)."""
    from rlheals import restore

    summaries = {m: summarize(rows) for m, rows in episodes.items()}
    accuracy = {m: {rule: s["accuracy"] for rule, s in by_rule.items()} for m, by_rule in summaries.items()}
    rows = []
    for edit_id, spec in edits.items():
        sft_seed, name = model_ids.split_seed(edit_id)
        name = name.removeprefix("edit-")
        for rule, acc in accuracy[edit_id].items():
            base, target = accuracy[spec["base"]][rule], accuracy[spec["target"]][rule]
            rows.append({"edit": name, "sft_seed": sft_seed, "kind": spec["kind"], "base": spec["base"], "target": spec["target"],
                         "top": spec.get("top", 0.0), "tail": spec.get("tail", 0.0), "layers": spec.get("layers"),
                         "layer_range": None if spec.get("layer_range") is None else "{}-{}".format(*spec["layer_range"]),
                         "rule": rule, "n_episodes": (n := summaries[edit_id][rule]["n_episodes"]),
                         "acc_edit": acc, "acc_base": base, "acc_target": target,
                         "recovery": restore.recovery(acc, base, target),
                         "recovery_se": restore.recovery_se(acc, base, target, n)})
    table = pl.DataFrame(rows, schema_overrides={"layers": pl.Float64, "layer_range": pl.String, "sft_seed": pl.Int64})
    return table.with_columns((pl.col("recovery") - 1.96 * pl.col("recovery_se")).alias("recovery_low"),
                              (pl.col("recovery") + 1.96 * pl.col("recovery_se")).alias("recovery_high"))


def rl_recovery_table(accuracy: pl.DataFrame) -> pl.DataFrame:
    """Per (algo, SFT step, rule): accuracy of the SFT checkpoint (before), of the final RL models (after:
    mean, min and max over seeds, and the standard error of the mean), the best SFT accuracy (peak), and
    the recovered share of the drop from the peak, (after - before) / (peak - before), defined where the
    start is below the peak. The standard error takes the larger of the spread between seeds and the
    binomial noise of one evaluation, so two seeds that happen to agree do not claim certainty."""
    sft = accuracy.filter(pl.col("stage") == "sft").select("sft_seed", "sft_step", "rule",
                                                            pl.col("accuracy").alias("acc_before"))
    peak = sft.group_by("sft_seed", "rule").agg(pl.col("acc_before").max().alias("acc_peak"))
    final = accuracy.filter(pl.col("stage") == "rl", pl.col("rl_update").is_null())
    binomial = pl.col("accuracy") * (1 - pl.col("accuracy")) / pl.col("n_episodes")
    after = final.group_by("sft_seed", "algo", "sft_step", "rule").agg(
        pl.col("accuracy").mean().alias("acc_after"), pl.col("accuracy").min().alias("acc_after_min"),
        pl.col("accuracy").max().alias("acc_after_max"), pl.len().alias("n_seeds"),
        pl.max_horizontal(pl.col("accuracy").var().fill_null(0.0), binomial.mean()).alias("_var"))
    after = after.with_columns((pl.col("_var") / pl.col("n_seeds")).sqrt().alias("acc_after_se")).drop("_var")
    table = after.join(sft, on=["sft_seed", "sft_step", "rule"], nulls_equal=True).join(
        peak, on=["sft_seed", "rule"], nulls_equal=True).with_columns(
        pl.when(pl.col("acc_peak") > pl.col("acc_before"))
        .then((pl.col("acc_after") - pl.col("acc_before")) / (pl.col("acc_peak") - pl.col("acc_before")))
        .otherwise(None).alias("recovered_share"))
    return table.sort("rule", "sft_seed", "sft_step", "algo", nulls_last=False)


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

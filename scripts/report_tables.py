"""The report's tables: SFT curve, RL recovery, update norms and the findings table (parquet + csv)."""

import polars as pl

from rlheals import findings, runlog, tables

log = runlog.setup(snakemake.log[0])
accuracy = pl.read_parquet(snakemake.input.accuracy)
hands = pl.read_parquet(snakemake.input.hands)
losses = tables.read_sft_logs(snakemake.input.losses)
spectrum = pl.read_parquet(snakemake.input.spectrum)
restoration = pl.read_parquet(snakemake.input.restoration)
last = snakemake.params.last_sft
# B of each SFT seed as chosen on the selection hands (none when the config names every step)
chosen_b = {seed: b for seed, b in snakemake.params.chosen_b}
recovery = tables.rl_recovery_table(accuracy, hands, chosen_b)
points = tables.rotation_points(spectrum, accuracy)
found = findings.table(
    [*findings.sft_forgetting(accuracy, losses, hands, chosen_b), *findings.rl_healing(recovery),
     *findings.spectrum_stability(spectrum, "base", last),
     *findings.rotation_predicts_ood(points), *findings.restoration_findings(restoration),
     *findings.update_norms(spectrum, "base", last, snakemake.params.doses)])
out = {"sft_curve": tables.sft_curve(accuracy, losses), "rl_recovery": recovery,
       "update_norms": tables.update_norms(spectrum, last), "findings": found}
for (name, table), parquet in zip(out.items(), snakemake.output.parquet):  # multiext keeps the order
    runlog.write_atomic(getattr(snakemake.output, name), table.write_csv)
    runlog.write_atomic(parquet, table.write_parquet)
with pl.Config(tbl_rows=100, fmt_str_lengths=80, tbl_width_chars=200):
    log.info("%s", found.select("finding", "claim", "value", "reproduced"))

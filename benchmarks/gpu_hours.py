"""Estimated GPU-hours per stage of the paper-scale configs, computed from model size and token counts.

    .venv/bin/python benchmarks/gpu_hours.py [config/paper-qwen2.5-7b.yaml ...]

For each config (default: config/paper-*.yaml, merged over config/config.yaml as snakemake merges them):
- job counts come from the workflow itself (`snakemake -n --forceall --quiet rules`), so the number of
  RL runs and evaluated models is the DAG's, not a recount;
- GPUs per job are those the cluster jobs ask for (rlheals.resources; the SLURM profile asks the same);
- the cost of one job of each stage is rlheals.costs's (its docstring states the cost model and
  ASSUMPTIONS; the cluster jobs' runtimes are sized from the same numbers): the model's size and shape
  from `model.local_path`/config.json when it exists, else from the published architecture of the model
  the config names; token counts from the paper prompt and JSON answer rendered for real hands.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
sys.path.insert(0, str(ROOT / "src"))

from rlheals import config, costs, plan, resources  # noqa: E402
from rlheals.costs import ASSUMPTIONS, GPUS  # noqa: E402


def job_counts(configfile: Path) -> dict:
    """Jobs per rule of the whole study, as snakemake plans them. Snakemake plans a local model's study
    only with the model on the machine: where it is not, with a tiny stand-in (tests/families.py), which
    gives the same jobs."""
    cfg = config.read(ROOT / "config" / "config.yaml", configfile)
    with tempfile.TemporaryDirectory() as tmp:
        stand_in = []
        if cfg["model"]["source"] == "local" and not Path(cfg["model"]["local_path"]).is_dir():
            model = Path(tmp) / "model"
            write = f"import families; families.write('qwen25', {str(model)!r})"  # its logs stay out of ours
            subprocess.run([sys.executable, "-c", write], cwd=ROOT / "tests", capture_output=True, check=True)
            stand_in = ["--config", "model=" + json.dumps({"source": "local", "local_path": str(model)})]
        out = subprocess.run(
            [
                str(SNAKEMAKE),
                "-n",
                "--forceall",
                "--ignore-incomplete",
                "--quiet",
                "rules",
                "--configfile",
                str(configfile),
                *stand_in,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return plan.job_counts(out)


def estimate(configfile: Path, counts: dict | None = None) -> dict:
    """Stage rows for one config, per GPU type and scenario ("expected", "bound"), with job counts."""
    cfg = config.read(ROOT / "config" / "config.yaml", configfile)
    counts = job_counts(configfile) if counts is None else counts
    est = costs.estimate(cfg, {rule: resources.gpus(rule) for rule in resources.GPU_RULES})
    runs = counts.get("rl", 0)
    per_algo = runs // (len(cfg["rl"]["algos"]) + bool(cfg["rl"]["control"])) if runs else 0
    # The selection hands and the numbers-only probe are evaluation jobs too, each playing at most as many
    # hands as an `evaluate` job: counted as one each (a bound).
    evaluations = sum(counts.get(rule, 0) for rule in ("evaluate", "evaluate_select", "evaluate_numbers"))
    for rows in est["rows"].values():
        for row in rows:
            row["jobs"] = per_algo if row["rule"] == "rl" else evaluations if row["rule"] == "evaluate" else \
                counts.get(row["rule"], 0)
    return {**est, "counts": counts}


def table(configfile: Path) -> str:
    est = estimate(configfile)
    rows = est["rows"]
    columns = [("A100-80GB", "expected"), ("H100-80GB", "expected"), ("A100-80GB", "bound")]
    lines = [
        f"{configfile.name}: {est['model']['params'] / 1e9:.2f}B parameters in the forward pass; "
        f"prompt {est['tokens']['prompt']:.0f}, answer {est['tokens']['answer']:.0f}, "
        f"feedback {est['tokens']['feedback']:.0f} tokens",
        "",
        "| stage | jobs | GPUs/job | trained tokens/job | wall h/job A100 | GPU-h A100 | GPU-h H100 "
        "| GPU-h A100, bound | wall h/job A100, bound |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    totals = dict.fromkeys(columns, 0.0)
    for i, row in enumerate(rows[columns[0]]):
        for column in columns:
            totals[column] += rows[column][i]["jobs"] * rows[column][i]["gpu_hours_per_job"]
        bound = rows[columns[2]][i]
        trained = f"{row['trained'] / 1e6:.1f}M" if row["trained"] else "–"
        lines.append(
            f"| {row['stage']} | {row['jobs']} | {row['gpus']} | {trained} "
            f"| {row['wall_hours_per_job']:.2f} "
            + "".join(f"| {rows[c][i]['jobs'] * rows[c][i]['gpu_hours_per_job']:,.1f} " for c in columns)
            + f"| {bound['wall_hours_per_job']:.2f} |"
        )
    lines.append("| **total** | | | | " + "".join(f"| **{totals[c]:,.0f}** " for c in columns) + "| |")
    counts, disk = est["counts"], est["disk"]
    kept = counts.get("evaluate", 0) - counts.get("restore", 0)  # edited models are temp()
    total_tb = (kept * disk["model_bytes"] + counts.get("svd", 0) * disk["svd_bytes"]) / 1e12
    lines += [
        "",
        f"CPU jobs: {counts.get('svd', 0)} svd (about {disk['svd_core_hours']:.1f} core-hours each), "
        f"{counts.get('spectrum', 0)} spectrum, {counts.get('restore', 0)} restore. "
        f"Disk: {kept} model directories of {disk['model_bytes'] / 1e9:.0f} GB and {counts.get('svd', 0)} "
        f"SVD caches of {disk['svd_bytes'] / 1e9:.0f} GB, about {total_tb:.1f} TB in results/.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    configs = [Path(a) for a in argv] or sorted((ROOT / "config").glob("paper-*.yaml"))
    for configfile in configs:
        print(table(configfile.resolve()))
        print()
    print(
        "Assumptions: "
        + ", ".join(f"{k}={v}" for k, v in ASSUMPTIONS.items())
        + "; "
        + ", ".join(
            f"{g} {s['flops'] / 1e12:.0f} TFLOP/s bf16, {s['bandwidth'] / 1e12:.2f} TB/s"
            for g, s in GPUS.items()
        )
        + "."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# What the rules share: the study's run lists and models, config slices and code hashes, all computed
# by rlheals.workflow (unit-tested there). Kept light: every cluster job re-parses this.
import json
from pathlib import Path

from rlheals import model_ids
from rlheals.report import FIGURES
from rlheals.workflow import POINTS_FILE, SPLITS, TEST_SPLITS, Study, canonical, code_hash

study = Study(config)

SFT_STEPS = study.sft_steps
RL_SAVE_UPDATES = study.rl_save_updates
SPECTRUM = config["spectrum"]
EDIT_SPECS = study.edit_specs
EDIT_MODELS = study.edit_models


def chosen():
    """The study with the points it names (B, T, RL starting points) chosen: after the choose_points
    checkpoint has run, when the config names any; the study as it is otherwise."""
    if not study.needs_points:
        return study
    with open(checkpoints.choose_points.get().output[0]) as f:
        return Study(config, json.load(f))


def points_input(wildcards):
    return [POINTS_FILE] if study.needs_points else []


def code_of(script):
    """A hash of the package code `scripts/<script>` uses: editing that code reruns the rules that use it."""
    return code_hash(Path(workflow.basedir) / "scripts" / script)


def rl_start(wildcards):
    return f"results/models/{model_ids.sft(model_ids.parse_rl_run(wildcards.rl_run).step)}"


def edit_inputs(wildcards):
    return chosen().edit_inputs(wildcards.edit)


def final_output(wildcards):
    return [
        "results/data/manifest.json",
        "results/tables/sft_log.parquet",
        "results/tables/accuracy.parquet",
        "results/tables/rl_log.parquet",
        *[f"results/spectrum/{a}__{b}.parquet" for a, b in chosen().spectrum_pairs],
        "results/tables/spectrum.parquet",
        "results/tables/restoration.parquet",
        "results/tables/findings.parquet",
        "results/tables/checkpoints.parquet",
        *[fig.svg for fig in FIGURES],
    ]


wildcard_constraints:
    split="|".join(SPLITS),
    rl_run=model_ids.RL_RUN,
    a=model_ids.MODEL_ID,
    b=model_ids.MODEL_ID,
    edit=model_ids.EDIT,
    model_id=model_ids.MODEL_ID,

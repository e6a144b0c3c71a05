# What the rules share: the study's run lists and models, config slices and code hashes, all computed
# by rlheals.workflow (unit-tested there). Kept light: every cluster job re-parses this.
import functools
import json
import os
from pathlib import Path

from snakemake.exceptions import IncompleteCheckpointException, WorkflowError

from rlheals import model_ids
from rlheals import plan
from rlheals import resources as sizing
from rlheals.report import FIGURES, SFT_LOG_FILES, SPECTRUM_PAIR_FILES
from rlheals.workflow import HELD_SPLITS, SPLITS, TEST_SPLITS, Study, canonical, code_hash

study = Study(config)

SFT_STEPS = study.sft_steps
RL_SAVE_UPDATES = study.rl_save_updates
SPECTRUM = config["spectrum"]
EDIT_SPECS = study.edit_specs
EDIT_MODELS = study.edit_models
# With several SFT seeds, the paths of one SFT run's files carry its seed (a wildcard); else nothing.
SFT_SEEDED = study.sft_seeds != [None]
SEED = "seed{sft_seed}-" if SFT_SEEDED else ""
SEED_IN_EXPAND = "seed{{sft_seed}}-" if SFT_SEEDED else ""
SFT_LOGS = [study.sft_log(s) for s in study.sft_seeds]
POINTS_FILES = [study.points_file(s) for s in study.sft_seeds] if study.needs_points else []


def job_threads(n):
    """A job's threads: `n`, or one for the tiny model, whose jobs gain little from a second thread
    (start-up and per-operator overhead are most of their time) and run two side by side instead."""
    return 1 if config["model"]["source"] == "tiny" else n


def sized(name):
    """A cluster job's memory and runtime, from the model and the job's token counts (rlheals.resources):
    more on a retry, capped by RLHEALS_MAX_MEM_MB and RLHEALS_MAX_RUNTIME."""

    def algo(wildcards):
        return model_ids.parse_rl_run(wildcards.rl_run).algo if name == "rl" else None

    return {
        "mem_mb": lambda wildcards, attempt: sizing.mem_mb(name, config, attempt),
        "runtime": lambda wildcards, threads, attempt: sizing.runtime(
            name, config, attempt, algo=algo(wildcards), threads=threads_run(name, threads)
        ),
    }


def threads_run(name, threads):
    """The threads a job of rule `name` runs on. Snakemake gives `threads` capped by --cores, which a dry
    run sets to 1 unless given: no job runs on that. So a dry run counts the rule's own (--set-threads and
    the profile's included) capped by --max-threads, what a cluster job asks for and gets."""
    if not workflow.dryrun:
        return threads
    asked = workflow.get_rule(name).resources["_cores"]
    if asked.is_evaluable():  # threads given as a function: snakemake's value is all there is
        return threads
    cap = workflow.resource_settings.max_threads
    return min(asked.value, cap) if cap else asked.value


def sft_seed_of(wildcards):
    return int(wildcards.sft_seed) if SFT_SEEDED else None


_CHOSEN = {}  # the study with its points, by the SFT seeds whose points are assumed (none outside `plan`)
# `python3 tasks.py plan`: points not chosen yet are assumed, so that a dry run plans the whole study.
ASSUMED_PEAK = os.environ.get(plan.ASSUME)
_NOTED = set()


def chosen():
    """The study with the points it names (B, T, RL starting points) chosen for every SFT seed: after
    the choose_points checkpoints have run, when the config names any; the study as it is otherwise."""
    if not study.needs_points:
        return study
    points, assumed = {}, []
    for seed in study.sft_seeds:
        try:
            done = checkpoints.choose_points.get(**({"sft_seed": seed} if SFT_SEEDED else {}))
        except IncompleteCheckpointException:
            # Snakemake reads a points file already there once the DAG is built, as a plain dry run does.
            if ASSUMED_PEAK is None or Path(study.points_file(seed)).exists():
                raise
            points[seed] = assume_points(seed)
            assumed.append(seed)
            continue
        points[seed] = read_points(done.output[0])
        if ASSUMED_PEAK is not None:
            note(plan.chosen_note(seed, points[seed], done.output[0]))
    key = tuple(assumed)
    if key not in _CHOSEN:
        _CHOSEN[key] = Study(config, points)
    return _CHOSEN[key]


@functools.cache
def read_points(path):
    with open(path) as f:
        return json.load(f)


def assume_points(seed):
    if not workflow.dryrun:
        raise WorkflowError(f"{plan.ASSUME} is set: points are assumed in dry runs only (unset it to run)")
    peak = plan.parse_assumption(ASSUMED_PEAK)
    points = plan.assumed_points(study.sft_steps, peak)
    note(plan.assumed_note(seed, points, given=peak is not None))
    return points


def note(text):
    if text not in _NOTED:
        _NOTED.add(text)
        plan.note(text)


def code_of(script):
    """A hash of the package code `scripts/<script>` uses: editing that code reruns the rules that use it."""
    return code_hash(Path(workflow.basedir) / "scripts" / script)


def rl_start(wildcards):
    return f"results/models/{model_ids.rl_start(wildcards.rl_run)}"


def edit_inputs(wildcards):
    return chosen().edit_inputs(wildcards.edit_id)


def figure_file_lists():
    """The file lists a figure entry of rlheals.report.FIGURES may name."""
    rl_pairs = [(a, b) for a, b in chosen().spectrum_pairs if b.startswith("rl-")]
    return {
        SPECTRUM_PAIR_FILES: [
            f"results/spectrum/base__{study.last_sft}.parquet",
            *[f"results/spectrum/{a}__{b}.parquet" for a, b in rl_pairs],
        ],
        SFT_LOG_FILES: SFT_LOGS,
    }


def final_output(wildcards):
    return [
        "results/data/manifest.json",
        *SFT_LOGS,
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
    edit_id=model_ids.EDIT_ID,
    sft_seed=r"\d+",
    model_id=model_ids.MODEL_ID,

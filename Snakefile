# RL fine-tuning heals OOD forgetting in SFT: the whole study as file targets.
# Stages live in rules/*.smk; the library in src/rlheals; `rule all` asks for the study's final outputs.
from snakemake.utils import min_version, validate
from rlheals import config as study_config, limits

min_version("9.0")


configfile: "config/config.yaml"


# Values set with --config get the schema's types (snakemake reads nested ones as strings). A bad config
# stops here, before any job runs, with the offending key named; then defaults are filled in.
study_config.type_command_line(
    config, workflow.config_settings.config, workflow.source_path("config/schema.yaml")
)
study_config.check(config, workflow.source_path("config/schema.yaml"))
validate(config, "config/schema.yaml")

# A local model that is not there or lacks files, cannot hold the study's longest conversation (learned
# positions), has no chat template for its turns, or has no token to pad with is refused here, before any
# job runs (a dry run too), with the path and what is missing named.
if config["model"]["source"] == "local":
    limits.check_study(config["model"]["local_path"], config)


report: "rules/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/base.smk"
include: "rules/sft.smk"
include: "rules/rl.smk"
include: "rules/evaluate.smk"
include: "rules/spectrum.smk"
include: "rules/restore.smk"
include: "rules/report.smk"


rule all:
    input:
        # Every SFT seed's chosen points first: their jobs are all planned at once.
        POINTS_FILES,
        final_output,
    default_target: True

import sys

from rlheals.report import record_config, report_config_problem

LAST_SFT = study.last_sft
STYLE = config["report"]

# One rule per figure of rlheals.report.FIGURES (scripts/figure.py draws it with the entry's builder).
# Kept above the other rules: tests/test_workflow_style.py takes a block's script from its first rule.
# The config values a figure entry names (its file lists: figure_file_lists in common.smk):
FIGURE_PARAMS = {"last_sft": LAST_SFT}

for fig in FIGURES:

    rule:
        name:
            fig.rule
        input:
            unpack(lambda w, fig=fig: fig.input_files(figure_file_lists())),
        output:
            svg=report(
                fig.svg,
                caption=f"captions/{fig.caption}",
                category=fig.category,
                subcategory=fig.subcategory,
            ),
            html=fig.html,
        log:
            fig.log,
        params:
            **{name: FIGURE_PARAMS[name] for name in fig.params},
            code=code_of("figure.py"),
            style=canonical(STYLE),
        conda:
            "../envs/analysis.yaml"
        script:
            "../scripts/figure.py"


rule report_tables:
    input:
        accuracy="results/tables/accuracy.parquet",
        hands="results/tables/hands.parquet",
        losses=SFT_LOGS,
        spectrum="results/tables/spectrum.parquet",
        restoration="results/tables/restoration.parquet",
    output:
        sft_curve=report("results/tables/sft_curve.csv", caption="captions/sft_curve.rst", category="Tables"),
        rl_recovery=report(
            "results/tables/rl_recovery.csv", caption="captions/rl_recovery.rst", category="Tables"
        ),
        update_norms=report(
            "results/tables/update_norms.csv", caption="captions/update_norms.rst", category="Tables"
        ),
        findings=report("results/tables/findings.csv", caption="captions/findings.rst", category="Findings"),
        parquet=multiext(
            "results/tables/",
            "sft_curve.parquet",
            "rl_recovery.parquet",
            "update_norms.parquet",
            "findings.parquet",
        ),
    log:
        "logs/tables/report_tables.log",
    params:
        code=code_of("report_tables.py"),
        last_sft=LAST_SFT,
        chosen_b=lambda w: [[seed, points["B"]] for seed, points in (chosen().points or {}).items()],
        # what finding 5 needs to say whether RL and SFT ran at a matched dose
        doses={
            "sft": {"lr": config["sft"]["lr"], "steps": config["sft"]["max_steps"]},
            "rl": {"lr": config["rl"]["lr"], "updates": config["rl"]["updates"]},
        },
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/report_tables.py"


rule checkpoints_table:
    input:
        lambda w: expand("results/models/{model_id}", model_id=chosen().study_models),
    output:
        csv=report("results/tables/checkpoints.csv", caption="captions/checkpoints.rst", category="Tables"),
        parquet="results/tables/checkpoints.parquet",
    log:
        "logs/tables/checkpoints.log",
    localrule: True
    params:
        code=code_of("checkpoints_table.py"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/checkpoints_table.py"


# The study in results/ is the one of the last run that started jobs: its config is recorded there, and a
# report made with another config (which would look for another study's outputs and show none of its
# figures) stops here and says what to pass (rlheals.report.STUDY_CONFIG). Snakemake parses the workflow
# before it knows it will only report, and tells the workflow nothing of it: the command line says so.
STUDY_CONFIG_TEXT = canonical(config)
REPORT_ONLY = any(a == "--report" or a.startswith("--report=") for a in sys.argv) and not any(
    a == "--report-after-run" for a in sys.argv
)
if REPORT_ONLY and (problem := report_config_problem(STUDY_CONFIG_TEXT)):
    raise WorkflowError(problem)


# The workflow's only onstart handler (snakemake keeps the last one parsed; a test checks there is one).
onstart:
    record_config(STUDY_CONFIG_TEXT)

LAST_SFT = f"sft-{SFT_STEPS[-1]}"
RL_PAIRS = [(a, b) for a, b in SPECTRUM_PAIRS if b.startswith("rl-")]
STYLE = config["report"]


rule report_tables:
    input:
        accuracy="results/tables/accuracy.parquet",
        losses="results/tables/sft_log.parquet",
        spectrum="results/tables/spectrum.parquet",
        restoration="results/tables/restoration.parquet",
        by_rank=f"results/spectrum/base__{LAST_SFT}.parquet",
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
        episodes=config["eval"]["episodes"],
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/report_tables.py"


rule checkpoints_table:
    input:
        expand("results/models/{model_id}", model_id=STUDY_MODELS),
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


rule figure_sft_accuracy:
    input:
        accuracy="results/tables/accuracy.parquet",
        losses="results/tables/sft_log.parquet",
        rl_recovery="results/tables/rl_recovery.parquet",
    output:
        svg=report(
            "results/figures/sft_accuracy.svg", caption="captions/sft_accuracy.rst", category="1. SFT and RL"
        ),
        html="results/figures/sft_accuracy.html",
    log:
        "logs/figures/sft_accuracy.log",
    params:
        code=code_of("figure.py"),
        style=canonical(STYLE),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/figure.py"


rule figure_format_errors:
    input:
        accuracy="results/tables/accuracy.parquet",
    output:
        svg=report(
            "results/figures/format_errors.svg",
            caption="captions/format_errors.rst",
            category="1. SFT and RL",
        ),
        html="results/figures/format_errors.html",
    log:
        "logs/figures/format_errors.log",
    params:
        code=code_of("figure.py"),
        style=canonical(STYLE),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/figure.py"


rule figure_spectrum_by_rank:
    input:
        pairs=[
            f"results/spectrum/base__{LAST_SFT}.parquet",
            *[f"results/spectrum/{a}__{b}.parquet" for a, b in RL_PAIRS],
        ],
    output:
        svg=report(
            "results/figures/spectrum_by_rank.svg",
            caption="captions/spectrum_by_rank.rst",
            category="2. Spectrum",
        ),
        html="results/figures/spectrum_by_rank.html",
    log:
        "logs/figures/spectrum_by_rank.log",
    params:
        code=code_of("figure.py"),
        style=canonical(STYLE),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/figure.py"


rule figure_rotation_heatmaps:
    input:
        spectrum="results/tables/spectrum.parquet",
    output:
        svg=report(
            "results/figures/rotation_heatmaps.svg",
            caption="captions/rotation_heatmaps.rst",
            category="2. Spectrum",
        ),
        html="results/figures/rotation_heatmaps.html",
    log:
        "logs/figures/rotation_heatmaps.log",
    params:
        code=code_of("figure.py"),
        style=canonical(STYLE),
        last_sft=LAST_SFT,
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/figure.py"


rule figure_update_norms:
    input:
        update_norms="results/tables/update_norms.parquet",
    output:
        svg=report(
            "results/figures/update_norms.svg",
            caption="captions/update_norms_figure.rst",
            category="2. Spectrum",
        ),
        html="results/figures/update_norms.html",
    log:
        "logs/figures/update_norms.log",
    params:
        code=code_of("figure.py"),
        style=canonical(STYLE),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/figure.py"


rule figure_rotation_vs_ood:
    input:
        spectrum="results/tables/spectrum.parquet",
        accuracy="results/tables/accuracy.parquet",
    output:
        svg=report(
            "results/figures/rotation_vs_ood.svg",
            caption="captions/rotation_vs_ood.rst",
            category="2. Spectrum",
        ),
        html="results/figures/rotation_vs_ood.html",
    log:
        "logs/figures/rotation_vs_ood.log",
    params:
        code=code_of("figure.py"),
        style=canonical(STYLE),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/figure.py"


rule figure_restoration:
    input:
        restoration="results/tables/restoration.parquet",
    output:
        svg=report(
            "results/figures/restoration.svg", caption="captions/restoration.rst", category="3. Restoration"
        ),
        html="results/figures/restoration.html",
    log:
        "logs/figures/restoration.log",
    params:
        code=code_of("figure.py"),
        style=canonical(STYLE),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/figure.py"

rule svd:
    input:
        "results/models/{model_id}",
    output:
        "results/svd/{model_id}.safetensors",
    log:
        "logs/svd/{model_id}.log",
    benchmark:
        "benchmarks/results/svd/{model_id}.tsv"
    threads: job_threads(8)
    params:
        code=code_of("svd.py"),
    resources:
        **sized("svd"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/svd.py"


rule spectrum:
    input:
        model_a="results/models/{a}",
        model_b="results/models/{b}",
        svd_a="results/svd/{a}.safetensors",
        svd_b="results/svd/{b}.safetensors",
    output:
        "results/spectrum/{a}__{b}.parquet",
    log:
        "logs/spectrum/{a}__{b}.log",
    benchmark:
        "benchmarks/results/spectrum/{a}__{b}.tsv"
    params:
        code=code_of("spectrum.py"),
        top_share=SPECTRUM["top_share"],
    threads: job_threads(8)
    resources:
        **sized("spectrum"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/spectrum.py"


rule spectrum_table:
    input:
        lambda w: [f"results/spectrum/{a}__{b}.parquet" for a, b in chosen().spectrum_pairs],
    output:
        parquet="results/tables/spectrum.parquet",
        csv="results/tables/spectrum.csv",
    log:
        "logs/tables/spectrum.log",
    localrule: True
    params:
        code=code_of("spectrum_table.py"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/spectrum_table.py"

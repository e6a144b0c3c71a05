rule evaluate:
    input:
        model="results/models/{model_id}",
        tests=expand("results/data/{split}.jsonl", split=TEST_SPLITS),
    output:
        "results/eval/{model_id}.parquet",
    log:
        "logs/eval/{model_id}.log",
    benchmark:
        "benchmarks/results/eval/{model_id}.tsv"
    params:
        code=code_of("evaluate.py"),
        cfg=canonical(study.eval_slice()),
    threads: 4
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/evaluate.py"


rule accuracy_table:
    input:
        expand("results/eval/{model_id}.parquet", model_id=EVAL_MODELS),
    output:
        parquet="results/tables/accuracy.parquet",
        csv="results/tables/accuracy.csv",
    log:
        "logs/tables/accuracy.log",
    localrule: True
    params:
        code=code_of("accuracy_table.py"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/accuracy_table.py"

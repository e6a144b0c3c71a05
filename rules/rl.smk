rule rl:
    input:
        start=rl_start,
        train="results/data/rl_train.jsonl",
        tests=expand("results/data/{split}.jsonl", split=TEST_SPLITS),
        deepspeed=lambda w: study.rl_deepspeed(w.rl_run),
    output:
        model=directory("results/models/rl-{rl_run}"),
        checkpoints=directory(expand("results/models/rl-{{rl_run}}-u{update}", update=RL_SAVE_UPDATES)),
        log="results/tables/rl/{rl_run}.parquet",
    log:
        "logs/rl/{rl_run}.log",
    benchmark:
        "benchmarks/results/rl/{rl_run}.tsv"
    params:
        code=code_of("rl.py"),
        cfg=lambda w: canonical(study.rl_slice(w.rl_run)),
    threads: job_threads(8)
    resources:
        **sized("rl"),
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/rl.py"


rule rl_log_table:
    input:
        lambda w: expand("results/tables/rl/{rl_run}.parquet", rl_run=chosen().rl_runs),
    output:
        parquet="results/tables/rl_log.parquet",
        csv="results/tables/rl_log.csv",
    log:
        "logs/tables/rl_log.log",
    localrule: True
    params:
        code=code_of("rl_log_table.py"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/rl_log_table.py"

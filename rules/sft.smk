rule sft:
    input:
        base="results/models/base",
        train="results/data/sft_train.jsonl",
        id_test="results/data/id_test.jsonl",
        ood_test="results/data/ood_test.jsonl",
        deepspeed=study.sft_deepspeed(),
    output:
        models=directory(expand("results/models/sft-{step}", step=SFT_STEPS)),
        losses="results/tables/sft_log.parquet",
    log:
        "logs/sft.log",
    benchmark:
        "benchmarks/results/sft.tsv"
    params:
        code=code_of("sft.py"),
        cfg=canonical(study.sft_slice()),
    threads: 8
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/sft.py"

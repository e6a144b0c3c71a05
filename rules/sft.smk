rule sft:
    input:
        base="results/models/base",
        train="results/data/sft_train.jsonl",
        id_test="results/data/id_test.jsonl",
        ood_test="results/data/ood_test.jsonl",
        deepspeed=study.sft_deepspeed(),
    output:
        models=directory(expand(f"results/models/{SEED_IN_EXPAND}sft-{{step}}", step=SFT_STEPS)),
        losses=f"results/tables/{SEED}sft_log.parquet",
    log:
        f"logs/{SEED}sft.log",
    benchmark:
        f"benchmarks/results/{SEED}sft.tsv"
    params:
        code=code_of("sft.py"),
        cfg=lambda w: canonical(study.sft_slice(sft_seed_of(w))),
    threads: 8
    resources:
        **sized("sft"),
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/sft.py"

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
        numbers_probe=False,
    # Two tiny-model evaluations side by side finish sooner than one after the other with two threads
    # (benchmarks/eval_threads.py); the answers are the same either way.
    threads: job_threads(4)
    resources:
        **sized("evaluate"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/evaluate.py"


# The SFT checkpoints on the OOD selection hands, from which choose_points reads B, T and the RL starting
# points: a choice made on these hands is measured on the test hands (data.SELECT_SPLITS).
use rule evaluate as evaluate_select with:
    input:
        model="results/models/{model_id}",
        tests=["results/data/ood_select.jsonl"],
    output:
        "results/eval_select/{model_id}.parquet",
    log:
        "logs/eval_select/{model_id}.log",
    benchmark:
        "benchmarks/results/eval_select/{model_id}.tsv"


# The numbers-only probe: each value multiset of the OOD test hands asked as a bare numeric puzzle, for the
# SFT checkpoints and the RL models. Beside the OOD test it tells losing the rule from losing the arithmetic.
use rule evaluate as evaluate_numbers with:
    input:
        model="results/models/{model_id}",
        tests=["results/data/ood_test.jsonl"],
    output:
        "results/eval_numbers/{model_id}.parquet",
    log:
        "logs/eval_numbers/{model_id}.log",
    benchmark:
        "benchmarks/results/eval_numbers/{model_id}.tsv"
    params:
        numbers_probe=True,


rule accuracy_table:
    input:
        tests=lambda w: expand("results/eval/{model_id}.parquet", model_id=chosen().eval_models),
        numbers=lambda w: expand("results/eval_numbers/{model_id}.parquet", model_id=chosen().study_models),
    output:
        parquet="results/tables/accuracy.parquet",
        csv="results/tables/accuracy.csv",
        hands="results/tables/hands.parquet",
    log:
        "logs/tables/accuracy.log",
    localrule: True
    params:
        code=code_of("accuracy_table.py"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/accuracy_table.py"


# B, T and the RL starting points, read off the SFT curve: the jobs that depend on them are planned once
# it has run (a Snakemake checkpoint). Asked for only when the config names a point (docs/study.md).
checkpoint choose_points:
    input:
        lambda w: expand("results/eval_select/{model_id}.parquet", model_id=study.sft_models[sft_seed_of(w)]),
    output:
        f"results/tables/{SEED}sft_points.json",
    log:
        f"logs/tables/{SEED}sft_points.log",
    localrule: True
    params:
        code=code_of("choose_points.py"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/choose_points.py"

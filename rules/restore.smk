rule restore:
    input:
        unpack(edit_inputs),
    output:
        # Only a step to its evaluation: removed once evaluated.
        temp(directory("results/models/{edit_id}")),
    log:
        "logs/restore/{edit_id}.log",
    benchmark:
        "benchmarks/results/restore/{edit_id}.tsv"
    params:
        code=code_of("restore.py"),
        spec=lambda w: canonical(EDIT_SPECS[model_ids.parse(w.edit_id)["algo"]]),
    threads: job_threads(8)
    resources:
        **sized("restore"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/restore.py"


rule restoration_table:
    input:
        edits=expand("results/eval/{model_id}.parquet", model_id=EDIT_MODELS),
        references=lambda w: sorted(
            {f"results/eval/{s[k]}.parquet" for s in chosen().edits.values() for k in ("base", "target")}
        ),
        points=POINTS_FILES,
    output:
        parquet="results/tables/restoration.parquet",
        csv="results/tables/restoration.csv",
    log:
        "logs/tables/restoration.log",
    params:
        code=code_of("restoration_table.py"),
        edits=canonical(EDIT_SPECS),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/restoration_table.py"

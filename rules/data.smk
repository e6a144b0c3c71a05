rule data_split:
    output:
        "results/data/{split}.jsonl",
    log:
        "logs/data/{split}.log",
    params:
        code=code_of("data_split.py"),
        cfg=lambda wc: canonical(study.data_slice(wc.split)),
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/data_split.py"


rule data_manifest:
    input:
        expand("results/data/{split}.jsonl", split=SPLITS),
    output:
        "results/data/manifest.json",
    log:
        "logs/data/manifest.log",
    params:
        code=code_of("data_manifest.py"),
        cfg=canonical({"game": config["game"], "data": config["data"]}),
    localrule: True
    conda:
        "../envs/analysis.yaml"
    script:
        "../scripts/data_manifest.py"

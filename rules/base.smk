# The base model: the tiny model built and pretrained here (default), or a local Hugging Face directory.
if config["model"]["source"] == "tiny":

    rule pretrain_corpus:
        input:
            tests=expand("results/data/{split}.jsonl", split=HELD_SPLITS),
        output:
            corpus="results/data/pretrain.jsonl",
            manifest="results/data/pretrain_manifest.json",
        log:
            "logs/pretrain_corpus.log",
        params:
            cfg=canonical(study.pretrain_corpus_slice()),
            code=code_of("pretrain_corpus.py"),
        conda:
            "../envs/analysis.yaml"
        script:
            "../scripts/pretrain_corpus.py"

    rule base_tiny:
        input:
            corpus="results/data/pretrain.jsonl",
            tests=expand("results/data/{split}.jsonl", split=TEST_SPLITS),
        output:
            model=directory("results/models/base"),
            report="results/tables/pretrain.json",
        log:
            "logs/base.log",
        benchmark:
            "benchmarks/results/base.tsv"
        params:
            cfg=canonical(study.base_slice()),
            study=canonical(study.conversation_slice()),
            code=code_of("base_tiny.py"),
        threads: 8
        conda:
            "../envs/train.yaml"
        script:
            "../scripts/base_tiny.py"

else:

    rule base_local:
        output:
            model=directory("results/models/base"),
        log:
            "logs/base.log",
        params:
            source=config["model"]["local_path"],
            study=canonical(study.conversation_slice()),
            code=code_of("base_local.py"),
        localrule: True
        conda:
            "../envs/train.yaml"
        script:
            "../scripts/base_local.py"
